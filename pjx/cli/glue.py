"""`pjx glue SOURCE --out DIR [--tasks sst2,cola,mrpc,rte] [--seeds N] [--config.key=value ...]`:
fine-tune a checkpoint (a pjx run, `hf:` folder or Hub id, or `scratch`: random init) on
every GLUE task there is data for, over N seeds; writes DIR/glue.json, glue.md, glue.png
and one workdir per run, DIR/TASK/seedS/. Running it again skips the finished runs (see
pjx.glue).

`pjx glue SOURCE [SOURCE ...] --labels 100,300,1000,3000 --out DIR [--tasks ...] [--seeds N]`:
the label-efficiency curve, each source fine-tuned on the first N rows of a seeded
permutation of each task's training rows (the same rows for every source at a given N and
seed); writes DIR/curve.json, curve.md, curve.png, the rows (DIR/rows/TASK/seedS/nN.tsv)
and the runs (DIR/NAME/TASK/nN/seedS/); see pjx.glue.curve."""

from __future__ import annotations

import shlex
import sys

from pjx.cli.common import start_compute


def add_arguments(p):
    p.add_argument(
        "sources",
        metavar="SOURCE",
        nargs="+",
        help="a pjx workdir / checkpoint, hf:DIR_OR_ID, or scratch (random init); several "
        "with --labels",
    )
    p.add_argument("--out", required=True, help="folder for the runs and the table")
    p.add_argument("--tasks", default="", help="of sst2,cola,mrpc,rte (default: all with data)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per task (default 3)")
    p.add_argument(
        "--labels",
        default=None,
        help="labelled rows per run, e.g. 100,300,1000,3000: the label-efficiency curve",
    )
    p.add_argument("--config", default="", help="the recipe file (default: configs/glue.py)")


def main(args, overrides=()) -> int:
    from pjx import glue
    from pjx.glue import curve

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] or None
    command = "pjx " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    kw = dict(
        tasks=tasks,
        seeds=args.seeds,
        overrides=overrides,
        config=args.config,
        command=command if sys.argv[1:2] == ["glue"] else "",
    )
    if args.labels is not None:
        curve.parse_labels(args.labels, tasks or glue.TASKS)  # before any compute starts
        start_compute(args)
        curve.run(args.sources, args.out, args.labels, **kw)
        return 0
    if len(args.sources) > 1:
        raise ValueError(
            f"pjx glue: {len(args.sources)} SOURCEs without --labels: the GLUE table takes "
            "one; several are compared by the label-efficiency curve (--labels 100,300,...)"
        )
    start_compute(args)
    glue.glue(args.sources[0], args.out, **kw)
    return 0
