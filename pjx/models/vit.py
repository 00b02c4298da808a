"""Vision Transformer (Dosovitskiy et al. 2021): patch embedding, pre-LN encoder, classification
and SimCLR-style projection heads (Chen et al. 2020).

Parameter tree (mirrors Hugging Face `ViTForImageClassification`; pixels are NHWC so the conv
kernel is [p,p,C,D] where HF has [D,C,p,p]; q/k/v [D,H,K], attention output [H,K,D]):

  vit/embeddings/cls_token                               [1,1,D]   (pooling == "cls")
  vit/embeddings/position_embeddings                     [1,N(+1),D]
  vit/embeddings/patch_embeddings/projection/{kernel,bias}
  vit/encoder/layer_{i}/layernorm_before/{scale,bias}
  vit/encoder/layer_{i}/attention/attention/{query,key,value}/{kernel,bias}
  vit/encoder/layer_{i}/attention/output/dense/{kernel,bias}
  vit/encoder/layer_{i}/layernorm_after/{scale,bias}
  vit/encoder/layer_{i}/intermediate/dense/{kernel,bias}
  vit/encoder/layer_{i}/output/dense/{kernel,bias}
  vit/layernorm/{scale,bias}
  vit/pooler/dense/{kernel,bias}                          (use_pooler)
  classifier/{kernel,bias}                                (num_labels > 0)
  projection_head/dense_0, dense_1/{kernel,bias}          (projection_dim > 0; not in HF)
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from pjx.nn.blocks import EncoderLayer
from pjx.nn.config import LayerConfig, constrain, layer_config_of, normal_init
from pjx.nn.dense import Norm, dense
from pjx.nn.stack import repeat

INPUT = "pixels"  # what a batch feeds the model: token ids or images
# Parameter paths of the layer stack(s): NAME_i unscanned, NAME (stacked) with scan_layers.
STACKS = ("vit/encoder/layer",)


@dataclasses.dataclass(frozen=True)
class Config:
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 192
    num_layers: int = 12
    num_heads: int = 3
    mlp_dim: int = 768
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-12  # HF ViT
    activation: str = "gelu"
    init_std: float = 0.02
    dtype: str = "float32"
    attention_impl: str | None = None
    remat: str = "none"  # a key of pjx.nn.stack.REMAT_POLICIES, per layer
    scan_layers: bool = False  # the layer stack as one nn.scan (stacked parameters)
    pooling: str = "cls"  # "cls" | "gap" (global average pool; no class token)
    use_pooler: bool = False  # HF ViTModel's dense+tanh pooler
    num_labels: int = 0
    projection_dim: int = 0  # > 0 adds the contrastive projection head

    def __post_init__(self):
        if self.pooling not in ("cls", "gap"):
            raise ValueError(f"pooling {self.pooling!r} not in ('cls', 'gap')")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} % patch_size {self.patch_size} != 0")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def max_position_embeddings(self) -> int:
        return self.num_patches + (self.pooling == "cls")

    def layer_config(self) -> LayerConfig:
        return layer_config_of(self, norm_type="layernorm", norm_position="pre")


def _size(hidden, layers, heads):
    return dict(hidden_size=hidden, num_layers=layers, num_heads=heads, mlp_dim=4 * hidden)


PRESETS = {
    "tiny": _size(192, 12, 3),  # ViT-Ti/16
    "S/16": _size(384, 12, 6),
    "B/16": _size(768, 12, 12),
}


def example_inputs(config: Config, batch_size: int, seq_len: int | None = None) -> dict:
    """Images shaped like a real batch, for `Model.init` / `jax.eval_shape` (`seq_len`
    is unused: the patch count follows from the image size)."""
    shape = (batch_size, config.image_size, config.image_size, config.num_channels)
    return {"pixel_values": jnp.zeros(shape, jnp.float32)}


class PatchEmbeddings(nn.Module):
    config: Config

    @nn.compact
    def __call__(self, pixels_BxYxXxC):
        cfg = self.config
        p = cfg.patch_size
        conv = nn.Conv(
            cfg.hidden_size,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=cfg.dtype,
            param_dtype=jnp.float32,
            kernel_init=normal_init(cfg.init_std, (None, None, "patch", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="projection",
        )
        x = conv(pixels_BxYxXxC.astype(cfg.dtype))
        return x.reshape(x.shape[0], -1, cfg.hidden_size)


class Embeddings(nn.Module):
    config: Config

    @nn.compact
    def __call__(self, pixels_BxYxXxC, deterministic):
        cfg = self.config
        D = cfg.hidden_size
        x_BxNxD = PatchEmbeddings(cfg, name="patch_embeddings")(pixels_BxYxXxC)
        if cfg.pooling == "cls":
            cls = self.param(
                "cls_token",
                normal_init(cfg.init_std, (None, None, "embed")),
                (1, 1, D),
                jnp.float32,
            )
            cls_Bx1xD = jnp.broadcast_to(cls.astype(cfg.dtype), (x_BxNxD.shape[0], 1, D))
            x_BxNxD = jnp.concatenate([cls_Bx1xD, x_BxNxD], axis=1)
        pos = self.param(
            "position_embeddings",
            normal_init(cfg.init_std, (None, "position", "embed")),
            (1, cfg.max_position_embeddings, D),
            jnp.float32,
        )
        x_BxNxD = x_BxNxD + pos.astype(cfg.dtype)
        return nn.Dropout(cfg.dropout_rate)(x_BxNxD, deterministic=deterministic)


class ViTModel(nn.Module):
    """HF `ViTModel`: returns (final-LN hidden [B,N,D], pooled [B,D])."""

    config: Config

    @nn.compact
    def __call__(self, pixels_BxYxXxC, deterministic):
        cfg, lcfg = self.config, self.config.layer_config()
        x_BxNxD = constrain(Embeddings(cfg, name="embeddings")(pixels_BxYxXxC, deterministic))
        encoder = Encoder(cfg, name="encoder")
        x_BxNxD = Norm(lcfg, name="layernorm")(encoder(x_BxNxD, deterministic))
        pooled_BxD = x_BxNxD[:, 0] if cfg.pooling == "cls" else jnp.mean(x_BxNxD, axis=1)
        if cfg.use_pooler:
            pooled_BxD = Pooler(cfg, name="pooler")(pooled_BxD)
        return x_BxNxD, pooled_BxD


class Pooler(nn.Module):
    """HF ViTPooler: dense + tanh (on the CLS token, or on the GAP vector)."""

    config: Config

    @nn.compact
    def __call__(self, pooled_BxD):
        lcfg = self.config.layer_config()
        return jnp.tanh(dense(lcfg, lcfg.hidden_size, ("embed", "mlp"), name="dense")(pooled_BxD))


class Encoder(nn.Module):
    config: Config

    @nn.compact
    def __call__(self, x_BxNxD, deterministic):
        cfg = self.config
        return repeat(
            EncoderLayer,
            cfg.num_layers,
            x_BxNxD,
            None,
            None,
            deterministic,
            name="layer",
            scan=cfg.scan_layers,
            remat=cfg.remat,
            config=cfg.layer_config(),
            attention_name="attention",
        )


class ProjectionHead(nn.Module):
    """SimCLR projection g(h) = W2 ReLU(W1 h) (Chen et al. 2020, sec. 2.1); float32 output."""

    config: Config

    @nn.compact
    def __call__(self, h_BxD):
        cfg, lcfg = self.config, self.config.layer_config()
        h = nn.relu(dense(lcfg, cfg.hidden_size, ("embed", "mlp"), name="dense_0")(h_BxD))
        z = dense(lcfg, cfg.projection_dim, ("mlp", "embed"), name="dense_1")(h)
        return z.astype(jnp.float32)


class Model(nn.Module):
    """ViT with optional classification and projection heads; pixels are NHWC float32."""

    config: Config

    @nn.compact
    def __call__(self, pixel_values, *, deterministic=True):
        cfg = self.config
        x_BxNxD, pooled_BxD = ViTModel(cfg, name="vit")(pixel_values, deterministic)
        out = {"last_hidden_state": x_BxNxD, "pooler_output": pooled_BxD}
        if cfg.num_labels > 0:
            head = dense(
                cfg.layer_config(), cfg.num_labels, ("embed", "classes"), name="classifier"
            )
            out["logits"] = head(pooled_BxD).astype(jnp.float32)
        if cfg.projection_dim > 0:
            out["projection"] = ProjectionHead(cfg, name="projection_head")(pooled_BxD)
        return out
