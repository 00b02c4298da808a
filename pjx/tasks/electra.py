"""`electra`: replaced-token detection (Clark et al. 2020, "ELECTRA: Pre-training Text
Encoders as Discriminators Rather Than Generators").

One jitted step, one loss, one parameter tree (pjx.models.electra): mask 15% of the tokens
(85% of them become [MASK], the rest stay: ELECTRA's `pretrain_helpers.mask`), the small
generator predicts them (an MLM loss), a token is sampled from its softmax at every masked
position (Gumbel noise, on device, no gradient through the sample), and the discriminator
reads the corrupted text and tells, at every non-padding token, whether it was replaced.
Loss = MLM + `rtd_weight` x discriminator loss (50 in the paper, sec. 3.1 and Table 6).

Options: `config.electra.generator_size` (the generator's width as a fraction of the
discriminator's; 1/4 in the paper) and `config.electra.rtd_weight` live in the run
config's `electra` block (pjx.config folds it into the task's arguments); `mask_rate`,
`max_predictions` and the sampling `temperature` are `task_args`. Data and encoding are
`mlm`'s (rows of `[CLS] text [SEP]`, without NSP pairs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import pjx.tasks.base as base
from pjx import losses, masking
from pjx.tasks.mlm import MLM

# The `config.electra` block (pjx.config.base_config): ELECTRA-Small / -Base's settings.
DEFAULTS = dict(generator_size=0.25, rtd_weight=50.0)


class Electra(MLM):
    name = "electra"
    section = "electra"
    defaults = dict(mask_rate=0.15, max_predictions=None, temperature=1.0, **DEFAULTS)

    def loss(
        self,
        model,
        params,
        batch,
        rng,
        *,
        train,
        mask_id,
        vocab_size,
        special_ids=(),
        pad_id=0,
        mask_rate=0.15,
        max_predictions=None,
        temperature=1.0,
        generator_size=0.25,  # fixes the model (model_fields), not the loss
        rtd_weight=50.0,
    ):
        del generator_size
        k_mask, k_sample, k_gen, k_disc = jax.random.split(rng, 4)
        ids = batch["input_ids"]
        inputs = dict(
            attention_mask=batch.get("attention_mask"),
            token_type_ids=batch.get("token_type_ids"),
            position_ids=batch.get("position_ids"),
            segment_ids=batch.get("segment_ids"),
        )
        m = self.mask(k_mask, ids, mask_id, vocab_size, special_ids, pad_id, mask_rate,
                      max_predictions, mask_fraction=0.85, random_fraction=0.0)  # fmt: skip
        w = base.weight(batch, ids.shape[0])
        mlm_logits = base.apply(
            model,
            params,
            k_gen,
            train,
            m["input_ids"],
            masked_positions=m["masked_positions"],
            method="generate",
            **inputs,
        )
        mlm_loss, mets = losses.masked_lm(
            mlm_logits, m["masked_targets"], m["masked_weights"] * w[:, None]
        )
        sampled = masking.gumbel_sample(k_sample, mlm_logits, temperature)
        fake = masking.replace_tokens(ids, m["masked_positions"], sampled, m["masked_weights"])
        out = base.apply(
            model, params, k_disc, train, fake["input_ids"], method="discriminate", **inputs
        )
        # Every real token is judged (ELECTRA weighs by input_mask), padding rows not at all.
        real = batch.get("attention_mask")
        real = 1.0 if real is None else real.astype(jnp.float32)
        rtd_loss, rm = losses.replaced_token_detection(
            out["rtd_logits"], fake["labels"], real * w[:, None]
        )
        mets = dict(
            mets,
            rtd_loss_sum=rm["loss_sum"],
            rtd_weighted_loss_sum=rtd_weight * rm["loss_sum"],
            rtd_count=rm["count"],
            rtd_correct=rm["correct"],
            replaced=rm["positives"],
        )
        return mlm_loss + rtd_weight * rtd_loss, mets

    def finalize(self, m) -> dict:
        out = base.lm_finalize(m)  # the generator's MLM loss / accuracy / perplexity
        rc = max(float(m["rtd_count"]), 1e-12)
        out["mlm_loss"], out["mlm_accuracy"] = out["loss"], out["accuracy"]
        out["rtd_loss"] = float(m["rtd_loss_sum"]) / rc
        out["rtd_accuracy"] = float(m["rtd_correct"]) / rc
        out["replaced_fraction"] = float(m["replaced"]) / rc
        out["loss"] = out["mlm_loss"] + float(m["rtd_weighted_loss_sum"]) / rc
        return out

    def model_fields(self, family, args) -> dict:
        # mlm_head: the init inputs carry masked positions (the generator's head).
        return {"mlm_head": True, "nsp_head": False, "generator_size": args["generator_size"]}

    def check_model(self, model_config) -> None:
        if not 0.0 < float(model_config.generator_size) <= 1.0:
            raise ValueError(
                f"electra.generator_size={model_config.generator_size}: the generator's "
                "width as a fraction of the discriminator's, in (0, 1] (the paper: 0.25)"
            )

    # Data: mlm's rows, never NSP pairs.
    def encoding_key(self, args, seed) -> dict:
        return super().encoding_key({**args, "nsp": False}, seed)

    def encode(self, ex, tokenizer, data_cfg, args, seed):
        return super().encode(ex, tokenizer, data_cfg, {**args, "nsp": False}, seed)

    def batch_spec(self, batch_size, data_cfg, model_config, args) -> dict:
        return super().batch_spec(batch_size, data_cfg, model_config, {**args, "nsp": False})
