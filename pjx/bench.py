"""`pjx bench`'s core: time compiled train steps on synthetic batches.

The batch has the keys and shapes of the config's task (`Task.batch_spec`), filled with
random ids (or pixels), so no tokenizer or data set is needed. The step is compiled
ahead of time (`compile_s`), run `warmup` times, then `steps` times with a device sync
after each one; `step_s` is the median. On accelerators whose peak is in `PEAK_TFLOPS`,
`mfu` = model FLOP/s / (peak * devices), with the FLOP count of `flops_per_token`.

It reads a resolved config by key, so a plain dict drives it too, and it imports neither
ml_collections, grain nor tensorflow: benchmarks/gpu_bench.py runs it on an accelerator host
that has only jax, flax, optax and orbax (tests/test_bench.py checks that). A loaded
config file goes through pjx.bench_from_config first (or times the input pipeline there).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from pjx import distributed, sharding, tasks, train

# Dense bfloat16 peak TFLOP/s per device (vendor data sheets, no sparsity), matched as a
# substring of `device.device_kind`; the longest match wins ("H100 PCIe" before "H100").
PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,  # SXM
    "H200": 989.4,
    "GH200": 989.4,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,  # v5e
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,  # jax reports v5p as "TPU v5"
    "TPU v6 lite": 918.0,  # v6e (Trillium)
    "TPU v6e": 918.0,
}

# BERT-family special ids of pjx's trained tokenizers ([PAD]=0 [UNK] [CLS] [SEP] [MASK]);
# used for synthetic MLM batches when the config names no tokenizer ids.
MLM_DEFAULTS = dict(mask_id=4, pad_id=0, special_ids=(0, 1, 2, 3))
# Synthetic ids start here so they never collide with the special ids above.
FIRST_ID = 5


# ---------------------------------------------------------------------------------- flops
def flops_per_token(n_params: int, num_layers: int, seq_len: int, hidden: int) -> float:
    """Training FLOPs per token: 6N + 12 * layers * seq_len * hidden.

    6N: forward (2N) + backward (4N) matmul FLOPs of N parameters (Kaplan et al. 2020,
    sec. 2.1). 12 * layers * L * D: the attention scores q k^T and the weighted sum
    p v, 2 * 2 * L * D each per token and layer forward, times 3 for forward + backward
    (PaLM, Chowdhery et al. 2022, appendix B; nanoGPT `estimate_mfu`). Counted for the full
    L x L matrix, causal or not, as PaLM does (XLA computes the masked half too).
    """
    return 6.0 * n_params + 12.0 * num_layers * seq_len * hidden


def matmul_params(params) -> int:
    """Parameters that take part in matmuls: all but the position / token-type tables,
    which are only looked up (nanoGPT's `non_embedding` count; tied word embeddings stay,
    they are the output projection)."""
    n = 0
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = jax.tree_util.keystr(path, simple=True, separator="/")
        if any(t in keys for t in ("position_embeddings", "wpe/", "token_type_embeddings")):
            continue
        n += math.prod(x.shape)
    return n


def peak_tflops(device_kind: str) -> tuple[float | None, str]:
    """(dense bf16 peak TFLOP/s per device, the table key used) or (None, '')."""
    hits = [k for k in PEAK_TFLOPS if k.lower() in device_kind.lower()]
    if not hits:
        return None, ""
    key = max(hits, key=len)
    return PEAK_TFLOPS[key], key


def mfu(tokens_per_s: float, flops_per_tok: float, peak_tflops_per_device: float, devices: int):
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' summed peak."""
    return tokens_per_s * flops_per_tok / (peak_tflops_per_device * 1e12 * devices)


# ------------------------------------------------------------------------ synthetic data
def synthetic_batch(config, model_config, seed: int = 0) -> dict:
    """A process-local NumPy batch (batch_size / process_count rows) shaped like the
    task's (`Task.batch_spec`), filled with random ids / labels / pixels."""
    task = tasks.get(config["task"])
    rows = int(config["batch_size"]) // jax.process_count()
    args = task.args(dict(config["task_args"]))
    spec = task.batch_spec(rows, config["data"], model_config, args)
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


def tokens_per_example(config, model_config) -> int:
    """Sequence positions one example puts through the model (ViT: patches (+ [CLS]))."""
    if config["model"]["name"] == "vit":
        n = model_config.max_position_embeddings
        return 2 * n if config["task"] == "contrastive" else n
    return int(config["data"]["seq_len"])


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


def compile_only(config, *, tokenizer=None) -> dict:
    """Compiles the train step of a resolved `config` without running it: compile time and
    XLA's memory estimates (`temp_bytes`, `argument_bytes`, ...), plus the shapes."""
    s = train.build(config, tokenizer=tokenizer)
    batch = synthetic_batch(s.config, s.model.config)
    t0 = time.perf_counter()
    compiled = train.compile_step(s, batch)
    return {
        "compile_s": time.perf_counter() - t0,
        **memory(compiled),
        **_describe(s),
        **_device_info(),
        **_versions(),
    }


def run(config, *, tokenizer=None, steps: int = 10, warmup: int = 2, num_batches: int = 2) -> dict:
    """Times the train step of a resolved `config` (`pjx.config.resolve`, or a plain dict
    with its keys) on synthetic batches; returns the result dict (`pjx bench` prints it as
    JSON). Batches are process-local: `batch_size / process_count` rows per process."""
    c = compiled_step(config, tokenizer=tokenizer, num_batches=num_batches)
    s, state = c.setup, c.state
    config, mcfg = s.config, s.model.config
    times = []
    with sharding.context(s.mesh):
        for i in range(warmup + steps):
            t = time.perf_counter()
            state, mets = c.step(state, c.batches[i % len(c.batches)], *s.frozen)
            jax.block_until_ready((state, mets))
            if i >= warmup:
                times.append(time.perf_counter() - t)
    loss = float(distributed.host_value(mets["loss"]))
    if not math.isfinite(loss):
        raise RuntimeError(f"pjx bench: loss is {loss} after {warmup + steps} steps")

    step_s = statistics.median(times)
    B = int(config["batch_size"])
    seq = tokens_per_example(config, mcfg)
    tokens_per_s = B * seq / step_s
    n_matmul = matmul_params(s.abstract_state.params)
    layers = int(getattr(mcfg, "num_layers", 0)) + int(getattr(mcfg, "num_decoder_layers", 0))
    fpt = flops_per_token(n_matmul, layers, seq, int(mcfg.hidden_size))
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
    }
    peak, key = peak_tflops(info["device_kind"])
    if peak is not None and info["backend"] != "cpu":
        out["peak_tflops"] = peak
        out["peak"] = f"{key}: {peak} TFLOP/s dense bf16 per device"
        out["mfu"] = mfu(tokens_per_s, fpt, peak, info["device_count"])
    return out


def _describe(s) -> dict:
    """What was measured: model, task, shapes, precision, attention, remat / scan."""
    c, m = s.config, s.model.config
    return {
        "model": f"{c['model']['name']}/{c['model']['size']}",
        "task": c["task"],
        "params": sum(math.prod(x.shape) for x in jax.tree.leaves(s.abstract_state.params)),
        "batch_size": int(c["batch_size"]),
        "seq_len": tokens_per_example(c, m),
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


def compiled_step(config, *, tokenizer=None, num_batches: int = 1) -> CompiledStep:
    """The train step of a resolved `config`, compiled on its synthetic batches, with its
    initial state: what `run` times, for scripts that time or profile it themselves."""
    # A task's frozen models (distill's teacher) run with random parameters: the same cost.
    s = train.random_frozen(train.build(config, tokenizer=tokenizer))
    batches = [
        synthetic_batch(s.config, s.model.config, seed=i) for i in range(max(num_batches, 1))
    ]
    state = train.create_state(s, s.config["seed"])
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    compiled = train.compile_step(s, batches[0])
    compile_s = time.perf_counter() - t0
    with sharding.context(s.mesh):
        device_batches = [sharding.global_batch(b, s.batch_sharding) for b in batches]
    jax.block_until_ready(device_batches)
    return CompiledStep(s, compiled, state, device_batches, compile_s)
