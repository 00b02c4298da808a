"""The Llama family of causal decoders (Touvron et al. 2023; Llama 2 / 3 / 3.x), with the
switches that make it Qwen2 / 2.5 (`qkv_bias`), Qwen3 (`qk_norm`), Mistral
(`sliding_window`) or SmolLM: pre-RMSNorm blocks without biases, rotary positions, SwiGLU
MLP, grouped-query attention, tied or untied LM head, KV-cache decoding.

Parameter tree (mirrors Hugging Face `LlamaForCausalLM`; q / k / v kernels [D, heads, K],
o_proj [H, K, D]):

  model/embed_tokens/embedding                         [V, D]
  model/layers_{i}/input_layernorm/scale               [D]
  model/layers_{i}/self_attn/{q,k,v}_proj/kernel       [D, H|G, K]  (+ bias with qkv_bias)
  model/layers_{i}/self_attn/{q,k}_norm/scale          [K]          (qk_norm)
  model/layers_{i}/self_attn/o_proj/kernel             [H, K, D]    (+ bias with out_bias)
  model/layers_{i}/post_attention_layernorm/scale      [D]
  model/layers_{i}/mlp/{gate,up}_proj/kernel           [D, F]
  model/layers_{i}/mlp/down_proj/kernel                [F, D]
  model/norm/scale                                     [D]
  lm_head/kernel                                       [D, V]       (untied only)

Packed rows restart positions per document (`position_ids` from pjx.packing), so each
document is rotated as if alone; the mask keeps attention inside it (segment ids).
Decoding as GPT-2's: pjx.models.gpt2.generate works with either family.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from pjx.nn import rope as rope_lib
from pjx.nn.attention import Attention, decode_state, make_attention_mask
from pjx.nn.blocks import MLP
from pjx.nn.config import LayerConfig, constrain, layer_config_of
from pjx.nn.dense import Logits, Norm
from pjx.nn.embed import Embed
from pjx.nn.stack import repeat

INPUT = "tokens"
STACKS = ("model/layers",)
# Hugging Face model types of this family; `variant` keeps which one a model is.
VARIANTS = ("llama", "qwen2", "qwen3", "mistral")


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 32000
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 0  # grouped-query attention; 0: num_heads (multi-head)
    head_dim: int = 0  # 0: hidden_size // num_heads (Qwen3 sets it apart)
    mlp_dim: int = 344
    max_position_embeddings: int = 2048
    layer_norm_eps: float = 1e-6  # rms_norm_eps
    rope_theta: float = 10000.0
    rope_scaling: str = "default"  # a key of pjx.nn.rope.SCALINGS
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    qkv_bias: bool = False  # biases on q / k / v (Qwen2; Llama's attention_bias with out_bias)
    out_bias: bool = False  # bias on o_proj
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm of each query / key head before the rotation (Qwen3)
    sliding_window: int = 0  # > 0: each token sees the last `sliding_window` (Mistral)
    tie_word_embeddings: bool = False
    variant: str = "llama"  # the Hugging Face model_type an export writes
    activation: str = "gated-silu"
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    init_std: float = 0.02
    dtype: str = "float32"
    attention_impl: str | None = None
    remat: str = "none"
    scan_layers: bool = False

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"llama variant {self.variant!r}: choose one of {VARIANTS}")
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={kv}: each "
                "key / value head serves the same number of query heads"
            )

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    def layer_config(self) -> LayerConfig:
        return layer_config_of(
            self, norm_type="rmsnorm", norm_position="pre", use_bias=self.mlp_bias,
            num_kv_heads=self.kv_heads, qk_norm=self.qk_norm,
        )  # fmt: skip

    def inverse_frequencies(self):
        return rope_lib.inverse_frequencies(
            self.layer_config().head_dim, self.rope_theta, self.rope_scaling, self.rope_factor,
            self.rope_low_freq_factor, self.rope_high_freq_factor,
            self.rope_original_max_position,
        )  # fmt: skip


def _size(layers, hidden, heads, kv, mlp, tie=True):
    return dict(num_layers=layers, hidden_size=hidden, num_heads=heads, num_kv_heads=kv,
                mlp_dim=mlp, tie_word_embeddings=tie)  # fmt: skip


PRESETS = {
    "tiny": _size(2, 128, 4, 2, 344),
    "mini": _size(4, 256, 4, 2, 688),  # about GPT-2-mini's size at a small vocabulary
    "smollm-135m": dict(_size(30, 576, 9, 3, 1536), vocab_size=49152, rope_theta=10000.0),
    "small": _size(12, 768, 12, 4, 2048),  # GPT-2-small's shape with GQA and SwiGLU
}


def example_inputs(config: Config, batch_size: int, seq_len: int | None = None) -> dict:
    """Arrays shaped like a real batch, for `Model.init` / `jax.eval_shape`."""
    L = seq_len or min(config.max_position_embeddings, 128)
    ids_BxL = jnp.zeros((batch_size, L), jnp.int32)
    return {"input_ids": ids_BxL, "attention_mask": jnp.ones_like(ids_BxL)}


class Block(nn.Module):
    """x = x + Attn(RMSNorm(x)); x = x + SwiGLU(RMSNorm(x))."""

    config: LayerConfig
    qkv_bias: bool = False
    out_bias: bool = False

    @nn.compact
    def __call__(self, x_BxLxD, mask, rope, decode_offset, deterministic):
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        h = Norm(cfg, name="input_layernorm")(x_BxLxD)
        attention = Attention(
            cfg, ("q_proj", "k_proj", "v_proj"), "o_proj", causal=True,
            qkv_bias=self.qkv_bias, out_bias=self.out_bias, name="self_attn",
        )  # fmt: skip
        h = attention(
            h, mask=mask, deterministic=deterministic, decode_offset=decode_offset, rope=rope
        )
        x_BxLxD = x_BxLxD + drop(h, deterministic=deterministic)
        h = Norm(cfg, name="post_attention_layernorm")(x_BxLxD)
        h = MLP(cfg, in_names=("gate_proj", "up_proj"), out_name="down_proj", name="mlp")(
            h, deterministic=deterministic
        )
        return constrain(x_BxLxD + drop(h, deterministic=deterministic))


class Decoder(nn.Module):
    """HF `LlamaModel`: the embedding, the blocks and the final norm -> (hidden [B, L, D],
    the float32 logits of the tied head, or None when the head is untied)."""

    config: Config

    @nn.compact
    def __call__(self, input_ids, attention_mask, position_ids, segment_ids, inputs_embeds,
                 deterministic, decode):  # fmt: skip
        cfg, lcfg = self.config, self.config.layer_config()
        embed = Embed(
            cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), cfg.init_std, cfg.dtype,
            name="embed_tokens",
        )  # fmt: skip
        x_BxLxD = embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(cfg.dtype)
        B, L = x_BxLxD.shape[:2]
        window, offset = cfg.sliding_window, 0
        if decode:
            offset, key_mask_BxS = decode_state(self, attention_mask, B, L)
            mask = make_attention_mask(
                L, key_mask_BxS.shape[1], causal=True, q_offset=offset, kv_mask=key_mask_BxS,
                window=window,
            )  # fmt: skip
        else:  # causal inside the attention kernel; padding, documents and a window here
            mask = make_attention_mask(
                L, L, causal=bool(window), window=window, kv_mask=attention_mask,
                q_segment_ids=segment_ids,
            )  # fmt: skip
        if position_ids is None:
            position_ids = jnp.broadcast_to(offset + jnp.arange(L, dtype=jnp.int32), (B, L))
        rope = rope_lib.rotation(position_ids, cfg.inverse_frequencies())
        x_BxLxD = constrain(nn.Dropout(cfg.dropout_rate)(x_BxLxD, deterministic=deterministic))
        x_BxLxD = repeat(
            Block, cfg.num_layers, x_BxLxD, mask, rope, offset if decode else None,
            deterministic, name="layers", scan=cfg.scan_layers, remat=cfg.remat, config=lcfg,
            qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias,
        )  # fmt: skip
        x_BxLxD = Norm(lcfg, name="norm")(x_BxLxD)
        return x_BxLxD, embed.attend(x_BxLxD) if cfg.tie_word_embeddings else None


class Model(nn.Module):
    """Llama-family causal LM. `decode=True` runs against (and appends to) the `cache`."""

    config: Config

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, position_ids=None, segment_ids=None, *,
                 inputs_embeds=None, deterministic=True, decode=False):  # fmt: skip
        cfg = self.config
        x_BxLxD, logits = Decoder(cfg, name="model")(
            input_ids, attention_mask, position_ids, segment_ids, inputs_embeds, deterministic,
            decode,
        )  # fmt: skip
        if logits is None:
            logits = Logits(cfg.vocab_size, cfg.init_std, name="lm_head")(x_BxLxD)
        return {"last_hidden_state": x_BxLxD, "logits": logits}
