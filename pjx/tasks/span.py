"""`span`: T5 span-corruption pretraining (Raffel et al. 2020, sec. 3.1.4).

Encoding: all documents concatenated and cut into rows of exactly L tokens, no padding
(T5's `reduce_concat_tokens` + `split_tokens`). Corruption (noise density, mean span
length, sentinels) happens on device inside the jitted step from the step's rng.
"""

from __future__ import annotations

import jax
import numpy as np

import pjx.tasks.base as base
from pjx import masking, packing
from pjx.tasks.seq2seq import teacher_forced


class Span(base.Task):
    name = "span"
    packs = "always"
    families = ("t5",)
    unit = "tokens"
    defaults = dict(noise_density=0.15, mean_noise_span_length=3.0, label_smoothing=0.0)

    def loss(
        self,
        model,
        params,
        batch,
        rng,
        *,
        train,
        first_sentinel_id,
        eos_id,
        sentinel_direction=-1,
        noise_density=0.15,
        mean_noise_span_length=3.0,
        label_smoothing=0.0,
    ):
        k_mask, k_drop = jax.random.split(rng)
        ids = batch["input_ids"]
        c = masking.span_corrupt(
            k_mask,
            ids,
            noise_density=noise_density,
            mean_noise_span_length=mean_noise_span_length,
            first_sentinel_id=first_sentinel_id,
            sentinel_direction=sentinel_direction,
            eos_id=eos_id,
        )
        w = base.weight(batch, ids.shape[0])
        return teacher_forced(
            model,
            params,
            c["input_ids"],
            c["attention_mask"],
            c["labels"],
            c["decoder_attention_mask"],
            w,
            k_drop,
            train,
            label_smoothing,
        )

    def finalize(self, m) -> dict:
        return base.lm_finalize(m)

    def runtime_args(self, args, tokenizer, model_config) -> dict:
        args = dict(args)
        if tokenizer is not None:
            if tokenizer.eos_id is not None:
                args.setdefault("eos_id", int(tokenizer.eos_id))
            sentinels = tokenizer.sentinel_ids
            if sentinels:
                args.setdefault("first_sentinel_id", int(sentinels[0]))
                if len(sentinels) > 1:
                    args.setdefault("sentinel_direction", int(np.sign(sentinels[1] - sentinels[0])))
        # T5's layout without a tokenizer: eos 1, sentinels counting down from the top id.
        args.setdefault("eos_id", 1)
        args.setdefault("first_sentinel_id", model_config.vocab_size - 1)
        return super().runtime_args(args, tokenizer, model_config)

    def encode(self, ex, tokenizer, data_cfg, args, seed):
        base.require_text(ex, self.name)
        docs = packing.tokenize(tokenizer, packing.documents(ex, data_cfg.get("pack") == "stream"))
        return packing.concat_rows(docs, int(data_cfg["seq_len"]))

    def make_batch(self, rows, rng, data_cfg, train) -> dict:
        return {"input_ids": rows["input_ids"]}

    def batch_spec(self, batch_size, data_cfg, model_config, args) -> dict:
        return base.ids_spec(batch_size, int(data_cfg["seq_len"]), "input_ids")
