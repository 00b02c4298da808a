"""ELECTRA's pretraining pair (Clark et al. 2020): a small BERT generator and a BERT
discriminator in one parameter tree, sharing their embeddings.

A BERT `Config` with `generator_size` > 0 builds this model (pjx.models.create); the task
is `electra` (pjx.tasks.electra: masking, Gumbel sampling and both losses). The
discriminator keeps BERT's own paths, so `init_from` and export see a plain BERT encoder
(no pooler: ELECTRA trains none):

  bert/embeddings/...                                      shared with the generator
  bert/encoder/layer_{i}/...                               the discriminator
  discriminator_predictions/dense/{kernel,bias}            [D,D]  (gelu)
  discriminator_predictions/dense_prediction/{kernel,bias} [D,1]
  generator/embeddings_project/{kernel,bias}               [D,G]
  generator/encoder/layer_{i}/...                          width G, same depth
  generator/predictions/transform/dense/{kernel,bias}      [G,D]
  generator/predictions/transform/LayerNorm/{scale,bias}   [D]
  generator/predictions/bias                               [V]  (decoder tied to bert's words)

As in google-research/electra (`model/modeling.py`, `run_pretraining.py`): the generator
reads the discriminator's whole embedding block (words, positions, token types,
LayerNorm) and projects it to its width G (`embeddings_project`); its MLM head maps back
to the embedding width D and ties to the shared word table. G = generator_size * D, with
heads and MLP scaled by the same fraction (the paper's "multiplier for hidden-size,
FFN-size, and num-attention-heads", Table 6; 1/4 for ELECTRA-Small and -Base).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

import pjx.models.bert as bert
from pjx.nn.attention import make_attention_mask
from pjx.nn.config import constrain
from pjx.nn.dense import dense

# Layer stacks besides BERT's (`scan_layers`): the generator's encoder.
STACKS = ("generator/encoder/layer",)


def generator_config(config: bert.Config) -> bert.Config:
    """The generator's encoder: the discriminator's config at `generator_size` of its width,
    heads and MLP (at least 1 head dividing the width), same depth, no heads of its own."""
    frac = float(config.generator_size)
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"generator_size={frac}: a fraction of the discriminator, in (0, 1]")
    hidden = max(1, round(config.hidden_size * frac))
    heads = max(1, min(round(config.num_heads * frac), hidden))
    while hidden % heads:
        heads -= 1
    return dataclasses.replace(
        config,
        hidden_size=hidden,
        num_heads=heads,
        mlp_dim=max(1, round(config.mlp_dim * frac)),
        generator_size=0.0,
        mlm_head=False,
        nsp_head=False,
        num_labels=0,
        pooler=False,
    )


def _defaults(config, input_ids, token_type_ids, position_ids):
    B, L = input_ids.shape
    if token_type_ids is None:
        token_type_ids = jnp.zeros((B, L), jnp.int32)
    if position_ids is None:
        positions = jnp.arange(L, dtype=jnp.int32) + config.position_offset
        position_ids = jnp.broadcast_to(positions, (B, L))
    return token_type_ids, position_ids


class Discriminator(nn.Module):
    """BERT's embeddings and encoder under BertModel's paths, as two calls (`embed`,
    `__call__`) so that the generator embeds its input with the same tables."""

    config: bert.Config

    def setup(self):
        self.embeddings = bert.Embeddings(self.config)
        self.encoder = bert.Encoder(self.config)

    def embed(self, input_ids, token_type_ids, position_ids, deterministic):
        """(embedded input [B,L,D], word table [V,D])."""
        return self.embeddings(input_ids, token_type_ids, position_ids, None, deterministic)

    def __call__(self, x_BxLxD, mask, deterministic):
        return self.encoder(constrain(x_BxLxD), mask, deterministic)


class DiscriminatorPredictions(nn.Module):
    """One logit per token: dense + activation, then dense to 1 (ELECTRA's
    `discriminator_predictions`)."""

    config: bert.Config

    @nn.compact
    def __call__(self, x_BxLxD):
        cfg, lcfg = self.config, self.config.layer_config()
        h = dense(lcfg, cfg.hidden_size, ("embed", "mlp"), name="dense")(x_BxLxD)
        h = nn.gelu(h, approximate=cfg.activation != "gelu")
        out = dense(lcfg, 1, ("embed", "classes"), name="dense_prediction")(h)
        return out[..., 0].astype(jnp.float32)


class Generator(nn.Module):
    """The small MLM encoder over the shared embeddings (`config`: the discriminator's)."""

    config: bert.Config

    @nn.compact
    def __call__(self, x_BxLxD, word_VxD, mask, masked_positions, deterministic):
        g = generator_config(self.config)
        lcfg = g.layer_config()
        x_BxLxG = dense(lcfg, g.hidden_size, ("embed", "mlp"), name="embeddings_project")(x_BxLxD)
        x_BxLxG = bert.Encoder(g, name="encoder")(constrain(x_BxLxG), mask, deterministic)
        x_BxPxG = jnp.take_along_axis(x_BxLxG, masked_positions[..., None], axis=1)
        # BERT's MLM head at the discriminator's width D: transform G -> D, tied to [V,D].
        return bert.Predictions(self.config, name="predictions")(x_BxPxG, word_VxD)


class Model(nn.Module):
    """ELECTRA's generator and discriminator (see the module docstring for the tree).

    `generate` gives the generator's MLM logits at `masked_positions` [B,P,V];
    `discriminate` the discriminator's replaced-token logits [B,L]; calling the model runs
    both on the same input (what `init` traces)."""

    config: bert.Config

    def setup(self):
        self.bert = Discriminator(self.config)
        self.discriminator_predictions = DiscriminatorPredictions(self.config)
        self.generator = Generator(self.config)

    def _embed(self, input_ids, attention_mask, token_type_ids, position_ids, segment_ids, det):
        token_type_ids, position_ids = _defaults(
            self.config, input_ids, token_type_ids, position_ids
        )
        x_BxLxD, word_VxD = self.bert.embed(input_ids, token_type_ids, position_ids, det)
        L = input_ids.shape[1]
        mask = make_attention_mask(L, L, kv_mask=attention_mask, q_segment_ids=segment_ids)
        return x_BxLxD, word_VxD, mask

    def generate(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        segment_ids=None,
        masked_positions=None,
        *,
        deterministic=True,
    ):
        x, word, mask = self._embed(
            input_ids, attention_mask, token_type_ids, position_ids, segment_ids, deterministic
        )
        if masked_positions is None:  # every position
            B, L = input_ids.shape
            masked_positions = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
        return self.generator(x, word, mask, masked_positions, deterministic)

    def discriminate(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        segment_ids=None,
        *,
        deterministic=True,
    ):
        x, _, mask = self._embed(
            input_ids, attention_mask, token_type_ids, position_ids, segment_ids, deterministic
        )
        h_BxLxD = self.bert(x, mask, deterministic)
        return {"last_hidden_state": h_BxLxD, "rtd_logits": self.discriminator_predictions(h_BxLxD)}

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        segment_ids=None,
        masked_positions=None,
        *,
        deterministic=True,
    ):
        args = (input_ids, attention_mask, token_type_ids, position_ids, segment_ids)
        out = self.discriminate(*args, deterministic=deterministic)
        out["mlm_logits"] = self.generate(*args, masked_positions, deterministic=deterministic)
        return out
