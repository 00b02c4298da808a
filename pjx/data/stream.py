"""Streaming mode: text / jsonl / Parquet corpora of any size, memory bounded by buffers.

    MapDataset.source(ChunkIndex)  i -> (i, chunk): this process's chunks (pjx.data.shards),
                                   endless epochs, chunk order reshuffled per (seed, epoch)
      .map(EncodeChunk)            read the chunk, Task.encode it (tokenize + pack its
                                   documents) -> a table of rows
      .to_iter_dataset(ReadOptions)  [.mp_prefetch(data.workers)]  Grain worker processes
    StreamIterator                 windows of >= data.shuffle_buffer rows (whole chunks),
                                   each permuted by (seed, window); batches of this
                                   process's rows; Task.make_batch

Documents are packed within a chunk (its last row padded), so the stream holds every
document of the source, tokenized as the cached mode tokenizes it, in another order.
Memory is the prefetch buffers plus one window, whatever the corpus size.

The position is small JSON (`get_state`): Grain's state at the current window's first
chunk, the window number and the row offset in it. `set_state` re-reads that window and
continues with exactly the next batch.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
import sys

import grain
import numpy as np

import pjx.data.pipeline as pipeline
import pjx.data.shards as shards
from pjx import tasks
from pjx.examples import DataError
from pjx.uri import parse_uri

log = logging.getLogger(__name__)


class ChunkIndex:
    """Endless sequence: element i is chunk perm_e[j] of epoch e (i = e * n + j)."""

    def __init__(self, chunks: list, seed: int, shuffle: bool):
        if not chunks:
            raise DataError("this process has no data chunks (more processes than records?)")
        self.chunks, self.seed, self.shuffle = list(chunks), int(seed), bool(shuffle)

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, i):
        epoch, j = divmod(int(i), len(self.chunks))
        if self.shuffle:
            rng = np.random.default_rng([self.seed, 0x43, epoch])
            j = int(rng.permutation(len(self.chunks))[j])
        return j, self.chunks[j]


def one_core(tokenizer):
    """`tokenizer` for a data worker process: a copy that encodes on one thread (the
    workers are the parallelism, one core each; a library's own thread pool would contend
    with the other workers), with Hugging Face tokenizers' Rust pool off when this is a
    worker process."""
    if tokenizer is None:
        return None
    if multiprocessing.parent_process() is not None:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    single = copy.copy(tokenizer)
    single.encode_threads = 1
    return single


class EncodeChunk:
    """(id, chunk) -> the chunk's rows (Task.encode on its documents) + `_skipped`. Runs in
    Grain's workers; picklable (the tokenizers are)."""

    def __init__(
        self, task: str, task_args: dict, tokenizer, cfg: dict, seed: int, stride, worker=False
    ):
        self.task, self.args, self.tokenizer = task, task_args, tokenizer
        self.cfg, self.seed, self.stride = cfg, int(seed), tuple(stride)
        self.worker = worker  # runs in worker processes: one core each (`one_core`)

    def __call__(self, item) -> dict:
        cid, chunk = item
        if self.worker and getattr(self.tokenizer, "encode_threads", 0) != 1:  # once a worker
            self.tokenizer = one_core(self.tokenizer)
        return encode_chunk(
            chunk, cid, self.task, self.args, self.tokenizer, self.cfg, self.seed, self.stride
        )


def encode_chunk(chunk, cid, task, args, tokenizer, cfg, seed, stride=(1, 0)) -> dict:
    ex, skipped = shards.read_chunk(chunk, cfg, stride)
    t = tasks.get(task)
    try:  # a per-chunk seed: NSP draws its pairs within the chunk
        rows = t.encode(ex, tokenizer, cfg, args, (int(seed) * 1_000_003 + int(cid)) % 2**31)
    except DataError:
        docs = sum(1 for d in ex.texts if d and d.strip())
        if docs >= 2 or (docs == 1 and not args.get("nsp")):
            raise
        rows = {}  # a blank chunk (or one document, for NSP pairs): no rows
    rows = {k: np.ascontiguousarray(v) for k, v in rows.items()}
    rows["_skipped"] = np.int64(skipped)
    return rows


def n_rows(table: dict) -> int:
    return next((len(v) for k, v in table.items() if not k.startswith("_")), 0)


class StreamIterator:
    """Endless process-local batches from the chunk stream; get_state / set_state (JSON)."""

    def __init__(self, dataset, *, task, cfg, batch_rows, seed, buffer_rows, info):
        self.dataset, self.task, self.cfg, self.info = dataset, task, cfg, info
        self.B, self.seed, self.buffer = int(batch_rows), int(seed), max(int(buffer_rows), 1)
        self.shuffle = bool(cfg.get("shuffle", True))
        self._it = iter(dataset)
        self._w, self._start, self._table, self._perm, self._off = -1, None, None, None, 0
        self._batch, self.skipped = 0, 0

    def __iter__(self):
        return self

    @property
    def steps_per_epoch(self) -> int:
        return 0  # unknown: the corpus is not counted

    def _fill(self) -> None:
        """The next window: whole chunks until it holds >= buffer rows."""
        self._start = self._it.get_state()
        parts, rows, empty = [], 0, 0
        while rows < self.buffer:
            el = next(self._it)
            skipped = int(el.pop("_skipped", 0))
            if skipped:
                self.skipped += skipped
                log.warning(
                    f"data: skipped {skipped} bad rows in a chunk ({self.skipped} so far; "
                    "data.bad_rows=skip)"
                )
            if n_rows(el) == 0:
                empty += 1
                if empty > 10_000:
                    raise DataError(f"{self.info.get('source')}: no rows in 10000 chunks")
                continue
            parts.append(el)
            rows += n_rows(el)
        self._table = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        self._w += 1
        n = n_rows(self._table)
        rng = np.random.default_rng([self.seed, 0x57, self._w])
        self._perm = rng.permutation(n) if self.shuffle else np.arange(n)
        self._off = 0

    def __next__(self) -> dict:
        pieces, need = [], self.B
        while need:
            if self._table is None or self._off >= len(self._perm):
                self._fill()
            take = min(need, len(self._perm) - self._off)
            idx = self._perm[self._off : self._off + take]
            pieces.append({k: v[idx] for k, v in self._table.items()})
            self._off, need = self._off + take, need - take
        rows = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
        rng = np.random.default_rng([self.seed, 0x42, self._batch])
        self._batch += 1
        return tasks.get(self.task).make_batch(rows, rng, self.cfg, True)

    def get_state(self) -> dict:
        if self._table is None:
            return {"stream": 0, "batch": 0}
        return {
            "stream": 1,
            "grain": self._start,
            "window": self._w,
            "offset": int(self._off),
            "batch": self._batch,
            "rows": self.B,
        }

    def set_state(self, state: dict) -> None:
        if "stream" not in state:
            raise DataError(
                "the checkpoint's data position is not a streaming one (it was saved in "
                "cached / prepared mode); resume with the same data.mode"
            )
        if state.get("rows", self.B) != self.B:
            log.warning(
                f"the checkpoint's batches held {state['rows']} rows per process, "
                f"this run's hold {self.B}: the stream resumes at its window"
            )
        if not state["stream"]:  # saved before the first batch
            if self._table is not None:
                self._it = iter(self.dataset)
            self._table, self._w, self._off, self._batch = None, -1, 0, 0
            return
        self._it.set_state(state["grain"])  # the live iterator (its workers keep running)
        self._batch = int(state["batch"])
        self._w = int(state["window"]) - 1
        self._fill()
        self._off = int(state["offset"])


def build(cfg, *, task, task_args, tokenizer, batch_rows, seed, process_index, process_count):
    """The streaming train iterator of this process (`batch_rows` rows per batch)."""
    uri = parse_uri(cfg.source)
    if uri.slice:
        raise DataError(
            f"{uri.raw}: slices need the cached or prepared mode (streaming does not count "
            "the corpus); split the files instead, or set data.mode=cached"
        )
    if tokenizer is None:
        raise DataError(f"task {task} on {uri.raw} needs a tokenizer: set data.tokenizer")
    chunks = shards.plan(uri, cfg)
    mine, stride = shards.split(chunks, process_index, process_count)
    args = tasks.get(task).args(task_args)
    cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    in_workers = pipeline.worker_processes(cfg) > 0
    encode = EncodeChunk(task, args, tokenizer, cfg_dict, seed, stride, worker=in_workers)
    ds = grain.MapDataset.source(ChunkIndex(mine, seed, cfg.get("shuffle", True))).map(encode)
    info = dict(
        source=uri.raw, task=task, batch_size=int(batch_rows), chunks=len(mine), mode="stream"
    )
    return StreamIterator(
        pipeline.iter_dataset(ds, cfg),
        task=task,
        cfg=cfg_dict,
        batch_rows=batch_rows,
        seed=seed,
        buffer_rows=int(cfg.get("shuffle_buffer", 8192)),
        info=info,
    )
