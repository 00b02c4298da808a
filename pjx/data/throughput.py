"""`pjx bench --data-only`: batches per second of the training pipeline alone."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np


def _tokenizer(config, data_cfg):
    """The run's tokenizer, as `pjx train` builds it; a `train:` spec trains once into a
    folder of the data cache (there is no workdir)."""
    from pjx import workdir as workdir_lib
    from pjx.data import cache

    spec = data_cfg.get("tokenizer", "") or ""
    key = f"{spec}|{data_cfg.source}|{config.model.name}"
    key = hashlib.sha256(key.encode()).hexdigest()[:12]
    return workdir_lib.build_tokenizer(
        config, os.path.join(cache.root(data_cfg), f"bench-tokenizer-{key}")
    )


def bench_pipeline(config, steps: int = 200, tokenizer=None) -> dict:
    """Builds `config`'s training pipeline (encoding into the cache if needed), then times
    `steps` batches. `config` is a full run config (.data, .task, .model.name,
    .batch_size, .seed). Returns tokens_per_s (row positions incl. padding),
    real_tokens_per_s (non-padding), examples_per_s, batch_s, cache_s, first_batch_s."""
    from pjx.data import _with_defaults, build

    cfg = _with_defaults(config.data)
    t0 = time.perf_counter()
    tok = tokenizer if tokenizer is not None else _tokenizer(config, cfg)
    it = build(
        cfg,
        task=config.task,
        model=config.model.name,
        tokenizer=tok,
        batch_size=int(config.batch_size),
        seed=int(config.seed),
        train=True,
    )
    t1 = time.perf_counter()
    first = next(it)
    t2 = time.perf_counter()
    real = 0
    for _ in range(int(steps)):
        batch = next(it)
        if "segment_ids" in batch:
            real += int(np.count_nonzero(batch["segment_ids"]))
        elif "attention_mask" in batch:
            real += int(np.count_nonzero(batch["attention_mask"]))
    dt = time.perf_counter() - t2
    ids = first.get("input_ids")
    rows = len(next(iter(first.values())))
    tokens = int(ids.size) * int(steps) if ids is not None else 0
    out = {
        "examples_per_s": rows * int(steps) / dt,
        "batch_s": dt / max(int(steps), 1),
        "cache_s": t1 - t0,
        "first_batch_s": t2 - t1,
        "steps": int(steps),
        "batch_size": rows,
        "task": config.task,
        "source": cfg.source,
        "num_threads": int(cfg.num_threads),
        "worker_count": int(cfg.worker_count),
    }
    if ids is not None:
        out["seq_len"] = int(ids.shape[1])
        out["tokens_per_s"] = tokens / dt
        out["real_tokens_per_s"] = (real or tokens) / dt
    return out
