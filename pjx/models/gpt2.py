"""GPT-2 (Radford et al. 2019): pre-LN causal decoder, tied LM head, KV-cache decoding.

Parameter tree (mirrors Hugging Face `GPT2LMHeadModel`; HF Conv1D weights are already [in,out];
`c_attn` [D,3D] reshapes to [D,3,H,K] and `attn/c_proj` [D,D] to [H,K,D]):

  transformer/wte/embedding                    [V,D]   (also the LM head: tied)
  transformer/wpe/embedding                    [P,D]
  transformer/h_{i}/ln_1/{scale,bias}
  transformer/h_{i}/attn/c_attn/{kernel [D,3,H,K], bias [3,H,K]}
  transformer/h_{i}/attn/c_proj/{kernel [H,K,D], bias [D]}
  transformer/h_{i}/ln_2/{scale,bias}
  transformer/h_{i}/mlp/c_fc/{kernel [D,F], bias}
  transformer/h_{i}/mlp/c_proj/{kernel [F,D], bias}
  transformer/ln_f/{scale,bias}

Decoding: `model.apply({"params": p, "cache": c}, ids, decode=True, mutable=["cache"])` with a
cache from `init_cache`; each call appends its tokens (prefill with many, then one at a time).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from pjx.nn.attention import Attention, decode_state, make_attention_mask
from pjx.nn.blocks import MLP
from pjx.nn.config import LayerConfig, constrain, layer_config_of
from pjx.nn.dense import Norm
from pjx.nn.embed import Embed, LearnedPositions
from pjx.nn.stack import repeat

INPUT = "tokens"  # what a batch feeds the model: token ids or images
# Parameter paths of the layer stack(s): NAME_i unscanned, NAME (stacked) with scan_layers.
STACKS = ("transformer/h",)


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 50257
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    mlp_dim: int = 512
    max_position_embeddings: int = 1024
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-5
    activation: str = "gelu_new"
    init_std: float = 0.02
    dtype: str = "float32"
    attention_impl: str | None = None
    remat: str = "none"  # a key of pjx.nn.stack.REMAT_POLICIES, per block
    scan_layers: bool = False  # the block stack as one nn.scan (stacked parameters)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def layer_config(self) -> LayerConfig:
        return layer_config_of(self, norm_type="layernorm", norm_position="pre")


def _size(layers, hidden, heads):
    return dict(num_layers=layers, hidden_size=hidden, num_heads=heads, mlp_dim=4 * hidden)


PRESETS = {
    "tiny": _size(2, 128, 2),
    "small": _size(12, 768, 12),  # 124M
    "medium": _size(24, 1024, 16),
    "large": _size(36, 1280, 20),
    "xl": _size(48, 1600, 25),
}


def example_inputs(config: Config, batch_size: int, seq_len: int | None = None) -> dict:
    """Arrays shaped like a real batch, for `Model.init` / `jax.eval_shape`."""
    L = seq_len or min(config.max_position_embeddings, 128)
    ids_BxL = jnp.zeros((batch_size, L), jnp.int32)
    return {"input_ids": ids_BxL, "attention_mask": jnp.ones_like(ids_BxL)}


class Block(nn.Module):
    """x = x + Attn(LN(x)); x = x + MLP(LN(x))."""

    config: LayerConfig

    @nn.compact
    def __call__(self, x_BxLxD, mask, decode_offset, deterministic):
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        h = Norm(cfg, name="ln_1")(x_BxLxD)
        h = Attention(cfg, ("c_attn",), "c_proj", causal=True, name="attn")(
            h, mask=mask, deterministic=deterministic, decode_offset=decode_offset
        )
        x_BxLxD = x_BxLxD + drop(h, deterministic=deterministic)
        h = Norm(cfg, name="ln_2")(x_BxLxD)
        h = MLP(cfg, in_names=("c_fc",), out_name="c_proj", name="mlp")(
            h, deterministic=deterministic
        )
        return constrain(x_BxLxD + drop(h, deterministic=deterministic))


class Transformer(nn.Module):
    """HF `GPT2Model`: returns (final hidden [B,L,D], float32 tied logits [B,L,V])."""

    config: Config

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask,
        position_ids,
        segment_ids,
        inputs_embeds,
        deterministic,
        decode,
    ):
        cfg, lcfg = self.config, self.config.layer_config()
        wte = Embed(
            cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), cfg.init_std, cfg.dtype, name="wte"
        )
        x_BxLxD = wte(input_ids) if inputs_embeds is None else inputs_embeds.astype(cfg.dtype)
        B, L = x_BxLxD.shape[:2]
        offset = 0
        if decode:
            offset, key_mask_BxS = decode_state(self, attention_mask, B, L)
            mask = make_attention_mask(
                L, key_mask_BxS.shape[1], causal=True, q_offset=offset, kv_mask=key_mask_BxS
            )
        else:  # causal inside the attention kernel; padding and documents here
            mask = make_attention_mask(L, L, kv_mask=attention_mask, q_segment_ids=segment_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(offset + jnp.arange(L, dtype=jnp.int32), (B, L))
        x_BxLxD = x_BxLxD + LearnedPositions(
            cfg.max_position_embeddings, cfg.hidden_size, cfg.init_std, cfg.dtype, name="wpe"
        )(position_ids)
        x_BxLxD = nn.Dropout(cfg.dropout_rate)(x_BxLxD, deterministic=deterministic)
        x_BxLxD = constrain(x_BxLxD)
        x_BxLxD = repeat(
            Block,
            cfg.num_layers,
            x_BxLxD,
            mask,
            offset if decode else None,
            deterministic,
            name="h",
            scan=cfg.scan_layers,
            remat=cfg.remat,
            config=lcfg,
        )
        x_BxLxD = Norm(lcfg, name="ln_f")(x_BxLxD)
        return x_BxLxD, wte.attend(x_BxLxD)


class Model(nn.Module):
    """GPT-2 LM. `decode=True` runs against (and appends to) the `cache` collection."""

    config: Config

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        segment_ids=None,
        *,
        inputs_embeds=None,
        deterministic=True,
        decode=False,
    ):
        x_BxLxD, logits_BxLxV = Transformer(self.config, name="transformer")(
            input_ids,
            attention_mask,
            position_ids,
            segment_ids,
            inputs_embeds,
            deterministic,
            decode,
        )
        return {"last_hidden_state": x_BxLxD, "logits": logits_BxLxV}


def init_cache(model: Model, batch_size: int, max_length: int):
    """An empty KV cache for `max_length` tokens (shapes via eval_shape: nothing runs)."""
    ids = jnp.zeros((batch_size, max_length), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, decode=True))["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def sample_logits(rng, logits_BxV, *, temperature=1.0, top_k=None):
    """Greedy when temperature == 0, else softmax(logits / temperature) over the top_k."""
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = logits_BxV.astype(jnp.float32) / temperature
    if top_k is not None:
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
    return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


def generate(
    model: Model, params, prompt_ids, max_new_tokens: int, *, rng, temperature=1.0, top_k=None
):
    """Sample `max_new_tokens` after `prompt_ids` [B,P] (unpadded) -> [B, P + max_new_tokens].

    Prefills the KV cache with the prompt, then decodes one token per `lax.fori_loop` step.
    Jittable with `model`, `max_new_tokens`, `temperature`, `top_k` static.
    """
    B, P = prompt_ids.shape
    cache = init_cache(model, B, P + max_new_tokens)

    def step(cache, ids_BxT):
        out, state = model.apply(
            {"params": params, "cache": cache}, ids_BxT, decode=True, mutable=["cache"]
        )
        return out["logits"][:, -1], state["cache"]

    logits_BxV, cache = step(cache, prompt_ids)
    rng, sub = jax.random.split(rng)
    first_B = sample_logits(sub, logits_BxV, temperature=temperature, top_k=top_k)
    tokens_BxG = jnp.zeros((B, max_new_tokens), jnp.int32).at[:, 0].set(first_B)

    def body(i, carry):
        tokens_BxG, cache, rng = carry
        logits_BxV, cache = step(cache, jax.lax.dynamic_slice_in_dim(tokens_BxG, i - 1, 1, 1))
        rng, sub = jax.random.split(rng)
        tok_B = sample_logits(sub, logits_BxV, temperature=temperature, top_k=top_k)
        return tokens_BxG.at[:, i].set(tok_B), cache, rng

    tokens_BxG, _, _ = jax.lax.fori_loop(1, max_new_tokens, body, (tokens_BxG, cache, rng))
    return jnp.concatenate([prompt_ids.astype(jnp.int32), tokens_BxG], axis=1)
