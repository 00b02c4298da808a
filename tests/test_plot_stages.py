"""The one figure of a staged run that compares stages (pjx.plot.write_stages): what
`pjx train --config configs/quickstart.py` draws into WORKDIR/curves.png."""

import json

import numpy as np
from PIL import Image

from pjx import config as config_lib
from pjx import plot, run

STAGES = (("from pretraining", "finetune"), ("from scratch", "scratch"))


def _write(folder, records):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_compared_stages_share_axes_beside_the_pretraining_loss(tmp_path):
    pre = [{"step": s, "split": "train", "loss": 8.0 - s / 100} for s in range(50, 501, 50)]
    _write(tmp_path / "pretrain", [*pre, {"step": 500, "split": "eval", "loss": 3.5}])
    (tmp_path / "pretrain" / "config.json").write_text('{"task": "mlm"}')
    for stage, acc in (("finetune", 0.8), ("scratch", 0.7)):
        evals = [{"step": s, "split": "eval", "loss": 0.5, "accuracy": acc} for s in (10, 20)]
        _write(tmp_path / stage, [{"step": 5, "split": "train", "loss": 0.7}, *evals])
    out = plot.write_stages(tmp_path, ["pretrain", "finetune", "scratch"], STAGES, "accuracy")
    assert out == tmp_path / "curves.png"
    with Image.open(out) as im:  # three panels side by side
        assert im.size == (15 * plot.DPI, int(4.2 * plot.DPI))
        pixels = np.asarray(im.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # drawn, not blank


def test_a_staged_run_writes_one_figure_and_prints_it_before_the_comparison(tmp_path, capsys):
    c = config_lib.base_config()
    tiny = dict(num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64, max_position_embeddings=32)
    c.model.update(tiny)
    c.data.source, c.eval_data.source = "embedded[:50]", ""
    c.data.tokenizer = "byte?specials=bert"
    c.data.seq_len, c.batch_size, c.steps = 32, 8, 1
    c.progress = False
    finetune = {
        "task": "classify",
        "model.num_labels": 2,
        "model.pooling": "mean",
        "data.source": "embedded:classify[:16]",
        "eval_data.source": "embedded:classify[16:32]",
    }
    c.stages = (
        ("pretrain", {}),
        ("finetune", {**finetune, "init_from": "stage:pretrain"}),
        ("scratch", finetune),
    )
    c.compare.stages = STAGES
    run.train(c, str(tmp_path))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2] == f"curves: {tmp_path / 'curves.png'}"
    assert lines[-1].startswith("from pretraining: ") and "from scratch: " in lines[-1]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert not list(tmp_path.glob("*/curves.png"))  # no figure per stage
