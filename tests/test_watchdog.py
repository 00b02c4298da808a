"""A long run you can watch: the stall watchdog (real processes whose main thread is blocked
while their other threads run), the time summary, the profile window, MFU fields, and the
refusals of bad settings."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest
from test_multihost import CONFIG, ROOT, _env, _port

from pjx import cli, flops, lora, models, telemetry, watchdog
from pjx import config as config_lib
from pjx import plan as plan_lib

FAST = ["--config.write_curves=false", "--config.log_every=1"]


def _train(workdir, *extra, stall=None, processes=1):
    """`pjx train` of the GPT-2 smoke config in `processes` real processes; `stall`
    (PHASE:STEP) blocks the main thread of the last one there (pjx.loop._test_stall)."""
    port, procs = _port(), []
    for i in range(processes):
        cmd = [sys.executable, "-m", "pjx.cli", "train", "--config", CONFIG, "--workdir",
               str(workdir), *FAST, *extra]  # fmt: skip
        if processes > 1:
            cmd += ["--coordinator", f"localhost:{port}", "--num-processes", str(processes),
                    "--process-id", str(i), "--config.mesh.data=2"]  # fmt: skip
        env = _env(1)
        if stall and i == processes - 1:
            env["PJX_TEST_STALL"] = stall
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=env, cwd=ROOT))  # fmt: skip
    return procs


def test_a_blocked_main_thread_ends_the_run_with_code_4_and_its_stacks(tmp_path):
    run = tmp_path / "run"
    t0 = time.monotonic()
    (p,) = _train(run, "--config.steps=100000", "--config.watchdog.stall_s=3",
                  "--config.checkpoint_every=2", stall="data_wait:5")  # fmt: skip
    out = p.communicate(timeout=180)[0]
    assert p.returncode == watchdog.EXIT_CODE, out[-3000:]
    assert "process 0 of 1 is stalled, waiting for data" in out, out[-2000:]
    assert "Traceback" not in out
    stacks = (run / "stall" / "process_0.txt").read_text()
    assert "_test_stall" in stacks and "pjx-watchdog" not in stacks.splitlines()[0]
    assert "Thread" in stacks  # every thread's stack, the watchdog's own among them
    # The checkpoint before the stall is intact, and the same command resumes from it.
    steps = sorted(int(d.name) for d in (run / "checkpoints").iterdir() if d.name.isdigit())
    assert steps and steps[-1] == 4
    (p,) = _train(run, "--config.steps=6")
    out = p.communicate(timeout=180)[0]
    assert p.returncode == 0 and "(step 4)" in out, out[-2000:]
    print(f"stopped {time.monotonic() - t0:.0f}s after the start, window 3s")


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text()


def _children(pid: int) -> list[int]:
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        out += [int(c) for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    return out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker through /proc")
def test_a_frozen_data_worker_is_noticed(tmp_path):
    """SIGSTOP on the run's Grain worker process (data.workers=1): once the prefetched
    batches are used up the main thread waits for data, and the watchdog ends the run."""
    run, log = tmp_path / "run", tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "pjx.cli", "train", "--config", CONFIG, "--workdir", str(run),
           *FAST, "--config.steps=100000", "--config.watchdog.stall_s=5",
           "--config.data.workers=1", "--config.checkpoint_every=1000000"]  # fmt: skip
    # Output to a file: the frozen worker holds a pipe's write end open after the run exits.
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(1), cwd=ROOT)
    frozen = []
    try:
        deadline = time.monotonic() + 120
        while "step 10/" not in log.read_text():
            assert p.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        frozen = [
            c for c in _children(p.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()
        ]
        assert frozen, "no worker process"
        for c in frozen:
            os.kill(c, signal.SIGSTOP)
        t = time.monotonic()
        assert p.wait(timeout=120) == watchdog.EXIT_CODE, log.read_text()[-2000:]
        assert time.monotonic() - t < 60
    finally:
        p.kill()
        for c in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(c, signal.SIGKILL)
    out = log.read_text()
    assert "process 0 of 1 is stalled, waiting for data" in out, out[-2000:]
    stacks = (run / "stall" / "process_0.txt").read_text()
    assert "grain" in stacks and "pjx/loop.py" in stacks  # the main thread, in the reader


def test_a_long_first_compile_is_not_a_stall(tmp_path):
    """A 0.5 s window, far below the first compile (and the evaluation): the run ends."""
    (p,) = _train(tmp_path / "run", "--config.steps=3", "--config.watchdog.stall_s=0.5")
    out = p.communicate(timeout=180)[0]
    assert p.returncode == 0, out[-3000:]
    summary = json.loads((tmp_path / "run" / telemetry.SUMMARY_FILE).read_text())
    assert summary["compile_s"] > 0.5 and summary["ended"] == "done"


@pytest.mark.multihost
def test_a_stalled_peer_is_named_by_the_other_process(tmp_path):
    procs = _train(tmp_path / "run", "--config.steps=100000", "--config.watchdog.stall_s=4",
                   stall="step:5", processes=2)  # fmt: skip
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [4, 4], outs[0][-2000:] + outs[1][-2000:]
    assert "process 1 of 2 is stalled, in a train step" in outs[0] + outs[1], outs[0][-2000:]
    assert "process 0 stops too" in outs[0] or "process 1 stops too" in outs[1]
    for i in (0, 1):
        assert (tmp_path / "run" / "stall" / f"process_{i}.txt").read_text().count("Thread")
    assert "_test_stall" in (tmp_path / "run" / "stall" / "process_1.txt").read_text()


@pytest.mark.multihost
def test_a_frozen_peer_is_named_lost_and_the_survivor_keeps_its_stacks(tmp_path):
    """SIGSTOP on process 1 (no thread of it runs, as under a starved cgroup): process 0,
    waiting for it in a collective, is not the stalled one; the heartbeats name process 1
    lost, and process 0 exits with code 3 (no C++ abort), its stacks kept."""
    procs = _train(tmp_path / "run", "--config.steps=100000", processes=2)
    try:
        deadline = time.monotonic() + 120
        for line in procs[0].stdout:
            if line.startswith("step 3/") or time.monotonic() > deadline:
                break
        os.kill(procs[1].pid, signal.SIGSTOP)
        t = time.monotonic()
        out = procs[0].communicate(timeout=120)[0]
        took = time.monotonic() - t
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == 3 and took < 60, (took, out[-2000:])
    assert "pjx: process 1 of 2 is lost" in out and "Abort" not in out, out[-2000:]
    stacks = (tmp_path / "run" / "stall" / "process_0.txt").read_text()
    assert "process 1 of 2 is lost" in stacks.splitlines()[0] and "Thread" in stacks
    print(f"survivor exited {took:.1f}s after the freeze")


# ------------------------------------------------------------------ in process
def test_phases_add_up_to_the_wall_time():
    p = telemetry.Phases()
    with p.phase("compile"):
        time.sleep(0.05)
    with p.phase("step"):
        time.sleep(0.03)
        with p.phase("data_wait"):  # nested: the outer phase pauses
            time.sleep(0.02)
    time.sleep(0.01)
    s = p.summary()
    parts = sum(s[f"{k}_s"] for k in telemetry.PHASES)
    assert parts == pytest.approx(s["wall_s"], rel=1e-6)
    assert s["compile_s"] >= 0.05 and 0.03 <= s["step_s"] < 0.05 and s["data_wait_s"] >= 0.02
    assert s["goodput"] == pytest.approx(s["step_s"] / s["wall_s"])


def test_the_automatic_window_follows_compile_and_step_times():
    p = telemetry.Phases()
    w = watchdog.Watchdog(p, None, None)
    assert w.window() == watchdog.FLOOR_S
    p.compile_s = 400.0
    assert w.window() == 800.0
    w.step_times.extend([1.0, 30.0])
    assert w.window() == 1500.0  # 50 x the slowest recent step
    assert watchdog.Watchdog(p, None, 7).window() == 7.0
    assert not watchdog.Watchdog(p, None, 0).enabled


def test_data_wait_warning_names_the_mode_and_the_knob():
    assert telemetry.data_wait_warning(0.05, 1.0, "stream") is None
    line = telemetry.data_wait_warning(0.3, 1.0, "stream")
    assert "30%" in line and "stream mode" in line and "data.workers" in line


def test_model_flops_count_frozen_weights_without_their_weight_gradient():
    c = config_lib.base_config()
    c.model.name, c.task, c.data.seq_len, c.batch_size = "gpt2", "clm", 16, 4
    c = plan_lib.from_config(c)
    mc = models.make_config("gpt2", "tiny", vocab_size=64, num_layers=1, hidden_size=32,
                            mlp_dim=64, max_position_embeddings=16)  # fmt: skip
    model = models.create("gpt2", "tiny", **{f: getattr(mc, f) for f in
                          ("vocab_size", "num_layers", "hidden_size", "mlp_dim",
                           "max_position_embeddings")})  # fmt: skip
    inputs = models.example_inputs("gpt2", mc, 1, 16)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs))["params"]
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                          is_leaf=lambda x: hasattr(x, "value"))  # fmt: skip
    n = flops.matmul_params(params)
    full = flops.step_flops(c, mc, params)
    assert full == flops.flops_per_token(n, 1, 16, 32) * 16 * 4
    frozen = jax.tree.map(lambda _: False, params)
    assert flops.step_flops(c, mc, params, frozen) == full - 2.0 * n * 16 * 4
    assert lora  # LoRA's base weights are such frozen leaves (pjx.lora.count)


def test_bad_watchdog_and_profile_settings_exit_2_naming_the_key(tmp_path, capsys):
    cfg = f"{ROOT}/configs/gpt2_lm.py:smoke"
    for extra, key in [
        (["--config.watchdog.stall_s=-1"], "watchdog.stall_s=-1"),
        (["--config.profile.start_step=1", "--config.profile.steps=5"], "profile.start_step=1"),
    ]:
        w = tmp_path / key.split("=")[0]
        rc = cli.main(["train", "--config", cfg, "--workdir", str(w), *extra])
        assert rc == 2 and key in capsys.readouterr().err
        assert not w.exists()


def test_a_profile_window_writes_a_trace_and_the_summary(tmp_path, capsys):
    w = tmp_path / "run"
    rc = cli.main(["train", "--config", f"{ROOT}/configs/gpt2_lm.py:smoke", "--workdir", str(w),
                   "--config.profile.start_step=1", "--config.profile.steps=1",
                   "--config.write_curves=false"])  # fmt: skip
    assert rc == 0
    traces = list(Path(w, "profile").rglob("*.xplane.pb"))
    assert traces, list(Path(w).rglob("*"))
    out = capsys.readouterr().out
    assert "profile: tracing steps 2..2" in out and "goodput" in out
    line = [json.loads(x) for x in open(w / "metrics.jsonl")][0]
    assert line["model_tflops_per_s"] > 0 and "mfu" not in line  # no known peak on a CPU
    assert os.path.isfile(w / telemetry.SUMMARY_FILE)


def test_mfu_reaches_the_json_and_the_human_train_line(tmp_path, capsys):
    """Where the device's peak is known (a GPU / TPU kind in pjx.flops.PEAK_TFLOPS), the
    train line carries mfu = model FLOP/s / (peak x devices), in metrics.jsonl and shown."""
    from pjx.metrics_log import MetricsLog

    t = telemetry.Throughput.__new__(telemetry.Throughput)
    t.step_flops, t.devices = 2.0e12, 2
    t.peak, _ = flops.peak_tflops("NVIDIA H100 80GB HBM3")
    fields = t.fields(steps=10, seconds=1.0)  # 20 TFLOP/s over 2 devices
    assert fields["model_tflops_per_s"] == pytest.approx(20.0)
    assert fields["mfu"] == pytest.approx(20.0 / (2 * t.peak))
    with MetricsLog(tmp_path, total_steps=10) as log:
        record = log.train(10, {"loss": 1.0, "learning_rate": 1e-3}, "tokens", 100, t.fields)
    # Over the line's own 10 steps (its clock): one step's FLOPs / step_s / both peaks.
    want = t.step_flops / record["step_s"] / (2 * t.peak * 1e12)
    assert record["mfu"] == pytest.approx(want, rel=1e-6)
    assert f"| MFU {record['mfu']:.1%} |" in capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["mfu"] == record["mfu"]
