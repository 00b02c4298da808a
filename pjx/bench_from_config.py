"""`pjx bench` from a loaded config: resolve it for pjx.bench's timing core (vocabulary and
MLM ids without a data set), or time its input pipeline alone.

Apart from pjx.bench because these need ml_collections, grain and the tokenizers, which the
timing core must not import (it runs on accelerator hosts that lack them).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from pjx import config as config_lib
from pjx import data, resolution, tokenizers
from pjx import plan as plan_lib
from pjx import workdir as workdir_lib
from pjx.bench import MLM_DEFAULTS
from pjx.tokenizers import parse_spec

log = logging.getLogger(__name__)


def load_tokenizer(config):
    """The config's tokenizer when it is a file (`sentencepiece:PATH`, a folder, ...), for
    its vocabulary size and special ids; None for `train:` specs or when it cannot load."""
    spec = config.data.get("tokenizer", "") or ""
    if not spec or spec.startswith("train:"):
        return None
    try:
        return tokenizers.load(spec)
    except Exception as e:  # noqa: BLE001 - bench still runs on the config's sizes
        log.warning(f"tokenizer {spec!r} not loaded ({e}); using the model's vocab size")
        return None


def resolve(config, *, train_tokenizer: bool = False):
    """(plan, tokenizer or None) of a loaded `config`: what `pjx bench` times (the
    pjx.plan of its resolved bench-ready copy). `train_tokenizer`: a `train:` tokenizer
    spec is trained on the config's data (once, into the data cache) as `pjx train` would,
    so the vocabulary is the run's; otherwise such a spec only sets the vocabulary size."""
    spec = str(config.data.get("tokenizer", "") or "")
    # A run reads text as the model it learns from did (init_from, a distillation teacher):
    # that vocabulary, not the size a `train:` spec would give.
    tokenizer = workdir_lib.inherited_tokenizer(config_lib.first_stage(config))
    if tokenizer is None and train_tokenizer and spec.startswith("train:"):
        tokenizer = workdir_lib.cached_tokenizer(config)
    elif tokenizer is None:
        tokenizer = load_tokenizer(config)
    resolved = resolution.resolve(prepare_config(config, tokenizer), tokenizer)
    return plan_lib.from_config(resolved), tokenizer


def prepare_config(config, tokenizer=None):
    """Bench-ready copy: first stage, vocab size from a `train:` tokenizer spec, MLM ids."""
    config = config_lib.apply_overrides(config_lib.first_stage(config), ())
    spec = config.data.get("tokenizer", "") or ""
    vocab = parse_spec(spec).params.get("vocab_size") if spec.startswith("train:") else None
    if tokenizer is None and vocab and config.model.get("vocab_size") is None:
        config_lib.set_key(config, "model.vocab_size", vocab, parse=False)
    if config.task == "mlm" and tokenizer is None:
        for key, value in MLM_DEFAULTS.items():
            if config.task_args.get(key) is None:
                config_lib.set_key(config, f"task_args.{key}", value, parse=False)
    if config.task == "classify" and int(config.model.get("num_labels", 0) or 0) <= 0:
        n = 10 if config.model.name == "vit" else 2
        config_lib.set_key(config, "model.num_labels", n, parse=False)
    return config


# --------------------------------------------------------------------- input pipeline
def pipeline(config, steps: int = 200, tokenizer=None) -> dict:
    """Builds `config`'s training pipeline (encoding into the cache if needed), then times
    `steps` batches. Returns tokens_per_s (row positions incl. padding), real_tokens_per_s
    (non-padding), examples_per_s, batch_s, cache_s, first_batch_s."""
    config = resolution.resolve_data(config_lib.first_stage(config))
    cfg = data.with_defaults(config.data)
    t0 = time.perf_counter()
    tok = tokenizer if tokenizer is not None else workdir_lib.cached_tokenizer(config, cfg)
    it = data.build(
        data.Spec(
            cfg,
            task=config.task,
            task_args=config.task_args.to_dict(),
            model=config.model.name,
            seed=int(config.seed),
            num_labels=int(config.model.get("num_labels", 0) or 0),
        ),
        tokenizer=tok,
        batch_size=int(config.batch_size),
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
        "workers": int(cfg.get("workers", 0) or cfg.worker_count),
        "mode": getattr(it, "info", {}).get("mode", "cached"),
    }
    if ids is not None:
        out["seq_len"] = int(ids.shape[1])
        out["tokens_per_s"] = tokens / dt
        out["real_tokens_per_s"] = (real or tokens) / dt
    return out
