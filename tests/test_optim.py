"""Schedules, the weight-decay mask, bf16 moments and in-step gradient accumulation."""

import chex
import float32
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pjx import grads, models, optim, tasks


def _opt(**kw):
    return {**optim.DEFAULTS, **kw}


@pytest.mark.parametrize(
    "kind, mid", [("cosine", 0.1 + 0.9 * 0.5), ("linear", 0.1 + 0.9 * 0.5), ("constant", 1.0)]
)
def test_schedule_values(kind, mid):
    fn = optim.schedule(
        _opt(lr=1.0, warmup_steps=10, schedule=kind, end_lr_fraction=0.1), total_steps=110
    )
    np.testing.assert_allclose(
        [fn(0), fn(5), fn(10), fn(60)], [0.0, 0.5, 1.0, mid], rtol=1e-6, atol=1e-7
    )
    if kind != "constant":
        np.testing.assert_allclose(fn(110), 0.1, rtol=1e-6)


def test_schedule_end_lr_absolute_and_cosine_quarter():
    fn = optim.schedule(_opt(lr=2.0, warmup_steps=0, end_lr=0.0), total_steps=100)
    # Half-cosine: lr * 0.5 * (1 + cos(pi * t / T)).
    np.testing.assert_allclose(fn(25), 2.0 * 0.5 * (1 + np.cos(np.pi / 4)), rtol=1e-6)
    np.testing.assert_allclose(fn(100), 0.0, atol=1e-7)


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="schedule"):
        optim.schedule(_opt(schedule="exp"), 10)


def _bert_params():
    m = models.create("bert", "tiny", num_layers=1, vocab_size=64, num_labels=2)
    v = jax.eval_shape(
        lambda: m.init(jax.random.PRNGKey(0), **models.example_inputs("bert", m.config, 1, 8))
    )
    import flax.linen as nn

    return nn.meta.unbox(v["params"])


def test_weight_decay_mask_excludes_biases_and_norms():
    params = _bert_params()
    mask = optim.decay_mask(params)
    flat = {
        "/".join(str(k.key) for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]
    }
    decayed = {k for k, v in flat.items() if v}
    assert decayed, flat
    for path, on in flat.items():
        leaf = path.split("/")[-1]
        if leaf == "bias" or "LayerNorm" in path or "norm" in path.lower():
            assert not on, path
        if leaf == "kernel":
            assert on, path
    assert any("word_embeddings" in k for k in decayed)  # BERT / GPT-2 decay embeddings


def test_weight_decay_applies_to_kernels_only():
    params = {
        "dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
        "LayerNorm": {"scale": jnp.ones((2,))},
    }
    tx, _ = optim.make(_opt(lr=0.1, weight_decay=0.5, clip_norm=0.0), 10)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, state, params)
    # Step 0 of a warm-up-free cosine has lr 0.1: kernel decays by lr * wd = 0.05.
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.05, rtol=1e-6)
    np.testing.assert_allclose(updates["dense"]["bias"], 0.0)
    np.testing.assert_allclose(updates["LayerNorm"]["scale"], 0.0)


def test_bf16_moments():
    params = {"w": jnp.ones((4, 4))}
    tx, _ = optim.make(_opt(mu_dtype="bfloat16"), 10)
    mus = [
        s.mu
        for s in jax.tree.leaves(tx.init(params), is_leaf=lambda x: hasattr(x, "mu"))
        if hasattr(s, "mu")
    ]
    assert mus and mus[0]["w"].dtype == jnp.bfloat16


def _tiny_gpt2():
    return models.create(
        "gpt2",
        "tiny",
        num_layers=1,
        hidden_size=32,
        num_heads=2,
        mlp_dim=64,
        vocab_size=64,
        max_position_embeddings=16,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
    )


def test_gradient_accumulation_equals_large_batch():
    model = _tiny_gpt2()
    B, L = 8, 16
    rng = np.random.RandomState(0)
    ids = rng.randint(0, 64, (B, L)).astype(np.int32)
    # Uneven token counts per micro-batch: padding (segment 0) of varying length.
    seg = (np.arange(L)[None, :] < rng.randint(4, L + 1, (B, 1))).astype(np.int32)
    batch = {"input_ids": jnp.asarray(ids), "segment_ids": jnp.asarray(seg)}
    params = jax.jit(
        lambda: model.init(
            jax.random.PRNGKey(0), **models.example_inputs("gpt2", model.config, 1, L)
        )
    )()
    import flax.linen as nn

    params = nn.meta.unbox(params["params"])
    fn = lambda p, b, r: tasks.get("clm").loss(model, p, b, r, train=True)
    out = {
        a: jax.jit(
            lambda p, b, a=a: grads.gradients(fn, p, b, jax.random.PRNGKey(2), accum_steps=a)
        )(params, batch)
        for a in (1, 4)
    }
    (l1, m1, g1), (l4, m4, g4) = out[1], out[4]
    np.testing.assert_allclose(l4, l1, rtol=1e-5)
    np.testing.assert_allclose(m4["count"], m1["count"])
    np.testing.assert_allclose(m4["loss_sum"], m1["loss_sum"], rtol=1e-5)
    float32.assert_trees_close(g4, g1, rtol=1e-5)
    # Property check that can fail: unweighted mean of micro-batch means differs.
    counts = np.stack([seg[j::4, 1:].sum() for j in range(4)])
    assert len(set(counts.tolist())) > 1


def test_freeze_leaves_frozen_params_untouched_and_stateless():
    params = {
        "encoder": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones((3,))},
        "classifier": {"kernel": jnp.ones((3, 2))},
    }
    grads = jax.tree.map(jnp.ones_like, params)
    tx, _ = optim.make(_opt(lr=0.1, warmup_steps=0, freeze="^encoder/"), total_steps=10)
    state = tx.init(params)
    # Only the classifier carries Adam moments: frozen leaves cost no optimizer memory.
    moments = [x for x in jax.tree.leaves(state) if getattr(x, "shape", ()) == (3, 3)]
    assert moments == []
    updates, _ = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    chex.assert_trees_all_equal(new["encoder"], params["encoder"])
    assert not np.allclose(new["classifier"]["kernel"], params["classifier"]["kernel"])
    mask = optim.frozen_mask(params, "^encoder/")
    assert mask == {"encoder": {"kernel": True, "bias": True}, "classifier": {"kernel": False}}


def test_head_lr_is_adamw_at_that_lr_on_the_head_and_lr_elsewhere():
    params = {
        "encoder": {"kernel": jnp.full((3, 3), 0.5), "bias": jnp.ones((3,))},
        "classifier": {"kernel": jnp.full((3, 2), -0.3), "bias": jnp.zeros((2,))},
    }
    cfg = _opt(
        lr=0.01, head_lr=0.2, warmup_steps=2, schedule="linear", weight_decay=0.1, clip_norm=0.0
    )
    tx, lr_fn = optim.make(cfg, total_steps=6, heads="^classifier/")
    body, _ = optim.make(_opt(**{**cfg, "head_lr": 0.0}), total_steps=6)
    head, _ = optim.make(_opt(**{**cfg, "lr": 0.2, "head_lr": 0.0}), total_steps=6)
    p, pb, ph = params, params, params
    s, sb, sh = tx.init(p), body.init(pb), head.init(ph)
    for i in range(4):
        grad = lambda tree, i=i: jax.tree.map(lambda x: jnp.sin(x * (i + 1)) + 0.1 * i, tree)
        u, s = tx.update(grad(p), s, p)
        ub, sb = body.update(grad(pb), sb, pb)
        uh, sh = head.update(grad(ph), sh, ph)
        p, pb, ph = (optax.apply_updates(*a) for a in ((p, u), (pb, ub), (ph, uh)))
    # Each leaf's gradient is a function of that leaf alone (no global-norm clip), so the
    # encoder follows `body` (lr) and the classifier `head` (head_lr) exactly.
    chex.assert_trees_all_close(p["encoder"], pb["encoder"], rtol=1e-6)
    chex.assert_trees_all_close(p["classifier"], ph["classifier"], rtol=1e-6)
    assert not np.allclose(p["classifier"]["kernel"], pb["classifier"]["kernel"])
    assert float(lr_fn(2)) == pytest.approx(0.01)  # the schedule reported is lr's


def test_head_lr_without_a_matching_head_is_refused():
    tx, _ = optim.make(_opt(head_lr=1e-3), total_steps=4, heads="$^")
    with pytest.raises(ValueError, match="head_pattern"):
        tx.init({"decoder": {"kernel": jnp.ones((2, 2))}})
    with pytest.raises(ValueError, match="no task head"):
        optim.make(_opt(head_lr=1e-3), total_steps=4)
