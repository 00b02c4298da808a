"""T5 v1.1 <-> Hugging Face `T5ForConditionalGeneration`.

pjx keeps each stack's relative-position bias table once, at `{stack}/relative_attention_bias`;
HF keeps it in block 0's self-attention. The LM head is untied and unscaled (T5.1.1). The
original T5 (tied head, decoder output scaled by d_model**-0.5) is refused.
"""

from __future__ import annotations

MODEL_TYPE = "t5"
PREFIX = ""
RENAMES = (
    (
        r"^(encoder|decoder)/relative_attention_bias/",
        r"\1/block/0/layer/0/SelfAttention/relative_attention_bias/",
    ),
    (r"/(block|layer)_(\d+)(?=/)", r"/\1/\2"),
)
KERNELS = ((r"Attention/o/kernel$", "linear_in2"),)
IGNORED = (r"^(encoder|decoder)\.embed_tokens\.weight$",)  # tied to `shared`
ALIASES = {
    "shared.weight": ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"),
    # transformers 5 may save an unscaled T5 whose head is tied to `shared` without lm_head.
    "lm_head.weight": ("shared.weight",),
}
OPTIONAL = ()
PJX_ONLY = ()

# HF `feed_forward_proj` -> pjx activation (HF maps "gated-gelu" to the tanh GELU).
ACTIVATIONS = {
    "gated-gelu": "gated-gelu",
    "gated-gelu_new": "gated-gelu",
    "gated-relu": "gated-relu",
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_new",
}
_HF_ACT = {a: a for a in ("gated-gelu", "gated-relu", "relu", "gelu", "gelu_new")}


def scales_decoder_output(cfg: dict) -> bool:
    """Whether HF rescales the decoder output by d_model**-0.5 before the LM head: the original
    T5 does (tied head); v1.1 does not. transformers 5 writes `scale_decoder_outputs`; older
    configs say `tie_word_embeddings: false` for v1.1 (absent means true)."""
    if "scale_decoder_outputs" in cfg:
        return bool(cfg["scale_decoder_outputs"])
    return cfg.get("tie_word_embeddings", True) is not False


def config_from_hf(cfg: dict, tensors) -> dict:
    """pjx `t5.Config` fields from config.json."""
    if scales_decoder_output(cfg):
        raise ValueError(
            "config.json describes the original T5 (LM head tied to the embeddings, decoder "
            "output scaled by d_model**-0.5; tie_word_embeddings is not false). pjx implements "
            "T5 v1.1 (untied, unscaled head): use a t5-v1_1 style checkpoint "
            '("tie_word_embeddings": false, "feed_forward_proj": "gated-gelu").'
        )
    proj = cfg.get("feed_forward_proj", "relu")
    if proj not in ACTIVATIONS:
        raise ValueError(
            f"config.json feed_forward_proj={proj!r}: pjx's T5 supports {list(ACTIVATIONS)}"
        )
    pad = cfg.get("pad_token_id", 0)
    return dict(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["d_model"],
        num_layers=cfg["num_layers"],
        num_decoder_layers=cfg.get("num_decoder_layers") or cfg["num_layers"],
        num_heads=cfg["num_heads"],
        head_dim=cfg["d_kv"],
        mlp_dim=cfg["d_ff"],
        relative_attention_num_buckets=cfg.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=cfg.get("relative_attention_max_distance", 128),
        dropout_rate=cfg.get("dropout_rate", 0.1),
        attention_dropout_rate=cfg.get("dropout_rate", 0.1),  # HF drops attention at this rate
        layer_norm_eps=cfg.get("layer_norm_epsilon", 1e-6),
        activation=ACTIVATIONS[proj],
        pad_token_id=pad,
        decoder_start_token_id=cfg.get("decoder_start_token_id", pad),
    )


def config_to_hf(c) -> dict:
    """config.json for pjx `t5.Config` `c` (read as v1.1 by transformers 4 and 5)."""
    if c.activation not in _HF_ACT:
        raise ValueError(f"T5 activation {c.activation!r} has no Hugging Face equivalent here")
    return dict(
        architectures=["T5ForConditionalGeneration"],
        model_type=MODEL_TYPE,
        vocab_size=c.vocab_size,
        d_model=c.hidden_size,
        num_layers=c.num_layers,
        num_decoder_layers=c.num_decoder_layers,
        num_heads=c.num_heads,
        d_kv=c.head_dim,
        d_ff=c.mlp_dim,
        relative_attention_num_buckets=c.relative_attention_num_buckets,
        relative_attention_max_distance=c.relative_attention_max_distance,
        dropout_rate=c.dropout_rate,
        layer_norm_epsilon=c.layer_norm_eps,
        feed_forward_proj=_HF_ACT[c.activation],
        is_encoder_decoder=True,
        tie_word_embeddings=False,
        scale_decoder_outputs=False,
        pad_token_id=c.pad_token_id,
        eos_token_id=1,
        decoder_start_token_id=c.decoder_start_token_id,
    )
