"""`pjx predict RUN --source URI --out FILE`: one JSON line per example of URI, in input
order (classifiers: label and class probabilities; GPT-2: the sampled continuation; T5:
the greedy generation next to the target)."""

from __future__ import annotations

import json

from pjx.cli.common import start_compute


def add_arguments(p):
    p.add_argument(
        "run", metavar="RUN", help="a pjx workdir / checkpoint, or hf:DIR / hf:ORG/NAME[@REVISION]"
    )
    p.add_argument("--source", required=True, metavar="URI", help="the examples")
    p.add_argument("--out", required=True, metavar="FILE", help="where the JSON lines go")
    p.add_argument("--max-new-tokens", type=int, default=50, help="language models")


def main(args, overrides=()) -> int:
    from pjx import evaluation

    start_compute()
    n = evaluation.predict(
        args.run, args.source, args.out, overrides, max_new_tokens=args.max_new_tokens
    )
    print(f"wrote {n} predictions to {args.out}")
    print(json.dumps({"out": args.out, "predictions": n}))
    return 0
