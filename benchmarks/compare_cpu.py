"""pjx vs Hugging Face transformers (PyTorch eager) on this CPU, in one run.

  python benchmarks/compare_cpu.py --repeats 3 --steps 10

For each shape (bert_mini MLM, gpt2_mini causal LM; benchmarks/bench_config.py) it runs
`pjx bench`, `hf_reference.py` as is, and `hf_reference.py --keep-host-memory` (the glibc
malloc settings pjx applies to itself on CPU, so the allocator is the same on both sides)
in alternating subprocesses, one at a time so they never share the cores (torch gets as
many threads as XLA's CPU pool: all cores), each timing `--steps` steps after `--warmup`,
`--repeats` times. Prints a table of median tokens/s and the ratios, then the table as
JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "bench_config.py")


def _last_json(cmd: list[str], env=None) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pjx_cmd(shape, steps, warmup, extra=()):
    return [
        sys.executable,
        "-m",
        "pjx.cli",
        "bench",
        "--config",
        f"{CONFIG}:{shape}",
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
        *extra,
    ]


def hf_cmd(shape, steps, warmup, threads, attn, keep_host_memory=False):
    return [
        sys.executable,
        os.path.join(HERE, "hf_reference.py"),
        shape,
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
        "--threads",
        str(threads),
        "--attn",
        attn,
        *(["--keep-host-memory"] if keep_host_memory else []),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="bert_mini,gpt2_mini")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    p.add_argument("--pjx-override", action="append", default=[], help="--config.k=v for pjx")
    args = p.parse_args(argv)

    rows = []
    for shape in args.shapes.split(","):
        runs = {"pjx": [], "hf": [], "hf_same_malloc": []}
        for r in range(args.repeats):
            a = _last_json(pjx_cmd(shape, args.steps, args.warmup, args.pjx_override))
            b = _last_json(hf_cmd(shape, args.steps, args.warmup, args.threads, args.attn))
            c = _last_json(hf_cmd(shape, args.steps, args.warmup, args.threads, args.attn, True))
            for key, res in (("pjx", a), ("hf", b), ("hf_same_malloc", c)):
                runs[key].append(res["tokens_per_s"])
            print(
                f"{shape} repeat {r + 1}/{args.repeats}: pjx {a['tokens_per_s']:,.0f} "
                f"tokens/s (step {a['step_s'] * 1e3:.0f} ms, compile {a['compile_s']:.1f}s) | "
                f"hf {b['tokens_per_s']:,.0f} (step {b['step_s'] * 1e3:.0f} ms) | hf, same "
                f"malloc {c['tokens_per_s']:,.0f} (step {c['step_s'] * 1e3:.0f} ms)",
                flush=True,
            )
        med = {k: statistics.median(v) for k, v in runs.items()}
        rows.append(
            {
                "shape": shape,
                "task": a["task"],
                "batch_size": a["batch_size"],
                "seq_len": a["seq_len"],
                "params_pjx": a["params"],
                "params_hf": b["params"],
                "pjx_tokens_per_s": med["pjx"],
                "hf_tokens_per_s": med["hf"],
                "hf_same_malloc_tokens_per_s": med["hf_same_malloc"],
                "ratio": med["pjx"] / med["hf"],
                "ratio_same_malloc": med["pjx"] / med["hf_same_malloc"],
                "runs": runs,
                "jax": a["jax"],
                "torch": b["torch"],
                "transformers": b["transformers"],
                "device": a["device"],
                "hf_threads": args.threads,
                "hf_keep_host_memory_applied": c["keep_host_memory"],
            }
        )

    print()
    print(
        "| shape | task | B x L | pjx tokens/s | HF tokens/s | pjx / HF "
        "| HF, same malloc | pjx / that |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['shape']} | {r['task']} | {r['batch_size']} x {r['seq_len']} | "
            f"{r['pjx_tokens_per_s']:,.0f} | {r['hf_tokens_per_s']:,.0f} | {r['ratio']:.2f}x | "
            f"{r['hf_same_malloc_tokens_per_s']:,.0f} | {r['ratio_same_malloc']:.2f}x |"
        )
    print(json.dumps(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
