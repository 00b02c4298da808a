"""The loop: metrics.jsonl, determinism, exact eval over a padded last batch, NaN stop,
and a tiny GPT-2 that learns."""

import json
import time

import jax
import numpy as np
import pytest
from data_fixtures import IndexedBatches, Preempting

from pjx import config as config_lib
from pjx import loop, run, train
from pjx import plan as plan_lib
from pjx.metrics_log import TIMING_KEYS

VOCAB, L = 32, 16


def _tiny_config(name, task, model=(), **kw):
    """A one-layer `name` model of width 32 over VOCAB ids, rows of L, batch 4, one device."""
    c = config_lib.base_config()
    c.model.name, c.task = name, task
    c.model.update(dict(num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64, vocab_size=VOCAB))
    c.model.update(dict(model))
    c.data.seq_len, c.batch_size, c.steps, c.log_every = L, 4, 4, 2
    c.optimizer.update(dict(lr=3e-3, warmup_steps=1))
    c.mesh.update(dict(data=1))
    c.progress = False
    for k, v in kw.items():
        config_lib.set_key(c, k, v, parse=False)
    return c


def _gpt2_config(**kw):
    return _tiny_config("gpt2", "clm", dict(max_position_embeddings=L), **kw)


def _lm_batches(seed=0, B=4):
    rng = np.random.RandomState(seed)
    while True:
        ids = rng.randint(0, VOCAB, (B, L)).astype(np.int32)
        yield {"input_ids": ids, "segment_ids": np.ones_like(ids)}


def _lm_eval(n=6, B=4):
    """n examples in batches of B, the last padded with garbage rows of weight 0."""
    rows = np.random.RandomState(9).randint(0, VOCAB, (n, L)).astype(np.int32)
    out = []
    for i in range(0, n, B):
        ids = np.full((B, L), 7, np.int32)
        k = min(B, n - i)
        ids[:k] = rows[i : i + k]
        seg = np.zeros((B, L), np.int32)
        seg[:k] = 1
        w = (np.arange(B) < k).astype(np.float32)
        out.append({"input_ids": ids, "segment_ids": seg, "weight": w})
    return out


def _read(path):
    return [json.loads(x) for x in open(path)]


def _one_device():
    return jax.devices()[:1]


def test_metrics_jsonl_and_determinism(tmp_path):
    c = _gpt2_config(eval_every=2, **{"model.dropout_rate": 0.1})
    runs = []
    for name in ("a", "b"):
        run.train(
            c,
            str(tmp_path / name),
            train_data=_lm_batches(),
            eval_data=_lm_eval(),
            checkpoints=False,
            devices=_one_device(),
        )
        runs.append(_read(tmp_path / name / "metrics.jsonl"))
    a, b = runs
    assert [(r["step"], r["split"]) for r in a] == [
        (2, "train"),
        (2, "eval"),
        (4, "train"),
        (4, "eval"),
    ]
    tr, ev = a[0], a[1]
    assert {"loss", "learning_rate", "tokens_per_s"} <= set(tr)
    assert {"loss", "perplexity", "accuracy"} <= set(ev)
    assert ev["count"] == 6 * (L - 1)  # exact: padding rows carry weight 0
    np.testing.assert_allclose(ev["perplexity"], np.exp(ev["loss"]), rtol=1e-5)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rs]
    assert strip(a) == strip(b)
    assert list((tmp_path / "a" / "tensorboard").iterdir())


def test_eval_padding_invariance():
    """Garbage in weight-0 rows changes nothing; a batch split differently gives the same."""
    c = _gpt2_config()
    s = train.build(plan_lib.from_config(c), devices=_one_device())
    state = train.create_state(s, 0)
    m1 = train.evaluate(s, state.params, _lm_eval(6, 4))
    m2 = train.evaluate(s, state.params, _lm_eval(6, 2))
    for k in ("loss", "count", "accuracy"):
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-5)


def test_nan_stops_naming_the_step(tmp_path):
    c = _gpt2_config(log_every=1, steps=6)
    c.optimizer.update(
        dict(lr=1e30, warmup_steps=0, schedule="constant", clip_norm=0.0, weight_decay=0.0)
    )

    def batches():  # a NaN-free stream; the optimizer blows up the params
        yield from _lm_batches()

    with pytest.raises(loop.NonFiniteLossError, match=r"at step (\d)") as e:
        run.train(c, str(tmp_path), train_data=batches(), checkpoints=False, devices=_one_device())
    assert 1 < e.value.step <= 6 and f"step {e.value.step}" in str(e.value)
    lines = _read(tmp_path / "metrics.jsonl") if (tmp_path / "metrics.jsonl").exists() else []
    assert all(np.isfinite(r["loss"]) for r in lines)
    assert all(r["step"] < e.value.step for r in lines)


def test_train_lines_time_the_wait_for_data(tmp_path):
    """`data_wait_s`: the seconds per step the loop spent blocked on the input pipeline."""
    c = _gpt2_config(log_every=2, steps=4)

    def slow():  # 0.3 s a batch, far more than a tiny model's step
        for b in _lm_batches():
            time.sleep(0.3)
            yield b

    run.train(c, str(tmp_path), train_data=slow(), checkpoints=False, devices=_one_device())
    lines = [r for r in _read(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in lines] == [2, 4]
    # Step 1's batch is read before compiling, outside the loop; steps 3 and 4 wait 0.3 s.
    assert lines[-1]["data_wait_s"] == pytest.approx(0.3, abs=0.1)


@pytest.mark.slow
def test_tiny_gpt2_overfits_repeated_text(tmp_path):
    # Every character occurs once per repeat, so the next one is always determined.
    alphabet = "the quickbrownfxjmpsvlazydg.,!?"
    ids = np.array([alphabet.index(ch) for ch in alphabet * 8], np.int32)

    def batches():
        rng = np.random.RandomState(0)
        while True:
            starts = rng.randint(0, len(ids) - L, 8)
            x = np.stack([ids[s : s + L] for s in starts])
            yield {"input_ids": x, "segment_ids": np.ones_like(x)}

    c = _gpt2_config(steps=300, log_every=10, batch_size=8)
    c.model.update(
        dict(
            num_layers=2, hidden_size=64, mlp_dim=128, dropout_rate=0.0, attention_dropout_rate=0.0
        )
    )
    c.optimizer.update(dict(lr=1e-2, warmup_steps=10, weight_decay=0.0))
    last = run.train(
        c, str(tmp_path), train_data=batches(), checkpoints=False, devices=_one_device()
    )
    first = _read(tmp_path / "metrics.jsonl")[0]["loss"]
    assert first > 2.0 and last["loss"] < 0.1, (first, last)


def _lm_batch(i):
    ids = np.random.RandomState(i).randint(0, VOCAB, (4, L)).astype(np.int32)
    return {"input_ids": ids, "segment_ids": np.ones_like(ids)}


def _resumable_lm(kill_at=None):
    return Preempting(IndexedBatches(_lm_batch), kill_at)


@pytest.mark.parametrize("stop_after", [2, 3])
def test_preempted_and_resumed_equals_uninterrupted(tmp_path, stop_after):
    """SIGTERM finishes the step, saves and raises Preempted; rerunning the same command
    gives the uninterrupted run's metrics.jsonl (dropout on, 2 micro-batches per step)."""
    c = _gpt2_config(
        steps=5, log_every=1, eval_every=2, checkpoint_every=2, **{"model.dropout_rate": 0.1}
    )
    c.optimizer.accum_steps = 2
    kw = dict(eval_data=_lm_eval(), devices=_one_device())
    run.train(c, str(tmp_path / "ref"), train_data=_resumable_lm(), **kw)
    workdir = str(tmp_path / "run")
    # Batch k is pulled when step k+1 starts (batch 0 before the loop): that step completes.
    with pytest.raises(loop.Preempted) as e:
        run.train(c, workdir, train_data=_resumable_lm(kill_at=stop_after - 1), **kw)
    assert e.value.step == stop_after
    assert (tmp_path / "run" / "checkpoints" / str(stop_after)).is_dir()
    run.train(c, workdir, train_data=_resumable_lm(), **kw)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rs]
    assert strip(_read(tmp_path / "run" / "metrics.jsonl")) == strip(
        _read(tmp_path / "ref" / "metrics.jsonl")
    )
    # A third run finds the run complete and changes nothing.
    last = run.train(c, workdir, train_data=_resumable_lm(), **kw)
    assert last["step"] == 5 and len(_read(tmp_path / "run" / "metrics.jsonl")) == 8


def _bert_classify_config(**kw):
    # Dropout masks are drawn per shape: trimmed and padded runs compare without them.
    model = dict(num_labels=2, dropout_rate=0.0, attention_dropout_rate=0.0)
    return _tiny_config("bert", "classify", model, **{"steps": 6, "log_every": 1, **kw})


def _sentence_batches(seed=0, B=4, n=None):
    """Rows of 2..L real tokens (a batch's longest row sets its width), padded with 0."""
    rng = np.random.RandomState(seed)
    for i in range(n or 10**9):
        longest = [3, 11, 6, 16, 2, 9][i % 6]  # widths 4, 12, 8, 16, 4, 12 at multiple 4
        lens = np.minimum(rng.randint(2, longest + 1, B), longest)
        lens[0] = longest
        ids = rng.randint(5, VOCAB, (B, L)).astype(np.int32)
        mask = (np.arange(L) < lens[:, None]).astype(np.int32)
        yield {
            "input_ids": np.where(mask == 1, ids, 0),
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids),
            "label": rng.randint(0, 2, B).astype(np.int32),
        }


def test_trim_padding_keeps_every_used_column():
    s = train.build(
        plan_lib.from_config(_bert_classify_config(**{"data.length_bucket": 4})),
        devices=_one_device(),
    )
    widths = []
    for b in _sentence_batches(n=6):
        t = train.trim_padding(s, b)
        widths.append(t["input_ids"].shape[1])
        assert {k: v.shape[1] for k, v in t.items() if v.ndim == 2} == dict.fromkeys(
            ("input_ids", "attention_mask", "token_type_ids"), widths[-1]
        )
        assert t["attention_mask"].sum() == b["attention_mask"].sum()  # no real token cut
        np.testing.assert_array_equal(t["label"], b["label"])
    assert widths == [4, 12, 8, 16, 4, 12]
    off = train.build(
        plan_lib.from_config(_bert_classify_config(**{"data.length_bucket": 0})),
        devices=_one_device(),
    )
    assert train.trim_padding(off, b) is b


def test_trimmed_batches_train_like_padded_ones(tmp_path, capfd):
    """Cutting the padded tail changes only the cost: the same losses, step by step, and
    the same held-out metrics as every batch at seq_len; one compile per width."""
    lines = {}
    for bucket in (0, 4):
        c = _bert_classify_config(eval_every=6, **{"data.length_bucket": bucket})
        run.train(
            c,
            str(tmp_path / str(bucket)),
            train_data=_sentence_batches(),
            eval_data=list(_sentence_batches(seed=1, n=3)),
            checkpoints=False,
            devices=_one_device(),
        )
        out = "".join(capfd.readouterr())
        compiles = [x for x in out.splitlines() if "compiled train step" in x]
        assert len(compiles) == (4 if bucket else 1), compiles
        lines[bucket] = _read(tmp_path / str(bucket) / "metrics.jsonl")
    padded, trimmed = lines[0], lines[4]
    assert [(r["step"], r["split"]) for r in padded] == [(r["step"], r["split"]) for r in trimmed]
    for a, b in zip(padded, trimmed):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=2e-5)
        assert a.get("accuracy") == pytest.approx(b.get("accuracy"))
    assert padded[-1]["split"] == "eval" and padded[-1]["loss"] != padded[-2]["loss"]
