"""Shared layers (pjx.nn) against straightforward NumPy references."""

import dataclasses
import math

import chex
import flax.linen as nn
import float32
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from pjx.nn import backend
from pjx.nn.attention import Attention, dot_product_attention, make_attention_mask
from pjx.nn.blocks import MLP
from pjx.nn.config import LayerConfig
from pjx.nn.dense import Norm
from pjx.nn.embed import RelativePositionBias, relative_position_bucket


def _t5_bucket_reference(rel, bidirectional, num_buckets, max_distance):
    """Scalar Python port of the T5 formula (Mesh TensorFlow / HF `_relative_position_bucket`)."""
    ret = 0
    n = -rel
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0) * num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    val = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return ret + min(val, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bucket_matches_reference(bidirectional):
    rel = np.arange(-300, 301)
    expected = [_t5_bucket_reference(int(r), bidirectional, 32, 128) for r in rel]

    fn = lambda r: relative_position_bucket(r, bidirectional=bidirectional)
    for f in (fn, jax.jit(fn)):
        np.testing.assert_array_equal(np.asarray(f(jnp.asarray(rel))), expected)


def _np_attention(q, k, v, bias, mask, scale):
    logits = np.einsum("bthk,bshk->bhts", q, k) * scale
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = np.where(mask, logits, -1e30)
    logits = logits - logits.max(-1, keepdims=True)
    p = np.exp(logits)
    p = p / p.sum(-1, keepdims=True)
    return np.einsum("bhts,bshk->bthk", p, v)


def _np_mask(T, S, causal, kv_mask, seg):
    m = np.ones((kv_mask.shape[0], 1, T, S), bool)
    if causal:
        m &= np.tril(np.ones((T, S), bool))[None, None]
    m &= kv_mask.astype(bool)[:, None, None, :]
    m &= seg[:, None, :, None] == seg[:, None, None, :]
    return m


class AttentionTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        self.B, self.L, self.H, self.K = 2, 6, 3, 4
        shape = (self.B, self.L, self.H, self.K)
        self.q, self.k, self.v = (rng.normal(size=shape).astype(np.float32) for _ in range(3))
        self.bias = rng.normal(size=(1, self.H, self.L, self.L)).astype(np.float32)
        self.kv_mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
        self.seg = np.array([[1, 1, 1, 2, 2, 2], [1, 1, 2, 2, 0, 0]])

    @chex.variants(with_jit=True, without_jit=True)
    def test_mask_matches_reference(self):
        fn = self.variant(
            lambda m, s: make_attention_mask(6, 6, causal=True, kv_mask=m, q_segment_ids=s)
        )
        got = fn(jnp.asarray(self.kv_mask), jnp.asarray(self.seg))
        chex.assert_shape(got, (2, 1, 6, 6))
        np.testing.assert_array_equal(got, _np_mask(6, 6, True, self.kv_mask, self.seg))

    def test_causal_offset_for_decoding(self):
        got = make_attention_mask(1, 5, causal=True, q_offset=2)
        np.testing.assert_array_equal(got[0, 0, 0], [True, True, True, False, False])

    @chex.variants(with_jit=True, without_jit=True)
    def test_fused_and_explicit_match_reference(self):
        mask = _np_mask(self.L, self.L, True, self.kv_mask, self.seg)
        want = _np_attention(self.q, self.k, self.v, self.bias, mask, 0.5)
        for impl in ("xla", "einsum", None):
            fn = self.variant(
                lambda q, k, v, b, m, impl=impl: dot_product_attention(
                    q, k, v, bias=b, mask=m, scale=0.5, implementation=impl
                )
            )
            got = fn(self.q, self.k, self.v, self.bias, mask)
            np.testing.assert_allclose(got, want, atol=1e-5, err_msg=str(impl))
        # A vanishing dropout rate draws the dropout bits but keeps every weight.
        explicit = self.variant(
            lambda q, k, v, b, m: dot_product_attention(
                q,
                k,
                v,
                bias=b,
                mask=m,
                scale=0.5,
                dropout_rate=1e-12,
                dropout_rng=jax.random.key(0),
            )
        )
        np.testing.assert_allclose(
            explicit(self.q, self.k, self.v, self.bias, mask), want, atol=1e-5
        )

    def test_attention_dropout_is_active_when_not_deterministic(self):
        out = dot_product_attention(
            self.q, self.k, self.v, dropout_rate=0.5, dropout_rng=jax.random.key(0)
        )
        ref = dot_product_attention(self.q, self.k, self.v)
        self.assertFalse(np.allclose(out, ref))
        self.assertTrue(np.all(np.isfinite(out)))

    def test_attention_module_bf16_keeps_float32_params(self):
        cfg = LayerConfig(hidden_size=8, num_heads=2, head_dim=4, mlp_dim=16, dtype="bfloat16")
        mod = Attention(cfg, out_name="out")
        x = jnp.ones((2, 3, 8))
        variables = mod.init(jax.random.key(0), x)
        params = nn.meta.unbox(variables["params"])
        chex.assert_trees_all_equal_dtypes(params, jax.tree.map(jnp.float32, params))
        chex.assert_shape(params["query"]["kernel"], (8, 2, 4))
        chex.assert_shape(params["out"]["kernel"], (2, 4, 8))
        self.assertEqual(mod.apply(variables, x).dtype, jnp.bfloat16)
        axes = variables["params"]["query"]["kernel"].names
        self.assertEqual(axes, ("embed", "heads", "kv"))


class NormMLPTest(chex.TestCase):
    """Norm and MLP against NumPy, traced (jit) and eager alike."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters((n, n) for n in ("layernorm", "rmsnorm"))
    def test_norm_matches_numpy(self, norm_type):
        cfg = LayerConfig(
            hidden_size=8, num_heads=2, head_dim=4, mlp_dim=16, norm_type=norm_type, norm_eps=1e-6
        )
        x = np.random.default_rng(1).normal(size=(2, 3, 8)).astype(np.float32) * 3 + 1
        mod = Norm(cfg)
        variables = mod.init(jax.random.key(0), x)
        got = self.variant(mod.apply)(variables, x)
        chex.assert_shape(got, x.shape)
        if norm_type == "rmsnorm":
            want = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6)
            self.assertEqual(set(variables["params"]), {"scale"})
        else:
            want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
        np.testing.assert_allclose(got, want, atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters((n, n) for n in ("gelu", "gelu_new", "gated-gelu"))
    def test_mlp_activation(self, activation):
        cfg = LayerConfig(
            hidden_size=8,
            num_heads=2,
            head_dim=4,
            mlp_dim=16,
            activation=activation,
            use_bias=False,
        )
        names = ("wi_0", "wi_1") if activation.startswith("gated") else ("wi",)
        mod = MLP(cfg, in_names=names, out_name="wo")
        x = np.random.default_rng(2).normal(size=(2, 3, 8)).astype(np.float32)
        p = nn.meta.unbox(mod.init(jax.random.key(0), x)["params"])
        for name in names:
            chex.assert_shape(p[name]["kernel"], (8, 16))
        chex.assert_shape(p["wo"]["kernel"], (16, 8))
        erf = np.vectorize(math.erf)
        gelu = lambda h: 0.5 * h * (1 + erf(h / np.sqrt(2)))
        gelu_new = lambda h: 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
        if activation == "gated-gelu":
            wi_0, wi_1 = np.asarray(p["wi_0"]["kernel"]), np.asarray(p["wi_1"]["kernel"])
            h = gelu_new(x @ wi_0) * (x @ wi_1)
        else:
            h = (gelu if activation == "gelu" else gelu_new)(x @ np.asarray(p["wi"]["kernel"]))
        want = h @ np.asarray(p["wo"]["kernel"])
        got = self.variant(mod.apply)({"params": p}, x)
        chex.assert_shape(got, x.shape)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_relative_position_bias_shape_and_sharing():
    mod = RelativePositionBias(num_heads=3, bidirectional=False)
    variables = mod.init(jax.random.key(0), 4, 4)
    bias = mod.apply(variables, 4, 4)
    chex.assert_shape(bias, (1, 3, 4, 4))
    # Unidirectional: future keys (rel > 0) all share bucket 0, same as rel == 0.
    np.testing.assert_allclose(bias[0, :, 0, 1], bias[0, :, 0, 0])
    step = mod.apply(variables, 1, 4, 2)
    np.testing.assert_allclose(step[0, :, 0], bias[0, :, 2])


def test_attention_implementation_per_backend_and_clear_errors():
    pick = backend.attention_implementation
    assert pick(None, jnp.float32, "cpu") == "xla"
    assert pick(None, jnp.float32, "cpu", training=True) == "einsum"  # see its docstring
    assert pick("xla", jnp.float32, "cpu", training=True) == "xla"
    assert pick(None, jnp.float32, "gpu", training=True) == "xla"
    assert pick("einsum", jnp.bfloat16, "gpu") == "einsum"
    assert pick(None, jnp.bfloat16, "gpu") == "cudnn"
    assert pick(None, jnp.float32, "gpu") == "xla"  # no float32 flash kernel
    assert pick("xla", jnp.bfloat16, "gpu") == "xla"
    with pytest.raises(ValueError, match="runs on NVIDIA GPUs, and this backend is 'cpu'"):
        pick("cudnn", jnp.bfloat16, "cpu")
    with pytest.raises(ValueError, match="not float32: set model.dtype=bfloat16"):
        pick("cudnn", jnp.float32, "gpu")
    with pytest.raises(ValueError, match="pick one of"):
        pick("flash", jnp.float32, "cpu")
    # Odd lengths (ViT: 196 patches + CLS): jax's cuDNN kernel cannot differentiate them.
    assert pick(None, jnp.bfloat16, "gpu", training=True, lengths=(197, 197)) == "xla"
    assert pick(None, jnp.bfloat16, "gpu", lengths=(197, 197)) == "xla"
    assert pick(None, jnp.bfloat16, "gpu", training=True, lengths=(128, 128)) == "cudnn"
    assert pick("cudnn", jnp.bfloat16, "gpu", lengths=(197, 197)) == "cudnn"  # inference
    with pytest.raises(ValueError, match="even sequence lengths, not queries 197 x keys 197"):
        pick("cudnn", jnp.bfloat16, "gpu", training=True, lengths=(197, 197))


def test_training_attention_on_cpu_is_the_einsum_form_with_the_fused_gradients():
    """An Attention module in training mode (deterministic=False) with attention_impl unset
    runs the einsum form on CPU (its program has no fused-attention grouped axis), and its
    output and gradients equal those of the fused kernel asked for by name."""
    cfg = LayerConfig(hidden_size=8, num_heads=2, head_dim=4, mlp_dim=16)
    mod = Attention(cfg, causal=True)
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    params = mod.init(jax.random.key(1), x)["params"]

    def loss(p, module, deterministic):
        y = module.apply({"params": p}, x, deterministic=deterministic)
        return jnp.sum(jnp.sin(y))

    fused = Attention(dataclasses.replace(cfg, attention_impl="xla"), causal=True)
    want_loss, want_grad = jax.value_and_grad(loss)(params, fused, False)
    got_loss, got_grad = jax.value_and_grad(loss)(params, mod, False)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    float32.assert_trees_close(got_grad, want_grad)

    # The programs differ as the policy says: jax's fused kernel adds a unit group axis.
    def program(module):
        grad = jax.jit(jax.grad(loss), static_argnums=(1, 2))
        return grad.lower(params, module, False).as_text()

    grouped = "tensor<1x2x2x5x5xf32>"  # [1, B, H, T, S] scores, the vmapped group axis
    einsum_program = program(mod)
    assert grouped in program(fused) and grouped not in einsum_program
    assert "tensor<2x2x5x5xf32>" in einsum_program  # [B, H, T, S]


@pytest.mark.parametrize("impl,dropout", [("xla", 0.0), ("einsum", 0.0), ("einsum", 1e-9)])
def test_causal_flag_equals_an_explicit_causal_mask(impl, dropout):
    """The kernels' own causal mask (fused path) and the einsum path (with and without
    attention dropout) give what an explicit lower-triangular mask gives, with padding on
    top."""
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 6, 2, 4))
    pad = make_attention_mask(6, 6, kv_mask=jnp.array([[1] * 6, [1] * 4 + [0] * 2]))
    explicit = make_attention_mask(
        6, 6, causal=True, kv_mask=jnp.array([[1] * 6, [1] * 4 + [0] * 2])
    )
    kw = dict(dropout_rate=dropout, dropout_rng=jax.random.key(1) if dropout else None)
    kw["implementation"] = impl
    want = dot_product_attention(q, k, v, mask=explicit, **kw)
    got = dot_product_attention(q, k, v, mask=pad, causal=True, **kw)
    float32.assert_close(got, want)
    fused = dot_product_attention(q, k, v, mask=explicit, implementation="xla")
    float32.assert_close(got, fused)


def test_one_hot_lookup_gradient_equals_the_scatter_add():
    table = jax.random.normal(jax.random.key(0), (11, 4))
    ids = jnp.array([[0, 3, 3], [10, 0, 7]])
    g = jax.random.normal(jax.random.key(1), (2, 3, 4))
    grad = lambda take: jax.grad(lambda t: jnp.sum(take(t, ids) * g))(table)
    np.testing.assert_array_equal(backend.take_rows(table, ids), jnp.take(table, ids, axis=0))
    np.testing.assert_allclose(
        grad(backend.take_rows), grad(lambda t, i: jnp.take(t, i, axis=0)), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("n_in", [1, 2])
def test_contract_is_the_same_on_one_device_and_under_a_mesh(n_in):
    x = jax.random.normal(jax.random.key(0), (4, 3, 2, 5))
    kernel = jax.random.normal(jax.random.key(1), (2, 5, 6)[2 - n_in :])
    want = np.tensordot(np.asarray(x), np.asarray(kernel), axes=n_in)
    f = jax.jit(lambda x, k: backend.contract(x, k, n_in))
    np.testing.assert_allclose(f(x, kernel), want, rtol=1e-5, atol=1e-5)
    with jax.set_mesh(jax.make_mesh((2,), ("data",))):
        assert not backend.one_device()
        np.testing.assert_allclose(f(x, kernel), want, rtol=1e-5, atol=1e-5)


def test_cpu_backend_expected_agrees_with_the_backend_jax_started():
    assert backend.cpu_backend_expected() == (jax.default_backend() == "cpu")
