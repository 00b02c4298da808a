"""Corpus files as chunks read one at a time: the unit of streaming and of `pjx data prepare`.

A chunk is a small picklable tuple `(kind, path, start, end)`:

- `text` / `jsonl`: the lines that *start* in bytes [start, end) of the file (Hadoop's
  input-split rule), so chunks are planned from file sizes alone and every line belongs to
  exactly one chunk. A gzip file is cut by decompressed offsets (its size from the gzip
  trailer); a chunk of it decompresses from the file's start, so prefer plain shards.
  With `data.text_split` `blank_line` or `file` a file is one chunk.
- `parquet`: row group `start` (`end` unused); only the text columns are read.

`plan` lists a source's chunks (sizes and Parquet footers only, no data), `split` gives a
process its part, `read_chunk` returns a chunk's `Examples` (documents) and the number of
bad rows skipped. Bad input raises DataError naming the file, line or row group and the fix.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import struct
import zlib

import pjx.data.files as files
from pjx.examples import DataError, Examples
from pjx.uri import Uri

log = logging.getLogger(__name__)
KINDS = ("text", "jsonl", "parquet")


def _open(path: str, mode="rb"):
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
        return gzip.open(path, mode) if magic == b"\x1f\x8b" else open(path, mode)
    except OSError as e:
        raise DataError(
            f"{path}: cannot read this shard ({e.strerror or e}); check that it exists and is "
            "readable, or leave it out of the glob"
        ) from None


def _size(path: str) -> int:
    """Bytes of text in a file (decompressed size of a gzip file)."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                return os.fstat(f.fileno()).st_size
            f.seek(-4, os.SEEK_END)
            size = struct.unpack("<I", f.read(4))[0]  # ISIZE: size mod 2**32 (RFC 1952)
            if size >= os.fstat(f.fileno()).st_size:
                return size
    except OSError as e:
        raise DataError(f"{path}: cannot read this shard ({e.strerror or e})") from None
    try:  # > 4 GiB of text (or a damaged trailer): count it
        with gzip.open(path, "rb") as g:
            return sum(len(b) for b in iter(lambda: g.read(1 << 24), b""))
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: cannot read this shard ({e}); the file is truncated or corrupt: "
            "re-download it or leave it out of the glob"
        ) from None


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("parquet: sources need pyarrow: pip install 'pjx[parquet]'") from None
    return pq


def _row_groups(path: str) -> int:
    pq = _pq()
    try:
        return pq.ParquetFile(path).metadata.num_row_groups
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise DataError(
            f"{path}: not a readable Parquet file ({type(e).__name__}: {e}); re-export it "
            "or leave it out of the glob"
        ) from None


def plan(uri: Uri, cfg) -> list[tuple]:
    """The chunks of a text / jsonl / parquet source, in file order."""
    if uri.kind not in KINDS:
        raise DataError(
            f"{uri.raw}: the stream and prepared modes read text:, jsonl: and parquet: "
            "files; read this source with data.mode=cached"
        )
    size = max(int(cfg.get("chunk_bytes", 1 << 20) or 1 << 20), 1)
    whole = uri.kind == "text" and cfg.get("text_split", "line") != "line"
    chunks = []
    for path in files.expand(uri.path):
        if uri.kind == "parquet":
            chunks += [("parquet", path, g, g + 1) for g in range(_row_groups(path))]
            continue
        n = _size(path)
        if whole:
            chunks.append((uri.kind, path, 0, max(n, 1)))
            continue
        chunks += [(uri.kind, path, a, min(a + size, n)) for a in range(0, max(n, 1), size)]
    return chunks


def total_bytes(uri: Uri) -> int:
    """Bytes on disk of a source's files (what `data.mode` auto-selection compares)."""
    return sum(os.path.getsize(p) for p in files.expand(uri.path))


def split(chunks: list, process_index: int, process_count: int, n_files: int | None = None):
    """This process's chunks and record stride: whole files round-robin when there are at
    least as many files as processes, else chunks round-robin, else every chunk with its
    records split (record i of a chunk goes to process i % process_count).
    Returns (chunks, (stride, offset))."""
    P, p = int(process_count), int(process_index)
    if P == 1:
        return list(chunks), (1, 0)
    paths = list(dict.fromkeys(c[1] for c in chunks))
    if len(paths) >= P:
        mine = set(paths[p::P])
        return [c for c in chunks if c[1] in mine], (1, 0)
    if len(chunks) >= P:
        return list(chunks[p::P]), (1, 0)
    return list(chunks), (P, p)


# ------------------------------------------------------------------------------ reading
def _lines(chunk) -> tuple[bytes, int]:
    """The bytes of the lines starting in [start, end), and the offset they begin at."""
    _, path, a, b = chunk
    with _open(path) as f:
        try:
            lo = max(a - 1, 0)
            f.seek(lo)
            buf = f.read(b - lo)
            if a > 0:
                i = buf.find(b"\n")
                if i < 0:
                    return b"", b
                buf, a = buf[i + 1 :], lo + i + 1
            if buf and not buf.endswith(b"\n"):
                buf += f.readline()
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(
                f"{path}: cannot read this shard at byte {a} ({e}); the file is truncated "
                "or corrupt: re-download it or leave it out of the glob"
            ) from None
    return buf, a


def _line_number(path: str, offset: int) -> int:
    with _open(path) as f:
        return f.read(offset).count(b"\n") + 1


def _decode(buf: bytes, path: str, offset: int) -> str:
    try:
        text = buf.decode("utf-8")
    except UnicodeDecodeError as e:
        line = _line_number(path, offset + e.start)
        raise DataError(
            f"{path}:{line}: invalid UTF-8 (byte 0x{buf[e.start]:02x}); re-encode the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff") if offset == 0 else text


def _columns(cfg) -> list[str]:
    cols = [str(c) for c in (cfg.get("text_columns") or ())]
    return cols or ["text"]


def _bad(cfg, where: str, what: str, fix: str) -> None:
    """Raises, unless data.bad_rows=skip (then the caller counts the row)."""
    if cfg.get("bad_rows", "error") != "skip":
        raise DataError(f"{where}: {what}; {fix}, or set data.bad_rows=skip to skip such rows")


def read_chunk(chunk, cfg, stride=(1, 0)) -> tuple[Examples, int]:
    """A chunk's documents (record i kept when i % stride[0] == stride[1]) and the number of
    bad rows skipped."""
    kind, path = chunk[0], chunk[1]
    cols, skipped = _columns(cfg), 0
    texts: list[list] = [[] for _ in cols[:2]]
    if kind == "text":
        buf, at = _lines(chunk)
        docs = files.split_documents(_decode(buf, path, at), cfg.get("text_split", "line"), path)
        texts = [docs]
    elif kind == "jsonl":
        buf, at = _lines(chunk)
        text, line0 = _decode(buf, path, at), None
        for i, line in enumerate(text.split("\n")):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                values = [obj[c] for c in cols[:2]] if isinstance(obj, dict) else None
            except (json.JSONDecodeError, KeyError) as e:
                line0 = line0 or _line_number(path, at)
                what = (
                    f"no field {e} (fields: {sorted(obj)})"
                    if isinstance(e, KeyError)
                    else f"not valid JSON ({e.msg} at column {e.colno})"
                )
                _bad(cfg, f"{path}:{line0 + i}", what, "fix the line or set data.text_columns")
                skipped += 1
                continue
            if values is None or not all(isinstance(v, str) for v in values):
                line0 = line0 or _line_number(path, at)
                _bad(
                    cfg,
                    f"{path}:{line0 + i}",
                    f"{cols[:2]} are not all strings",
                    "each line must be an object with a text field",
                )
                skipped += 1
                continue
            for col, v in zip(texts, values):
                col.append(v)
    elif kind == "parquet":
        texts, skipped = _parquet(chunk, cfg, cols[:2])
    else:
        raise DataError(f"{path}: unknown chunk kind {kind!r}")
    k, r = stride
    if k > 1:
        texts = [col[r::k] for col in texts]
    ex = Examples(origin=path, texts=texts[0], texts_b=texts[1] if len(texts) > 1 else None)
    return ex, skipped


def _parquet(chunk, cfg, cols) -> tuple[list[list], int]:
    pq = _pq()
    _, path, group, _ = chunk
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
    except Exception as e:  # noqa: BLE001
        raise DataError(
            f"{path}: not a readable Parquet file ({type(e).__name__}: {e}); re-export it or "
            "leave it out of the glob"
        ) from None
    missing = [c for c in cols if c not in names]
    if missing:
        raise DataError(
            f"{path}: no column {missing[0]!r} (columns: {names}); set data.text_columns to "
            "the text column(s)"
        )
    try:
        table = pf.read_row_group(group, columns=cols)
    except Exception as e:  # noqa: BLE001
        raise DataError(
            f"{path}: row group {group} cannot be read ({type(e).__name__}: {e}); the file is "
            "corrupt: re-export it or leave it out of the glob"
        ) from None
    columns = [table.column(c).to_pylist() for c in cols]
    out: list[list] = [[] for _ in cols]
    skipped = 0
    for i, values in enumerate(zip(*columns)):
        if not all(isinstance(v, str) for v in values):
            _bad(
                cfg,
                f"{path}: row group {group}, row {i}",
                f"{cols} hold {[type(v).__name__ for v in values]}, not text",
                "fill or drop the empty rows",
            )
            skipped += 1
            continue
        for col, v in zip(out, values):
            col.append(v)
    return out, skipped


def read_all(uri: Uri, cfg, need_labels: bool = False, num_labels: int = 0) -> Examples:
    """Every document of a jsonl: / parquet: source in order (the cached mode's reader)."""
    if need_labels:
        raise DataError(f"{uri.raw}: {uri.kind} sources carry no labels here; use tsv: or tfds:")
    cols: list[list] = [[], []]
    skipped = 0
    for chunk in plan(uri, cfg):
        ex, k = read_chunk(chunk, cfg)
        skipped += k
        cols[0] += ex.texts
        cols[1] += ex.texts_b or []
    if skipped:
        log.warning(f"data: {uri.raw}: skipped {skipped} bad rows (data.bad_rows=skip)")
    two = len(_columns(cfg)) > 1
    return Examples(origin=uri.raw, texts=cols[0], texts_b=cols[1] if two else None)
