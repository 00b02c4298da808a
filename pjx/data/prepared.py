"""Prepared mode: a corpus tokenized and packed once into sharded ArrayRecord files.

`pjx data prepare --config C --out DIR [--workers N]` encodes the training source's chunks
(pjx.data.shards; Task.encode per chunk, exactly as streaming mode does) on a process pool
(forked unless JAX runs here; PJX_DATA_START=spawn|forkserver|fork to choose) and writes
the rows, in chunk order, to

    DIR/rows-SSSSS-of-NNNNN.array_record   one record per row: the row's columns' bytes
    DIR/index.json                         columns (dtype, shape), shards and their rows,
                                           the source, task, tokenizer hash, settings
    DIR/tokenizer/                         the tokenizer (train with data.tokenizer=it)

Each shard (a run of consecutive chunks) is encoded and written by one worker, and the
shards are named in chunk order, so N workers write the same bytes as one. The work goes
into DIR.tmp/, each shard written under a temporary name and renamed once complete, with
its rows and SHA-256 beside it: a prepare that was killed, run again with the same
settings, skips the shards it finished and ends with the same bytes as one that was not.
index.json records every shard's size and SHA-256: a shard of the wrong size is refused
when a run opens the folder (riegeli's own chunk hashes catch a changed byte on read), and
`pjx data verify DIR` checks every checksum. Records are
stored uncompressed in groups of one, for random access: the `prepared:DIR` source reads
rows through the same `BatchIndex` as the cached mode (global shuffle per epoch, exact
resume, N known for DP's Poisson sampling). A source that fits in one chunk gives exactly
the cached mode's rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time

import numpy as np

import pjx.data.cache as cache
import pjx.data.shards as shards
import pjx.data.stream as stream
from pjx import tasks
from pjx.examples import DataError
from pjx.uri import parse_uri

log = logging.getLogger(__name__)
VERSION = 1
WRITE_OPTIONS = "group_size:1,uncompressed"


_STATE: dict = {}
MAX_SHARDS = 1024
PLAN_FILE = "plan.json"  # in DIR.tmp/ while preparing: what the shards there were made for


def _init(common):
    """Each worker process (and the one process of --workers 1) encodes on one core."""
    task, args, tokenizer, cfg, seed = common
    _STATE["common"] = (task, args, stream.one_core(tokenizer), cfg, seed)


def _write_shard(job) -> dict:
    """Encodes one shard's chunks and writes them (in a pool worker); returns and records
    beside the shard (`_done_path`) its rows, columns, skipped rows, bytes and SHA-256."""
    from array_record.python.array_record_module import ArrayRecordWriter

    shard, items, path = job
    task, args, tokenizer, cfg, seed = _STATE["common"]
    rows, columns, skipped, writer = 0, None, 0, None
    partial = path + ".partial"  # renamed once closed: a killed writer leaves no shard
    try:
        for cid, chunk in items:
            table = stream.encode_chunk(chunk, cid, task, args, tokenizer, cfg, seed)
            skipped += int(table.pop("_skipped", 0))
            n = stream.n_rows(table)
            if n == 0:
                continue
            if columns is None:
                columns = {
                    k: dict(dtype=str(v.dtype), shape=list(v.shape[1:])) for k, v in table.items()
                }
                writer = ArrayRecordWriter(partial, WRITE_OPTIONS)
            rec = np.empty(n, record_dtype(columns))
            for k in columns:
                rec[k] = table[k]
            data = rec.tobytes()
            size = rec.dtype.itemsize
            for i in range(n):
                writer.write(data[i * size : (i + 1) * size])
            rows += n
    finally:
        if writer is not None:
            writer.close()
    done = dict(shard=shard, rows=rows, columns=columns, skipped=skipped)
    if rows:
        done.update(bytes=os.path.getsize(partial), sha256=file_sha256(partial))
        os.replace(partial, path)
    _write_json(_done_path(path), done)
    return done


def _done_path(shard_path: str) -> str:
    return shard_path + ".done.json"


def _write_json(path: str, obj) -> None:
    """Whole or not at all (a temporary file renamed over `path`)."""
    with open(path + ".partial", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".partial", path)


def file_sha256(path: str, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def prepare(
    cfg, *, task, task_args, tokenizer, out, workers=1, seed=0, chunks_per_shard=0, runner=()
):
    """Writes `cfg.source` prepared into `out`; returns the index (a dict).

    A shard is a run of consecutive chunks (`chunks_per_shard`, default: one, or as many as
    keep the shards at most 1024), encoded and written by one pool worker, so the output
    depends on the source and the settings, never on the number of workers. `runner`:
    (Beam runner name, pipeline option, ...) to write the shards on Apache Beam instead of
    the pool (`_beam_shards`); the bytes are the same."""
    uri = parse_uri(cfg.source)
    if uri.slice:
        raise DataError(f"{uri.raw}: prepare a whole source (split the files instead of slicing)")
    chunks = shards.plan(uri, cfg)
    args = tasks.get(task).args(task_args)
    cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    per = int(chunks_per_shard or 0) or max(1, -(-len(chunks) // MAX_SHARDS))
    if os.path.exists(os.path.join(out, "index.json")):
        raise FileExistsError(f"{out} already holds prepared data; remove it or pick another --out")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(f"{out} exists and is not an empty folder; pick another --out")
    settings = {
        k: _jsonable(cfg.get(k))
        for k in ("seq_len", "target_len", "text_split", "pack", "text_columns", "chunk_bytes")
    }
    # What the shards depend on: an unfinished DIR.tmp/ with the same plan is resumed.
    plan = dict(
        version=VERSION,
        source=uri.raw,
        # The files, their sizes and the cut points (the chunks), as one hash.
        chunk_plan=hashlib.sha256(json.dumps(chunks, default=str).encode()).hexdigest(),
        task=task,
        encoding=tasks.get(task).encoding_key(args, seed),
        tokenizer=cache.tokenizer_fingerprint(tokenizer),
        settings=settings,
        chunks=len(chunks),
        chunks_per_shard=per,
    )
    tmp = _work_folder(out, json.loads(json.dumps(plan, default=str)))
    t0 = time.perf_counter()
    items = list(enumerate(chunks))
    jobs = [
        (j, items[i : i + per], os.path.join(tmp, f"part-{j:05d}.array_record"))
        for j, i in enumerate(range(0, len(items), per))
    ]
    common = (task, args, tokenizer, cfg_dict, int(seed))
    done = _write_shards(jobs, common, workers, runner, tmp)
    kept = [d for d in done if d["rows"]]
    if not kept:
        raise DataError(f"{uri.raw}: no rows to prepare (every document is empty)")
    final = _final_names(tmp, kept, jobs)
    index = _index(uri, plan, tokenizer, settings, kept, final, done)
    if tokenizer is not None and hasattr(tokenizer, "save"):  # what training reads it with
        tokenizer.save(os.path.join(tmp, "tokenizer"))
    _write_json(os.path.join(tmp, "index.json"), index)
    if os.path.isdir(out):
        os.rmdir(out)  # empty (checked above)
    os.rename(tmp, out)
    log.info(
        f"data: prepared {uri.raw} into {out}: {index['rows']} rows in {len(final)} shards "
        f"({len(chunks)} chunks, {int(workers)} workers, {time.perf_counter() - t0:.1f}s)"
    )
    if index["skipped"]:
        log.warning(f"data: skipped {index['skipped']} bad rows (data.bad_rows=skip)")
    return index


def _final_names(tmp: str, kept: list, jobs: list) -> list[str]:
    """Renames the written shards to rows-SSSSS-of-NNNNN (the shard count in the name, as
    TFDS / ArrayRecord sets have it) and drops the resume markers; returns the names."""
    final = [f"rows-{i:05d}-of-{len(kept):05d}.array_record" for i in range(len(kept))]
    for d, name in zip(kept, final):
        os.rename(os.path.join(tmp, f"part-{d['shard']:05d}.array_record"), os.path.join(tmp, name))
    for job in jobs:
        os.remove(_done_path(job[2]))
    os.remove(os.path.join(tmp, PLAN_FILE))
    return final


def _index(uri, plan: dict, tokenizer, settings: dict, kept: list, final: list, done: list):
    """index.json: what the shards hold and how they were made, each shard's digest."""
    return dict(
        version=VERSION,
        source=uri.raw,
        task=plan["task"],
        encoding=plan["encoding"],
        tokenizer=plan["tokenizer"],
        # Where its vocabulary was trained (None: not by pjx), for DP-SGD's refusal.
        tokenizer_trained_on=getattr(tokenizer, "trained_on", None),
        settings=settings,
        columns=kept[0]["columns"],
        shards=[
            dict(file=f, rows=d["rows"], bytes=d["bytes"], sha256=d["sha256"])
            for f, d in zip(final, kept)
        ],
        rows=int(sum(d["rows"] for d in kept)),
        chunks=plan["chunks"],
        skipped=sum(d["skipped"] for d in done),
    )


def _work_folder(out: str, plan: dict) -> str:
    """OUT.tmp/, kept when it was begun for this `plan` (a resume), else made empty."""
    tmp = out.rstrip("/") + ".tmp"
    if _read_json(os.path.join(tmp, PLAN_FILE)) != plan:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        _write_json(os.path.join(tmp, PLAN_FILE), plan)
    return tmp


def _write_shards(jobs, common, workers, runner, tmp: str) -> list[dict]:
    """Every job's record (`_write_shard`), in shard order: those an earlier, killed
    prepare finished are read back, the others written on Beam, a pool or here."""
    finished = {j[0]: _read_json(_done_path(j[2])) for j in jobs}
    finished = {k: v for k, v in finished.items() if v is not None}
    todo = [j for j in jobs if j[0] not in finished]
    if finished:
        log.info(f"data: resuming {tmp}: {len(finished)} of {len(jobs)} shards already written")
    if not todo:
        written = []
    elif runner:
        written = _beam_shards(todo, common, list(runner), tmp)
    elif int(workers) > 1:
        ctx = multiprocessing.get_context(os.environ.get("PJX_DATA_START") or _start_method())
        with ctx.Pool(min(int(workers), len(todo)), _init, (common,)) as pool:
            written = pool.map(_write_shard, todo, chunksize=1)
    else:
        _init(common)
        written = [_write_shard(job) for job in todo]
    return sorted([*finished.values(), *written], key=lambda d: d["shard"])


def _beam_shard(job, common) -> dict:
    _init(common)
    return _write_shard(job)


def _beam_shards(jobs, common, runner: list, tmp: str) -> list[dict]:
    """The pool's work on Apache Beam (the engine TFDS and SeqIO prepare large sets with):
    one element per shard, written by whichever worker takes it with the same
    `_write_shard`, so the files are the pool's bytes. Every worker writes into `tmp`
    (next to --out), which must be a filesystem they all see (NFS, a GCS FUSE mount);
    their row counts come back through text files there."""
    try:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError as e:
        raise ValueError(
            "pjx data prepare --runner needs Apache Beam: pip install 'pjx[beam]' (or "
            "apache-beam), or leave --runner out to prepare on this host's processes"
        ) from e
    runner_name, *options = runner
    prefix = os.path.join(tmp, "beam-shards")
    opts = PipelineOptions([f"--runner={runner_name}", *options])
    with beam.Pipeline(options=opts) as p:
        _ = (
            p
            | "shards" >> beam.Create(jobs)
            | "spread" >> beam.Reshuffle()  # lets a runner hand shards to many workers
            | "write" >> beam.Map(_beam_shard, common)
            | "json" >> beam.Map(json.dumps)
            | "counts" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl")
        )
    done = []
    for name in sorted(os.listdir(tmp)):
        if name.startswith("beam-shards") and name.endswith(".jsonl"):
            with open(os.path.join(tmp, name)) as f:
                done += [json.loads(line) for line in f if line.strip()]
            os.remove(os.path.join(tmp, name))
    done.sort(key=lambda d: d["shard"])
    if [d["shard"] for d in done] != [j[0] for j in jobs]:
        raise RuntimeError(
            f"Beam runner {runner_name}: {len(done)} of {len(jobs)} shards reported back; "
            "the output folder is incomplete"
        )
    return done


def _start_method() -> str:
    """fork (fast: no re-import) unless this process runs JAX, whose threads make a fork
    unsafe; then forkserver."""
    import sys

    xb = sys.modules.get("jax._src.xla_bridge")
    running = xb is not None and getattr(xb, "backends_are_initialized", lambda: True)()
    return "forkserver" if running else "fork"


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def record_dtype(columns: dict) -> np.dtype:
    return np.dtype([(k, c["dtype"], tuple(c["shape"])) for k, c in columns.items()])


def tokenizer_dir(source: str) -> str | None:
    """DIR/tokenizer of a `prepared:DIR` source (the tokenizer its rows were made with)."""
    try:
        uri = parse_uri(source)
    except DataError:
        return None
    folder = os.path.join(os.path.expanduser(uri.path), "tokenizer")
    return folder if uri.kind == "prepared" and os.path.isdir(folder) else None


def _read_json(path: str):
    """The JSON object in `path`, or None when absent or not whole."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_index(folder: str) -> dict:
    path = os.path.join(os.path.expanduser(folder), "index.json")
    if not os.path.isfile(path):
        raise DataError(
            f"{folder}: no index.json; write prepared data with `pjx data prepare --config ... "
            f"--out {folder}`"
        )
    with open(path) as f:
        return json.load(f)


class Table:
    """Rows of a prepared folder by index: `table[rows]` -> {column: array}. Picklable
    (readers reopen in each process)."""

    def __init__(self, folder: str):
        self.folder = os.path.expanduser(folder)
        self.index = load_index(folder)
        self.columns = self.index["columns"]
        self.dtype = record_dtype(self.columns)
        self.starts = np.cumsum([0] + [s["rows"] for s in self.index["shards"]])
        self._readers = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _open(self):
        from array_record.python.array_record_module import ArrayRecordReader

        readers = []
        for s in self.index["shards"]:
            path = os.path.join(self.folder, s["file"])
            size = os.path.getsize(path) if os.path.isfile(path) else None
            if "bytes" in s and size != s["bytes"]:
                found = "missing" if size is None else f"{size:,} bytes"
                raise DataError(
                    f"{path}: {found}, index.json records {s['bytes']:,}: the shard was "
                    f"truncated or changed after it was prepared; `pjx data verify "
                    f"{self.folder}` checks every shard, then prepare the data again"
                )
            try:
                readers.append(ArrayRecordReader(path, "readahead_buffer_size:0"))
            except Exception as e:  # noqa: BLE001
                raise DataError(
                    f"{path}: cannot open this prepared shard ({e}); prepare the data again"
                ) from None
        self._readers = readers

    def __getitem__(self, rows) -> dict:
        if self._readers is None:
            self._open()
        rows = np.asarray(rows, np.int64).reshape(-1)
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty(len(rows), self.dtype)
        for s in np.unique(shard):
            at = np.flatnonzero(shard == s)
            recs = self._readers[s].read([int(i) for i in rows[at] - self.starts[s]])
            out[at] = np.frombuffer(b"".join(recs), self.dtype)
        return {k: out[k] for k in self.columns}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_readers"] = None
        return state


def check(table: Table, *, task, tokenizer, cfg) -> None:
    """A prepared folder must match the run: task, tokenizer, row length."""
    idx = table.index
    where = f"prepared:{table.folder}"
    if idx["task"] != task:
        raise DataError(f"{where} was prepared for task {idx['task']}, this run is {task}")
    L = int(cfg.get("seq_len", 0))
    if "input_ids" in idx["columns"] and L and idx["columns"]["input_ids"]["shape"][-1] != L:
        raise DataError(
            f"{where} holds rows of {idx['columns']['input_ids']['shape'][-1]} tokens, this "
            f"run's data.seq_len is {L}: set it to match or prepare again"
        )
    if tokenizer is not None and idx["tokenizer"] != cache.tokenizer_fingerprint(tokenizer):
        raise DataError(
            f"{where} was tokenized by another tokenizer than data.tokenizer; use the same "
            "one (a trained one: its folder) or prepare again"
        )


def verify(folder: str) -> list[str]:
    """Every shard of a prepared folder against index.json's sizes and SHA-256s: the
    problems found (empty: all match). A folder without index.json is a DataError."""
    folder = os.path.expanduser(folder)
    index = load_index(folder)
    problems = []
    for s in index["shards"]:
        path = os.path.join(folder, s["file"])
        if not os.path.isfile(path):
            problems.append(f"{s['file']}: missing")
        elif "sha256" not in s:
            problems.append(
                f"{s['file']}: no checksum in index.json (prepared before pjx kept them)"
            )
        elif os.path.getsize(path) != s["bytes"]:
            problems.append(
                f"{s['file']}: {os.path.getsize(path):,} bytes, index.json records {s['bytes']:,}"
            )
        elif file_sha256(path) != s["sha256"]:
            problems.append(f"{s['file']}: its SHA-256 differs from index.json's (changed bytes)")
    return problems
