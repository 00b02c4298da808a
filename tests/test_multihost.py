"""Several hosts, played by real processes on this machine: 2 processes x 4 CPU devices
joined through jax.distributed (gloo collectives, a coordinator on a free localhost port),
each running `pjx train` as a user would on every host."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import write_sst2

from pjx.metrics_log import TIMING_KEYS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = f"{ROOT}/configs/gpt2_lm.py:smoke"
MESH = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]

pytestmark = pytest.mark.multihost


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONUNBUFFERED="1",
        JAX_COMPILATION_CACHE_DIR=str(ROOT / ".jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
    )


def _start(workdir, *extra, processes=2, devices=4, argv=None):
    """`pjx train` in `processes` processes (one process: no distributed flags)."""
    port = _port()
    procs = []
    for i in range(processes):
        cmd = argv or [sys.executable, "-m", "pjx.cli", "train", "--config", CONFIG]
        cmd = [*cmd, "--workdir", str(workdir), *MESH, *extra]
        if processes > 1:
            cmd += ["--coordinator", f"localhost:{port}", "--num-processes", str(processes)]
            cmd += ["--process-id", str(i)]
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=_env(devices),
                cwd=ROOT,
            )
        )
    return procs


def _run(workdir, *extra, processes=2, devices=4, timeout=240):
    procs = _start(workdir, *extra, processes=processes, devices=devices)
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def _lines(workdir, split=None):
    lines = [json.loads(x) for x in open(Path(workdir) / "metrics.jsonl")]
    return [r for r in lines if split is None or r["split"] == split]


def _strip(lines):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in lines]


STEPS = 16
RUN = [f"--config.steps={STEPS}", "--config.checkpoint_every=4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run on 2 processes x 4 devices and on 1 process x 8 devices."""
    base = tmp_path_factory.mktemp("mh")
    _run(base / "two", *RUN)
    _run(base / "one", *RUN, processes=1, devices=8)
    return base


def test_two_processes_train_as_one(runs):
    two, one = _lines(runs / "two", "train"), _lines(runs / "one", "train")
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-6)
    gap = max(abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(two, one))
    print(f"largest relative train-loss difference, 2 processes vs 1: {gap:.2e}")
    # Written once: one metrics.jsonl line per event, one config.json.
    assert len(_lines(runs / "two")) == STEPS + 1 and (runs / "two" / "config.json").is_file()


def test_eval_of_two_processes_equals_one(runs):
    (two,), (one,) = _lines(runs / "two", "eval"), _lines(runs / "one", "eval")
    assert two["count"] == one["count"] > 0  # every held-out token once
    for k in ("loss", "accuracy", "perplexity"):
        np.testing.assert_allclose(two[k], one[k], rtol=1e-6, err_msg=k)


def test_classification_batches_trimmed_to_one_width_on_every_process(tmp_path, monkeypatch):
    """Each process cuts its rows' padding to the longest row of the whole global batch
    (data.length_bucket), so both compile the same widths and train as one process does."""
    # Sentences of 1-24 words in bytes: batches of several widths, no vocabulary to train.
    write_sst2(tmp_path / "data" / "sst2" / "train.tsv", n=80, words=(1, 24))
    monkeypatch.setenv("PJX_DATA", str(tmp_path / "data"))
    glue = [
        sys.executable,
        "-m",
        "pjx.cli",
        "train",
        "--config",
        f"{ROOT}/configs/glue.py:sst2,smoke",
    ]
    extra = ["--config.steps=6", "--config.log_every=1", "--config.data.seq_len=128"]
    extra += ["--config.data.length_bucket=8", "--config.data.tokenizer=byte?specials=bert"]
    outs = []
    for name, processes, devices in (("two", 2, 4), ("one", 1, 8)):
        procs = _start(tmp_path / name, *extra, processes=processes, devices=devices, argv=glue)
        outs.append([p.communicate(timeout=240)[0] for p in procs])
        for p, out in zip(procs, outs[-1]):
            assert p.returncode == 0, out[-3000:]
    widths = [re.findall(r"compiled train step for width (\d+)", out) for out in sum(outs, [])]
    # Process 0 logs (the two-process run's first output, then the one-process run's).
    assert len(widths[0]) > 1 and widths[0] == widths[2], widths
    two, one = _lines(tmp_path / "two", "train"), _lines(tmp_path / "one", "train")
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-5)


ROWS = textwrap.dedent("""
    import json, sys
    import numpy as np
    from pjx import distributed, sharding
    from pjx.data import pipeline
    distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
    import jax
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rows = sharding.process_rows(sharding.batch_sharding(mesh, 8), 8)
    index = pipeline.BatchIndex(37, 8, rows, train=True, seed=3)
    ev = pipeline.BatchIndex(37, 8, rows, train=False)
    out = {"train": [index[i].tolist() for i in range(9)],
           "eval": [ev[i][0][ev[i][1] > 0].tolist() for i in range(len(ev))]}
    print("ROWS " + json.dumps(out), flush=True)
""")


def test_processes_read_each_global_batch_exactly_once(tmp_path):
    """Each process reads only its rows; together they read every global batch one
    process would, each row once (train: 9 batches over two epochs; eval: all 37 rows)."""
    script = tmp_path / "rows.py"
    script.write_text(ROWS)
    port = _port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), f"localhost:{port}", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(4),
            cwd=ROOT,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    got = [json.loads(re.search(r"ROWS (.*)", o).group(1)) for o in outs]
    sys.path.insert(0, str(ROOT))
    from pjx.data import pipeline

    one = pipeline.BatchIndex(37, 8, train=True, seed=3)
    for i in range(9):
        a, b = got[0]["train"][i], got[1]["train"][i]
        assert len(a) == len(b) == 4 and not set(a) & set(b)
        assert a + b == one[i].tolist()
    evals = sorted(r for g in got for batch in g["eval"] for r in batch)
    assert evals == list(range(37))


def _stop_one_process(run, *extra):
    """Starts a 2-process run, SIGTERMs process 1 (a preempted worker) once step 2 is done;
    returns (exit codes, outputs, the step both stopped at)."""
    procs = _start(run, *extra, "--config.log_every=1")
    _wait_for(procs[0], r"^step 2/")
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=120)[0] for p in procs]
    steps = [re.search(r"stopped by a signal after step (\d+)", o) for o in outs]
    steps = {int(m.group(1)) for m in steps if m}
    return [p.returncode for p in procs], outs, steps


def test_resume_on_two_processes_is_exact_and_restores_on_one(runs, tmp_path):
    """Stopped by a signal and resumed on 2 processes: the uninterrupted run's metrics to the
    bit. Its checkpoint also restores on 1 process x 8 devices and 1 x 1 device; and a
    1-process checkpoint on 2 processes."""
    run = tmp_path / "run"
    codes, outs, steps = _stop_one_process(run, *RUN)
    assert codes == [0, 0] and len(steps) == 1, outs[1][-2000:]
    (step,) = steps
    assert 2 <= step < STEPS
    saved = tmp_path / "saved"
    shutil.copytree(run, saved)
    _run(run, *RUN)
    assert _strip(_lines(run)) == _strip(_lines(runs / "two"))

    ref = _lines(runs / "two", "train")[step]["loss"]  # step + 1, from the step's state
    one_device = ["--config.mesh.data=1", "--config.mesh.fsdp=1", "--config.mesh.tensor=1"]
    for devices, mesh in ((8, []), (1, one_device)):
        copy = tmp_path / f"one{devices}"
        shutil.copytree(saved, copy)
        cont = [f"--config.steps={step + 1}", "--config.optimizer.decay_steps=16", *mesh]
        out = _run(copy, *cont, processes=1, devices=devices)[0]
        assert f"(step {step})" in out, out[-2000:]
        np.testing.assert_allclose(_lines(copy, "train")[-1]["loss"], ref, rtol=1e-5)
    back = tmp_path / "back"
    shutil.copytree(runs / "one", back)  # 1 process x 8 devices, the finished run
    outs = _run(back, f"--config.steps={STEPS + 1}", "--config.optimizer.decay_steps=16")
    assert f"(step {STEPS})" in outs[0]  # process 0 prints for all
    assert _lines(back, "train")[-1]["step"] == STEPS + 1


def _wait_for(proc, pattern, timeout=120):
    """Reads `proc`'s output until a line matches; returns what was read."""
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if re.search(pattern, line) or time.monotonic() > deadline:
            return "".join(seen)
    return "".join(seen)


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    run = tmp_path / "run"
    codes, outs, steps = _stop_one_process(run, "--config.steps=100000")
    assert codes == [0, 0], outs[1][-2000:]
    assert len(steps) == 1  # the same step on both
    (step,) = steps
    assert (run / "checkpoints" / str(step)).is_dir()
    outs = _run(run, f"--config.steps={step + 1}")
    assert f"resumed from {run / 'checkpoints' / str(step)} (step {step})" in outs[0]
    assert _lines(run)[-1]["step"] == step + 1


def test_a_killed_process_makes_the_other_exit_naming_it(tmp_path):
    procs = _start(tmp_path / "run", "--config.steps=100000", "--config.log_every=1")
    _wait_for(procs[0], r"^step 3/")
    procs[1].kill()  # kill -9: no goodbye
    t0 = time.monotonic()
    out = procs[0].communicate(timeout=90)[0]
    took = time.monotonic() - t0
    print(f"survivor exited {took:.1f} s after the kill")
    assert procs[0].returncode not in (0, None)
    assert "pjx: process 1 of 2 is lost" in out, out[-2000:]
    assert took < 60


@pytest.mark.parametrize("exiting", [True, False])
def test_heartbeat_failing_at_exit_is_not_a_lost_coordinator(monkeypatch, exiting):
    """At exit jax shuts the coordination service down while the heartbeat thread may be
    mid-beat: that failure ends the thread quietly (a finished run keeps exit code 0); the
    same failure while the process runs is a lost coordinator."""
    from pjx import distributed

    lost = []

    def exit_lost(procs, why):  # the real one ends the process; here: record, stop beating
        lost.append(procs)
        beat._stop.set()

    monkeypatch.setattr(distributed, "exit_lost", exit_lost)

    class Client:
        def key_value_set(self, *args, **kwargs):
            if exiting:
                beat._stop.set()  # what the atexit handler does, during this call
            raise RuntimeError("CANCELLED: the coordination service shut down")

        def key_value_dir_get(self, prefix):
            return []

    beat = distributed.Heartbeat(Client(), every_s=0.01)
    beat._thread.join(timeout=5)
    assert not beat._thread.is_alive()
    assert lost == ([] if exiting else [[0]])
