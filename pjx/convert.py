"""Checkpoint conversions between pjx and Hugging Face (`pjx convert`).

`hf_to_pjx` writes DST as a pjx workdir holding one checkpoint, `DST/checkpoints/0/` with
`state/params/...` (Orbax), `config/` (the run config: `model` = family + every Config field)
and `tokenizer/` (the HF tokenizer files), so `init_from=DST` and `pjx.checkpoint.resolve(DST)`
work as with a training run. `pjx_to_hf` reads a workdir / checkpoint's params and saved model
config and writes a Hugging Face folder (config.json, model.safetensors, tokenizer files).
`merge_lora` turns a LoRA run into a plain workdir; `to_peft` writes its adapter as a Hugging
Face PEFT folder.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import safetensors.numpy
from flax import traverse_util

from pjx import checkpoint as ckpt
from pjx import hf, lora, models
from pjx.checkpoint.saved import Saved
from pjx.hf import mapping


def write_workdir(dst, params, config: dict, tokenizer_dir=None) -> Path:
    """A pjx workdir holding `params` as its one checkpoint (step 0) with `config` and the
    tokenizer folder; returns the step dir."""
    manager = ckpt.create_manager(Path(dst) / "checkpoints", keep=1, async_save=False)
    ckpt.save(
        manager, 0, {"params": params}, config=config, tokenizer_dir=tokenizer_dir, force=True
    )
    manager.wait_until_finished()
    manager.close()
    return ckpt.resolve(dst)


def hf_to_pjx(src, dst) -> Path:
    """Writes the HF folder `src` (a path or Hub id, `hf:` optional) as a pjx workdir `dst`;
    returns the checkpoint step dir."""
    src = hf.folder.model_folder(str(src).removeprefix("hf:"))  # a Hub id: its snapshot
    model, params = hf.load(src)
    family = hf.model_config(src)[0]
    config = {
        "model": {"name": family, **dataclasses.asdict(model.config)},
        "converted_from": f"hf:{Path(src).absolute()}",
    }
    with tempfile.TemporaryDirectory() as tok:
        has_tokenizer = bool(hf.folder.copy_tokenizer(hf.folder.model_folder(src), tok))
        return write_workdir(dst, params, config, tok if has_tokenizer else None)


def pjx_to_hf(src, dst) -> Path:
    """Writes the pjx checkpoint `src` (params + saved model config) as a HF folder `dst`."""
    saved = Saved(src)
    if saved.lora:
        raise ValueError(
            f"{src} is a LoRA run: merge its adapters first (pjx convert merge-lora {src} "
            "MERGED), then export MERGED; or write the adapter alone (pjx convert pjx-to-peft)"
        )
    fields, params = dict(saved.fields), saved.params()
    if fields.get("generator_size"):
        # ELECTRA: what it releases is the discriminator's encoder, a plain BERT (the
        # generator and the replaced-token head are training machinery, as in the paper).
        fields.update(generator_size=0.0, mlm_head=False, nsp_head=False, pooler=False)
        params = {"bert": params["bert"]}
    out = hf.save(saved.family, fields, params, dst)
    if saved.tokenizer_dir is not None:
        # The step's Orbax commit marker is not a tokenizer file.
        ignore = shutil.ignore_patterns(ckpt.COMMIT_MARKER)
        shutil.copytree(saved.tokenizer_dir, out, ignore=ignore, dirs_exist_ok=True)
    return out


# --------------------------------------------------------------------------- LoRA
def _lora_run(src) -> Saved:
    saved = Saved(src)
    if not saved.lora:
        raise ValueError(f"{src} is not a LoRA run (its config has lora.rank = 0)")
    return saved


def merge_lora(src, dst) -> Path:
    """Writes the LoRA run `src` as a plain pjx workdir `dst`: every adapted kernel
    W + (alpha / r) A B, no adapters, `lora.rank` 0 (then `pjx convert pjx-to-hf` exports
    it)."""
    saved = _lora_run(src)
    config = {
        **saved.raw_config,
        "lora": {**saved.lora, "rank": 0},
        "merged_from": str(saved.path),
    }
    return write_workdir(dst, saved.params(merged=True), config, saved.tokenizer_dir)


def _hf_base(source) -> str | None:
    """The Hugging Face folder a run started from (`init_from` hf: / peft:), absolute."""
    source = str(source or "")
    if source.startswith("peft:"):
        source = "hf:" + hf.peft_base(source[5:])
    if not source.startswith("hf:"):
        return None
    path = Path(source[3:])
    return str(path.resolve()) if path.is_dir() else source[3:]


PEFT_TASK = {"bert": "SEQ_CLS", "vit": "SEQ_CLS", "gpt2": "CAUSAL_LM", "t5": "SEQ_2_SEQ_LM",
             "llama": "CAUSAL_LM", "modernbert": "SEQ_CLS"}  # fmt: skip


def to_peft(src, dst) -> Path:
    """Writes the LoRA run `src` as a Hugging Face PEFT adapter folder: adapter_config.json
    + adapter_model.safetensors (lora_A [r, in], lora_B [out, r] per adapted module, and
    the fully trained heads as PEFT's modules_to_save), which
    `peft.PeftModel.from_pretrained(base, dst)` loads onto the HF base model."""
    saved = _lora_run(src)
    config, cfg, family = saved.raw_config, saved.lora, saved.family
    flat = models.unstack_layers(traverse_util.flatten_dict(saved.params(merged=False), sep="/"))
    table = hf.table(family, config.get("model"))
    tensors, modules = {}, []
    for path, a in flat.items():
        if not path.endswith("/lora_a"):
            continue
        module = path.removesuffix("/lora_a")
        name = hf.peft.module_name(table, module)
        modules.append(name)
        tensors[f"{hf.peft.PREFIX}{name}.lora_A.weight"] = np.asarray(a, np.float32).T
        tensors[f"{hf.peft.PREFIX}{name}.lora_B.weight"] = np.asarray(flat[f"{module}/lora_b"]).T
    is_head = re.compile(cfg.get("trainable") or lora.HEADS[family]).search
    heads = {p: x for p, x in flat.items() if is_head(p)}
    dense = [
        hf.peft.module_name(table, p.removesuffix("/kernel"))
        for p in flat
        if p.endswith("/kernel") and not is_head(p)
    ]
    head_tensors, _ = mapping.to_hf(table, heads)
    tensors.update({hf.peft.PREFIX + k: v for k, v in head_tensors.items()})
    to_save = sorted({hf.peft.module_name(table, p.rsplit("/", 1)[0]).split(".")[0] for p in heads})
    base = _hf_base(config.get("init_from"))
    adapter_config = {
        "peft_type": "LORA",
        "task_type": PEFT_TASK[family],
        "r": int(cfg["rank"]),
        "lora_alpha": float(cfg["alpha"]),
        "lora_dropout": float(cfg.get("dropout") or 0.0),
        "target_modules": hf.peft.target_modules(modules, dense),
        "modules_to_save": to_save or None,
        "bias": "none",
        "fan_in_fan_out": family == "gpt2",  # GPT-2's Conv1D keeps weights as [in, out]
        "inference_mode": True,
        "init_lora_weights": True,
        "base_model_name_or_path": base,
    }
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    (out / hf.peft.CONFIG).write_text(json.dumps(adapter_config, indent=2) + "\n")
    arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
    safetensors.numpy.save_file(
        arrays, out / "adapter_model.safetensors", metadata={"format": "pt"}
    )
    return out
