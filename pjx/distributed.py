"""Joining a multi-process run through `jax.distributed`: a TPU pod slice, a SLURM or
Open MPI job, or processes started by hand (`--coordinator HOST:PORT --num-processes N
--process-id I`, or the environment variables PJX_COORDINATOR, PJX_NUM_PROCESSES,
PJX_PROCESS_ID a launcher can set).

A single-host run (none of these) never initializes anything. In a multi-process run every
process runs the same command: each reads its share of every batch, process 0 writes the
logs and metrics, and all write checkpoints together (Orbax). A preemption notice (SIGTERM)
to any process reaches all of them through jax's preemption service, so they stop at the
same step; a process that dies is named by the others, which exit non-zero (`Heartbeat`).
"""

from __future__ import annotations

import atexit
import os
import threading
import time

import jax
import jax._src.distributed  # the coordination client (Heartbeat): jax has no public handle
import numpy as np
from jax.experimental import multihost_utils

from pjx import watchdog
from pjx.nn import backend

ENV = ("PJX_COORDINATOR", "PJX_NUM_PROCESSES", "PJX_PROCESS_ID")
# How long jax's coordination service waits for a silent process before it aborts the job
# (pjx's own Heartbeat names a lost process first).
HEARTBEAT_TIMEOUT_S = 100


def _int_env(name: str) -> int:
    try:
        return int(os.environ.get(name, "") or 0)
    except ValueError:
        return 0


def cluster_detected() -> bool:
    """Whether this process is one of several that jax's own cluster detection finds (SLURM,
    Open MPI, a multi-host TPU slice); a one-process job of those is a single host."""
    if _int_env("SLURM_STEP_NUM_TASKS") > 1 or _int_env("SLURM_NTASKS") > 1:
        return "SLURM_JOB_ID" in os.environ
    if _int_env("OMPI_COMM_WORLD_SIZE") > 1:
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h.strip()]) > 1


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
) -> bool:
    """Joins the multi-process run these arguments (or the PJX_* variables, or the cluster)
    describe; True if it did, False for a single-host run. Call before anything uses jax."""
    coordinator = coordinator or os.environ.get("PJX_COORDINATOR") or None
    if num_processes is None and os.environ.get("PJX_NUM_PROCESSES"):
        num_processes = _int_env("PJX_NUM_PROCESSES")
    if process_id is None and os.environ.get("PJX_PROCESS_ID"):
        process_id = _int_env("PJX_PROCESS_ID")
    explicit = coordinator is not None or num_processes is not None or process_id is not None
    if not explicit and not cluster_detected():
        return False
    if jax.distributed.is_initialized():
        return True
    if explicit:
        missing = [
            flag
            for flag, value in (
                ("--coordinator HOST:PORT", coordinator),
                ("--num-processes N", num_processes),
                ("--process-id I", process_id),
            )
            if value is None
        ]
        if missing:
            raise ValueError(
                f"a multi-process run needs all of --coordinator, --num-processes and "
                f"--process-id (or {', '.join(ENV)}); missing: {', '.join(missing)}"
            )
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process-id {process_id} is not in 0..{num_processes - 1}")
    if backend.cpu_backend_expected():
        # CPU processes reach each other's devices through gloo (TCP), not MPI.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=int(heartbeat_timeout_s),
    )
    global _heartbeat
    client = jax._src.distributed.global_state.client  # the coordination client: no public API
    if jax.process_count() > 1 and client is not None:
        _heartbeat = Heartbeat(client)
    return True


def max_over_processes(value: int) -> int:
    """The largest of every process's `value` (each process calls this at the same point)."""
    if jax.process_count() == 1:
        return int(value)
    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def host_value(tree):
    """A pytree of replicated jax arrays as NumPy on this host, in one transfer: an array
    this process holds whole as it is, another by its local copy (a replicated array is the
    same on every process; `jax.device_get` refuses arrays that span other processes)."""

    def local(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x.addressable_shards[0].data
        return x

    return jax.device_get(jax.tree.map(local, tree))


class Heartbeat:
    """Every process of a multi-process run beats a counter in the coordination service's
    key-value store (a daemon thread, one beat a second, for the life of the process) and
    watches the others'. A peer whose counter stalls for `timeout_s` is reported by name and
    this process exits non-zero: a lost process never leaves the others hanging, and the
    message says which one it was (jax's own heartbeat check aborts later, with a C++ stack
    trace). `lost()` names the stalled peers at once, after a collective failed.
    """

    def __init__(self, client, timeout_s: float = 20.0, every_s: float = 1.0):
        # Beats come from a Python thread: a peer busy in long GIL-holding Python could
        # miss some; 20 s of silence is far beyond that (compiles and tokenizer training
        # release the GIL).
        self.client, self.timeout_s, self.every_s = client, float(timeout_s), float(every_s)
        self.me, self.n = jax.process_index(), jax.process_count()
        # Stopped at exit before jax's own atexit shuts the coordination service down
        # (atexit runs the newest first): a beat after that fails, and must not read as a
        # lost coordinator and turn a finished run's exit code into 3.
        self._stop = threading.Event()
        atexit.register(self._stop.set)
        self._thread = threading.Thread(target=self._run, daemon=True, name="pjx-heartbeat")
        self._thread.start()

    def _values(self) -> dict[int, str]:
        pairs = self.client.key_value_dir_get("pjx/alive/")
        return {int(k.rsplit("/", 1)[-1]): v for k, v in pairs}

    def _run(self):
        seen = {p: (None, time.monotonic()) for p in range(self.n) if p != self.me}
        beat = 0
        while not self._stop.wait(self.every_s):
            beat += 1
            try:
                self.client.key_value_set(f"pjx/alive/{self.me}", str(beat), allow_overwrite=True)
                values = self._values()
            except Exception as e:  # noqa: BLE001 - the coordinator (process 0) is gone
                if self._stop.is_set():  # ... or this process is exiting
                    return
                exit_lost([0], f"the coordination service on process 0 does not answer ({e})")
            now = time.monotonic()
            for p, (value, since) in seen.items():
                if values.get(p) != value:
                    seen[p] = (values.get(p), now)
                elif now - since > self.timeout_s:
                    exit_lost([p], f"no sign of life for {now - since:.0f} s")

    def lost(self, wait_s: float = 3.0) -> list[int]:
        """The peers whose counters do not move over `wait_s` seconds."""
        try:
            before = self._values()
            time.sleep(wait_s)
            after = self._values()
        except Exception:  # noqa: BLE001 - the coordinator itself is gone
            return [0]
        return [p for p in range(self.n) if p != self.me and before.get(p) == after.get(p)]


_heartbeat: Heartbeat | None = None


def exit_lost(processes, why: str, code: int = 3):
    """Ends this process at once (no shutdown barrier: it would wait for the lost peer),
    naming the lost processes."""
    names = ", ".join(str(p) for p in processes) or "unknown"
    n = jax.process_count()
    stacks = watchdog.keep_stacks(f"process {names} of {n} is lost ({why})")
    os.write(
        2,
        (
            f"\npjx: process {names} of {n} is lost ({why}); process {jax.process_index()} "
            "stops too"
            + (f" (its stacks: {stacks})" if stacks else "")
            + ". Restart the same command on every host to resume from the last checkpoint.\n"
        ).encode(),
    )
    os._exit(code)


def fail(error: BaseException):
    """A multi-process run's failure: a collective that broke because a peer died names
    that peer; any other error is reported as it is. Exits without the shutdown barrier."""
    stalled = watchdog.announced_stall(_heartbeat.client if _heartbeat is not None else None)
    if stalled:  # the peer stopped itself on a stall (pjx.watchdog): say so, as it did
        watchdog.stop_for_peer(stalled)
    lost = _heartbeat.lost() if _heartbeat is not None else []
    if lost:
        exit_lost(lost, f"{type(error).__name__}: {str(error).splitlines()[0][:300]}")
    os.write(
        2,
        f"\npjx: process {jax.process_index()} failed: {type(error).__name__}: {error}\n".encode(),
    )
    os._exit(1)
