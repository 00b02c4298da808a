"""The Weights & Biases logger (`config.wandb.project`), in WANDB_MODE=offline: the run's
name, its resolved config, every metrics line, process 0 only, and a resumed run continues
the same W&B run."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
import pytest

from pjx import config as config_lib
from pjx import metrics_log, run

VOCAB, L = 32, 16


def _config(steps, **kw):
    c = config_lib.base_config()
    c.model.name, c.task = "gpt2", "clm"
    c.model.update(
        dict(
            num_layers=1,
            hidden_size=32,
            num_heads=2,
            mlp_dim=64,
            vocab_size=VOCAB,
            max_position_embeddings=L,
        )
    )
    c.data.seq_len, c.batch_size, c.steps, c.log_every, c.eval_every = L, 4, steps, 2, 2
    c.checkpoint_every = 2
    c.optimizer.update(dict(lr=3e-3, warmup_steps=1))
    c.mesh.update(dict(data=1))
    c.progress = c.write_curves = False
    c.wandb.update(dict(project="pjx-test", mode="offline"))
    for k, v in kw.items():
        config_lib.set_key(c, k, v, parse=False)
    return c


def _batches():
    rng = np.random.RandomState(0)
    while True:
        ids = rng.randint(0, VOCAB, (4, L)).astype(np.int32)
        yield {"input_ids": ids, "segment_ids": np.ones_like(ids)}


def _eval():
    ids = np.random.RandomState(9).randint(0, VOCAB, (4, L)).astype(np.int32)
    return [{"input_ids": ids, "segment_ids": np.ones_like(ids), "weight": np.ones(4, np.float32)}]


@pytest.fixture
def wandb_calls(monkeypatch, tmp_path):
    """Every Run.log call of real (offline) W&B runs: (run id, name, config, data)."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    calls = []
    real = wandb.sdk.wandb_run.Run.log

    def log(self, data, *args, **kwargs):
        calls.append((self.id, self.name, dict(self.config), dict(data)))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", log)
    return calls


def _numeric(record):
    return {
        f"{record['split']}/{k}": v
        for k, v in record.items()
        if k not in ("step", "split") and isinstance(v, (int, float))
    }


def test_run_logs_name_config_every_line_and_resumes(wandb_calls, tmp_path):
    workdir = tmp_path / "my_run"
    kw = dict(train_data=_batches(), eval_data=_eval(), devices=jax.devices()[:1])
    run.train(_config(steps=4), str(workdir), **kw)
    run_id = (workdir / metrics_log.WANDB_ID).read_text().strip()
    assert run_id and list((workdir / "wandb").glob(f"offline-run-*-{run_id}"))

    ids, names, configs, data = zip(*wandb_calls)
    assert set(ids) == {run_id} and set(names) == {"my_run"}
    saved = json.loads((workdir / "config.json").read_text())  # the resolved config
    assert configs[-1]["model"] == saved["model"] and configs[-1]["wandb"] == saved["wandb"]
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in lines] == [
        (2, "train"),
        (2, "eval"),
        (4, "train"),
        (4, "eval"),
    ]
    assert list(data) == [{"step": r["step"], **_numeric(r)} for r in lines]

    # Resumed with more steps: the same W&B run goes on from the checkpoint.
    wandb_calls.clear()
    run.train(_config(steps=6), str(workdir), **kw)
    assert (workdir / metrics_log.WANDB_ID).read_text().strip() == run_id
    assert {c[0] for c in wandb_calls} == {run_id}
    assert [(d["step"], "eval/loss" in d) for *_, d in wandb_calls] == [(6, False), (6, True)]
    assert len(list((workdir / "wandb").glob(f"offline-run-*-{run_id}"))) == 2


def test_only_process_0_logs(wandb_calls, tmp_path, monkeypatch):
    monkeypatch.setattr(metrics_log.jax, "process_index", lambda: 1)
    settings = {"project": "pjx-test", "mode": "offline"}
    with metrics_log.MetricsLog(tmp_path, total_steps=1, progress=False, wandb=settings) as m:
        m.eval(1, {"loss": 1.0})
    assert wandb_calls == [] and not (tmp_path / metrics_log.WANDB_ID).exists()


def test_off_by_default_and_a_clear_message_without_wandb(tmp_path, monkeypatch):
    assert config_lib.base_config().wandb.project == ""
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails
    with metrics_log.MetricsLog(tmp_path / "a", total_steps=1, progress=False) as m:
        m.eval(1, {"loss": 1.0})  # project "": wandb never imported
    with pytest.raises(ImportError, match=r"wandb.project='x' needs wandb: pip install"):
        metrics_log.MetricsLog(tmp_path / "b", total_steps=1, wandb={"project": "x"})
