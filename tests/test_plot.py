"""pjx.plot / `pjx plot`: curves are exactly the logged numbers; the image has the size one
panel per metric gives; bad input is a clear error, a corrupt line only a warning."""

import json
import os

import pytest

from pjx import cli, plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

RUN_A = [
    {"step": 1, "split": "train", "loss": 2.5, "learning_rate": 1e-4, "step_s": 0.1},
    {"step": 2, "split": "train", "loss": 2.0, "learning_rate": 2e-4, "step_s": 0.1},
    {"step": 2, "split": "eval", "loss": 2.25, "accuracy": 0.5, "f1": 0.4, "count": 64.0},
    {"step": 3, "split": "train", "loss": 1.5, "learning_rate": 3e-4, "step_s": 0.1},
    {"step": 4, "split": "train", "loss": 1.25, "learning_rate": 4e-4, "step_s": 0.1},
    {"step": 4, "split": "eval", "loss": 1.75, "accuracy": 0.625, "f1": 0.5, "count": 64.0},
]
RUN_B = [
    {"step": 2, "split": "train", "loss": 3.0},
    {"step": 4, "split": "train", "loss": 2.75},
    {"step": 4, "split": "eval", "loss": 2.5, "accuracy": 0.25, "mcc": 0.125, "count": 32.0},
]


def _write(workdir, records, extra_lines=()):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return str(workdir)


def _png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@pytest.fixture
def runs(tmp_path):
    return _write(tmp_path / "run_a", RUN_A), _write(tmp_path / "run_b", RUN_B)


def test_curves_are_the_numbers_in_the_files(runs):
    data = plot.curves(list(runs))
    assert list(data) == ["run_a", "run_b"]
    # Default metrics: loss, then every eval metric of any run (not count, not train-only).
    assert list(data["run_a"]) == ["loss", "accuracy", "f1"]
    assert data["run_a"]["loss"] == {
        "train": ([1, 2, 3, 4], [2.5, 2.0, 1.5, 1.25]),
        "eval": ([2, 4], [2.25, 1.75]),
    }
    assert data["run_a"]["accuracy"] == {"eval": ([2, 4], [0.5, 0.625])}
    assert data["run_a"]["f1"] == {"eval": ([2, 4], [0.4, 0.5])}
    assert data["run_b"] == {
        "loss": {"train": ([2, 4], [3.0, 2.75]), "eval": ([4], [2.5])},
        "accuracy": {"eval": ([4], [0.25])},
        "mcc": {"eval": ([4], [0.125])},
    }
    chosen = plot.curves(list(runs), metrics=["learning_rate"])
    lr = {"train": ([1, 2, 3, 4], [1e-4, 2e-4, 3e-4, 4e-4])}
    assert chosen == {"run_a": {"learning_rate": lr}, "run_b": {}}
    with pytest.raises(ValueError, match="nope"):
        plot.curves(list(runs), metrics=["nope"])


def test_a_stage_parent_stands_for_its_stages_in_run_order(tmp_path):
    parent = tmp_path / "quickstart"
    # Each stage writes config.json as it starts: pretrain first, though "f" < "p".
    for i, (stage, records) in enumerate([("pretrain", RUN_B), ("finetune", RUN_A)]):
        _write(parent / stage, records)
        (parent / stage / "config.json").write_text("{}")
        os.utime(parent / stage / "config.json", (1e9 + i, 1e9 + i))
    (parent / "tensorboard").mkdir()  # a folder without metrics is not a stage
    data = plot.curves([str(parent)])
    assert list(data) == ["quickstart/pretrain", "quickstart/finetune"]
    assert data["quickstart/finetune"]["loss"]["eval"] == ([2, 4], [2.25, 1.75])


def test_cli_writes_a_png_of_the_expected_size(runs, tmp_path, capsys):
    out = tmp_path / "figs" / "curves.png"
    assert cli.main(["plot", *runs, "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    # loss, accuracy, f1, mcc: 4 panels in rows of 3 -> 3 x 2 panels.
    w, h = plot.PANEL_INCHES
    assert _png_size(out) == (round(3 * w * plot.DPI), round(2 * h * plot.DPI))
    assert str(out) in capsys.readouterr().out
    one = tmp_path / "loss.png"
    assert cli.main(["plot", runs[0], "--out", str(one), "--metric", "loss"]) == 0
    assert _png_size(one) == (round(w * plot.DPI), round(h * plot.DPI))


def test_cli_missing_run_is_exit_2_with_a_clear_message(runs, tmp_path, capsys):
    missing = str(tmp_path / "no_such_run")
    out = tmp_path / "x.png"
    assert cli.main(["plot", runs[0], missing, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pjx plot: error:") and "no_such_run" in err and "metrics.jsonl" in err
    assert not out.exists()
    assert cli.main(["plot", runs[0], "--out", str(tmp_path / "x.jpgx")]) == 2
    assert "use .png" in capsys.readouterr().err


def test_write_curves_skips_a_corrupt_line(tmp_path, capsys):
    workdir = _write(
        tmp_path / "run",
        RUN_A[:3],
        extra_lines=['{"step": 3, "split": "tra', "[1, 2]", '{"split": "train", "loss": 1}'],
    )
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(RUN_A[3]) + "\n")
    path = plot.write_curves(workdir)
    assert path == tmp_path / "run" / "curves.png" and path.stat().st_size > 0
    err = capsys.readouterr().err
    assert "metrics.jsonl:4: skipped" in err and "metrics.jsonl:6: skipped" in err
    assert plot.curves([workdir])["run"]["loss"]["train"] == ([1, 2, 3], [2.5, 2.0, 1.5])
    assert plot.write_curves(tmp_path / "empty") is None
    _write(tmp_path / "garbage", [], extra_lines=["not json"])
    assert plot.write_curves(tmp_path / "garbage") is None
