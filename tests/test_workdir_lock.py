"""One run per workdir (pjx.checkpoint.lock): a second `pjx train` in a live run's workdir
is refused and leaves the first untouched; a lock left by a dead process is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pjx.checkpoint import lock

REPO = Path(__file__).resolve().parents[1]


def _pjx_train(workdir, *overrides):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "pjx.cli", "train", "--config", "configs/gpt2_lm.py:smoke",
           "--workdir", str(workdir), *overrides]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(cond, proc, seconds=120):
    deadline = time.time() + seconds
    while not cond():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_second_run_in_a_live_workdir_is_refused(tmp_path):
    w = tmp_path / "run"
    metrics = w / "metrics.jsonl"
    first = _pjx_train(w, "--config.steps=100000")
    try:
        _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, first)
        second = _pjx_train(w, "--config.steps=100000")
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        holder = json.loads((w / lock.NAME).read_text())
        assert holder["pid"] == first.pid
        assert f"workdir {w} is in use by another run (pid {first.pid} on host " in err
        assert f"since {holder['since']}" in err and "Traceback" not in err
        assert first.poll() is None  # untouched: still training
        first.send_signal(signal.SIGTERM)  # a clean, resumable stop
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert "Traceback" not in err
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert len(steps) >= 2 and steps == sorted(set(steps))  # each line written once
    assert not (w / lock.NAME).exists()  # released


def _write_lock(workdir: Path, **holder):
    me = {"host": socket.gethostname(), "since": "2026-01-01 00:00:00 UTC", **holder}
    (workdir / lock.NAME).write_text(json.dumps(me) + "\n")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    pid = _dead_pid()
    _write_lock(tmp_path, pid=pid)
    held = lock.hold(tmp_path)
    assert f"taking over the lock of a run that is gone (pid {pid} on host" in (
        capsys.readouterr().err
    )
    assert json.loads((tmp_path / lock.NAME).read_text())["pid"] == os.getpid()
    lock.release(held)
    assert not (tmp_path / lock.NAME).exists()


def test_live_or_foreign_holder_is_refused_and_kept(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _write_lock(tmp_path, pid=sleeper.pid, start=lock._start_time(sleeper.pid))
        with pytest.raises(lock.WorkdirBusy, match=f"pid {sleeper.pid} on host .*since 2026"):
            lock.hold(tmp_path)
    finally:
        sleeper.kill()
    _write_lock(tmp_path, pid=_dead_pid(), host="another-host")  # cannot be judged from here
    with pytest.raises(lock.WorkdirBusy, match="on host another-host.*delete .*run.lock"):
        lock.hold(tmp_path)
    assert json.loads((tmp_path / lock.NAME).read_text())["host"] == "another-host"


def test_a_run_takes_its_own_lock_again(tmp_path):
    outer = lock.hold(tmp_path)  # the same thread holding its workdir again
    inner = lock.hold(tmp_path)
    lock.release(inner)
    assert not (tmp_path / lock.NAME).exists()
    lock.release(outer)  # a no-op now
    lock.release(lock.hold(tmp_path))
