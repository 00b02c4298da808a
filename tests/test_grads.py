"""pjx.grads under DP-SGD for every family and task with its real heads (tied or not):
the clipped sum equals a loop of plain jax.grad, each example clipped alone, whichever way
per-example norms are found (ghost clipping or vmap)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pjx import ghost_clipping, grads, models, tasks

B, L = 4, 12
SMALL = dict(num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64, vocab_size=60)


def _bert_mlm():
    model = models.create("bert", "tiny", **SMALL, max_position_embeddings=L, mlm_head=True)
    ids = np.random.default_rng(0).integers(5, 60, (B, L))
    batch = {
        "input_ids": ids.astype(np.int32),
        "attention_mask": np.ones((B, L), np.int32),
        "token_type_ids": np.zeros((B, L), np.int32),
        "weight": np.asarray([1, 1, 1, 0], np.float32),
    }
    args = dict(mask_id=4, vocab_size=60, special_ids=(0, 1, 2, 3, 4), mask_rate=0.3)
    return model, batch, "mlm", args


def _gpt2_clm():
    model = models.create("gpt2", "tiny", **SMALL, max_position_embeddings=L)
    batch = {
        "input_ids": np.random.default_rng(1).integers(0, 60, (B, L)).astype(np.int32),
        "segment_ids": np.ones((B, L), np.int32),
        "position_ids": np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy(),
        "weight": np.ones((B,), np.float32),
    }
    return model, batch, "clm", {}


def _t5_seq2seq():
    kw = dict(SMALL, num_layers=1)
    model = models.create("t5", "tiny", **kw)
    rng = np.random.default_rng(2)
    batch = {
        "input_ids": rng.integers(2, 60, (B, L)).astype(np.int32),
        "attention_mask": np.ones((B, L), np.int32),
        "labels": rng.integers(2, 60, (B, 6)).astype(np.int32),
        "weight": np.ones((B,), np.float32),
    }
    return model, batch, "seq2seq", {}


def _vit_classify():
    model = models.create(
        "vit", "tiny", num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64, image_size=8,
        patch_size=4, num_channels=1, num_labels=3,
    )  # fmt: skip
    rng = np.random.default_rng(3)
    batch = {
        "pixel_values": rng.normal(size=(B, 8, 8, 1)).astype(np.float32),
        "label": rng.integers(0, 3, (B,)).astype(np.int32),
        "weight": np.ones((B,), np.float32),
    }
    return model, batch, "classify", {}


def _bert_distill():
    """A student under its frozen teacher (task distill): the teacher's own Dense layers run
    inside each example's loss and must take no part in the student's per-example norms."""
    model, batch, _, args = _bert_mlm()
    teacher = models.create(
        "bert", "tiny", **dict(SMALL, num_layers=2), max_position_embeddings=L, mlm_head=True,
        sow_internals=True,
    )  # fmt: skip
    inputs = models.example_inputs("bert", teacher.config, 1, L)
    t_params = nn.meta.unbox(teacher.init(jax.random.key(5), **inputs)["params"])
    student = models.create(
        "bert", "tiny", **SMALL, max_position_embeddings=L, mlm_head=True, sow_internals=True
    )
    losses = "logits:5,hidden_cosine:1,attention_relations:1,embedding:1,mlm:2"
    args = dict(args, teacher_model=dataclasses.asdict(teacher.config), losses=losses)
    return student, batch, "distill", args, (t_params,)


def _modernbert_classify():
    """ModernBERT with two layers (global, then local), fused Wqkv, GLU, no biases."""
    model = models.create(
        "modernbert", "tiny", **dict(SMALL, num_layers=2), max_position_embeddings=L,
        local_attention=4, mlm_head=False, num_labels=3,
    )  # fmt: skip
    ids = np.random.default_rng(0).integers(5, 60, (B, L))
    mask = np.ones((B, L), np.int32)
    mask[1, -4:] = 0
    batch = {
        "input_ids": ids.astype(np.int32),
        "attention_mask": mask,
        "label": np.asarray([0, 2, 1, 1], np.int32),
        "weight": np.asarray([1, 1, 1, 0], np.float32),
    }
    return model, batch, "classify", {}


def _llama_clm():
    model, batch, task, extra = _gpt2_clm()
    model = models.create(
        "llama", "tiny", **dict(SMALL, num_heads=4), num_kv_heads=2, qk_norm=True,
        qkv_bias=True, max_position_embeddings=L,
    )  # fmt: skip
    return model, batch, task, extra


FAMILIES = {
    "bert-mlm (tied decoder)": _bert_mlm,
    "llama-clm (GQA, q/k norms, untied)": _llama_clm,
    "modernbert-classify (fused qkv, GLU, windows)": _modernbert_classify,
    "bert-distill (frozen teacher)": _bert_distill,
    "gpt2-clm (tied wte)": _gpt2_clm,
    "t5-seq2seq": _t5_seq2seq,
    "vit-classify": _vit_classify,
}


def _setup(make):
    model, batch, task, extra, *frozen = make()
    frozen = frozen[0] if frozen else ()
    t = tasks.get(task)
    args = t.runtime_args({**t.args({}), **extra}, None, model.config)
    fn = lambda p, b, r: t.loss(model, p, b, r, *frozen, train=True, **args)
    name = type(model).__module__.rsplit(".", 1)[-1]
    inputs = models.example_inputs(name, model.config, 1, L)
    params = nn.meta.unbox(model.init(jax.random.key(0), **inputs)["params"])
    # Non-zero everywhere (a zero-initialised head would hide a missing gradient share).
    params = jax.tree.map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape, x.dtype), params
    )
    return fn, params, jax.tree.map(jnp.asarray, batch)


@pytest.mark.parametrize("clipping", grads.CLIPPING)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_clipped_sum_equals_a_loop_for_every_family_with_its_heads(family, clipping):
    fn, params, batch = _setup(FAMILIES[family])
    C, rng = 0.5, jax.random.key(7)
    dp = grads.DP(C, 0.0, 1, clipping=clipping)
    _, _, got = jax.jit(lambda p: grads.gradients(fn, p, batch, rng, dp=dp))(params)
    k_examples, _ = jax.random.split(rng)

    def clipped(i):  # plain jax.grad of example i alone, clipped to C
        example = jax.tree.map(lambda x: x[i : i + 1], batch)
        g = jax.grad(lambda p: fn(p, example, jax.random.fold_in(k_examples, i))[0])(params)
        return jax.tree.map(lambda x: x * jnp.minimum(1.0, C / optax.global_norm(g)), g)

    want = jax.tree.map(lambda *gs: sum(gs), *[clipped(i) for i in range(B)])
    flat = jax.tree_util.tree_flatten_with_path(want)[0]
    for (path, w), g in zip(flat, jax.tree.leaves(got)):
        np.testing.assert_allclose(g, w, atol=2e-5, err_msg=jax.tree_util.keystr(path))


def test_a_table_read_outside_its_call_is_not_ghost_clipped():
    """BERT's MLM decoder reads the word embeddings directly (tied_logits): only the
    lookup is a call ghost clipping sees, so the table must take the per-example path."""
    fn, params, batch = _setup(_bert_mlm)
    trainable = [True] * len(jax.tree.leaves(params))
    covered = ghost_clipping.covered_paths(fn, params, trainable, batch, jax.random.key(0))
    assert "bert/embeddings/word_embeddings/embedding" not in covered
    assert "bert/embeddings/position_embeddings/embedding" in covered
    assert any(p.endswith("intermediate/dense/kernel") for p in covered)
