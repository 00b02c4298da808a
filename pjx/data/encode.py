"""Source + task -> the table of arrays a pipeline gathers batches from (cached).

The task encodes the source's `Examples` (`Task.encode`; pjx.tasks); the result is stored
in the cache keyed by the source's fingerprint, the reader settings, the tokenizer, the
task (and what of its arguments change the encoding), the model family and the lengths.
Images stay uint8 [E,Y,X,C] (+ int32 labels); idx files are read directly (one vectorised
load), TFDS images are decoded once into the cache.
"""

from __future__ import annotations

import pjx.data.cache as cache
import pjx.data.sources as sources
from pjx import models, tasks
from pjx.examples import DataError

# Settings that change what a reader / encoder produces (part of the cache key).
READER_KEYS = (
    "text_split",
    "pack",
    "preset",
    "header",
    "text_columns",
    "label_column",
    "target_column",
    "labels",
    "bad_rows",
    "seq_len",
    "target_len",
)


def table(
    cfg,
    *,
    task: str,
    task_args=None,
    model: str,
    tokenizer=None,
    seed: int = 0,
    workdir=None,
    num_labels: int = 0,
) -> dict:
    """The encoded arrays (leading dim: rows) of `cfg.source` for `task`."""
    t = tasks.get(task)
    args = t.args(task_args)
    uri = sources.parse_uri(cfg.source)
    image = models.MODELS[model].INPUT == "pixels"
    if not image and tokenizer is None:
        raise DataError(
            f"task {task} on {uri.raw} needs a tokenizer: set data.tokenizer (e.g. "
            "'wordpiece:PATH/vocab.txt', 'sentencepiece:PATH.model', 'byte', "
            "'train:sentencepiece?vocab_size=8000')"
        )
    need_labels = t.needs_labels(cfg)

    def build():
        ex = sources.read(uri, cfg, need_labels=need_labels, num_labels=num_labels)
        if image and ex.images is None:
            raise DataError(
                f"{ex.origin} has no images for task {task} (use idx: or an image tfds:)"
            )
        return t.encode(ex, tokenizer, cfg, args, seed)

    if image and uri.kind == "idx":
        return build()  # one vectorised read of the files: nothing to cache
    settings = {k: cfg.get(k) for k in READER_KEYS if k in cfg}
    parts = dict(
        kind=task,
        source=uri.raw,
        files=sources.fingerprint(uri, cfg),
        settings={k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        tokenizer=None if image else cache.tokenizer_fingerprint(tokenizer),
        model=model,
        task=t.encoding_key(args, seed),
        num_labels=int(num_labels),
    )
    directory = cache.root(cfg, workdir) if cfg.get("cache", True) else None
    return cache.cached(directory, parts, build)
