"""Prepared mode (pjx.data.prepared, `pjx data prepare`): the same bytes for any number of
workers, the cached mode's rows and batches, exact resume, N known (Poisson sampling)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from data_fixtures import ByteTok, lm_config, write_docs

from pjx import data, tokenizers
from pjx.data import prepared


def _prepare(
    tmp_path,
    name,
    workers,
    chunk_bytes=1 << 20,
    task="mlm",
    chunks_per_shard=0,
    runner=(),
    tokenizer=None,
):
    cfg = data.with_defaults(
        lm_config(source=f"text:{tmp_path}/docs*.txt", seq_len=32, chunk_bytes=chunk_bytes)
    )
    out = str(tmp_path / name)
    prepared.prepare(
        cfg,
        task=task,
        task_args={},
        tokenizer=tokenizer or ByteTok(),
        out=out,
        workers=workers,
        chunks_per_shard=chunks_per_shard,
        runner=runner,
    )
    return out


def _digest(folder):
    """{path under folder: sha256} of every file (the tokenizer's folder too)."""
    h = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                h[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return h


@pytest.fixture
def corpus(tmp_path):
    write_docs(tmp_path / "docs.txt", n_docs=300)
    return tmp_path


def test_workers_write_the_same_bytes_as_one_process(corpus):
    write_docs(corpus / "docs2.txt", n_docs=200, seed=1)
    one = _prepare(corpus, "one", 1, chunk_bytes=700)
    two = _prepare(corpus, "two", 2, chunk_bytes=700)
    index = prepared.load_index(one)
    assert index["rows"] > 40 and len(index["shards"]) > 3
    assert _digest(one) == _digest(two)
    grouped = _prepare(corpus, "grouped", 1, chunk_bytes=700, chunks_per_shard=3)
    assert len(prepared.load_index(grouped)["shards"]) < len(index["shards"])
    a, b = prepared.Table(one), prepared.Table(grouped)
    for k, v in a[np.arange(len(a))].items():  # the same rows in the same order
        np.testing.assert_array_equal(v, b[np.arange(len(b))][k])


def _build(cfg_source, tmp_path, seed=0, train=True, **kw):
    cfg = lm_config(source=cfg_source, seq_len=32, cache_dir=str(tmp_path / "cache"), **kw)
    return data.build(
        data.Spec(cfg, task="mlm", model="bert", seed=seed),
        tokenizer=ByteTok(),
        batch_size=8,
        train=train,
    )


def test_prepared_rows_and_batches_equal_the_cached_modes(corpus):
    out = _prepare(corpus, "prep", 1)
    cached_cfg = lm_config(source=f"text:{corpus}/docs.txt", seq_len=32)
    table = data.encode.table(
        data.with_defaults(cached_cfg), task="mlm", model="bert", tokenizer=ByteTok()
    )
    rows = prepared.Table(out)
    assert len(rows) == len(table["input_ids"])
    got = rows[np.arange(len(rows))]
    for k in table:
        np.testing.assert_array_equal(got[k], table[k])
    a = _build(f"prepared:{out}", corpus, seed=3)
    b = _build(f"text:{corpus}/docs.txt", corpus, seed=3)
    assert a.info["mode"] == "prepared" and b.info["mode"] == "cached"
    for _ in range(2 * a.steps_per_epoch + 1):  # into the third epoch
        x, y = next(a), next(b)
        for k in y:
            np.testing.assert_array_equal(x[k], y[k])
    evals = _build(f"prepared:{out}", corpus, train=False)
    assert sum(float(b["weight"].sum()) for b in evals) == len(rows)


def test_prepared_resume_and_known_size(corpus):
    out = _prepare(corpus, "prep", 1)
    it = _build(f"prepared:{out}", corpus)
    [next(it) for _ in range(5)]
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it) for _ in range(7)]
    again = _build(f"prepared:{out}", corpus)
    again.set_state(state)
    for x in want:
        np.testing.assert_array_equal(next(again)["input_ids"], x["input_ids"])
    n = data.num_rows(data.Spec(lm_config(source=f"prepared:{out}"), task="mlm", model="bert"))
    assert n == prepared.load_index(out)["rows"]
    cfg = lm_config(source=f"prepared:{out}", seq_len=32)
    poisson = data.build(
        data.Spec(cfg, task="mlm", model="bert", seed=0),
        tokenizer=ByteTok(),
        batch_size=8,
        train=True,
        poisson_rate=0.05,
    )
    assert next(poisson)["weight"].shape == (8,)


def test_prepared_checks_the_run(corpus):
    out = _prepare(corpus, "prep", 1)
    with pytest.raises(data.DataError, match="seq_len"):
        data.build(
            data.Spec(lm_config(source=f"prepared:{out}", seq_len=64), task="mlm", model="bert"),
            tokenizer=ByteTok(),
            batch_size=8,
            train=True,
        )
    with pytest.raises(data.DataError, match="task mlm"):
        data.build(
            data.Spec(lm_config(source=f"prepared:{out}", seq_len=32), task="clm", model="gpt2"),
            tokenizer=ByteTok(),
            batch_size=8,
            train=True,
        )
    with pytest.raises(data.DataError, match="no index.json"):
        prepared.Table(str(corpus / "nothing"))
    with pytest.raises(FileExistsError):
        _prepare(corpus, "prep", 1)


CONFIG = """
from pjx import config as config_lib

def get_config(arg=""):
    c = config_lib.base_config()
    c.model.name, c.task = "gpt2", "clm"
    c.data.source = "jsonl:{src}"
    c.data.seq_len = 32
    c.data.tokenizer = "byte"
    return c
"""


def test_cli_prepare_and_train_source(tmp_path):
    lines = [json.dumps({"text": f"document {i} " + "word " * (i % 17)}) for i in range(200)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "cfg.py").write_text(CONFIG.format(src=tmp_path / "a.jsonl"))
    out = tmp_path / "prep"
    cmd = [
        sys.executable,
        "-m",
        "pjx.cli",
        "data",
        "prepare",
        "--config",
        str(tmp_path / "cfg.py"),
        "--out",
        str(out),
        "--workers",
        "2",
        "--config.data.chunk_bytes=2000",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["rows"] == prepared.load_index(out)["rows"] > 0
    assert os.path.isdir(out / "tokenizer")
    # The same on Apache Beam's DirectRunner: the same bytes (the runner's options follow it).
    beam = [*cmd[:-5], "--out", str(tmp_path / "beam"), "--config.data.chunk_bytes=2000"]
    beam.append("--runner")
    r = subprocess.run(beam, capture_output=True, text=True)
    assert r.returncode == 2 and "name a Beam runner" in r.stderr
    r = subprocess.run([*beam, "DirectRunner"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["runner"] == "DirectRunner"
    assert _digest(tmp_path / "beam") == _digest(out)


def test_beam_direct_runner_in_processes_writes_the_pools_bytes(corpus):
    """Apache Beam (the multi-process DirectRunner here; Dataflow / Flink / Spark on a
    cluster) runs the pool's shard writer, so the folder is the same bytes."""
    write_docs(corpus / "docs2.txt", n_docs=200, seed=1)
    # Beam's workers import what they unpickle: a tokenizer of pjx, not of the tests.
    tok = tokenizers.load("byte?specials=bert")
    pool = _prepare(corpus, "pool", 2, chunk_bytes=700, tokenizer=tok)
    options = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")
    runner = ("DirectRunner", *options)
    beam = _prepare(corpus, "beam", 1, chunk_bytes=700, runner=runner, tokenizer=tok)
    assert len(prepared.load_index(pool)["shards"]) > 3
    assert _digest(beam) == _digest(pool)


def test_prepared_rows_are_the_streamed_rows(corpus):
    write_docs(corpus / "docs2.txt", n_docs=200, seed=1)
    out = _prepare(corpus, "prep", 2, chunk_bytes=700)
    rows = prepared.Table(out)
    cfg = lm_config(source=f"text:{corpus}/docs*.txt", seq_len=32, chunk_bytes=700)
    cfg.update(dict(mode="stream", shuffle=False, shuffle_buffer=8))
    it = data.build(
        data.Spec(cfg, task="mlm", model="bert"), tokenizer=ByteTok(), batch_size=8, train=True
    )
    n = len(rows)
    streamed = np.concatenate([next(it)["input_ids"] for _ in range(-(-n // 8))])[:n]
    np.testing.assert_array_equal(streamed, rows[np.arange(n)]["input_ids"])


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "pjx.cli", *argv], capture_output=True, text=True)


def test_a_prepare_killed_part_way_resumes_to_the_same_bytes(tmp_path):
    """SIGKILL while the shards are written; the same command again skips the shards that
    were finished and writes the others: the folder equals an uninterrupted prepare's."""
    lines = [json.dumps({"text": f"document {i} " + "word " * (i % 23)}) for i in range(3000)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "cfg.py").write_text(CONFIG.format(src=tmp_path / "a.jsonl"))
    args = ["data", "prepare", "--config", str(tmp_path / "cfg.py"), "--workers", "1",
            "--config.data.chunk_bytes=600"]  # fmt: skip
    r = _cli(*args, "--out", str(tmp_path / "whole"))
    assert r.returncode == 0, r.stderr[-2000:]
    out, tmp = tmp_path / "killed", tmp_path / "killed.tmp"
    p = subprocess.Popen([sys.executable, "-m", "pjx.cli", *args, "--out", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(tmp.glob("*.done.json"))) < 3 and p.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    p.kill()
    p.wait()
    n_shards = len(prepared.load_index(tmp_path / "whole")["shards"])
    finished = len(list(tmp.glob("*.done.json")))
    assert not out.exists() and 3 <= finished < n_shards, (finished, n_shards)
    r = _cli(*args, "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming {tmp}: {finished} of {n_shards} shards already written" in r.stdout
    assert _digest(out) == _digest(tmp_path / "whole") and not tmp.exists()
    assert _cli("data", "verify", str(out)).returncode == 0


def test_damaged_shards_are_named_never_read(corpus):
    out = _prepare(corpus, "prep", 1, chunk_bytes=700)
    index = prepared.load_index(out)
    first, second = (os.path.join(out, s["file"]) for s in index["shards"][:2])
    assert all(len(s["sha256"]) == 64 and s["bytes"] > 0 for s in index["shards"])
    r = _cli("data", "verify", out)
    assert r.returncode == 0 and "every checksum matches" in r.stdout, r.stderr
    # A changed byte, same size: verify names the shard; reading it fails (riegeli's hashes).
    raw = bytearray(open(second, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(second, "wb").write(bytes(raw))
    r = _cli("data", "verify", out)
    assert r.returncode == 1 and "rows-00001" in r.stderr and "SHA-256 differs" in r.stderr
    table = prepared.Table(out)
    at = np.arange(table.starts[1], table.starts[2])
    with pytest.raises(Exception):  # noqa: B017 - any error, never rows of garbage
        table[at]
    # A truncated shard: refused when the folder is opened, naming it and the way out.
    with open(first, "r+b") as f:
        f.truncate(index["shards"][0]["bytes"] // 2)
    with pytest.raises(data.DataError, match=r"rows-00000.*truncated or changed.*verify"):
        prepared.Table(out)[np.arange(2)]
    r = _cli("data", "verify", out)
    assert r.returncode == 1 and "2 of" in r.stderr and "prepare the data again" in r.stderr


def test_verify_on_a_folder_that_is_not_prepared_data_exits_2(tmp_path):
    r = _cli("data", "verify", str(tmp_path))
    assert r.returncode == 2 and f"{tmp_path}: no index.json" in r.stderr
