"""TFDS image sets in streaming mode (pjx.data.tfds_source.ImageTable): decoded per batch
(in Grain's workers), the cached mode's batches, images of any size resized there."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_fixtures import lm_config

from pjx import data

tfds = pytest.importorskip("tensorflow_datasets")


class _TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    SAME_SIZE = True

    def _info(self):
        image = tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib")
        label = tfds.features.ClassLabel(num_classes=3)
        features = tfds.features.FeaturesDict({"image": image, "label": label})
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(0)
        for i in range(30):
            h, w = (8, 8) if self.SAME_SIZE else (8 + i % 3, 10 + i % 4)
            yield i, {"image": rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "label": i % 3}


class PjxTinyImages(_TinyImages):
    pass


class PjxTinyImagesMixed(_TinyImages):
    SAME_SIZE = False


def _build(tmp_path, mode, train=True, name="pjx_tiny_images", **kw):
    cfg = lm_config(source=f"tfds:{name}", data_dir=str(tmp_path), mode=mode, **kw)
    cfg.cache_dir = str(tmp_path / "cache")
    return data.build(
        data.Spec(cfg, task="classify", model="vit", seed=1, num_labels=3),
        batch_size=4,
        train=train,
    )


def test_streamed_images_give_the_cached_batches(tmp_path):
    PjxTinyImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    a, b = _build(tmp_path, "stream"), _build(tmp_path, "cached")
    assert a.info["mode"] == "stream" and b.info["mode"] == "cached"
    for _ in range(9):  # into the second epoch
        x, y = next(a), next(b)
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    state = json.loads(json.dumps(a.get_state()))
    want = [next(a) for _ in range(3)]
    again = _build(tmp_path, "stream")
    again.set_state(state)
    for x in want:
        np.testing.assert_array_equal(next(again)["pixel_values"], x["pixel_values"])
    evals = _build(tmp_path, "stream", train=False)
    assert evals.info["mode"] == "stream"
    assert sum(float(e["weight"].sum()) for e in evals) == 30
    n = data.num_rows(
        data.Spec(
            lm_config(source="tfds:pjx_tiny_images", data_dir=str(tmp_path), mode="stream"),
            task="classify",
            model="vit",
        )
    )
    assert n == 30


def test_images_of_any_size_are_resized_in_the_pipeline(tmp_path):
    builder = PjxTinyImagesMixed(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    name = "pjx_tiny_images_mixed"
    with pytest.raises(data.DataError, match="different sizes.*data.image_size"):
        next(_build(tmp_path, "stream", name=name))
    batch = next(_build(tmp_path, "stream", name=name, image_size=6, workers=1))
    assert batch["pixel_values"].shape == (4, 6, 6, 3)
    assert set(batch["label"].tolist()) <= {0, 1, 2}
