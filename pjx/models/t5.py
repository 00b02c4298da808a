"""T5.1.1 (Raffel et al. 2020; "t5-v1_1"): RMSNorm pre-norm encoder-decoder, gated-GELU,
relative position bias, no biases, untied LM head without logit rescaling.

Parameter tree (mirrors Hugging Face `T5ForConditionalGeneration`; q/k/v kernels [D,H,K],
o [H,K,D], wi_0/wi_1 [D,F], wo [F,D], lm_head [D,V]). One rename beyond weight -> kernel/scale:
the bias table HF keeps in block 0 (`{stack}/block_0/layer_0/SelfAttention/
relative_attention_bias`) lives at `{stack}/relative_attention_bias/embedding` [32,H], since
every layer of a stack uses it (HF shares block 0's bias the same way).

  shared/embedding                                          [V,D]
  encoder/relative_attention_bias/embedding                 [buckets,H]
  encoder/block_{i}/layer_0/SelfAttention/{q,k,v,o}/kernel
  encoder/block_{i}/layer_0/layer_norm/scale
  encoder/block_{i}/layer_1/DenseReluDense/{wi_0,wi_1,wo}/kernel
  encoder/block_{i}/layer_1/layer_norm/scale
  encoder/final_layer_norm/scale
  decoder/relative_attention_bias/embedding                 [buckets,H]
  decoder/block_{i}/layer_0/SelfAttention/{q,k,v,o}/kernel
  decoder/block_{i}/layer_0/layer_norm/scale
  decoder/block_{i}/layer_1/EncDecAttention/{q,k,v,o}/kernel
  decoder/block_{i}/layer_1/layer_norm/scale
  decoder/block_{i}/layer_2/DenseReluDense/{wi_0,wi_1,wo}/kernel
  decoder/block_{i}/layer_2/layer_norm/scale
  decoder/final_layer_norm/scale
  lm_head/kernel                                            [D,V]
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from pjx.nn.attention import Attention, decode_state, make_attention_mask
from pjx.nn.blocks import MLP
from pjx.nn.config import LayerConfig, constrain, layer_config_of
from pjx.nn.dense import Logits, Norm
from pjx.nn.embed import Embed, RelativePositionBias
from pjx.nn.stack import repeat

INPUT = "tokens"  # what a batch feeds the model: token ids or images
# Parameter paths of the layer stack(s): NAME_i unscanned, NAME (stacked) with scan_layers.
STACKS = ("encoder/block", "decoder/block")


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 32128
    hidden_size: int = 128  # d_model
    num_layers: int = 2  # encoder layers
    num_decoder_layers: int = 2
    num_heads: int = 4
    head_dim: int = 32  # d_kv
    mlp_dim: int = 256  # d_ff
    max_position_embeddings: int = 512  # no position table; a length hint for inputs/data
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1  # HF T5 drops attention weights at dropout_rate
    layer_norm_eps: float = 1e-6
    activation: str = "gated-gelu"  # T5.1.1; "relu" gives the original T5 DenseReluDense
    init_std: float | None = None  # None: fan-in scaled, close to HF T5's init
    dtype: str = "float32"
    attention_impl: str | None = None
    remat: str = "none"  # a key of pjx.nn.stack.REMAT_POLICIES, per block
    scan_layers: bool = False  # each block stack as one nn.scan (stacked parameters)
    pad_token_id: int = 0
    decoder_start_token_id: int = 0

    def layer_config(self) -> LayerConfig:
        return layer_config_of(
            self,
            norm_type="rmsnorm",
            norm_position="pre",
            use_bias=False,
            attention_scale=1.0,  # T5 folds 1/sqrt(d_kv) into the q initialisation
        )


def _size(n, d, h, k, f):
    return dict(
        num_layers=n, num_decoder_layers=n, hidden_size=d, num_heads=h, head_dim=k, mlp_dim=f
    )


PRESETS = {
    "tiny": _size(2, 128, 4, 32, 256),
    "small": _size(8, 512, 6, 64, 1024),
    "base": _size(12, 768, 12, 64, 2048),
}


def example_inputs(config: Config, batch_size: int, seq_len: int | None = None) -> dict:
    """Arrays shaped like a real batch, for `Model.init` / `jax.eval_shape`."""
    L = seq_len or min(config.max_position_embeddings, 128)
    ids_BxL = jnp.zeros((batch_size, L), jnp.int32)
    ones_BxL = jnp.ones_like(ids_BxL)
    return {
        "input_ids": ids_BxL,
        "attention_mask": ones_BxL,
        "decoder_input_ids": ids_BxL,
        "decoder_attention_mask": ones_BxL,
    }


class Layer(nn.Module):
    """One pre-norm residual sublayer `layer_{j}`: x + dropout(f(RMSNorm(x))).

    kind: "self" (SelfAttention), "cross" (EncDecAttention) or "mlp" (DenseReluDense).
    """

    config: LayerConfig
    kind: str
    causal: bool = False  # decoder self-attention

    @nn.compact
    def __call__(
        self,
        x_BxTxD,
        *,
        mask=None,
        bias=None,
        enc_BxSxD=None,
        deterministic=True,
        decode_offset=None,
    ):
        cfg = self.config
        h = Norm(cfg, name="layer_norm")(x_BxTxD)
        qkvo = dict(names=("q", "k", "v"), out_name="o")
        if self.kind == "self":
            h = Attention(cfg, **qkvo, causal=self.causal, name="SelfAttention")(
                h, mask=mask, bias=bias, deterministic=deterministic, decode_offset=decode_offset
            )
        elif self.kind == "cross":
            h = Attention(cfg, **qkvo, name="EncDecAttention")(
                h, enc_BxSxD, mask=mask, deterministic=deterministic
            )
        else:
            gated = cfg.activation.startswith("gated-")
            h = MLP(
                cfg,
                in_names=("wi_0", "wi_1") if gated else ("wi",),
                out_name="wo",
                hidden_dropout=True,
                name="DenseReluDense",
            )(h, deterministic=deterministic)
        return x_BxTxD + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)


class Stack(nn.Module):
    """Encoder (bidirectional) or decoder (causal + cross-attention) stack of T5 blocks."""

    config: Config
    is_decoder: bool

    @nn.compact
    def __call__(
        self,
        x_BxTxD,
        attention_mask=None,
        segment_ids=None,
        *,
        enc_BxSxD=None,
        encoder_attention_mask=None,
        encoder_segment_ids=None,
        deterministic=True,
        decode=False,
    ):
        cfg, lcfg = self.config, self.config.layer_config()
        B, T = x_BxTxD.shape[:2]
        offset, S = 0, T
        if self.is_decoder and decode:
            offset, key_mask_BxS = decode_state(self, attention_mask, B, T)
            S = key_mask_BxS.shape[1]
            mask = make_attention_mask(T, S, causal=True, q_offset=offset, kv_mask=key_mask_BxS)
        else:  # the decoder's causal mask is applied inside its self-attention
            mask = make_attention_mask(T, T, kv_mask=attention_mask, q_segment_ids=segment_ids)
        # One bias table per stack, used by every layer (as HF shares block 0's).
        bias_1xHxTxS = RelativePositionBias(
            cfg.num_heads,
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            bidirectional=not self.is_decoder,
            init_std=cfg.hidden_size**-0.5,
            name="relative_attention_bias",
        )(T, S, offset)
        cross_mask = None
        if self.is_decoder:
            cross_mask = make_attention_mask(
                T,
                enc_BxSxD.shape[1],
                kv_mask=encoder_attention_mask,
                q_segment_ids=None if decode else segment_ids,
                kv_segment_ids=encoder_segment_ids,
            )
            if cross_mask is not None and segment_ids is None and encoder_segment_ids is not None:
                raise ValueError("encoder_segment_ids need decoder segment_ids")
        drop = nn.Dropout(cfg.dropout_rate)
        x_BxTxD = constrain(drop(x_BxTxD, deterministic=deterministic))
        x_BxTxD = repeat(
            Block,
            cfg.num_decoder_layers if self.is_decoder else cfg.num_layers,
            x_BxTxD,
            mask,
            bias_1xHxTxS,
            enc_BxSxD,
            cross_mask,
            offset if (self.is_decoder and decode) else None,
            deterministic,
            name="block",
            scan=cfg.scan_layers,
            remat=cfg.remat,
            config=lcfg,
            is_decoder=self.is_decoder,
        )
        x_BxTxD = Norm(lcfg, name="final_layer_norm")(x_BxTxD)
        return drop(x_BxTxD, deterministic=deterministic)


class Block(nn.Module):
    """`block_{i}`: layer_0 self-attention, [layer_1 cross-attention,] last layer MLP."""

    config: LayerConfig
    is_decoder: bool

    @nn.compact
    def __call__(self, x_BxTxD, mask, bias, enc_BxSxD, cross_mask, decode_offset, deterministic):
        kinds = ("self", "cross", "mlp") if self.is_decoder else ("self", "mlp")
        for j, kind in enumerate(kinds):
            causal = self.is_decoder and kind == "self"
            x_BxTxD = Layer(self.config, kind, causal, name=f"layer_{j}")(
                x_BxTxD,
                mask=cross_mask if kind == "cross" else mask,
                bias=bias if kind == "self" else None,
                enc_BxSxD=enc_BxSxD,
                deterministic=deterministic,
                decode_offset=decode_offset,
            )
        return constrain(x_BxTxD)


class Model(nn.Module):
    """T5 encoder-decoder; `encode` / `decode` let generation reuse the encoder output."""

    config: Config

    def setup(self):
        cfg = self.config
        # HF T5 initialises the shared embedding with std 1.0 (factor * 1.0).
        self.shared = Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), 1.0, cfg.dtype)
        self.encoder = Stack(cfg, is_decoder=False)
        self.decoder = Stack(cfg, is_decoder=True)
        self.lm_head = Logits(cfg.vocab_size, init_std=cfg.hidden_size**-0.5)

    def encode(self, input_ids, attention_mask=None, segment_ids=None, *, deterministic=True):
        """-> encoder_last_hidden_state [B,L,D]."""
        return self.encoder(
            self.shared(input_ids), attention_mask, segment_ids, deterministic=deterministic
        )

    def decode(
        self,
        decoder_input_ids,
        encoder_hidden_states,
        encoder_attention_mask=None,
        decoder_attention_mask=None,
        *,
        decoder_segment_ids=None,
        encoder_segment_ids=None,
        deterministic=True,
        decode=False,
    ):
        """-> {"logits" [B,T,V] float32, "last_hidden_state" [B,T,D]}; `decode=True` uses and
        appends to the `cache` collection (one step or a prefix at a time)."""
        y_BxTxD = self.decoder(
            self.shared(decoder_input_ids),
            decoder_attention_mask,
            decoder_segment_ids,
            enc_BxSxD=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            encoder_segment_ids=encoder_segment_ids,
            deterministic=deterministic,
            decode=decode,
        )
        # Untied head (T5.1.1): no d_model**-0.5 rescale, which HF applies only when tied.
        return {"logits": self.lm_head(y_BxTxD), "last_hidden_state": y_BxTxD}

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        *,
        deterministic=True,
    ):
        if decoder_input_ids is None:
            raise ValueError("t5.Model needs decoder_input_ids (labels shifted right)")
        enc_BxLxD = self.encode(input_ids, attention_mask, deterministic=deterministic)
        out = self.decode(
            decoder_input_ids,
            enc_BxLxD,
            attention_mask,
            decoder_attention_mask,
            deterministic=deterministic,
        )
        return {**out, "encoder_last_hidden_state": enc_BxLxD}


def shift_right(labels_BxT, start_id: int = 0):
    """decoder_input_ids from labels: prepend the start id (= pad id 0 in T5)."""
    start = jnp.full_like(labels_BxT[:, :1], start_id)
    return jnp.concatenate([start, labels_BxT[:, :-1]], axis=1)


def generate(model: Model, params, input_ids, attention_mask=None, *, max_new_tokens: int):
    """Greedy decoding with a KV cache -> [B, max_new_tokens] (start token not included).

    Encodes once; every step runs the decoder on one token. Jittable with `model` and
    `max_new_tokens` static. Does not stop at EOS (cut the result at the first EOS).
    """
    B = input_ids.shape[0]
    variables = {"params": params}
    enc = model.apply(variables, input_ids, attention_mask, method=Model.encode)
    dec_ids = jnp.zeros((B, max_new_tokens), jnp.int32)
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0), dec_ids, enc, attention_mask, decode=True, method=Model.decode
        )
    )["cache"]
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(i, carry):
        tokens_BxG, prev_B, cache = carry
        out, state = model.apply(
            {**variables, "cache": cache},
            prev_B[:, None],
            enc,
            attention_mask,
            decode=True,
            method=Model.decode,
            mutable=["cache"],
        )
        tok_B = jnp.argmax(out["logits"][:, -1], axis=-1).astype(jnp.int32)
        return tokens_BxG.at[:, i].set(tok_B), tok_B, state["cache"]

    start_B = jnp.full((B,), model.config.decoder_start_token_id, jnp.int32)
    tokens_BxG, _, _ = jax.lax.fori_loop(0, max_new_tokens, body, (dec_ids, start_B, cache))
    return tokens_BxG
