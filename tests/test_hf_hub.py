"""Hugging Face Hub ids (`hf:ORG/NAME[@REVISION]`, pjx.hf.hub) read from a real Hub cache
layout (`models--ORG--NAME/refs/main`, `snapshots/REV/...`) built in a temporary
HF_HUB_CACHE from the all-MiniLM-L6-v2 package files, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

from pjx import checkpoint as ckpt
from pjx import config as config_lib
from pjx import hf, inference, resolution, tokenizers
from pjx.hf import folder, hub

REPO = "sentence-transformers/all-MiniLM-L6-v2"
MAIN, PINNED = "a" * 40, "b" * 40  # commit hashes of two snapshots
FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json")
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Hello, world!"]


def add_snapshot(cache: Path, repo: str, commit: str, files: dict, ref: str | None = None):
    """A snapshot as huggingface_hub writes it: blobs/, snapshots/COMMIT/NAME -> blob links,
    refs/REF holding the commit hash."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        blob = repo_dir / "blobs" / f"{commit[:8]}-{name}"
        if not blob.exists():
            blob.symlink_to(Path(src).resolve())
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    if ref is not None:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)  # no newline, as the Hub writes it
    return snap


def use_offline_cache(monkeypatch, cache: Path):
    """Points huggingface_hub at `cache`, offline. It reads its environment once, at import:
    the module constants are what snapshot_download consults; the environment is for the
    subprocesses."""
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, minilm_dir):
    """An offline Hub cache holding all-MiniLM-L6-v2 at two commits: main and tag v1."""
    src = minilm_dir
    cache = tmp_path / "hub"
    files = {n: src / n for n in FILES if (src / n).exists()}
    add_snapshot(cache, REPO, MAIN, files, ref="main")
    add_snapshot(cache, REPO, PINNED, files, ref="v1")
    use_offline_cache(monkeypatch, cache)
    monkeypatch.chdir(tmp_path)  # no local folder shadows the id
    return cache


def snapshot(cache, commit):
    return cache / ("models--" + REPO.replace("/", "--")) / "snapshots" / commit


def test_parse_reads_hub_ids_only():
    assert hub.parse("bert-base-uncased") == ("bert-base-uncased", None)
    assert hub.parse("google/vit-base-patch16-224@main") == ("google/vit-base-patch16-224", "main")
    assert hub.parse(f"{REPO}@{MAIN}") == (REPO, MAIN)
    for path in ("/abs/folder", "./rel", "~/models/x", "a/b/c", "a--b", "x/", "x@", ""):
        assert hub.parse(path) is None, path


def test_hub_id_resolves_to_the_cached_snapshot(hub_cache):
    assert folder.model_folder(REPO) == snapshot(hub_cache, MAIN)
    assert folder.local_source(f"hf:{REPO}") == f"hf:{snapshot(hub_cache, MAIN)}"
    assert folder.local_source(f"peft:{REPO}") == f"peft:{snapshot(hub_cache, MAIN)}"
    assert folder.local_source("runs/x") == "runs/x"  # not hf: / peft:, untouched
    family, fields = hf.model_config(REPO)
    assert family == "bert" and fields["num_layers"] == 6 and fields["hidden_size"] == 384


def test_revision_pin(hub_cache):
    assert folder.model_folder(f"{REPO}@main") == snapshot(hub_cache, MAIN)
    assert folder.model_folder(f"{REPO}@v1") == snapshot(hub_cache, PINNED)  # a tag
    assert folder.model_folder(f"{REPO}@{PINNED}") == snapshot(hub_cache, PINNED)  # a commit
    with pytest.raises(FileNotFoundError, match=r"at revision 'v2' is not in the Hub cache"):
        folder.model_folder(f"{REPO}@v2")


def test_missing_id_names_id_cache_and_download_command(hub_cache):
    with pytest.raises(FileNotFoundError) as e:
        hf.load("nobody/no-such-model")
    msg = str(e.value)
    assert "'nobody/no-such-model' is not in the Hub cache" in msg
    assert str(hub_cache / "models--nobody--no-such-model") in msg  # where it looked
    assert "HF_HUB_OFFLINE=1" in msg
    assert 'hf download nobody/no-such-model --include "*.json"' in msg
    # A path that cannot be a Hub id keeps the plain message.
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        hf.load("./no/such/folder")


def test_local_folder_wins_over_the_hub(hub_cache, tmp_path):
    local = tmp_path / REPO  # relative to the working directory, named like the id
    local.mkdir(parents=True)
    (local / "config.json").write_text("{}")
    assert folder.model_folder(REPO) == Path(REPO)
    assert folder.model_folder(f"{REPO}@v1") == snapshot(hub_cache, PINNED)


def test_peft_adapter_and_its_base_from_the_hub(hub_cache, tmp_path):
    adapter = tmp_path / "adapter_config.json"
    adapter.write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": REPO}))
    add_snapshot(hub_cache, "someone/minilm-lora", MAIN, {"adapter_config.json": adapter}, "main")
    assert hf.peft_base("someone/minilm-lora") == str(snapshot(hub_cache, MAIN))
    assert hf.peft.read_config("someone/minilm-lora")["base_model_name_or_path"] == REPO


def test_init_from_hub_id_becomes_the_snapshot(hub_cache):
    c = config_lib.base_config()
    c.init_from = f"hf:{REPO}@v1"
    resolved = resolution.resolve_data(c)
    assert resolved.init_from == f"hf:{snapshot(hub_cache, PINNED)}"
    # What the run then reads from it: the tokenizer folder and the architecture.
    assert (ckpt.tokenizer_dir(resolved.init_from) / "vocab.txt").is_file()


@pytest.mark.hf
def test_hub_id_loads_like_transformers(hub_cache, minilm_dir):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import torch

    model, params = hf.load(REPO)
    tok = tokenizers.load(str(folder.model_folder(REPO)))
    rows = [[tok.cls_id, *ids, tok.sep_id] for ids in tok.encode_batch(SENTENCES)]
    L = max(map(len, rows))
    ids = np.array([r + [tok.pad_id] * (L - len(r)) for r in rows], np.int32)
    mask = np.array([[1] * len(r) + [0] * (L - len(r)) for r in rows], np.int32)
    out = jax.jit(model.apply)({"params": params}, input_ids=ids, attention_mask=mask)

    ref = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    np.testing.assert_allclose(
        np.asarray(out["last_hidden_state"]), want.last_hidden_state.numpy(), rtol=0, atol=1e-4
    )
    # inference.load reads the same id (its tokenizer too), for eval / predict / explain.
    _, params2, tok2 = inference.load(f"hf:{REPO}")
    assert tok2 is not None and tok2.encode("hello") == tok.encode("hello")
    got, want = traverse_util.flatten_dict(params2), traverse_util.flatten_dict(params)
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=str(k))


@pytest.mark.slow
def test_cli_convert_reads_the_environment(hub_cache, tmp_path):
    """`pjx convert hf-to-pjx hf:ORG/NAME` in a fresh process: HF_HUB_CACHE / HF_HUB_OFFLINE
    as huggingface_hub reads them at import."""
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HOME", None)
    cmd = [sys.executable, "-m", "pjx.cli", "convert", "hf-to-pjx", f"hf:{REPO}@v1", "out"]
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    saved = ckpt.read_checkpoint_config(tmp_path / "out")
    assert saved["converted_from"] == f"hf:{snapshot(hub_cache, PINNED)}"
    assert (ckpt.tokenizer_dir(tmp_path / "out") / "vocab.txt").is_file()
    cmd[-2:] = ["hf:nobody/missing", "out2"]
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "'nobody/missing' is not in the Hub cache " + str(hub_cache) in r.stdout + r.stderr
