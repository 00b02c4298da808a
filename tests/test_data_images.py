"""pjx.data.images: resampling, normalisation, SimCLR views; image pipelines."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import lm_config

from pjx import data, images

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist_tsuga"


def _imgs(B=6, H=12, W=12, C=1, seed=0):
    return np.random.default_rng(seed).random((B, H, W, C)).astype(np.float32)


def test_crop_resize_identity_and_crop():
    x = _imgs()
    full = np.tile(np.array([[0, 0, 12, 12]], np.float32), (6, 1))
    np.testing.assert_allclose(images.crop_resize(x, full, 12), x, atol=1e-6)
    # an integer-aligned 2x downsample of a box is the 2x2 mean of its pixels
    box = np.tile(np.array([[2, 4, 8, 8]], np.float32), (6, 1))
    got = images.crop_resize(x, box, 4)
    want = x[:, 2:10, 4:12].reshape(6, 4, 2, 4, 2, 1).mean(axis=(2, 4))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_normalize_broadcasts_per_channel():
    x = _imgs(C=3)
    y = images.normalize(x, (0.1, 0.2, 0.3), (0.5,))
    np.testing.assert_allclose(y[..., 2], (x[..., 2] - 0.3) / 0.5, rtol=1e-6)


def test_crop_boxes_inside_the_image():
    rng = np.random.default_rng(0)
    b = images.random_crop_boxes(rng, 500, 28, 20)
    top, left, h, w = b.T
    assert np.all(top >= 0) and np.all(left >= 0) and np.all(h >= 1) and np.all(w >= 1)
    assert np.all(top + h <= 28) and np.all(left + w <= 20)
    area = h * w / (28 * 20)
    assert area.min() < 0.2 and area.max() > 0.8


def test_blur_preserves_constant_images_and_smooths():
    rng = np.random.default_rng(0)
    const = np.full((4, 10, 10, 1), 0.3, np.float32)
    np.testing.assert_allclose(images.blur(const, rng, p=1.0), const, atol=1e-6)
    x = _imgs(H=30, W=30)
    assert images.blur(x, rng, p=1.0, sigma=(1.5, 2.0)).std() < 0.7 * x.std()


def test_simclr_views_differ_and_keep_shape():
    x = _imgs(B=8, H=28, W=28)
    cfg = {"flip": False}
    rng = np.random.default_rng(0)
    a, b = images.simclr_view(x, rng, cfg), images.simclr_view(x, rng, cfg)
    assert a.shape == b.shape == x.shape and a.dtype == np.float32
    assert np.all(np.abs(a - b).reshape(8, -1).max(axis=1) > 1e-3)
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_flip_only_when_enabled():
    x = _imgs(B=64)
    cfg = dict(flip=False, crop_scale=(1.0, 1.0), jitter=0.0, blur=False)
    same = images.simclr_view(x, np.random.default_rng(0), cfg)
    np.testing.assert_allclose(same, x, atol=1e-5)  # whole-image crop, nothing else
    cfg["flip"] = True
    out = images.simclr_view(x, np.random.default_rng(0), cfg)
    flipped = np.all(np.isclose(out, x[:, :, ::-1], atol=1e-5), axis=(1, 2, 3))
    kept = np.all(np.isclose(out, x, atol=1e-5), axis=(1, 2, 3))
    assert np.all(flipped | kept) and 10 < flipped.sum() < 54


def _write_idx(folder, imgs, labels):
    for name, arr in (("train-images-idx3-ubyte.gz", imgs), ("train-labels-idx1-ubyte.gz", labels)):
        head = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
        with gzip.open(folder / name, "wb") as f:
            f.write(head + arr.astype(np.uint8).tobytes())


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path, rng.integers(0, 256, (40, 16, 16)), rng.integers(0, 10, 40))
    return tmp_path


def test_image_classify_and_contrastive_pipelines(idx_dir):
    cfg = lm_config(source=f"idx:{idx_dir}", image_size=8, flip=False)
    b = next(
        data.build(data.Spec(cfg, task="classify", model="vit", seed=0), batch_size=8, train=True)
    )
    assert set(b) == {"pixel_values", "label"}
    assert b["pixel_values"].shape == (8, 8, 8, 1) and b["pixel_values"].dtype == np.float32
    assert -1.0 <= b["pixel_values"].min() and b["pixel_values"].max() <= 1.0  # mean/std 0.5
    it = data.build(
        data.Spec(cfg, task="contrastive", model="vit", seed=0), batch_size=8, train=True
    )
    c = next(it)
    assert set(c) == {"view_a", "view_b"} and c["view_a"].shape == (8, 8, 8, 1)
    assert not np.allclose(c["view_a"], c["view_b"])
    state = it.get_state()
    nxt = next(it)
    again = data.build(
        data.Spec(cfg, task="contrastive", model="vit", seed=0), batch_size=8, train=True
    )
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["view_a"], nxt["view_a"])  # augmentations resume
    evals = data.build(data.Spec(cfg, task="contrastive", model="vit"), batch_size=16, train=False)
    assert [float(e["weight"].sum()) for e in evals] == [16, 16, 8]


@pytest.mark.skipif(not MNIST.exists(), reason="needs ../shared/data/mnist_tsuga")
def test_mnist_eval_slice():
    cfg = lm_config(source=f"idx:{MNIST}[59000:]")
    evals = data.build(data.Spec(cfg, task="classify", model="vit"), batch_size=256, train=False)
    total = sum(float(b["weight"].sum()) for b in evals)
    assert total == 1000 and len(evals) == 4
    assert evals[0]["pixel_values"].shape == (256, 28, 28, 1)
