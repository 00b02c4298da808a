"""pjx models from Flax NNX code (pjx.nnx over flax.nnx.bridge): the forward equals the
Linen apply, an nnx.Optimizer step equals the optax step on the Linen pytree, and params
move between the two forms."""

from __future__ import annotations

import chex
import flax.linen as nn
import float32
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pjx import convert, models
from pjx import nnx as pjx_nnx
from pjx.checkpoint.saved import Saved

TINY = {
    "bert": dict(num_labels=3),
    "gpt2": dict(),
    "t5": dict(),
    "vit": dict(num_labels=5),
}


def _model_and_params(family, seed=1, **fields):
    model = models.create(family, "tiny", **{**TINY[family], **fields})
    inputs = models.example_inputs(family, model.config, batch_size=2)
    if "input_ids" in inputs:  # real tokens, not all zeros
        ids = jax.random.randint(jax.random.key(7), inputs["input_ids"].shape, 1, 50)
        inputs = {**inputs, "input_ids": ids}
        if "decoder_input_ids" in inputs:
            inputs["decoder_input_ids"] = ids[:, ::-1]
    if "pixel_values" in inputs:
        inputs["pixel_values"] = jax.random.normal(jax.random.key(7), inputs["pixel_values"].shape)
    params = nn.meta.unbox(model.init(jax.random.key(seed), **inputs)["params"])
    return model, params, inputs


@pytest.mark.parametrize("family", sorted(TINY))
def test_forward_equals_linen_apply(family):
    model, params, inputs = _model_and_params(family)
    m = pjx_nnx.to_nnx(model, params)
    assert isinstance(m, nnx.Module)
    float32.assert_trees_close(m(**inputs), model.apply({"params": params}, **inputs))
    # Every parameter is an nnx.Param carrying its logical axis names.
    for v in jax.tree.leaves(nnx.state(m, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Param)):
        assert isinstance(v, nnx.Param) and len(v.get_metadata()["out_sharding"]) == v.ndim


def _loss(out):
    return jnp.mean(out["logits"].astype(jnp.float32) ** 2)


def test_one_optimizer_step_equals_the_optax_step_on_the_linen_pytree():
    model, params, inputs = _model_and_params("bert")
    tx = optax.adamw(1e-2, weight_decay=0.1)

    m = pjx_nnx.to_nnx(model, params)
    opt = nnx.Optimizer(m, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(m, opt):
        loss, grads = nnx.value_and_grad(lambda m: _loss(m(**inputs)))(m)
        opt.update(m, grads)
        return loss

    @jax.jit
    def linen_step(p, s):
        loss, grads = jax.value_and_grad(lambda p: _loss(model.apply({"params": p}, **inputs)))(p)
        updates, s = tx.update(grads, s, p)
        return loss, optax.apply_updates(p, updates), s

    loss, want, _ = linen_step(params, tx.init(params))
    chex.assert_trees_all_close(nnx_step(m, opt), loss, atol=1e-6)
    got = pjx_nnx.params_of(m)
    float32.assert_trees_close(got, want)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), got, params)
    assert max(jax.tree.leaves(moved)) > 1e-3  # the step really changed the parameters


def test_params_round_trip_through_nnx_and_a_checkpoint(tmp_path):
    model, params, inputs = _model_and_params("bert")
    back = pjx_nnx.params_of(pjx_nnx.to_nnx(model, params))
    chex.assert_trees_all_equal(back, jax.tree.map(jnp.asarray, params))
    # NNX state -> a pjx (Orbax) checkpoint -> back into NNX.
    convert.write_workdir(tmp_path / "run", jax.tree.map(np.asarray, back), {"model": {}})
    m2 = pjx_nnx.to_nnx(model, Saved(tmp_path / "run").params(like=back))
    chex.assert_trees_all_equal(pjx_nnx.params_of(m2), back)


def test_fresh_module_has_the_linen_shapes_and_keeps_its_dropout_stream():
    model, params, inputs = _model_and_params("gpt2", dropout_rate=0.5)
    m = pjx_nnx.to_nnx(model, rngs=nnx.Rngs(0, dropout=1))
    chex.assert_trees_all_equal_shapes(pjx_nnx.params_of(m), params)
    a = m(**inputs, deterministic=False)["logits"]
    b = m(**inputs, deterministic=False)["logits"]  # the stream moved on: another mask
    c = m(**inputs)["logits"]
    assert not np.allclose(a, b) and not np.allclose(a, c)


def test_mismatched_params_are_named():
    model, params, _ = _model_and_params("bert")
    other = models.create("bert", "tiny", num_labels=4)
    with pytest.raises(ValueError, match=r"classifier/kernel: params \(\d+, 3\) vs model"):
        pjx_nnx.to_nnx(other, params)
    with pytest.raises(TypeError, match="not a pjx model"):
        pjx_nnx.to_nnx(nn.Dense(3), {})
