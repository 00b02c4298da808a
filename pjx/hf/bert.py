"""BERT <-> Hugging Face `BertModel` / `BertForPreTraining` / `BertForMaskedLM` /
`BertForNextSentencePrediction` / `BertForSequenceClassification`.

The heads come from the checkpoint's tensors: `cls.predictions.*` (MLM; the decoder is tied
to the word embeddings), `cls.seq_relationship.*` (NSP), `classifier.*` (sequence
classification, `num_labels` = its rows).
"""

from __future__ import annotations

from pjx.hf.mapping import label_maps

MODEL_TYPE = "bert"
PREFIX = "bert."  # a bare BertModel (e.g. sentence-transformers) saves without it
RENAMES = ((r"/layer_(\d+)(?=/)", r"/layer/\1"),)
KERNELS = ((r"attention/output/dense/kernel$", "linear_in2"),)
IGNORED = (
    r"embeddings\.position_ids$",  # a buffer in older checkpoints
    r"^cls\.predictions\.decoder\.(weight|bias)$",  # tied to word embeddings / predictions.bias
)
ALIASES = {"cls.predictions.bias": ("cls.predictions.decoder.bias",)}
OPTIONAL = (r"^bert/pooler/",)  # BertForMaskedLM has no pooler; pjx's BERT always does
PJX_ONLY = ()

# HF `hidden_act` -> pjx activation ("gelu" is the exact erf GELU in both).
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new"}
_HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_new"}


def _require(cfg: dict, key: str, ok, what: str):
    if key in cfg and not ok(cfg[key]):
        raise ValueError(f"config.json {key}={cfg[key]!r}: pjx's BERT supports {what} only")


def config_from_hf(cfg: dict, tensors) -> dict:
    """pjx `bert.Config` fields from config.json and the checkpoint's tensor names."""
    _require(cfg, "position_embedding_type", lambda v: v == "absolute", "'absolute'")
    _require(cfg, "is_decoder", lambda v: not v, "an encoder (false)")
    _require(cfg, "add_cross_attention", lambda v: not v, "no cross-attention (false)")
    _require(cfg, "tie_word_embeddings", lambda v: v is not False, "a tied MLM decoder (true)")
    _require(cfg, "hidden_act", lambda v: v in ACTIVATIONS, f"hidden_act in {list(ACTIVATIONS)}")
    keys = set(tensors.keys())
    return dict(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"],
        mlp_dim=cfg["intermediate_size"],
        max_position_embeddings=cfg.get("max_position_embeddings", 512),
        type_vocab_size=cfg.get("type_vocab_size", 2),
        dropout_rate=cfg.get("hidden_dropout_prob", 0.1),
        attention_dropout_rate=cfg.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
        activation=ACTIVATIONS[cfg.get("hidden_act", "gelu")],
        init_std=cfg.get("initializer_range", 0.02),
        mlm_head="cls.predictions.transform.dense.weight" in keys,
        nsp_head="cls.seq_relationship.weight" in keys,
        num_labels=classifier_labels(cfg, tensors),
    )


def classifier_labels(cfg: dict, tensors, key: str = "classifier.weight") -> int:
    """The classes of the checkpoint's sequence-classification head (its rows), 0 when
    config.json names another architecture or the tensor is absent."""
    archs = cfg.get("architectures") or []
    seq_cls = any(a.endswith("ForSequenceClassification") for a in archs) or not archs
    return tensors.shape(key)[0] if seq_cls and key in set(tensors.keys()) else 0


def config_to_hf(c) -> dict:
    """config.json for pjx `bert.Config` `c`; `architectures` names the class with its heads."""
    if c.activation not in _HF_ACT:
        raise ValueError(f"BERT activation {c.activation!r} has no Hugging Face equivalent here")
    if c.num_labels > 0 and c.pooling != "cls":
        raise ValueError(
            f"model.pooling={c.pooling!r}: Hugging Face's BertForSequenceClassification "
            "classifies the pooler output over [CLS], so this classifier has no equivalent "
            "there (train with model.pooling='cls' to export it)"
        )
    if c.mlm_head and c.nsp_head:
        arch = "BertForPreTraining"
    elif c.mlm_head:
        arch = "BertForMaskedLM"
    elif c.nsp_head:
        arch = "BertForNextSentencePrediction"
    elif c.num_labels > 0:
        arch = "BertForSequenceClassification"
    else:
        arch = "BertModel"
    out = dict(
        architectures=[arch],
        model_type=MODEL_TYPE,
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        intermediate_size=c.mlp_dim,
        max_position_embeddings=c.max_position_embeddings,
        type_vocab_size=c.type_vocab_size,
        hidden_dropout_prob=c.dropout_rate,
        attention_probs_dropout_prob=c.attention_dropout_rate,
        layer_norm_eps=c.layer_norm_eps,
        hidden_act=_HF_ACT[c.activation],
        initializer_range=c.init_std,
        position_embedding_type="absolute",
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    if c.num_labels > 0:
        out.update(label_maps(c.num_labels))
    return out
