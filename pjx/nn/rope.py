"""Rotary position embeddings (Su et al. 2021, "RoFormer") as Llama, Qwen, Mistral and
ModernBERT apply them: the head dim split in two halves that rotate together (Hugging
Face's `rotate_half` layout, not the interleaved pairs of the paper), inverse frequencies
theta^(-2i / K), and the frequency scalings of `SCALINGS`.

    inv_freq = inverse_frequencies(head_dim, theta=10000.0)   # [K/2], float32 numpy
    cos, sin = rotation(positions_BxL, inv_freq)              # [B, L, K] each
    q = rotate(q_BxLxHxK, cos, sin)

The tables are computed once per forward pass in float32 (by the model, from its position
ids: packed documents restart at 0) and shared by every layer.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

# rope_type -> what it scales. Others that transformers knows (dynamic, yarn, longrope, ...)
# change the tables with the sequence length or the attention's scale: refused by name.
SCALINGS = {
    "default": "none",
    "linear": "positions divided by `factor` (Chen et al. 2023, position interpolation)",
    "llama3": "Llama 3.1's per-frequency interpolation (factor, low / high_freq_factor, "
    "original_max_position_embeddings)",
}


def inverse_frequencies(
    head_dim: int,
    theta: float = 10000.0,
    scaling: str = "default",
    factor: float = 1.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    original_max_position: int = 8192,
) -> np.ndarray:
    """theta^(-2i / head_dim) for i < head_dim / 2, with `scaling` applied (float32)."""
    if scaling not in SCALINGS:
        raise ValueError(f"RoPE scaling {scaling!r}: pjx implements {sorted(SCALINGS)}")
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling == "linear":
        inv = inv / factor
    elif scaling == "llama3":
        # transformers' _compute_llama3_parameters: long wavelengths divided by `factor`,
        # short ones kept, a smooth blend in between.
        low_wavelen = original_max_position / low_freq_factor
        high_wavelen = original_max_position / high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (original_max_position / wavelen - low_freq_factor) / (
            high_freq_factor - low_freq_factor
        )
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(medium, blended, scaled)
    return inv.astype(np.float32)


def rotation(positions_BxL, inv_freq):
    """(cos, sin) [B, L, K] float32 for integer positions [B, L]: angle p * inv_freq[i],
    repeated over both halves of the head dim."""
    angles = positions_BxL.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def rotate(x_BxLxHxK, cos_BxLxK, sin_BxLxK):
    """x * cos + rotate_half(x) * sin, in float32, back in x's dtype."""
    x = x_BxLxHxK.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x * cos_BxLxK[:, :, None, :] + rotated * sin_BxLxK[:, :, None, :]
    return out.astype(x_BxLxHxK.dtype)
