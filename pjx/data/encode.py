"""Source + task -> the table of arrays a pipeline gathers batches from (cached).

Text tasks: `pjx.data.text.encode` of the source's examples, stored in the cache keyed by
the source's fingerprint, the reader settings, the tokenizer, task, model and lengths.
Image tasks: uint8 images [N,H,W,C] (+ int32 labels); idx files are read directly (one
vectorised load), TFDS images are decoded once into the cache.
"""

from __future__ import annotations

from pjx.data import cache, sources, text
from pjx.data.sources import DataError

# Settings that change what a reader / encoder produces (part of the cache key).
READER_KEYS = (
    "text_split",
    "pack",
    "nsp",
    "preset",
    "header",
    "text_columns",
    "label_column",
    "target_column",
    "labels",
    "num_labels",
    "bad_rows",
    "seq_len",
    "target_len",
)


def is_image_task(task: str, model: str) -> bool:
    return task == "contrastive" or model == "vit"


def source_fingerprint(uri: sources.Uri, cfg) -> list:
    if uri.kind == "tfds":
        from pjx.data import tfds_source

        return tfds_source.fingerprint(uri, cfg)
    if uri.kind == "embedded":
        from pjx.data import embedded

        return embedded.fingerprint()
    return sources.file_fingerprint(uri)


def table(cfg, *, task: str, model: str, tokenizer=None, seed: int = 0, workdir=None) -> dict:
    """The encoded arrays (leading dim N) of `cfg.source` for `task`."""
    uri = sources.parse_uri(cfg.source)
    image = is_image_task(task, model)
    if not image and tokenizer is None:
        raise DataError(
            f"task {task} on {uri.raw} needs a tokenizer: set data.tokenizer (e.g. "
            "'wordpiece:PATH/vocab.txt', 'sentencepiece:PATH.model', 'byte', "
            "'train:sentencepiece?vocab_size=8000')"
        )
    # seq2seq without a target column casts a labelled source as text-to-text.
    need_labels = task == "classify" or (task == "seq2seq" and not cfg.get("target_column"))
    if image and uri.kind == "idx":
        return _image_table(sources.read(uri, cfg, need_labels=need_labels), task)
    settings = {k: cfg.get(k) for k in READER_KEYS if k in cfg}
    parts = dict(
        kind="images" if image else task,
        source=uri.raw,
        files=source_fingerprint(uri, cfg),
        settings={k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        tokenizer=None if image else cache.tokenizer_fingerprint(tokenizer),
        model=model,
        seed=int(seed) if (task == "mlm" and cfg.get("nsp", False)) else 0,
    )

    def build():
        ex = sources.read(uri, cfg, need_labels=need_labels)
        if image:
            return _image_table(ex, task)
        return text.encode(task, ex, tokenizer, cfg, seed=seed)

    directory = cache.root(cfg, workdir) if cfg.get("cache", True) else None
    return cache.cached(directory, parts, build)


def _image_table(ex: sources.Examples, task: str) -> dict:
    if ex.images is None:
        raise DataError(f"{ex.origin} has no images for task {task} (use idx: or an image tfds:)")
    out = {"images": ex.images}
    if task == "classify":
        if ex.labels is None:
            raise DataError(f"{ex.origin}: task classify needs labels")
        out["label"] = ex.labels
    return out
