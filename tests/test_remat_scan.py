"""model.remat and model.scan_layers in every family: remat keeps the gradients, a scanned
stack computes what the unscanned one does (parameters stacked / unstacked in one place,
pjx.models.stack_layers), and scanned and unscanned runs initialise each other and export
to Hugging Face alike. bfloat16 compute keeps float32 parameters and finite gradients."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import float32
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from pjx import config as config_lib
from pjx import hf, models, run, tasks
from pjx import plan as plan_lib
from pjx.init_from import init_from

SMALL = dict(num_layers=2, hidden_size=32, num_heads=2, mlp_dim=64, dropout_rate=0.0)
FAMILIES = {
    "bert": dict(SMALL, vocab_size=64, num_labels=3, attention_dropout_rate=0.0),
    "gpt2": dict(SMALL, vocab_size=64, max_position_embeddings=16, attention_dropout_rate=0.0),
    "t5": dict(SMALL, num_decoder_layers=2, head_dim=16, vocab_size=64, attention_dropout_rate=0.0),
    "vit": dict(SMALL, image_size=8, patch_size=4, num_channels=1, num_labels=3),
    "llama": dict(
        SMALL,
        num_kv_heads=1,
        vocab_size=64,
        max_position_embeddings=16,
        qk_norm=True,
        variant="qwen3",
    ),
}
TASK = {"bert": "classify", "gpt2": "clm", "t5": "seq2seq", "vit": "classify", "llama": "clm"}


def _setup(family, **fields):
    model = models.create(family, "tiny", **{**FAMILIES[family], **fields})
    inputs = models.example_inputs(family, model.config, 2, 8)
    params = nn.meta.unbox(model.init(jax.random.key(0), **inputs)["params"])
    return model, params


def _batch(family, model):
    c = config_lib.base_config()
    c.model.name, c.task, c.batch_size, c.data.seq_len = family, TASK[family], 2, 8
    from pjx import bench  # the synthetic batch of the task's spec

    return bench.synthetic_batch(plan_lib.from_config(c), model.config, seed=1)


def _grads(family, model, params, batch):
    task = tasks.get(TASK[family])
    fn = lambda p: task.loss(model, p, batch, jax.random.key(3), train=True)[0]
    return jax.jit(jax.value_and_grad(fn))(params)


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def _stack(params):
    return traverse_util.unflatten_dict(models.stack_layers(_flat(params)), sep="/")


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_keeps_the_gradients(family, policy):
    model, params = _setup(family)
    batch = _batch(family, model)
    loss, grads = _grads(family, model, params, batch)
    remat = models.create(family, "tiny", **FAMILIES[family], remat=policy)
    loss_r, grads_r = _grads(family, remat, params, batch)
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    scale = float32.magnitude(grads)  # a zero gradient rounds at the others' size
    for k, g in _flat(grads).items():
        float32.assert_close(_flat(grads_r)[k], g, rtol=1e-5, scale=scale, err_msg=k)


def _temp_bytes(remat, scan):
    """XLA's temp memory of a GPT-2 gradient, 4 layers at length 128: activations dominate."""
    fields = dict(FAMILIES["gpt2"], num_layers=4, max_position_embeddings=128)
    model = models.create("gpt2", "tiny", **fields, remat=remat, scan_layers=scan)
    ids = jnp.zeros((8, 128), jnp.int32)
    init = lambda: nn.meta.unbox(model.init(jax.random.key(0), input_ids=ids[:1])["params"])
    loss = lambda p: jnp.mean(model.apply({"params": p}, input_ids=ids)["logits"])
    compiled = jax.jit(jax.grad(loss)).lower(jax.eval_shape(init)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_remat_lowers_the_compiled_temp_memory(scan):
    # Unscanned, XLA:CPU runs a plain jax.checkpoint's recomputation right after the forward
    # pass, which saves nothing; pjx.remat orders it after the cotangent (here 0.42x; 0.26x
    # scanned).
    none, full = _temp_bytes("none", scan), _temp_bytes("full", scan)
    assert full < 0.6 * none, (full, none)


def test_unknown_remat_policy_names_the_choices():
    with pytest.raises(ValueError, match="model.remat='some'.*dots_no_batch"):
        models.make_config("gpt2", "tiny", remat="some")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_scanned_stack_equals_the_unscanned_one(family):
    model, params = _setup(family)
    scanned, scanned_init = _setup(family, scan_layers=True)
    stacked = _stack(params)
    shapes = lambda t: jax.tree.map(lambda x: x.shape, t)
    assert shapes(stacked) == shapes(scanned_init)  # the scanned model's own layout
    assert _flat(params).keys() == models.unstack_layers(_flat(scanned_init)).keys()
    batch = _batch(family, model)
    loss, grads = _grads(family, model, params, batch)
    loss_s, grads_s = _grads(family, scanned, stacked, batch)
    np.testing.assert_allclose(loss_s, loss, rtol=1e-5)
    unstacked = models.unstack_layers(_flat(grads_s))
    scale = float32.magnitude(grads)
    for k, g in _flat(grads).items():
        float32.assert_close(unstacked[k], g, rtol=1e-4, scale=scale, err_msg=k)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_scanned_model_exports_to_hugging_face_as_unscanned(family, tmp_path):
    heads = {"mlm_head": False} if family == "bert" else {}  # one head: a classifier
    scanned, params = _setup(family, scan_layers=True, **heads)
    hf.save(family, scanned.config, params, tmp_path)
    model, loaded = hf.load(tmp_path)
    assert not model.config.scan_layers
    inputs = models.example_inputs(family, model.config, 2, 8)
    inputs["input_ids"] = jnp.arange(16, dtype=jnp.int32).reshape(2, 8) % 60 + 3
    want = scanned.apply({"params": params}, **inputs)["logits"]
    np.testing.assert_allclose(model.apply({"params": loaded}, **inputs)["logits"], want, atol=1e-5)


def _gpt2_run(tmp_path, name, **model):
    c = config_lib.base_config()
    c.model.name, c.task = "gpt2", "clm"
    fields = {k: v for k, v in FAMILIES["gpt2"].items() if k != "vocab_size"}  # the tokenizer's
    c.model.update(dict(fields, **model))
    c.data.source, c.eval_data.source = "embedded[:40%]", ""
    c.data.tokenizer, c.data.seq_len = "byte", 16
    c.batch_size, c.steps, c.progress = 4, 1, False
    c.mesh.data = 1
    run.train(c, str(tmp_path / name), devices=jax.devices()[:1])
    return tmp_path / name


def test_unscanned_and_scanned_runs_initialise_each_other(tmp_path):
    plain = _gpt2_run(tmp_path, "plain")
    scanned_run = _gpt2_run(tmp_path, "scanned", scan_layers=True)
    vocab = dict(vocab_size=256)  # the byte tokenizer's
    _, fresh_scanned = _setup("gpt2", scan_layers=True, **vocab)
    _, fresh_plain = _setup("gpt2", **vocab)
    into_scanned, report = init_from(plain, fresh_scanned, verbose=False)
    assert not report.new and not report.dropped
    into_plain, report = init_from(scanned_run, fresh_plain, verbose=False)
    assert not report.new and not report.dropped
    # Round trip: plain -> scanned -> (unstacked) equals plain's own parameters.
    source, _ = init_from(plain, fresh_plain, verbose=False)
    back = models.unstack_layers(_flat(into_scanned))
    for k, v in _flat(source).items():
        np.testing.assert_array_equal(np.asarray(back[k]), np.asarray(v), err_msg=k)
    assert _flat(into_plain).keys() == _flat(fresh_plain).keys()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bfloat16_compute_keeps_float32_parameters(family):
    model, params = _setup(family)
    bf16 = models.create(family, "tiny", **FAMILIES[family], dtype="bfloat16")
    batch = _batch(family, model)
    loss, _ = _grads(family, model, params, batch)
    loss_bf, grads_bf = _grads(family, bf16, params, batch)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads_bf))
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads_bf))
    assert loss_bf.dtype == jnp.float32
    np.testing.assert_allclose(loss_bf, loss, rtol=3e-2)
    assert dataclasses.replace(bf16.config, dtype="float32") == model.config
