"""The record between sources and tasks: `Examples` (what a source yields, column-wise) and
`DataError` (bad data or a bad data setting).

Sources (`pjx.data`) read files, TFDS or the built-in corpus into `Examples`; a task
(`pjx.tasks`) encodes them into fixed-shape arrays. Neither knows the other.
"""

from __future__ import annotations

import dataclasses

import numpy as np


class DataError(ValueError):
    """Bad data or a bad data setting; the message names the file / line and the fix."""


@dataclasses.dataclass
class Examples:
    """Column-wise examples from one source; every present column has len == len(self)."""

    origin: str
    texts: list | None = None  # documents / first sentences
    texts_b: list | None = None  # second sentences of pairs
    targets: list | None = None  # seq2seq targets
    labels: np.ndarray | None = None  # int32 [E]
    images: np.ndarray | None = None  # uint8 [E,Y,X,C]
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
