"""Data: sources -> batch streams, in one of three modes (`data.mode`):

- cached: the source read whole, encoded once into arrays on disk (GLUE TSV, Shakespeare,
  MNIST, embedded, tfds, small text / jsonl / Parquet); exact resume.
- stream: text / jsonl / Parquet files read chunk by chunk, tokenized and packed in Grain
  worker processes (`data.workers`), shuffled in a bounded window; memory bounded by
  buffers; files split across processes; exact resume (pjx.data.stream). A TFDS image
  set in this mode is read and decoded batch by batch (pjx.data.tfds_source.ImageTable).
- prepared: `prepared:DIR` written once by `pjx data prepare` (sharded ArrayRecord),
  read with random access: global shuffle, exact resume, N known (pjx.data.prepared).

Unset, the mode follows the source: prepared for `prepared:`, stream for text / jsonl /
Parquet files above `data.stream_above` bytes (without a slice), cached otherwise; the
choice and its reason are logged.

    cfg = pjx.data.default_config()               # config.data / config.eval_data
    spec = pjx.data.Spec(cfg, task="mlm", model="bert", seed=0)
    it = pjx.data.build(spec, tokenizer=tok, batch_size=32, train=True)  # endless, resumable
    evals = pjx.data.build(spec, tokenizer=tok, batch_size=32, train=False)  # padded, `weight`
    texts = pjx.data.read_texts("text:corpus/*.txt")   # raw texts (tokenizer training)

Source URIs and slices: pjx.uri. Modules: files (text / idx readers), shards (chunks of
text / jsonl / Parquet files), stream, prepared, tsv (GLUE layouts), tfds_source, embedded
(the offline corpus and its classification task), sources (one `read` over all of them),
cache (pre-encoded arrays on disk), encode (source + task -> arrays, through the task's own
`encode`), pipeline (Grain). How examples become arrays and batches is each task's
(pjx.tasks).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from pjx import packing
from pjx.data import encode, pipeline, prepared, shards, sources, stream, tfds_source
from pjx.examples import DataError
from pjx.uri import parse_uri

__all__ = ["DataError", "Spec", "build", "choose_mode", "default_config", "num_rows", "parse_uri"]
__all__ += ["read_texts"]
log = logging.getLogger(__name__)


def default_config() -> ml_collections.ConfigDict:
    """Keys of `config.data` / `config.eval_data` with their defaults."""
    c = ml_collections.ConfigDict()
    c.source = "embedded"  # tfds:NAME[:SPLIT] | text:PATH_OR_GLOB | tsv:PATH | idx:DIR | embedded
    # ... | jsonl:GLOB | parquet:GLOB | prepared:DIR
    c.mode = ""  # "cached" | "stream" | "prepared" ("" = chosen by the source, and logged)
    c.stream_above = 256 << 20  # unset mode: text / jsonl / Parquet above this many bytes stream
    c.seq_len = 128  # tokens per row (encoder / decoder input)
    c.target_len = 0  # seq2seq label length (0 = seq_len)
    # Padded text rows (classify): each batch is cut to the smallest multiple of this that
    # holds its longest row, one compiled step per width (0 = every batch at seq_len).
    c.length_bucket = 16
    c.tokenizer = ""  # a pjx.tokenizers spec, read by pjx.workdir.build_tokenizer
    c.data_dir = ""  # TFDS data_dir ("" = TFDS's default)
    c.download = False  # TFDS: download_and_prepare when not prepared (needs internet)
    c.cache = True  # store encoded arrays (see pjx.data.cache) ...
    c.cache_dir = ""  # ... here ("" = DATA_DIR/pjx_cache, WORKDIR/data_cache, ~/.cache/pjx)
    # text: sources
    c.text_split = "line"  # documents: "line" | "blank_line" | "file"
    # "documents" (packed, segment ids per document) | "stream" (one text) | "none" (one row
    # per document, truncated: DP-SGD's unit)
    c.pack = "documents"
    # tsv: / tfds: columns and labels
    c.preset = ""  # GLUE layout: cola sst2 mrpc rte qnli qqp mnli wnli ("" = detect)
    c.header = True  # tsv without a preset: the first row names the columns
    c.text_columns = ()  # names or 0-based indices; 1 or 2 (a pair); () = preset / auto
    c.label_column = ""
    c.target_column = ""  # seq2seq targets
    c.labels = ()  # class names in label order; () = integers 0..model.num_labels-1
    c.bad_rows = "error"  # "error" | "skip" (skipped rows are counted and printed)
    # images
    c.image_size = 0  # resize to SxS (0 = keep)
    c.image_mean = (0.5,)  # per channel (one value broadcasts)
    c.image_std = (0.5,)
    c.augment = ""  # classify: "" | "simclr" (contrastive always makes SimCLR views)
    c.flip = True  # SimCLR horizontal flips (False for digits and text)
    c.crop_scale = (0.08, 1.0)  # SimCLR random resized crop area range
    c.jitter = 0.4  # brightness / contrast strength (SimCLR 0.8 * s, s = 0.5)
    c.blur = True
    # Grain
    c.shuffle = True
    c.num_threads = 2  # ReadOptions threads without worker processes (with them: 1 each)
    c.prefetch = 8  # batches buffered ahead
    c.worker_count = 0  # worker processes (mp_prefetch); 0 = threads only
    c.workers = 0  # the same, for every mode (overrides worker_count); one core each
    # streaming / prepared
    c.chunk_bytes = 1 << 20  # bytes of text per chunk (the unit of reading, packing, sharding)
    c.shuffle_buffer = 8192  # streaming: rows per shuffled window (whole chunks)
    return c


CHOICES = {
    "text_split": ("line", "blank_line", "file"),
    "pack": ("documents", "stream", "none"),
    "bad_rows": ("error", "skip"),
    "augment": ("", "simclr"),
    "mode": ("", "cached", "stream", "prepared"),
}


def with_defaults(cfg) -> ml_collections.ConfigDict:
    given = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    full = ml_collections.ConfigDict({**default_config().to_dict(), **given})
    for key, allowed in CHOICES.items():
        if full[key] not in allowed:
            raise DataError(f"data.{key}={full[key]!r}: choose one of {list(allowed)}")
    return full


def choose_mode(cfg) -> tuple[str, str]:
    """(mode, why) for `cfg.source` and `cfg.mode` (see the module docstring)."""
    u = parse_uri(cfg.source)
    mode = cfg.get("mode", "") or ""
    if u.kind == "prepared" or mode == "prepared":
        if u.kind != "prepared":
            raise DataError(
                f"data.mode=prepared reads a prepared:DIR source, not {u.raw}; write one with "
                "`pjx data prepare --config ... --out DIR`"
            )
        if mode not in ("", "prepared"):
            raise DataError(f"{u.raw} is read in prepared mode only (data.mode={mode!r})")
        return "prepared", "a prepared:DIR source"
    if mode == "stream" and u.kind == "tfds":
        return "stream", "data.mode=stream: TFDS images decoded per batch"
    if mode == "stream":
        if u.kind not in shards.KINDS:
            raise DataError(
                f"data.mode=stream reads text:, jsonl: and parquet: files, not {u.raw}; use "
                "data.mode=cached"
            )
        return "stream", "data.mode=stream"
    if mode == "cached":
        return "cached", "data.mode=cached"
    if u.kind not in shards.KINDS:
        return "cached", f"{u.kind}: sources are read whole"
    if u.slice:
        return "cached", "a sliced source is counted whole"
    size, limit = shards.total_bytes(u), int(cfg.get("stream_above", 256 << 20))
    if size > limit:
        return "stream", f"{size / 2**20:,.0f} MiB of files > data.stream_above"
    return "cached", f"{size / 2**20:,.1f} MiB of files <= data.stream_above"


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a run reads and how its task turns it into rows: the source's settings
    (`config.data` / `config.eval_data`), the task and its options, the model family, its
    classes (names the classes of sources whose labels are bare integers) and the seed of
    the row order (and of what the encoding draws). Every reader of a source takes one."""

    cfg: Any
    task: str
    model: str
    task_args: dict | None = None
    num_labels: int = 0
    seed: int = 0

    def table(self, tokenizer=None, workdir: str | None = None):
        """The encoded table of a cached source (pjx.data.encode)."""
        return encode.table(
            self.cfg,
            task=self.task,
            task_args=self.task_args,
            model=self.model,
            tokenizer=tokenizer,
            seed=self.seed,
            workdir=workdir,
            num_labels=self.num_labels,
        )


def num_rows(spec: Spec, *, tokenizer=None, workdir=None) -> int:
    """Training rows of a source (DP's N): the cached table's or the prepared index's."""
    cfg = with_defaults(spec.cfg)
    mode, _ = choose_mode(cfg)
    if mode == "prepared":
        return len(prepared.Table(parse_uri(cfg.source).path))
    if mode == "stream" and parse_uri(cfg.source).kind == "tfds":
        return len(tfds_source.ImageTable(cfg.source, cfg, spec.num_labels))
    if mode == "stream":
        raise DataError(
            f"{cfg.source}: a stream has no known size; DP-SGD needs N: prepare the corpus "
            "(`pjx data prepare`) and train on prepared:DIR"
        )
    arrays = dataclasses.replace(spec, cfg=cfg).table(tokenizer, workdir)
    return len(next(iter(arrays.values())))


def read_texts(uri: str, cfg=None) -> Iterator[str]:
    """The raw texts of a source (documents; both sentences of pairs), e.g. to train a
    tokenizer. Slices apply; blank documents are skipped. Lines of `text:` files keep their
    newline, and with `cfg.pack == "stream"` the one joined text is yielded, so a character
    vocabulary covers the newlines a stream-packed pipeline feeds it."""
    cfg = with_defaults(cfg or {})
    if cfg.pack != "stream" and choose_mode(with_defaults(dict(cfg, source=uri)))[0] == "stream":
        yield from _stream_texts(uri, cfg)  # chunk by chunk: memory flat in the corpus
        return
    ex = sources.read(uri, cfg)
    if ex.texts is None:
        raise DataError(f"{uri} has no text")
    if cfg.pack == "stream":
        yield from packing.documents(ex, stream=True)
        return
    end = "\n" if parse_uri(uri).kind == "text" and cfg.text_split == "line" else ""
    for column in (ex.texts, ex.texts_b or ()):
        for t in column:
            if t and t.strip():
                yield t + end


def _stream_texts(uri: str, cfg) -> Iterator[str]:
    """Texts of a streamed source, chunk by chunk: all of them up to data.stream_above bytes
    of text, beyond that a sample of whole chunks in a seeded order (what a tokenizer
    trains on: the whole of a large corpus would take hours to read)."""
    u = parse_uri(uri)
    end = "\n" if u.kind == "text" and cfg.text_split == "line" else ""
    chunks = shards.plan(u, cfg)
    budget = int(cfg.get("stream_above", 256 << 20))
    sizes = [c[3] - c[2] if c[0] != "parquet" else 0 for c in chunks]
    if sum(sizes) > budget:
        order = np.random.default_rng(0).permutation(len(chunks))
        chunks = [chunks[i] for i in sorted(order[: max(1, len(chunks) * budget // sum(sizes))])]
        log.info(f"data: {uri}: texts from {len(chunks)} chunks (a sample of data.stream_above)")
    for chunk in chunks:
        ex, _ = shards.read_chunk(chunk, cfg)
        for t in list(ex.texts) + list(ex.texts_b or ()):
            if t and t.strip():
                yield t + end


def build(
    spec: Spec,
    *,
    tokenizer=None,
    batch_size: int,
    train: bool,
    process_index: int = 0,
    process_count: int = 1,
    rows=None,
    workdir: str | None = None,
    poisson_rate: float | None = None,
):
    """train=True: endless `TrainIterator` of process-local batches (get_state /
    set_state); train=False: `EvalBatches`, every example once, padded, with `weight`.

    `batch_size` is global. Each process produces `rows` (positions in every global batch:
    its shard, `pjx.sharding.process_rows`), by default the process_index-th of
    process_count equal blocks, as jax lays a batch over processes. With `poisson_rate` q
    (DP-SGD), training batch i holds each row with probability q, padded to batch_size
    rows that carry `weight` 0.
    """
    cfg = with_defaults(spec.cfg)
    task, seed = spec.task, spec.seed
    if rows is None:
        if batch_size % process_count:
            raise DataError(
                f"batch_size {batch_size} is not divisible by {process_count} processes"
            )
        local = batch_size // process_count
        rows = np.arange(process_index * local, (process_index + 1) * local)
    kind = parse_uri(cfg.source).kind
    if train or (kind == "tfds" and cfg.mode == "stream"):
        mode, why = choose_mode(cfg)
    elif kind == "prepared":
        mode, why = "prepared", "a prepared:DIR source"
    else:  # evaluation (data.mode is inherited from config.data)
        mode, why = "cached", "evaluation reads its source whole"
    log.info(f"data: {cfg.source}: {mode} mode ({why})")
    batches = lambda arrays, n, mode: _batches(
        arrays, n, cfg, mode, task, batch_size, rows, train, seed, poisson_rate
    )
    if mode == "stream" and kind == "tfds":  # random access: batches by index, as cached
        table = tfds_source.ImageTable(cfg.source, cfg, spec.num_labels)
        return batches(table, len(table), "stream")
    if mode == "stream":
        if poisson_rate is not None:
            raise DataError(
                "DP-SGD's Poisson sampling needs random access to N rows: prepare the corpus "
                "(`pjx data prepare`) and train on prepared:DIR, or use data.mode=cached"
            )
        return stream.build(
            cfg,
            task=task,
            task_args=spec.task_args,
            tokenizer=tokenizer,
            batch_rows=len(rows),
            seed=seed,
            process_index=process_index,
            process_count=process_count,
        )
    if mode == "prepared":
        arrays = prepared.Table(parse_uri(cfg.source).path)
        prepared.check(arrays, task=task, tokenizer=tokenizer, cfg=cfg)
        return batches(arrays, len(arrays), "prepared")
    arrays = dataclasses.replace(spec, cfg=cfg).table(tokenizer, workdir)
    return batches(arrays, len(next(iter(arrays.values()))), "cached")


def _batches(arrays, n, cfg, mode, task, batch_size, rows, train, seed, poisson_rate):
    """Batches gathered by index from a table of n rows (cached arrays or prepared)."""
    index = pipeline.BatchIndex(
        n,
        batch_size,
        rows,
        train=train,
        seed=seed,
        shuffle=bool(cfg.shuffle),
        poisson_rate=poisson_rate if train else None,
    )
    info = dict(source=cfg.source, rows=n, task=task, batch_size=index.B, mode=mode)
    ds = pipeline.map_dataset(arrays, index, task=task, cfg=cfg, seed=seed)
    if train:
        return pipeline.TrainIterator(pipeline.iter_dataset(ds, cfg), index, info)
    return pipeline.EvalBatches(ds, cfg, index, info)
