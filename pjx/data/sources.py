"""Data-source URIs, TFDS-style slices, and the text / idx readers.

`config.data.source` is a URI:

    tfds:NAME[:SPLIT]     a prepared TFDS data set (array_record), see tfds_source.py
    text:PATH_OR_GLOB     plain or gzip text; documents per `data.text_split`
    tsv:PATH              GLUE-style TSV, see tsv.py
    idx:DIR[:SPLIT]       MNIST-style idx files (gzip or not); SPLIT train (default) | test
    embedded[:classify]   the corpus that ships with Python, see embedded.py

Any URI may end with a TFDS-style slice of its examples: `[:90%]`, `[90%:]`, `[10:200]`.
Every reader returns `Examples` (equal-length columns); tokenising, caching and the Grain
pipeline are then one path for all sources.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import os
import re
import zlib

import numpy as np


class DataError(ValueError):
    """Bad data or a bad data setting; the message names the file / line and the fix."""


KINDS = ("tfds", "text", "tsv", "idx", "embedded")


@dataclasses.dataclass(frozen=True)
class Uri:
    kind: str
    path: str = ""  # file, glob, folder or TFDS name
    split: str = ""  # tfds / idx split, embedded variant
    slice: str = ""  # "[:90%]" style, without brackets ("" = all)
    raw: str = ""


def parse_uri(uri: str) -> Uri:
    """`kind:rest[slice]` -> Uri; raises DataError naming the valid forms."""
    raw = str(uri).strip()
    body, sl = raw, ""
    m = re.fullmatch(r"(.*)\[([^\[\]]*)\]", raw)
    if m:
        body, sl = m.group(1), m.group(2)
    kind, _, rest = body.partition(":")
    if kind not in KINDS:
        raise DataError(
            f"unknown data source {raw!r}: use tfds:NAME[:SPLIT], text:PATH_OR_GLOB, "
            "tsv:PATH, idx:DIR or embedded (optionally with a slice like [:90%])"
        )
    if sl:
        slice_bounds(sl, 100, raw)  # validate the syntax early
    if kind in ("tfds", "idx"):
        # A split is a plain word after the last ':' (TFDS names may carry ':VERSION').
        head, _, tail = rest.rpartition(":")
        if head and re.fullmatch(r"[A-Za-z_][\w\-]*", tail):
            return Uri(kind, head, tail, sl, raw)
        return Uri(kind, rest, "", sl, raw)
    if kind == "embedded":
        return Uri(kind, "", rest, sl, raw)
    if not rest:
        raise DataError(f"data source {raw!r} needs a path: {kind}:PATH")
    return Uri(kind, rest, "", sl, raw)


def slice_bounds(spec: str, n: int, where: str = "") -> slice:
    """TFDS slice syntax over n examples: `a:b` with ints (negative ok) or percents.

    Percent boundaries round to the closest example, as TFDS does by default.
    """

    def bound(text):
        text = text.strip()
        if not text:
            return None
        if text.endswith("%"):
            pct = float(text[:-1])
            if not -100 <= pct <= 100:
                raise ValueError(text)
            k = int(round(abs(pct) * n / 100))
            return -k if pct < 0 else k
        return int(text)

    parts = spec.split(":")
    try:
        if len(parts) != 2:
            raise ValueError(spec)
        return slice(bound(parts[0]), bound(parts[1]))
    except ValueError:
        raise DataError(
            f"bad slice [{spec}] in {where or 'data source'}: use [START:END] with example "
            "counts or percents, e.g. [:90%], [90%:], [100:200]"
        ) from None


@dataclasses.dataclass
class Examples:
    """Column-wise examples from one source; every present column has len == len(self)."""

    origin: str
    texts: list | None = None  # documents / first sentences
    texts_b: list | None = None  # second sentences of pairs
    targets: list | None = None  # seq2seq targets
    labels: np.ndarray | None = None  # int32 [N]
    images: np.ndarray | None = None  # uint8 [N,H,W,C]
    label_names: tuple = ()

    def columns(self) -> dict:
        names = ("texts", "texts_b", "targets", "labels", "images")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    def __len__(self) -> int:
        cols = self.columns()
        return len(next(iter(cols.values()))) if cols else 0

    def select(self, sl: slice) -> Examples:
        cols = {k: v[sl] for k, v in self.columns().items()}
        return dataclasses.replace(self, **cols)


# ------------------------------------------------------------------------------ files
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


def read_text_source(uri: Uri, cfg, need_labels: bool = False) -> Examples:
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


def read_idx_source(uri: Uri, cfg, need_labels: bool = False) -> Examples:
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
    num = int(cfg.get("num_labels", 0) or 10)
    bad = np.flatnonzero((labels < 0) | (labels >= num))
    if need_labels and len(bad):
        raise DataError(
            f"{lab_path}: label {labels[bad[0]]} of example {bad[0]} is outside the classes "
            f"0..{num - 1} ({len(bad)} such labels); set data.num_labels"
        )
    return Examples(
        origin=uri.raw,
        images=np.ascontiguousarray(images[..., None], np.uint8),
        labels=labels.astype(np.int32),
        label_names=tuple(str(i) for i in range(num)),
    )


# --------------------------------------------------------------------------- dispatch
def _tsv(uri, cfg, need_labels=False):
    from pjx.data import tsv

    return tsv.read(uri, cfg, need_labels)


def _tfds(uri, cfg, need_labels=False):
    from pjx.data import tfds_source

    return tfds_source.read(uri, cfg, need_labels)


def _embedded(uri, cfg, need_labels=False):
    from pjx.data import embedded

    return embedded.read(uri, cfg, need_labels)


READERS = {
    "text": read_text_source,
    "tsv": _tsv,
    "idx": read_idx_source,
    "tfds": _tfds,
    "embedded": _embedded,
}


def read(uri: str | Uri, cfg, *, need_labels: bool = False) -> Examples:
    """The examples of a source URI with its slice applied."""
    u = parse_uri(uri) if isinstance(uri, str) else uri
    ex = READERS[u.kind](u, cfg, need_labels)
    if u.slice and u.kind != "tfds":  # TFDS applies its own (identical) slice syntax
        ex = ex.select(slice_bounds(u.slice, len(ex), u.raw))
    if len(ex) == 0:
        raise DataError(f"{u.raw}: no examples (check the path and the slice)")
    return ex


def file_fingerprint(uri: Uri) -> list:
    """What identifies a local source's bytes for the cache: paths, sizes, mtimes."""
    if uri.kind in ("text", "tsv"):
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
