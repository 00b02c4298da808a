"""`pjx glue SOURCE --out DIR [--tasks sst2,cola,mrpc,rte] [--seeds N] [--config.key=value ...]`:
fine-tune a checkpoint (a pjx run, `hf:` folder or Hub id) on every GLUE task there is data
for, over N seeds; writes DIR/glue.json, glue.md, glue.png and one workdir per run,
DIR/TASK/seedS/. Running it again skips the finished runs (see pjx.glue)."""

from __future__ import annotations

import shlex
import sys

from pjx.cli.common import start_compute


def add_arguments(p):
    p.add_argument("source", metavar="SOURCE", help="a pjx workdir / checkpoint, or hf:DIR_OR_ID")
    p.add_argument("--out", required=True, help="folder for the runs and the table")
    p.add_argument("--tasks", default="", help="of sst2,cola,mrpc,rte (default: all with data)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per task (default 3)")
    p.add_argument("--config", default="", help="the recipe file (default: configs/glue.py)")


def main(args, overrides=()) -> int:
    from pjx import glue

    start_compute(args)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] or None
    command = "pjx " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    glue.glue(
        args.source,
        args.out,
        tasks=tasks,
        seeds=args.seeds,
        overrides=overrides,
        config=args.config,
        command=command if sys.argv[1:2] == ["glue"] else "",
    )
    return 0
