"""BERT (Devlin et al. 2019): post-LN encoder, pooler, MLM / NSP / classification heads.

Parameter tree (mirrors Hugging Face `BertForPreTraining`; HF `weight` -> `kernel`/`embedding`/
`scale`; q/k/v kernels [D,H,K], attention output kernel [H,K,D], other kernels [in,out]):

  bert/embeddings/word_embeddings/embedding          [V,D]
  bert/embeddings/position_embeddings/embedding      [P,D]
  bert/embeddings/token_type_embeddings/embedding    [2,D]
  bert/embeddings/LayerNorm/{scale,bias}
  bert/encoder/layer_{i}/attention/self/{query,key,value}/{kernel,bias}
  bert/encoder/layer_{i}/attention/output/dense/{kernel,bias}
  bert/encoder/layer_{i}/attention/output/LayerNorm/{scale,bias}
  bert/encoder/layer_{i}/intermediate/dense/{kernel,bias}
  bert/encoder/layer_{i}/output/dense/{kernel,bias}
  bert/encoder/layer_{i}/output/LayerNorm/{scale,bias}
  bert/pooler/dense/{kernel,bias}
  cls/predictions/transform/dense/{kernel,bias}       (mlm_head; decoder tied to word_embeddings)
  cls/predictions/transform/LayerNorm/{scale,bias}
  cls/predictions/bias                                [V]
  cls/seq_relationship/{kernel,bias}                  (nsp_head)
  classifier/{kernel,bias}                            (num_labels > 0)
  distill_projection/{kernel,bias}                    [D,W] (distill_width W != D)

RoBERTa's classifier is classifier/{dense,out_proj}/{kernel,bias}; DistilBERT's
pre_classifier/{kernel,bias} + classifier/{kernel,bias}; DistilBERT has no
token_type_embeddings and no pooler (`pooler=False`).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from pjx.nn.attention import make_attention_mask
from pjx.nn.blocks import EncoderLayer
from pjx.nn.config import LayerConfig, constrain, layer_config_of
from pjx.nn.dense import Norm, dense, tied_logits
from pjx.nn.embed import Embed, LearnedPositions
from pjx.nn.stack import repeat

INPUT = "tokens"  # what a batch feeds the model: token ids or images
# Parameter paths of the layer stack(s): NAME_i unscanned, NAME (stacked) with scan_layers.
STACKS = ("bert/encoder/layer",)


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 30522
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    mlp_dim: int = 512
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"  # HF BERT hidden_act "gelu" is the exact erf GELU
    init_std: float = 0.02
    dtype: str = "float32"
    attention_impl: str | None = None
    remat: str = "none"  # a key of pjx.nn.stack.REMAT_POLICIES, per layer
    scan_layers: bool = False  # the layer stack as one nn.scan (stacked parameters)
    mlm_head: bool = True
    nsp_head: bool = False
    num_labels: int = 0  # > 0 adds the sequence-classification head
    # > 0: ELECTRA's pretraining pair (task electra, pjx.models.electra): this encoder as
    # the discriminator beside a generator of this fraction of its width, heads and MLP.
    generator_size: float = 0.0
    # The BERT-family layout: "bert"; "roberta" (Liu et al. 2019: positions start after
    # the padding index, classifier dense + tanh + out_proj on <s>); "distilbert" (Sanh et
    # al. 2019: no token types, no pooler, classifier pre_classifier + ReLU on [CLS]).
    variant: str = "bert"
    position_offset: int = 0  # first position id (RoBERTa: pad_token_id + 1)
    pooler: bool = True  # dense + tanh on the first token (BERT's NSP / classifier input)
    # What the BERT classifier reads: "cls", the pooler over [CLS] (Hugging Face's
    # BertForSequenceClassification); "mean", the mean of the non-padding token states (how
    # sentence-transformers checkpoints such as all-MiniLM-L6-v2 embed a sentence: their
    # pooler took no part in that training, and its output barely varies between sentences).
    pooling: str = "cls"
    # Sow the embedding output and every layer's (q, k, v) into the "intermediates"
    # collection (`internals` reads them), kept where apply makes it mutable: what task
    # distill's embedding and attention-relation losses compare. Off: nothing is sown.
    sow_internals: bool = False
    # A width other than hidden_size (and > 0): a learned projection of the last hidden
    # state to this width, output as `projected_hidden_state` (TinyBERT's W_h, Jiao et al.
    # 2020): how task distill's hidden_cosine compares a student with a wider or narrower
    # teacher. A fine-tuning run drops it with the other pretraining heads.
    distill_width: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def layer_config(self) -> LayerConfig:
        return layer_config_of(
            self, norm_type="layernorm", norm_position="post", sow_qkv=self.sow_internals
        )


def _size(layers, hidden, heads):
    return dict(num_layers=layers, hidden_size=hidden, num_heads=heads, mlp_dim=4 * hidden)


PRESETS = {
    "tiny": _size(2, 128, 2),
    "mini": _size(4, 256, 4),
    "small": _size(4, 512, 8),
    "medium": _size(8, 512, 8),
    "base": _size(12, 768, 12),
    "large": _size(24, 1024, 16),
}


def example_inputs(config: Config, batch_size: int, seq_len: int | None = None) -> dict:
    """Arrays shaped like a real batch, for `Model.init` / `jax.eval_shape`."""
    L = seq_len or min(config.max_position_embeddings, 128)
    ids_BxL = jnp.zeros((batch_size, L), jnp.int32)
    out = {
        "input_ids": ids_BxL,
        "attention_mask": jnp.ones_like(ids_BxL),
        "token_type_ids": ids_BxL,
    }
    if config.mlm_head:
        out["masked_positions"] = jnp.zeros((batch_size, max(1, L // 8)), jnp.int32)
    return out


class Embeddings(nn.Module):
    config: Config

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, inputs_embeds, deterministic):
        cfg = self.config
        D = cfg.hidden_size
        word = Embed(
            cfg.vocab_size, D, ("vocab", "embed"), cfg.init_std, cfg.dtype, name="word_embeddings"
        )
        x_BxLxD = word(input_ids) if inputs_embeds is None else inputs_embeds.astype(cfg.dtype)
        x_BxLxD = x_BxLxD + LearnedPositions(
            cfg.max_position_embeddings, D, cfg.init_std, cfg.dtype, name="position_embeddings"
        )(position_ids)
        if cfg.type_vocab_size > 0:  # DistilBERT has no token types
            x_BxLxD = x_BxLxD + Embed(
                cfg.type_vocab_size,
                D,
                ("token_type", "embed"),
                cfg.init_std,
                cfg.dtype,
                name="token_type_embeddings",
            )(token_type_ids)
        x_BxLxD = Norm(cfg.layer_config(), name="LayerNorm")(x_BxLxD)
        x_BxLxD = nn.Dropout(cfg.dropout_rate)(x_BxLxD, deterministic=deterministic)
        return x_BxLxD, word.embedding


class Encoder(nn.Module):
    config: Config

    @nn.compact
    def __call__(self, x_BxLxD, mask, deterministic):
        cfg = self.config
        return repeat(
            EncoderLayer,
            cfg.num_layers,
            x_BxLxD,
            mask,
            None,
            deterministic,
            name="layer",
            scan=cfg.scan_layers,
            remat=cfg.remat,
            config=cfg.layer_config(),
            attention_name="self",
        )


class Pooler(nn.Module):
    """dense + tanh on the first ([CLS]) token."""

    config: Config

    @nn.compact
    def __call__(self, x_BxLxD):
        lcfg = self.config.layer_config()
        proj = dense(lcfg, lcfg.hidden_size, ("embed", "mlp"), name="dense")
        return jnp.tanh(proj(x_BxLxD[:, 0]))


class BertModel(nn.Module):
    """HF `BertModel` with its pooler -> (hidden [B,L,D], pooled [B,D], word table [V,D])."""

    config: Config

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask,
        token_type_ids,
        position_ids,
        segment_ids,
        inputs_embeds,
        deterministic,
    ):
        x_BxLxD, word_VxD = Embeddings(self.config, name="embeddings")(
            input_ids, token_type_ids, position_ids, inputs_embeds, deterministic
        )
        if self.config.sow_internals:
            self.sow("intermediates", "embedding_output", x_BxLxD)
        L = x_BxLxD.shape[1]
        mask = make_attention_mask(L, L, kv_mask=attention_mask, q_segment_ids=segment_ids)
        x_BxLxD = Encoder(self.config, name="encoder")(constrain(x_BxLxD), mask, deterministic)
        pooled = Pooler(self.config, name="pooler")(x_BxLxD) if self.config.pooler else None
        return x_BxLxD, pooled, word_VxD


def internals(intermediates, config: Config) -> dict:
    """What a `sow_internals` model sowed into `intermediates` (its apply's mutable
    "intermediates"): `embedding_output` [B,L,D] and the last layer's `query`, `key`,
    `value`, heads concatenated [B,L,D] (a scanned stack sows every layer's along axis 0)."""
    bert = intermediates["bert"]
    if config.scan_layers:
        q, k, v = (t[-1] for t in bert["encoder"]["layer"]["attention"]["self"]["qkv"][0])
    else:
        last = bert["encoder"][f"layer_{config.num_layers - 1}"]
        q, k, v = last["attention"]["self"]["qkv"][0]
    flat = lambda t: t.reshape(*t.shape[:2], -1)  # [B,L,H,K] -> [B,L,H*K]
    return {
        "embedding_output": bert["embedding_output"][0],
        "query": flat(q),
        "key": flat(k),
        "value": flat(v),
    }


class Transform(nn.Module):
    config: Config

    @nn.compact
    def __call__(self, x_BxPxD):
        lcfg = self.config.layer_config()
        h = dense(lcfg, lcfg.hidden_size, ("embed", "mlp"), name="dense")(x_BxPxD)
        h = nn.gelu(h, approximate=self.config.activation != "gelu")
        return Norm(lcfg, name="LayerNorm")(h)


class Predictions(nn.Module):
    """MLM head: transform, then the decoder tied to the word embeddings, plus a vocab bias."""

    config: Config

    @nn.compact
    def __call__(self, x_BxPxD, word_VxD):
        h_BxPxD = Transform(self.config, name="transform")(x_BxPxD)
        bias_V = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
            (self.config.vocab_size,),
            jnp.float32,
        )
        return tied_logits(h_BxPxD, word_VxD) + bias_V


class PreTrainingHeads(nn.Module):
    config: Config

    @nn.compact
    def __call__(self, x_BxPxD, pooled_BxD, word_VxD):
        cfg, lcfg = self.config, self.config.layer_config()
        out = {}
        if cfg.mlm_head:
            out["mlm_logits"] = Predictions(cfg, name="predictions")(x_BxPxD, word_VxD)
        if cfg.nsp_head:
            nsp = dense(lcfg, 2, ("embed", "classes"), name="seq_relationship")
            out["nsp_logits"] = nsp(pooled_BxD).astype(jnp.float32)
        return out


class Model(nn.Module):
    """BERT with the heads `config` asks for. See the module docstring for the parameter tree."""

    config: Config

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        segment_ids=None,
        masked_positions=None,
        *,
        inputs_embeds=None,
        deterministic=True,
    ):
        cfg = self.config
        B, L = (input_ids if inputs_embeds is None else inputs_embeds).shape[:2]
        if token_type_ids is None:
            token_type_ids = jnp.zeros((B, L), jnp.int32)
        if position_ids is None:
            positions = jnp.arange(L, dtype=jnp.int32) + cfg.position_offset
            position_ids = jnp.broadcast_to(positions, (B, L))
        x_BxLxD, pooled_BxD, word_VxD = BertModel(cfg, name="bert")(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            segment_ids,
            inputs_embeds,
            deterministic,
        )
        out = {"last_hidden_state": x_BxLxD}
        if cfg.distill_width and cfg.distill_width != cfg.hidden_size:
            project = dense(cfg.layer_config(), cfg.distill_width, ("embed", "mlp"),
                            name="distill_projection")  # fmt: skip
            out["projected_hidden_state"] = project(x_BxLxD)
        if pooled_BxD is not None:
            out["pooler_output"] = pooled_BxD
        if cfg.mlm_head or cfg.nsp_head:
            # Gather before the vocab projection: only P << L positions pay for the [D,V] matmul.
            if masked_positions is None:
                x_BxPxD = x_BxLxD
            else:
                x_BxPxD = jnp.take_along_axis(x_BxLxD, masked_positions[..., None], axis=1)
            out.update(PreTrainingHeads(cfg, name="cls")(x_BxPxD, pooled_BxD, word_VxD))
        if cfg.num_labels > 0:
            logits = classifier_logits(cfg, x_BxLxD, pooled_BxD, attention_mask, deterministic)
            out["logits"] = logits.astype(jnp.float32)
        return out


class RobertaClassifier(nn.Module):
    """RoBERTa's classification head on <s>: dropout, dense + tanh, dropout, out_proj."""

    config: Config

    @nn.compact
    def __call__(self, x_BxLxD, deterministic):
        cfg, lcfg = self.config, self.config.layer_config()
        drop = lambda h: nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        h = dense(lcfg, cfg.hidden_size, ("embed", "mlp"), name="dense")(drop(x_BxLxD[:, 0]))
        out = dense(lcfg, cfg.num_labels, ("embed", "classes"), name="out_proj")
        return out(drop(jnp.tanh(h)))


POOLING = ("cls", "mean")


def mean_pool(x_BxLxD, attention_mask_BxL=None):
    """The mean of the token states where `attention_mask` is 1 (all of them without one)."""
    if attention_mask_BxL is None:
        return jnp.mean(x_BxLxD, axis=1)
    m_BxLx1 = attention_mask_BxL[..., None].astype(x_BxLxD.dtype)
    return jnp.sum(x_BxLxD * m_BxLx1, axis=1) / jnp.maximum(jnp.sum(m_BxLx1, axis=1), 1.0)


def classifier_logits(cfg: Config, x_BxLxD, pooled_BxD, attention_mask, deterministic):
    """Sequence classification logits [B, C] as each variant's Hugging Face model computes
    them (or from the mean token state, `pooling="mean"`); call inside Model (the heads'
    parameters sit at its top level)."""
    lcfg = cfg.layer_config()
    drop = lambda h: nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    C, D = cfg.num_labels, cfg.hidden_size
    if cfg.pooling not in POOLING:
        raise ValueError(f"model.pooling={cfg.pooling!r}: pick one of {POOLING}")
    if cfg.pooling == "mean":
        if cfg.variant != "bert":
            raise ValueError(
                f"model.pooling='mean' is for variant 'bert'; {cfg.variant} keeps its own "
                "classifier input (leave model.pooling='cls')"
            )
        return dense(lcfg, C, ("embed", "classes"), name="classifier")(
            drop(mean_pool(x_BxLxD, attention_mask))
        )
    if cfg.variant == "roberta":
        return RobertaClassifier(cfg, name="classifier")(x_BxLxD, deterministic)
    if cfg.variant == "distilbert":  # pre_classifier + ReLU on [CLS], dropout, classifier
        h = dense(lcfg, D, ("embed", "mlp"), name="pre_classifier")(x_BxLxD[:, 0])
        return dense(lcfg, C, ("embed", "classes"), name="classifier")(drop(nn.relu(h)))
    if pooled_BxD is None:
        raise ValueError("BERT's classifier reads the pooler: set pooler=True")
    return dense(lcfg, C, ("embed", "classes"), name="classifier")(drop(pooled_BxD))
