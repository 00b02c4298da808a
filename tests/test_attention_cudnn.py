"""cuDNN flash attention (the default on an NVIDIA GPU in bfloat16) against the einsum form:
padding masks, causal + padding, an additive bias, and their gradients. Runs only where a
GPU is (CI has none): `JAX_PLATFORMS=cuda python -m pytest tests/test_attention_cudnn.py`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pjx.nn.attention import dot_product_attention, make_attention_mask

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="cuDNN attention runs on NVIDIA GPUs"
)

B, L, H, K = 3, 64, 4, 32


def _inputs():
    q, k, v = (
        jax.random.normal(key, (B, L, H, K), jnp.bfloat16)
        for key in jax.random.split(jax.random.key(0), 3)
    )
    lengths = np.array([L, 40, 9])  # right padding, as pjx's batches carry it
    kv_mask = jnp.asarray(np.arange(L)[None, :] < lengths[:, None], jnp.int32)
    return q, k, v, kv_mask


def _loss(implementation, *, causal, with_bias):
    q, k, v, kv_mask = _inputs()
    mask = make_attention_mask(L, L, kv_mask=kv_mask)  # [B, 1, 1, L]: broadcast rows
    bias = None
    if with_bias:  # T5's relative-position bias: [1, H, T, S]
        bias = jax.random.normal(jax.random.key(1), (1, H, L, L), jnp.float32)

    def f(q, k, v):
        out = dot_product_attention(
            q, k, v, mask=mask, bias=bias, causal=causal, implementation=implementation
        )
        return jnp.sum(jnp.sin(out.astype(jnp.float32))), out

    (_, out), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


@pytest.mark.parametrize("causal,with_bias", [(False, False), (True, False), (False, True)])
def test_cudnn_attention_equals_the_einsum_form(causal, with_bias):
    out, grads = _loss("cudnn", causal=causal, with_bias=with_bias)
    ref_out, ref_grads = _loss("einsum", causal=causal, with_bias=with_bias)
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(ref_out, np.float32), atol=2e-2, rtol=2e-2
    )
    for g, ref in zip(grads, ref_grads, strict=True):
        g, ref = np.asarray(g, np.float32), np.asarray(ref, np.float32)
        assert np.abs(g - ref).max() <= 3e-2 * np.abs(ref).max() + 1e-2


def test_odd_lengths_train_on_xla_by_default():
    """ViT-B/16's 197 positions: the automatic pick must not hand jax's cuDNN kernel an odd
    length to differentiate (it raises "Unsupported sequence length")."""
    q = jax.random.normal(jax.random.key(0), (2, 197, H, K), jnp.bfloat16)

    def f(q):
        return jnp.sum(dot_product_attention(q, q, q, training=True).astype(jnp.float32))

    assert np.isfinite(float(jax.grad(f)(q).astype(jnp.float32).sum()))
    with pytest.raises(ValueError, match="even sequence lengths"):
        dot_product_attention(q, q, q, implementation="cudnn", training=True)
