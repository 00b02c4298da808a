"""Every config in configs/ loads, and its smoke variant trains 2 steps and evaluates through
the `pjx train` CLI, on generated files where the full config reads local data sets."""

import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from pjx import cli
from pjx import config as config_lib

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _idx(folder: Path, n=80):
    """MNIST-layout idx files (gzipped) of n random 28x28 digits."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + labels.tobytes())
    return f"idx:{folder}"


def _sst2(path: Path, n=80):
    rng = np.random.default_rng(0)
    words = "a fine good bad dull film plot acting and the was very".split()
    rows = [f"{' '.join(rng.choice(words, 6))} \t{i % 2}" for i in range(n)]
    path.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return f"tsv:{path}"


def _data_overrides(name, tmp_path) -> list[str]:
    if name.startswith("vit"):
        src = _idx(tmp_path / "mnist")
    elif name.startswith("glue"):  # too few distinct words for a SentencePiece vocabulary
        src = _sst2(tmp_path / "train.tsv")
        return [
            f"--config.data.source={src}[:64]",
            f"--config.eval_data.source={src}[64:]",
            "--config.data.tokenizer=byte?specials=bert",
        ]
    else:
        return []  # smoke variants read the embedded corpus
    return [f"--config.data.source={src}[:64]", f"--config.eval_data.source={src}[64:]"]


SMOKE = [
    "bert_mlm.py:smoke",
    "bert_mlm.py:nsp,smoke",
    "gpt2_lm.py:smoke",
    "gpt2_lm.py:shakespeare_char,smoke",
    "t5_span.py:smoke",
    "vit_cls.py:smoke",
    "vit_simclr.py:smoke",
    "glue.py:sst2,smoke",
    "quickstart.py:smoke",
]


def test_every_config_file_is_covered_and_loads():
    files = sorted(p.name for p in CONFIGS.glob("*.py"))
    assert files == sorted({s.split(":")[0] for s in SMOKE})
    for spec in SMOKE + ["glue.py:cola", "glue.py:mrpc", "glue.py:rte", "vit_cls.py:probe"]:
        c = config_lib.load(str(CONFIGS / spec.split(":")[0]) + ":" + spec.split(":")[1])
        assert c.steps > 0 and c.model.name and c.task
        assert config_lib.load(str(CONFIGS / spec.split(":")[0])).steps > 2  # full variant
        assert (CONFIGS / spec.split(":")[0]).read_text().count("pjx train --config") >= 1


@pytest.mark.slow
@pytest.mark.parametrize("spec", SMOKE)
def test_smoke_variant_trains_and_evaluates(spec, tmp_path):
    name = spec.split(":")[0]
    workdir = tmp_path / "run"
    argv = ["train", "--config", f"{CONFIGS / name}:{spec.split(':')[1]}"]
    argv += ["--workdir", str(workdir), "--config.progress=false"]
    assert cli.main(argv + _data_overrides(name, tmp_path)) == 0
    stages = ["pretrain", "finetune"] if name == "quickstart.py" else [""]
    for stage in stages:
        lines = [json.loads(x) for x in open(os.path.join(workdir, stage, "metrics.jsonl"))]
        evals = [r for r in lines if r["split"] == "eval"]
        assert evals and evals[-1]["step"] == 2 and np.isfinite(evals[-1]["loss"])
        assert (workdir / stage / "checkpoints" / "2").is_dir()
    if name in ("glue.py", "quickstart.py", "vit_cls.py"):
        assert {"accuracy", "precision", "recall", "f1", "mcc"} <= set(evals[-1])
