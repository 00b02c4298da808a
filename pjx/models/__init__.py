"""Model families and the one place that builds them from a name and a size preset."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from pjx.models import bert, gpt2, t5, vit

MODELS = {"bert": bert, "gpt2": gpt2, "t5": t5, "vit": vit}


def make_config(name: str, size: str | None = "tiny", **overrides):
    """`Config` of family `name` at preset `size` (None: the dataclass defaults), with
    field overrides; an unknown field is an error listing the valid ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    family = MODELS[name]
    if size is not None and size not in family.PRESETS:
        raise ValueError(f"unknown {name} size {size!r}; choose from {sorted(family.PRESETS)}")
    valid = [f.name for f in dataclasses.fields(family.Config)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown {name} config field(s) {unknown}; valid fields: {valid}")
    preset = family.PRESETS[size] if size is not None else {}
    return family.Config(**{**preset, **overrides})


def create(name: str, size: str = "tiny", **overrides):
    """The Linen `Model` of family `name`; its config is `model.config`."""
    return MODELS[name].Model(make_config(name, size, **overrides))


def example_inputs(name: str, config, batch_size: int = 2, seq_len: int | None = None) -> dict:
    """Arrays shaped like a real batch, for `Model.init` / `jax.eval_shape`."""
    B = batch_size
    if name == "vit":
        shape = (B, config.image_size, config.image_size, config.num_channels)
        return {"pixel_values": jnp.zeros(shape, jnp.float32)}
    L = seq_len or min(config.max_position_embeddings, 128)
    ids = jnp.zeros((B, L), jnp.int32)
    ones = jnp.ones((B, L), jnp.int32)
    if name == "bert":
        out = {"input_ids": ids, "attention_mask": ones, "token_type_ids": ids}
        if config.mlm_head:
            out["masked_positions"] = jnp.zeros((B, max(1, L // 8)), jnp.int32)
        return out
    if name == "gpt2":
        return {"input_ids": ids, "attention_mask": ones}
    if name == "t5":
        return {
            "input_ids": ids,
            "attention_mask": ones,
            "decoder_input_ids": ids,
            "decoder_attention_mask": ones,
        }
    raise ValueError(f"unknown model {name!r}")
