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
