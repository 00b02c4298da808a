"""GLUE-style TSV files: single sentences (SST-2, CoLA) and sentence pairs (MRPC, RTE, ...).

Fields are split on tabs only (GLUE files are unquoted). The layout comes from, in order:
`data.preset` (a key of `GLUE`), else the file's folder name (`.../SST-2/train.tsv`,
`.../rte/train.tsv`), else a known GLUE header row, else `data.text_columns` /
`data.label_column` (names from the header row, or 0-based indices with
`data.header=False`). Labels are matched as strings against `data.labels` (class order),
or are integers 0..num_labels-1 (`model.num_labels`) when no names are given.

Bad rows (wrong number of columns, a label outside the classes) raise a DataError naming
file and line; with `data.bad_rows="skip"` they are dropped instead and counted in one
printed line. Empty lines are ignored.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from pjx.data.files import expand, read_text
from pjx.examples import DataError, Examples
from pjx.uri import Uri

log = logging.getLogger(__name__)

_PAIR = ("sentence1", "sentence2")
_BIN = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

# GLUE (Wang et al. 2019) training-file layouts; label order follows TFDS glue/* and HF.
GLUE = {
    "cola": dict(header=False, text_columns=(3,), label_column=1, labels=_BIN, ncols=4),
    "sst2": dict(header=True, text_columns=("sentence",), label_column="label", labels=_BIN),
    "mrpc": dict(
        header=True, text_columns=("#1 String", "#2 String"), label_column="Quality", labels=_BIN
    ),
    "rte": dict(header=True, text_columns=_PAIR, label_column="label", labels=_NLI2),
    "qnli": dict(
        header=True, text_columns=("question", "sentence"), label_column="label", labels=_NLI2
    ),
    "qqp": dict(
        header=True,
        text_columns=("question1", "question2"),
        label_column="is_duplicate",
        labels=_BIN,
    ),
    "mnli": dict(
        header=True,
        text_columns=_PAIR,
        label_column="gold_label",
        labels=("entailment", "neutral", "contradiction"),
    ),
    "wnli": dict(header=True, text_columns=_PAIR, label_column="label", labels=_BIN),
}

# Header rows that identify a layout on their own (RTE and WNLI share theirs: folder name).
_HEADERS = {
    ("sentence", "label"): "sst2",
    ("quality", "#1 id", "#2 id", "#1 string", "#2 string"): "mrpc",
}


def _norm(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def detect_preset(path: str, header_row: list[str]) -> str:
    """The GLUE layout of a file from its folder name or its header row ('' = unknown)."""
    folder = _norm(os.path.basename(os.path.dirname(os.path.abspath(path))))
    if folder in GLUE:
        return folder
    return _HEADERS.get(tuple(h.strip().lower() for h in header_row), "")


def _is_set(value) -> bool:
    """None and empty strings / lists / tuples (a config read back from JSON has lists)
    mean unset; 0 is a column index."""
    return value is not None and not (isinstance(value, str | list | tuple) and not value)


def layout(cfg, path: str, first_row: list[str], num_labels: int = 0) -> dict:
    """header / text_columns / label_column / labels for this file (preset + config)."""
    name = cfg.get("preset", "") or detect_preset(path, first_row)
    if name and name not in GLUE:
        raise DataError(f"data.preset={name!r} is not a known layout: {sorted(GLUE)}")
    base = dict(GLUE[name]) if name else dict(header=bool(cfg.get("header", True)))
    for key in ("text_columns", "label_column", "labels"):
        value = cfg.get(key, None)
        if _is_set(value):
            base[key] = tuple(value) if isinstance(value, list | tuple) else value
    if not base.get("text_columns"):
        raise DataError(
            f"{path}: unknown TSV layout (header {first_row[:6]}); set data.preset to one of "
            f"{sorted(GLUE)} or data.text_columns (+ data.label_column) to column names "
            "or 0-based indices"
        )
    if not base.get("labels"):
        base["labels"] = tuple(str(i) for i in range(int(num_labels or 2)))
    base["preset"] = name
    return base


def _column(spec, header: list[str] | None, path: str) -> int:
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit() and header is None):
        return int(spec)
    if header is None:
        raise DataError(f"{path}: column {spec!r} is a name but the file has no header row")
    if spec not in header:
        raise DataError(f"{path}:1: no column {spec!r} in the header {header}")
    return header.index(spec)


def read(uri: Uri, cfg, need_labels: bool = False, num_labels: int = 0) -> Examples:
    texts, texts_b, targets, labels, names = [], [], [], [], None
    for path in expand(uri.path):
        a, b, t, y, names = read_file(path, cfg, need_labels, num_labels)
        texts += a
        texts_b += b
        targets += t
        labels += y
    return Examples(
        origin=uri.raw,
        texts=texts,
        texts_b=texts_b if any(t is not None for t in texts_b) else None,
        targets=targets if cfg.get("target_column", "") else None,
        labels=np.asarray(labels, np.int32) if need_labels else None,
        label_names=tuple(names or ()),
    )


def read_file(path: str, cfg, need_labels: bool, num_labels: int = 0):
    """(texts, texts_b, targets, label ids, label names) of one TSV file."""
    lines = read_text(path).split("\n")
    rows = [(i + 1, line.removesuffix("\r").split("\t")) for i, line in enumerate(lines)]
    rows = [(n, r) for n, r in rows if r != [""]]
    lay = layout(cfg, path, rows[0][1], num_labels)
    header = [h.strip() for h in rows[0][1]] if lay["header"] else None
    body = rows[1:] if header is not None else rows
    ncols = len(header) if header is not None else lay.get("ncols") or len(rows[0][1])
    cols = [_column(c, header, path) for c in lay["text_columns"]]
    if len(cols) > 2:
        raise DataError(f"{path}: at most 2 text columns (a sentence pair), got {cols}")
    label_col = _column(lay["label_column"], header, path) if need_labels else None
    if need_labels and lay.get("label_column") in (None, ""):
        raise DataError(f"{path}: set data.label_column (or data.preset) for classification")
    classes = {name: i for i, name in enumerate(lay["labels"])}
    target = cfg.get("target_column", "")
    target_col = _column(target, header, path) if target not in (None, "") else None

    texts, texts_b, targets, labels, bad = [], [], [], [], []
    for lineno, fields in body:
        if len(fields) != ncols:
            bad.append((lineno, f"expected {ncols} tab-separated columns, found {len(fields)}"))
            continue
        if need_labels:
            value = fields[label_col].strip()
            if value not in classes:
                bad.append(
                    (lineno, f"label {value!r} is not one of the classes {list(lay['labels'])}")
                )
                continue
            labels.append(classes[value])
        texts.append(fields[cols[0]])
        texts_b.append(fields[cols[1]] if len(cols) > 1 else None)
        if target_col is not None:
            targets.append(fields[target_col])
    if bad:
        policy = cfg.get("bad_rows", "error")
        first = f"{path}:{bad[0][0]}: {bad[0][1]}"
        if policy != "skip":
            raise DataError(
                f"{first} ({len(bad)} bad row(s) in this file). Fix the file, or set "
                "data.bad_rows='skip' to drop such rows"
                + ("" if lay["preset"] else ", or check data.text_columns / data.preset")
            )
        log.warning(f"data: skipped {len(bad)} bad row(s) of {path} (first: {first})")
    if not texts:
        raise DataError(f"{path}: no data rows")
    return texts, texts_b, targets, labels, lay["labels"]
