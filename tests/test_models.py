"""Model families: parameter counts, causality, padding/packing invariance, caches, heads."""

import chex
import flax.linen as nn
import float32
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pjx import models
from pjx.models import gpt2, t5

V = 101  # tiny vocab keeps the tests fast


def _count(model, inputs):
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(shapes["params"])))


def _init(model, **inputs):
    return nn.meta.unbox(model.init(jax.random.key(0), **inputs)["params"])


@pytest.mark.parametrize(
    "name,size,overrides,want",
    [
        ("bert", "base", dict(mlm_head=False), 109_482_240),
        ("bert", "base", dict(mlm_head=True, nsp_head=True), 110_106_428),
        ("gpt2", "small", {}, 124_439_808),
        ("vit", "B/16", dict(num_labels=1000), 86_567_656),
        ("t5", "small", {}, 76_961_152),  # google/t5-v1_1-small
    ],
)
def test_published_param_counts(name, size, overrides, want):
    config = models.make_config(name, size, **overrides)
    inputs = models.example_inputs(name, config, batch_size=1, seq_len=8)
    assert _count(models.create(name, size, **overrides), inputs) == want


def test_create_and_unknown_override():
    model = models.create("gpt2", "tiny", vocab_size=V)
    assert model.config.vocab_size == V and model.config.num_layers == 2
    with pytest.raises(ValueError, match="valid fields"):
        models.make_config("bert", "tiny", hidden=3)
    assert set(models.MODELS) == {"bert", "gpt2", "t5", "vit", "llama", "modernbert"}


def test_logical_axis_names_on_every_param():
    allowed = {
        "vocab",
        "embed",
        "mlp",
        "heads",
        "kv",
        "position",
        "token_type",
        "relpos_buckets",
        "classes",
        "patch",
        "norm",
        None,
    }
    for name, kw in [
        ("bert", dict(nsp_head=True, num_labels=3)), ("t5", {}), ("gpt2", {}),
        ("llama", dict(qkv_bias=True, out_bias=True, mlp_bias=True, qk_norm=True)),
        ("modernbert", dict(num_labels=2, norm_bias=True, attention_bias=True, mlp_bias=True)),
    ]:  # fmt: skip
        config = models.make_config(name, "tiny", vocab_size=V, **kw)
        boxed = jax.eval_shape(
            lambda c=config, n=name: (
                models.MODELS[n]
                .Model(c)
                .init(jax.random.key(0), **models.example_inputs(n, c, seq_len=8))
            )
        )["params"]
        leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        assert all(isinstance(x, nn.Partitioned) for x in leaves), name
        for x in leaves:
            assert set(x.names) <= allowed and len(x.names) == x.value.ndim, (name, x.names)


# --------------------------------------------------------------------------- GPT-2


@pytest.fixture(scope="module")
def gpt():
    model = models.create("gpt2", "tiny", vocab_size=V, hidden_size=32, mlp_dim=64, num_layers=1)
    ids = jax.random.randint(jax.random.key(1), (2, 10), 0, V)
    return model, _init(model, input_ids=ids), ids


def test_gpt2_causal_through_gradients(gpt):
    model, params, ids = gpt
    emb = jnp.take(params["transformer"]["wte"]["embedding"], ids, axis=0)
    t = 4

    def out_t(e):
        return model.apply({"params": params}, ids, inputs_embeds=e)["logits"][:, t].sum()

    g = jax.grad(out_t)(emb)
    assert np.all(np.asarray(g[:, t + 1 :]) == 0)
    assert np.all(np.abs(np.asarray(g[:, : t + 1])).sum(-1) > 0)


def test_gpt2_kv_cache_equals_full_forward(gpt):
    model, params, ids = gpt
    full = model.apply({"params": params}, ids)["logits"]
    cache = gpt2.init_cache(model, 2, 10)
    step = jax.jit(
        lambda c, x: model.apply({"params": params, "cache": c}, x, decode=True, mutable=["cache"])
    )
    out, state = step(cache, ids[:, :4])  # prefill
    logits = [out["logits"]]
    for t in range(4, 10):
        out, state = step(state["cache"], ids[:, t : t + 1])
        logits.append(out["logits"])
    np.testing.assert_allclose(jnp.concatenate(logits, 1), full, atol=1e-4)


def test_gpt2_generate_greedy_matches_argmax(gpt):
    model, params, ids = gpt
    gen = jax.jit(gpt2.generate, static_argnums=(0, 3), static_argnames=("temperature", "top_k"))
    seq = gen(model, params, ids[:, :3], 5, rng=jax.random.key(0), temperature=0.0)
    chex.assert_shape(seq, (2, 8))
    want = jnp.argmax(model.apply({"params": params}, seq)["logits"][:, 2:-1], -1)
    np.testing.assert_array_equal(seq[:, 3:], want)
    sampled = gen(model, params, ids[:, :3], 5, rng=jax.random.key(0), top_k=3)
    assert sampled.shape == (2, 8) and np.all((sampled >= 0) & (sampled < V))


def test_gpt2_packed_segments_do_not_attend_across(gpt):
    model, params, ids = gpt
    seg = jnp.array([[1] * 5 + [2] * 5] * 2)
    pos = jnp.array([list(range(5)) * 2] * 2)
    other = ids.at[:, 5:].set((ids[:, 5:] + 7) % V)
    a = model.apply({"params": params}, ids, segment_ids=seg, position_ids=pos)["logits"]
    b = model.apply({"params": params}, other, segment_ids=seg, position_ids=pos)["logits"]
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-5)
    assert not np.allclose(a[:, 5:], b[:, 5:])
    # Segment 2 alone equals a fresh sequence.
    alone = model.apply({"params": params}, ids[:, 5:])["logits"]
    np.testing.assert_allclose(a[:, 5:], alone, atol=1e-4)


def test_gpt2_bfloat16_keeps_float32_params_and_logits():
    model = models.create(
        "gpt2", "tiny", vocab_size=V, hidden_size=32, num_layers=1, dtype="bfloat16"
    )
    ids = jnp.zeros((2, 6), jnp.int32)
    params = _init(model, input_ids=ids)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    out = model.apply({"params": params}, ids)
    assert out["logits"].dtype == jnp.float32
    assert out["last_hidden_state"].dtype == jnp.bfloat16


# --------------------------------------------------------------------------- BERT


@pytest.fixture(scope="module")
def bert_tiny():
    model = models.create(
        "bert",
        "tiny",
        vocab_size=V,
        hidden_size=32,
        mlp_dim=64,
        num_layers=1,
        nsp_head=True,
        num_labels=3,
    )
    ids = jax.random.randint(jax.random.key(2), (2, 8), 0, V)
    return model, _init(model, input_ids=ids, masked_positions=jnp.zeros((2, 2), jnp.int32)), ids


def test_bert_padding_invariance(bert_tiny):
    model, params, ids = bert_tiny
    mask = jnp.array([[1] * 8, [1] * 5 + [0] * 3])
    other = ids.at[1, 5:].set((ids[1, 5:] + 3) % V)
    a = model.apply({"params": params}, ids, mask)
    b = model.apply({"params": params}, other, mask)
    np.testing.assert_allclose(
        a["last_hidden_state"][1, :5], b["last_hidden_state"][1, :5], atol=1e-5
    )
    for key in ("pooler_output", "nsp_logits", "logits"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)


def test_bert_mean_pooling_classifies_the_mean_of_the_unpadded_states(bert_tiny):
    model, params, ids = bert_tiny
    mean_model = models.create(
        "bert", "tiny", vocab_size=V, hidden_size=32, mlp_dim=64, num_layers=1,
        nsp_head=True, num_labels=3, pooling="mean",
    )  # fmt: skip
    mask = jnp.array([[1] * 8, [1] * 5 + [0] * 3])
    out = mean_model.apply({"params": params}, ids, mask)  # the same parameter tree
    h = np.asarray(out["last_hidden_state"], np.float64)
    m = np.asarray(mask, np.float64)[..., None]
    mean = (h * m).sum(1) / m.sum(1)
    k, b = (np.asarray(params["classifier"][n], np.float64) for n in ("kernel", "bias"))
    np.testing.assert_allclose(out["logits"], mean @ k + b, atol=1e-5)
    # Padding contributes nothing: other ids under the mask give the same logits.
    other = ids.at[1, 5:].set((ids[1, 5:] + 3) % V)
    np.testing.assert_allclose(
        mean_model.apply({"params": params}, other, mask)["logits"], out["logits"], atol=1e-5
    )
    # ... and the [CLS] model's logits differ (the classifier reads another vector).
    cls_logits = model.apply({"params": params}, ids, mask)["logits"]
    assert np.abs(np.asarray(cls_logits) - np.asarray(out["logits"])).max() > 1e-3


def test_bert_pooling_is_checked_and_has_no_hf_export():
    from pjx.hf import bert as hf_bert

    bad = models.create("bert", "tiny", vocab_size=V, num_labels=2, pooling="max")
    with pytest.raises(ValueError, match="pooling='max'"):
        _init(bad, input_ids=jnp.zeros((1, 4), jnp.int32))
    mean = models.make_config("bert", "tiny", vocab_size=V, num_labels=2, pooling="mean")
    with pytest.raises(ValueError, match="BertForSequenceClassification"):
        hf_bert.config_to_hf(mean)
    hf_bert.config_to_hf(models.make_config("bert", "tiny", vocab_size=V, pooling="mean"))


def test_bert_packed_segments(bert_tiny):
    model, params, ids = bert_tiny
    seg = jnp.array([[1] * 4 + [2] * 4] * 2)
    other = ids.at[:, 4:].set((ids[:, 4:] + 5) % V)
    a = model.apply({"params": params}, ids, segment_ids=seg)["last_hidden_state"]
    b = model.apply({"params": params}, other, segment_ids=seg)["last_hidden_state"]
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-5)


def test_bert_mlm_at_positions_equals_full_head_gathered(bert_tiny):
    model, params, ids = bert_tiny
    pos = jnp.array([[1, 6], [0, 3]])
    out = model.apply({"params": params}, ids, masked_positions=pos)
    chex.assert_shape(out["mlm_logits"], (2, 2, V))
    chex.assert_shape(out["nsp_logits"], (2, 2))
    chex.assert_shape(out["logits"], (2, 3))
    full = model.apply({"params": params}, ids)["mlm_logits"]  # all positions
    chex.assert_shape(full, (2, 8, V))
    np.testing.assert_allclose(
        out["mlm_logits"], jnp.take_along_axis(full, pos[..., None], 1), atol=1e-5
    )
    assert out["mlm_logits"].dtype == jnp.float32


def test_bert_defaults_and_dropout(bert_tiny):
    model, params, ids = bert_tiny
    L = ids.shape[1]
    a = model.apply({"params": params}, ids)["last_hidden_state"]
    b = model.apply(
        {"params": params},
        ids,
        jnp.ones_like(ids),
        jnp.zeros_like(ids),
        jnp.broadcast_to(jnp.arange(L), ids.shape),
    )["last_hidden_state"]
    float32.assert_close(a, b)
    train = model.apply(
        {"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(3)}
    )["last_hidden_state"]
    assert np.all(np.isfinite(train)) and not np.allclose(train, a)


# --------------------------------------------------------------------------- T5


def test_t5_cached_greedy_generate_equals_full_forward():
    model = models.create(
        "t5",
        "tiny",
        vocab_size=V,
        hidden_size=32,
        num_heads=2,
        head_dim=16,
        mlp_dim=64,
        num_layers=1,
        num_decoder_layers=1,
    )
    ids = jax.random.randint(jax.random.key(4), (2, 7), 1, V)
    mask = jnp.array([[1] * 7, [1] * 5 + [0] * 2])
    params = _init(model, input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :3])
    toks = jax.jit(t5.generate, static_argnums=0, static_argnames="max_new_tokens")(
        model, params, ids, mask, max_new_tokens=6
    )
    out = model.apply({"params": params}, ids, mask, t5.shift_right(toks))
    chex.assert_shape(out["logits"], (2, 6, V))
    chex.assert_shape(out["encoder_last_hidden_state"], (2, 7, 32))
    np.testing.assert_array_equal(toks, jnp.argmax(out["logits"], -1))
    # Encoder padding invariance.
    other = ids.at[1, 5:].set(3)
    out2 = model.apply({"params": params}, other, mask, t5.shift_right(toks))
    np.testing.assert_allclose(out["logits"][1], out2["logits"][1], atol=1e-4)
    assert "relative_attention_bias" in params["decoder"]
    assert set(params["decoder"]["block_0"]) == {"layer_0", "layer_1", "layer_2"}


# --------------------------------------------------------------------------- ViT


@pytest.mark.parametrize("patch,pooling", [(7, "cls"), (4, "gap")])
def test_vit_mnist_shapes(patch, pooling):
    model = models.create(
        "vit",
        "tiny",
        image_size=28,
        patch_size=patch,
        num_channels=1,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        mlp_dim=64,
        num_labels=10,
        projection_dim=16,
        pooling=pooling,
    )
    x = jax.random.uniform(jax.random.key(5), (2, 28, 28, 1))
    params = _init(model, pixel_values=x)
    out = model.apply({"params": params}, x)
    n = (28 // patch) ** 2 + (pooling == "cls")
    chex.assert_shape(out["last_hidden_state"], (2, n, 32))
    chex.assert_shape(out["logits"], (2, 10))
    chex.assert_shape(out["projection"], (2, 16))
    assert ("cls_token" in params["vit"]["embeddings"]) == (pooling == "cls")
    assert "pooler" not in params["vit"]


def test_example_inputs_init_every_family():
    for name in ("bert", "gpt2", "t5", "vit", "llama", "modernbert"):
        config = models.make_config(name, "tiny")
        inputs = models.example_inputs(name, config, seq_len=8)
        out = jax.eval_shape(
            lambda c=config, n=name, i=inputs: (
                models.MODELS[n].Model(c).init_with_output(jax.random.key(0), **i)
            )
        )[0]
        assert "last_hidden_state" in out, name
