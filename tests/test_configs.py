"""Every config in configs/ loads, and its smoke variant trains 2 steps and evaluates through
the `pjx train` CLI, on generated files where the full config reads local data sets."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import write_idx, write_sst2

from pjx import cli
from pjx import config as config_lib
from pjx import workdir as workdir_lib

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _data_overrides(spec, tmp_path) -> list[str]:
    """Generated stand-ins for the local data sets the flows' configs read, so the
    pretrain -> fine-tune flows run on any machine."""
    if spec.startswith("vit"):
        src = f"idx:{write_idx(tmp_path / 'mnist')}"
    elif spec.startswith(("glue", "t5_span.py:seq2seq")):
        src = f"tsv:{write_sst2(tmp_path / 'train.tsv')}"
    else:
        return []  # smoke variants read the embedded corpus
    return [f"--config.data.source={src}[:64]", f"--config.eval_data.source={src}[64:]"]


SMOKE = [  # the smoke runs the README / docstrings print; FLOWS run the other variants
    "bert_mlm.py:smoke",
    "bert_mlm.py:nsp,smoke",
    "gpt2_lm.py:shakespeare_char,smoke",
    "vit_cls.py:smoke",
    "glue.py:sst2,smoke",
    "glue.py:sst2,dp,smoke",  # DP-SGD: calibrated noise, Poisson batches, dp_epsilon
    "electra.py:smoke",  # generator + discriminator in one step
    "modernbert_mlm.py:smoke",  # a classifier from it: tests/test_modernbert.py
    "distill.py:smoke",  # a tiny teacher (stage teacher), then a student (stage student)
]
# Staged smoke configs: the stage whose workdir the checks read.
LAST_STAGE = {"distill.py:smoke": "student"}
# Pretrain, then start a second config from that workdir (init_from). BERT's and ViT's
# flows are the quickstart and vit_simclr_mnist notebooks, run with the same checks in
# tests/test_notebooks.py (on generated data where the local data sets are missing).
FLOWS = {
    "gpt2": ["gpt2_lm.py:smoke", "gpt2_lm.py:smoke"],  # continued LM training
    "llama": ["llama_lm.py:smoke", "llama_lm.py:shakespeare_char,smoke"],
    "t5": ["t5_span.py:smoke", "t5_span.py:seq2seq,smoke"],
}
IN_NOTEBOOKS = [
    "quickstart.py:smoke",  # two stages in one config
    "vit_simclr.py:smoke",
    "vit_cls.py:probe,smoke",
    "vit_cls.py:finetune,smoke",
]
ALL_SPECS = SMOKE + [s for specs in FLOWS.values() for s in specs] + IN_NOTEBOOKS


def test_every_config_file_is_covered_and_loads():
    files = sorted(p.name for p in CONFIGS.glob("*.py"))
    assert files == sorted({s.split(":")[0] for s in ALL_SPECS})
    for spec in ALL_SPECS + ["glue.py:cola", "glue.py:mrpc", "glue.py:rte", "vit_cls.py:probe"]:
        name, arg = spec.split(":")
        c = config_lib.load(f"{CONFIGS / name}:{arg}")
        assert c.steps > 0 and c.model.name and c.task
        assert config_lib.load(str(CONFIGS / name)).steps > 2  # the full variant
        assert "pjx train --config" in (CONFIGS / name).read_text()  # documented command
    dp_lora = config_lib.load(f"{CONFIGS}/glue.py:sst2,dp,lora")
    assert (dp_lora.lora.rank, dp_lora.dp.target_epsilon, dp_lora.optimizer.lr) == (8, 8, 1e-3)


def _train(spec, workdir, tmp_path, *extra) -> list[dict]:
    """`pjx train` through the CLI; returns metrics.jsonl (of the last stage)."""
    name, arg = spec.split(":")
    argv = ["train", "--config", f"{CONFIGS / name}:{arg}", "--workdir", str(workdir)]
    argv += ["--config.progress=false", *_data_overrides(spec, tmp_path), *extra]
    assert cli.main(argv) == 0
    last = workdir / "finetune" if name == "quickstart.py" else workdir
    lines = [json.loads(x) for x in open(last / "metrics.jsonl")]
    evals = [r for r in lines if r["split"] == "eval"]
    assert evals and evals[-1]["step"] == 2 and np.isfinite(evals[-1]["loss"])
    assert (last / "checkpoints" / "2").is_dir()
    return evals


def _needs(spec) -> list[str]:
    """The local data sets (under $PJX_DATA, default ../shared/data) a config reads."""
    name, arg = spec.split(":")
    c = config_lib.load(f"{CONFIGS / name}:{arg}")
    stages = config_lib.stage_configs(c, "", ()) if c.stages else [("", c)]
    paths = []
    for _, s in stages:
        for d in (s.data, s.eval_data):
            source = d.get("source", "")
            if source.split(":")[0] in ("text", "tsv", "idx"):
                paths.append(source.split(":", 1)[1].split("[")[0])
    return [p for p in paths if not glob.glob(p)]


@pytest.mark.slow
@pytest.mark.parametrize("spec", SMOKE)
def test_smoke_variant_runs_exactly_as_printed(spec, tmp_path, monkeypatch, capsys):
    """`pjx train --config configs/SPEC --workdir DIR` from the project folder, as the
    README and the config docstrings print it: no other flag."""
    monkeypatch.chdir(CONFIGS.parent)
    missing = _needs(spec)
    if missing:
        pytest.skip(f"needs the local data sets {missing} (PJX_DATA)")
    workdir = tmp_path / "run"
    assert cli.main(["train", "--config", f"configs/{spec}", "--workdir", str(workdir)]) == 0
    workdir = workdir / LAST_STAGE.get(spec, "")
    lines = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
    evals = [r for r in lines if r["split"] == "eval"]
    assert evals and evals[-1]["step"] == 2 and np.isfinite(evals[-1]["loss"])
    assert (workdir / "checkpoints" / "2").is_dir()
    if spec.startswith(("glue", "vit_cls")):
        assert {"accuracy", "precision", "recall", "f1", "mcc"} <= set(evals[-1])
    if ",dp" in spec:
        assert evals[-1]["dp_epsilon"] <= 8.0 + 1e-6
    # The resolved config: printed at the start, saved with every model field spelled out.
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["steps"] == 2 and saved["model"]["num_layers"] > 0
    assert "vocab_size" in saved["model"] or saved["model"]["name"] == "vit"
    out = capsys.readouterr().out
    assert "config:\n" in out and "\n  model: {" in out and "\n  steps: 2\n" in out


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FLOWS))
def test_pretrain_then_finetune_with_init_from(family, tmp_path, capsys):
    first, *then = FLOWS[family]
    pre = tmp_path / "pretrain"
    _train(first, pre, tmp_path)
    for i, spec in enumerate(then):
        capsys.readouterr()
        run = tmp_path / f"finetune{i}"
        _train(spec, run, tmp_path, f"--config.init_from={pre}")
        report = capsys.readouterr().out
        loaded = int(re.search(r"init_from .*: (\d+) loaded", report).group(1))
        assert loaded > 0 and " 0 resized" in report


@pytest.mark.slow
def test_pjx_train_sigterm_saves_exits_zero_and_resumes(tmp_path):
    """Preemption through the real command: SIGTERM mid-run -> checkpoint, exit 0; the same
    command again resumes from it."""
    cmd = [sys.executable, "-m", "pjx.cli", "train", "--config", f"{CONFIGS}/bert_mlm.py:smoke"]
    cmd += ["--workdir", str(tmp_path / "run"), "--config.steps=100000"]
    env = dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        for line in proc.stdout:
            if line.startswith("step 3/"):
                proc.send_signal(signal.SIGTERM)
                break
        out = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    saved = re.search(r"stopped by a signal after step (\d+); checkpoint saved in (\S+)\.", out)
    assert saved, out
    step = int(saved.group(1))
    assert step >= 3 and (tmp_path / "run" / "checkpoints" / str(step)).is_dir()
    cmd[-1] = f"--config.steps={step + 1}"
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert (
        f"resumed from {tmp_path / 'run' / 'checkpoints' / str(step)} (step {step})" in again.stdout
    )
    steps = [json.loads(x)["step"] for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert steps == sorted(steps) and steps[-1] == step + 1


def test_dp_recipe_reads_text_with_the_pretrained_models_tokenizer(minilm_dir):
    """glue.py's DP recipes name bytes as their tokenizer for runs without a pretrained
    model; with init_from the model's own WordPiece vocabulary must win (a byte-fed
    MiniLM sees ids it never learned and DP-SGD stays at the majority class)."""
    from pjx import tokenizers

    text = "a gripping, funny film"
    for arg in ("sst2,dp", "sst2,dp,lora"):
        c = config_lib.load(f"{CONFIGS}/glue.py:{arg}")
        assert isinstance(workdir_lib.build_tokenizer(c), tokenizers.ByteTokenizer)  # no init_from
        c.init_from = f"hf:{minilm_dir}"
        tok = workdir_lib.build_tokenizer(c)
        assert tok.encode(text) == tokenizers.load(str(minilm_dir)).encode(text)
        assert tok.encode(text) != tokenizers.load("byte?specials=bert").encode(text)
        c.allow_vocab_resize = True  # a vocabulary change on purpose: the config's own
        assert isinstance(workdir_lib.build_tokenizer(c), tokenizers.ByteTokenizer)


def test_a_named_tokenizer_applies_where_init_from_brings_none(tmp_path):
    """A Hugging Face folder of weights only has no tokenizer to prefer: the config's
    named one applies (and without one, loading says what the folder lacks)."""
    from pjx import tokenizers

    (tmp_path / "config.json").write_text("{}")
    c = config_lib.load(f"{CONFIGS}/glue.py:sst2,dp")
    c.init_from = f"hf:{tmp_path}"
    assert isinstance(workdir_lib.build_tokenizer(c), tokenizers.ByteTokenizer)
    c.data.tokenizer = ""
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        workdir_lib.build_tokenizer(c)
