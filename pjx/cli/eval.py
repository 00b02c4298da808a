"""`pjx eval RUN --source URI [--config.key=value ...]`: the task's metrics of a trained
model on any data source pjx reads (classification also the confusion matrix); the last
line of output is one JSON object of them."""

from __future__ import annotations

import json

from pjx.cli.common import add_distributed_arguments, start_compute


def add_arguments(p):
    p.add_argument(
        "run", metavar="RUN", help="a pjx workdir / checkpoint, or hf:DIR / hf:ORG/NAME[@REVISION]"
    )
    p.add_argument("--source", required=True, metavar="URI", help="the data to score")
    add_distributed_arguments(p)


def main(args, overrides=()) -> int:
    from pjx import evaluation

    start_compute(args)
    result = evaluation.evaluate(args.run, args.source, overrides)
    for key, value in result.items():
        if isinstance(value, float):
            print(f"{key:>16}: {value:.4f}")
    if "confusion_matrix" in result:
        labels = result["labels"]
        width = max(6, *(len(n) for n in labels))
        print("confusion (rows: true label, columns: predicted)")
        print(" " * width + " ".join(f"{n:>{width}}" for n in labels))
        for name, row in zip(labels, result["confusion_matrix"]):
            print(f"{name:>{width}}" + " ".join(f"{v:>{width}}" for v in row))
    print(json.dumps(result))
    return 0
