"""`seq2seq`: T5 fine-tuning, teacher-forced cross-entropy on target tokens.

Encoding: `input + [EOS]` and `target + [EOS]`, truncated to L / T (`data.seq_len`,
`data.target_len`) and padded. A labelled source without `data.target_column` is cast as
text-to-text first, as T5 fine-tunes on GLUE (Raffel et al. 2020, sec. 2.4):
"sst2 sentence: it was fun" -> "positive".
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

import pjx.tasks.base as base
from pjx import losses, packing
from pjx.examples import DataError
from pjx.models import t5

# T5's target words for GLUE labels (in label order; Raffel et al. 2020, appendix D).
T5_TARGETS = {
    "sst2": ("negative", "positive"),
    "cola": ("unacceptable", "acceptable"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "rte": ("entailment", "not_entailment"),
    "qnli": ("entailment", "not_entailment"),
    "wnli": ("not_entailment", "entailment"),
    "mnli": ("entailment", "neutral", "contradiction"),
}


def teacher_forced(model, params, enc_ids, enc_mask, labels, dec_mask, w, rng, train, ls):
    """Cross-entropy of `labels` [B,T] given the encoder input, decoder fed labels shifted
    right; counted where `dec_mask` (times the per-row weight `w`)."""
    out = base.apply(
        model,
        params,
        rng,
        train,
        enc_ids,
        attention_mask=enc_mask,
        decoder_input_ids=t5.shift_right(labels),
        decoder_attention_mask=dec_mask,
    )
    mask = jnp.asarray(dec_mask, jnp.float32) * w[:, None]
    return losses.cross_entropy(out["logits"], labels, mask, label_smoothing=ls)


def text_to_text(ex, prefix: str = ""):
    """A labelled set as text-to-text: "sst2 sentence: ..." -> the label's name (T5's GLUE
    words for a known preset, else the source's label names, else the label number);
    pairs become "sentence1: ... sentence2: ..."."""
    if ex.labels is None:
        raise DataError(
            f"{ex.origin}: task seq2seq needs targets: set data.target_column, or use a "
            "labelled source (its label names become the targets)"
        )
    head = f"{prefix} " if prefix else ""
    if ex.texts_b is None:
        inputs = [f"{head}sentence: {a}" for a in ex.texts]
    else:
        inputs = [f"{head}sentence1: {a} sentence2: {b}" for a, b in zip(ex.texts, ex.texts_b)]
    names = T5_TARGETS.get(prefix) or ex.label_names
    targets = [str(names[i]) if names else str(int(i)) for i in ex.labels]
    return dataclasses.replace(ex, texts=inputs, texts_b=None, targets=targets)


class Seq2Seq(base.Task):
    name = "seq2seq"
    families = ("t5",)
    unit = "tokens"
    defaults = dict(label_smoothing=0.0)

    def loss(self, model, params, batch, rng, *, train, label_smoothing=0.0):
        labels = batch["labels"]
        dec_mask = batch.get("decoder_attention_mask")
        if dec_mask is None:
            dec_mask = (labels != 0).astype(jnp.int32)
        w = base.weight(batch, labels.shape[0])
        enc_ids, enc_mask = batch["input_ids"], batch.get("attention_mask")
        return teacher_forced(
            model, params, enc_ids, enc_mask, labels, dec_mask, w, rng, train, label_smoothing
        )

    def finalize(self, m) -> dict:
        return base.lm_finalize(m)

    def report(self, sums, scored) -> dict:
        """Also `exact_match`: the share of examples whose greedy generation is the target,
        token for token."""
        pairs = list(scored.generated())
        exact = float(np.mean([g == w for g, w, _ in pairs])) if pairs else 0.0
        return {**super().report(sums, scored), "exact_match": exact, "examples": len(pairs)}

    def predictions(self, scored, *, max_new_tokens):
        """Per example the greedy generation, the target and the input, decoded (generation
        runs to the target length, `max_new_tokens` aside)."""
        tok = scored.tokenizer
        for g, w, x in scored.generated():
            yield {"text": tok.decode(g), "target": tok.decode(w), "input": tok.decode(x)}

    def needs_labels(self, data_cfg) -> bool:
        return not data_cfg.get("target_column")  # labels become the targets

    def encode(self, ex, tokenizer, data_cfg, args, seed):
        base.require_text(ex, self.name)
        if ex.targets is None:
            ex = text_to_text(ex, data_cfg.get("preset", ""))
        eos = base.special_id(tokenizer, "eos", self.name)
        L = int(data_cfg["seq_len"])
        T = int(data_cfg.get("target_len", 0) or L)
        out = {}
        for key, texts, n, mask_key in (
            ("input_ids", ex.texts, L, "attention_mask"),
            ("labels", ex.targets, T, "decoder_attention_mask"),
        ):
            toks = packing.tokenize(tokenizer, texts)
            ids = np.full((len(toks), n), base.pad_id(tokenizer), np.int32)
            mask = np.zeros((len(toks), n), np.int32)
            for i, t in enumerate(toks):
                row = np.concatenate([t[: n - 1], [eos]])
                ids[i, : len(row)], mask[i, : len(row)] = row, 1
            out[key], out[mask_key] = ids, mask
        return out

    def batch_spec(self, batch_size, data_cfg, model_config, args) -> dict:
        B, L = batch_size, int(data_cfg["seq_len"])
        T = int(data_cfg.get("target_len", 0) or L)
        spec = base.ids_spec(B, L, "input_ids") | base.ids_spec(B, L, "attention_mask", fill="ones")
        spec |= base.ids_spec(B, T, "labels")
        return spec | base.ids_spec(B, T, "decoder_attention_mask", fill="ones")
