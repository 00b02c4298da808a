"""pjx models in Flax NNX code, through flax's Linen -> NNX bridge (`flax.nnx.bridge.ToNNX`).

    model, params = pjx.hf.load("bert-base-uncased")     # or a pjx checkpoint's params
    m = pjx.nnx.to_nnx(model, params)                     # an nnx.Module
    out = m(input_ids=ids, attention_mask=mask)           # == model.apply({"params": ...})
    opt = nnx.Optimizer(m, optax.adamw(1e-4), wrt=nnx.Param)
    params = pjx.nnx.params_of(m)                         # back: checkpoints, pjx.hf.save

Dropout: `m(..., deterministic=False, rngs=nnx.Rngs(dropout=key))`, or pass `rngs` to
`to_nnx` to keep the streams in the module. Each parameter is an `nnx.Param` whose
metadata carry its logical axis names (`out_sharding`); pjx.sharding's rules map them to a
mesh. The modules stay Linen (pure `init` / `apply` on plain pytrees); this is the view NNX
code takes of them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
from flax import nnx, traverse_util

from pjx import models


def family_of(model) -> str:
    """The pjx family name ("bert", "gpt2", "t5", "vit", "llama", "modernbert") of a pjx
    Linen model."""
    for name, module in models.MODELS.items():
        if isinstance(model, module.Model):
            return name
    raise TypeError(f"not a pjx model: {type(model).__name__}")


def to_nnx(model, params=None, *, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """`model` (a pjx Linen model) as an NNX module holding `params` (a Linen params pytree;
    None: freshly initialised from `rngs`, default `nnx.Rngs(0)`). `rngs` given, the module
    keeps it for its random streams (dropout)."""
    inputs = models.example_inputs(family_of(model), model.config, batch_size=1)

    def build(init_rngs):
        return nnx.bridge.ToNNX(model).lazy_init(**inputs, rngs=init_rngs)

    # Logical axis names are metadata here, not mesh axes: no sharding while building.
    with nnx.use_eager_sharding(False):
        if params is None:
            m = build(rngs if rngs is not None else nnx.Rngs(0))
        else:  # shapes only, then the given values: nothing is initialised twice
            graphdef, state = nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(0))))
            params = nn.meta.unbox(params)
            _check(state.to_pure_dict(), params)
            state.replace_by_pure_dict(jax.tree.map(jax.numpy.asarray, params))
            m = nnx.merge(graphdef, state)
    if rngs is not None:
        m.to_nnx__rngs = nnx.data(rngs)  # where ToNNX keeps its streams
    return m


def _check(want, params):
    want = traverse_util.flatten_dict(want, sep="/")
    got = traverse_util.flatten_dict(params, sep="/")
    bad = [f"{p}: missing from params" for p in want if p not in got]
    bad += [f"{p}: not a parameter of the model" for p in got if p not in want]
    bad += [
        f"{p}: params {tuple(got[p].shape)} vs model {tuple(want[p].shape)}"
        for p in want
        if p in got and tuple(got[p].shape) != tuple(want[p].shape)
    ]
    if bad:
        raise ValueError("params do not match the model:\n  " + "\n  ".join(bad[:20]))


def params_of(module: nnx.Module) -> dict:
    """The Linen params pytree of a module made by `to_nnx` (what `model.apply`, pjx
    checkpoints and pjx.hf.save take)."""
    return nnx.state(module, nnx.Param).to_pure_dict()


__all__ = ["family_of", "params_of", "to_nnx"]
