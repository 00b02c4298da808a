"""What a private run reports and refuses: the ledger across resumes (the epsilon of what
actually ran, never re-derived from a changed config), noise from a secret seed, the
privacy unit (no packing, no NSP pairs), no vocabulary from the private text, no
non-private train metrics, one accountant per run, shuffled batches labelled."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import dp_accounting
import jax
import pytest
from test_privacy import _dp_config

from pjx import config as config_lib
from pjx import privacy, resolution, run
from pjx import workdir as workdir_lib
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
        ({"eval_data.source": "embedded:classify[:200]"}, "reads 200 of the private training"),
    ],
)
def test_private_runs_refuse_what_epsilon_would_not_cover(kw, message):
    c = _config(**{"eval_data.source": "embedded:classify[-40:]"})
    for k, v in kw.items():
        config_lib.set_key(c, k, v, parse=False)
    if c.task != "classify":
        c.model.num_labels, c.eval_data.source = 0, ""
    with pytest.raises(ValueError, match=message):
        resolution.resolve_data(c)


def test_what_a_private_run_may_use():
    """One row per document (data.pack=none), a public tokenizer, an opted-in one."""
    c = _config(**{"task": "mlm", "data.pack": "none", "data.source": "embedded[:90%]"})
    c.model.num_labels, c.eval_data.source = 0, "embedded[90%:]"
    resolution.resolve_data(c)
    resolution.resolve_data(
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


def _no_dp(**kw):
    return _config(**{"dp.noise_multiplier": 0.0, **kw})


def test_a_checkpoint_without_a_ledger_is_refused_under_dp(tmp_path):
    """Steps that ran without DP cannot be accounted: a private start on their checkpoint
    (non-DP -> DP, and DP -> non-DP -> DP, whose newest checkpoint lost the ledger) is
    refused, and nothing is written."""
    w = tmp_path / "plain"
    _train(_no_dp(checkpoint_every=2), w)
    with pytest.raises(ValueError, match="the steps that ran were not private"):
        _train(_config(steps=4), w)
    assert sorted(os.listdir(w / "checkpoints")) == ["2"]
    w = tmp_path / "mixed"
    _train(_config(checkpoint_every=2), w)
    _train(_no_dp(steps=4, checkpoint_every=2), w)
    with pytest.raises(ValueError, match="the steps that ran were not private"):
        _train(_config(steps=6, checkpoint_every=2), w)


def test_init_from_a_private_run_on_the_same_rows_composes_its_ledger(tmp_path, capsys):
    """The budget does not restart: 2 private steps, then 4 more from init_from on the same
    rows, end at the epsilon of all 6 (dp_accounting). A non-private source on these rows is
    refused; one on other rows composes nothing; each says which case applies."""
    a, b = tmp_path / "a", tmp_path / "b"
    _train(_config(), a)
    capsys.readouterr()
    _train(_config(steps=4, init_from=str(a)), b)
    assert "trained privately on embedded:classify[:200] (200 of this run's rows)" in (
        capsys.readouterr().out
    )
    segments = [*_segments(a), *_segments(b)]
    assert [s["steps"] for s in segments] == [2, 4]
    delta = json.loads((b / "config.json").read_text())["dp"]["delta"]
    assert _lines(b)[-1]["dp_epsilon"] == pytest.approx(_true_epsilon(segments, delta), abs=2e-3)
    assert _lines(b)[-1]["dp_epsilon"] > _lines(a)[-1]["dp_epsilon"] + 0.05
    # A resume of b keeps what it inherited.
    _train(_config(steps=6, init_from=str(a)), b)
    segments = [*_segments(a), *_segments(b)]
    assert _lines(b)[-1]["dp_epsilon"] == pytest.approx(_true_epsilon(segments, delta), abs=2e-3)

    plain, other = tmp_path / "plain", tmp_path / "other"
    _train(_no_dp(**{"data.source": "embedded:classify[100:300]"}), plain)
    with pytest.raises(ValueError, match="trained without DP-SGD.*holds 100 of this run"):
        _train(_config(init_from=str(plain)), tmp_path / "c")
    assert not (tmp_path / "c" / "checkpoints").exists()
    _train(_no_dp(**{"data.source": "embedded:classify[300:500]"}), other)
    capsys.readouterr()
    _train(_config(init_from=str(other)), tmp_path / "d")
    assert "shares no rows" in capsys.readouterr().out
    assert _lines(tmp_path / "d")[-1]["dp_epsilon"] == pytest.approx(_lines(a)[-1]["dp_epsilon"])


def _tsv(path, n=300):
    rows = [f"sentence {i} {'good' if i % 2 else 'bad'} words\t{i % 2}" for i in range(n)]
    path.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    "ev, shared",
    [("F[:100]", 100), ("F[0:200]", 200), ("D/./train.tsv[:200]", 200), ("F", 200),
     ("F[150:250]", 50), ("F[-150:]", 50), ("F[200:]", 0), ("F[67%:]", 0)],
)  # fmt: skip
def test_evaluation_on_any_training_row_is_refused(tmp_path, ev, shared):
    """Sources resolve to row ranges of the same real file, however they are spelled."""
    f = _tsv(tmp_path / "train.tsv")
    ev = ev.replace("F", f"tsv:{f}", 1).replace("D", f"tsv:{tmp_path}", 1)
    c = _config(**{"data.source": f"tsv:{f}[:200]", "eval_data.source": ev})
    if shared:
        with pytest.raises(ValueError, match=f"reads {shared} of the private training rows"):
            resolution.resolve_data(c)
    else:
        resolution.resolve_data(c)


def test_a_vocabulary_trained_on_the_private_rows_is_refused_however_it_arrives(tmp_path):
    """A `train:` spec whose init_from brings no tokenizer, and a tokenizer folder `pjx
    tokenizer train` made from the private source, are refused; one trained on other rows
    is not."""
    import subprocess
    import sys

    f = _tsv(tmp_path / "train.tsv")
    data = {"data.source": f"tsv:{f}[:200]", "eval_data.source": f"tsv:{f}[200:]"}
    bare = tmp_path / "bare"  # a run saved without a tokenizer (byte ids from its config)
    _train(_no_dp(**data), bare)
    shutil.rmtree(bare / "tokenizer")
    for step in (bare / "checkpoints").iterdir():
        shutil.rmtree(step / "tokenizer", ignore_errors=True)
    spec = {"data.tokenizer": "train:char", "init_from": str(bare)}
    with pytest.raises(ValueError, match="vocabulary was trained on"):
        _train(_config(**{**data, **spec, "data.source": f"tsv:{f}[250:]",
                          "eval_data.source": f"tsv:{f}[200:250]"}), tmp_path / "r0")  # fmt: skip
    assert not (tmp_path / "r0" / "tokenizer").exists()

    def tokenizer(name, source):
        out = tmp_path / name
        cmd = [sys.executable, "-m", "pjx.cli", "tokenizer", "train", "--source", source,
               "--vocab-size", "60", "--family", "bert", "--out", str(out)]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        return str(out)

    private = tokenizer("private", f"tsv:{tmp_path}/./train.tsv[:50]")
    with pytest.raises(ValueError, match="trained on .* holds 50 of the private training rows"):
        _train(_config(**data, **{"data.tokenizer": private}), tmp_path / "r1")
    public = tokenizer("public", f"tsv:{f}[200:]")
    _train(_config(**data, **{"data.tokenizer": public}), tmp_path / "r2")


def test_dp_trains_at_one_width_and_logs_no_data_wait(tmp_path, capsys):
    """Short rows and length buckets: a plain run compiles a narrow step, a private one
    only the configured width (which steps drew a long row stays unknown)."""
    f = _tsv(tmp_path / "train.tsv")  # rows of at most 25 tokens
    kw = {"data.length_bucket": 4, "data.seq_len": 32, "model.max_position_embeddings": 32}
    kw.update({"data.source": f"tsv:{f}[:200]", "eval_data.source": f"tsv:{f}[200:]"})
    _train(_no_dp(**kw), tmp_path / "plain")
    widths = lambda text: re.findall(r"compiled train step for width (\d+)", text)
    assert "32" not in widths(capsys.readouterr().out)
    _train(_config(**kw), tmp_path / "dp")
    assert widths(capsys.readouterr().out) == ["32"]
    rows = [json.loads(x) for x in open(tmp_path / "dp" / "metrics.jsonl")]
    assert all("data_wait_s" not in r for r in rows)


def test_packed_prepared_rows_and_a_vocabulary_trained_on_them_are_refused(tmp_path):
    """`pjx data prepare` records how it packed and where its vocabulary came from: rows
    that join documents are refused under DP whatever data.pack says, and so is the
    tokenizer it trained on the private text."""
    from data_fixtures import write_docs

    from pjx import data
    from pjx.data import prepared

    write_docs(tmp_path / "docs.txt", n_docs=100)
    text = f"text:{tmp_path}/docs.txt"

    def prepare(pack):
        c = _no_dp(
            task="mlm", **{"data.source": text, "data.tokenizer": "train:char?specials=bert"}
        )
        c.model.num_labels, c.eval_data.source, c.data.pack = 0, "", pack
        c = resolution.resolve_data(c)
        out = str(tmp_path / f"prep_{pack}")
        tok = workdir_lib.build_tokenizer(c, str(tmp_path / f"scratch_{pack}"))
        prepared.prepare(
            data.with_defaults(c.data), task="mlm", task_args={}, tokenizer=tok, out=out
        )
        assert prepared.load_index(out)["tokenizer_trained_on"] == {"source": text}
        return out

    def private(out):
        c = _config(task="mlm", **{"data.source": f"prepared:{out}", "data.pack": "none"})
        c.model.num_labels, c.eval_data.source = 0, ""
        c.data.tokenizer = f"{out}/tokenizer"
        return c

    with pytest.raises(ValueError, match="prepared with data.pack='documents'"):
        resolution.resolve_data(private(prepare("documents")))
    with pytest.raises(ValueError, match="vocabulary was trained on"):
        _train(private(prepare("none")), tmp_path / "run")


def test_a_replayed_step_with_other_settings_is_refused(tmp_path):
    """Steps 3-4 were logged after the checkpoint the run falls back to: running them again
    with another learning rate (or other data) and the same noise would release a
    noise-free difference."""
    from test_checkpoint import _damage

    w = tmp_path / "run"
    _train(_config(steps=4, checkpoint_every=2), w)
    _damage(w / "checkpoints" / "4")
    with pytest.raises(ValueError, match=r"other settings \(optimizer.lr\)"):
        _train(_config(steps=4, checkpoint_every=2, **{"optimizer.lr": 3e-3}), w)
    with pytest.raises(ValueError, match=r"other settings \(data.seq_len"):
        _train(_config(steps=4, checkpoint_every=2, **{"data.seq_len": 12}), w)
    # Logging settings may change.
    _train(_config(steps=4, checkpoint_every=2, log_every=2), w)
