"""DP-SGD training speed on this CPU: pjx vs Opacus (PyTorch), each next to its own
non-private step, in one run.

  python benchmarks/compare_dp.py --repeats 3 --steps 10 --warmup 3
  python benchmarks/compare_dp.py --repeats 3 --steps 10 --warmup 3 --grad-sample-mode ghost

On the bert_mini_cls shape of benchmarks/bench_config.py (BERT mini sequence
classification: 4 layers, width 256, 4 heads, MLP 1024, vocab 8192, 2 classes, batch
32 x 128; float32, dropout 0.1, AdamW lr 1e-4, weight decay 0.01, global-norm clip 1.0)
each repeat runs, one process at a time so they never share the cores, in this order:

  pjx       `python -m pjx.cli bench --config benchmarks/bench_config.py:bert_mini_cls`
            (the `pjx` command: pjx's CPU settings, pjx/xla_cpu.py, are applied)
  pjx_dp    the same with --config.dp.noise_multiplier=1.0 --config.dp.l2_norm_clip=1.0:
            DP-SGD inside the jitted step, by ghost clipping (pjx/ghost_clipping.py)
  torch     benchmarks/opacus_reference.py bert_mini_cls (HF BertForSequenceClassification)
  opacus    benchmarks/opacus_reference.py bert_mini_cls --dp (opacus.PrivacyEngine,
            grad_sample_mode "hooks" unless --grad-sample-mode, e.g. "ghost";
            poisson_sampling=False)

Each times `--steps` steps after `--warmup` (median step time); the table shows the
median over `--repeats` of tokens/s and the ratios pjx_dp / pjx and opacus / torch (what
DP-SGD costs each) and pjx_dp / opacus. Every step is a fixed batch of 32 examples on both
sides (pjx bench's synthetic batch; Opacus with Poisson sampling off).

Parity settings on the torch side: `--threads` (default: all cores, the size of XLA's
CPU thread pool; 2 on the 2-core benchmark machine), eager attention (`--attn`) and, unless
`--torch-malloc default`, `--keep-host-memory`: the glibc malloc settings pjx applies to
itself on CPU (pjx/host_memory.py; without them every large per-step buffer is a fresh
`mmap` with its page faults, which benchmarks/compare_cpu.py measured at up to 1.4x for
HF), so both sides run with the same allocator settings. Prints one line per repeat, the
table, then the table as JSON on the last line. Needs `pip install opacus==1.6.0`.
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
RUNS = ("pjx", "pjx_dp", "torch", "opacus")
LABELS = {
    "pjx": "pjx",
    "pjx_dp": "pjx DP-SGD",
    "torch": "torch (HF)",
    "opacus": "Opacus DP-SGD",
}


def _last_json(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pjx_cmd(shape, steps, warmup, dp=None, extra=()):
    """`dp`: (noise multiplier, clip, microbatch size) for DP-SGD, None for none."""
    flags = []
    if dp is not None:
        sigma, clip, micro = dp
        flags = [f"--config.dp.noise_multiplier={sigma}", f"--config.dp.l2_norm_clip={clip}"]
        if micro:
            flags.append(f"--config.dp.microbatch_size={micro}")
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
        *flags,
        *extra,
    ]


def torch_cmd(shape, steps, warmup, threads, attn, keep_host_memory, dp=None):
    """`dp`: (noise multiplier, clip, grad_sample_mode) for Opacus, None for plain torch."""
    flags = []
    if dp is not None:
        sigma, clip, mode = dp
        flags = ["--dp", "--noise-multiplier", str(sigma), "--clip", str(clip)]
        flags += ["--grad-sample-mode", mode]
    return [
        sys.executable,
        os.path.join(HERE, "opacus_reference.py"),
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
        *flags,
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="bert_mini_cls")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    p.add_argument("--noise-multiplier", type=float, default=1.0)
    p.add_argument("--clip", type=float, default=1.0, help="per-example L2 clip norm")
    p.add_argument("--microbatch-size", type=int, default=0, help="pjx dp.microbatch_size")
    p.add_argument(
        "--grad-sample-mode", default="hooks", choices=("hooks", "functorch", "ew", "ghost")
    )
    p.add_argument("--attn", default="eager", choices=("eager", "sdpa"), help="torch attention")
    p.add_argument(
        "--torch-malloc",
        default="same",
        choices=("same", "default"),
        help="same: torch with pjx's malloc settings (--keep-host-memory); default: glibc's",
    )
    p.add_argument("--pjx-override", action="append", default=[], help="--config.k=v for pjx")
    args = p.parse_args(argv)

    keep = args.torch_malloc == "same"
    sigma, clip = args.noise_multiplier, args.clip
    cmds = {
        "pjx": pjx_cmd(args.shape, args.steps, args.warmup, None, args.pjx_override),
        "pjx_dp": pjx_cmd(
            args.shape,
            args.steps,
            args.warmup,
            (sigma, clip, args.microbatch_size),
            args.pjx_override,
        ),
        "torch": torch_cmd(args.shape, args.steps, args.warmup, args.threads, args.attn, keep),
        "opacus": torch_cmd(
            args.shape,
            args.steps,
            args.warmup,
            args.threads,
            args.attn,
            keep,
            (sigma, clip, args.grad_sample_mode),
        ),
    }
    tokens = {k: [] for k in RUNS}
    steps = {k: [] for k in RUNS}
    last = {}
    for r in range(args.repeats):
        for k in RUNS:
            last[k] = res = _last_json(cmds[k])
            tokens[k].append(res["tokens_per_s"])
            steps[k].append(res["step_s"])
        print(
            f"repeat {r + 1}/{args.repeats}: "
            + " | ".join(
                f"{LABELS[k]} {last[k]['tokens_per_s']:,.0f} tokens/s "
                f"(step {last[k]['step_s'] * 1e3:.0f} ms)"
                for k in RUNS
            ),
            flush=True,
        )

    med = {k: statistics.median(v) for k, v in tokens.items()}
    a, o = last["pjx"], last["opacus"]
    table = {
        "shape": args.shape,
        "task": a["task"],
        "batch_size": a["batch_size"],
        "seq_len": a["seq_len"],
        "params_pjx": a["params"],
        "params_torch": o["params"],
        **{f"{k}_tokens_per_s": med[k] for k in RUNS},
        **{f"{k}_step_s": statistics.median(steps[k]) for k in RUNS},
        "pjx_dp_over_pjx": med["pjx_dp"] / med["pjx"],
        "opacus_over_torch": med["opacus"] / med["torch"],
        "pjx_dp_over_opacus": med["pjx_dp"] / med["opacus"],
        "pjx_over_torch": med["pjx"] / med["torch"],
        "runs_tokens_per_s": tokens,
        "noise_multiplier": sigma,
        "l2_norm_clip": clip,
        "pjx_microbatch_size": args.microbatch_size,
        "grad_sample_mode": o["grad_sample_mode"],
        "poisson_sampling": False,
        "torch_attn_implementation": o["attn_implementation"],
        "torch_threads": args.threads,
        "torch_keep_host_memory_applied": o["keep_host_memory"],
        "pjx_compile_s": a["compile_s"],
        "pjx_dp_compile_s": last["pjx_dp"]["compile_s"],
        "jax": a["jax"],
        "torch": o["torch"],
        "transformers": o["transformers"],
        "opacus": o["opacus"],
        "device": a["device"],
        "repeats": args.repeats,
        "steps": args.steps,
        "warmup": args.warmup,
    }

    print()
    print(f"{args.shape}: B x L = {a['batch_size']} x {a['seq_len']}, median of {args.repeats}")
    print("| run | tokens/s | step ms |")
    print("|---|---:|---:|")
    for k in RUNS:
        print(f"| {LABELS[k]} | {med[k]:,.0f} | {table[f'{k}_step_s'] * 1e3:,.0f} |")
    print()
    print("| ratio (tokens/s) | |")
    print("|---|---:|")
    print(f"| pjx DP-SGD / pjx | {table['pjx_dp_over_pjx']:.2f}x |")
    print(f"| Opacus DP-SGD / torch | {table['opacus_over_torch']:.2f}x |")
    print(f"| pjx DP-SGD / Opacus DP-SGD | {table['pjx_dp_over_opacus']:.2f}x |")
    print(f"| pjx / torch | {table['pjx_over_torch']:.2f}x |")
    print(json.dumps(table), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
