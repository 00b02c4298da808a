"""ModernBERT (Warner et al. 2024, "Smarter, Better, Faster, Longer"): a pre-norm encoder
without biases, rotary positions, GeGLU MLP, and attention that alternates between the
whole sequence (every `global_attn_every_n_layers`-th layer, from the first) and a local
window of `local_attention` tokens (each token sees those within half of it on either
side), each kind with its own RoPE base; the first layer skips its attention norm.

Parameter tree (mirrors Hugging Face `ModernBertForMaskedLM` /
`ModernBertForSequenceClassification`; Wqkv [D, 3, H, K], attention Wo [H, K, D],
Wi [D, 2, F] = the GLU's input and gate halves, in HF's `chunk(2)` order):

  model/embeddings/tok_embeddings/embedding     [V, D]
  model/embeddings/norm/scale                   [D]   (+ bias with norm_bias)
  model/layers_{i}/attn_norm/scale              [D]   (not in layer 0)
  model/layers_{i}/attn/Wqkv/kernel             [D, 3, H, K]  (+ bias with attention_bias)
  model/layers_{i}/attn/Wo/kernel               [H, K, D]
  model/layers_{i}/mlp_norm/scale               [D]
  model/layers_{i}/mlp/Wi/kernel                [D, 2, F]     (+ bias with mlp_bias)
  model/layers_{i}/mlp/Wo/kernel                [F, D]
  model/final_norm/scale                        [D]
  head/dense/kernel, head/norm/scale            [D, D], [D]   (MLM and classifier heads)
  decoder/bias                                  [V]   (mlm_head; weight tied to the embedding)
  classifier/{kernel,bias}                      [D, C]        (num_labels > 0)

Tasks: `mlm` (masked positions gathered before the vocabulary projection) and `classify`
(the head over [CLS] or the mean token state, `pooling`). Padding is masked, never
removed: logits equal Hugging Face's at every real token.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from pjx import remat as remat_lib
from pjx.models.bert import mean_pool
from pjx.nn import rope as rope_lib
from pjx.nn.attention import Attention, make_attention_mask
from pjx.nn.config import ACTIVATIONS, MLP_AXES, LayerConfig, constrain, layer_config_of
from pjx.nn.dense import Norm, dense, tied_logits
from pjx.nn.embed import Embed
from pjx.nn.stack import REMAT_POLICIES, check_remat

INPUT = "tokens"
STACKS = ()  # no scan_layers: layer 0 differs (no attention norm) and the windows alternate
POOLING = ("cls", "mean")


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 50368
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    mlp_dim: int = 192  # intermediate_size: the GLU's width F
    max_position_embeddings: int = 8192
    layer_norm_eps: float = 1e-5  # norm_eps
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    decoder_bias: bool = True
    classifier_bias: bool = False  # head/dense's bias (the classifier's own always has one)
    global_attn_every_n_layers: int = 3
    local_attention: int = 128  # the window's width: half of it on either side
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    activation: str = "gelu"  # hidden_activation, the GLU's (exact erf GELU)
    classifier_activation: str = "gelu"
    pooling: str = "cls"  # classifier_pooling
    dropout_rate: float = 0.0  # embedding / MLP / classifier dropout
    attention_dropout_rate: float = 0.0
    init_std: float = 0.02
    dtype: str = "float32"
    attention_impl: str | None = None
    remat: str = "none"
    scan_layers: bool = False
    mlm_head: bool = True
    num_labels: int = 0

    def __post_init__(self):
        if self.scan_layers:
            raise ValueError(
                "model.scan_layers=true: ModernBERT's layers differ (the first has no "
                "attention norm, windows alternate), so they cannot be one scanned block"
            )
        if self.pooling not in POOLING:
            raise ValueError(f"model.pooling={self.pooling!r}: pick one of {POOLING}")
        for key in ("activation", "classifier_activation"):
            if getattr(self, key) not in ACTIVATIONS:
                raise ValueError(
                    f"model.{key}={getattr(self, key)!r}: one of {sorted(ACTIVATIONS)}"
                )

    def layer_config(self) -> LayerConfig:
        return layer_config_of(
            self, norm_type="layernorm", norm_position="pre", use_bias=self.attention_bias,
            norm_bias=self.norm_bias,
        )  # fmt: skip

    def is_global(self, layer: int) -> bool:
        return layer % self.global_attn_every_n_layers == 0


def _size(layers, hidden, heads, mlp):
    return dict(num_layers=layers, hidden_size=hidden, num_heads=heads, mlp_dim=mlp)


PRESETS = {
    "tiny": _size(3, 128, 4, 192),
    "mini": _size(6, 256, 4, 384),
    "base": _size(22, 768, 12, 1152),  # answerdotai/ModernBERT-base
    "large": _size(28, 1024, 16, 2624),  # answerdotai/ModernBERT-large
}


def example_inputs(config: Config, batch_size: int, seq_len: int | None = None) -> dict:
    """Arrays shaped like a real batch, for `Model.init` / `jax.eval_shape`."""
    L = seq_len or min(config.max_position_embeddings, 128)
    ids_BxL = jnp.zeros((batch_size, L), jnp.int32)
    out = {"input_ids": ids_BxL, "attention_mask": jnp.ones_like(ids_BxL)}
    if config.mlm_head:
        out["masked_positions"] = jnp.zeros((batch_size, max(1, L // 8)), jnp.int32)
    return out


class GLU(nn.Module):
    """Wi [D, 2, F] -> act(input) * gate -> Wo [F, D] (HF `ModernBertMLP`)."""

    config: LayerConfig
    use_bias: bool = False

    @nn.compact
    def __call__(self, x_BxLxD, deterministic):
        cfg = self.config
        F = cfg.mlp_dim
        wi = dense(cfg, (2, F), ("embed", None, "mlp"), name="Wi", use_bias=self.use_bias)
        h = wi(x_BxLxD)
        h_BxLxF = constrain(ACTIVATIONS[cfg.activation](h[..., 0, :]) * h[..., 1, :], MLP_AXES)
        h_BxLxF = nn.Dropout(cfg.dropout_rate)(h_BxLxF, deterministic=deterministic)
        return dense(cfg, cfg.hidden_size, ("mlp", "embed"), name="Wo", use_bias=self.use_bias)(
            h_BxLxF
        )


class Layer(nn.Module):
    """x = x + Wo(attn(norm(x))); x = x + GLU(norm(x)); layer 0 feeds attention x itself."""

    config: LayerConfig
    first: bool = False
    mlp_bias: bool = False

    @nn.compact
    def __call__(self, x_BxLxD, mask, rope, deterministic):
        cfg = self.config
        h = x_BxLxD if self.first else Norm(cfg, name="attn_norm")(x_BxLxD)
        h = Attention(cfg, ("Wqkv",), "Wo", name="attn")(
            h, mask=mask, deterministic=deterministic, rope=rope
        )
        x_BxLxD = x_BxLxD + h
        h = GLU(cfg, self.mlp_bias, name="mlp")(Norm(cfg, name="mlp_norm")(x_BxLxD), deterministic)
        return constrain(x_BxLxD + h)


class Encoder(nn.Module):
    """HF `ModernBertModel`: embedding + norm, the layers, the final norm -> [B, L, D]."""

    config: Config

    @nn.compact
    def __call__(self, input_ids, attention_mask, position_ids, segment_ids, deterministic):
        cfg, lcfg = self.config, self.config.layer_config()
        x_BxLxD, word_VxD = Embeddings(cfg, name="embeddings")(input_ids, deterministic)
        B, L = input_ids.shape
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
        full = make_attention_mask(L, L, kv_mask=attention_mask, q_segment_ids=segment_ids)
        # Local layers: |query - key| <= local_attention // 2 (HF's sliding_window + 1 > |d|).
        q, k = jnp.arange(L)[:, None], jnp.arange(L)[None, :]
        near = (jnp.abs(q - k) <= cfg.local_attention // 2)[None, None]
        local = near if full is None else full & near
        head_dim = lcfg.head_dim
        ropes = {
            g: rope_lib.rotation(position_ids, rope_lib.inverse_frequencies(head_dim, theta))
            for g, theta in ((True, cfg.global_rope_theta), (False, cfg.local_rope_theta))
        }
        check_remat(cfg.remat)
        layer = Layer
        if cfg.remat != "none":
            layer = remat_lib.remat(Layer, policy=REMAT_POLICIES[cfg.remat], static_argnums=(4,))
        for i in range(cfg.num_layers):
            g = cfg.is_global(i)
            x_BxLxD = layer(lcfg, i == 0, cfg.mlp_bias, name=f"layers_{i}")(
                x_BxLxD, full if g else local, ropes[g], deterministic
            )
        return Norm(lcfg, name="final_norm")(x_BxLxD), word_VxD


class Embeddings(nn.Module):
    """HF `ModernBertEmbeddings`: lookup, norm, dropout -> (x [B, L, D], the table [V, D]
    that the MLM decoder ties to)."""

    config: Config

    @nn.compact
    def __call__(self, input_ids, deterministic):
        cfg = self.config
        embed = Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), cfg.init_std,
                      cfg.dtype, name="tok_embeddings")  # fmt: skip
        x_BxLxD = Norm(cfg.layer_config(), name="norm")(embed(input_ids))
        x_BxLxD = nn.Dropout(cfg.dropout_rate)(x_BxLxD, deterministic=deterministic)
        return constrain(x_BxLxD), embed.embedding


class Head(nn.Module):
    """HF `ModernBertPredictionHead`: norm(act(dense(x)))."""

    config: Config

    @nn.compact
    def __call__(self, x):
        cfg, lcfg = self.config, self.config.layer_config()
        h = dense(lcfg, cfg.hidden_size, ("embed", "mlp"), name="dense",
                  use_bias=cfg.classifier_bias)(x)  # fmt: skip
        return Norm(lcfg, name="norm")(ACTIVATIONS[cfg.classifier_activation](h))


class Model(nn.Module):
    """ModernBERT with the heads `config` asks for (see the module docstring)."""

    config: Config

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,  # accepted for the BERT tasks' batches; ModernBERT has none
        position_ids=None,
        segment_ids=None,
        masked_positions=None,
        *,
        deterministic=True,
    ):
        del token_type_ids
        cfg = self.config
        x_BxLxD, word_VxD = Encoder(cfg, name="model")(
            input_ids, attention_mask, position_ids, segment_ids, deterministic
        )
        out = {"last_hidden_state": x_BxLxD}
        # One `head` (dense, act, norm) before either output, as in each HF model.
        head = Head(cfg, name="head")
        if cfg.mlm_head:
            x_BxPxD = x_BxLxD
            if masked_positions is not None:  # only P << L positions pay for [D, V]
                x_BxPxD = jnp.take_along_axis(x_BxLxD, masked_positions[..., None], axis=1)
            logits = tied_logits(head(x_BxPxD), word_VxD)
            if cfg.decoder_bias:
                logits = logits + VocabBias(cfg.vocab_size, name="decoder")()
            out["mlm_logits"] = logits
        if cfg.num_labels > 0:
            pooled_BxD = (
                x_BxLxD[:, 0] if cfg.pooling == "cls" else mean_pool(x_BxLxD, attention_mask)
            )
            h = nn.Dropout(cfg.dropout_rate)(head(pooled_BxD), deterministic=deterministic)
            classifier = dense(cfg.layer_config(), cfg.num_labels, ("embed", "classes"),
                               name="classifier", use_bias=True)  # fmt: skip
            out["logits"] = classifier(h).astype(jnp.float32)
        return out


class VocabBias(nn.Module):
    """The MLM decoder's bias [V] (its weight is the tied embedding): HF `decoder.bias`."""

    vocab_size: int

    @nn.compact
    def __call__(self):
        init = nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",))
        return self.param("bias", init, (self.vocab_size,), jnp.float32)
