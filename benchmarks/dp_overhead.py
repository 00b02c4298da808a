"""What DP-SGD costs pjx's own train step on this CPU: the non-private and the DP step of
one config, compiled side by side in one process and timed alternately, so a machine
whose speed drifts moves both alike.

  python benchmarks/dp_overhead.py
  python benchmarks/dp_overhead.py --rounds 20 --config.dp.l2_norm_clip=0.1

Defaults: benchmarks/bench_config.py:bert_mini_cls (batch 32 x 128), DP with sigma 1.0 and
clip 1.0 as in benchmarks/compare_dp.py; overrides after the flags apply to the DP step.
Prints the median step of each and their ratio (non-private / DP: DP's share of pjx's own
speed), then the same as JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "bench_config.py") + ":bert_mini_cls"
DP = ["--config.dp.noise_multiplier=1.0", "--config.dp.l2_norm_clip=1.0"]


def compiled_step(config_path: str, overrides: list[str]):
    """[compiled step, state, device batch, mesh] of `pjx bench`'s synthetic batch."""
    from pjx import bench, bench_from_config
    from pjx import config as config_lib

    plan, tokenizer = bench_from_config.resolve(config_lib.load(config_path, overrides))
    c = bench.compiled_step(plan, tokenizer=tokenizer)
    return [c.step, c.state, c.batches[0], c.setup.mesh]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--rounds", type=int, default=12, help="steps of each, alternating")
    ap.add_argument("--warmup", type=int, default=2, help="rounds not timed")
    args, overrides = ap.parse_known_args(argv)
    from pjx import xla_cpu

    xla_cpu.install_if_cpu()  # as the `pjx` command does
    import jax

    from pjx import sharding

    runs = {
        "plain": compiled_step(args.config, []),
        "dp": compiled_step(args.config, DP + overrides),
    }
    times = {name: [] for name in runs}
    for r in range(args.warmup + args.rounds):
        for name, run in runs.items():
            compiled, state, batch, mesh = run
            with sharding.context(mesh):
                t = time.perf_counter()
                state, mets = compiled(state, batch)
                jax.block_until_ready((state, mets))
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t)
            run[1] = state
    plain, dp = (statistics.median(times[k]) for k in ("plain", "dp"))
    print(
        f"non-private step {plain * 1e3:.0f} ms, DP step {dp * 1e3:.0f} ms: "
        f"DP / non-private {plain / dp:.3f}x (medians of {args.rounds}, alternating)"
    )
    out = dict(plain_step_s=plain, dp_step_s=dp, dp_over_plain=plain / dp, rounds=args.rounds)
    print(json.dumps({**out, "config": args.config, "overrides": overrides}))


if __name__ == "__main__":
    main()
