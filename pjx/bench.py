"""`pjx bench`'s core: time compiled train steps on synthetic batches.

The batch has the keys and shapes of the config's task (`Task.batch_spec`), filled with
random ids (or pixels), so no tokenizer or data set is needed. The step is compiled
ahead of time (`compile_s`), run `warmup` times, then `steps` times with a device sync
after each one; `step_s` is the median. On accelerators whose peak is in `PEAK_TFLOPS`,
`mfu` = model FLOP/s / (peak * devices), with the FLOP count of `flops_per_token`.

It reads a run's plan (pjx.plan; a plain dict with a resolved config's keys makes one
too), and it imports neither ml_collections, grain nor tensorflow: benchmarks/gpu_bench.py
runs it on an accelerator host that has only jax, flax, optax and orbax (tests/test_bench.py
checks that). A loaded config file goes through pjx.bench_from_config first (or times the
input pipeline there).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from pjx import distributed, flops, sharding, tasks, train
from pjx.flops import (  # noqa: F401  (pjx.bench's names since before pjx.flops)
    PEAK_TFLOPS,
    flops_per_token,
    matmul_params,
    mfu,
    peak_tflops,
    tokens_per_example,
)

# BERT-family special ids of pjx's trained tokenizers ([PAD]=0 [UNK] [CLS] [SEP] [MASK]);
# used for synthetic MLM batches when the config names no tokenizer ids.
MLM_DEFAULTS = dict(mask_id=4, pad_id=0, special_ids=(0, 1, 2, 3))
# Synthetic ids start here so they never collide with the special ids above.
FIRST_ID = 5


# ------------------------------------------------------------------------ synthetic data
def synthetic_batch(plan, model_config, seed: int = 0) -> dict:
    """A process-local NumPy batch (batch_size / process_count rows) shaped like the
    task's (`Task.batch_spec`) in a run's plan, filled with random ids / labels / pixels."""
    task = tasks.get(plan.task)
    rows = plan.batch.expected_rows // jax.process_count()
    args = task.args(dict(plan.task_args))
    spec = task.batch_spec(rows, plan.data, model_config, args)
    rng = np.random.RandomState(seed)
    vocab = int(getattr(model_config, "vocab_size", 0))
    return {k: _fill(rng, s, vocab) for k, s in spec.items()}


def _fill(rng, spec: tasks.Spec, vocab: int) -> np.ndarray:
    shape, dtype = tuple(spec.shape), np.dtype(spec.dtype)
    if spec.fill == "tokens":
        return rng.randint(FIRST_ID, max(vocab, FIRST_ID + 1), shape).astype(dtype)
    if spec.fill == "classes":
        return rng.randint(0, max(spec.high, 1), shape).astype(dtype)
    if spec.fill == "positions":
        return np.broadcast_to(np.arange(shape[-1]), shape).astype(dtype)
    if spec.fill == "pixels":
        return rng.standard_normal(shape).astype(dtype)
    return np.full(shape, 1 if spec.fill == "ones" else 0, dtype)


def _device_info() -> dict:
    devices = jax.devices()
    kind = devices[0].device_kind
    return {
        "device": f"{kind} x{len(devices)}",
        "device_kind": kind,
        "device_count": len(devices),
        "backend": jax.default_backend(),
    }


def _versions() -> dict:
    import flax
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__}


# ------------------------------------------------------------------------------- bench
def memory(compiled) -> dict:
    """XLA's per-device byte estimates of a compiled step (what a CPU can measure): the
    arguments (state + batch), outputs, temporaries and generated code; {} if the backend
    gives none."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return {}
    names = ("argument", "output", "temp", "generated_code", "alias")
    return {f"{n}_bytes": int(getattr(m, f"{n}_size_in_bytes", 0)) for n in names if m}


def compile_only(plan, *, tokenizer=None) -> dict:
    """Compiles the train step of a run's plan (pjx.plan) without running it: compile
    time, XLA's memory estimates (`temp_bytes`, `argument_bytes`, ...), the model FLOPs of
    one step (pjx.flops, as the train lines count them), plus the shapes."""
    s = train.build(plan, tokenizer=tokenizer)
    batch = synthetic_batch(s.plan, s.model.config)
    t0 = time.perf_counter()
    compiled = train.compile_step(s, batch)
    step_flops = flops.step_flops(s.plan, s.model.config, s.abstract_state.params, s.trainable)
    return {
        "compile_s": time.perf_counter() - t0,
        "step_tflops": step_flops / 1e12,
        "matmul_params": matmul_params(s.abstract_state.params),
        **memory(compiled),
        **_describe(s),
        **_device_info(),
        **_versions(),
    }


def run(
    plan,
    *,
    tokenizer=None,
    steps: int = 10,
    warmup: int = 2,
    num_batches: int = 2,
    profile_dir: str | None = None,
) -> dict:
    """Times the train step of a run's plan (pjx.plan) on synthetic batches; returns the
    result dict (`pjx bench` prints it as JSON). Batches are process-local: `batch_size /
    process_count` rows per process. `profile_dir`: a jax.profiler trace of the timed
    steps (not the warm-up) goes there."""
    c = compiled_step(plan, tokenizer=tokenizer, num_batches=num_batches)
    s, state = c.setup, c.state
    mcfg = s.model.config
    times = []
    with sharding.context(s.mesh):
        for i in range(warmup + steps):
            if profile_dir and i == warmup:
                jax.profiler.start_trace(profile_dir)
            t = time.perf_counter()
            with jax.profiler.StepTraceAnnotation("train", step_num=i - warmup + 1):
                state, mets = c.step(state, c.batches[i % len(c.batches)], *s.frozen)
                jax.block_until_ready((state, mets))
            if i >= warmup:
                times.append(time.perf_counter() - t)
        if profile_dir:
            jax.profiler.stop_trace()
    loss = float(distributed.host_value(mets["loss"]))
    if not math.isfinite(loss):
        raise RuntimeError(f"pjx bench: loss is {loss} after {warmup + steps} steps")

    step_s = statistics.median(times)
    B = plan.batch.expected_rows
    seq = tokens_per_example(plan, mcfg)
    tokens_per_s = B * seq / step_s
    n_matmul = matmul_params(s.abstract_state.params)
    # The train lines' count (pjx.flops): LoRA's frozen weights form no weight gradient.
    fpt = flops.step_flops(plan, mcfg, s.abstract_state.params, s.trainable) / (B * seq)
    info = _device_info()
    out = {
        "tokens_per_s": tokens_per_s,
        "examples_per_s": B / step_s,
        "step_s": step_s,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "compile_s": c.compile_s,
        "matmul_params": n_matmul,
        "flops_per_token": fpt,
        "model_tflops_per_s": tokens_per_s * fpt / 1e12,
        **memory(c.step),
        **_peak_memory(),
        **info,
        **_versions(),
        **_describe(s),
        "seq_len": seq,
        "steps": steps,
        "warmup": warmup,
        "loss": loss,
        **({"profile_dir": profile_dir} if profile_dir else {}),
    }
    peak, key = peak_tflops(info["device_kind"])
    if peak is not None and info["backend"] != "cpu":
        out["peak_tflops"] = peak
        out["peak"] = f"{key}: {peak} TFLOP/s dense bf16 per device"
        out["mfu"] = mfu(tokens_per_s, fpt, peak, info["device_count"])
    return out


def _describe(s) -> dict:
    """What was measured: model, task, shapes, what trains (LoRA, DP-SGD), precision,
    attention, remat / scan."""
    p, m = s.plan, s.model.config
    leaves = jax.tree.leaves(s.abstract_state.params)
    trains = jax.tree.leaves(s.trainable) if s.trainable is not None else [True] * len(leaves)
    return {
        "model": f"{p.model.family}/{p.model.size}",
        "task": p.task,
        "params": sum(math.prod(x.shape) for x in leaves),
        "trained_params": sum(math.prod(x.shape) for x, t in zip(leaves, trains) if t),
        "lora_rank": int(p.trainable.lora["rank"]) if p.trainable.lora else 0,
        "dp_noise_multiplier": p.dp.noise_multiplier if p.dp else 0.0,
        "batch_size": p.batch.expected_rows,
        "seq_len": tokens_per_example(p, m),
        "dtype": str(getattr(m, "dtype", "float32")),
        "attention_impl": getattr(m, "attention_impl", None) or "default",
        "remat": getattr(m, "remat", "none"),
        "scan_layers": bool(getattr(m, "scan_layers", False)),
    }


def _peak_memory() -> dict:
    """Peak device memory in use so far (GPU / TPU report it; the CPU does not)."""
    stats = jax.devices()[0].memory_stats() or {}
    return {"peak_bytes": int(stats["peak_bytes_in_use"])} if "peak_bytes_in_use" in stats else {}


def human_line(r: dict) -> str:
    line = (
        f"pjx bench {r['model']} {r['task']} B={r['batch_size']} L={r['seq_len']} "
        f"{r['dtype']} on {r['device']}: compile {r['compile_s']:.1f}s | step "
        f"{r['step_s'] * 1e3:.1f} ms (median of {r['steps']}) | {r['tokens_per_s']:,.0f} "
        f"tokens/s | {r['model_tflops_per_s']:.2f} model TFLOP/s"
    )
    if "mfu" in r:
        line += f" | MFU {100 * r['mfu']:.1f}% of {r['peak']}"
    return line


# ---------------------------------------------------------------- a compiled step
class CompiledStep(NamedTuple):
    """A built run's train step compiled ahead of time on synthetic batches."""

    setup: train.Setup
    step: Any  # the compiled step: (state, device batch) -> (state, metrics)
    state: train.TrainState  # the initial state
    batches: list  # device batches (synthetic, seeds 0, 1, ...)
    compile_s: float  # the compile alone


def compiled_step(plan, *, tokenizer=None, num_batches: int = 1) -> CompiledStep:
    """The train step of a run's plan (pjx.plan), compiled on its synthetic batches, with
    its initial state: what `run` times, for scripts that time or profile it themselves."""
    # A task's frozen models (distill's teacher) run with random parameters: the same cost.
    s = train.random_frozen(train.build(plan, tokenizer=tokenizer))
    batches = [synthetic_batch(plan, s.model.config, seed=i) for i in range(max(num_batches, 1))]
    state = train.create_state(s, plan.loop.seed)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    compiled = train.compile_step(s, batches[0])
    compile_s = time.perf_counter() - t0
    with sharding.context(s.mesh):
        device_batches = [sharding.global_batch(b, s.batch_sharding) for b in batches]
    jax.block_until_ready(device_batches)
    return CompiledStep(s, compiled, state, device_batches, compile_s)
