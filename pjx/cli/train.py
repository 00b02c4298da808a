"""`pjx train --config FILE[:ARG] --workdir DIR [--config.key=value ...]`."""

from __future__ import annotations

import sys

from pjx.cli.common import add_config_argument, add_distributed_arguments, start_compute


def add_arguments(p):
    add_config_argument(p)
    p.add_argument("--workdir", required=True, help="run folder: metrics.jsonl, checkpoints/")
    add_distributed_arguments(p)


def main(args, overrides) -> int:
    from pjx import checkpoint, loop, run
    from pjx import config as config_lib
    from pjx.checkpoint import lock

    config = config_lib.load(args.config)  # the overrides apply to each stage (pjx.run.train)
    start_compute(args)
    try:
        run.train(config, args.workdir, overrides)
    except (loop.NonFiniteLossError, checkpoint.NoIntactCheckpoint) as e:
        print(f"pjx: {e}", file=sys.stderr)
        return 1
    except lock.WorkdirBusy as e:  # the other run is left untouched
        print(f"pjx: {e}", file=sys.stderr)
        return 2
    except loop.Preempted as e:  # a clean, resumable stop: exit 0 like a finished run
        print(f"pjx: {e}", file=sys.stderr)
    return 0
