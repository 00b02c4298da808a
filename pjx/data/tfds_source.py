"""`tfds:NAME[:SPLIT]`: a prepared TFDS data set read through `tfds.data_source`.

Random access over array_record files needs no TensorFlow. The data set must already be
prepared in `data.data_dir` (default: TFDS's own, ~/tensorflow_datasets) with
`file_format=array_record`; downloads happen only with `data.download=True`. An unprepared
data set fails at once with a message that says how to prepare it or which local source to
use instead, never a hang on the network.

Features: images from `image` (or the only uint8 tensor feature), labels from `label`
(a ClassLabel gives the class names), text from `data.text_columns` or the data set's text
features (at most two: a sentence pair), seq2seq targets from `data.target_column`.

`read` decodes a whole split (the cached mode); `ImageTable` (data.mode=stream) reads and
decodes only the rows of each batch, in Grain's worker processes with data.workers, so an
image set is never decoded whole; images of different sizes are resized to
data.image_size there.
"""

from __future__ import annotations

import os

import numpy as np

from pjx import images as images_lib
from pjx.examples import DataError, Examples
from pjx.uri import Uri, parse_uri

_HOW = (
    "Prepare it where there is internet: `tfds build {name} --data_dir=DIR "
    "--file_format=array_record` (or tfds.builder(..).download_and_prepare with "
    "file_format='array_record'), then set --config.data.data_dir=DIR; or set "
    "--config.data.download=True; or use a local source: text:PATH, tsv:PATH, idx:DIR, "
    "embedded."
)


def _builder(name: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except Exception as e:  # DatasetNotFoundError, config / version errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"TFDS data set {name!r} is neither registered nor prepared in data_dir="
            f"{data_dir or '(TFDS default)'} ({first}). " + _HOW.format(name=name)
        ) from None


def data_source(uri: Uri, cfg):
    """The TFDS random-access source of `uri` (slice included) and its builder."""
    name, split = uri.path, (uri.split or "train") + (f"[{uri.slice}]" if uri.slice else "")
    data_dir = os.path.expanduser(cfg.get("data_dir", "") or "") or None
    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        if not cfg.get("download", False):
            raise DataError(
                f"TFDS data set {name!r} is not prepared in {builder.data_dir} "
                f"(data_dir={data_dir or '(TFDS default)'}) and data.download is off. "
                + _HOW.format(name=name)
            )
        builder.download_and_prepare(file_format="array_record")
    fmt = getattr(builder.info, "file_format", None)
    fmt = str(getattr(fmt, "value", fmt) or "").lower()
    if fmt and "array_record" not in fmt and "parquet" not in fmt:
        raise DataError(
            f"TFDS data set {name!r} in {builder.data_dir} is stored as {fmt}, which has no "
            "random access; re-prepare it with file_format=array_record. " + _HOW.format(name=name)
        )
    try:
        return builder.as_data_source(split=split), builder
    except Exception as e:
        raise DataError(f"TFDS {name!r}: cannot open split {split!r}: {e}") from None


def _pick(features, wanted, kinds) -> list[str]:
    if wanted:
        missing = [w for w in wanted if w not in features]
        if missing:
            raise DataError(f"TFDS features {sorted(features)} have no {missing}")
        return list(wanted)
    return [k for k, f in features.items() if type(f).__name__ in kinds]


def read(uri: Uri, cfg, need_labels: bool = False, num_labels: int = 0) -> Examples:
    src, builder = data_source(uri, cfg)
    feats = builder.info.features
    n = len(src)
    rows = []
    for start in range(0, n, 1024):
        rows += src.__getitems__(list(range(start, min(start + 1024, n))))
    ex = Examples(origin=uri.raw)
    label_key = cfg.get("label_column", "") or ("label" if "label" in feats else "")
    if need_labels:
        if label_key not in feats:
            raise DataError(f"{uri.raw}: no label feature; set data.label_column ({list(feats)})")
        ex.labels = np.asarray([r[label_key] for r in rows], np.int32)
        ex.label_names = tuple(getattr(feats[label_key], "names", ()) or ())
        num = len(ex.label_names) or int(num_labels or 0)
        bad = np.flatnonzero((ex.labels < 0) | ((ex.labels >= num) if num else False))
        if len(bad):
            raise DataError(
                f"{uri.raw}: example {bad[0]} has label {ex.labels[bad[0]]} outside the "
                f"{num} classes"
            )
    image_keys = _image_keys(feats)
    text_keys = _pick(feats, tuple(cfg.get("text_columns", ()) or ()), ("Text",))
    target = cfg.get("target_column", "")
    text_keys = [k for k in text_keys if k != target]
    if image_keys and not cfg.get("text_columns"):
        ex.images = np.stack([np.asarray(r[image_keys[0]], np.uint8) for r in rows])
        if ex.images.ndim == 3:
            ex.images = ex.images[..., None]
        return ex
    if not text_keys:
        raise DataError(f"{uri.raw}: no text or image feature found in {list(feats)}")
    dec = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
    ex.texts = [dec(r[text_keys[0]]) for r in rows]
    if len(text_keys) > 1:
        ex.texts_b = [dec(r[text_keys[1]]) for r in rows]
    if target:
        ex.targets = [dec(r[target]) for r in rows]
    return ex


def fingerprint(uri: Uri, cfg) -> list:
    """Identifies the prepared files: builder folder + version + split sizes."""
    _, builder = data_source(uri, cfg)
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    return [str(builder.data_dir), str(builder.info.version), sorted(splits.items())]


def _image_keys(feats) -> list[str]:
    return _pick(feats, (), ("Image",)) or [
        k
        for k, f in feats.items()
        if getattr(f, "np_dtype", None) == np.uint8 and len(getattr(f, "shape", ())) >= 2
    ]


class ImageTable:
    """A TFDS image set's rows by index, read and decoded on access: `table[rows]` ->
    {"images": uint8 [B,Y,X,C], "label": int32 [B]}, the columns the cached mode stores.
    Picklable (each Grain worker opens the data source itself)."""

    def __init__(self, uri: str, cfg, num_labels: int = 0):
        self.uri, self.cfg = uri, {k: cfg.get(k) for k in ("data_dir", "download")}
        src, builder = data_source(parse_uri(uri), self.cfg)
        feats = builder.info.features
        keys = _image_keys(feats)
        if not keys:
            raise DataError(
                f"{uri}: data.mode=stream reads TFDS image sets, and {list(feats)} has no "
                "image feature; read text sets with data.mode=cached"
            )
        self.image_key = keys[0]
        self.label_key = cfg.get("label_column", "") or "label"
        if self.label_key not in feats:
            raise DataError(f"{uri}: no label feature; set data.label_column ({list(feats)})")
        names = getattr(feats[self.label_key], "names", ()) or ()
        self.num_labels = len(names) or int(num_labels or 0)
        self.size = int(cfg.get("image_size", 0) or 0)
        self.n, self._src = len(src), src

    def __len__(self) -> int:
        return self.n

    def __getstate__(self):
        return dict(self.__dict__, _src=None)

    def __getitem__(self, rows) -> dict:
        if self._src is None:
            self._src, _ = data_source(parse_uri(self.uri), self.cfg)
        recs = self._src.__getitems__([int(r) for r in np.asarray(rows).reshape(-1)])
        imgs = [np.asarray(r[self.image_key], np.uint8) for r in recs]
        imgs = [x[..., None] if x.ndim == 2 else x for x in imgs]
        if len({x.shape for x in imgs}) > 1:
            if not self.size:
                raise DataError(
                    f"{self.uri}: images of different sizes ({imgs[0].shape}, ...); set "
                    "data.image_size to resize them"
                )
            imgs = [_resize_u8(x, self.size) for x in imgs]
        labels = np.asarray([r[self.label_key] for r in recs], np.int32)
        bad = np.flatnonzero((labels < 0) | (labels >= self.num_labels if self.num_labels else 0))
        if len(bad):
            raise DataError(
                f"{self.uri}: an example has label {labels[bad[0]]} outside the "
                f"{self.num_labels} classes"
            )
        return {"images": np.stack(imgs), "label": labels}


def _resize_u8(x_YxXxC, size: int) -> np.ndarray:
    y = images_lib.resize(x_YxXxC[None].astype(np.float32), size)[0]
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)
