"""ModernBERT <-> Hugging Face `ModernBertModel` / `ModernBertForMaskedLM` /
`ModernBertForSequenceClassification` (answerdotai/ModernBERT-base and -large).

The heads come from the checkpoint: `head.*` + `decoder.bias` (MLM; the decoder weight is
tied to the token embeddings), `classifier.*` (sequence classification). Both forms of the
rotary settings are read: transformers 5's `layer_types` + `rope_parameters`, and the
Hub's `global_attn_every_n_layers` + `global_rope_theta` / `local_rope_theta`.
"""

from __future__ import annotations

from pjx.hf.bert import classifier_labels
from pjx.hf.mapping import label_maps

MODEL_TYPE = "modernbert"
PREFIX = "model."  # a bare ModernBertModel saves its keys without it
RENAMES = ((r"/layers_(\d+)(?=/)", r"/layers/\1"),)
KERNELS = ((r"/attn/Wo/kernel$", "linear_in2"),)
IGNORED = (r"^decoder\.weight$",)  # the tied embedding's copy
ALIASES = {}
OPTIONAL = ()
PJX_ONLY = ()

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new",
                "silu": "silu", "relu": "relu"}  # fmt: skip
_HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_new", "silu": "silu", "relu": "relu"}


def _every_n(cfg: dict) -> int:
    """The global-attention period from `layer_types` (global at layers 0, n, 2n, ...)."""
    types = cfg.get("layer_types")
    if not types:
        return int(cfg.get("global_attn_every_n_layers", 3))
    glob = [i for i, t in enumerate(types) if t == "full_attention"]
    n = glob[1] - glob[0] if len(glob) > 1 else len(types)
    want = ["full_attention" if i % n == 0 else "sliding_attention" for i in range(len(types))]
    if types != want:
        raise ValueError(
            f"config.json layer_types {types}: pjx's ModernBERT has global attention on every "
            "n-th layer from the first (global_attn_every_n_layers) and local elsewhere"
        )
    return n


def _thetas(cfg: dict) -> dict:
    params = cfg.get("rope_parameters") or {}
    out = {}
    for key, kind, default in (("global_rope_theta", "full_attention", 160_000.0),
                               ("local_rope_theta", "sliding_attention", 10_000.0)):  # fmt: skip
        p = params.get(kind) or {}
        if p.get("rope_type", "default") != "default":
            raise ValueError(f"config.json rope_parameters[{kind!r}]: pjx rotates with 'default'")
        out[key] = float(p.get("rope_theta", cfg.get(key, default)))
    return out


def config_from_hf(cfg: dict, tensors) -> dict:
    """pjx `modernbert.Config` fields from config.json and the checkpoint's tensor names."""
    for key in ("hidden_activation", "classifier_activation"):
        if cfg.get(key, "gelu") not in _ACTIVATIONS:
            raise ValueError(f"config.json {key}={cfg[key]!r}: one of {sorted(_ACTIVATIONS)}")
    if cfg.get("tie_word_embeddings") is False:
        raise ValueError("config.json tie_word_embeddings=false: pjx's ModernBERT ties its decoder")
    keys = set(tensors.keys())
    return dict(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"],
        mlp_dim=cfg["intermediate_size"],
        max_position_embeddings=cfg.get("max_position_embeddings", 8192),
        layer_norm_eps=cfg.get("norm_eps", 1e-5),
        norm_bias=bool(cfg.get("norm_bias", False)),
        attention_bias=bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        decoder_bias=bool(cfg.get("decoder_bias", True)),
        classifier_bias=bool(cfg.get("classifier_bias", False)),
        global_attn_every_n_layers=_every_n(cfg),
        local_attention=int(cfg.get("local_attention", 128)),
        **_thetas(cfg),
        activation=_ACTIVATIONS[cfg.get("hidden_activation", "gelu")],
        classifier_activation=_ACTIVATIONS[cfg.get("classifier_activation", "gelu")],
        pooling=cfg.get("classifier_pooling", "cls"),
        dropout_rate=float(cfg.get("embedding_dropout") or cfg.get("mlp_dropout") or 0.0),
        attention_dropout_rate=float(cfg.get("attention_dropout") or 0.0),
        init_std=cfg.get("initializer_range", 0.02),
        mlm_head="decoder.bias" in keys or "head.dense.weight" in keys and not _seq_cls(cfg),
        num_labels=classifier_labels(cfg, tensors),
    )


def _seq_cls(cfg: dict) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures") or [])


def config_to_hf(c) -> dict:
    """config.json for pjx `modernbert.Config` `c`; `architectures` names its head."""
    if c.mlm_head and c.num_labels:
        raise ValueError(
            "a ModernBERT with both an MLM head and a classifier has no single Hugging Face "
            "class; export one of them (model.mlm_head=false, or num_labels=0)"
        )
    arch = "ModernBertForMaskedLM" if c.mlm_head else "ModernBertModel"
    if c.num_labels:
        arch = "ModernBertForSequenceClassification"
    n = c.global_attn_every_n_layers
    out = dict(
        architectures=[arch],
        model_type=MODEL_TYPE,
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        intermediate_size=c.mlp_dim,
        max_position_embeddings=c.max_position_embeddings,
        norm_eps=c.layer_norm_eps,
        norm_bias=c.norm_bias,
        attention_bias=c.attention_bias,
        mlp_bias=c.mlp_bias,
        decoder_bias=c.decoder_bias,
        classifier_bias=c.classifier_bias,
        layer_types=[
            "full_attention" if i % n == 0 else "sliding_attention" for i in range(c.num_layers)
        ],
        global_attn_every_n_layers=n,
        local_attention=c.local_attention,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": c.global_rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": c.local_rope_theta},
        },
        global_rope_theta=c.global_rope_theta,
        local_rope_theta=c.local_rope_theta,
        hidden_activation=_HF_ACT[c.activation],
        classifier_activation=_HF_ACT[c.classifier_activation],
        classifier_pooling=c.pooling,
        embedding_dropout=c.dropout_rate,
        mlp_dropout=c.dropout_rate,
        classifier_dropout=c.dropout_rate,
        attention_dropout=c.attention_dropout_rate,
        initializer_range=c.init_std,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        cls_token_id=2,
        sep_token_id=3,
    )
    if c.num_labels > 0:
        out.update(label_maps(c.num_labels))
    return out
