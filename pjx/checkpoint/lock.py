"""One run per workdir: WORKDIR/run.lock names the process that holds it.

Two runs in one workdir overwrite each other's checkpoints and metrics, so a run takes the
lock before it writes anything there and a second run is refused at once, told who holds
it. The lock is a file created with O_CREAT | O_EXCL (atomic, also on network file
systems) holding the host, pid and start time of its holder; it is removed when the run
ends (`pjx.run.start`'s `finally`, which preemption and errors also pass through). A lock
left by a process that died without cleaning up (SIGKILL, power loss) is recognised on the
same host (no such process, or another process now has its pid) and taken over with a
warning; one held on another host can only be judged by a person, so the message says
which file to delete. In a multi-host run process 0 holds it for the job.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time

import jax

log = logging.getLogger(__name__)

NAME = "run.lock"


class WorkdirBusy(RuntimeError):
    """Another live run holds the workdir."""


# Locks this process holds: path -> (token, thread ident). A thread that takes a lock it
# holds again takes it over (the newer hold is the one that releases it).
_held: dict[str, tuple[int, int]] = {}
_guard = threading.Lock()


def hold(workdir: str):
    """Takes WORKDIR/run.lock for this run (process 0; other processes get None). Raises
    WorkdirBusy, naming the holder, when another live run holds it. Pass the result to
    `release` when the run ends."""
    if jax.process_index() != 0:
        return None
    path = os.path.abspath(os.path.join(workdir, NAME))
    me = _identity()
    with _guard:
        held = _held.get(path)
        if held and held[1] != threading.get_ident() and _thread_alive(held[1]):
            raise WorkdirBusy(_busy(workdir, path, me, "another thread of this process"))
        for _ in range(20):
            if _create(path, me):
                break
            holder = _read(path)
            if holder is None:  # being written this instant, or removed: look again
                time.sleep(0.05)
                continue
            if _same_process(holder, me):  # a lock this process left (see _held)
                break
            why = _stale(holder, me)
            if why is None:
                raise WorkdirBusy(_busy(workdir, path, holder))
            if _take_over(path, holder, me):
                log.warning(f"workdir {workdir}: taking over the lock of a run that is gone "
                            f"({_describe(holder)}; {why})")  # fmt: skip
                break
        else:
            raise WorkdirBusy(_busy(workdir, path, _read(path) or {}))
        token = time.monotonic_ns()
        _held[path] = (token, threading.get_ident())
    return (path, token)


def release(handle) -> None:
    """Removes the lock `hold` took (a no-op for None, or once the same process took it
    over again)."""
    if handle is None:
        return
    path, token = handle
    with _guard:
        if _held.get(path, (None,))[0] != token:
            return
        del _held[path]
        holder = _read(path)
        if holder is not None and _same_process(holder, _identity()):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


@atexit.register
def _release_all() -> None:
    """At exit, the locks a run that failed before its `finally` still holds."""
    for path, (token, _) in list(_held.items()):
        release((path, token))


def _identity() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": _start_time(os.getpid()),
        "boot": _boot_id(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _create(path: str, me: dict) -> bool:
    """Creates the lock file holding `me`, atomically; False if it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(me) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            holder = json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _same_process(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("host", "pid", "start", "boot"))


def _stale(holder: dict, me: dict) -> str | None:
    """Why `holder` is certainly gone, or None if it may be alive (or is on another host)."""
    if holder.get("host") != me["host"]:
        return None
    if holder.get("boot") and me["boot"] and holder["boot"] != me["boot"]:
        return "the machine restarted since"
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:  # not a lock pjx wrote: a person decides
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"no process {pid}"
    except PermissionError:  # alive, another user's
        return None
    start = _start_time(pid)
    if holder.get("start") and start and start != holder["start"]:
        return f"pid {pid} is another process now"
    return None


def _take_over(path: str, stale: dict, me: dict) -> bool:
    """Replaces the stale lock with ours, unless another process got there first: only the
    process that creates PATH.takeover (atomically) may remove a stale lock."""
    mutex = path + ".takeover"
    try:
        fd = os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:  # left by a process that died in the few lines below
            if time.time() - os.path.getmtime(mutex) > 60:
                os.remove(mutex)
        except FileNotFoundError:
            pass
        time.sleep(0.05)
        return False
    os.close(fd)
    try:
        if _read(path) != stale:
            return False
        os.remove(path)
        return _create(path, me)
    finally:
        os.remove(mutex)


def _busy(workdir: str, path: str, holder: dict, who: str | None = None) -> str:
    who = who or _describe(holder)
    return (
        f"workdir {workdir} is in use by another run ({who}). Wait for it to finish or use "
        f"another --workdir; if no run is using it, delete {path}."
    )


def _describe(holder: dict) -> str:
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
        f"since {holder.get('since', '?')}"
    )


def _thread_alive(ident: int) -> bool:
    return any(t.ident == ident for t in threading.enumerate())


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks after boot (Linux), which tells a live
    process from a later one that reuses its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None
