"""Tables looked up by index: token embeddings (with tied logits), learned absolute
positions, and T5's relative position bias."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from pjx.nn import backend
from pjx.nn.config import normal_init
from pjx.nn.dense import tied_logits


def lookup(table_NxD, ids, row_axis: str, dtype):
    """Rows of a table at `ids`. The table's width is gathered first (FSDP shards it over
    `embed`), so the rows can be laid out batch-major like every other activation instead of
    inheriting the table's layout. How the gradient is taken: `backend.take_rows`."""
    table_NxD = nn.with_logical_constraint(table_NxD, (row_axis, None))
    return backend.take_rows(table_NxD, ids).astype(dtype)


class Embed(nn.Module):
    """Embedding table [N,D]; `attend` gives float32 logits against it (tied heads)."""

    num_embeddings: int
    features: int
    axes: tuple[str, str] = ("vocab", "embed")
    init_std: float = 0.02
    dtype: str = "float32"

    def setup(self):
        self.embedding = self.param(
            "embedding",
            normal_init(self.init_std, self.axes),
            (self.num_embeddings, self.features),
            jnp.float32,
        )

    def __call__(self, ids):
        return lookup(self.embedding, ids, self.axes[0], self.dtype)

    def attend(self, x_BxLxD):
        return tied_logits(x_BxLxD, self.embedding)


class LearnedPositions(nn.Module):
    """Learned absolute position embeddings [P,D] looked up at `position_ids` [B,L]."""

    num_positions: int
    features: int
    init_std: float = 0.02
    dtype: str = "float32"

    @nn.compact
    def __call__(self, position_ids_BxL):
        table = self.param(
            "embedding",
            normal_init(self.init_std, ("position", "embed")),
            (self.num_positions, self.features),
            jnp.float32,
        )
        return lookup(table, position_ids_BxL, "position", self.dtype)


def relative_position_bucket(
    relative_position, *, bidirectional: bool = True, num_buckets: int = 32, max_distance: int = 128
):
    """T5 relative position buckets (Raffel et al. 2020, sec. 2.1; HF `_relative_position_bucket`).

    `relative_position` = key position - query position. Half the buckets are exact offsets,
    the rest grow logarithmically up to `max_distance`; bidirectional splits buckets by sign.
    """
    relative_position = jnp.asarray(relative_position)
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
        n = jnp.abs(relative_position)
    else:
        n = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # maximum(n, 1) only guards log(0); those entries take the is_small branch.
    large = max_exact + (
        jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).astype(relative_position.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """T5 relative attention bias: bucket table [buckets, H] -> float32 bias [1,H,T,S]."""

    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = True
    init_std: float = 0.02

    @nn.compact
    def __call__(self, q_len: int, kv_len: int, q_offset=0):
        table = self.param(
            "embedding",
            normal_init(self.init_std, ("relpos_buckets", "heads")),
            (self.num_buckets, self.num_heads),
            jnp.float32,
        )
        q_pos = jnp.arange(q_len)[:, None] + q_offset
        k_pos = jnp.arange(kv_len)[None, :]
        buckets_TxS = relative_position_bucket(
            k_pos - q_pos,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        bias_TxSxH = jnp.take(table, buckets_TxS, axis=0)
        return jnp.transpose(bias_TxSxH, (2, 0, 1))[None]
