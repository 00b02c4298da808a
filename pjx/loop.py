"""The training loop (`fit`) and what it needs beside the steps: the window of metrics
not logged yet, the preemption guard, the two ways a loop stops early.

The loop dispatches step s+1 before it reads step s's metrics; it only waits for the
device to log, evaluate or checkpoint. The steps and what a config builds are pjx.train;
the run around the loop (tokenizer, data, checkpoints, stages) is pjx.run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from pjx import distributed, sharding, telemetry
from pjx.metrics_log import MetricsLog
from pjx.train import Setup, TrainState, abstract_batch, evaluate, trim_padding, weights
from pjx.watchdog import Watchdog

log = logging.getLogger(__name__)


class Preempted(Exception):
    """SIGTERM / SIGINT arrived: the step finished and a checkpoint was saved."""

    def __init__(self, step: int, path: str):
        super().__init__(
            f"stopped by a signal after step {step}; checkpoint saved in {path}. "
            "Run the same command again to resume."
        )
        self.step, self.path = step, path


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; carries the first bad step."""

    def __init__(self, step: int, value: float):
        super().__init__(
            f"training stopped: loss is {value} at step {step}. No metrics line or checkpoint "
            "was written for it. Lower optimizer.lr, raise warm-up or check the data."
        )
        self.step = step


class PreemptionGuard:
    """SIGTERM/SIGINT only set a flag; the loop finishes its step, saves, exits 0.

        with PreemptionGuard() as guard:
            for step in ...:
                ...
                if guard.should_stop(step): save(force=True); break

    A second signal restores the previous handlers and re-delivers itself, so a
    second Ctrl-C (KeyboardInterrupt) or `kill` still stops a hung process.
    Handlers can only be installed from the main thread; elsewhere this is a no-op
    apart from multi-host agreement.

    In a multi-process run SIGTERM is jax's preemption notice (its preemption service
    owns the signal and tells every process), and `should_stop` is true at the same step
    on all of them; Ctrl-C here is turned into that notice.
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            multi = jax.process_count() > 1
            for s in self.signals:
                if multi and s == signal.SIGTERM:
                    continue  # jax's preemption notifier handles it
                self._previous[s] = signal.signal(s, self._forward if multi else self._handle)
        return self

    def __exit__(self, *exc):
        self._restore_handlers()
        return False

    def _restore_handlers(self):
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is not None:  # second signal: stop now
            self._restore_handlers()
            os.write(2, f"\n{name} again: stopping immediately.\n".encode())
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        msg = (
            f"\n{name} received: finishing the current step, saving a checkpoint and "
            "exiting (send it again to stop immediately).\n"
        )
        os.write(2, msg.encode())

    def _forward(self, signum, frame):
        """Multi-process: this process's Ctrl-C becomes a preemption notice for all."""
        if self.received is not None:
            return self._handle(signum, frame)  # the second one stops this process now
        self.received = signum
        os.write(2, b"\nSIGINT received: stopping every process at the same step.\n")
        os.kill(os.getpid(), signal.SIGTERM)

    @property
    def stop_requested(self) -> bool:
        return self.received is not None

    def should_stop(self, step: int) -> bool:
        """Same answer on every host: call it at every step on all hosts. Multi-process,
        jax's preemption sync point (no collective, no wait): any process's notice stops
        all of them at the first step they can all reach."""
        if jax.process_count() == 1:
            return self.stop_requested
        return bool(multihost_utils.reached_preemption_sync_point(step))


# ----------------------------------------------------------------------------- loop
class _Window:
    """Train metrics of dispatched steps that are not logged yet, in step order. `read`
    fetches them to the host (once) and stops at the first non-finite `watch` value (the
    loss; under DP-SGD the released gradient's norm, not a function of the raw data)."""

    def __init__(self, watch: str = "loss"):
        self.steps: list[tuple[int, Any]] = []  # (step, device or host metrics)
        self.watch = watch

    def add(self, step: int, mets):
        self.steps.append((step, mets))

    def read(self, upto: int) -> list[tuple[int, dict]]:
        n = sum(st <= upto for st, _ in self.steps)
        host = distributed.host_value([m for _, m in self.steps[:n]])
        self.steps[:n] = [(st, m) for (st, _), m in zip(self.steps[:n], host)]
        for st, m in self.steps[:n]:
            if not np.isfinite(m[self.watch]):
                raise NonFiniteLossError(st, float(m[self.watch]))
        return self.steps[:n]

    def pop(self, upto: int) -> list[tuple[int, dict]]:
        out = self.read(upto)
        del self.steps[: len(out)]
        return out


def _train_line(window: list[tuple[int, dict]], private: bool = False) -> dict:
    """The metrics.jsonl fields of a window of steps: mean loss, the last lr / grad norm.
    Under DP-SGD (`private`) only what the mechanism released: the loss and accuracy of
    the realised batches are functions of the raw training data, so they stay unlogged."""
    host = [m for _, m in window]
    line = {
        "learning_rate": float(host[-1]["learning_rate"]),
        "grad_norm": float(host[-1]["grad_norm"]),
    }
    if private:
        return line
    line = {"loss": float(np.mean([m["loss"] for m in host])), **line}
    if "correct" in host[-1]:
        count = sum(float(m["count"]) for m in host)
        line["accuracy"] = sum(float(m["correct"]) for m in host) / max(count, 1e-12)
    return line


def _units(batch, unit: str, global_rows: int) -> int:
    """Tokens or examples of one global batch, from this process's share of it."""
    if unit == "tokens" and "input_ids" in batch:
        return int(np.prod(np.shape(batch["input_ids"])[1:])) * global_rows
    return global_rows


def fit(
    s: Setup,
    state: TrainState,
    start: int,
    train_data: Iterator,
    *,
    metrics: MetricsLog,
    eval_data: Iterable | None = None,
    checkpointer=None,
) -> dict:
    """Steps `start`+1 .. `plan.loop.steps`; returns the last metrics line written.

    Logs every `log_every` steps, evaluates every `eval_every` steps and at the end, saves
    when `checkpointer.due(step)` and at the end. Raises `Preempted` after saving on
    SIGTERM / SIGINT, `NonFiniteLossError` at the first NaN / Inf loss (before anything is
    evaluated or saved past it).
    """
    run = _Fit(s, state, train_data, metrics, eval_data, checkpointer)
    run.step_for(run.first)  # compiled before the clock starts
    metrics.start_clock()
    with (
        sharding.context(s.mesh),
        Watchdog(run.phases, run.workdir, s.plan.loop.stall_s),
        PreemptionGuard() as guard,
        _Summary(run.phases, run.workdir),
    ):
        run.steps(start, guard)
    return run.last


class _Fit:
    """One `fit`: the state it advances and what it logs, evaluates and saves on the way."""

    def __init__(self, s: Setup, state, train_data, metrics, eval_data, checkpointer):
        self.s, self.state, self.loop = s, state, s.plan.loop
        self.train_data, self.metrics = train_data, metrics
        self.eval_data, self.checkpointer = eval_data, checkpointer
        self.workdir = os.path.dirname(metrics.path)
        self.phases, self.throughput = telemetry.Phases(), telemetry.Throughput(s)
        self.profile = _Profile(self.loop, self.workdir)
        self.private = s.plan.private
        self.window = _Window("grad_norm" if self.private else "loss")
        self.last: dict = {}
        self.compiled = {}  # batch shapes -> the train step compiled for them
        self.waits = {}  # step -> seconds blocked on the input pipeline for its batch
        self.warned_at = -(10**9)
        self.batches = iter(train_data)
        with self.phases.phase("data_wait"):
            batch = next(self.batches)
        # Throughput counts the configured row length, whatever width a batch is trimmed to.
        self.unit = s.task.unit
        self.per_step = _units(batch, self.unit, s.plan.batch.rows)
        self.first = self.trim(batch)

    def trim(self, batch):
        # Under DP-SGD every step runs at the configured width: a width cut to the longest
        # sampled row (and its compile line and step time) would tell which step drew a
        # long private row.
        return batch if self.private else trim_padding(self.s, batch)

    def step_for(self, batch):
        shapes = tuple(sorted((k, np.shape(v)) for k, v in batch.items()))
        if shapes not in self.compiled:
            s, t0 = self.s, time.perf_counter()
            with self.phases.phase("compile"), sharding.context(s.mesh):  # train.compile_step
                ab = abstract_batch(s, batch)
                compiled = s.step_fn.lower(s.abstract_state, ab, *s.abstract_frozen).compile()
            mask = batch.get("attention_mask")
            width = f" for width {np.shape(mask)[1]}" if mask is not None else ""
            log.info(
                f"compiled train step{width} in {time.perf_counter() - t0:.1f}s; "
                f"{sharding.memory_report(compiled)}"
            )
            self.compiled[shapes] = compiled
        return self.compiled[shapes]

    def steps(self, start: int, guard):
        total, s, batch = self.loop.steps, self.s, self.first
        for step in range(start, total):
            if step > start:
                t = time.perf_counter()
                with self.phases.phase("data_wait"):
                    batch = self.trim(next(self.batches))
                    _test_stall("data_wait", step + 1)
                self.waits[step + 1] = time.perf_counter() - t
            compiled = self.step_for(batch)
            self.profile.before(step + 1)
            with self.phases.phase("step"), self.profile.annotate(step + 1):
                gb = sharding.global_batch(batch, s.batch_sharding)
                self.state, mets = compiled(self.state, gb, *s.frozen)
                _test_stall("step", step + 1)
            done = step + 1
            self.phases.progress(done)
            self.profile.after(done, self.state)
            self.window.add(done, mets)
            # The previous step has finished (or is about to): reading it does not wait
            # for the step just dispatched.
            if done - 1 > start and (done - 1) % self.loop.log_every == 0:
                self.log_train(done - 1)
            if done == total:
                break
            self.between_steps(done, guard)
        self.log_train(total)
        eval_mets = self.run_eval(total)
        if self.checkpointer is not None:
            self.save(total, True, eval_mets)

    def between_steps(self, done: int, guard):
        """Evaluates, saves and stops after step `done` when it is time to."""
        every = self.loop.eval_every
        is_eval = bool(every) and done % every == 0
        stop = guard.should_stop(done)
        save_now = self.checkpointer is not None and (stop or self.checkpointer.due(done))
        if not (is_eval or save_now or stop):
            return
        if done % self.loop.log_every == 0 or stop:
            self.log_train(done)  # this step's line before its eval line
        with self.phases.waiting_on_peers():
            self.window.read(done)  # never evaluate or save past an unseen NaN
        eval_mets = self.run_eval(done) if is_eval else None
        if save_now:
            self.save(done, stop, eval_mets)
        if stop:
            where = self.checkpointer.directory if self.checkpointer else "(checkpoints disabled)"
            raise Preempted(done, where)

    def log_train(self, upto: int):
        # Reading the metrics waits for the device, and for every process (host_value).
        with self.phases.phase("step"), self.phases.waiting_on_peers():
            steps = self.window.pop(upto)
        if not steps:
            return
        line = _train_line(steps, self.private)
        wait = sum(self.waits.pop(st, 0.0) for st, _ in steps) / len(steps)
        if not self.private:  # gathering a Poisson batch takes longer the more rows it drew
            line["data_wait_s"] = wait
        self.last = self.metrics.train(
            steps[-1][0], line, self.unit, self.per_step * len(steps),
            rates=self.throughput.fields,
        )  # fmt: skip
        memory = self.throughput.memory_line()
        if memory:
            log.info(memory)
        note = self.data_note(wait, self.last)
        if note and upto - self.warned_at >= 20 * self.loop.log_every:  # at most every 20 lines
            self.warned_at = upto
            log.warning(note)

    def data_note(self, wait: float, line: dict) -> str | None:
        if self.private or "step_s" not in line:
            return None
        return telemetry.data_wait_warning(wait, line["step_s"], self.loop.data_mode)

    def run_eval(self, step) -> dict | None:
        if self.eval_data is None:
            return None
        with self.phases.phase("eval"):
            mets = evaluate(
                self.s, weights(self.state), self.eval_data, seed=self.loop.seed,
                max_batches=self.loop.eval_steps,
            )  # fmt: skip
        self.last = self.metrics.eval(step, mets)
        return mets

    def save(self, step, force, eval_mets):
        with self.phases.phase("checkpoint"):
            self.checkpointer.save(
                step, self.state, self.train_data, force=force, metrics=eval_mets
            )


class _Summary:
    """Writes the time summary (pjx.telemetry) however the loop ends: done, SIGTERM."""

    def __init__(self, phases, workdir):
        self.phases, self.workdir = phases, workdir

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None or issubclass(exc_type, Preempted):
            self.phases.write(self.workdir, ended="preempted" if exc_type else "done")
        return False


class _Profile:
    """A jax.profiler trace of steps start_step+1 .. start_step+steps (config.profile) into
    WORKDIR/profile/; nothing at all when steps is 0."""

    def __init__(self, loop, workdir):
        self.first = loop.profile_start + 1
        self.last = self.first + loop.profile_steps - 1
        self.dir = os.path.join(workdir, "profile")
        self.on = self.last >= self.first

    def before(self, step):
        if self.on and step == self.first:
            jax.profiler.start_trace(self.dir)
            log.info(f"profile: tracing steps {self.first}..{self.last} into {self.dir}")

    def annotate(self, step):
        """Names the step in the trace (TensorBoard's step view); a no-op when off."""
        if self.on and self.first <= step <= self.last:
            return jax.profiler.StepTraceAnnotation("train", step_num=step)
        return contextlib.nullcontext()

    def after(self, step, state):
        if self.on and step == self.last:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            log.info(f"profile: written to {self.dir} (tensorboard --logdir {self.dir})")


def _test_stall(phase: str, step: int):
    """Tests only: PJX_TEST_STALL=PHASE:STEP blocks the main thread at that step (while
    the watchdog's thread runs), as a hung read or a stuck collective would."""
    want = os.environ.get("PJX_TEST_STALL")
    if want and want == f"{phase}:{step}":
        while True:
            time.sleep(1)
