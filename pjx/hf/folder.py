"""Hugging Face model folders on disk: config.json, safetensors weights, tokenizer files.

Only safetensors are read: a PyTorch `.bin` / `.pt` / `.ckpt` file is a pickle, and
unpickling runs whatever code the file contains. Sharded checkpoints
(`model.safetensors.index.json` + `model-0000x-of-0000n.safetensors`) are read through
their index. A folder may be named by a Hugging Face Hub id (`model_folder`, pjx.hf.hub).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

import pjx.hf.hub as hub

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
OTHER_WEIGHTS = ("*.h5", "*.msgpack")  # TensorFlow / Flax weights: also not read
# Files a tokenizer may need, for every tokenizer kind transformers / pjx write.
TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "merges.txt",
)


# What is fetched from the Hub: what this module reads, and PEFT adapters (pjx.hf.peft).
HUB_FILES = (
    "config.json",
    SINGLE,
    INDEX,
    "model-*-of-*.safetensors",
    "adapter_config.json",
    "adapter_model.safetensors",
    *TOKENIZER_FILES,
)


def model_folder(path) -> Path:
    """The local folder `path` names: a folder (or a file in one) when it exists; otherwise
    the Hub repository `NAME` / `ORG/NAME[@REVISION]`, from Hugging Face's cache or
    downloaded into it (pjx.hf.hub)."""
    ref = str(path)
    path = Path(ref).expanduser()
    if path.is_file():  # a config.json or a weights file inside the folder
        path = path.parent
    if path.is_dir():
        return path
    if hub.parse(ref) is not None:
        return hub.download(ref, HUB_FILES)
    raise FileNotFoundError(f"Hugging Face model folder not found: {path}")


def local_source(source):
    """`hf:REF` / `peft:REF` with REF a local folder (`model_folder`: a Hub id is fetched);
    any other source unchanged."""
    text = str(source)
    for prefix in ("hf:", "peft:"):
        if text.startswith(prefix):
            return prefix + str(model_folder(text[len(prefix) :]))
    return source


def read_config(path) -> dict:
    """The folder's config.json as a dict."""
    file = model_folder(path) / "config.json"
    if not file.exists():
        raise FileNotFoundError(
            f"{file} not found: a Hugging Face model folder holds config.json next to "
            "model.safetensors (write both with transformers' `model.save_pretrained(DIR)`)."
        )
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None


def _refuse_pickles(folder: Path):
    found = sorted(p.name for pat in PICKLES + OTHER_WEIGHTS for p in folder.glob(pat))
    what = ", ".join(found) if found else "no weights file"
    raise FileNotFoundError(
        f"{folder} has no {SINGLE} (or {INDEX}); found: {what}.\n"
        "pjx reads safetensors only: PyTorch .bin/.pt/.ckpt files are Python pickles, and "
        "loading a pickle executes arbitrary code from the file.\n"
        "Convert it once with transformers, in an environment you trust:\n"
        "  from transformers import AutoModelForPreTraining  # or the class the checkpoint "
        "was saved from\n"
        f"  model = AutoModelForPreTraining.from_pretrained({str(folder)!r})\n"
        "  model.save_pretrained(NEW_DIR, safe_serialization=True)\n"
        "then copy the tokenizer files into NEW_DIR and point pjx at NEW_DIR."
    )


class Tensors:
    """The named tensors of a folder's safetensors checkpoint (single file or sharded).

    Reads only the headers on construction; `get` memory-maps the tensors it is asked for.
    """

    def __init__(self, path):
        folder = model_folder(path)
        self.folder = folder
        if (folder / INDEX).exists():
            index = json.loads((folder / INDEX).read_text())
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{folder / INDEX}: no 'weight_map' object")
            missing = sorted({f for f in weight_map.values() if not (folder / f).exists()})
            if missing:
                raise FileNotFoundError(f"{folder / INDEX} names missing shard(s): {missing}")
            files = sorted(set(weight_map.values()))
        elif (folder / SINGLE).exists():
            files = [SINGLE]
        else:
            _refuse_pickles(folder)
        self._file, self._shape = {}, {}
        for name in files:
            with safetensors.safe_open(folder / name, framework="np") as f:
                for key in f.keys():
                    self._file[key] = folder / name
                    self._shape[key] = tuple(f.get_slice(key).get_shape())

    def keys(self) -> list[str]:
        return list(self._file)

    def __contains__(self, key) -> bool:
        return key in self._file

    def shape(self, key: str) -> tuple:
        return self._shape[key]

    def get(self, keys) -> dict[str, np.ndarray]:
        """{key: float32 array}, opening each shard once."""
        by_file: dict[Path, list[str]] = {}
        for k in keys:
            by_file.setdefault(self._file[k], []).append(k)
        out = {}
        for file, names in by_file.items():
            with safetensors.safe_open(file, framework="np") as f:
                for k in names:
                    out[k] = np.asarray(f.get_tensor(k), dtype=np.float32)
        return out


def write(out_dir, hf_config: dict, tensors: dict[str, np.ndarray]) -> Path:
    """Writes `config.json` and `model.safetensors` (float32) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    # transformers refuses safetensors without a "format" entry in the metadata.
    safetensors.numpy.save_file(arrays, out / SINGLE, metadata={"format": "pt"})
    return out


def copy_tokenizer(src, dst) -> list[str]:
    """Copies the tokenizer files found in folder `src` into `dst`; returns their names."""
    src, dst = Path(src), Path(dst)
    names = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    if names:
        dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy2(src / n, dst / n)
    return names
