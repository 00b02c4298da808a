"""Hugging Face interop: BERT, GPT-2, ViT, T5 v1.1 and Llama-family (Llama, Qwen2 / 2.5 /
3, Mistral) safetensors checkpoints in and out.

    family, fields = pjx.hf.model_config(path)   # config.json -> pjx Config fields
    params = pjx.hf.load_params(path)            # what init_from="hf:PATH" loads
    model, params = pjx.hf.load("bert-base-uncased")  # a Hub id (pjx.hf.hub)
    model, params = pjx.hf.load(path)            # model.apply({"params": params}, input_ids=...)
    pjx.hf.save("bert", model.config, params, out_dir)  # a folder transformers loads

`path` is a model folder (config.json + model.safetensors or a sharded index), or a Hugging
Face Hub id `NAME` / `ORG/NAME[@REVISION]` fetched into Hugging Face's cache. Each family
module (`pjx/hf/<family>.py`) is a table: MODEL_TYPE, PREFIX (base-model prefix a checkpoint
may omit), RENAMES and KERNELS (see `mapping`), IGNORED (checkpoint buffers / tied copies),
ALIASES (other keys a tensor may be stored under), OPTIONAL (pjx parameters a checkpoint may
lack), PJX_ONLY (pjx parameters with no HF counterpart), and the two config translations
`config_from_hf(config_json, tensors)` / `config_to_hf(Config)`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from pjx import models
from pjx.hf import (
    bert,
    distilbert,
    folder,
    gpt2,
    hub,
    llama,
    mapping,
    modernbert,
    peft,
    roberta,
    t5,
    vit,
)  # fmt: skip

log = logging.getLogger(__name__)

# family -> HF table
FAMILIES = {"bert": bert, "gpt2": gpt2, "vit": vit, "t5": t5, "llama": llama,
            "modernbert": modernbert}  # fmt: skip
# Hugging Face model types that are pjx BERTs of another `variant`, with their tables.
BERT_VARIANTS = {"roberta": roberta, "distilbert": distilbert}
_BY_MODEL_TYPE = {m.MODEL_TYPE: name for name, m in FAMILIES.items()}
_BY_MODEL_TYPE.update({m.MODEL_TYPE: "bert" for m in BERT_VARIANTS.values()})
_TABLES = {m.MODEL_TYPE: m for m in [*FAMILIES.values(), *BERT_VARIANTS.values()]}
# Qwen2, Qwen3 and Mistral are the Llama layout with switches (pjx.hf.llama).
_BY_MODEL_TYPE.update({t: "llama" for t in llama.MODEL_TYPES})
_TABLES.update({t: llama for t in llama.MODEL_TYPES})


def table(family: str, config=None):
    """The Hugging Face mapping of a pjx model: its family's, or for a BERT its variant's
    (RoBERTa, DistilBERT). `config`: the family `Config` or a dict of its fields."""
    if family != "bert":
        return FAMILIES[family]
    if isinstance(config, dict):
        variant = config.get("variant") or "bert"
    else:
        variant = getattr(config, "variant", "bert")
    return BERT_VARIANTS[variant] if variant != "bert" else FAMILIES[family]


_SHOW = 12  # names listed in a report line


def _names(items) -> str:
    items = list(items)
    more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def _open(path):
    """(family, Config fields, Tensors) of a HF model folder."""
    cfg = folder.read_config(path)
    model_type = cfg.get("model_type")
    if model_type not in _BY_MODEL_TYPE:
        raise ValueError(
            f"{path}: config.json model_type={model_type!r} is not supported; pjx imports "
            f"{sorted(_BY_MODEL_TYPE)} (BERT, RoBERTa, DistilBERT, ModernBERT, GPT-2, ViT, T5 "
            "v1.1, Llama, Qwen2 / 2.5 / 3, Mistral)."
        )
    family = _BY_MODEL_TYPE[model_type]
    tensors = folder.Tensors(path)
    try:
        fields = _TABLES[model_type].config_from_hf(cfg, tensors)
    except KeyError as e:
        missing = e.args[0]
        raise ValueError(f"{path}: config.json has no {missing!r} (needed for {family})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return family, fields, tensors


def model_config(path) -> tuple[str, dict]:
    """(family name, pjx `Config` fields) of the HF model folder `path`, heads included."""
    family, fields, _ = _open(path)
    return family, fields


def _as_config(family: str, config):
    """A family `Config` from a `Config` or a dict of its fields (name / size keys ignored)."""
    if isinstance(config, models.MODELS[family].Config):
        return config
    if dataclasses.is_dataclass(config):
        raise TypeError(f"expected a {family} Config, got {type(config).__name__}")
    fields = {k: v for k, v in dict(config).items() if k not in ("name", "size")}
    return models.make_config(family, None, **fields)


def _init_fn(family: str, config):
    model = models.MODELS[family].Model(config)
    inputs = models.example_inputs(family, config, batch_size=1)
    return model, lambda rng: nn.meta.unbox(model.init(rng, **inputs)["params"])


def _shapes(family: str, config) -> dict[str, tuple]:
    """pjx parameter path -> shape in the unscanned layout (Hugging Face's: one module per
    layer), without allocating anything."""
    _, init = _init_fn(family, dataclasses.replace(config, scan_layers=False))
    abstract = jax.eval_shape(init, jax.random.key(0))
    return {p: tuple(x.shape) for p, x in traverse_util.flatten_dict(abstract, sep="/").items()}


def _import(path):
    """(family, Config, flat params found, optional params missing) from a HF folder."""
    family, fields, tensors = _open(path)
    config = _as_config(family, fields)
    fam = table(family, config)
    values, missing, unused = mapping.to_pjx(fam, tensors, _shapes(family, config), where=path)
    required = [p for p in missing if not any(re.search(r, p) for r in fam.OPTIONAL)]
    if required:
        keys = [mapping.hf_key(fam, p) for p in required]
        raise ValueError(
            f"{path}: the checkpoint has no tensor for {len(required)} pjx parameter(s) that "
            f"config.json implies: {_names(required)} (looked for: {_names(keys)})"
        )
    if unused:
        log.info(
            f"hf: {len(unused)} tensor(s) in {path} not used by pjx's {family}: {_names(unused)}"
        )
    return family, config, values, missing


def load_params(path) -> dict:
    """The pjx params pytree (float32 numpy) of every parameter the HF checkpoint holds."""
    _, _, values, _ = _import(path)
    return traverse_util.unflatten_dict(values, sep="/")


def peft_base(adapter) -> str:
    """The local Hugging Face folder a PEFT adapter folder was trained on."""
    return peft.base_folder(adapter, peft.read_config(adapter))


def load_peft(adapter, shapes: dict) -> dict:
    """{pjx path: array}: a PEFT adapter folder's base model with its LoRA matrices and
    fully trained heads, for the pjx paths `shapes` (unscanned) of the model they go into."""
    family, config, values, _ = _import(peft_base(adapter))
    return peft.load_params(adapter, table(family, config), values, shapes)


def load(path, *, seed: int = 0):
    """(model, params) for `model.apply({"params": params}, ...)`. Parameters the checkpoint
    may lack (BERT's pooler in a BertForMaskedLM) are freshly initialised from `seed`."""
    family, config, values, missing = _import(path)
    model, init = _init_fn(family, config)
    if missing:
        fresh = traverse_util.flatten_dict(jax.jit(init)(jax.random.key(seed)), sep="/")
        values.update({p: fresh[p] for p in missing})
        log.info(f"hf: not in {path}, freshly initialised: {_names(missing)}")
    return model, jax.device_put(traverse_util.unflatten_dict(values, sep="/"))


def save(family: str, model_config, params, out_dir) -> Path:
    """Writes `out_dir/config.json` + `model.safetensors` that transformers loads with the
    same outputs. `model_config`: the family's `Config` or a dict of its fields."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(FAMILIES)}")
    config = _as_config(family, model_config)
    fam = table(family, config)
    # Hugging Face keeps one module per layer: a scanned model's stacked layers are split.
    flat = models.unstack_layers(traverse_util.flatten_dict(nn.meta.unbox(params), sep="/"))
    want = _shapes(family, config)
    bad = [
        f"{p}: params {tuple(np.shape(flat[p]))} vs config {s}"
        for p, s in want.items()
        if p in flat and tuple(np.shape(flat[p])) != s
    ]
    bad += [f"{p}: missing from params" for p in want if p not in flat]
    bad += [f"{p}: not a parameter of this config" for p in flat if p not in want]
    if bad:
        raise ValueError(f"params do not match the {family} config:\n  " + "\n  ".join(bad[:20]))
    tensors, skipped = mapping.to_hf(fam, {p: jax.device_get(x) for p, x in flat.items()})
    out = folder.write(out_dir, fam.config_to_hf(config), tensors)
    if skipped:
        log.info(f"hf: no Hugging Face counterpart, not exported: {_names(skipped)}")
    return out


__all__ = [
    "FAMILIES",
    "hub",
    "table",
    "load",
    "load_params",
    "model_config",
    "save",
]
