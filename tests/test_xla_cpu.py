"""pjx.xla_cpu: the CPU Threefry lowering gives jax's bits on both paths; malloc tuning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry2x32_p

from pjx import xla_cpu

# Random123 known-answer vectors for Threefry-2x32-20: (key, counter, output).
KAT = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


def _np_threefry(k0, k1, x0, x1):
    """Reference Threefry-2x32-20 in NumPy (Salmon et al. 2011), uint32 wrap-around."""
    rot = ((13, 15, 26, 6), (17, 29, 16, 24))
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in rot[i % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


@pytest.fixture(scope="module", autouse=True)
def installed():
    xla_cpu.install()


_bind = jax.jit(lambda k0, k1, x0, x1: threefry2x32_p.bind(k0, k1, x0, x1))


@pytest.mark.parametrize("n", [5, xla_cpu.UNROLL_MIN_SIZE + 3])  # rolled, unrolled
def test_known_answers(n):
    for (k0, k1), (c0, c1), (y0, y1) in KAT:
        full = lambda v: jnp.full((n,), v, jnp.uint32)
        a, b = _bind(full(k0), full(k1), full(c0), full(c1))
        assert np.all(np.asarray(a) == y0) and np.all(np.asarray(b) == y1)


@pytest.mark.parametrize("n", [7, xla_cpu.UNROLL_MIN_SIZE])
def test_matches_numpy_reference_on_random_counters(n):
    rng = np.random.RandomState(0)
    k0, k1, x0, x1 = (
        rng.randint(0, 2**32, (n,), dtype=np.uint64).astype(np.uint32) for _ in "abcd"
    )
    with np.errstate(over="ignore"):
        ref = _np_threefry(k0, k1, x0, x1)
    out = _bind(k0, k1, x0, x1)
    np.testing.assert_array_equal(np.asarray(out[0]), ref[0])
    np.testing.assert_array_equal(np.asarray(out[1]), ref[1])


def test_large_calls_unrolled_small_calls_rolled():
    key = jax.random.PRNGKey(0)
    big = jax.jit(lambda k: jax.random.bits(k, (256, 512))).lower(key).as_text()
    small = jax.jit(lambda k: jax.random.bits(k, (8,))).lower(key).as_text()
    assert "while" not in big and "while" in small


def test_keep_host_memory_opt_out(monkeypatch):
    monkeypatch.setenv("PJX_KEEP_HOST_MEMORY", "0")
    assert xla_cpu.keep_host_memory() is False
