"""`pjx bench --config FILE[:ARG] [--steps N] [--compile-only | --data-only]`.

The last line is one JSON object: timed train steps (`tokens_per_s`, `step_s`,
`compile_s`, on GPU / TPU `mfu`), or with `--compile-only` XLA's memory estimates and the
compile time (`temp_bytes`, `argument_bytes`, `compile_s`) without running a step, or with
`--data-only` the input pipeline's throughput. The config is readied for synthetic
batches first: its first stage, the vocabulary size of a `train:` tokenizer spec, BERT's
special ids for MLM.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import numpy as np

from pjx import bench, data, tokenizers
from pjx import config as config_lib
from pjx import workdir as workdir_lib
from pjx.cli.common import add_config_argument, add_distributed_arguments, start_compute
from pjx.data import cache
from pjx.tokenizers import parse_spec

log = logging.getLogger(__name__)


def add_arguments(p):
    add_config_argument(p)
    p.add_argument("--steps", type=int, default=10, help="timed steps after compilation")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--compile-only", action="store_true", help="compile only: memory estimates, compile time"
    )
    what.add_argument("--data-only", action="store_true", help="time the input pipeline only")
    add_distributed_arguments(p)


def main(args, overrides) -> int:
    config = config_lib.load(args.config, overrides)
    if args.data_only:
        result = bench_pipeline(config, int(args.steps))
    else:
        start_compute(args)
        tokenizer = load_tokenizer(config)
        config = config_lib.resolve(prepare_config(config, tokenizer), tokenizer)
        if args.compile_only:
            result = bench.compile_only(config, tokenizer=tokenizer)
            print(compile_line(result), flush=True)
        else:
            result = bench.run(config, tokenizer=tokenizer, steps=args.steps, warmup=args.warmup)
            print(bench.human_line(result), flush=True)
    print(json.dumps(result), flush=True)
    return 0


def compile_line(r: dict) -> str:
    mib = lambda k: r.get(k, 0) / 2**20
    return (
        f"pjx bench --compile-only {r['model']} {r['task']} B={r['batch_size']} "
        f"L={r['seq_len']} {r['dtype']} remat={r['remat']} scan={r['scan_layers']}: compile "
        f"{r['compile_s']:.1f}s | temp {mib('temp_bytes'):,.0f} MiB | arguments "
        f"{mib('argument_bytes'):,.0f} MiB (per device)"
    )


def first_stage(config):
    """A chained config's first stage (the pretraining one); the config itself otherwise."""
    if config.get("stages"):
        return config_lib.stage_configs(config, "", ())[0][1]
    return config


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


def prepare_config(config, tokenizer=None):
    """Bench-ready copy: first stage, vocab size from a `train:` tokenizer spec, MLM ids."""
    config = config_lib.apply_overrides(first_stage(config), ())
    spec = config.data.get("tokenizer", "") or ""
    vocab = parse_spec(spec).params.get("vocab_size") if spec.startswith("train:") else None
    if tokenizer is None and vocab and config.model.get("vocab_size") is None:
        config_lib.set_key(config, "model.vocab_size", vocab, parse=False)
    if config.task == "mlm" and tokenizer is None:
        for key, value in bench.MLM_DEFAULTS.items():
            if config.task_args.get(key) is None:
                config_lib.set_key(config, f"task_args.{key}", value, parse=False)
    if config.task == "classify" and int(config.model.get("num_labels", 0) or 0) <= 0:
        n = 10 if config.model.name == "vit" else 2
        config_lib.set_key(config, "model.num_labels", n, parse=False)
    return config


# --------------------------------------------------------------------- input pipeline
def pipeline_tokenizer(config, data_cfg):
    """The run's tokenizer, as `pjx train` builds it; a `train:` spec trains once into a
    folder of the data cache (there is no workdir)."""
    spec = data_cfg.get("tokenizer", "") or ""
    key = f"{spec}|{data_cfg.source}|{config.model.name}"
    key = hashlib.sha256(key.encode()).hexdigest()[:12]
    return workdir_lib.build_tokenizer(
        config, os.path.join(cache.root(data_cfg), f"bench-tokenizer-{key}")
    )


def bench_pipeline(config, steps: int = 200, tokenizer=None) -> dict:
    """Builds `config`'s training pipeline (encoding into the cache if needed), then times
    `steps` batches. Returns tokens_per_s (row positions incl. padding), real_tokens_per_s
    (non-padding), examples_per_s, batch_s, cache_s, first_batch_s."""
    config = config_lib.resolve_data(first_stage(config))
    cfg = data.with_defaults(config.data)
    t0 = time.perf_counter()
    tok = tokenizer if tokenizer is not None else pipeline_tokenizer(config, cfg)
    it = data.build(
        cfg,
        task=config.task,
        task_args=config.task_args.to_dict(),
        model=config.model.name,
        tokenizer=tok,
        batch_size=int(config.batch_size),
        seed=int(config.seed),
        train=True,
        num_labels=int(config.model.get("num_labels", 0) or 0),
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
