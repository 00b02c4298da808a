"""DistilBERT (Sanh et al. 2019) <-> Hugging Face `DistilBertModel` /
`DistilBertForMaskedLM` / `DistilBertForSequenceClassification`, as pjx's BERT with
`variant="distilbert"`: no token types, no pooler, the same post-LN layers under other
names (`q_lin`, `sa_layer_norm`, `ffn.lin1`, ...). Heads: `vocab_transform` /
`vocab_layer_norm` / `vocab_projector` (MLM, tied) and `pre_classifier` + ReLU +
`classifier` on [CLS]. The classifier's dropout is pjx's `dropout_rate` (DistilBERT's
`seq_classif_dropout` only matters in training)."""

from __future__ import annotations

import pjx.hf.bert as bert
from pjx.hf.mapping import label_maps

MODEL_TYPE = "distilbert"
PREFIX = "distilbert."
_LAYER = r"^bert/encoder/layer_(\d+)/"
RENAMES = (
    (r"^bert/embeddings/", "distilbert/embeddings/"),
    (_LAYER + "attention/self/query/", r"distilbert/transformer/layer/\1/attention/q_lin/"),
    (_LAYER + "attention/self/key/", r"distilbert/transformer/layer/\1/attention/k_lin/"),
    (_LAYER + "attention/self/value/", r"distilbert/transformer/layer/\1/attention/v_lin/"),
    (_LAYER + "attention/output/dense/", r"distilbert/transformer/layer/\1/attention/out_lin/"),
    (_LAYER + "attention/output/LayerNorm/", r"distilbert/transformer/layer/\1/sa_layer_norm/"),
    (_LAYER + "intermediate/dense/", r"distilbert/transformer/layer/\1/ffn/lin1/"),
    (_LAYER + "output/dense/", r"distilbert/transformer/layer/\1/ffn/lin2/"),
    (_LAYER + "output/LayerNorm/", r"distilbert/transformer/layer/\1/output_layer_norm/"),
    (r"^cls/predictions/transform/dense/", "vocab_transform/"),
    (r"^cls/predictions/transform/LayerNorm/", "vocab_layer_norm/"),
    (r"^cls/predictions/bias$", "vocab_projector/bias"),
)
KERNELS = bert.KERNELS
IGNORED = (r"embeddings\.position_ids$", r"^vocab_projector\.weight$")
ALIASES = {}
OPTIONAL = ()
PJX_ONLY = ()


def config_from_hf(cfg: dict, tensors) -> dict:
    if cfg.get("sinusoidal_pos_embds"):
        raise ValueError("config.json sinusoidal_pos_embds=true: pjx's DistilBERT learns them")
    act = cfg.get("activation", "gelu")
    if act not in bert.ACTIVATIONS:
        raise ValueError(f"config.json activation={act!r}: one of {list(bert.ACTIVATIONS)}")
    keys = set(tensors.keys())
    return dict(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["dim"],
        num_layers=cfg["n_layers"],
        num_heads=cfg["n_heads"],
        mlp_dim=cfg["hidden_dim"],
        max_position_embeddings=cfg.get("max_position_embeddings", 512),
        type_vocab_size=0,
        dropout_rate=cfg.get("dropout", 0.1),
        attention_dropout_rate=cfg.get("attention_dropout", 0.1),
        layer_norm_eps=1e-12,  # DistilBERT's LayerNorms are built with eps 1e-12
        activation=bert.ACTIVATIONS[act],
        init_std=cfg.get("initializer_range", 0.02),
        mlm_head="vocab_transform.weight" in keys,
        nsp_head=False,
        num_labels=bert.classifier_labels(cfg, tensors),
        variant="distilbert",
        pooler=False,
    )


def config_to_hf(c) -> dict:
    if c.mlm_head:
        arch = "DistilBertForMaskedLM"
    elif c.num_labels > 0:
        arch = "DistilBertForSequenceClassification"
    else:
        arch = "DistilBertModel"
    out = dict(
        architectures=[arch], model_type=MODEL_TYPE, vocab_size=c.vocab_size, dim=c.hidden_size,
        n_layers=c.num_layers, n_heads=c.num_heads, hidden_dim=c.mlp_dim,
        max_position_embeddings=c.max_position_embeddings, dropout=c.dropout_rate,
        attention_dropout=c.attention_dropout_rate, activation=bert._HF_ACT[c.activation],
        initializer_range=c.init_std, sinusoidal_pos_embds=False, tie_weights_=True,
        pad_token_id=0, seq_classif_dropout=c.dropout_rate,
    )  # fmt: skip
    if c.num_labels > 0:
        out.update(label_maps(c.num_labels))
    return out
