"""`mlm`: BERT masked-LM pretraining (Devlin et al. 2019), optionally with next-sentence
prediction (`task_args.nsp`).

Encoding: documents packed into rows of `[CLS] piece [SEP]` with segment ids, or with
`nsp` one `[CLS] A [SEP] B [SEP]` pair per row (pjx.packing). Masking (80/10/10) happens
on device inside the jitted step, from the step's rng, so every epoch sees new masks; the
model computes vocabulary logits only at the masked positions.
"""

from __future__ import annotations

import jax
import numpy as np

import pjx.tasks.base as base
from pjx import losses, masking, packing


class MLM(base.Task):
    name = "mlm"
    packs = "optional"
    families = ("bert", "modernbert")
    unit = "tokens"
    defaults = dict(mask_rate=0.15, max_predictions=None, nsp=False, label_smoothing=0.0)

    @staticmethod
    def mask(key, ids, mask_id, vocab_size, special_ids, pad_id, mask_rate, max_predictions,
             **shares):  # fmt: skip
        """BERT's masking of `ids` with the task's arguments (pjx.masking.mask_tokens;
        `shares`: its mask_fraction / random_fraction), for this task and the ones built
        on it (electra, distill)."""
        return masking.mask_tokens(
            key,
            ids,
            rate=mask_rate,
            mask_id=mask_id,
            vocab_size=vocab_size,
            special_ids=tuple(special_ids),
            max_predictions=max_predictions,
            pad_id=pad_id,
            **shares,
        )

    def loss(
        self,
        model,
        params,
        batch,
        rng,
        *,
        train,
        mask_id,
        vocab_size,
        special_ids=(),
        pad_id=0,
        mask_rate=0.15,
        max_predictions=None,
        nsp=False,
        label_smoothing=0.0,
    ):
        k_mask, k_drop = jax.random.split(rng)
        ids = batch["input_ids"]
        m = self.mask(k_mask, ids, mask_id, vocab_size, special_ids, pad_id, mask_rate,
                      max_predictions)  # fmt: skip
        out = base.apply(
            model,
            params,
            k_drop,
            train,
            m["input_ids"],
            attention_mask=batch.get("attention_mask"),
            token_type_ids=batch.get("token_type_ids"),
            position_ids=batch.get("position_ids"),
            segment_ids=batch.get("segment_ids"),
            masked_positions=m["masked_positions"],
        )
        w = base.weight(batch, ids.shape[0])
        loss, mets = losses.masked_lm(
            out["mlm_logits"],
            m["masked_targets"],
            m["masked_weights"] * w[:, None],
            label_smoothing=label_smoothing,
        )
        if nsp:
            nsp_loss, nm = losses.classification(out["nsp_logits"], batch["next_sentence_label"], w)
            loss = loss + nsp_loss
            mets = dict(
                mets, nsp_loss_sum=nm["loss_sum"], nsp_count=nm["count"], nsp_correct=nm["correct"]
            )
        return loss, mets

    def finalize(self, m) -> dict:
        out = base.lm_finalize(m)
        if "nsp_count" in m:
            nc = max(float(m["nsp_count"]), 1e-12)
            out["nsp_loss"] = float(m["nsp_loss_sum"]) / nc
            out["nsp_accuracy"] = float(m["nsp_correct"]) / nc
            out["loss"] += out["nsp_loss"]
        return out

    def model_fields(self, family, args) -> dict:
        if family != "bert":  # ModernBERT: masked LM only (it was trained without NSP)
            if args["nsp"]:
                raise ValueError(f"task_args.nsp=true: a {family} model has no NSP head")
            return {"mlm_head": True}
        return {"mlm_head": True, "nsp_head": bool(args["nsp"])}

    def runtime_args(self, args, tokenizer, model_config) -> dict:
        args = dict(args)
        if tokenizer is not None:
            args.setdefault("mask_id", getattr(tokenizer, "mask_id", None))
            args.setdefault("pad_id", tokenizer.pad_id if tokenizer.pad_id is not None else 0)
            args.setdefault("special_ids", tuple(tokenizer.special_ids))
        args.setdefault("vocab_size", model_config.vocab_size)
        args["special_ids"] = tuple(int(i) for i in args.get("special_ids", ()))
        if args.get("mask_id") is None:
            raise ValueError("task mlm needs a tokenizer with a mask token or task_args.mask_id")
        return super().runtime_args(args, tokenizer, model_config)

    def encoding_key(self, args, seed) -> dict:
        # NSP pairs are drawn once, from the seed (BERT's create_pretraining_data does so).
        return {"nsp": bool(args["nsp"]), "seed": int(seed) if args["nsp"] else 0}

    def encode(self, ex, tokenizer, data_cfg, args, seed):
        base.require_text(ex, self.name)
        docs = packing.tokenize(tokenizer, packing.documents(ex, data_cfg.get("pack") == "stream"))
        cls_id = base.special_id(tokenizer, "cls", self.name)
        sep_id = base.special_id(tokenizer, "sep", self.name)
        pad = base.pad_id(tokenizer)
        L = int(data_cfg["seq_len"])
        if args["nsp"]:
            return packing.nsp_pairs(docs, L, cls_id=cls_id, sep_id=sep_id, pad_id=pad, seed=seed)
        pack = data_cfg.get("pack")
        return packing.rows(docs, L, pack, prefix=[cls_id], suffix=[sep_id], pad_id=pad)

    def make_batch(self, rows, rng, data_cfg, train) -> dict:
        seg = rows["segment_ids"]
        out = {
            "input_ids": rows["input_ids"],
            "attention_mask": (seg > 0).astype(np.int32),
            "token_type_ids": rows.get("token_type_ids", np.zeros_like(seg)),
            "segment_ids": seg,
            "position_ids": rows["position_ids"],
        }
        if "next_sentence_label" in rows:
            out["next_sentence_label"] = rows["next_sentence_label"]
        return out

    def batch_spec(self, batch_size, data_cfg, model_config, args) -> dict:
        B, L = batch_size, int(data_cfg["seq_len"])
        spec = base.ids_spec(B, L, "input_ids")
        spec |= base.ids_spec(B, L, "attention_mask", "segment_ids", fill="ones")
        spec |= base.ids_spec(B, L, "token_type_ids", fill="zeros")
        spec |= base.ids_spec(B, L, "position_ids", fill="positions")
        if args["nsp"]:
            spec["next_sentence_label"] = base.Spec((B,), "int32", "classes", 2)
        return spec
