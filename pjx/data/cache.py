"""Pre-tokenised / pre-encoded arrays on disk, so no epoch (and no resumed run) re-tokenises.

An entry is a folder of `.npy` arrays plus `meta.json`, named by a hash of everything that
determines its content: the source (paths, sizes, mtimes; TFDS folder and version), the
reader settings, the tokenizer (a hash of its saved files), the task, model family and
lengths. It is written into a temporary folder and renamed into place, so a crash or a
concurrent writer never leaves a half-written entry. Arrays load memory-mapped.

Where: `data.cache_dir`, else DATA_DIR/pjx_cache (if `data.data_dir` is set and writable),
else WORKDIR/data_cache, else ~/.cache/pjx/data ($XDG_CACHE_HOME respected).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable

import numpy as np

VERSION = 1
log = logging.getLogger(__name__)


def root(cfg, workdir: str | None = None) -> str:
    if cfg.get("cache_dir", ""):
        return os.path.expanduser(cfg.cache_dir)
    data_dir = os.path.expanduser(cfg.get("data_dir", "") or "")
    if data_dir and os.path.isdir(data_dir) and os.access(data_dir, os.W_OK):
        return os.path.join(data_dir, "pjx_cache")
    if workdir:
        return os.path.join(workdir, "data_cache")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pjx", "data")


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's saved files (or, without `save`, of its behaviour)."""
    if tokenizer is None:
        return "none"
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    if hasattr(tokenizer, "save"):
        with tempfile.TemporaryDirectory() as d:
            tokenizer.save(d)
            for dirpath, _, files in sorted(os.walk(d)):
                for name in sorted(files):
                    path = os.path.join(dirpath, name)
                    h.update(os.path.relpath(path, d).encode())
                    with open(path, "rb") as f:
                        h.update(f.read())
    else:
        probe = "The quick brown fox, 123 [x] \u00e9t\u00e9\n"
        h.update(json.dumps([int(tokenizer.vocab_size), list(tokenizer.encode(probe))]).encode())
    ids = [getattr(tokenizer, f"{k}_id", None) for k in ("pad", "cls", "sep", "mask", "eos")]
    h.update(json.dumps(ids).encode())
    return h.hexdigest()[:16]


def entry_name(parts: dict) -> str:
    blob = json.dumps(dict(parts, _version=VERSION), sort_keys=True, default=str)
    return f"{parts.get('kind', 'data')}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"


def load(path: str) -> dict[str, np.ndarray] | None:
    meta = os.path.join(path, "meta.json")
    if not os.path.isfile(meta):
        return None
    with open(meta) as f:
        names = json.load(f)["arrays"]
    return {k: np.load(os.path.join(path, k + ".npy"), mmap_mode="r") for k in names}


def write(path: str, arrays: dict[str, np.ndarray], parts: dict) -> None:
    """Atomic: a temporary sibling folder renamed into place (first writer wins)."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{os.path.basename(path)}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        for k, v in arrays.items():
            np.save(os.path.join(tmp, k + ".npy"), np.ascontiguousarray(v), allow_pickle=False)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"arrays": list(arrays), "key": parts}, f, indent=1, default=str)
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "meta.json")):
            shutil.rmtree(path, ignore_errors=True)  # stale: not written by `write`
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished the same entry first
            if not os.path.isfile(os.path.join(path, "meta.json")):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def cached(
    directory: str | None, parts: dict, build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The arrays for `parts`, from `directory` when there, else built and stored."""
    if directory is None:
        return build()
    path = os.path.join(directory, entry_name(parts))
    arrays = load(path)
    if arrays is not None:
        return arrays
    t0 = time.perf_counter()
    arrays = build()
    write(path, arrays, parts)
    rows = len(next(iter(arrays.values())))
    log.info(
        f"data: encoded {parts.get('source')} into {path} "
        f"({rows} rows, {time.perf_counter() - t0:.1f}s)"
    )
    return load(path)
