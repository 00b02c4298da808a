"""Attention: one boolean mask for causal / padding / packed documents, the KV-cache
bookkeeping of a decoder stack, dot-product attention under the kernel `backend` picks, and
the multi-head `Attention` module every family uses."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pjx.nn import backend
from pjx.nn import rope as pjx_rope
from pjx.nn.config import HEADS_AXES, LayerConfig, constrain
from pjx.nn.dense import Norm, dense


def make_attention_mask(
    q_len: int,
    kv_len: int,
    *,
    causal: bool = False,
    q_offset=0,
    kv_mask=None,
    q_segment_ids=None,
    kv_segment_ids=None,
    window: int = 0,
):
    """One boolean mask [B|1, 1, T, S] (True = attend) for causal, padding and packed segments.

    `kv_mask` [B,S] is a HF `attention_mask` (1 real, 0 pad) over keys; `*_segment_ids` [B,T]/[B,S]
    (1, 2, ... per packed document, 0 on padding) keep attention inside a document. `q_offset`
    shifts query positions for KV-cache decoding. `window` > 0 (with `causal`): a sliding
    window, each query sees itself and the `window` - 1 keys before it (Mistral; key k is
    seen from query q when q - window < k, as transformers' `sliding_window_overlay`).
    Returns None when nothing is masked.
    """
    mask = None

    def _and(a, b):
        return b if a is None else jnp.logical_and(a, b)

    if causal:
        q_pos = jnp.arange(q_len)[:, None] + q_offset
        k_pos = jnp.arange(kv_len)[None, :]
        seen = k_pos <= q_pos
        if window:
            seen = seen & (k_pos > q_pos - window)
        mask = seen[None, None]
    if kv_mask is not None:
        mask = _and(mask, kv_mask.astype(bool)[:, None, None, :])
    if q_segment_ids is not None:
        kv_seg = q_segment_ids if kv_segment_ids is None else kv_segment_ids
        mask = _and(mask, q_segment_ids[:, None, :, None] == kv_seg[:, None, None, :])
    return mask


def decode_state(module: nn.Module, attention_mask_BxT, batch: int, length: int):
    """KV-cache bookkeeping for a decoder stack; call from the stack's compact method.

    Keeps `cache/index` (tokens written so far) and `cache/key_mask` [B,S] (which cache slots
    hold real tokens, so left-padded prompts work). Returns (offset of this call's first token,
    key mask [B,S]); mask with `make_attention_mask(T, S, causal=True, q_offset=offset,
    kv_mask=key_mask)` so slots past the current position stay hidden. The first (init) call
    sizes the cache from its input: S = that call's length.
    """
    initialized = module.has_variable("cache", "index")
    index = module.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    new_BxT = (
        jnp.ones((batch, length), jnp.int32)
        if attention_mask_BxT is None
        else attention_mask_BxT.astype(jnp.int32)
    )
    key_mask = module.variable("cache", "key_mask", lambda: new_BxT)
    offset = 0
    if initialized:
        offset = index.value
        key_mask.value = jax.lax.dynamic_update_slice(key_mask.value, new_BxT, (0, offset))
        index.value = offset + length
    return offset, key_mask.value


def dot_product_attention(
    q_BxTxHxK,
    k_BxSxHxK,
    v_BxSxHxK,
    *,
    bias=None,
    mask=None,
    causal: bool = False,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng=None,
    implementation: str | None = None,
    training: bool = False,
):
    """softmax(q k^T * scale + bias, masked) v -> [B,T,H,K]; `causal` adds the causal mask
    (queries and keys aligned: T == S), so the fused kernels apply it themselves.

    `implementation` (None: `backend.attention_implementation` picks, told `training`): fused
    `jax.nn.dot_product_attention` (XLA or cuDNN), or the explicit einsum form with
    float32 softmax and the same mask / bias semantics (masked logits set to -0.7 * float32
    max as jax does, so fully masked rows stay finite). Attention dropout, which the fused
    kernels lack, always takes the einsum form.
    """
    K = q_BxTxHxK.shape[-1]
    scale = 1.0 / math.sqrt(K) if scale is None else scale
    dropout = dropout_rate > 0.0 and dropout_rng is not None
    implementation = "einsum" if dropout else implementation
    T, S = q_BxTxHxK.shape[1], k_BxSxHxK.shape[1]
    implementation = backend.attention_implementation(
        implementation, q_BxTxHxK.dtype, training=training, lengths=(T, S)
    )
    H, G = q_BxTxHxK.shape[2], k_BxSxHxK.shape[2]
    if H % G:
        raise ValueError(f"{H} query heads do not share {G} key / value heads evenly")
    if implementation == "einsum":
        # Grouped-query attention (G key / value heads, H / G query heads each, query head h
        # reading kv head h // (H / G) as transformers' repeat_kv does) without repeating
        # the keys and values in memory: the query heads are grouped instead.
        B = q_BxTxHxK.shape[0]
        q_grouped = q_BxTxHxK.reshape(B, T, G, H // G, K)
        logits = jnp.einsum(
            "BTGRK,BSGK->BGRTS", q_grouped, k_BxSxHxK, preferred_element_type=jnp.float32
        ).reshape(B, H, T, S)
        logits = logits * scale
        if bias is not None:
            logits = logits + bias.astype(jnp.float32)
        if causal:
            tril = make_attention_mask(T, S, causal=True)
            mask = tril if mask is None else jnp.logical_and(mask, tril)
        if mask is not None:
            logits = jnp.where(mask, logits, -0.7 * float(np.finfo(np.float32).max))
        # Over rows of a 2-D view: under DP's per-example vmap the logits are rank 5
        # ([B, 1, H, T, S]) and XLA:CPU's YNNPACK fusions run the softmax backward's
        # multiply-reduce over rank 4-5 many times slower than over rank 2-3.
        probs = jax.nn.softmax(logits.reshape(-1, logits.shape[-1]), axis=-1)
        probs = probs.reshape(logits.shape)
        if dropout:
            keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
            probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
        probs = probs.astype(v_BxSxHxK.dtype).reshape(B, G, H // G, T, S)
        ctx = jnp.einsum("BGRTS,BSGK->BTGRK", probs, v_BxSxHxK)
        return ctx.reshape(B, T, H, v_BxSxHxK.shape[-1])
    if implementation == "cudnn":
        # jax's cuDNN kernel takes the mask as a bias of full [T, S] rows (a padding mask
        # [B, 1, 1, S] would fail "Bias must have same seq length as QKV"); batch and head
        # axes may stay 1.
        if bias is not None:
            bias = jnp.broadcast_to(bias, (*bias.shape[:-2], T, S)).astype(q_BxTxHxK.dtype)
        if mask is not None:
            mask = jnp.broadcast_to(mask, (*mask.shape[:-2], T, S))
    return jax.nn.dot_product_attention(
        q_BxTxHxK,
        k_BxSxHxK,
        v_BxSxHxK,
        bias=bias,
        mask=mask,
        is_causal=causal,
        scale=scale,
        implementation=implementation,
    )


class Attention(nn.Module):
    """Multi-head self/cross attention with an optional KV cache.

    `decode_offset` (KV-cache decoding; None otherwise): where this call's tokens go in the
    cache, the count the decoder stack keeps once for all its layers (`decode_state`).

    `names`: three names for separate q/k/v kernels [D,H,K] ('embed','heads','kv'), or one name
    for a fused kernel [D,3,H,K] (GPT-2 `c_attn`). `out_name`: the output projection [H,K,D]
    ('heads','kv','embed'); None returns the context [B,T,H,K] for a caller that projects it
    in its own scope (BERT/ViT `attention/output/dense`).
    """

    config: LayerConfig
    names: tuple[str, ...] = ("query", "key", "value")
    out_name: str | None = None
    causal: bool = False  # decoder self-attention: the kernel applies the causal mask
    # Biases of the q / k / v projections and of the output projection (None: the layer
    # config's `use_bias`); Qwen2 has the first and not the second.
    qkv_bias: bool | None = None
    out_bias: bool | None = None

    @nn.compact
    def __call__(
        self,
        x_BxTxD,
        kv_BxSxD=None,
        *,
        mask=None,
        bias=None,
        deterministic=True,
        decode_offset=None,
        rope=None,
    ):
        """`rope`: (cos, sin) [B, T, K] of the queries' positions (pjx.nn.rope.rotation),
        applied to q and k after their projections (and `qk_norm`), before the cache."""
        cfg = self.config
        H, K, G = cfg.num_heads, cfg.head_dim, cfg.num_kv_heads or cfg.num_heads
        if len(self.names) == 1:
            if kv_BxSxD is not None:
                raise ValueError("a fused qkv projection is self-attention only")
            qkv = dense(cfg, (3, H, K), ("embed", None, "heads", "kv"), name=self.names[0])(x_BxTxD)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            kv_BxSxD = x_BxTxD if kv_BxSxD is None else kv_BxSxD
            axes, kw = ("embed", "heads", "kv"), dict(use_bias=self.qkv_bias)
            q = dense(cfg, (H, K), axes, name=self.names[0], **kw)(x_BxTxD)
            k = dense(cfg, (G, K), axes, name=self.names[1], **kw)(kv_BxSxD)
            v = dense(cfg, (G, K), axes, name=self.names[2], **kw)(kv_BxSxD)
        if cfg.qk_norm:  # Qwen3: RMSNorm over each head's K dims, before the rotation
            q, k = Norm(cfg, name="q_norm")(q), Norm(cfg, name="k_norm")(k)
        if rope is not None:
            q, k = (pjx_rope.rotate(t, *rope) for t in (q, k))
        q, k, v = (constrain(t, HEADS_AXES) for t in (q, k, v))
        if cfg.sow_qkv:  # a no-op unless "intermediates" is mutable
            self.sow("intermediates", "qkv", (q, k, v))
        if decode_offset is not None:
            k, v = self._update_cache(k, v, decode_offset)
        rate = cfg.attention_dropout_rate
        rng = self.make_rng("dropout") if rate > 0.0 and not deterministic else None
        ctx_BxTxHxK = dot_product_attention(
            q,
            k,
            v,
            bias=bias,
            mask=mask,
            # With a KV cache the queries sit at an offset: the caller's mask is causal.
            causal=self.causal and decode_offset is None,
            scale=cfg.attention_scale,
            dropout_rate=rate,
            dropout_rng=rng,
            implementation=cfg.attention_impl,
            training=not deterministic,
        )
        ctx_BxTxHxK = constrain(ctx_BxTxHxK, HEADS_AXES)
        if self.out_name is None:
            return ctx_BxTxHxK
        out = dense(
            cfg, cfg.hidden_size, ("heads", "kv", "embed"), axis=(-2, -1), name=self.out_name,
            use_bias=self.out_bias,
        )  # fmt: skip
        return out(ctx_BxTxHxK)

    def _update_cache(self, k_BxTxHxK, v_BxTxHxK, offset):
        """Write this call's keys/values at `offset`; return the whole cache [B,S,H,K].

        The first (init) call creates the cache with the input's shape (S = max length) and
        attends normally; the model's mask hides cache slots past the current position.
        """
        initialized = self.has_variable("cache", "cached_key")
        ck = self.variable("cache", "cached_key", jnp.zeros, k_BxTxHxK.shape, k_BxTxHxK.dtype)
        cv = self.variable("cache", "cached_value", jnp.zeros, v_BxTxHxK.shape, v_BxTxHxK.dtype)
        if not initialized:
            return k_BxTxHxK, v_BxTxHxK
        start = (0, offset, 0, 0)
        ck.value = jax.lax.dynamic_update_slice(ck.value, k_BxTxHxK.astype(ck.value.dtype), start)
        cv.value = jax.lax.dynamic_update_slice(cv.value, v_BxTxHxK.astype(cv.value.dtype), start)
        return ck.value, cv.value
