"""Where pjx's messages go: Python `logging`, under the logger "pjx".

Every module logs to `logging.getLogger(__name__)`. `setup()` (called by the `pjx` command
and by `pjx.run`) prints INFO to stdout and warnings to stderr, as plain lines, and only
on process 0 of a multi-host run: other processes keep their warnings, prefixed with
their index. A library user silences pjx with `logging.getLogger("pjx").setLevel(
logging.WARNING)`, or routes it elsewhere by adding a handler of their own to the "pjx"
logger before the first run (setup then leaves it alone).
"""

from __future__ import annotations

import logging
import sys

ROOT = "pjx"


class _ProcessFilter(logging.Filter):
    """INFO on process 0 only; warnings everywhere, tagged with the process index."""

    def filter(self, record: logging.LogRecord) -> bool:
        import jax  # read at emit time: the process index is known once jax.distributed is up

        index = jax.process_index() if jax.process_count() > 1 else 0
        if index == 0:
            return True
        if record.levelno < logging.WARNING:
            return False
        record.msg = f"[process {index}] {record.msg}"
        return True


class _Console(logging.Handler):
    """INFO to the current sys.stdout, WARNING and above to sys.stderr (looked up per
    message, so pytest's capture and notebooks' redirection see them)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never stop a run
            self.handleError(record)


def setup(level: int = logging.INFO) -> None:
    """Installs the console handler on the "pjx" logger once, unless it has a handler."""
    logger = logging.getLogger(ROOT)
    if logger.handlers:
        return
    handler = _Console()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_ProcessFilter())
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(level)
    logger.propagate = False
