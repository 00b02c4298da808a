"""XLA:CPU speed-ups that leave every result bit-identical. Not part of the engine (no
model, gradient or train-step module imports it): the `pjx` command applies it.

1. Host memory: `keep_host_memory` applies pjx.host_memory's glibc settings, without which
glibc serves a train step's large temporary buffer with a fresh `mmap` that page-faults
again every step. Opt out with PJX_KEEP_HOST_MEMORY=0.

2. Dropout bits. jax lowers the Threefry-2x32 hash on CPU as a rolled `fori_loop` of
5 x 4 rounds (small programs, quick compiles). For dropout masks, one hash per element,
the loop makes XLA write the whole [B,H,T,S] state to memory 5 times per call. `install()`
lowers large calls (>= 2^16 counters) as the same 20 rounds unrolled, which XLA fuses into
one pass; small calls keep the rolled loop (as jax does) and its short compile. Same
function, same bits (tests/test_xla_cpu.py checks the Random123 known-answer vectors on
both paths).

What each weighed when measured: BENCHMARKS.md ("CPU: the figures behind pjx's XLA:CPU
choices").
"""

from __future__ import annotations

import math
import os

import numpy as np
from jax import lax
from jax.interpreters import mlir

from pjx import host_memory
from pjx.nn import backend

try:  # a public name since jax 0.4.3x; without it the CPU lowering is left as jax ships it
    from jax.extend.random import threefry2x32_p
except ImportError:  # pragma: no cover
    threefry2x32_p = None

# Counters per call from which the unrolled lowering is used.
UNROLL_MIN_SIZE = 1 << 16

# Threefry-2x32, 20 rounds (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2,
# 3", Random123 `threefry.h`): rotation constants of rounds 0-3 and 4-7, key parity.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)

_installed = False


def _rotl(x, d):
    return (x << d) | (x >> (np.uint32(32) - d))  # uint32: >> is a logical shift


def _rounds(x0, x1, rotations):
    for r in rotations:
        x0 = x0 + x1
        x1 = _rotl(x1, np.uint32(r)) ^ x0
    return x0, x1


def threefry2x32(k0, k1, x0, x1, *, unroll: bool):
    """Threefry-2x32-20 of counters (x0, x1) under key (k0, k1), all uint32 arrays."""
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0, x1 = x0 + ks[0], x1 + ks[1]
    if unroll:
        for i in range(5):  # 5 groups of 4 rounds, each followed by a key injection
            x0, x1 = _rounds(x0, x1, _ROTATIONS[i % 2])
            x0 = x0 + ks[(i + 1) % 3]
            x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
        return x0, x1

    def body(i, carry):  # the same groups, one per iteration
        x0, x1 = carry
        even = lax.rem(i, 2) == 0
        for j in range(4):
            r = lax.select(even, np.uint32(_ROTATIONS[0][j]), np.uint32(_ROTATIONS[1][j]))
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        ka = lax.select_n(lax.rem(i + 1, 3), *ks)
        kb = lax.select_n(lax.rem(i + 2, 3), *ks)
        return x0 + ka, x1 + kb + (i + 1).astype(np.uint32)

    return lax.fori_loop(0, 5, body, (x0, x1))


_unrolled = mlir.lower_fun(
    lambda k0, k1, x0, x1: threefry2x32(k0, k1, x0, x1, unroll=True), multiple_results=True
)
_rolled = mlir.lower_fun(
    lambda k0, k1, x0, x1: threefry2x32(k0, k1, x0, x1, unroll=False), multiple_results=True
)


def _cpu_lowering(ctx, k0, k1, x0, x1):
    size = math.prod(ctx.avals_out[0].shape)
    rule = _unrolled if size >= UNROLL_MIN_SIZE else _rolled
    return rule(ctx, k0, k1, x0, x1)


def keep_host_memory() -> bool:
    """pjx.host_memory.keep_large_blocks unless PJX_KEEP_HOST_MEMORY=0. True if applied.

    Called by `pjx train` / `pjx bench` before jax starts its CPU client, so it takes full
    effect there.
    """
    if os.environ.get("PJX_KEEP_HOST_MEMORY", "1") == "0":
        return False
    return host_memory.keep_large_blocks()


def install() -> None:
    """Applies both speed-ups once per process (other platforms' lowerings are untouched)."""
    global _installed
    if not _installed:
        keep_host_memory()
        if threefry2x32_p is not None:
            mlir.register_lowering(threefry2x32_p, _cpu_lowering, platform="cpu")
        _installed = True


def install_if_cpu() -> bool:
    """`install()` when jax computes on the CPU (True if it did); GPU / TPU hosts keep
    glibc's and jax's defaults. What the `pjx` command calls before its first jax work."""
    import jax

    if not backend.cpu_backend_expected():
        return False
    keep_host_memory()  # before jax starts its CPU client and its threads
    if jax.default_backend() != "cpu":
        return False
    install()
    return True
