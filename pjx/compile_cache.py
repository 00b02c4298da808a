"""JAX's persistent compilation cache: a second start of the same run (a resume, a rerun
with other data, `pjx eval` after `pjx train`) reads its compiled programs from disk
instead of compiling again.

The `pjx` command turns it on (pjx.cli.common.start_compute) in
$XDG_CACHE_HOME/pjx/jax (default ~/.cache/pjx/jax); PJX_COMPILATION_CACHE=DIR puts it
elsewhere, PJX_COMPILATION_CACHE=off turns it off. Library users call `enable()`.
Entries are keyed by the program, the jax / XLA versions and the devices, so a hit is
the program a compile would have produced.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV = "PJX_COMPILATION_CACHE"
OFF = ("", "0", "off", "false", "no", "none")
# Programs that compile faster than this are not worth a disk entry.
MIN_COMPILE_SECONDS = 0.5


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pjx" / "jax"


def enable(directory: str | os.PathLike | None = None) -> str | None:
    """Turns the cache on in `directory` (default: $PJX_COMPILATION_CACHE, else
    `default_dir()`); returns the directory, or None when PJX_COMPILATION_CACHE is off.
    Call it before the first compilation: jax fixes the cache when it first compiles."""
    setting = os.environ.get(ENV) if directory is None else str(directory)
    if setting is not None and setting.strip().lower() in OFF:
        return None
    path = str(setting or default_dir())
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
