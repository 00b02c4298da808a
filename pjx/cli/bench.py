"""`pjx bench --config FILE[:ARG] [--steps N] [--data-only]`: the last line is JSON."""

from __future__ import annotations

import json

from pjx.cli.common import add_config_argument, start_compute


def add_arguments(p):
    add_config_argument(p)
    p.add_argument("--steps", type=int, default=10, help="timed steps after compilation")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--data-only", action="store_true", help="time the input pipeline only")


def main(args, overrides) -> int:
    from pjx import bench
    from pjx import config as config_lib

    config = config_lib.load(args.config, overrides)
    if args.data_only:
        result = bench.bench_pipeline(config, int(args.steps))
    else:
        start_compute()
        result = bench.run(config, steps=int(args.steps), warmup=int(args.warmup))
        print(bench.human_line(result), flush=True)
    print(json.dumps(result), flush=True)
    return 0
