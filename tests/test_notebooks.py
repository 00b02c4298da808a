"""The notebooks are valid nbformat-4 files whose code compiles and whose configs exist, and
every cell runs top to bottom in quick mode (PJX_SMOKE=1). The quickstart and ViT notebooks
are also the tests of BERT's and ViT's pretrain -> fine-tune flows (init_from)."""

import json
import re
from pathlib import Path

import chex
import pytest
from data_fixtures import write_idx, write_sst2

from pjx import inference

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
    "quickstart.ipynb": ["quickstart/pretrain", "quickstart/finetune", "quickstart/scratch"],
    "finetune_bert_glue.ipynb": ["sst2_minilm"],
    "gpt2_shakespeare.ipynb": ["shakespeare"],
    "vit_simclr_mnist.ipynb": ["vit_simclr", "vit_probe", "vit_finetune"],
}


def _stand_in(name: str, tmp_path: Path) -> tuple[str, str]:
    """(environment variable, value) pointing a notebook at generated data of the local
    data set's layout, for machines without ../shared/data."""
    data = tmp_path / "data"
    if name == "vit_simclr_mnist.ipynb":
        return "MNIST", str(write_idx(data / "mnist", n=600))
    if name == "finetune_bert_glue.ipynb":
        write_sst2(data / "sst2" / "train.tsv", n=400)
    else:
        (data / "tinyshakespeare").mkdir(parents=True)
        text = "ROMEO:\nBut soft, what light through yonder window breaks?\n\n" * 300
        (data / "tinyshakespeare" / "input.txt").write_text(text)
    return "PJX_DATA", str(data)


def _printed(book) -> str:
    return "".join(out.get("text", "") for cell in book.cells for out in cell.get("outputs", []))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom_in_quick_mode(path, tmp_path, monkeypatch):
    """Every cell of every notebook executes (PJX_SMOKE=1: 2 steps per stage), as a user
    runs it from the repository's notebooks/ folder; its runs and curves are written, and
    each fine-tuning stage starts from the pretraining run before it."""
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    need = NEEDS.get(path.name)
    if need and not (ROOT / need).exists():
        monkeypatch.setenv(*_stand_in(path.name, tmp_path))
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
    printed = _printed(book)
    if path.name in ("quickstart.ipynb", "vit_simclr_mnist.ipynb"):
        loads = re.findall(r"init_from .*: (\d+) loaded, (\d+) resized", printed)
        assert loads and all(int(n) > 0 and resized == "0" for n, resized in loads), printed
    if path.name == "quickstart.ipynb":  # the fine-tuning stage reports classification metrics
        evals = [json.loads(x) for x in open(tmp_path / "quickstart/finetune/metrics.jsonl")]
        assert {"accuracy", "f1", "mcc"} <= set([r for r in evals if r["split"] == "eval"][-1])
        assert re.search(r"from pretraining: [\d.]+ accuracy; from scratch: [\d.]+ \(", printed)
    if path.name == "vit_simclr_mnist.ipynb":  # the linear probe left the encoder as it was
        _, before, _ = inference.load(tmp_path / "vit_simclr")[:3]
        _, after, _ = inference.load(tmp_path / "vit_probe")[:3]
        chex.assert_trees_all_equal(before["vit"], after["vit"])
