"""Checkpoint conversions between pjx and Hugging Face (`pjx convert`).

`hf_to_pjx` writes DST as a pjx workdir holding one checkpoint, `DST/checkpoints/0/` with
`state/params/...` (Orbax), `config/` (the run config: `model` = family + every Config field)
and `tokenizer/` (the HF tokenizer files), so `init_from=DST` and `pjx.checkpoint.resolve(DST)`
work as with a training run. `pjx_to_hf` reads a workdir / checkpoint's params and saved model
config and writes a Hugging Face folder (config.json, model.safetensors, tokenizer files).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from pjx import checkpoint as ckpt
from pjx import hf, init_from


def hf_to_pjx(src, dst) -> Path:
    """Writes the HF folder `src` as a pjx workdir `dst`; returns the checkpoint step dir."""
    model, params = hf.load(src)
    family = hf.model_config(src)[0]
    config = {
        "model": {"name": family, **dataclasses.asdict(model.config)},
        "converted_from": f"hf:{Path(src).absolute()}",
    }
    manager = ckpt.create_manager(Path(dst) / "checkpoints", keep=1, async_save=False)
    with tempfile.TemporaryDirectory() as tok:
        has_tokenizer = bool(hf.folder.copy_tokenizer(hf.folder.model_folder(src), tok))
        ckpt.save(
            manager,
            0,
            {"params": params},
            config=config,
            tokenizer_dir=tok if has_tokenizer else None,
            force=True,
        )
        manager.wait_until_finished()
    manager.close()
    return ckpt.resolve(dst)


def read_params(source) -> dict:
    """The `params` subtree of a pjx checkpoint (workdir / checkpoints dir / step dir), numpy."""
    step = ckpt.resolve(source).absolute()  # Orbax restores from absolute paths only
    meta = ckpt.state_metadata(step)
    if "params" not in meta:
        raise ValueError(f"checkpoint {step} has no 'params' in its state (found {sorted(meta)})")
    item = {"params": jax.tree.map(lambda _: 0, meta["params"])}
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    out = ocp.PyTreeCheckpointer().restore(
        step / "state",
        args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True),
    )
    return out["params"]


def pjx_to_hf(src, dst) -> Path:
    """Writes the pjx checkpoint `src` (params + saved model config) as a HF folder `dst`."""
    family, fields = init_from.source_model(src)
    out = hf.save(family, fields, read_params(src), dst)
    tok = ckpt.tokenizer_dir(src)
    if tok is not None:
        # The step's Orbax commit marker is not a tokenizer file.
        ignore = shutil.ignore_patterns(ckpt.COMMIT_MARKER)
        shutil.copytree(tok, out, ignore=ignore, dirs_exist_ok=True)
    return out
