"""Streaming mode (pjx.data.stream / shards): the same documents as the cached mode, shards
split across processes, exact resume, memory that does not grow with the corpus, and the
mode choice."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import ByteTok, Preempting, lm_config, words

from pjx import data
from pjx.data import shards, stream
from pjx.uri import parse_uri

TESTS = Path(__file__).resolve().parent


def _docs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    return [f"{i} " + words(rng, int(rng.integers(1, 30))) for i in range(n)]


def _write(tmp_path, kind, docs, files=1):
    parts = [docs[i::files] for i in range(files)]
    for i, part in enumerate(parts):
        if kind == "text":
            (tmp_path / f"c{i}.txt").write_text("\n".join(part) + "\n")
        elif kind == "jsonl":
            lines = [json.dumps({"text": d, "id": j}) for j, d in enumerate(part)]
            (tmp_path / f"c{i}.jsonl").write_text("\n".join(lines) + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"text": part}), tmp_path / f"c{i}.parquet", row_group_size=7)
    ext = {"text": "txt", "jsonl": "jsonl", "parquet": "parquet"}[kind]
    return f"{kind}:{tmp_path}/c*.{ext}"


def _stream(source, tmp_path, task="clm", batch=4, seed=0, pi=0, pc=1, **kw):
    cfg = lm_config(source=source, seq_len=32, cache_dir=str(tmp_path / "cache"), mode="stream")
    cfg.update(dict(chunk_bytes=300, shuffle_buffer=16, num_threads=1, prefetch=2) | kw)
    return data.build(
        data.Spec(cfg, task=task, model={"clm": "gpt2", "mlm": "bert"}[task], seed=seed),
        tokenizer=ByteTok(),
        batch_size=batch * pc,
        train=True,
        process_index=pi,
        process_count=pc,
    )


def _epoch_rows(it, source, tmp_path, **kw):
    """The rows of one epoch of an unshuffled stream (a whole number of chunks)."""
    cfg = data.with_defaults(lm_config(source=source, seq_len=32, chunk_bytes=300, **kw))
    total = sum(
        stream.n_rows(stream.encode_chunk(c, i, "clm", {}, ByteTok(), cfg, 0))
        for i, c in enumerate(shards.plan(parse_uri(source), cfg))
    )
    batches = [next(it) for _ in range(-(-total // it.B))]
    return np.concatenate([b["input_ids"] for b in batches])[:total]


def _split_eos(rows):
    """CLM rows (documents end with <eos> = 5, padding 0) -> the tokenized documents."""
    flat = rows[rows > 0]
    ends = np.flatnonzero(flat == ByteTok.eos_id)
    return [tuple(d) for d in np.split(flat, ends + 1)[:-1] if len(d)]


@pytest.mark.parametrize("kind", ["text", "jsonl", "parquet"])
def test_stream_sees_the_cached_documents_tokenized_identically(tmp_path, kind):
    docs = _docs()
    source = _write(tmp_path, kind, docs, files=2)
    it = _stream(source, tmp_path, shuffle=False)
    got = collections.Counter(_split_eos(_epoch_rows(it, source, tmp_path)))
    tok = ByteTok()
    want = collections.Counter(tuple(tok.encode(d)) + (5,) for d in docs)
    assert got == want
    # the cached mode reads the same documents (its own reader for text:)
    cached = data.sources.read(source, data.with_defaults(lm_config(source=source)))
    assert sorted(cached.texts) == sorted(docs)
    assert len(shards.plan(parse_uri(source), data.with_defaults(lm_config(chunk_bytes=300)))) > 2


def test_stream_rows_equal_the_cached_rows_for_one_chunk(tmp_path):
    docs = _docs(40)
    source = _write(tmp_path, "text", docs)
    cfg = lm_config(source=source, seq_len=32, cache_dir=str(tmp_path / "cache"))
    table = data.encode.table(
        data.with_defaults(cfg), task="clm", model="gpt2", tokenizer=ByteTok(), seed=0
    )
    it = _stream(source, tmp_path, chunk_bytes=1 << 20, shuffle_buffer=4)
    n = len(table["input_ids"])
    got = np.concatenate([next(it)["input_ids"] for _ in range(-(-n // 4))])[:n]
    assert sorted(map(bytes, got)) == sorted(map(bytes, np.asarray(table["input_ids"])))
    assert not np.array_equal(got, table["input_ids"])  # shuffled within the window


def test_chunks_cover_every_line_once(tmp_path):
    docs = _docs(200)
    (tmp_path / "a.txt").write_bytes(("\ufeff" + "\r\n".join(docs) + "\r\n\n").encode())
    uri = parse_uri(f"text:{tmp_path}/a.txt")
    for size in (1, 7, 64, 1000, 1 << 20):
        cfg = data.with_defaults(lm_config(chunk_bytes=size))
        got = [d for c in shards.plan(uri, cfg) for d in shards.read_chunk(c, cfg)[0].texts]
        assert got == data.sources.read(uri, cfg).texts


@pytest.mark.parametrize("files,chunk", [(3, 300), (1, 300), (1, 1 << 20)])
def test_two_processes_read_disjoint_shards_whose_union_is_the_data(tmp_path, files, chunk):
    docs = _docs()
    source = _write(tmp_path, "jsonl", docs, files=files)
    cfg = data.with_defaults(lm_config(source=source, chunk_bytes=chunk, seq_len=32))
    chunks = shards.plan(parse_uri(source), cfg)
    seen = []
    for p in range(2):
        mine, stride = shards.split(chunks, p, 2)
        seen.append([d for c in mine for d in shards.read_chunk(c, cfg, stride)[0].texts])
    assert seen[0] and seen[1]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(docs)
    # and through the pipeline: each process's epoch holds its own documents
    for p in range(2):
        it = _stream(source, tmp_path, pi=p, pc=2, shuffle=False, chunk_bytes=chunk)
        mine, stride = shards.split(chunks, p, 2)
        total = sum(
            stream.n_rows(stream.encode_chunk(c, i, "clm", {}, ByteTok(), cfg, 0, stride))
            for i, c in enumerate(mine)
        )
        rows = np.concatenate([next(it)["input_ids"] for _ in range(-(-total // 4))])[:total]
        tok = ByteTok()
        assert collections.Counter(_split_eos(rows)) == collections.Counter(
            tuple(tok.encode(d)) + (5,) for d in seen[p]
        )


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_continues_bit_exactly(tmp_path, workers):
    source = _write(tmp_path, "text", _docs(300), files=2)
    it = _stream(source, tmp_path, task="mlm", workers=workers)
    first = [next(it) for _ in range(13)]
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it) for _ in range(30)]  # crosses windows and epochs
    again = _stream(source, tmp_path, task="mlm", workers=workers)
    again.set_state(state)
    got = [next(again) for _ in range(30)]
    for a, b in zip(want, got):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    it.set_state(state)  # the same, live iterator goes back
    for a in want:
        np.testing.assert_array_equal(next(it)["input_ids"], a["input_ids"])
    fresh = _stream(source, tmp_path, task="mlm", workers=workers)
    np.testing.assert_array_equal(next(fresh)["input_ids"], first[0]["input_ids"])
    if workers:  # the same stream with and without worker processes
        plain = _stream(source, tmp_path, task="mlm", workers=0)
        np.testing.assert_array_equal(next(plain)["input_ids"], first[0]["input_ids"])


def test_mode_is_chosen_by_the_source_and_logged(tmp_path, capsys):
    source = _write(tmp_path, "text", _docs())
    cfg = data.with_defaults(lm_config(source=source))
    assert data.choose_mode(cfg)[0] == "cached"
    cfg.stream_above = 10
    assert data.choose_mode(cfg)[0] == "stream"
    cfg.source = source + "[:50%]"
    assert data.choose_mode(cfg)[0] == "cached"
    for src in ("embedded", f"tsv:{tmp_path}/x.tsv", "idx:/nowhere"):
        assert data.choose_mode(data.with_defaults(lm_config(source=src)))[0] == "cached"
    assert data.choose_mode(data.with_defaults(lm_config(source="prepared:/x")))[0] == "prepared"
    with pytest.raises(data.DataError, match="data.mode=stream reads"):
        data.choose_mode(data.with_defaults(lm_config(source="embedded", mode="stream")))
    it = _stream(source, tmp_path)
    out = capsys.readouterr()
    assert "stream mode (data.mode=stream)" in out.out + out.err
    assert it.info["mode"] == "stream"


RSS = """
import resource, sys
sys.path.insert(0, {tests!r})
from data_fixtures import ByteTok, lm_config
from pjx import data
cfg = lm_config(source={source!r}, seq_len=128, mode="stream", chunk_bytes=1 << 18,
                shuffle_buffer=512, num_threads=1, prefetch=2)
it = data.build(data.Spec(cfg, task="clm", model="gpt2", seed=0), tokenizer=ByteTok(),
                batch_size=32, train=True)
for _ in range({batches}):
    next(it)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_memory_does_not_grow_with_the_corpus(tmp_path):
    rng = np.random.default_rng(0)
    block = "\n".join(words(rng, 60) for _ in range(6000)) + "\n"  # ~1.8 MB
    rss = {}
    for k in (1, 8):
        path = tmp_path / f"k{k}.txt"
        with open(path, "w") as f:
            for _ in range(k):
                f.write(block)
        code = RSS.format(tests=str(TESTS), source=f"text:{path}", batches=150)
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-2000:]
        rss[k] = int(out.stdout.split()[-1]) / 1024  # MiB
    # 8x the corpus (~14 MB more text; the cached mode holds ~20x the text in memory)
    assert rss[8] < rss[1] * 1.2 + 40, rss


def test_read_texts_of_a_stream_reads_chunk_by_chunk(tmp_path):
    source = _write(tmp_path, "jsonl", _docs(), files=2)
    cfg = lm_config(chunk_bytes=300)
    whole = list(data.read_texts(source, cfg))
    cfg.mode = "stream"  # texts come from one chunk at a time
    gen = data.read_texts(source, cfg)
    assert next(gen) == whole[0]
    assert [whole[0], *gen] == whole


def test_bench_data_only_in_stream_and_prepared_modes(tmp_path):
    from pjx import bench_from_config
    from pjx import config as config_lib
    from pjx.data import prepared

    source = _write(tmp_path, "text", _docs(), files=2)
    config = config_lib.base_config()
    config.task, config.model.name, config.batch_size = "clm", "gpt2", 4
    config.data.update(dict(source=source, seq_len=32, mode="stream", chunk_bytes=300))
    out = bench_from_config.pipeline(config, 20, tokenizer=ByteTok())
    assert out["mode"] == "stream" and out["tokens_per_s"] > 0 and out["first_batch_s"] > 0
    cfg = data.with_defaults(config.data)
    folder = str(tmp_path / "prep")
    prepared.prepare(cfg, task="clm", task_args={}, tokenizer=ByteTok(), out=folder)
    config.data.update(dict(source=f"prepared:{folder}", mode=""))
    out = bench_from_config.pipeline(config, 20, tokenizer=ByteTok())
    assert out["mode"] == "prepared" and out["tokens_per_s"] > 0
    json.dumps(out)


def test_preempted_stream_run_resumes_with_the_uninterrupted_loss_curve(tmp_path):
    from test_train import TIMING_KEYS, _gpt2_config, _lm_eval, _one_device, _read

    from pjx import loop, run

    source = _write(tmp_path, "text", _docs(300), files=2)
    c = _gpt2_config(steps=4, log_every=1, eval_every=4, checkpoint_every=2)
    c.model.vocab_size = ByteTok.vocab_size
    c.data.update(dict(source=source, mode="stream", chunk_bytes=300, shuffle_buffer=8))

    def stream_data(kill_at=None):
        it = data.build(
            data.Spec(c.data, task="clm", model="gpt2", seed=0),
            tokenizer=ByteTok(),
            batch_size=4,
            train=True,
        )
        return Preempting(it, kill_at)

    kw = dict(eval_data=_lm_eval(), devices=_one_device(), tokenizer=ByteTok())
    run.train(c, str(tmp_path / "ref"), train_data=stream_data(), **kw)
    workdir = str(tmp_path / "run")
    with pytest.raises(loop.Preempted):
        run.train(c, workdir, train_data=stream_data(kill_at=2), **kw)
    run.train(c, workdir, train_data=stream_data(), **kw)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rs]
    ref, got = _read(tmp_path / "ref" / "metrics.jsonl"), _read(tmp_path / "run" / "metrics.jsonl")
    assert len(ref) >= 5 and strip(got) == strip(ref)


def test_read_texts_of_a_large_stream_samples_whole_chunks(tmp_path):
    docs = _docs(400)
    source = _write(tmp_path, "text", docs)
    cfg = lm_config(chunk_bytes=300, stream_above=2000)  # stream, and texts up to ~2 kB
    got = list(data.read_texts(source, cfg))
    assert 0 < len(got) < len(docs) / 2
    assert set(got) <= {d + "\n" for d in docs}
    assert got == list(data.read_texts(source, cfg))  # the same sample every time
