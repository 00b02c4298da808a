"""Which rows two data sources share, by what they read rather than how they are spelled.

`tsv:DIR/./train.tsv[:2000]` and `tsv:DIR/train.tsv[0:100]` are one file and 100 shared
rows; `[:90%]` and `[90%:]` of one file share none. A source is resolved to the real
files it reads (paths made absolute, links followed, globs expanded) and its slice to a
range of the unsliced source's examples; counting them (reading the source) happens only
when a slice needs the total (percents, negative bounds). A `prepared:DIR` folder stands
for the source it was prepared from (its index.json), all of it. What this cannot see: a
copy of the same rows in another file.
"""

from __future__ import annotations

import dataclasses
import os

import pjx.data.files as files
import pjx.data.prepared as prepared
import pjx.data.sources as sources
from pjx.data import with_defaults
from pjx.uri import Uri, parse_uri, slice_bounds

FILE_KINDS = ("text", "tsv", "jsonl", "parquet")


@dataclasses.dataclass(frozen=True)
class Rows:
    """The examples a source reads: what (`identity`) and which (`start` .. `stop`, None
    for the end of the source)."""

    identity: tuple
    start: int
    stop: int | None

    def shared(self, other: Rows) -> int:
        """Examples in both (a bound of 2**62 stands for 'to the end')."""
        if self.identity != other.identity:
            return 0
        end = lambda r: r.stop if r.stop is not None else 2**62
        return max(0, min(end(self), end(other)) - max(self.start, other.start))


def identity(u: Uri) -> tuple:
    """What a source reads before its slice: its real files, folder or data set name."""
    if u.kind in FILE_KINDS:
        try:
            paths = files.expand(os.path.expanduser(u.path))
        except Exception:  # a missing file reads nothing anyone could share
            paths = [u.path]
        return ("files", tuple(os.path.realpath(p) for p in paths))
    if u.kind == "idx":
        return ("idx", os.path.realpath(os.path.expanduser(u.path)), u.split or "train")
    return (u.kind, u.path, u.split)


def rows(uri: str, cfg=None) -> Rows:
    """The `Rows` of a source URI (`cfg`: the data settings it is read with, needed only
    when its slice must count the source's examples)."""
    u = parse_uri(uri)
    if u.kind == "prepared":
        prepared_from = _prepared_source(u.path)
        return rows(prepared_from, cfg) if prepared_from else Rows(identity(u), 0, None)
    whole = identity(u)
    if not u.slice:
        return Rows(whole, 0, None)
    total = None
    bounds = [b.strip() for b in u.slice.split(":")]
    if any(b.endswith("%") or b.startswith("-") for b in bounds):
        base = dataclasses.replace(u, slice="", raw=u.raw.rsplit("[", 1)[0])
        total = len(sources.read(base, with_defaults(cfg or {})))
    s = slice_bounds(u.slice, total if total is not None else 2**62, u.raw)
    start, stop, _ = s.indices(total if total is not None else 2**62)
    return Rows(whole, start, None if total is None and s.stop is None else stop)


def shared_rows(a: str, b: str, cfg=None) -> int:
    """How many examples the sources `a` and `b` both read (0: disjoint)."""
    return rows(a, cfg).shared(rows(b, cfg))


def _prepared_source(folder: str) -> str | None:
    """The source URI a prepared folder was made from (None without an index)."""
    if not os.path.isfile(os.path.join(os.path.expanduser(folder), "index.json")):
        return None
    return prepared.load_index(folder).get("source")
