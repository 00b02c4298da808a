"""Image batches: scaling, resizing, normalisation and SimCLR augmentations, in NumPy.

Host-side transforms the image tasks (pjx.tasks.classify, pjx.tasks.contrastive) apply to
each batch. Every function takes a whole batch `x_BxYxXxC` (float32 in [0, 1] until
normalised) and a `np.random.Generator`, and is vectorised over the batch (one gather per
crop, one pass per blur tap), so two augmented views of 32 images cost a few milliseconds.

SimCLR views (Chen et al. 2020, appendix A): random resized crop (area scale 0.08-1,
aspect 3/4-4/3, resized back to the input size), horizontal flip with p=1/2 where flips
keep the meaning (`data.flip`; off for digits and text), brightness / contrast jitter with
p=0.8 (strength `data.jitter`, SimCLR's 0.8*s), Gaussian blur with p=1/2 (sigma 0.1-2.0,
kernel ~10% of the image side).
"""

from __future__ import annotations

import numpy as np


def to_float(images_u8) -> np.ndarray:
    return np.asarray(images_u8, np.float32) * np.float32(1.0 / 255.0)


def normalize(x_BxYxXxC, mean, std) -> np.ndarray:
    C = x_BxYxXxC.shape[-1]
    mean = np.resize(np.asarray(mean, np.float32), C)
    std = np.resize(np.asarray(std, np.float32), C)
    return (x_BxYxXxC - mean) / std


def crop_resize(x_BxYxXxC, boxes_Bx4, out_h: int, out_w: int | None = None) -> np.ndarray:
    """Bilinear resample of box (top, left, height, width; pixels) of each image."""
    B, Y, X, _ = x_BxYxXxC.shape
    out_w = out_w or out_h
    top, left, h, w = (boxes_Bx4[:, i : i + 1].astype(np.float32) for i in range(4))
    grid = lambda n: (np.arange(n, dtype=np.float32) + 0.5) / n
    ys = np.clip(top + grid(out_h) * h - 0.5, 0, Y - 1)  # [B,out_h] pixel-centre coordinates
    xs = np.clip(left + grid(out_w) * w - 0.5, 0, X - 1)
    y0, x0 = np.floor(ys).astype(np.int32), np.floor(xs).astype(np.int32)
    y1, x1 = np.minimum(y0 + 1, Y - 1), np.minimum(x0 + 1, X - 1)
    wy, wx = (ys - y0)[:, :, None, None], (xs - x0)[:, None, :, None]
    b = np.arange(B)[:, None, None]
    g = lambda yy, xx: x_BxYxXxC[b, yy[:, :, None], xx[:, None, :]]
    top_row = g(y0, x0) * (1 - wx) + g(y0, x1) * wx
    bottom_row = g(y1, x0) * (1 - wx) + g(y1, x1) * wx
    return (top_row * (1 - wy) + bottom_row * wy).astype(np.float32)


def resize(x_BxYxXxC, size: int) -> np.ndarray:
    B, Y, X, _ = x_BxYxXxC.shape
    if Y == size and X == size:
        return x_BxYxXxC
    boxes = np.tile(np.asarray([[0, 0, Y, X]], np.float32), (B, 1))
    return crop_resize(x_BxYxXxC, boxes, size)


def random_crop_boxes(rng, B, Y, X, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), tries=10):
    """Inception-style crops (Szegedy et al. 2015; torchvision RandomResizedCrop): up to
    `tries` draws of area and log-uniform aspect per image, else the whole image."""
    area = Y * X * rng.uniform(scale[0], scale[1], (B, tries))
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), (B, tries)))
    w = np.round(np.sqrt(area * aspect))
    h = np.round(np.sqrt(area / aspect))
    ok = (w >= 1) & (h >= 1) & (w <= X) & (h <= Y)
    first = np.argmax(ok, axis=1)
    rows = np.arange(B)
    h = np.where(ok.any(1), h[rows, first], Y)
    w = np.where(ok.any(1), w[rows, first], X)
    top = np.floor(rng.uniform(0, 1, B) * (Y - h + 1))
    left = np.floor(rng.uniform(0, 1, B) * (X - w + 1))
    return np.stack([top, left, h, w], axis=1).astype(np.float32)


def flip(x_BxYxXxC, rng, p=0.5) -> np.ndarray:
    do = rng.random(len(x_BxYxXxC)) < p
    return np.where(do[:, None, None, None], x_BxYxXxC[:, :, ::-1], x_BxYxXxC)


def jitter(x_BxYxXxC, rng, strength=0.4, p=0.8) -> np.ndarray:
    """Brightness (scale by U[1-s, 1+s]) then contrast (blend with the image mean)."""
    B = len(x_BxYxXxC)
    do = (rng.random(B) < p)[:, None, None, None]
    bright = rng.uniform(1 - strength, 1 + strength, B)[:, None, None, None]
    contrast = rng.uniform(1 - strength, 1 + strength, B)[:, None, None, None]
    y = np.clip(x_BxYxXxC * bright, 0, 1)
    mean = y.mean(axis=(1, 2, 3), keepdims=True)
    y = np.clip((y - mean) * contrast + mean, 0, 1)
    return np.where(do, y, x_BxYxXxC).astype(np.float32)


def blur(x_BxYxXxC, rng, p=0.5, sigma=(0.1, 2.0)) -> np.ndarray:
    """Separable Gaussian blur with a per-image sigma; reflect padding."""
    B, Y, X, _ = x_BxYxXxC.shape
    k = max(3, (int(0.1 * Y) // 2) * 2 + 1)
    r = k // 2
    s = rng.uniform(sigma[0], sigma[1], B)
    taps = np.exp(-0.5 * (np.arange(-r, r + 1)[None, :] / s[:, None]) ** 2)
    taps = (taps / taps.sum(1, keepdims=True)).astype(np.float32)  # [B,k]
    y = np.pad(x_BxYxXxC, ((0, 0), (r, r), (0, 0), (0, 0)), mode="reflect")
    y = sum(taps[:, j, None, None, None] * y[:, j : j + Y] for j in range(k))
    y = np.pad(y, ((0, 0), (0, 0), (r, r), (0, 0)), mode="reflect")
    y = sum(taps[:, j, None, None, None] * y[:, :, j : j + X] for j in range(k))
    do = (rng.random(B) < p)[:, None, None, None]
    return np.where(do, y, x_BxYxXxC).astype(np.float32)


def simclr_view(x_BxYxXxC, rng, cfg) -> np.ndarray:
    """One SimCLR view of each image (see the module docstring); same shape as the input."""
    B, Y, X, _ = x_BxYxXxC.shape
    boxes = random_crop_boxes(rng, B, Y, X, scale=tuple(cfg.get("crop_scale", (0.08, 1.0))))
    y = crop_resize(x_BxYxXxC, boxes, Y, X)
    if cfg.get("flip", True):
        y = flip(y, rng)
    y = jitter(y, rng, float(cfg.get("jitter", 0.4)))
    if cfg.get("blur", True):
        y = blur(y, rng)
    return y


def pixels(images_u8, cfg) -> np.ndarray:
    """uint8 images [B,Y,X,C] -> float32 in [0, 1], resized to `data.image_size` if set."""
    x = to_float(images_u8)
    size = int(cfg.get("image_size", 0) or 0)
    return resize(x, size) if size else x


def standardize(x_BxYxXxC, cfg) -> np.ndarray:
    """Per-channel (x - data.image_mean) / data.image_std."""
    return normalize(x_BxYxXxC, cfg.get("image_mean", (0.5,)), cfg.get("image_std", (0.5,)))
