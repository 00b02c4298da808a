"""`embedded`: a real English corpus that ships with every Python, and a task derived from it.

Corpus (`embedded`): the topic pages of the Python documentation that `pydoc` serves offline
(`pydoc_data.topics`: the Language Reference chapters on statements, expressions, the data
model and execution model, plus the built-in types pages; about 80 pages, ~460k characters,
~65k words of technical English). Documents are the pages' paragraphs (blank-line
separated), pages in sorted order. No download, no files.

Classification (`embedded:classify`): one sentence of prose from those pages, labelled by
what the page documents:
  0 "syntax"   the statements and expressions pages (`if`, `try`, `import`, calls, ...);
  1 "objects"  the data-model and built-in-types pages (special methods, `str`, `dict`, ...).
Code examples, grammar rules and headings are left out; sentences have at least 6 words.
The larger class is subsampled so both have the same count (chance = 50%), and the
examples are shuffled with a fixed seed so `[:80%]` / `[80%:]` slices are class-balanced
train / eval splits (2,058 sentences in all with Python 3.11). Word choice separates the
classes (a bag-of-words logistic regression reaches ~85% on the held-out 20% with every
label), so configs/quickstart.py fine-tunes on a few hundred labelled sentences, where
pretraining on the corpus shows (its results: BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from pjx.examples import DataError, Examples
from pjx.uri import Uri

CLASSES = ("syntax", "objects")

# pydoc topic names per class (names absent from an older / newer Python are skipped).
_TOPICS = {
    "syntax": (
        "assert assignment async augassign break class compound continue del for function "
        "global if import nonlocal pass raise return try while with "
        "atom-identifiers atom-literals attribute-references await binary bitwise booleans "
        "calls comparisons exprlists lambda operator-summary power shifting slicings "
        "subscriptions unary in yield conversions"
    ).split(),
    "objects": (
        "specialnames attribute-access customization types objects callable-types "
        "numeric-types sequence-types context-managers typesseq typesseq-mutable typesmapping "
        "string-methods typesfunctions typesmethods typesmodules dict lists truth specialattrs "
        "bltin-code-objects bltin-ellipsis-object bltin-null-object bltin-type-objects"
    ).split(),
}
_SEED = 20240501


def topics() -> dict:
    try:
        from pydoc_data.topics import topics as pages
    except ImportError:  # some distributions split pydoc_data into its own package
        raise DataError(
            "the embedded corpus needs the standard-library module pydoc_data "
            "(on Debian/Ubuntu: apt install libpython3-stdlib); or use a local text: source"
        ) from None
    return dict(pages)


def documents() -> list[str]:
    """The corpus: every topic page's non-empty paragraphs, pages in sorted order."""
    pages = topics()
    docs = []
    for name in sorted(pages):
        docs += [p.strip() for p in re.split(r"\n[ \t]*\n", pages[name]) if p.strip()]
    return docs


def sentences(page: str) -> list[str]:
    """Prose sentences of a page: no code / grammar paragraphs, no headings, >= 6 words."""
    out = []
    for para in re.split(r"\n[ \t]*\n", page):
        lines = [s.strip() for s in para.split("\n") if s.strip()]
        if not lines or any(s.startswith((">>>", "...")) or "::=" in s for s in lines):
            continue
        text = " ".join(lines)
        if text.endswith(("*", "=", "-")):  # reST heading underlines
            continue
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"(])", text):
            if len(s.split()) >= 6 and s[-1] in ".!?:":
                out.append(s)
    return out


def classification() -> tuple[list[str], np.ndarray]:
    """(sentences, labels): balanced, shuffled with a fixed seed."""
    pages = topics()
    per_class = [
        [s for name in names if name in pages for s in sentences(pages[name])]
        for names in _TOPICS.values()
    ]
    rng = np.random.default_rng(_SEED)
    n = min(len(c) for c in per_class)
    if n < 100:
        raise DataError(f"embedded:classify: only {n} sentences for a class in this Python")
    texts, labels = [], []
    for label, group in enumerate(per_class):
        keep = np.sort(rng.permutation(len(group))[:n])
        texts += [group[i] for i in keep]
        labels += [label] * n
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], np.asarray(labels, np.int32)[order]


def read(uri: Uri, cfg, need_labels: bool = False, num_labels: int = 0) -> Examples:
    if uri.split in ("", "corpus"):
        if need_labels:
            raise DataError("embedded has no labels; use embedded:classify for classification")
        return Examples(origin=uri.raw, texts=documents())
    if uri.split == "classify":
        texts, labels = classification()
        return Examples(origin=uri.raw, texts=texts, labels=labels, label_names=CLASSES)
    raise DataError(f"unknown embedded variant {uri.split!r}: use embedded or embedded:classify")


def fingerprint() -> list:
    pages = topics()
    h = hashlib.sha256("\0".join(f"{k}\1{pages[k]}" for k in sorted(pages)).encode())
    return [h.hexdigest()[:16]]
