"""pjx.data.cache: encode once, keyed by source + tokenizer + settings, atomic entries."""

from __future__ import annotations

import os

import numpy as np
from data_fixtures import ByteTok, lm_config, write_docs

from pjx import data
from pjx.data import cache, sources


class SavingTok(ByteTok):
    def __init__(self, tag="a"):
        self.tag = tag

    def save(self, directory):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "vocab.txt"), "w") as f:
            f.write(self.tag)


def _count_reads(monkeypatch):
    calls = []
    real = sources.read

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(sources, "read", counting)
    return calls


def _build(tmp_path, tok=None, **kw):
    kw = {"seq_len": 32, **kw}
    cfg = lm_config(source=f"text:{tmp_path}/docs.txt", cache_dir=str(tmp_path / "cache"), **kw)
    return data.build(
        data.Spec(cfg, task="mlm", model="bert"),
        tokenizer=tok or ByteTok(),
        batch_size=4,
        train=True,
    )


def test_encodes_once_and_reloads(tmp_path, monkeypatch):
    write_docs(tmp_path / "docs.txt")
    calls = _count_reads(monkeypatch)
    a = next(_build(tmp_path))
    b = next(_build(tmp_path))
    assert len(calls) == 1
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    entries = os.listdir(tmp_path / "cache")
    assert len(entries) == 1 and not entries[0].startswith(".tmp")
    assert os.path.isfile(tmp_path / "cache" / entries[0] / "meta.json")


def test_key_changes_with_settings_tokenizer_and_file(tmp_path, monkeypatch):
    write_docs(tmp_path / "docs.txt")
    calls = _count_reads(monkeypatch)
    _build(tmp_path)
    _build(tmp_path, seq_len=64)
    _build(tmp_path, tok=SavingTok("a"))
    _build(tmp_path, tok=SavingTok("a"))  # same saved files: a hit
    _build(tmp_path, tok=SavingTok("b"))
    assert len(calls) == 4
    write_docs(tmp_path / "docs.txt", seed=1)
    os.utime(tmp_path / "docs.txt", ns=(1, 1))  # a changed file is re-encoded
    _build(tmp_path)
    assert len(calls) == 5


def test_incomplete_entries_are_ignored(tmp_path):
    parts = {"kind": "x", "source": "s"}
    path = os.path.join(tmp_path, cache.entry_name(parts))
    os.makedirs(path)  # a folder without meta.json (not written by cache.write): absent
    open(os.path.join(path, "a.npy"), "wb").close()
    assert cache.load(path) is None
    built = []
    out = cache.cached(str(tmp_path), parts, lambda: built.append(1) or {"a": np.arange(3)})
    np.testing.assert_array_equal(out["a"], [0, 1, 2])
    assert built == [1] and cache.load(path) is not None
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_cache_root_order(tmp_path):
    cfg = lm_config()
    assert cache.root(cfg, str(tmp_path)) == str(tmp_path / "data_cache")
    cfg.data_dir = str(tmp_path)
    assert cache.root(cfg, "/w") == str(tmp_path / "pjx_cache")
    cfg.cache_dir = "/c"
    assert cache.root(cfg, "/w") == "/c"
    cfg = lm_config(cache=False, source="embedded:classify", seq_len=16)
    evals = data.build(
        data.Spec(cfg, task="classify", model="bert"),
        tokenizer=ByteTok(),
        batch_size=64,
        train=False,
        workdir=str(tmp_path / "w"),
    )
    assert len(evals) > 0 and not (tmp_path / "w").exists()
