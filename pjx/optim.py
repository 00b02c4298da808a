"""AdamW with warm-up + decay schedules, global-norm clipping and a weight-decay mask.

Gradient accumulation is not an optax wrapper here: the gradient of a logical batch is
summed over its `accum_steps` slices inside the jitted step (pjx.grads), so that they give
the same update as one large batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "linear", "constant")
# Parameter leaf names that never get weight decay (BERT's `exclude_from_weight_decay`
# = ["LayerNorm", "layer_norm", "bias"]; GPT-2 / nanoGPT decay only >= 2-D weights).
NO_DECAY_NAMES = ("bias", "scale")


# The `config.optimizer` block and its defaults (pjx.config holds it as a ConfigDict).
DEFAULTS = dict(
    lr=1e-4,
    warmup_steps=0,
    schedule="cosine",  # cosine | linear | constant (after warm-up)
    decay_steps=0,  # steps of warm-up + decay; 0 = the run's `steps`
    end_lr=0.0,  # absolute final lr ...
    end_lr_fraction=None,  # ... or a fraction of `lr` (wins when set)
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.01,
    clip_norm=1.0,  # global-norm clipping; 0 disables
    accum_steps=1,  # micro-batches per step (scanned inside the jitted step)
    mu_dtype="float32",  # "bfloat16" halves the first-moment memory
    # Regex on parameter paths ("vit/encoder/layer_0/..."): matching parameters get
    # no update and no optimizer state (linear probe: freeze="^(?!classifier)").
    freeze="",
    # A peak lr of its own (the same schedule) for the task's heads: a new classifier on a
    # pretrained encoder needs larger steps than the encoder tolerates, DP-SGD most of all,
    # where a clipped example moves the head by at most the clip norm (BENCHMARKS.md).
    # 0 = `lr` everywhere. `head_pattern`: a regex on parameter paths ("" = the family's
    # heads, those LoRA trains fully: pjx.lora.HEADS).
    head_lr=0.0,
    head_pattern="",
    # Decay of an exponential moving average of the parameters (Polyak averaging), which a
    # run then evaluates, saves as its weights and exports; 0 = off (the last step's
    # parameters). It costs one more copy of the parameters. Under DP-SGD it is free
    # post-processing of the noised iterates and averages some of their noise away (De et
    # al. 2022 use 0.999 - 0.9999). The decay warms up as min(ema_decay, (1 + t) / (10 + t))
    # after t updates, so a short run is not pulled back to its initial parameters.
    ema_decay=0.0,
)


def with_defaults(opt_cfg) -> dict:
    """`config.optimizer` (a mapping with some of DEFAULTS' keys) with the others filled."""
    given = opt_cfg.to_dict() if hasattr(opt_cfg, "to_dict") else dict(opt_cfg)
    return {**DEFAULTS, **given}


def schedule(opt_cfg, total_steps: int) -> Callable[[Any], Any]:
    """Linear warm-up from 0 to `lr`, then cosine / linear / constant decay to the end lr."""
    opt_cfg = with_defaults(opt_cfg)
    lr = float(opt_cfg["lr"])
    warmup = int(opt_cfg["warmup_steps"])
    total = int(opt_cfg["decay_steps"] or total_steps)  # 0 = the run's steps
    frac = opt_cfg["end_lr_fraction"]
    end = lr * float(frac) if frac is not None else float(opt_cfg["end_lr"])
    kind = opt_cfg["schedule"]
    if kind not in SCHEDULES:
        raise ValueError(f"optimizer.schedule={kind!r}; expected one of {SCHEDULES}")
    decay = max(total - warmup, 1)
    if kind == "constant":
        after = optax.constant_schedule(lr)
    elif kind == "linear":
        after = optax.linear_schedule(lr, end, decay)
    else:  # Loshchilov & Hutter 2017 (SGDR) half-cosine, no restarts.
        after = optax.cosine_decay_schedule(lr, decay, alpha=end / lr if lr else 0.0)
    if warmup <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def ema_update(ema, params, updates_applied, decay: float, trainable=None):
    """`ema` moved towards `params` after `updates_applied` updates (jnp scalar), at the
    warmed-up decay min(decay, (1 + t) / (10 + t)) (TensorFlow's ExponentialMovingAverage
    with num_updates). Leaves `trainable` marks False keep their value (they never move)."""
    t = jnp.asarray(updates_applied, jnp.float32)
    d = jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))
    keep = jax.tree.map(lambda _: True, params) if trainable is None else trainable
    return jax.tree.map(
        lambda e, p, k: (d * e + (1.0 - d) * p).astype(e.dtype) if k else e, ema, params, keep
    )


def decay_mask(params):
    """True where weight decay applies: weights of rank >= 2 (kernels, embeddings).

    Off for biases and norm scales/biases (rank 1, or leaf named `bias`/`scale`), as in
    BERT (Devlin et al. 2019, `exclude_from_weight_decay`) and GPT-2 / nanoGPT.
    Embedding tables are decayed, as in both of those.
    """

    def keep(path, x):
        name = getattr(path[-1], "key", getattr(path[-1], "name", str(path[-1])))
        return x.ndim >= 2 and name not in NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(keep, params)


def frozen_mask(params, pattern: str):
    """True where `pattern` (a regex, `re.search` on the '/'-joined path) freezes a leaf."""
    rx = re.compile(pattern)
    return jax.tree_util.tree_map_with_path(
        lambda p, _: bool(rx.search(jax.tree_util.keystr(p, simple=True, separator="/"))), params
    )


def _heads_mask(params, pattern: str):
    mask = frozen_mask(params, pattern)
    if not any(jax.tree.leaves(mask)):
        raise ValueError(
            f"optimizer.head_lr: no trained parameter matches {pattern!r}; name the head with "
            "--config.optimizer.head_pattern=REGEX (a regex on paths like 'classifier/kernel')"
        )
    return mask


def make(
    opt_cfg, total_steps: int, frozen: Callable | None = None, heads: str = ""
) -> tuple[optax.GradientTransformation, Callable]:
    """Returns (optax transformation, lr schedule). Leaves frozen by `optimizer.freeze` (a
    regex) or by `frozen(params) -> bool pytree` (LoRA's base weights) get no update; with
    `optimizer.head_lr`, leaves matching `optimizer.head_pattern` (or `heads`, the
    family's) step at that peak lr instead of `lr`. The lr schedule returned is `lr`'s."""
    opt_cfg = with_defaults(opt_cfg)
    tx, lr_fn = _make_trainable(opt_cfg, total_steps, opt_cfg["head_pattern"] or heads)
    pattern = opt_cfg["freeze"]
    if not pattern and frozen is None:
        return tx, lr_fn

    def is_frozen(params):
        by_name = frozen_mask(params, pattern) if pattern else jax.tree.map(lambda _: False, params)
        by_fn = frozen(params) if frozen is not None else by_name
        return jax.tree.map(lambda a, b: bool(a or b), by_name, by_fn)

    # Frozen leaves bypass clipping and AdamW entirely (set_to_zero keeps no state), so
    # their gradients are dead code that XLA removes: a linear probe costs a forward pass.
    labels = lambda params: jax.tree.map(
        lambda f: "frozen" if f else "trainable", is_frozen(params)
    )
    return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels), lr_fn


def _make_trainable(opt_cfg, total_steps: int, heads: str):
    lr_fn = schedule(opt_cfg, total_steps)
    mu_dtype = jnp.dtype(opt_cfg["mu_dtype"])
    parts = []
    if opt_cfg["clip_norm"]:
        parts.append(optax.clip_by_global_norm(float(opt_cfg["clip_norm"])))
    parts.append(
        optax.adamw(
            lr_fn,
            b1=float(opt_cfg["b1"]),
            b2=float(opt_cfg["b2"]),
            eps=float(opt_cfg["eps"]),
            mu_dtype=None if mu_dtype == jnp.float32 else mu_dtype,
            weight_decay=float(opt_cfg["weight_decay"]),
            mask=decay_mask,
        )
    )
    head_lr, lr = float(opt_cfg["head_lr"]), float(opt_cfg["lr"])
    if head_lr and head_lr != lr:
        if not heads:
            raise ValueError(
                f"optimizer.head_lr={head_lr}: this model has no task head to apply it to; "
                "name the parameters with --config.optimizer.head_pattern=REGEX"
            )
        if not lr:
            raise ValueError("optimizer.head_lr needs optimizer.lr > 0 (it scales lr's schedule)")
        # AdamW's update (decay included) is linear in the lr: scaling it by head_lr / lr is
        # AdamW at head_lr on the same schedule, with one optimizer state for all leaves.
        parts.append(optax.masked(optax.scale(head_lr / lr), lambda p: _heads_mask(p, heads)))
    return optax.chain(*parts), lr_fn
