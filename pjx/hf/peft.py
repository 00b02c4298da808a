"""Hugging Face PEFT LoRA adapter folders (adapter_config.json + adapter_model.safetensors).

PEFT names an adapted module by its Hugging Face path: `base_model.model.<module>.lora_A
.weight` [r, in] and `.lora_B.weight` [out, r]; heads trained in full (modules_to_save) as
`base_model.model.<module>.weight`. pjx keeps A [in, r] and B [r, out] as `lora_a` /
`lora_b` beside the adapted kernel (pjx.lora), so the two are transposes.
`init_from="peft:DIR"` loads the base model named by the adapter (a local Hugging Face
folder or a Hub id) with the adapter and heads on top; pjx.convert.to_peft writes one. DIR
may be a Hub id too (pjx.hf.hub).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import safetensors.numpy

import pjx.hf.mapping as mapping
from pjx.hf.folder import model_folder

PREFIX = "base_model.model."
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def module_name(family_table, pjx_module: str) -> str:
    """The Hugging Face name of a pjx module path (`bert/encoder/layer_0/.../query` ->
    `bert.encoder.layer.0....query`), as the family's mapping names its kernel."""
    return mapping.hf_key(family_table, f"{pjx_module}/kernel").removesuffix(".weight")


def read_config(folder) -> dict:
    path = model_folder(folder) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a PEFT adapter folder holds {CONFIG}")
    cfg = json.loads(path.read_text())
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type {cfg.get('peft_type')!r}; pjx reads LORA adapters")
    if cfg.get("use_dora") or cfg.get("use_rslora") or cfg.get("rank_pattern"):
        raise ValueError(f"{path}: DoRA / rsLoRA / per-module ranks are not supported")
    return cfg


def base_folder(folder, cfg: dict) -> str:
    """The local folder of the adapter's base model (a folder, or a Hub id fetched)."""
    base = cfg.get("base_model_name_or_path")
    try:
        if not base:
            raise FileNotFoundError("no base model named")
        return str(model_folder(base))
    except FileNotFoundError as e:
        raise ValueError(
            f"{model_folder(folder) / CONFIG}: base_model_name_or_path={base!r} is neither a "
            "local Hugging Face folder (config.json + model.safetensors) nor a Hub model pjx "
            f"can read; set it to the base model's folder.\n{e}"
        ) from None


def target_modules(adapted: list[str], dense: list[str]) -> list[str]:
    """PEFT's `target_modules` for the adapted modules (Hugging Face names) among all of a
    model's `dense` ones: their short names ("query") where those pick exactly them, as
    PEFT writes them; otherwise the full names."""
    leaves = {n.rsplit(".", 1)[-1] for n in adapted}
    if {n for n in dense if n.rsplit(".", 1)[-1] in leaves} == set(adapted):
        return sorted(leaves)
    return sorted(adapted)


def _pjx_pattern(name: str) -> str:
    """A PEFT target (a short name, or a full dotted module name) as a regex on pjx module
    paths, which mirror Hugging Face's with `layer.3` written `layer_3`."""
    path = re.sub(r"\.(\d+)(?=\.|$)", r"_\1", str(name)).replace(".", "/")
    return f"(^|/){re.escape(path)}$"


def lora_config(folder) -> dict:
    """`config.lora` fields of an adapter: rank, alpha, dropout, and its target modules as
    a regex on pjx paths."""
    cfg = read_config(folder)
    names = cfg.get("target_modules") or []
    if isinstance(names, str):
        raise ValueError(
            f"{Path(folder) / CONFIG}: target_modules is a regex ({names!r}); pjx reads "
            "adapters whose target_modules is a list of module names"
        )
    return dict(
        rank=int(cfg["r"]),
        alpha=float(cfg["lora_alpha"]),
        dropout=float(cfg.get("lora_dropout") or 0.0),
        targets="|".join(_pjx_pattern(n) for n in sorted(names)),
    )


def load_params(folder, family_table, base_values: dict, shapes: dict) -> dict:
    """{pjx path: array}: the base model's `base_values` with the adapter's lora_a / lora_b
    and fully trained heads. `shapes`: the pjx paths (unscanned) of the base model."""
    tensors = safetensors.numpy.load_file(model_folder(folder) / WEIGHTS)
    by_name = {module_name(family_table, p.removesuffix("/kernel")): p.removesuffix("/kernel")
               for p in shapes if p.endswith("/kernel")}  # fmt: skip
    values = dict(base_values)
    heads = {}
    for key, x in tensors.items():
        name = key.removeprefix(PREFIX).replace(".modules_to_save.default", "")
        m = re.fullmatch(r"(.+)\.lora_([AB])\.weight", name)
        if m is None:
            heads[name] = x
            continue
        if m.group(1) not in by_name:
            raise ValueError(f"{folder}: adapter tensor {key} names no module of the base model")
        leaf = "lora_a" if m.group(2) == "A" else "lora_b"
        values[f"{by_name[m.group(1)]}/{leaf}"] = np.asarray(x, np.float32).T
    missing = [p for p in shapes if p.rsplit("/", 1)[-1].startswith("lora_") and p not in values]
    if missing:
        raise ValueError(
            f"{folder}: the model adapts modules the adapter has no matrices for: "
            f"{sorted({p.rsplit('/', 1)[0] for p in missing})[:4]} (its lora.targets differ "
            "from the adapter's target_modules; leave lora.targets empty to take the adapter's)"
        )
    for path, shape in shapes.items():
        key = mapping.hf_key(family_table, path)
        if key in heads:
            values[path] = mapping.transform(family_table, path).to_pjx(heads[key], tuple(shape))
    return values
