"""The stall watchdog: a thread that watches the loop's progress (pjx.telemetry.Phases),
not merely that the process is alive, and ends a run that stopped moving.

A stall is no progress for `watchdog.stall_s` seconds while the loop is in a step, waiting
for data or in the host's own work; compiling is never a stall, and evaluation and saving
get ten times the window (they are long by nature). `stall_s` None (the default) is
generous and follows the run: the larger of 5 minutes, twice the longest compile and 50
times the slowest recent step; 0 turns the watchdog off.

On a stall every thread's Python stack goes to WORKDIR/stall/process_I.txt (faulthandler,
which reads the stacks without the stuck thread's help), one line names the process and
what it was doing, and the process exits with code 4 (`os._exit`: a thread stuck in a
collective cannot be unwound). Nothing is written to the checkpoints: the latest one stays
as it was, and the same command resumes from it.

Several processes: each publishes its phase and step to the coordination service's
key-value store (which answers while a peer's main thread is stuck) every few seconds. A
process waiting in a call that needs every process (reading metrics across hosts) is
waiting on a peer, not stalled itself; the peer that is stuck on its own (in a step, in
its data, in its own Python) finds its stall and announces it there, which makes the
others write their stacks and exit 4 too, naming it (pjx.distributed does the same when a
collective breaks because the stalled process exited). Process 0, which holds the
coordination service, exits last.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import sys
import threading
import time
from collections import deque

import jax

log = logging.getLogger(__name__)

EXIT_CODE = 4
STALL_DIR = "stall"
FLOOR_S, COMPILE_FACTOR, STEP_FACTOR = 300.0, 2.0, 50.0
SLOW_PHASE_FACTOR = 10.0  # eval and checkpoint may take this many windows
PHASE_WORDS = {
    "step": "in a train step (or a collective inside it)",
    "data_wait": "waiting for data",
    "eval": "evaluating",
    "checkpoint": "saving a checkpoint",
    "host": "in the loop's own Python",
    "compile": "compiling",
}
_KEY = "pjx/watchdog"


def check(stall_s) -> None:
    """ValueError naming the key for a negative window."""
    if stall_s is not None and (isinstance(stall_s, bool) or float(stall_s) < 0):
        raise ValueError(
            f"watchdog.stall_s={stall_s!r}: give seconds without progress before a run is "
            "stopped (> 0), 0 to turn the watchdog off, or leave it unset (None) for the "
            "automatic window"
        )


class Watchdog:
    """`with Watchdog(phases, workdir, stall_s): ...` around the loop."""

    def __init__(self, phases, workdir: str | None, stall_s=None, poll_s: float = 1.0):
        check(stall_s)
        self.phases, self.workdir = phases, workdir
        self.stall_s = None if stall_s is None else float(stall_s)
        self.poll_s = poll_s
        self.step_times = deque(maxlen=20)  # seconds between recent steps
        self._last = (0, time.perf_counter())
        self._stop = threading.Event()
        self._thread = None
        self._client = _coordination_client()
        self._published = 0.0

    @property
    def enabled(self) -> bool:
        return self.stall_s != 0.0

    def window(self) -> float:
        if self.stall_s:
            return self.stall_s
        slowest = max(self.step_times, default=0.0)
        return max(FLOOR_S, COMPILE_FACTOR * self.phases.compile_s, STEP_FACTOR * slowest)

    def __enter__(self):
        global _active
        _active = self
        if self.enabled:
            self._thread = threading.Thread(target=self._watch, name="pjx-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type, *_):
        global _active
        _active = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if exc_type is not None and self.enabled:
            # A collective that broke because a peer stopped on a stall: stop as that
            # peer did, this process's stacks kept, before the error unwinds further.
            announced = announced_stall(self._client)
            if announced:
                self._stop_for_peer(announced)
        return False

    # ---------------------------------------------------------------- the thread
    def _watch(self):
        while not self._stop.wait(self.poll_s):
            self.check()

    def check(self):
        """One look at the loop (the thread's, every `poll_s`): ends the process on its
        own stall or on a peer's announced one."""
        phase, _, step, idle = self.phases.state()
        self._note_step(step)
        self._publish(phase, step, idle)
        announced = announced_stall(self._client)
        if announced:
            self._stop_run(phase, step, idle, announced=announced)
        if phase == "compile":
            return
        # Waiting in a call that needs every process is a peer's stall, not this one's:
        # that peer's watchdog announces it (a peer that died, the heartbeat names).
        if self._client is not None and self.phases.waiting:
            return
        limit = self.window() * (SLOW_PHASE_FACTOR if phase in ("eval", "checkpoint") else 1)
        if idle > limit:
            self._stop_run(phase, step, idle)

    def _stop_for_peer(self, announced: str):
        phase, _, step, idle = self.phases.state()
        self._stop_run(phase, step, idle, announced=announced)

    def _note_step(self, step: int):
        last_step, last_t = self._last
        if step != last_step:
            now = time.perf_counter()
            if last_step:
                self.step_times.append((now - last_t) / max(step - last_step, 1))
            self._last = (step, now)

    def _publish(self, phase, step, idle):
        if self._client is None or time.perf_counter() - self._published < 2.0:
            return
        self._published = time.perf_counter()
        waiting = self.phases.waiting or phase in ("eval", "checkpoint")
        state = json.dumps({"phase": phase, "step": step, "time": time.time() - idle,
                            "waiting": waiting})  # fmt: skip
        try:
            self._client.key_value_set(f"{_KEY}/{jax.process_index()}", state, allow_overwrite=True)
        except Exception:  # noqa: BLE001 - a dead service: the heartbeats end the run
            pass

    def _peers(self) -> dict[int, dict]:
        out = {}
        for i in range(jax.process_count()):
            try:
                out[i] = json.loads(self._client.key_value_try_get(f"{_KEY}/{i}"))
            except Exception:  # noqa: BLE001 - a process that never published
                out[i] = {"phase": "host", "step": 0, "time": 0.0, "waiting": False}
        return out

    def _culprits(self, me: int, phase: str, step: int) -> str:
        """The process(es) stuck on their own: not in a call that waits for every process
        (those wait on them); if all are, the ones behind (the lowest step)."""
        if self._client is None:
            return f"process {me} of 1 is stalled, {PHASE_WORDS.get(phase, phase)} (step {step})"
        peers = self._peers()
        stuck = [i for i, p in peers.items() if not p.get("waiting")]
        if not stuck:
            low = min(p["step"] for p in peers.values())
            stuck = [i for i, p in peers.items() if p["step"] == low]
        what = "; ".join(
            f"process {i} of {len(peers)} is stalled, "
            f"{PHASE_WORDS.get(peers[i]['phase'], peers[i]['phase'])} (after step "
            f"{peers[i]['step']})"
            for i in stuck
        )
        return what + (" (the others waited on it)" if len(stuck) < len(peers) else "")

    def _stop_run(self, phase, step, idle, announced=None):
        me = jax.process_index()
        path = self._dump_stacks(me, phase, step, idle)
        if announced:
            line = f"pjx: {announced}; process {me} stops too (its stacks: {path})"
        else:
            culprits = self._culprits(me, phase, step)
            if self._client is not None:
                try:
                    self._client.key_value_set(f"{_KEY}/stalled", culprits, allow_overwrite=True)
                except Exception:  # noqa: BLE001 - the others' heartbeats end them
                    pass
            line = (
                f"pjx: {culprits}: no progress for {idle:.0f}s (watchdog.stall_s window "
                f"{self.window():.0f}s); Python stacks in {os.path.dirname(path)}. The "
                "latest checkpoint is intact: run the same command to resume."
            )
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        if self._client is not None and jax.process_index() == 0:
            # Process 0 holds the coordination service: it exits last, once the others
            # have read the announcement (a client whose service vanished aborts).
            time.sleep(3 * self.poll_s)
        logging.shutdown()
        os._exit(EXIT_CODE)

    def _dump_stacks(self, me, phase, step, idle, why="") -> str:
        folder = os.path.join(self.workdir or ".", STALL_DIR)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"process_{me}.txt")
        with open(path, "w") as f:
            f.write(
                f"process {me} of {jax.process_count()}: {PHASE_WORDS.get(phase, phase)}, "
                f"last step {step}, no progress for {idle:.1f}s{why and '; ' + why}\n\n"
            )
            f.flush()
            faulthandler.dump_traceback(file=f, all_threads=True)
        return path


_active: Watchdog | None = None  # the loop's, while it runs


def stop_for_peer(announced: str):
    """Ends this process (code 4) because a peer announced a stall: with the loop's
    watchdog, as its own stop (stacks kept); else with the announcement alone."""
    if _active is not None:
        _active._stop_for_peer(announced)
    sys.stderr.write(f"\npjx: {announced}; process {jax.process_index()} stops too\n")
    sys.stderr.flush()
    os._exit(EXIT_CODE)


def keep_stacks(why: str) -> str | None:
    """Writes this process's stacks as a stall would (the loop's watchdog, while it runs)
    before the process ends for another reason (a lost peer); the file's path, or None."""
    if _active is None or not _active.enabled:
        return None
    phase, _, step, idle = _active.phases.state()
    try:
        return _active._dump_stacks(jax.process_index(), phase, step, idle, why=why)
    except OSError:  # an unwritable workdir must not hide why the run ends
        return None


def announced_stall(client) -> str | None:
    """What a process that found a stall announced (which processes, doing what), or None:
    pjx.distributed reports it when a collective breaks because that process exited."""
    if client is None:
        return None
    try:
        return client.key_value_try_get(f"{_KEY}/stalled") or None
    except Exception:  # noqa: BLE001 - not set: no stall announced
        return None


def _coordination_client():
    """jax.distributed's coordination client in a multi-process run, else None."""
    if jax.process_count() == 1:
        return None
    try:
        from jax._src import distributed as jax_distributed

        return jax_distributed.global_state.client
    except Exception:  # noqa: BLE001 - a jax without it: each process watches alone
        return None
