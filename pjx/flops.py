"""Model FLOPs of a train step and the device peaks they are measured against: what `pjx
bench` and every train line (`mfu`, `model_tflops_per_s`) report, counted once.

The count is the model's (Kaplan et al. 2020; PaLM appendix B), not what the step runs:
rematerialisation, DP-SGD's per-example norms and noise, and the masked half of causal
attention are not useful FLOPs. With frozen weights (LoRA's base, `optimizer.freeze`) the
backward still propagates through them (2N) but forms no weight gradient (another 2N).
"""

from __future__ import annotations

import math

import jax

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


def tokens_per_example(plan, model_config) -> int:
    """Sequence positions one example of a run (a pjx.plan.Plan) puts through the model
    (ViT: patches (+ [CLS]))."""
    if plan.model.family == "vit":
        n = model_config.max_position_embeddings
        return 2 * n if plan.task == "contrastive" else n
    return int(plan.seq_len)


def step_flops(plan, model_config, abstract_params, trainable=None) -> float:
    """Model FLOPs of one train step of a run's plan: per token 6N for the matmul
    parameters that train, 4N for those that are frozen, plus the attention term; times
    the tokens (ViT: patches) of `batch_size` examples."""
    seq = tokens_per_example(plan, model_config)
    layers = int(getattr(model_config, "num_layers", 0))
    layers += int(getattr(model_config, "num_decoder_layers", 0))
    n_all = matmul_params(abstract_params)
    n_frozen = 0
    if trainable is not None:
        frozen = jax.tree.map(lambda x, t: x if not t else None, abstract_params, trainable)
        n_frozen = matmul_params(frozen)
    per_token = flops_per_token(n_all, layers, seq, int(model_config.hidden_size))
    return (per_token - 2.0 * n_frozen) * seq * plan.batch.expected_rows
