"""Objectives. Each task is one module of this package (a `Task` subclass: its loss, eval
metrics, example encoding, batch spec and the model fields it implies; see `base`), listed
once in `TASKS`. Adding a task is one new module plus its line here (docs/architecture.md).
"""

from __future__ import annotations

from pjx.tasks.base import Spec, Task
from pjx.tasks.classify import Classify
from pjx.tasks.clm import CLM
from pjx.tasks.contrastive import Contrastive
from pjx.tasks.distill import Distill
from pjx.tasks.electra import Electra
from pjx.tasks.mlm import MLM
from pjx.tasks.seq2seq import Seq2Seq
from pjx.tasks.span import Span

TASKS: dict[str, Task] = {
    t.name: t
    for t in (MLM(), CLM(), Span(), Seq2Seq(), Classify(), Contrastive(), Electra(), Distill())
}


def get(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Spec", "Task", "get"]
