"""One pjx training-throughput measurement on synthetic batches, without ml_collections.

  python benchmarks/gpu_bench.py gpt2_small --attention cudnn            # on a GPU
  python benchmarks/gpu_bench.py vit_b16 --remat full --steps 20
  python benchmarks/gpu_bench.py bert_base --tiny --dtype float32 --steps 1   # CPU smoke
  python benchmarks/gpu_bench.py --summary runs/gpu/gpu.jsonl                 # the table

Builds a plain-dict config for a row of benchmarks/bench_config.py SHAPES (the table
hf_reference.py reads too) and calls `pjx.bench.run` (or `compile_only`). It imports
pjx.bench and what that needs (jax, flax, optax, orbax), never ml_collections, grain or
tensorflow(-datasets), so it runs on a bare accelerator host with PYTHONPATH=the checkout.
Prints one human line, then the result as JSON on the last line; a failure (cuDNN
attention off a GPU, out of memory, ...) prints a JSON line with an "error" field and
exits 1, so a driver (benchmarks/gpu.sh) records it and goes on.

Default batches (SHAPES): GPT-2 small 32 x 1024 tokens, BERT-base 256 x 128, ViT-B/16
256 images; without remat, with XLA attention (the scores materialised), each fits an
80 GB H100 as well as a 141 GB H200. Dropout is off: attention dropout would take pjx off
the fused attention kernels this measures (hf_reference.py is run with --dropout 0 too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_config  # noqa: E402  (jax-free)

TINY_BATCH = 2  # --tiny without --batch: CPU-sized
ATTENTION = ("default", "xla", "cudnn")
REMAT = ("none", "full", "dots", "dots_no_batch")


def make_config(
    shape: str,
    *,
    attention: str = "default",
    remat: str = "none",
    dtype: str = "bfloat16",
    batch: int | None = None,
    scan: bool = False,
    tiny: bool = False,
) -> dict:
    """The plain nested dict `pjx.bench.run` reads (the keys of a resolved pjx config)."""
    from pjx import bench, models, optim, sharding

    kind, task, *_, seq, default_batch, _ = bench_config.SHAPES[shape]
    fields = bench_config.model_fields(shape, tiny=tiny)
    # Every field is set below; the preset only names the result's "model" (gpt2/small).
    presets = models.MODELS[kind].PRESETS.items()
    size = next((k for k, p in presets if all(fields[f] == v for f, v in p.items())), "tiny")
    model = dict(
        name=kind,
        size=size,
        **fields,
        dtype=dtype,
        attention_impl=None if attention == "default" else attention,
        remat=remat,
        scan_layers=scan,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
    )
    task_args = {}
    if kind == "gpt2":
        model["max_position_embeddings"] = seq
    if task == "mlm":
        model.update(mlm_head=True, nsp_head=False)
        task_args = dict(bench.MLM_DEFAULTS)
    if batch is None:
        batch = min(default_batch, TINY_BATCH) if tiny else default_batch
    return {
        "model": model,
        "task": task,
        "task_args": task_args,
        "data": {} if kind == "vit" else {"seq_len": seq},
        "batch_size": int(batch),
        "steps": bench_config.STEPS,  # the lr schedule's length; bench times --steps
        "seed": 0,
        "optimizer": {**optim.DEFAULTS, **bench_config.OPTIMIZER},
        "mesh": dict(sharding.MESH_DEFAULTS),
    }


def measure(args) -> dict:
    from pjx import bench
    from pjx import plan as plan_lib
    from pjx.nn import backend

    config = make_config(
        args.shape,
        attention=args.attention,
        remat=args.remat,
        dtype=args.dtype,
        batch=args.batch,
        scan=args.scan,
        tiny=args.tiny,
    )
    plan = plan_lib.from_config(config)  # the same reading of the keys as `pjx train`'s
    if args.compile_only:
        r = bench.compile_only(plan)
    else:
        r = bench.run(plan, steps=args.steps, warmup=args.warmup)
    # What "default" picked for a train step: cuDNN on a GPU in bfloat16 at an even length,
    # XLA otherwise (ViT-B/16's 197 positions included).
    L = r["seq_len"]
    r["attention_effective"] = backend.attention_implementation(
        config["model"]["attention_impl"], args.dtype, training=True, lengths=(L, L)
    )
    return r


def human_line(r: dict) -> str:
    from pjx import bench

    if "tokens_per_s" in r:
        line = bench.human_line(r)
    else:
        line = (
            f"pjx bench --compile-only {r['model']} B={r['batch_size']} L={r['seq_len']}: "
            f"compile {r['compile_s']:.1f}s | temp {r.get('temp_bytes', 0) / 2**30:.2f} GiB | "
            f"arguments {r.get('argument_bytes', 0) / 2**30:.2f} GiB"
        )
    return f"{line} | attention {r['attention_effective']} remat {r['remat']}"


# --------------------------------------------------------------------------- summary
def _peak_tflops(device: str) -> float | None:
    """Dense bf16 peak of a torch device name ("NVIDIA H200"), from pjx.bench's table."""
    try:
        from pjx.bench import peak_tflops
    except ImportError:
        return None
    return peak_tflops(device)[0]


def _label(r: dict) -> str:
    if r.get("impl") == "hf":
        return "hf torch.compile" if r.get("torch_compile") else "hf eager"
    attn = r.get("attention_effective") or r.get("requested_attention") or "?"
    remat = r.get("remat", "none")
    return f"pjx {attn}" + ("" if remat in ("none", None) else f" remat={remat}")


def summary(path: str) -> str:
    """A table of the JSON lines in `path`: throughput, MFU, peak memory, pjx / HF."""
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    order = list(dict.fromkeys(r.get("shape", "?") for r in rows))
    rows.sort(key=lambda r: order.index(r.get("shape", "?")))  # by shape, then run order
    hf = {r["shape"]: r for r in rows if r.get("impl") == "hf" and "tokens_per_s" in r}
    head = (
        f"{'shape':<11} {'run':<24} {'batch':>5} {'tokens/s':>11} {'ex/s':>9} {'step ms':>8} "
        f"{'MFU':>6} {'peak GiB':>8} {'compile s':>9} {'vs HF':>6}"
    )
    out = [head, "-" * len(head)]
    for r in rows:
        shape = r.get("shape", "?")
        if "tokens_per_s" not in r:
            why = (r.get("error", "").strip().splitlines() or ["no result"])[-1]
            tag = "SKIPPED" if why.startswith("skipped: ") else "FAILED"
            why = why.removeprefix("skipped: ")
            out.append(f"{shape:<11} {_label(r):<24} {tag}: {why[:120]}")
            continue
        mfu = r.get("mfu")
        if mfu is None and r.get("flops_per_token") and r.get("impl") == "hf":
            peak = _peak_tflops(r.get("device", ""))  # HF reports FLOPs, not the peak
            mfu = r["tokens_per_s"] * r["flops_per_token"] / (peak * 1e12) if peak else None
        peak_b = r.get("peak_bytes")
        ref = hf.get(shape)
        ratio = r["tokens_per_s"] / ref["tokens_per_s"] if ref and r is not ref else None
        out.append(
            f"{shape:<11} {_label(r):<24} {r.get('batch_size', 0):>5} "
            f"{r['tokens_per_s']:>11,.0f} {r['examples_per_s']:>9,.1f} "
            f"{r['step_s'] * 1e3:>8.1f} {'' if mfu is None else f'{100 * mfu:.1f}%':>6} "
            f"{'' if peak_b is None else f'{peak_b / 2**30:.1f}':>8} "
            f"{r.get('compile_s', float('nan')):>9.1f} "
            f"{'' if ratio is None else f'{ratio:.2f}x':>6}"
        )
    out.append("ex/s: images/s for vit_b16, sequences/s otherwise; vs HF: tokens/s over HF's.")
    return "\n".join(out)


# ------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shape", nargs="?", choices=sorted(bench_config.SHAPES))
    p.add_argument("--attention", default="default", choices=ATTENTION)
    p.add_argument("--remat", default="none", choices=REMAT)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--batch", type=int, default=None, help="global batch (default: SHAPES)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    p.add_argument("--compile-only", action="store_true", help="XLA memory estimates only")
    p.add_argument("--scan", action="store_true", help="model.scan_layers=True")
    p.add_argument("--tiny", action="store_true", help="2 layers, width 128: a smoke check")
    p.add_argument("--summary", metavar="JSONL", help="print the table of a gpu.sh run")
    args = p.parse_args(argv)
    if args.summary:
        print(summary(args.summary))
        return 0
    if args.shape is None:
        p.error("give a SHAPE (or --summary JSONL)")

    what = dict(
        impl="pjx",
        shape=args.shape,
        tiny=args.tiny,
        requested_attention=args.attention,
        remat=args.remat,
        dtype=args.dtype,
    )
    try:
        r = measure(args)
    except ValueError as e:  # a config pjx refuses (e.g. cuDNN off a GPU): its message only
        print(f"gpu_bench {args.shape}: {e}", file=sys.stderr)
        print(json.dumps({**what, "error": f"ValueError: {e}"}), flush=True)
        return 1
    except Exception as e:  # noqa: BLE001 - out of memory, compiler errors: keep going
        traceback.print_exc()
        msg = f"{type(e).__name__}: {e}"
        print(json.dumps({**what, "error": msg[:2000]}), flush=True)
        return 1
    r = {**what, **r}
    print(human_line(r), flush=True)
    print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
