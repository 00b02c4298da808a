"""Where a run's time goes, and how close to the hardware it runs.

`Phases` is the loop's clock: every stretch of wall time belongs to one phase, and the
loop says which (`with phases.phase("eval"): ...`). What it adds up:

- compile: compiling the train step (each batch width once);
- step: dispatching steps and waiting for their results (the device's time, as the host
  sees it: the loop blocks only where it reads metrics);
- data_wait: blocked on the input pipeline for the next batch;
- eval, checkpoint: evaluation, saving (and waiting for an async save);
- host: everything else in the loop (Python, logging, writing metrics).

`summary()` gives each in seconds, the wall time since the loop started, and goodput =
step / wall; WORKDIR/summary.json holds it at the end of a run and on SIGTERM. The
watchdog (pjx.watchdog) reads the current phase and the last sign of progress.

`Throughput` turns a train line's tokens (or images) per second into model TFLOP/s and,
on a device whose peak pjx.flops knows, MFU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time

import jax

from pjx import flops

log = logging.getLogger(__name__)

PHASES = ("compile", "step", "data_wait", "eval", "checkpoint", "host")
SUMMARY_FILE = "summary.json"
# A data wait above this fraction of the step time, over a logging window, is reported.
DATA_WAIT_WARNING = 0.10


class Phases:
    """Wall time per phase (PHASES), the current phase and when it began, and the last
    step the loop made progress on. Thread-safe reads for the watchdog."""

    def __init__(self):
        self._lock = threading.Lock()
        self.start = time.perf_counter()
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.current, self.since = "host", self.start
        self.step, self.progress_at = 0, self.start
        self.compile_s = 0.0  # the longest single compile: the watchdog's floor
        # In a call that needs every process (reading metrics across hosts): a stall here
        # is a peer's, not this process's (the watchdog names the others).
        self.waiting = False

    @contextlib.contextmanager
    def phase(self, name: str):
        now = time.perf_counter()
        with self._lock:
            outer, outer_since = self.current, self.since
            self.totals[outer] += now - outer_since
            self.current, self.since = name, now
        try:
            yield
        finally:
            end = time.perf_counter()
            with self._lock:  # since: this phase's start, or the end of a nested one
                self.totals[name] += end - self.since
                if name == "compile":
                    self.compile_s = max(self.compile_s, end - now)
                self.current, self.since = outer, end
                self.progress_at = end

    @contextlib.contextmanager
    def waiting_on_peers(self):
        self.waiting = True
        try:
            yield
        finally:
            self.waiting = False

    def progress(self, step: int):
        with self._lock:
            self.step, self.progress_at = int(step), time.perf_counter()

    def state(self) -> tuple[str, float, int, float]:
        """(current phase, seconds in it, last step, seconds since the last progress)."""
        now = time.perf_counter()
        with self._lock:
            return self.current, now - self.since, self.step, now - self.progress_at

    def summary(self) -> dict:
        now = time.perf_counter()
        with self._lock:
            totals = dict(self.totals)
            totals[self.current] += now - self.since
        wall = now - self.start
        out = {"wall_s": wall, **{f"{k}_s": v for k, v in totals.items()}}
        out["goodput"] = totals["step"] / wall if wall > 0 else 0.0
        return out

    def write(self, workdir: str | None, **extra) -> dict:
        """summary() (+ `extra`) into WORKDIR/summary.json (process 0), and a log line."""
        s = {**self.summary(), **extra}
        shown = ", ".join(f"{k[:-2]} {s[k]:.1f}s" for k in (f"{p}_s" for p in PHASES))
        log.info(f"time: {s['wall_s']:.1f}s in the loop ({shown}); goodput {s['goodput']:.1%}")
        if workdir and jax.process_index() == 0:
            tmp = os.path.join(workdir, SUMMARY_FILE + ".tmp")
            with open(tmp, "w") as f:
                json.dump(s, f, indent=1)
            os.replace(tmp, os.path.join(workdir, SUMMARY_FILE))
        return s


class Throughput:
    """model TFLOP/s and MFU of a train line, from one step's model FLOPs (pjx.flops)."""

    def __init__(self, setup):
        mcfg = setup.model.config
        self.step_flops = flops.step_flops(
            setup.plan, mcfg, setup.abstract_state.params, setup.trainable
        )
        kind = jax.devices()[0].device_kind
        peak, _ = flops.peak_tflops(kind)
        self.peak = peak if jax.default_backend() != "cpu" else None
        self.devices = jax.device_count()
        self.reported_memory = False

    def fields(self, steps: int, seconds: float) -> dict:
        if seconds <= 0:
            return {}
        achieved = self.step_flops * steps / seconds
        out = {"model_tflops_per_s": achieved / 1e12}
        if self.peak:
            out["mfu"] = achieved / (self.peak * 1e12 * self.devices)
        return out

    def memory_line(self) -> str | None:
        """Peak device memory in use, once (the first train line), where the device
        reports it (GPU / TPU; the CPU does not)."""
        if self.reported_memory:
            return None
        self.reported_memory = True
        stats = jax.local_devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" not in stats:
            return None
        limit = stats.get("bytes_limit")
        of = f" of {limit / 2**30:.1f} GiB" if limit else ""
        return f"device memory: peak {stats['peak_bytes_in_use'] / 2**30:.2f} GiB in use{of}"


def data_wait_warning(wait_s: float, step_s: float, mode: str) -> str | None:
    """A line when the input pipeline held the steps back (> DATA_WAIT_WARNING of a step)."""
    if step_s <= 0 or wait_s <= DATA_WAIT_WARNING * step_s:
        return None
    return (
        f"data: the steps waited {wait_s:.3f}s a step for their batch ({wait_s / step_s:.0%} "
        f"of a {step_s:.3f}s step) in {mode or 'cached'} mode: raise data.workers (worker "
        "processes) or data.prefetch, or prepare the data once (pjx data prepare)"
    )
