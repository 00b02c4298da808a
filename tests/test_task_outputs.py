"""What a task reports beyond its metrics at `pjx eval` (`Task.report`) and what one line of
`pjx predict` holds (`Task.predictions`), on a stand-in for the scored model; a task without
the hooks gets the defaults."""

from __future__ import annotations

import numpy as np

from pjx import tasks
from pjx.tasks import base


class Plain(base.Task):
    """A task that defines neither hook."""

    name = "plain"


class Scored:
    """A stand-in for pjx.evaluation.Loaded (what `report` / `predictions` run the model
    with): fixed outputs for two examples."""

    class tokenizer:
        decode = staticmethod(lambda ids: "".join(map(chr, ids)))

    def label_names(self):
        return ["neg", "pos"]

    def probabilities(self):
        return iter([np.array([0.25, 0.75]), np.array([0.5, 0.5])])

    def continuations(self, max_new_tokens):
        return iter([("hi", "hi" + "!" * max_new_tokens)])

    def generated(self):
        return iter([([97, 98], [97, 98], [120]), ([97], [98], [121])])


def test_what_a_task_reports_and_predicts_beyond_its_metrics():
    sums, scored = {"loss_sum": 1.0, "count": 7.0}, Scored()
    # A task without the hooks: the positions counted, and no prediction lines.
    assert Plain().report(sums, scored) == {"tokens": 7}
    assert Plain().report({"loss_sum": 1.0}, scored) == {}
    assert Plain().predictions(scored, max_new_tokens=5) is None

    classify = tasks.get("classify")
    confusion = {"confusion": np.array([[2.0, 1.0], [0.0, 3.0]]), **sums}
    assert classify.report(confusion, scored) == {
        "confusion_matrix": [[2, 1], [0, 3]],
        "labels": ["neg", "pos"],
        "examples": 6,
    }
    assert list(classify.predictions(scored, max_new_tokens=5)) == [
        {"label": "pos", "label_id": 1, "probabilities": {"neg": 0.25, "pos": 0.75}},
        {"label": "neg", "label_id": 0, "probabilities": {"neg": 0.5, "pos": 0.5}},
    ]
    seq2seq = tasks.get("seq2seq")
    assert seq2seq.report(sums, scored) == {"tokens": 7, "exact_match": 0.5, "examples": 2}
    assert list(seq2seq.predictions(scored, max_new_tokens=5)) == [
        {"text": "ab", "target": "ab", "input": "x"},
        {"text": "a", "target": "b", "input": "y"},
    ]
    assert list(tasks.get("clm").predictions(scored, max_new_tokens=2)) == [
        {"prompt": "hi", "text": "hi!!"}
    ]
    assert tasks.get("mlm").predictions(scored, max_new_tokens=5) is None
