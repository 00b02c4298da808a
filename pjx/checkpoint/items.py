"""What pjx.checkpoint adds to Orbax: handlers of a checkpoint's small items (the data
iterator's position, one JSON file per process; a copy of a folder, the tokenizer), the
JSON-safe encoding of iterator states and configs, and restores whose failed reads end
quietly."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)
_B64 = "__bytes_b64__"


class _SmallItemHandler(ocp.CheckpointHandler):
    """Shared no-ops of the two handlers below (no metadata, nothing to finalise)."""

    def metadata(self, directory):
        return None

    def finalize(self, directory):
        pass

    def close(self):
        pass


class _DataStateHandler(_SmallItemHandler):
    """Per-process JSON files: every host has its own iterator position. (pjx.data's
    position is a global batch number, the same on every process, so a run restored on
    another number of processes takes any process's file.)

    (`ocp.args.JsonSave` writes on the primary host only, which would lose the
    other hosts' positions; this mirrors Grain's own Orbax handler but takes the
    already-captured state, so an async save sees the state of its step.)
    """

    def save(self, directory, args):
        i, n = jax.process_index(), jax.process_count()
        (Path(directory) / f"process_{i}-of-{n}.json").write_text(args.item)

    def restore(self, directory, args=None):
        i, n = jax.process_index(), jax.process_count()
        path = Path(directory) / f"process_{i}-of-{n}.json"
        if not path.exists():
            found = sorted(Path(directory).glob("process_*.json"))
            if not found:
                log.warning(
                    f"checkpoint: no data iterator state for process {i} of {n}; the data "
                    "pipeline starts from the beginning."
                )
                return None
            path = found[0]  # saved by another number of processes: the same position

        return decode(json.loads(path.read_text()))


@ocp.args.register_with_handler(_DataStateHandler, for_save=True)
@dataclass
class DataSave(ocp.args.CheckpointArgs):
    item: str  # JSON text


@ocp.args.register_with_handler(_DataStateHandler, for_restore=True)
@dataclass
class DataRestore(ocp.args.CheckpointArgs):
    pass


class _FolderHandler(_SmallItemHandler):
    """Copies a folder of small files (the tokenizer) into the step directory."""

    def save(self, directory, args):
        if jax.process_index() == 0:
            shutil.copytree(args.src, directory, dirs_exist_ok=True)

    def restore(self, directory, args=None) -> str:
        return str(directory)


@ocp.args.register_with_handler(_FolderHandler, for_save=True)
@dataclass
class FolderSave(ocp.args.CheckpointArgs):
    src: str


@ocp.args.register_with_handler(_FolderHandler, for_restore=True)
@dataclass
class FolderRestore(ocp.args.CheckpointArgs):
    pass


def encode(x):
    """JSON-safe copy of an iterator state / config: bytes -> base64, numpy -> python."""
    if isinstance(x, (bytes, bytearray)):
        return {_B64: base64.b64encode(bytes(x)).decode("ascii")}
    if isinstance(x, Mapping):
        return {str(k): encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [encode(v) for v in x]
    if isinstance(x, (np.ndarray, np.generic, jax.Array)):
        return np.asarray(x).tolist()
    return x


def decode(x):
    if isinstance(x, dict):
        if set(x) == {_B64}:
            return base64.b64decode(x[_B64])
        return {k: decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [decode(v) for v in x]
    return x


def config_dict(config) -> dict:
    if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
        config = config.to_dict()
    return json.loads(json.dumps(encode(config), default=str))


def failure_reason(error: BaseException) -> str:
    """The first line of the innermost cause (TensorStore's own words: which file, which
    byte range), without the spec dump that follows it."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text.split(" See full TensorStore details")[0][:300]


class _SettlingLoop(asyncio.SelectorEventLoop):
    """An event loop that, when closed, first lets its unfinished tasks finish.

    Orbax runs a restore in a fresh loop and closes it as soon as one read fails, while
    TensorStore's other reads of the step are still in flight on its own threads; each of
    those, finishing later, calls back into the closed loop and prints a `RuntimeError:
    Event loop is closed` traceback. Letting them settle first closes the restore's async
    resources before the run falls back."""

    def close(self):
        if not self.is_closed() and not self.is_running():
            pending = [t for t in asyncio.all_tasks(self) if not t.done()]
            if pending:  # reads of local or remote files: bounded, but never wait forever
                self.run_until_complete(asyncio.wait(pending, timeout=120))
        super().close()


class _SettlingPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self):
        return _SettlingLoop()


@contextlib.contextmanager
def quiet_failed_reads():
    """A restore whose reads fail ends quietly: its loop settles its pending reads before it
    closes (`_SettlingLoop`), and coroutines that still error when they are collected
    (Python's "Exception ignored" tracebacks) are logged at debug level, so the one warning
    of `pjx.checkpoint.maybe_restore` is what a user sees."""
    previous, policy = sys.unraisablehook, asyncio.get_event_loop_policy()
    sys.unraisablehook = lambda u: log.debug(f"checkpoint read: {u.exc_value!r}")
    asyncio.set_event_loop_policy(_SettlingPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(policy)
        gc.collect()
        sys.unraisablehook = previous
