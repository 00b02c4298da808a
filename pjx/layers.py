"""Shared Transformer building blocks: attention, MLP, norms, masks, relative position bias.

Layers see only `LayerConfig`, never a run config. Parameters are float32 and carry logical
axis names (docs/architecture.md); compute runs in `LayerConfig.dtype`; softmax and norms run
in float32. Shape letters in names (`q_BxTxHxK`) and einsum strings: the legend in
docs/architecture.md.

Modules that hold projections take their submodule names as fields so each model family can
mirror Hugging Face parameter paths (see the tree comment at the top of each family file).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pjx import remat as remat_lib

ACTIVATION_LEGEND = ("gelu", "gelu_new", "relu", "gated-gelu", "gated-relu")

# "gelu" is the exact erf GELU (HF BERT/ViT); "gelu_new" the tanh approximation (GPT-2, T5.1.1).
_ACTIVATIONS = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "relu": nn.relu,
}
# Gated variants (Shazeer 2020, "GLU Variants Improve Transformer"; T5.1.1 "gated-gelu").
_GATED = {"gated-gelu": "gelu_new", "gated-relu": "relu"}

# Activation constraints (pjx.sharding.RULES maps them to mesh axes): between blocks the
# batch is split over data / fsdp and the width replicated; inside a block, Megatron-style
# tensor parallelism keeps the heads and the MLP hidden units split over `tensor`.
BLOCK_AXES = ("activation_batch", "activation_length", "activation_embed")
HEADS_AXES = ("activation_batch", "activation_length", "activation_heads", None)
MLP_AXES = ("activation_batch", "activation_length", "activation_mlp")
# The attention kernels (`attention_implementation`): the explicit einsum form, XLA's fused
# `jax.nn.dot_product_attention`, cuDNN's flash attention.
ATTENTION_IMPLEMENTATIONS = ("einsum", "xla", "cudnn")


def check_attention_impl(requested: str | None) -> None:
    """Raises ValueError unless `requested` is None or one of ATTENTION_IMPLEMENTATIONS."""
    if requested not in (None, *ATTENTION_IMPLEMENTATIONS):
        raise ValueError(
            f"model.attention_impl={requested!r}: pick one of {ATTENTION_IMPLEMENTATIONS} (or "
            "leave it unset: pjx picks the fastest here)"
        )


@dataclasses.dataclass(frozen=True)
class LayerConfig:
    """Everything a shared layer may know. Family configs build one with `layer_config()`."""

    hidden_size: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    activation: str = "gelu"  # one of ACTIVATION_LEGEND
    norm_type: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_position: str = "post"  # "post" (BERT) | "pre" (GPT-2, T5, ViT)
    norm_eps: float = 1e-12
    use_bias: bool = True
    attention_scale: float | None = None  # None: 1/sqrt(head_dim); T5 uses 1.0
    init_std: float | None = 0.02  # None: fan-in scaled (T5)
    dtype: str = "float32"  # compute dtype
    attention_impl: str | None = None  # None (pick) | one of ATTENTION_IMPLEMENTATIONS

    def __post_init__(self):
        if self.activation not in ACTIVATION_LEGEND:
            raise ValueError(f"activation {self.activation!r} not in {ACTIVATION_LEGEND}")
        if self.norm_type not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm_type {self.norm_type!r}")
        if self.norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position {self.norm_position!r}")
        check_attention_impl(self.attention_impl)

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


# Fields every family Config shares with LayerConfig, by the same name.
_SHARED_FIELDS = (
    "hidden_size",
    "num_heads",
    "mlp_dim",
    "dropout_rate",
    "attention_dropout_rate",
    "activation",
    "init_std",
    "dtype",
    "attention_impl",
)


def layer_config_of(family_config, **fixed) -> LayerConfig:
    """A family Config's LayerConfig: the shared fields, `layer_norm_eps` as `norm_eps`, the
    head dim (`head_dim` if the family has one, else hidden / heads), and what the family
    fixes (`fixed`: norm type and position, biases, attention scale)."""
    c = family_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_heads
    shared = {f: getattr(c, f) for f in _SHARED_FIELDS}
    return LayerConfig(**shared, head_dim=head_dim, norm_eps=c.layer_norm_eps, **fixed)


def constrain(x_BxLxD, axes=BLOCK_AXES):
    """Logical sharding constraint (BLOCK_AXES at a block boundary); a no-op outside
    `pjx.sharding.context`, where no mesh is set."""
    return nn.with_logical_constraint(x_BxLxD, axes)


def normal_init(std: float | None, axes: Sequence[str | None]):
    """Normal(std) initialiser with logical axes; std=None scales by fan-in (lecun normal)."""
    init = nn.initializers.lecun_normal() if std is None else nn.initializers.normal(std)
    return nn.with_logical_partitioning(init, tuple(axes))


def _one_device() -> bool:
    """Tracing for a single device: no mesh in scope (jax.set_mesh), or a mesh of one."""
    mesh = jax.sharding.get_abstract_mesh()
    return mesh.empty or mesh.size == 1


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
        if _one_device():
            # One [tokens, in] x [in, out] matmul: its weight gradient is then a plain GEMM,
            # which XLA:CPU runs faster than a 3-D dot_general's (BENCHMARKS.md). Not
            # under a mesh, where the reshapes would merge sharded dims (heads, batch).
            lead, feats = x.shape[: x.ndim - n_in], tuple(self.features)
            x2 = x.reshape(math.prod(lead), math.prod(shape[:n_in])).astype(dtype)
            w2 = kernel.reshape(math.prod(shape[:n_in]), math.prod(feats)).astype(dtype)
            y = (x2 @ w2).reshape(*lead, *feats)
        else:
            contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
            y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype), (contract, ((), ())))
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


# Tables whose gradient is a one-hot matmul rather than a scatter-add: at most this many
# (ids x rows). XLA:CPU runs scatters serially (BENCHMARKS.md); the matmul is tiny here
# and exact up to summation order.
ONE_HOT_GRAD_MAX = 1 << 22


@jax.custom_vjp
def _take_rows(table_NxD, ids):
    return jnp.take(table_NxD, ids, axis=0)


def _take_rows_fwd(table_NxD, ids):
    return jnp.take(table_NxD, ids, axis=0), (ids, table_NxD)  # the table: for its shape


def _take_rows_bwd(res, g):
    ids, table_NxD = res
    rows, dtype = table_NxD.shape[0], table_NxD.dtype
    one_hot = jax.nn.one_hot(ids, rows, dtype=g.dtype)
    grad_NxD = jnp.einsum("...n,...d->nd", one_hot, g, preferred_element_type=jnp.float32)
    return grad_NxD.astype(dtype), None


_take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


def lookup(table_NxD, ids, row_axis: str, dtype):
    """Rows of a table at `ids`. The table's width is gathered first (FSDP shards it over
    `embed`), so the rows can be laid out batch-major like every other activation instead of
    inheriting the table's layout. Small tables take their gradient as a one-hot matmul
    (`ONE_HOT_GRAD_MAX`)."""
    table_NxD = nn.with_logical_constraint(table_NxD, (row_axis, None))
    if math.prod(ids.shape) * table_NxD.shape[0] <= ONE_HOT_GRAD_MAX:
        return _take_rows(table_NxD, ids).astype(dtype)
    return jnp.take(table_NxD, ids, axis=0).astype(dtype)


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
        x32 = x.astype(jnp.float32)
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (D,)
        )
        if cfg.norm_type == "rmsnorm":
            # Zhang & Sennrich 2019; T5 LayerNorm has no mean subtraction and no bias.
            y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + cfg.norm_eps)
            return (y * scale).astype(cfg.compute_dtype)
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (D,)
        )
        mean = jnp.mean(x32, -1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps)
        return (y * scale + bias).astype(cfg.compute_dtype)


# --------------------------------------------------------------------------- masks


def make_attention_mask(
    q_len: int,
    kv_len: int,
    *,
    causal: bool = False,
    q_offset=0,
    kv_mask=None,
    q_segment_ids=None,
    kv_segment_ids=None,
):
    """One boolean mask [B|1, 1, T, S] (True = attend) for causal, padding and packed segments.

    `kv_mask` [B,S] is a HF `attention_mask` (1 real, 0 pad) over keys; `*_segment_ids` [B,T]/[B,S]
    (1, 2, ... per packed document, 0 on padding) keep attention inside a document. `q_offset`
    shifts query positions for KV-cache decoding. Returns None when nothing is masked.
    """
    mask = None

    def _and(a, b):
        return b if a is None else jnp.logical_and(a, b)

    if causal:
        q_pos = jnp.arange(q_len)[:, None] + q_offset
        k_pos = jnp.arange(kv_len)[None, :]
        mask = (k_pos <= q_pos)[None, None]
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


# --------------------------------------------------------------------------- attention


CUDNN_DTYPES = ("bfloat16", "float16")


def attention_implementation(
    requested: str | None, dtype, backend: str | None = None, *, training: bool = False
) -> str:
    """The attention kernel to run: `requested` ("einsum" | "xla" | "cudnn") when it can
    run, else an error saying why. None picks cuDNN's flash attention where it can run (an
    NVIDIA GPU, bfloat16 / float16 compute); on a CPU the einsum form when `training` (the
    call is differentiated) and XLA's fused attention otherwise; XLA's fused attention
    elsewhere.

    Why the CPU splits: `jax.nn.dot_product_attention` computes in a grouped layout with a
    unit group axis ([1, B, N, T, S] for plain multi-head attention), and XLA:CPU's
    YNNPACK fusions run the softmax backward's multiply-reduce over that rank-5 layout far
    slower than over the same data in rank 4. The einsum form keeps rank 4, so its forward
    + backward is faster, while the fused kernel's forward alone is faster (so inference
    keeps that). Figures in BENCHMARKS.md.
    """
    backend = backend or jax.default_backend()
    check_attention_impl(requested)
    problem = None
    if backend != "gpu":
        problem = f"cuDNN attention runs on NVIDIA GPUs, and this backend is {backend!r}"
    elif jnp.dtype(dtype).name not in CUDNN_DTYPES:
        problem = (
            f"cuDNN flash attention takes {' / '.join(CUDNN_DTYPES)} inputs, not "
            f"{jnp.dtype(dtype).name}: set model.dtype=bfloat16"
        )
    if requested == "cudnn" and problem:
        raise ValueError(
            f"model.attention_impl='cudnn': {problem}; or use attention_impl='xla' (or leave "
            "it unset: pjx picks cuDNN where it can run)"
        )
    if requested is not None:
        return requested
    if training and backend == "cpu":  # cuDNN never runs there
        return "einsum"
    return "xla" if problem else "cudnn"


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

    `implementation` (`attention_implementation`, which `training` informs when it is None):
    fused `jax.nn.dot_product_attention` (XLA or cuDNN), or the explicit einsum form with
    float32 softmax and the same mask / bias semantics (masked logits set to -0.7 * float32
    max as jax does, so fully masked rows stay finite). Attention dropout, which the fused
    kernels lack, always takes the einsum form.
    """
    K = q_BxTxHxK.shape[-1]
    scale = 1.0 / math.sqrt(K) if scale is None else scale
    dropout = dropout_rate > 0.0 and dropout_rng is not None
    implementation = "einsum" if dropout else implementation
    implementation = attention_implementation(implementation, q_BxTxHxK.dtype, training=training)
    if implementation == "einsum":
        logits = jnp.einsum(
            "BTHK,BSHK->BHTS", q_BxTxHxK, k_BxSxHxK, preferred_element_type=jnp.float32
        )
        logits = logits * scale
        if bias is not None:
            logits = logits + bias.astype(jnp.float32)
        if causal:
            T, S = q_BxTxHxK.shape[1], k_BxSxHxK.shape[1]
            tril = make_attention_mask(T, S, causal=True)
            mask = tril if mask is None else jnp.logical_and(mask, tril)
        if mask is not None:
            logits = jnp.where(mask, logits, -0.7 * float(np.finfo(np.float32).max))
        probs = jax.nn.softmax(logits, axis=-1)
        if dropout:
            keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
            probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
        return jnp.einsum("BHTS,BSHK->BTHK", probs.astype(v_BxSxHxK.dtype), v_BxSxHxK)
    if bias is not None and implementation == "cudnn":
        bias = bias.astype(q_BxTxHxK.dtype)
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
    ):
        cfg = self.config
        H, K = cfg.num_heads, cfg.head_dim
        if len(self.names) == 1:
            if kv_BxSxD is not None:
                raise ValueError("a fused qkv projection is self-attention only")
            qkv = dense(cfg, (3, H, K), ("embed", None, "heads", "kv"), name=self.names[0])(x_BxTxD)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            kv_BxSxD = x_BxTxD if kv_BxSxD is None else kv_BxSxD
            axes = ("embed", "heads", "kv")
            q = dense(cfg, (H, K), axes, name=self.names[0])(x_BxTxD)
            k = dense(cfg, (H, K), axes, name=self.names[1])(kv_BxSxD)
            v = dense(cfg, (H, K), axes, name=self.names[2])(kv_BxSxD)
        q, k, v = (constrain(t, HEADS_AXES) for t in (q, k, v))
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
            cfg, cfg.hidden_size, ("heads", "kv", "embed"), axis=(-2, -1), name=self.out_name
        )
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


# --------------------------------------------------------------------------- MLP


def mlp_in(cfg: LayerConfig, x_BxLxD, names: Sequence[str]):
    """x -> act(x W_in) [B,L,F] (gated: act(x W_0) * (x W_1)); projections become children of the
    calling module (call inside a compact method)."""
    axes = ("embed", "mlp")
    if cfg.activation in _GATED:
        if len(names) != 2:
            raise ValueError(f"gated activation {cfg.activation} needs two names, got {names}")
        act = _ACTIVATIONS[_GATED[cfg.activation]]
        gate = dense(cfg, cfg.mlp_dim, axes, name=names[0])(x_BxLxD)
        h_BxLxF = act(gate) * dense(cfg, cfg.mlp_dim, axes, name=names[1])(x_BxLxD)
    else:
        h_BxLxF = _ACTIVATIONS[cfg.activation](
            dense(cfg, cfg.mlp_dim, axes, name=names[0])(x_BxLxD)
        )
    return constrain(h_BxLxF, MLP_AXES)


class MLP(nn.Module):
    """Feed-forward D -> F -> D in one scope (GPT-2 `mlp/c_fc,c_proj`; T5 `wi_0,wi_1,wo`)."""

    config: LayerConfig
    in_names: tuple[str, ...] = ("wi",)
    out_name: str = "wo"
    hidden_dropout: bool = False  # T5 drops out the hidden activation; GPT-2 does not

    @nn.compact
    def __call__(self, x_BxLxD, *, deterministic=True):
        cfg = self.config
        h_BxLxF = mlp_in(cfg, x_BxLxD, self.in_names)
        if self.hidden_dropout:
            h_BxLxF = nn.Dropout(cfg.dropout_rate)(h_BxLxF, deterministic=deterministic)
        return dense(cfg, cfg.hidden_size, ("mlp", "embed"), name=self.out_name)(h_BxLxF)


class Intermediate(nn.Module):
    """HF `intermediate`: `dense` D -> F plus activation (BERT, ViT)."""

    config: LayerConfig

    @nn.compact
    def __call__(self, x_BxLxD):
        names = ("dense", "dense_gate") if self.config.activation in _GATED else ("dense",)
        return mlp_in(self.config, x_BxLxD, names)


class Output(nn.Module):
    """HF `output`: `dense` back to D, dropout, residual, and `LayerNorm` when post-norm.

    Contracts the last `contract` dims: 1 for [B,L,F], 2 for an attention context [B,L,H,K].
    """

    config: LayerConfig
    contract: int = 1

    @nn.compact
    def __call__(self, h, residual_BxLxD, *, deterministic=True):
        cfg = self.config
        if self.contract == 2:
            proj = dense(
                cfg, cfg.hidden_size, ("heads", "kv", "embed"), axis=(-2, -1), name="dense"
            )
        else:
            proj = dense(cfg, cfg.hidden_size, ("mlp", "embed"), name="dense")
        y = nn.Dropout(cfg.dropout_rate)(proj(h), deterministic=deterministic)
        y = y + residual_BxLxD
        if cfg.norm_position == "post":
            y = Norm(cfg, name="LayerNorm")(y)
        return y


class EncoderAttention(nn.Module):
    """HF `attention`: `{attention_name}/query,key,value`, `output/dense` [, `output/LayerNorm`]."""

    config: LayerConfig
    attention_name: str = "self"

    @nn.compact
    def __call__(self, h_BxLxD, residual_BxLxD, *, mask=None, bias=None, deterministic=True):
        ctx = Attention(self.config, name=self.attention_name)(
            h_BxLxD, mask=mask, bias=bias, deterministic=deterministic
        )
        return Output(self.config, contract=2, name="output")(
            ctx, residual_BxLxD, deterministic=deterministic
        )


class EncoderLayer(nn.Module):
    """HF-style encoder layer shared by BERT (post-norm) and ViT (pre-norm).

    post (Vaswani et al. 2017): x = LN(x + Attn(x)); x = LN(x + FFN(x)).
    pre (Xiong et al. 2020; ViT): x = x + Attn(LN(x)); x = x + FFN(LN(x)).
    Paths: attention/{attention_name}/{query,key,value}, attention/output/dense[, LayerNorm],
    intermediate/dense, output/dense[, LayerNorm]; pre-norm adds layernorm_before/_after.
    """

    config: LayerConfig
    attention_name: str = "self"

    @nn.compact
    def __call__(self, x_BxLxD, mask=None, bias=None, deterministic=True):
        cfg = self.config
        pre = cfg.norm_position == "pre"
        h = Norm(cfg, name="layernorm_before")(x_BxLxD) if pre else x_BxLxD
        x_BxLxD = EncoderAttention(cfg, self.attention_name, name="attention")(
            h, x_BxLxD, mask=mask, bias=bias, deterministic=deterministic
        )
        h = Norm(cfg, name="layernorm_after")(x_BxLxD) if pre else x_BxLxD
        h_BxLxF = Intermediate(cfg, name="intermediate")(h)
        x_BxLxD = Output(cfg, name="output")(h_BxLxF, x_BxLxD, deterministic=deterministic)
        return constrain(x_BxLxD)


# --------------------------------------------------------------------------- positions


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


# --------------------------------------------------------------------------- layer stacks

# `model.remat`: what a block keeps for the backward pass (jax.checkpoint policies).
REMAT_POLICIES = {
    "none": None,  # keep everything: no recomputation
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only the block's input
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep every matmul output
    # keep the weight matmuls, recompute the attention scores (batch-dim dots)
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat(name: str) -> None:
    if name not in REMAT_POLICIES:
        raise ValueError(f"model.remat={name!r}: choose one of {sorted(REMAT_POLICIES)}")


@functools.cache
def _scan_cell(block: type[nn.Module]) -> type[nn.Module]:
    """`block` as an `nn.scan` body: returns (x, None) instead of x."""

    class Cell(block):
        def __call__(self, x, *args):
            return super().__call__(x, *args), None

    Cell.__name__ = Cell.__qualname__ = block.__name__
    return Cell


def repeat(
    block: type[nn.Module],
    n: int,
    x,
    *args,
    name: str,
    scan: bool = False,
    remat: str = "none",
    **block_fields,
):
    """x through `n` blocks `block(**block_fields)(x, *args)` in turn; call inside a
    compact method. `args` are the same for every block and end with `deterministic`.

    Unscanned, the blocks are children `{name}_0 .. {name}_{n-1}` (Hugging Face's layout);
    scanned (`scan=True`), one `nn.scan` child `{name}` whose parameters (and KV cache) have
    a leading layer axis: one block is traced and compiled instead of n. `remat` applies a
    `jax.checkpoint` policy per block (REMAT_POLICIES; unscanned through pjx.remat, which
    keeps XLA from recomputing a block before the backward pass reaches it).
    """
    check_remat(remat)
    static = (len(args) + 1,)  # deterministic (self is 0, x is 1): a Python bool
    cls = _scan_cell(block) if scan else block
    if remat != "none" and scan:  # the loop orders each recomputation after its cotangent
        cls = nn.remat(cls, policy=REMAT_POLICIES[remat], static_argnums=static, prevent_cse=False)
    elif remat != "none":
        cls = remat_lib.remat(cls, policy=REMAT_POLICIES[remat], static_argnums=static)
    if not scan:
        for i in range(n):
            x = cls(**block_fields, name=f"{name}_{i}")(x, *args)
        return x
    stacked = nn.scan(
        cls,
        variable_axes={"params": 0, "cache": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * len(args),
        length=n,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, _ = stacked(**block_fields, name=name)(x, *args)
    return x
