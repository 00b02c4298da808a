"""One entry point over every source kind: `read(uri, cfg)` -> `Examples`, and the
fingerprint that keys a source's cache entries. URIs and slices: pjx.uri."""

from __future__ import annotations

import pjx.data.embedded as embedded
import pjx.data.files as files
import pjx.data.shards as shards
import pjx.data.tfds_source as tfds_source
import pjx.data.tsv as tsv
from pjx.examples import DataError, Examples
from pjx.uri import Uri, parse_uri, slice_bounds

# Source kind -> reader(uri, cfg, need_labels, num_labels) -> Examples.
READERS = {
    "text": files.read_text_source,
    "tsv": tsv.read,
    "idx": files.read_idx_source,
    "tfds": tfds_source.read,
    "embedded": embedded.read,
    "jsonl": shards.read_all,
    "parquet": shards.read_all,
}


def read(uri: str | Uri, cfg, *, need_labels: bool = False, num_labels: int = 0) -> Examples:
    """The examples of a source URI with its slice applied. `num_labels` (the model's
    classes) names the classes of sources whose labels are bare integers."""
    u = parse_uri(uri) if isinstance(uri, str) else uri
    if u.kind not in READERS:
        raise DataError(
            f"{u.raw}: prepared rows are read by data.mode=prepared only (no raw texts); "
            f"train with --config.data.tokenizer={u.path}/tokenizer (the one it was made with)"
        )
    ex = READERS[u.kind](u, cfg, need_labels, num_labels)
    if u.slice and u.kind != "tfds":  # TFDS applies its own (identical) slice syntax
        ex = ex.select(slice_bounds(u.slice, len(ex), u.raw))
    if len(ex) == 0:
        raise DataError(f"{u.raw}: no examples (check the path and the slice)")
    return ex


def fingerprint(uri: Uri, cfg) -> list:
    """What identifies a source's content for the cache (files: paths, sizes, mtimes)."""
    if uri.kind == "tfds":
        return tfds_source.fingerprint(uri, cfg)
    if uri.kind == "embedded":
        return embedded.fingerprint()
    return files.file_fingerprint(uri)
