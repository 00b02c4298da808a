"""float32 comparisons at the precision float32 arithmetic has, for results that the
compiler may sum in another order (remat, scan, vmap, fused kernels, another CPU's
vector width).

A sum of n float32 terms reassociated differs by up to about n * eps * sum|terms|: the
error of an output scales with the magnitudes that were summed into it, not with the output
itself, so an element that cancels to near zero carries an absolute error at the scale of
its array, or of its tree: a gradient that is zero in exact arithmetic (a softmax's key
bias) comes out as the rounding of terms the size of the other gradients. `assert_close`
allows `rtol` relative to each element plus `ulps` float32 epsilons of `scale` (default: the
array's largest magnitude; for a tree, the tree's); an absolute floor chosen on one machine
(1e-7) holds on that machine only. Bit-exact claims (resume, the same program sharded) use
`np.testing.assert_array_equal`, not this.
"""

from __future__ import annotations

import jax
import numpy as np

EPS = float(np.finfo(np.float32).eps)  # 1.19e-7


def magnitude(tree) -> float:
    """The largest magnitude of any element of an array or a tree of arrays."""
    leaves = [np.abs(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)]
    return max((float(x.max()) for x in leaves if x.size), default=0.0)


def assert_close(
    actual, desired, *, rtol: float = 1e-5, ulps: float = 64, scale=None, err_msg: str = ""
):
    """|actual - desired| <= rtol |desired| + ulps * eps * scale, elementwise (`scale`:
    max|desired| unless given)."""
    scale = magnitude(desired) if scale is None else float(scale)
    atol = ulps * EPS * scale
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol, err_msg=err_msg)


def assert_trees_close(actual, desired, *, rtol: float = 1e-5, ulps: float = 64):
    """`assert_close` on every leaf at the tree's scale, naming the leaf that differs."""
    got = dict(jax.tree_util.tree_leaves_with_path(actual))
    want = jax.tree_util.tree_leaves_with_path(desired)
    assert got.keys() == {p for p, _ in want}, "the trees differ in structure"
    scale = magnitude(desired)
    for path, x in want:
        name = jax.tree_util.keystr(path)
        assert_close(got[path], x, rtol=rtol, ulps=ulps, scale=scale, err_msg=name)
