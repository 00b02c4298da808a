"""`clm`: next-token prediction (GPT-2, Radford et al. 2019) on packed documents.

Encoding: documents (each ended by the tokenizer's end-of-text token when it has one)
packed into rows with segment ids (pjx.packing). A position counts only if the next token
is in the same (non-padding) segment.
"""

from __future__ import annotations

import jax.numpy as jnp

import pjx.tasks.base as base
from pjx import losses, packing


class CLM(base.Task):
    name = "clm"
    packs = "optional"
    families = ("gpt2", "llama")
    unit = "tokens"
    defaults = dict(label_smoothing=0.0, z_loss=0.0)

    def loss(self, model, params, batch, rng, *, train, label_smoothing=0.0, z_loss=0.0):
        ids = batch["input_ids"]
        out = base.apply(
            model,
            params,
            rng,
            train,
            ids,
            attention_mask=batch.get("attention_mask"),
            position_ids=batch.get("position_ids"),
            segment_ids=batch.get("segment_ids"),
        )
        seg = batch.get("segment_ids")
        if seg is not None:
            mask = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
        elif batch.get("attention_mask") is not None:
            mask = batch["attention_mask"][:, 1:] > 0
        else:
            mask = jnp.ones(ids[:, 1:].shape, bool)
        mask = mask.astype(jnp.float32) * base.weight(batch, ids.shape[0])[:, None]
        # Position t predicts token t+1; the last position gets label 0 and weight 0. Keeping
        # all L positions avoids slicing the [B,L,V] logits (a copy, and a pad in backward).
        labels = jnp.concatenate([ids[:, 1:], jnp.zeros_like(ids[:, :1])], axis=1)
        mask = jnp.concatenate([mask, jnp.zeros_like(mask[:, :1])], axis=1)
        return losses.cross_entropy(
            out["logits"], labels, mask, label_smoothing=label_smoothing, z_loss=z_loss
        )

    def finalize(self, m) -> dict:
        return base.lm_finalize(m)

    def predictions(self, scored, *, max_new_tokens):
        """Per text of the source, the text and its sampled continuation."""
        for prompt, text in scored.continuations(max_new_tokens):
            yield {"prompt": prompt, "text": text}

    def encode(self, ex, tokenizer, data_cfg, args, seed):
        base.require_text(ex, self.name)
        docs = packing.tokenize(tokenizer, packing.documents(ex, data_cfg.get("pack") == "stream"))
        eos = getattr(tokenizer, "eos_id", None)
        doc_end = [] if eos is None else [int(eos)]
        L, pad = int(data_cfg["seq_len"]), base.pad_id(tokenizer)
        return packing.rows(docs, L, data_cfg.get("pack"), doc_end=doc_end, pad_id=pad)

    def make_batch(self, rows, rng, data_cfg, train) -> dict:
        return {k: rows[k] for k in ("input_ids", "segment_ids", "position_ids")}

    def batch_spec(self, batch_size, data_cfg, model_config, args) -> dict:
        B, L = batch_size, int(data_cfg["seq_len"])
        return (
            base.ids_spec(B, L, "input_ids")
            | base.ids_spec(B, L, "segment_ids", fill="ones")
            | base.ids_spec(B, L, "position_ids", fill="positions")
        )
