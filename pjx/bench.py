"""`pjx bench`: time compiled train steps on synthetic batches; the last line is JSON.

The batch has the keys and shapes of the config's task (docs/architecture.md), filled
with random ids (or pixels), so no tokenizer or data set is needed. The step is compiled
ahead of time (`compile_s`), run `warmup` times, then `steps` times with a device sync
after each one; `step_s` is the median. On accelerators whose peak is in `PEAK_TFLOPS`,
`mfu` = model FLOP/s / (peak * devices), with the FLOP count of `flops_per_token`.
"""

from __future__ import annotations

import json
import math
import statistics
import time

import jax
import numpy as np

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
        keys = "/".join(str(getattr(k, "key", k)) for k in path)
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
def _tokens(rng, shape, vocab):
    return rng.randint(FIRST_ID, max(vocab, FIRST_ID + 1), shape).astype(np.int32)


def synthetic_batch(config, model_config, seed: int = 0) -> dict:
    """A process-local NumPy batch with the task's keys (docs/architecture.md)."""
    rng = np.random.RandomState(seed)
    B, task, name = int(config.batch_size), config.task, config.model.name
    if name == "vit":
        S, C = model_config.image_size, model_config.num_channels
        img = lambda: rng.standard_normal((B, S, S, C)).astype(np.float32)
        if task == "contrastive":
            return {"view_a": img(), "view_b": img()}
        labels = rng.randint(0, max(model_config.num_labels, 1), (B,)).astype(np.int32)
        return {"pixel_values": img(), "label": labels}
    L = int(config.data.seq_len)
    V = int(model_config.vocab_size)
    ids = _tokens(rng, (B, L), V)
    ones = np.ones((B, L), np.int32)
    if task == "mlm":
        batch = {
            "input_ids": ids,
            "attention_mask": ones,
            "token_type_ids": np.zeros((B, L), np.int32),
            "segment_ids": ones,
            "position_ids": np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy(),
        }
        if config.task_args.get("nsp", False):
            batch["next_sentence_label"] = rng.randint(0, 2, (B,)).astype(np.int32)
        return batch
    if task == "clm":
        pos = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy()
        return {"input_ids": ids, "segment_ids": ones, "position_ids": pos}
    if task == "span":
        return {"input_ids": ids}
    if task == "seq2seq":
        T = int(config.data.get("target_len", 0) or L)
        return {
            "input_ids": ids,
            "attention_mask": ones,
            "labels": _tokens(rng, (B, T), V),
            "decoder_attention_mask": np.ones((B, T), np.int32),
        }
    if task == "classify":
        labels = rng.randint(0, max(model_config.num_labels, 1), (B,)).astype(np.int32)
        return {
            "input_ids": ids,
            "attention_mask": ones,
            "token_type_ids": np.zeros((B, L), np.int32),
            "label": labels,
        }
    raise ValueError(f"pjx bench: no synthetic batch for task {task!r} with model {name!r}")


def tokens_per_example(config, model_config) -> int:
    """Sequence positions one example puts through the model (ViT: patches (+ [CLS]))."""
    if config.model.name == "vit":
        n = model_config.max_position_embeddings
        return 2 * n if config.task == "contrastive" else n
    return int(config.data.seq_len)


# ----------------------------------------------------------------------------- config
def first_stage(config):
    """A chained config's first stage (the pretraining one); the config itself otherwise."""
    from pjx import config as config_lib

    if config.get("stages"):
        return config_lib.stage_configs(config, "", ())[0][1]
    return config


def spec_vocab_size(spec: str) -> int | None:
    """`vocab_size=N` of a `train:...?vocab_size=N&...` tokenizer spec (None if absent)."""
    from urllib.parse import parse_qs

    if not spec.startswith("train:") or "?" not in spec:
        return None
    values = parse_qs(spec.split("?", 1)[1]).get("vocab_size")
    return int(values[0]) if values else None


def load_tokenizer(config):
    """The config's tokenizer when it is a file (`sentencepiece:PATH`, a folder, ...), for
    its vocabulary size and special ids; None for `train:` specs or when it cannot load."""
    spec = config.data.get("tokenizer", "") or ""
    if not spec or spec.startswith("train:"):
        return None
    from pjx import tokenizers

    try:
        return tokenizers.load(spec)
    except Exception as e:  # noqa: BLE001 - bench still runs on the config's sizes
        print(f"pjx bench: tokenizer {spec!r} not loaded ({e}); using the model's vocab size")
        return None


def prepare_config(config, tokenizer=None):
    """Bench-ready copy: first stage, vocab size from a `train:` tokenizer spec, MLM ids."""
    from pjx import config as config_lib

    config = config_lib.apply_overrides(first_stage(config), ())
    vocab = spec_vocab_size(config.data.get("tokenizer", "") or "")
    if tokenizer is None and vocab and config.model.get("vocab_size") is None:
        config_lib.set_key(config, "model.vocab_size", vocab, parse=False)
    if config.task == "mlm" and tokenizer is None:
        for key, value in MLM_DEFAULTS.items():
            if config.task_args.get(key) is None:
                config_lib.set_key(config, f"task_args.{key}", value, parse=False)
    if config.task == "classify" and int(config.model.get("num_labels", 0) or 0) <= 0:
        n = int(config.data.get("num_labels", 0) or 0) or (10 if config.model.name == "vit" else 2)
        config_lib.set_key(config, "model.num_labels", n, parse=False)
    return config


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
def run(config, *, steps: int = 10, warmup: int = 2, num_batches: int = 2) -> dict:
    """Times the config's train step; returns the result dict (printed as JSON by `main`)."""
    from pjx import sharding, train

    tokenizer = load_tokenizer(config)
    config = prepare_config(config, tokenizer)
    s = train.setup(config, tokenizer=tokenizer)
    mcfg = s.model.config
    batches = [synthetic_batch(config, mcfg, seed=i) for i in range(max(num_batches, 1))]
    state = train.create_state(s, config.seed)
    jax.block_until_ready(state)

    t0 = time.perf_counter()
    compiled = train.compile_step(s, batches[0])
    compile_s = time.perf_counter() - t0

    times = []
    with sharding.context(s.mesh):
        device_batches = [sharding.global_batch(b, s.batch_sharding) for b in batches]
        jax.block_until_ready(device_batches)
        for i in range(warmup + steps):
            t = time.perf_counter()
            state, mets = compiled(state, device_batches[i % len(device_batches)])
            jax.block_until_ready((state, mets))
            if i >= warmup:
                times.append(time.perf_counter() - t)
    loss = float(jax.device_get(mets["loss"]))
    if not math.isfinite(loss):
        raise RuntimeError(f"pjx bench: loss is {loss} after {warmup + steps} steps")

    step_s = statistics.median(times)
    B = int(config.batch_size)
    seq = tokens_per_example(config, mcfg)
    tokens_per_s = B * seq / step_s
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(s.abstract_state.params))
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
        "compile_s": compile_s,
        "params": n_params,
        "matmul_params": n_matmul,
        "flops_per_token": fpt,
        "model_tflops_per_s": tokens_per_s * fpt / 1e12,
        **info,
        **_versions(),
        "model": f"{config.model.name}/{config.model.size}",
        "task": config.task,
        "dtype": str(getattr(mcfg, "dtype", "float32")),
        "attention_impl": getattr(mcfg, "attention_impl", None) or "default",
        "batch_size": B,
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


def main(args, overrides) -> int:
    from pjx import config as config_lib

    config = config_lib.load(args.config, overrides)
    if getattr(args, "data_only", False):
        from pjx.data import bench_pipeline

        result = dict(bench_pipeline(first_stage(config), int(args.steps)))
        print(json.dumps(result), flush=True)
        return 0
    result = run(config, steps=int(args.steps), warmup=int(args.warmup))
    print(human_line(result), flush=True)
    print(json.dumps(result), flush=True)
    return 0
