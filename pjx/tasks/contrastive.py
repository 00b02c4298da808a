"""`contrastive`: SimCLR (Chen et al. 2020) on images, no labels.

Each batch holds two augmented views of every image (pjx.images.simclr_view: random
resized crop, optional flip, colour jitter, blur); both go through the model in one pass
and NT-Xent or InfoNCE (`task_args.loss`) pairs their projections. Every other view in
the global batch is a negative, so examples are not independent: DP-SGD refuses this task.
Eval reports the loss and the top-1 retrieval accuracy of the positive view.
"""

from __future__ import annotations

import jax.numpy as jnp

import pjx.tasks.base as base
from pjx import images, losses

LOSSES = {"nt_xent": losses.nt_xent, "info_nce": losses.info_nce}


class Contrastive(base.Task):
    name = "contrastive"
    families = ("vit",)
    unit = "examples"
    defaults = dict(loss="nt_xent", temperature=0.1)
    per_example = False  # in-batch negatives couple every example to every other

    def loss(self, model, params, batch, rng, *, train, loss="nt_xent", temperature=0.1):
        if loss not in LOSSES:
            raise ValueError(f"task_args.loss={loss!r}: choose one of {sorted(LOSSES)}")
        a, b = batch["view_a"], batch["view_b"]
        B = a.shape[0]
        z = base.apply(model, params, rng, train, jnp.concatenate([a, b], axis=0))["projection"]
        return LOSSES[loss](z[:B], z[B:], temperature=temperature, weights=base.weight(batch, B))

    def finalize(self, m) -> dict:
        count = max(float(m["count"]), 1e-12)
        return {"loss": float(m["loss_sum"]) / count, "accuracy": float(m["correct"]) / count}

    def check_model(self, model_config) -> None:
        if getattr(model_config, "projection_dim", 0) <= 0:
            raise ValueError("task contrastive needs model.projection_dim > 0 (SimCLR's head)")

    def encode(self, ex, tokenizer, data_cfg, args, seed):
        return {"images": ex.images}

    def make_batch(self, rows, rng, data_cfg, train) -> dict:
        x = images.pixels(rows["images"], data_cfg)
        view = lambda: images.standardize(images.simclr_view(x, rng, data_cfg), data_cfg)
        return {"view_a": view(), "view_b": view()}

    def batch_spec(self, batch_size, data_cfg, model_config, args) -> dict:
        shape = (batch_size, model_config.image_size, model_config.image_size)
        shape += (model_config.num_channels,)
        return {v: base.Spec(shape, "float32", "pixels") for v in ("view_a", "view_b")}
