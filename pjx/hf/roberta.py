"""RoBERTa (Liu et al. 2019) <-> Hugging Face `RobertaModel` / `RobertaForMaskedLM` /
`RobertaForSequenceClassification`, as pjx's BERT with `variant="roberta"`.

The encoder is BERT's, under `roberta.`; position ids start after the padding index
(`position_offset = pad_token_id + 1`), one token type, LayerNorm eps 1e-5 (from
config.json). Heads: `lm_head.*` (MLM, decoder tied to the word embeddings) and
`classifier.{dense,out_proj}` on <s>. A byte-level BPE tokenizer.json loads through the
`tokenizers` package; sentence pairs are encoded `<s> A </s> B </s>` (RoBERTa's own
template repeats </s> between them).
"""

from __future__ import annotations

import pjx.hf.bert as bert

MODEL_TYPE = "roberta"
PREFIX = "roberta."
RENAMES = (
    (r"^bert/", "roberta/"),
    (r"^cls/predictions/transform/dense/", "lm_head/dense/"),
    (r"^cls/predictions/transform/LayerNorm/", "lm_head/layer_norm/"),
    (r"^cls/predictions/bias$", "lm_head/bias"),
    *bert.RENAMES,
)
KERNELS = bert.KERNELS
IGNORED = (r"embeddings\.position_ids$", r"^lm_head\.decoder\.(weight|bias)$")
ALIASES = {"lm_head.bias": ("lm_head.decoder.bias",)}
OPTIONAL = ()
PJX_ONLY = ()


def config_from_hf(cfg: dict, tensors) -> dict:
    keys = set(tensors.keys())
    fields = bert.config_from_hf(cfg, tensors)
    num_labels = bert.classifier_labels(cfg, tensors, "classifier.out_proj.weight")
    fields.update(
        variant="roberta",
        position_offset=int(cfg.get("pad_token_id", 1)) + 1,
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-5),
        type_vocab_size=cfg.get("type_vocab_size", 1),
        mlm_head="lm_head.dense.weight" in keys,
        # RobertaForSequenceClassification / ForMaskedLM have no pooler; RobertaModel has.
        pooler=bool({"roberta.pooler.dense.weight", "pooler.dense.weight"} & keys),
        nsp_head=False,
        num_labels=num_labels,
    )
    return fields


def config_to_hf(c) -> dict:
    out = bert.config_to_hf(c)
    arch = out["architectures"][0].replace("Bert", "Roberta")
    pad = c.position_offset - 1
    out.update(
        architectures=[arch], model_type=MODEL_TYPE, pad_token_id=pad, bos_token_id=0,
        eos_token_id=2,
    )  # fmt: skip
    return out
