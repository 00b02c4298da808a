"""A workdir written by an earlier pjx still loads and resumes: tests/fixtures/dp_run_v1 is
a private run (test_privacy's tiny DP classifier, 4 steps, checkpoint every 2) stopped
after its step-2 checkpoint, as a preempted run leaves it; `.step4_params.npz` holds the
parameters the same code reached at step 4 without stopping."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
from test_privacy import _dp_config

from pjx import run
from pjx.checkpoint.saved import Saved

FIXTURE = Path(__file__).parent / "fixtures" / "dp_run_v1"
SETTINGS = {
    "model.hidden_size": 16,
    "model.mlp_dim": 32,
    "model.max_position_embeddings": 16,
    "data.seq_len": 16,
    "mesh.data": 1,
    "write_curves": False,
    "steps": 4,
    "checkpoint_every": 2,
    "keep_checkpoints": 5,
}


def _flat(params) -> dict:
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def _segments(workdir) -> list:
    return json.loads(json.loads((Path(workdir) / "config.json").read_text())["dp"]["segments"])


def test_an_older_workdir_loads_and_resumes_to_the_uninterrupted_parameters(tmp_path):
    w = tmp_path / "run"
    shutil.copytree(FIXTURE, w)
    before = _segments(w)
    assert Saved(str(w / "checkpoints" / "2")).params() is not None
    run.train(_dp_config(**SETTINGS), str(w), devices=jax.devices()[:1])
    lines = [json.loads(x) for x in open(w / "metrics.jsonl")]
    assert [(r["step"], r["split"]) for r in lines] == [
        (1, "train"), (2, "train"), (3, "train"), (4, "train"), (4, "eval")
    ]  # fmt: skip
    # The ledger goes on from what ran: one segment of 4 steps at the noise it ran with.
    after = _segments(w)
    assert [s["steps"] for s in after] == [4]
    assert after[0]["noise_multiplier"] == before[0]["noise_multiplier"]
    want = dict(np.load(str(FIXTURE) + ".step4_params.npz"))
    got = _flat(Saved(str(w)).params())
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-6, err_msg=k)
