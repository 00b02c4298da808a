"""Data-source URIs and TFDS-style slices.

`config.data.source` is a URI:

    tfds:NAME[:SPLIT]     a prepared TFDS data set (array_record), see data/tfds_source.py
    text:PATH_OR_GLOB     plain or gzip text; documents per `data.text_split`
    jsonl:PATH_OR_GLOB    JSON lines; documents from the `text` field (or data.text_columns)
    parquet:PATH_OR_GLOB  Parquet files (e.g. a Hugging Face datasets folder), read by row group
    prepared:DIR          rows written by `pjx data prepare` (see data/prepared.py)
    tsv:PATH              GLUE-style TSV, see data/tsv.py
    idx:DIR[:SPLIT]       MNIST-style idx files (gzip or not); SPLIT train (default) | test
    embedded[:classify]   the corpus that ships with Python, see data/embedded.py

Any URI may end with a TFDS-style slice of its examples: `[:90%]`, `[90%:]`, `[10:200]`.
"""

from __future__ import annotations

import dataclasses
import re

from pjx.examples import DataError

KINDS = ("tfds", "text", "tsv", "idx", "embedded", "jsonl", "parquet", "prepared")


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
            "jsonl:GLOB, parquet:GLOB, prepared:DIR, tsv:PATH, idx:DIR or embedded "
            "(optionally with a slice like [:90%])"
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
