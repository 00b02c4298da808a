"""`classify`: sequence classification (BERT's pooled [CLS], Devlin et al. 2019) or image
classification (ViT, Dosovitskiy et al. 2021).

Text encoding: `[CLS] a [SEP] (b [SEP])`, token types 0 / 1, longest-first truncation
and padding to L. Images stay uint8 in the table; each batch is scaled, resized,
normalised and (with `data.augment="simclr"`, in training) augmented on the host. Eval
metrics carry the confusion matrix, so precision / recall / F1 / MCC are exact over the
whole eval set.
"""

from __future__ import annotations

import numpy as np

import pjx.tasks.base as base
from pjx import images, losses, metrics, packing
from pjx.examples import DataError


class Classify(base.Task):
    name = "classify"
    families = ("bert", "modernbert", "vit")
    unit = "examples"
    defaults = dict(label_smoothing=0.0)

    padded_keys = ("input_ids", "attention_mask", "token_type_ids")

    def logits(self, model, params, batch, rng=None, *, train=False):
        """Class logits [B, C] of a batch (images or text)."""
        if "pixel_values" in batch:
            return base.apply(model, params, rng, train, batch["pixel_values"])["logits"]
        return base.apply(
            model,
            params,
            rng,
            train,
            batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            token_type_ids=batch.get("token_type_ids"),
        )["logits"]

    def loss(self, model, params, batch, rng, *, train, label_smoothing=0.0):
        logits, labels = self.logits(model, params, batch, rng, train=train), batch["label"]
        w = base.weight(batch, labels.shape[0])
        loss, mets = losses.classification(logits, labels, w, label_smoothing=label_smoothing)
        mets = dict(mets, confusion=metrics.confusion_matrix(logits, labels, logits.shape[-1], w))
        return loss, mets

    def finalize(self, m) -> dict:
        report = metrics.classification_report(np.asarray(m["confusion"]))
        count = max(float(m["count"]), 1e-12)
        out = {"loss": float(m["loss_sum"]) / count}
        out.update({k: float(v) for k, v in report.items() if np.ndim(v) == 0})
        return out

    def report(self, sums, scored) -> dict:
        """The confusion matrix (rows = true labels), the class names and the examples."""
        confusion = np.asarray(sums["confusion"]).round().astype(int)
        return {
            "confusion_matrix": confusion.tolist(),
            "labels": scored.label_names(),
            "examples": int(confusion.sum()),
        }

    def predictions(self, scored, *, max_new_tokens):
        """Per example its label (name and id) and the class probabilities."""
        names = scored.label_names()
        for probs in scored.probabilities():
            label = int(np.argmax(probs))
            yield {
                "label": names[label],
                "label_id": label,
                "probabilities": {n: float(p) for n, p in zip(names, probs)},
            }

    def model_fields(self, family, args) -> dict:
        return {"bert": {"mlm_head": False, "nsp_head": False},
                "modernbert": {"mlm_head": False}}.get(family, {})  # fmt: skip

    def check_model(self, model_config) -> None:
        if getattr(model_config, "num_labels", 0) <= 0:
            raise ValueError("task classify needs model.num_labels > 0 (the number of classes)")

    def needs_labels(self, data_cfg) -> bool:
        return True

    def encode(self, ex, tokenizer, data_cfg, args, seed):
        if ex.labels is None:
            raise DataError(f"{ex.origin}: task classify needs labels")
        if ex.images is not None:
            return {"images": ex.images, "label": ex.labels}
        base.require_text(ex, self.name)
        cls_id = base.special_id(tokenizer, "cls", self.name)
        sep_id = base.special_id(tokenizer, "sep", self.name)
        L = int(data_cfg["seq_len"])
        a = packing.tokenize(tokenizer, ex.texts)
        b = packing.tokenize(tokenizer, ex.texts_b) if ex.texts_b is not None else None
        n = len(a)
        ids = np.full((n, L), base.pad_id(tokenizer), np.int32)
        types = np.zeros((n, L), np.int32)
        mask = np.zeros((n, L), np.int32)
        for i in range(n):
            if b is None:
                la = min(len(a[i]), L - 2)
                row = np.concatenate([[cls_id], a[i][:la], [sep_id]])
                nb = 0
            else:
                la, lb = packing.truncate_pair(len(a[i]), len(b[i]), L - 3)
                row = np.concatenate([[cls_id], a[i][:la], [sep_id], b[i][:lb], [sep_id]])
                nb = lb + 1
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
            types[i, len(row) - nb : len(row)] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": types,
            "label": ex.labels,
        }

    def make_batch(self, rows, rng, data_cfg, train) -> dict:
        if "images" not in rows:
            return rows
        x = images.pixels(rows["images"], data_cfg)
        if train and data_cfg.get("augment", "") == "simclr":
            x = images.simclr_view(x, rng, data_cfg)
        return {"pixel_values": images.standardize(x, data_cfg), "label": rows["label"]}

    def batch_spec(self, batch_size, data_cfg, model_config, args) -> dict:
        B = batch_size
        label = {"label": base.Spec((B,), "int32", "classes", model_config.num_labels)}
        if hasattr(model_config, "image_size"):
            S, C = model_config.image_size, model_config.num_channels
            return {"pixel_values": base.Spec((B, S, S, C), "float32", "pixels")} | label
        L = int(data_cfg["seq_len"])
        spec = base.ids_spec(B, L, "input_ids") | base.ids_spec(B, L, "attention_mask", fill="ones")
        return spec | base.ids_spec(B, L, "token_type_ids", fill="zeros") | label
