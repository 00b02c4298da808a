"""The notebooks are valid nbformat-4 files whose code compiles and whose configs exist.
(Their runs are the configs' smoke runs, tested in test_configs.py.)"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_valid_and_compiles(path):
    book = json.loads(path.read_text())
    assert book["nbformat"] == 4 and book["metadata"]["kernelspec"]["name"] == "python3"
    code = ["".join(c["source"]) for c in book["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("outputs") == [] for c in book["cells"] if "outputs" in c)
    for i, src in enumerate(code):
        compile(src, f"{path.name}:cell{i}", "exec")
    for config in re.findall(r"configs/(\w+\.py)", "\n".join(code)):
        assert (ROOT / "configs" / config).is_file(), config


# Data each notebook reads besides the built-in corpus (relative to the repository root).
NEEDS = {
    "finetune_bert_glue.ipynb": "../shared/data/sst2/train.tsv",
    "gpt2_shakespeare.ipynb": "../shared/data/tinyshakespeare/input.txt",
    "vit_simclr_mnist.ipynb": "../shared/data/mnist_tsuga",
}
# The runs each notebook leaves behind (under PJX_RUNS).
RUNS = {
    "quickstart.ipynb": ["quickstart/pretrain", "quickstart/finetune"],
    "finetune_bert_glue.ipynb": ["sst2_minilm"],
    "gpt2_shakespeare.ipynb": ["shakespeare"],
    "vit_simclr_mnist.ipynb": ["vit_simclr", "vit_probe", "vit_finetune"],
}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom_in_quick_mode(path, tmp_path, monkeypatch):
    """Every cell of every notebook executes (PJX_SMOKE=1: 2 steps per stage), as a user
    runs it from the repository's notebooks/ folder; its runs and curves are written."""
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    need = NEEDS.get(path.name)
    if need and not (ROOT / need).exists():
        pytest.skip(f"{need} is not on this machine")
    monkeypatch.setenv("PJX_SMOKE", "1")
    monkeypatch.setenv("PJX_RUNS", str(tmp_path))
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    for run in RUNS[path.name]:
        assert (tmp_path / run / "metrics.jsonl").is_file(), run
    assert (tmp_path / "curves.png").stat().st_size > 1000
