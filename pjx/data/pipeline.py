"""Grain pipelines over encoded arrays: train streams and exact eval sets.

A source is encoded once into a table of arrays with N rows (Task.encode, cached), so
a batch is one vectorised gather of B rows: no per-token or per-example Python. The Grain
graph is

    MapDataset.source(BatchIndex)   batch i -> the row indices of batch i
      .random_map(MakeBatch)        gather + Task.make_batch (keys, image augmentation);
                                    rng from (seed, batch index)
      .to_iter_dataset(ReadOptions(num_threads, prefetch))  [.mp_prefetch(workers)]

Train: each epoch is a permutation of all N rows drawn from (seed, epoch), identical on
every process, cut into global batches of batch_size rows (the epoch's remainder dropped);
each process produces its shard of every global batch, so the global batches are the same
for any number of processes. The stream is endless
and its position is Grain's iterator state (`get_state` / `set_state`, JSON), so a restored
checkpoint continues with exactly the next batch. Batches are gathered whole rather than
through Grain's per-element `shuffle` + `batch`, whose per-element cost would dominate a
small model's step (BENCHMARKS.md, input pipelines).

Eval: rows in order, padded up to a multiple of the global batch with copies of row 0
that carry `weight` 0; each process takes its shard of each global batch, so every
example counts exactly once and all processes run the same number of batches.
"""

from __future__ import annotations

import logging
import math
import sys
import threading

import grain
import numpy as np

from pjx import tasks
from pjx.examples import DataError

log = logging.getLogger(__name__)


class BatchIndex:
    """Sequence of row-index arrays (train: endless epochs; eval: (rows, weight) pairs).

    Global batch j of an epoch is rows `perm[j*G : (j+1)*G]` of the epoch's permutation
    (G = the global batch size); this process produces the `rows` positions of it (its
    shard, as the batch sharding lays the global batch over processes), so every process
    count assembles the same global batches as one process does."""

    def __init__(
        self, n_rows, batch_size, rows=None, *, train, seed=0, shuffle=True, poisson_rate=None
    ):
        self.n, self.G, self.train = int(n_rows), int(batch_size), bool(train)
        # DP-SGD's Poisson sampling: batch i holds each row with probability q, padded (or,
        # past G rows, truncated to a uniform subset) to G rows, padding with weight 0.
        self.q = None if poisson_rate is None else float(poisson_rate)
        self.rows = np.arange(self.G) if rows is None else np.asarray(rows, np.int64)
        self.B = len(self.rows)  # this process's rows per batch
        self.seed, self.shuffle = int(seed), bool(shuffle)
        if train:
            self.per_epoch = self.n // self.G
            if self.per_epoch == 0:
                raise DataError(
                    f"{self.n} training rows are fewer than one batch of {self.G}; lower "
                    "batch_size or use more data"
                )
        else:
            self.per_epoch = math.ceil(self.n / self.G)
        self._perms: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sys.maxsize if self.train else self.per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        """The rows of `epoch`, in order (the same seed gives the same order everywhere)."""
        with self._lock:
            perm = self._perms.get(epoch)
        if perm is None:
            perm = np.arange(self.n)
            if self.shuffle:
                perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            with self._lock:
                self._perms = {epoch: perm, **{k: v for k, v in self._perms.items() if k > epoch}}
        return perm

    def __getitem__(self, i):
        i = int(i)
        if self.train and self.q is not None:
            return self._poisson(i)
        if self.train:
            epoch, j = divmod(i, self.per_epoch)
            return self.permutation(epoch)[j * self.G + self.rows]
        if not 0 <= i < self.per_epoch:
            raise IndexError(i)
        rows = i * self.G + self.rows
        return np.where(rows < self.n, rows, 0), (rows < self.n).astype(np.float32)

    def _poisson(self, i):
        """Batch i of Poisson sampling: (row indices, weight); the same on every process,
        and a function of (seed, i) alone, so a resumed run draws the same batches."""
        rng = np.random.default_rng([self.seed, 0x5049, i])
        n = int(rng.binomial(self.n, self.q))
        chosen = np.full(self.G, -1, np.int64)
        chosen[: min(n, self.G)] = rng.choice(self.n, size=min(n, self.G), replace=False)
        idx = chosen[self.rows]
        return np.where(idx >= 0, idx, 0), (idx >= 0).astype(np.float32)

    def __getstate__(self):  # picklable for Grain worker processes
        state = dict(self.__dict__)
        state.pop("_lock")
        state["_perms"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


# -------------------------------------------------------------------------- batches
class MakeBatch:
    """Row indices -> the task's batch (`Task.make_batch`), with Grain's per-batch rng for
    augmentation; eval batches also carry `weight`. A picklable callable for Grain."""

    def __init__(self, table: dict, task: str, cfg: dict, train: bool):
        self.table, self.task, self.cfg, self.train = table, task, cfg, train

    def __call__(self, item, rng):
        rows, weight = item if isinstance(item, tuple) else (item, None)
        if isinstance(self.table, dict):
            gathered = {k: np.asarray(v[rows]) for k, v in self.table.items()}
        else:  # a prepared table reads all columns of the rows at once
            gathered = self.table[rows]
        out = tasks.get(self.task).make_batch(gathered, rng, self.cfg, self.train)
        if weight is not None:
            out["weight"] = weight
        return out


def map_dataset(table: dict, index: BatchIndex, *, task: str, cfg, seed: int):
    cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    make = MakeBatch(table, task, cfg_dict, index.train)
    return grain.MapDataset.source(index).random_map(make, seed=int(seed) % 2**32)


def worker_processes(cfg) -> int:
    """Grain worker processes of a data config (`data.workers`; 0: threads in this one)."""
    return int(cfg.get("workers", 0) or cfg.get("worker_count", 0) or 0)


def iter_dataset(ds, cfg):
    workers = worker_processes(cfg)
    # In worker processes, one thread each: the workers are the parallelism, one core per
    # worker (`data.workers` = the cores to use), as in `pjx data prepare --workers`.
    threads = 1 if workers > 0 else int(cfg.get("num_threads", 2))
    read = grain.ReadOptions(
        num_threads=threads, prefetch_buffer_size=int(cfg.get("prefetch", 8)) if threads else 0
    )
    it = ds.to_iter_dataset(read)
    if workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags (no absl.app here)
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return it


# --------------------------------------------------------------------------- results
class TrainIterator:
    """Endless process-local batches; `get_state` / `set_state` are Grain's (JSON)."""

    def __init__(self, dataset, index: BatchIndex, info: dict):
        self.dataset, self.index, self.info = dataset, index, info
        self._it = iter(dataset)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._it)

    @property
    def steps_per_epoch(self) -> int:
        return self.index.per_epoch

    def get_state(self) -> dict:
        # The position is a global batch number, the same on every process.
        return {"grain": self._it.get_state(), "rows": self.index.n, "batch": self.index.G}

    def set_state(self, state: dict) -> None:
        if "stream" in state:
            raise DataError(
                "the checkpoint's data position was saved in streaming mode; resume with "
                "data.mode=stream"
            )
        if (state.get("rows"), state.get("batch")) != (self.index.n, self.index.G):
            log.warning(
                f"the checkpoint's data position is for {state.get('rows')} rows in "
                f"batches of {state.get('batch')}; this run has {self.index.n} rows in "
                f"batches of {self.index.G}, so the stream resumes at the same batch number "
                "but not at the same examples"
            )
        self._it.set_state(state["grain"])


class EvalBatches:
    """Every eval example exactly once (padded last batch with `weight`); re-iterable."""

    def __init__(self, map_ds, cfg, index: BatchIndex, info: dict):
        self.map_ds, self.cfg, self.index, self.info = map_ds, cfg, index, info

    def __len__(self) -> int:
        return len(self.map_ds)

    @property
    def global_batch_size(self) -> int:
        return self.index.G

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.map_ds[i]

    def __iter__(self):
        return iter(iter_dataset(self.map_ds, self.cfg))
