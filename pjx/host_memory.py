"""glibc malloc settings for processes whose steps allocate large temporaries.

XLA:CPU takes all of a step's temporaries as one buffer (~0.6 GiB for a BERT-mini train
step at batch 32 x 128) and glibc serves any block over 32 MiB with a fresh `mmap`, so
every step page-faults and zeroes that memory again and hands it back with `munmap`.
`keep_large_blocks` makes glibc serve large blocks from one heap and keep freed memory
(the process keeps its peak footprint instead of returning it between steps).

No jax here: benchmarks/hf_reference.py applies the same settings to torch.
"""

from __future__ import annotations

import ctypes
import platform
import sys

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_large_blocks() -> bool:
    """No `mmap` for large blocks, one arena, never trim the heap. True if applied.

    Takes full effect only before the process starts its compute threads (threads that
    already own a malloc arena keep it).
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # Arena first: a block in a per-thread arena over its 64 MiB heap limit is mmapped anyway.
    ok = mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_MAX, 0)
    return bool(ok and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
