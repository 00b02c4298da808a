"""What a shared layer may know (`LayerConfig`), and the logical axis names it puts on
activations and parameters (pjx.sharding.RULES maps them to mesh axes)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from pjx.nn import backend

# "gelu" is the exact erf GELU (HF BERT/ViT); "gelu_new" the tanh approximation (GPT-2, T5.1.1).
ACTIVATIONS = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
}
# Gated variants (Shazeer 2020, "GLU Variants Improve Transformer"; T5.1.1 "gated-gelu"):
# name -> the activation of the gate.
# "gated-silu" is SwiGLU (Llama, Qwen, Mistral).
GATED = {"gated-gelu": "gelu_new", "gated-relu": "relu", "gated-silu": "silu"}
ACTIVATION_LEGEND = (*ACTIVATIONS, *GATED)

# Activation constraints: between blocks the batch is split over data / fsdp and the width
# replicated; inside a block, Megatron-style tensor parallelism keeps the heads and the MLP
# hidden units split over `tensor`.
BLOCK_AXES = ("activation_batch", "activation_length", "activation_embed")
HEADS_AXES = ("activation_batch", "activation_length", "activation_heads", None)
MLP_AXES = ("activation_batch", "activation_length", "activation_mlp")


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
    attention_impl: str | None = None  # None (pick) | one of backend.ATTENTION_IMPLEMENTATIONS
    # Attention sows its (q, k, v) into the "intermediates" collection, kept only where the
    # caller's apply makes it mutable (knowledge distillation reads the last layer's).
    sow_qkv: bool = False
    num_kv_heads: int = 0  # grouped-query attention's key / value heads; 0: num_heads
    qk_norm: bool = False  # RMSNorm of each query and key head (Qwen3)
    norm_bias: bool = True  # LayerNorm's bias (ModernBERT has none)

    def __post_init__(self):
        if self.activation not in ACTIVATION_LEGEND:
            raise ValueError(f"activation {self.activation!r} not in {ACTIVATION_LEGEND}")
        if self.norm_type not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm_type {self.norm_type!r}")
        if self.norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position {self.norm_position!r}")
        backend.check_attention_impl(self.attention_impl)

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
