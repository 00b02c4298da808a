"""MetricsLog writes TensorBoard events through tensorboardX without importing torch."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import glob, os, sys
    from pjx.metrics_log import MetricsLog

    with MetricsLog(sys.argv[1], total_steps=1, progress=False) as log:
        log.eval(1, {"loss": 0.5})
    assert glob.glob(os.path.join(sys.argv[1], "tensorboard", "events.out.tfevents.*"))
    assert "torch" not in sys.modules, "tensorboardX imported torch"
    import tensorboardX  # noqa: F401
    import torch  # still importable once the writer exists

    print("ok", torch.__version__)
    """
)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch installed")
def test_tensorboard_writer_does_not_import_torch(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")
