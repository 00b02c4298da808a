"""Projections and norms: `Dense` (every kernel of every family), tied / untied vocabulary
logits, LayerNorm / RMSNorm. LoRA (pjx.lora) and ghost clipping (pjx.ghost_clipping) find
the matmuls they act on by these classes."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pjx.nn import backend
from pjx.nn.config import LayerConfig, normal_init


class Dense(nn.Module):
    """y = x W (+ b) over the last `n_in` dims of x; kernel [*in, *features] in float32.

    The kernel is created at its full rank (DenseGeneral initialises a flat matrix and
    reshapes it), so its logical axis names fit its shape when flax checks boxed
    initialisers under a mesh. Fan-in scaling (`std=None`) counts every contracted dim.
    """

    features: tuple[int, ...]
    n_in: int
    axes: tuple[str | None, ...]  # logical names of every kernel dim
    use_bias: bool = True
    std: float | None = 0.02  # None: fan-in scaled (lecun normal)
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        n_in, dtype = self.n_in, jnp.dtype(self.dtype)
        shape = tuple(x.shape[-n_in:]) + tuple(self.features)
        if self.std is None:
            init = nn.initializers.variance_scaling(
                1.0,
                "fan_in",
                "truncated_normal",
                in_axis=tuple(range(n_in)),
                out_axis=tuple(range(n_in, len(shape))),
            )
        else:
            init = nn.initializers.normal(self.std)
        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes), shape)
        y = backend.contract(x.astype(dtype), kernel.astype(dtype), n_in)
        if self.use_bias:
            bias_axes = tuple(self.axes)[n_in:]
            zeros = nn.with_logical_partitioning(nn.initializers.zeros, bias_axes)
            y = y + self.param("bias", zeros, tuple(self.features)).astype(dtype)
        return y


def dense(
    cfg: LayerConfig,
    features: int | Sequence[int],
    axes: Sequence[str | None],
    *,
    name: str,
    axis: int | Sequence[int] = -1,
    use_bias: bool | None = None,
    std: float | None = -1.0,
) -> Dense:
    """A `Dense` with logical axes; call inside a compact method (it becomes a child there).

    `axis`: the contracted input dims (-1, or (-2, -1) for an attention context [..,H,K]).
    `axes` names every kernel dim (contracted dims first, then `features`); the bias takes the
    names of the feature dims. `std` overrides `cfg.init_std` (None: fan-in scaled).
    """
    feats = (features,) if isinstance(features, int) else tuple(features)
    n_in = 1 if isinstance(axis, int) else len(tuple(axis))
    return Dense(
        feats,
        n_in,
        tuple(axes),
        use_bias=cfg.use_bias if use_bias is None else use_bias,
        std=cfg.init_std if std == -1.0 else std,
        dtype=cfg.dtype,
        name=name,
    )


def tied_logits(x_BxLxD, embedding_VxD):
    """Logits against a vocabulary table [V,D] (a tied embedding, or an untied head's kernel
    transposed), in the compute dtype, accumulated and returned in float32."""
    return jnp.einsum(
        "...D,VD->...V",
        x_BxLxD,
        embedding_VxD.astype(x_BxLxD.dtype),
        preferred_element_type=jnp.float32,
    )


class Logits(nn.Module):
    """Untied output projection [D,V] (no bias) with float32 logits (T5 `lm_head`)."""

    vocab_size: int
    init_std: float = 0.02

    @nn.compact
    def __call__(self, x_BxLxD):
        kernel = self.param(
            "kernel",
            normal_init(self.init_std, ("embed", "vocab")),
            (x_BxLxD.shape[-1], self.vocab_size),
            jnp.float32,
        )
        return tied_logits(x_BxLxD, kernel.T)


class Norm(nn.Module):
    """LayerNorm (scale, bias) or RMSNorm (scale only, T5), computed in float32."""

    config: LayerConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        D = x.shape[-1]
        # Rows of a 2-D view, shaped back at the end: under DP's per-example vmap x is
        # [B, 1, L, D], and XLA:CPU's YNNPACK fusions run the multiply-reduces of the
        # norm's backward and of its per-example parameter gradients over rank 4 many
        # times slower than over rank 2-3 (pjx.nn.backend.attention_implementation).
        shape = x.shape
        x32 = x.astype(jnp.float32).reshape(-1, D)
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (D,)
        )
        if cfg.norm_type == "rmsnorm":
            # Zhang & Sennrich 2019; T5 LayerNorm has no mean subtraction and no bias.
            y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + cfg.norm_eps)
            return (y * scale).astype(cfg.compute_dtype).reshape(shape)
        mean = jnp.mean(x32, -1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps) * scale
        if cfg.norm_bias:
            y = y + self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (D,)
            )
        return y.astype(cfg.compute_dtype).reshape(shape)
