"""The float32 comparison the numeric tests use: it admits reassociation, not errors."""

import float32
import numpy as np
import pytest


def test_a_reassociated_sum_passes_and_a_real_error_fails():
    rng = np.random.default_rng(0)
    terms = rng.normal(size=(64, 4096)).astype(np.float32)
    terms[:, 0] -= terms[:, 0].mean()  # an element that cancels to near zero
    forward = terms.sum(axis=0, dtype=np.float32)
    backward = terms[::-1].cumsum(axis=0, dtype=np.float32)[-1]  # the other order
    assert not np.array_equal(backward, forward)
    float32.assert_close(backward, forward)
    wrong = forward.copy()
    wrong[7] *= 1.001  # a relative error of 1e-3 on one element
    with pytest.raises(AssertionError):
        float32.assert_close(wrong, forward)
    with pytest.raises(AssertionError, match="'b'"):
        float32.assert_trees_close({"a": forward, "b": wrong}, {"a": forward, "b": forward})
