"""pjx.data.build: batch keys per task, eval coverage, determinism, resume, sharding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import ByteTok, lm_config, write_docs

from pjx import bench_from_config, data
from pjx import config as config_lib
from pjx.data import pipeline
from pjx.data.sources import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def corpus(tmp_path):
    write_docs(tmp_path / "docs.txt", n_docs=80)
    return tmp_path


def _build(tmp_path, task="mlm", model="bert", train=True, batch_size=4, seed=0, **kw):
    cfg = lm_config(
        source=f"text:{tmp_path}/docs.txt", seq_len=32, cache_dir=str(tmp_path / "cache"), **kw
    )
    return data.build(
        data.Spec(cfg, task=task, model=model, seed=seed),
        tokenizer=ByteTok(),
        batch_size=batch_size,
        train=train,
        **{k: v for k, v in kw.items() if k.startswith("process")},
    )


def _take(it, n):
    return [next(it) for _ in range(n)]


def _eq(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


# ------------------------------------------------------------------------- task keys
KEYS = {
    ("mlm", "bert"): {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "segment_ids",
        "position_ids",
    },
    ("clm", "gpt2"): {"input_ids", "segment_ids", "position_ids"},
    ("span", "t5"): {"input_ids"},
}


@pytest.mark.parametrize("task, model", list(KEYS))
def test_lm_batch_keys(corpus, task, model):
    batch = next(_build(corpus, task, model))
    assert set(batch) == KEYS[(task, model)]
    for v in batch.values():
        assert v.shape == (4, 32) and v.dtype == np.int32
    if task == "mlm":
        np.testing.assert_array_equal(batch["attention_mask"], batch["segment_ids"] > 0)
    if task == "span":
        assert np.all(batch["input_ids"] > 0)  # contiguous text, no padding


def test_mlm_with_nsp(corpus):
    cfg = lm_config(source=f"text:{corpus}/docs.txt", seq_len=32, cache_dir=str(corpus / "cache"))
    b = next(
        data.build(
            data.Spec(cfg, task="mlm", task_args={"nsp": True}, model="bert", seed=0),
            tokenizer=ByteTok(),
            batch_size=8,
            train=True,
        )
    )
    assert b["next_sentence_label"].shape == (8,)
    assert b["token_type_ids"].max() == 1


def test_text_classification_and_seq2seq_keys(tmp_path):
    p = tmp_path / "pairs.tsv"
    p.write_text("a\tb\tlabel\n" + "".join(f"x{i}\ty{i}\t{i % 3}\n" for i in range(10)))
    cfg = lm_config(
        source=f"tsv:{p}",
        seq_len=16,
        text_columns=("a", "b"),
        label_column="label",
        cache_dir=str(tmp_path / "c"),
    )
    b = next(
        data.build(
            data.Spec(cfg, task="classify", model="bert", num_labels=3),
            tokenizer=ByteTok(),
            batch_size=4,
            train=True,
        )
    )
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids", "label"}
    assert b["label"].shape == (4,) and b["input_ids"].shape == (4, 16)
    cfg.update(dict(text_columns=("a",), target_column="b", target_len=8))
    b = next(
        data.build(
            data.Spec(cfg, task="seq2seq", model="t5"),
            tokenizer=ByteTok(),
            batch_size=4,
            train=True,
        )
    )
    assert set(b) == {"input_ids", "attention_mask", "labels", "decoder_attention_mask"}
    assert b["labels"].shape == (4, 8)


def test_bad_setting_names_the_choices(corpus):
    with pytest.raises(DataError, match=r"data.pack='packed': choose one of"):
        _build(corpus, pack="packed")


def test_text_task_without_tokenizer_says_so(corpus):
    cfg = lm_config(source=f"text:{corpus}/docs.txt", cache_dir=str(corpus / "c"))
    with pytest.raises(DataError, match="needs a tokenizer: set data.tokenizer"):
        data.build(data.Spec(cfg, task="mlm", model="bert"), batch_size=4, train=True)


# ------------------------------------------------------------------------------ eval
@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_each_example_once(tmp_path, process_count):
    p = tmp_path / "t.tsv"
    n = 23
    p.write_text("sentence\tlabel\n" + "".join(f"s{i}\t{i % 2}\n" for i in range(n)))
    cfg = lm_config(source=f"tsv:{p}", seq_len=8, cache_dir=str(tmp_path / "c"))
    seen = []
    lengths = set()
    for pi in range(process_count):
        evals = data.build(
            data.Spec(cfg, task="classify", model="bert"),
            tokenizer=ByteTok(),
            batch_size=8,
            train=False,
            process_index=pi,
            process_count=process_count,
        )
        lengths.add(len(evals))
        batches = list(evals)
        assert len(batches) == len(evals) and _eq(batches, list(evals))  # re-iterable
        for b in batches:
            assert b["weight"].dtype == np.float32 and len(b["weight"]) == 8 // process_count
            ids = b["input_ids"][b["weight"] > 0]
            seen += [ByteTok().decode(r) for r in ids]
    assert len(lengths) == 1  # every process runs the same number of batches
    assert sorted(seen) == sorted(f"s{i}" for i in range(n))  # each example exactly once


# -------------------------------------------------------------------- determinism
def test_same_seed_same_batches_other_seed_differs(corpus):
    a, b = _take(_build(corpus, seed=3), 6), _take(_build(corpus, seed=3), 6)
    c = _take(_build(corpus, seed=4), 6)
    assert _eq(a, b)
    assert not _eq(a, c)


def test_epochs_are_permutations_and_drop_remainder():
    idx = pipeline.BatchIndex(10, 3, train=True, seed=0)
    assert idx.per_epoch == 3  # 10 rows -> 3 full batches, 1 row dropped
    e0 = np.concatenate([idx[i] for i in range(3)])
    e1 = np.concatenate([idx[i] for i in range(3, 6)])
    assert len(set(e0)) == 9 and len(set(e1)) == 9 and not np.array_equal(e0, e1)
    # two processes, each its half of every global batch of 4: together exactly the
    # global batches one process makes
    one = pipeline.BatchIndex(10, 4, train=True, seed=0)
    halves = [pipeline.BatchIndex(10, 4, [0, 1], train=True, seed=0)]
    halves.append(pipeline.BatchIndex(10, 4, [2, 3], train=True, seed=0))
    for i in range(5):
        np.testing.assert_array_equal(np.concatenate([h[i] for h in halves]), one[i])


def test_resume_continues_where_it_stopped(corpus):
    it = _build(corpus, seed=1)
    _take(it, 5)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    want = _take(it, 7)
    fresh = _build(corpus, seed=1)
    iter(fresh)  # the loop calls iter() before restoring
    fresh.set_state(state)
    assert _eq(_take(fresh, 7), want)


def test_resume_across_an_epoch_boundary(corpus):
    it = _build(corpus, seed=2, batch_size=16)
    n = it.steps_per_epoch
    _take(it, n - 1)
    state = it.get_state()
    want = _take(it, 3)
    fresh = _build(corpus, seed=2, batch_size=16)
    fresh.set_state(state)
    assert _eq(_take(fresh, 3), want)


def test_worker_processes_give_the_same_stream(corpus):
    a = _take(_build(corpus, seed=5), 4)
    it = _build(corpus, seed=5, worker_count=1)
    assert _eq(_take(it, 4), a)


# ------------------------------------------------------------------------- throughput
def test_bench_pipeline_reports_tokens_per_s(corpus):
    config = config_lib.base_config()
    config.task, config.model.name, config.batch_size = "clm", "gpt2", 4
    config.data.update(
        dict(source=f"text:{corpus}/docs.txt", seq_len=32, cache_dir=str(corpus / "c"))
    )
    out = bench_from_config.pipeline(config, 20, tokenizer=ByteTok())
    assert out["tokens_per_s"] > 0 and out["seq_len"] == 32 and out["steps"] == 20
    json.dumps(out)


def test_embedded_corpus_builds(tmp_path):
    cfg = lm_config(source="embedded", seq_len=64, cache_dir=str(tmp_path))
    b = next(
        data.build(
            data.Spec(cfg, task="mlm", model="bert"), tokenizer=ByteTok(), batch_size=8, train=True
        )
    )
    assert b["input_ids"].shape == (8, 64)
