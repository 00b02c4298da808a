"""`pjx bench --config FILE[:ARG] [--steps N] [--profile DIR] [--compile-only | --data-only]`.

The last line is one JSON object: timed train steps (`tokens_per_s`, `step_s`,
`compile_s`, on GPU / TPU `mfu`), or with `--compile-only` XLA's memory estimates and the
compile time (`temp_bytes`, `argument_bytes`, `compile_s`) without running a step, or with
`--data-only` the input pipeline's throughput. `--profile DIR` writes a jax.profiler trace of
the timed steps into DIR (`tensorboard --logdir DIR`, Profile tab; or the `.xplane.pb` /
`.trace.json.gz` under DIR/plugins/profile/ in Perfetto). The config is readied for synthetic
batches first: its first stage, the vocabulary size of a `train:` tokenizer spec, BERT's
special ids for MLM.
"""

from __future__ import annotations

import json

from pjx.cli.common import add_config_argument, add_distributed_arguments, start_compute


def add_arguments(p):
    add_config_argument(p)
    p.add_argument("--steps", type=int, default=10, help="timed steps after compilation")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--profile", metavar="DIR", help="a jax.profiler trace of the timed steps")
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--compile-only", action="store_true", help="compile only: memory estimates, compile time"
    )
    what.add_argument("--data-only", action="store_true", help="time the input pipeline only")
    add_distributed_arguments(p)


def main(args, overrides) -> int:
    from pjx import bench, bench_from_config
    from pjx import config as config_lib

    config = config_lib.load(args.config, overrides)
    if args.data_only:
        result = bench_from_config.pipeline(config, int(args.steps))
    else:
        start_compute(args)
        plan, tokenizer = bench_from_config.resolve(config)
        if args.compile_only:
            result = bench.compile_only(plan, tokenizer=tokenizer)
            print(compile_line(result), flush=True)
        else:
            result = bench.run(
                plan,
                tokenizer=tokenizer,
                steps=args.steps,
                warmup=args.warmup,
                profile_dir=args.profile,
            )
            print(bench.human_line(result), flush=True)
    print(json.dumps(result), flush=True)
    return 0


def compile_line(r: dict) -> str:
    mib = lambda k: r.get(k, 0) / 2**20
    return (
        f"pjx bench --compile-only {r['model']} {r['task']} B={r['batch_size']} "
        f"L={r['seq_len']} {r['dtype']} remat={r['remat']} scan={r['scan_layers']}: compile "
        f"{r['compile_s']:.1f}s | temp {mib('temp_bytes'):,.0f} MiB | arguments "
        f"{mib('argument_bytes'):,.0f} MiB (per device) | {r['step_tflops']:.2f} model TFLOP "
        "a step"
    )
