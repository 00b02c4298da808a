"""pjx.run: the line comparing stages after a staged run (config.compare)."""

import json

import pytest

from pjx import run


def _write(folder, *records):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_compare_states_each_stage_and_the_lead(tmp_path):
    _write(
        tmp_path / "finetune",
        {"step": 10, "split": "eval", "loss": 0.5, "accuracy": 0.70},
        {"step": 20, "split": "eval", "loss": 0.4, "accuracy": 0.862, "mcc": 0.7},
        {"step": 20, "split": "train", "loss": 0.3},
    )
    _write(tmp_path / "scratch", {"step": 20, "split": "eval", "loss": 0.6, "accuracy": 0.741})
    stages = (("from pretraining", "finetune"), ("from scratch", "scratch"))
    line = run.compare(tmp_path, stages, "accuracy")
    assert line == "from pretraining: 0.862 accuracy; from scratch: 0.741 (+12.1 points)"
    assert run.compare(tmp_path, stages, "loss").endswith("from scratch: 0.600 (-0.2)")
    with pytest.raises(ValueError, match="stage 'scratch' has no eval 'mcc'"):
        run.compare(tmp_path, stages, "mcc")
