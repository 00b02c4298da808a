"""What a private run reports and refuses: the ledger across resumes (the epsilon of what
actually ran, never re-derived from a changed config), noise from a secret seed, the
privacy unit (no packing, no NSP pairs), no vocabulary from the private text, no
non-private train metrics, one accountant per run, shuffled batches labelled."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dp_accounting
import jax
import pytest
from test_privacy import _dp_config

from pjx import config as config_lib
from pjx import privacy, run
from pjx.metrics_log import TIMING_KEYS


def _config(**kw):
    """test_privacy's tiny DP classifier, smaller still, on one device, 2 steps."""
    small = {"model.hidden_size": 16, "model.mlp_dim": 32, "model.max_position_embeddings": 16}
    small.update({"data.seq_len": 16, "steps": 2, "mesh.data": 1, "write_curves": False})
    return _dp_config(**{**small, **kw})


def _train(config, workdir):
    return run.train(config, str(workdir), devices=jax.devices()[:1])


def _lines(workdir, split="train"):
    rows = [json.loads(x) for x in open(Path(workdir) / "metrics.jsonl")]
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING_KEYS}
    return [strip(r) for r in rows if r["split"] == split]


def _segments(workdir):
    return json.loads(json.loads((Path(workdir) / "config.json").read_text())["dp"]["segments"])


def _true_epsilon(segments, delta):
    """dp_accounting's PLD for the Poisson-sampled Gaussian steps that ran, composed."""
    acc = dp_accounting.pld.PLDAccountant()
    for s in segments:
        step = dp_accounting.PoissonSampledDpEvent(
            s["sampling_rate"], dp_accounting.GaussianDpEvent(s["noise_multiplier"])
        )
        acc.compose(dp_accounting.SelfComposedDpEvent(step, s["steps"]))
    return acc.get_epsilon(delta)


def test_a_resume_with_more_steps_keeps_the_target_over_what_ran(tmp_path):
    """dp.target_epsilon, 2 steps, resumed to 6: the 2 steps that ran keep their sigma,
    only the 4 new ones are calibrated, epsilon never goes down and ends at most at the
    target; the last line equals dp_accounting's for what actually ran."""
    kw = {"dp.noise_multiplier": 0.0, "dp.target_epsilon": 2.0, "checkpoint_every": 2}
    w = tmp_path / "run"
    _train(_config(steps=2, **kw), w)
    first = _segments(w)
    _train(_config(steps=6, **kw), w)
    segments = _segments(w)
    assert [s["steps"] for s in segments] == [2, 4]
    assert segments[0] == first[0]  # what ran is the record, not a re-plan
    assert segments[1]["noise_multiplier"] > first[0]["noise_multiplier"]
    eps = [r["dp_epsilon"] for r in _lines(w)]
    assert [r["step"] for r in _lines(w)] == [1, 2, 3, 4, 5, 6]
    assert eps == sorted(eps) and eps[-1] <= 2.0
    delta = json.loads((w / "config.json").read_text())["dp"]["delta"]
    assert eps[-1] == pytest.approx(_true_epsilon(segments, delta), abs=2e-3)
    # Train lines carry only what the mechanism released: no loss or accuracy of the
    # realised (private) batches.
    assert all("loss" not in r and "accuracy" not in r for r in _lines(w))
    assert all("dp_epsilon" in r and "loss" in r for r in _lines(w, "eval"))


def test_a_resume_on_other_data_or_sampling_is_refused_and_changes_nothing(tmp_path):
    w = tmp_path / "run"
    _train(_config(checkpoint_every=2), w)
    before = sorted(os.listdir(w / "checkpoints"))
    with pytest.raises(ValueError, match="training data changed"):
        _train(_config(steps=4, **{"data.source": "embedded:classify[:150]"}), w)
    with pytest.raises(ValueError, match="dp.sampling changed"):
        _train(_config(steps=4, **{"dp.sampling": "shuffle"}), w)
    assert sorted(os.listdir(w / "checkpoints")) == before
    # Another explicit sigma: a new segment, composed with what ran.
    _train(_config(steps=4, **{"dp.noise_multiplier": 2.0}), w)
    segments = _segments(w)
    assert [(s["steps"], s["noise_multiplier"]) for s in segments] == [(2, 1.0), (2, 2.0)]
    delta = json.loads((w / "config.json").read_text())["dp"]["delta"]
    assert _lines(w)[-1]["dp_epsilon"] == pytest.approx(_true_epsilon(segments, delta), abs=2e-3)


def test_the_noise_comes_from_a_secret_seed_not_the_config(tmp_path):
    """Two runs of one config (the same config.seed) draw other noise and batches; the
    secret seed (owner-only, in the workdir) is the only difference."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _train(_config(), a)
    _train(_config(), b)
    norms = lambda w: [r["grad_norm"] for r in _lines(w)]
    assert norms(a) != norms(b)
    secret = a / privacy.SECRET_FILE
    assert os.stat(secret).st_mode & 0o777 == 0o600
    assert int(json.loads(secret.read_text())["seed"]) >= 2**64  # 128 bits, not config.seed
    c.mkdir()
    shutil.copy(secret, c / privacy.SECRET_FILE)
    _train(_config(), c)
    assert norms(c) == norms(a)


def test_shuffled_batches_and_the_rdp_accountant_are_labelled_and_consistent(tmp_path):
    w = tmp_path / "run"
    _train(_config(**{"dp.sampling": "shuffle", "dp.accountant": "rdp"}), w)
    lines = _lines(w) + _lines(w, "eval")
    assert all(r["dp_epsilon_assumes_poisson"] is True for r in lines)
    planned = json.loads((w / "config.json").read_text())["dp"]["planned_epsilon"]
    assert _lines(w)[-1]["dp_epsilon"] == planned  # the plan's accountant on every line


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"task": "mlm", "data.source": "embedded[:90%]"}, "data.pack=none"),
        ({"task": "mlm", "data.pack": "none", "task_args.nsp": True}, "nsp"),
        ({"task": "clm", "model.name": "gpt2", "data.source": "embedded"}, "data.pack=none"),
        ({"task": "span", "model.name": "t5"}, "concatenation of all documents"),
        ({"data.tokenizer": "train:sentencepiece"}, "private training text"),
        ({"eval_data.source": "embedded:classify[:200]"}, "private training source"),
    ],
)
def test_private_runs_refuse_what_epsilon_would_not_cover(kw, message):
    c = _config(**{"eval_data.source": "embedded:classify[-40:]"})
    for k, v in kw.items():
        config_lib.set_key(c, k, v, parse=False)
    if c.task != "classify":
        c.model.num_labels, c.eval_data.source = 0, ""
    with pytest.raises(ValueError, match=message):
        config_lib.resolve_data(c)


def test_what_a_private_run_may_use():
    """One row per document (data.pack=none), a public tokenizer, an opted-in one."""
    c = _config(**{"task": "mlm", "data.pack": "none", "data.source": "embedded[:90%]"})
    c.model.num_labels, c.eval_data.source = 0, "embedded[90%:]"
    config_lib.resolve_data(c)
    config_lib.resolve_data(
        _config(**{"data.tokenizer": "train:sentencepiece", "dp.private_tokenizer": True})
    )


def test_steps_logged_after_the_checkpoint_are_replayed_never_rerun_with_other_noise(tmp_path):
    """The newest checkpoint is damaged: steps 3-4 ran and were logged after the checkpoint
    the run falls back to. With another sigma they would be released twice, with noise a
    comparison cancels: refused. Unchanged, they are replayed: the same released values."""
    from test_checkpoint import _damage

    w = tmp_path / "run"
    _train(_config(steps=4, checkpoint_every=2), w)
    first = _lines(w)
    _damage(w / "checkpoints" / "4")
    with pytest.raises(ValueError, match="release them twice"):
        _train(_config(steps=4, checkpoint_every=2, **{"dp.noise_multiplier": 2.0}), w)
    _train(_config(steps=4, checkpoint_every=2), w)
    assert _lines(w) == first
    assert [s["steps"] for s in _segments(w)] == [4]
