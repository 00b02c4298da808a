"""Local files: paths and globs, gzip, UTF-8 text, documents, and MNIST-style idx arrays.

Readers of the `text:` and `idx:` sources live here; each returns `Examples`.
"""

from __future__ import annotations

import glob
import gzip
import os
import re
import zlib

import numpy as np

from pjx.examples import DataError, Examples
from pjx.uri import Uri


def expand(pattern: str) -> list[str]:
    """A path or glob -> sorted existing files, or a DataError saying what is missing."""
    pattern = os.path.expanduser(pattern)
    if any(c in pattern for c in "*?["):
        paths = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
        if not paths:
            raise DataError(f"{pattern}: no files match this pattern")
        return paths
    if os.path.isdir(pattern):
        raise DataError(f"{pattern}: is a folder; give a file or a glob like {pattern}/*.txt")
    if not os.path.isfile(pattern):
        raise DataError(f"{pattern}: no such file")
    return [pattern]


def read_bytes(path: str) -> bytes:
    """File bytes, gunzipped when the file starts with the gzip magic."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: not a valid gzip file ({e})") from None
    return data


def read_text(path: str) -> str:
    """A UTF-8 text file (gzip or not); empty files and invalid UTF-8 name file and line."""
    data = read_bytes(path)
    if not data.strip():
        raise DataError(f"{path}: file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: invalid UTF-8 (byte 0x{data[e.start]:02x} at column {col}); "
            "re-encode the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def split_documents(text: str, mode: str, path: str = "") -> list[str]:
    """`line`: every line (blank ones too, so slices count lines); `blank_line`:
    paragraphs separated by blank lines; `file`: the whole text."""
    if mode == "line":
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [s.removesuffix("\r") for s in lines]
    if mode == "blank_line":
        return [p.strip() for p in re.split(r"\n[ \t\r]*\n", text) if p.strip()]
    if mode == "file":
        return [text]
    raise DataError(f"data.text_split={mode!r} ({path}): use 'line', 'blank_line' or 'file'")


def read_text_source(uri: Uri, cfg, need_labels: bool = False, num_labels: int = 0) -> Examples:
    if need_labels:
        raise DataError(f"{uri.raw}: plain text has no labels; use a tsv: or tfds: source")
    docs: list[str] = []
    for path in expand(uri.path):
        docs += split_documents(read_text(path), cfg.get("text_split", "line"), path)
    return Examples(origin=uri.raw, texts=docs)


# -------------------------------------------------------------------------------- idx
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """An idx file (LeCun et al.'s MNIST format): magic 0x0000 TT NN, NN big-endian dims."""
    data = read_bytes(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an idx file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated idx header")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    want = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != want:
        raise DataError(
            f"{path}: idx header says shape {dims} ({want} bytes) but the file holds "
            f"{len(data) - header} bytes of data; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(folder: str, prefix: str, kind: str) -> str:
    names = [f"{prefix}-{kind}-ubyte", f"{prefix}-{kind.replace('-', '.')}-ubyte"]
    for name in names:
        for cand in (name, name + ".gz"):
            path = os.path.join(folder, cand)
            if os.path.isfile(path):
                return path
    raise DataError(f"{folder}: no {names[0]}[.gz] file (idx source)")


def read_idx_source(uri: Uri, cfg, need_labels: bool = False, num_labels: int = 0) -> Examples:
    folder = os.path.expanduser(uri.path)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such folder (idx:DIR wants a folder of idx files)")
    prefix = {"": "train", "test": "t10k"}.get(uri.split, uri.split)
    img_path = _find_idx(folder, prefix, "images-idx3")
    lab_path = _find_idx(folder, prefix, "labels-idx1")
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{img_path}: images {images.shape} and labels {labels.shape} do not match "
            "(want [N,H,W] and [N])"
        )
    num = int(num_labels or 10)
    bad = np.flatnonzero((labels < 0) | (labels >= num))
    if need_labels and len(bad):
        raise DataError(
            f"{lab_path}: label {labels[bad[0]]} of example {bad[0]} is outside the classes "
            f"0..{num - 1} ({len(bad)} such labels); set model.num_labels"
        )
    return Examples(
        origin=uri.raw,
        images=np.ascontiguousarray(images[..., None], np.uint8),
        labels=labels.astype(np.int32),
        label_names=tuple(str(i) for i in range(num)),
    )


def file_fingerprint(uri: Uri) -> list:
    """What identifies a local source's bytes for the cache: paths, sizes, mtimes."""
    if uri.kind in ("text", "tsv", "jsonl", "parquet"):
        paths = expand(uri.path)
    elif uri.kind == "idx":
        folder = os.path.expanduser(uri.path)
        paths = (
            sorted(os.path.join(folder, p) for p in os.listdir(folder))
            if os.path.isdir(folder)
            else []
        )
    else:
        return []
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
    return out
