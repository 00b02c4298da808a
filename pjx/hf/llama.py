"""Llama family <-> Hugging Face `LlamaForCausalLM`, `Qwen2ForCausalLM`,
`Qwen3ForCausalLM`, `MistralForCausalLM` (one parameter layout; config.json's
`model_type` says which switches are on, and pjx keeps it as `variant` for the export).

Both forms of the rotary settings are read: transformers 5's `rope_parameters`
({"rope_type", "rope_theta", ...}) and the older top-level `rope_theta` + `rope_scaling`.
"""

from __future__ import annotations

from pjx.nn import rope

MODEL_TYPE = "llama"
MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
}
PREFIX = "model."  # a bare LlamaModel checkpoint saves its keys without it
RENAMES = ((r"/layers_(\d+)(?=/)", r"/layers/\1"),)
KERNELS = ((r"/o_proj/kernel$", "linear_in2"),)
IGNORED = (
    r"rotary_emb\.inv_freq$",  # a buffer older checkpoints saved
    r"^lm_head\.weight$",  # a tied head's copy (an untied head uses it)
)
ALIASES = {}
OPTIONAL = ()
PJX_ONLY = ()

_ROPE_KEYS = dict(
    factor="rope_factor",
    low_freq_factor="rope_low_freq_factor",
    high_freq_factor="rope_high_freq_factor",
    original_max_position_embeddings="rope_original_max_position",
)


def _rope_fields(cfg: dict) -> dict:
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in rope.SCALINGS:
        raise ValueError(
            f"config.json RoPE type {kind!r} is not supported; pjx implements "
            f"{sorted(rope.SCALINGS)} (dynamic, yarn, longrope, ... change the rotation with "
            "the sequence length)"
        )
    partial = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if float(partial) != 1.0:
        raise ValueError(f"config.json partial_rotary_factor={partial}: pjx rotates whole heads")
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    out = dict(rope_theta=float(theta), rope_scaling=kind)
    out.update({field: params[k] for k, field in _ROPE_KEYS.items() if k in params})
    if kind == "llama3" and "original_max_position_embeddings" not in params:
        out["rope_original_max_position"] = cfg["max_position_embeddings"]
    return out


def _bias_switches(cfg: dict, model_type: str) -> dict:
    """(qkv_bias, out_bias, qk_norm, sliding_window) of each model type's config.json."""
    bias = bool(cfg.get("attention_bias", False))
    if model_type in ("qwen2", "qwen3") and cfg.get("use_sliding_window"):
        raise ValueError(
            f"config.json use_sliding_window=true ({model_type}: a window on some layers "
            "only) is not supported; pjx's sliding window covers every layer (Mistral)"
        )
    if model_type == "qwen2":  # q / k / v always carry biases, o_proj never
        return dict(qkv_bias=True, out_bias=False, qk_norm=False, sliding_window=0)
    window = int(cfg.get("sliding_window") or 0) if model_type == "mistral" else 0
    return dict(qkv_bias=bias, out_bias=bias, qk_norm=model_type == "qwen3", sliding_window=window)


def _check_biases(tensors, fields: dict):
    """A projection bias in the weights that config.json does not switch on."""
    allowed = {"q_proj": fields["qkv_bias"], "k_proj": fields["qkv_bias"],
               "v_proj": fields["qkv_bias"], "o_proj": fields["out_bias"],
               "gate_proj": fields["mlp_bias"], "up_proj": fields["mlp_bias"],
               "down_proj": fields["mlp_bias"]}  # fmt: skip
    for key in tensors.keys():
        parts = key.split(".")
        if parts[-1] == "bias" and len(parts) > 1 and allowed.get(parts[-2]) is False:
            raise ValueError(
                f"the checkpoint has a bias {key!r} that config.json does not switch on "
                f"({fields['variant']}: biases on q/k/v {fields['qkv_bias']}, o_proj "
                f"{fields['out_bias']}, MLP {fields['mlp_bias']}); fix config.json's "
                "attention_bias / mlp_bias, or the weights"
            )


def config_from_hf(cfg: dict, tensors) -> dict:
    """pjx `llama.Config` fields from config.json."""
    model_type = cfg["model_type"]
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"config.json hidden_act={act!r}: pjx's Llama family uses silu (SwiGLU)")
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    fields = dict(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=0 if head_dim * heads == cfg["hidden_size"] else head_dim,
        mlp_dim=cfg["intermediate_size"],
        max_position_embeddings=cfg.get("max_position_embeddings", 2048),
        layer_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        variant=model_type,
        attention_dropout_rate=float(cfg.get("attention_dropout") or 0.0),
        init_std=cfg.get("initializer_range", 0.02),
        **_rope_fields(cfg),
        **_bias_switches(cfg, model_type),
    )
    _check_biases(tensors, fields)
    return fields


def config_to_hf(c) -> dict:
    """config.json for pjx `llama.Config` `c`, as the model type of its `variant`."""
    t = c.variant
    want = {
        "qwen2": c.qkv_bias and not c.out_bias and not c.qk_norm,
        "qwen3": c.qk_norm and c.qkv_bias == c.out_bias,
        "llama": not c.qk_norm and c.qkv_bias == c.out_bias,
        "mistral": not c.qk_norm and c.qkv_bias == c.out_bias and not c.mlp_bias,
    }
    if not want[t] or (c.sliding_window and t != "mistral") or (c.mlp_bias and t != "llama"):
        raise ValueError(
            f"a llama model with qkv_bias={c.qkv_bias}, out_bias={c.out_bias}, "
            f"qk_norm={c.qk_norm}, mlp_bias={c.mlp_bias}, sliding_window={c.sliding_window} "
            f"has no Hugging Face {t!r} equivalent: set model.variant to the model type "
            "these switches describe (llama, qwen2, qwen3, mistral)"
        )
    head_dim = c.head_dim or c.hidden_size // c.num_heads
    rope_params = dict(rope_type=c.rope_scaling, rope_theta=c.rope_theta)
    if c.rope_scaling != "default":
        rope_params["factor"] = c.rope_factor
    if c.rope_scaling == "llama3":
        rope_params.update(
            low_freq_factor=c.rope_low_freq_factor,
            high_freq_factor=c.rope_high_freq_factor,
            original_max_position_embeddings=c.rope_original_max_position,
        )
    out = dict(
        architectures=[ARCHITECTURES[t]],
        model_type=t,
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.mlp_dim,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads or c.num_heads,
        head_dim=head_dim,
        hidden_act="silu",
        max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.layer_norm_eps,
        initializer_range=c.init_std,
        tie_word_embeddings=c.tie_word_embeddings,
        attention_dropout=c.attention_dropout_rate,
        rope_parameters=rope_params,
    )
    if t in ("llama", "qwen3", "mistral"):
        out["attention_bias"] = c.qkv_bias
    if t == "llama":
        out["mlp_bias"] = c.mlp_bias
    if t == "mistral":
        out["sliding_window"] = c.sliding_window or None
    if t in ("qwen2", "qwen3"):
        out["use_sliding_window"] = False
    return out
