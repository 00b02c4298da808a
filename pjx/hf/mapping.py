"""The generic half of the Hugging Face <-> pjx parameter mapping.

pjx parameter paths mirror Hugging Face module names, so one pjx path gives one HF key:
the family's `RENAMES` (regex, replacement) run on the "/"-separated path, then the common
rules: leaf `kernel` / `scale` / `embedding` -> `weight`, "/" -> ".". For example
`bert/encoder/layer_3/attention/self/query/kernel` -> `bert.encoder.layer.3.attention.self.
query.weight`. Values go through one named transform (`TRANSFORMS`): the first of the
family's `KERNELS` (regex, name) rules that matches the path, else by leaf (`kernel`:
torch Linear, `bias`: flatten, anything else: copy).

Both directions walk the pjx tree, so the mapping is one function per direction:
`to_pjx` (import: fill every pjx path from the checkpoint) and `to_hf` (export).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class Transform(NamedTuple):
    """How a HF tensor and a pjx parameter of shape `shape` correspond."""

    hf_shape: Callable[[tuple], tuple]  # pjx shape -> the HF tensor's shape
    to_pjx: Callable[[np.ndarray, tuple], np.ndarray]  # (HF tensor, pjx shape) -> pjx value
    to_hf: Callable[[np.ndarray], np.ndarray]  # pjx value -> HF tensor


def _matrix(n_in: int, transpose: bool) -> Transform:
    """A kernel [*in, *out] (DenseGeneral; `n_in` input dims) stored by HF as a matrix:
    torch `nn.Linear.weight` is [out, in] (`transpose`); GPT-2's `Conv1D.weight` is [in, out].
    Multi-dim kernels (q/k/v [D,H,K], attention output [H,K,D], GPT-2 c_attn [D,3,H,K])
    flatten head-major, as HF splits heads with `view(..., H, K)`."""

    def hf_shape(shape):
        m = (math.prod(shape[:n_in]), math.prod(shape[n_in:]))
        return m[::-1] if transpose else m

    def to_pjx(w, shape):
        return (w.T if transpose else w).reshape(shape)

    def to_hf(x):
        m = x.reshape(math.prod(x.shape[:n_in]), -1)
        return m.T if transpose else m

    return Transform(hf_shape, to_pjx, to_hf)


# torch Conv2d weight [out, in, kh, kw] vs Flax Conv kernel [kh, kw, in, out] (NHWC).
_PATCH = Transform(
    lambda s: (s[3], s[2], s[0], s[1]),
    lambda w, shape: np.transpose(w, (2, 3, 1, 0)).reshape(shape),
    lambda x: np.transpose(x, (3, 2, 0, 1)),
)

TRANSFORMS = {
    "copy": Transform(lambda s: tuple(s), lambda w, s: w.reshape(s), lambda x: x),
    "flat": Transform(lambda s: (math.prod(s),), lambda w, s: w.reshape(s), lambda x: x.ravel()),
    "linear": _matrix(1, transpose=True),
    "linear_in2": _matrix(2, transpose=True),  # attention output [H,K,D]
    "conv1d": _matrix(1, transpose=False),
    "conv1d_in2": _matrix(2, transpose=False),
    "patch_conv": _PATCH,
}
_LEAF_DEFAULT = {"kernel": "linear", "bias": "flat"}


def hf_key(family, path: str) -> str:
    """The HF checkpoint key of pjx parameter `path` (e.g. 'bert/pooler/dense/kernel')."""
    for pattern, repl in family.RENAMES:
        path = re.sub(pattern, repl, path)
    path = re.sub(r"(^|/)(kernel|scale|embedding)$", r"\1weight", path)
    return path.replace("/", ".")


def transform(family, path: str) -> Transform:
    for pattern, name in family.KERNELS:
        if re.search(pattern, path):
            return TRANSFORMS[name]
    return TRANSFORMS[_LEAF_DEFAULT.get(path.rsplit("/", 1)[-1], "copy")]


def _matches(patterns, text: str) -> bool:
    return any(re.search(p, text) for p in patterns)


def _normalise(key: str) -> str:
    # Early BERT checkpoints (TF ports) name LayerNorm parameters gamma / beta.
    return re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))


def _lookup(family, names: dict[str, str], key: str) -> str | None:
    """The checkpoint key holding `key`: itself, without the base-model prefix (a bare
    `BertModel` / sentence-transformers checkpoint), a legacy name, or a tied alias.
    `names`: normalised checkpoint key -> checkpoint key."""
    candidates = [key, *family.ALIASES.get(key, ())]
    for cand in candidates:
        forms = [cand]
        if family.PREFIX and cand.startswith(family.PREFIX):
            forms.append(cand[len(family.PREFIX) :])
        for form in forms:
            if form in names:
                return names[form]
    return None


def to_pjx(family, tensors, shapes: dict[str, tuple], *, where: str):
    """Fills pjx paths (path -> shape) from `tensors`.

    Returns (values {path: float32 array}, missing pjx paths, unused checkpoint keys).
    A shape that does not fit is an error naming both names and shapes.
    """
    found, used, missing = {}, set(), []
    names = {_normalise(k): k for k in tensors.keys()}
    for path, shape in shapes.items():
        key = _lookup(family, names, hf_key(family, path))
        if key is None:
            missing.append(path)
            continue
        t = transform(family, path)
        want = tuple(t.hf_shape(tuple(shape)))
        if tensors.shape(key) != want:
            raise ValueError(
                f"{where}: tensor {key!r} has shape {tensors.shape(key)}, but pjx parameter "
                f"{path} {tuple(shape)} needs {want}; does config.json match the weights?"
            )
        found[path] = (key, t)
        used.add(key)
    arrays = tensors.get(sorted(used))
    values = {p: t.to_pjx(arrays[k], tuple(shapes[p])) for p, (k, t) in found.items()}
    unused = sorted(k for k in tensors.keys() if k not in used and not _matches(family.IGNORED, k))
    return values, missing, unused


def to_hf(family, flat_params: dict[str, np.ndarray]):
    """pjx {path: array} -> ({HF key: array}, skipped pjx paths with no HF counterpart)."""
    out, skipped = {}, []
    for path, x in flat_params.items():
        if _matches(family.PJX_ONLY, path):
            skipped.append(path)
            continue
        out[hf_key(family, path)] = transform(family, path).to_hf(np.asarray(x, np.float32))
    return out, skipped


def label_maps(num_labels: int) -> dict:
    """config.json's `id2label` / `label2id` of a classifier (transformers' default names)."""
    return {
        "id2label": {str(i): f"LABEL_{i}" for i in range(num_labels)},
        "label2id": {f"LABEL_{i}": i for i in range(num_labels)},
    }
