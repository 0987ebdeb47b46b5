"""REML's messages go through the standard :mod:`logging` module, on the ``reml`` logger.

The command-line tools call :func:`configure` so progress lines (``[reml 12:34:56] ...``) reach
stderr. A program that uses REML as a library decides for itself: by default Python shows only
warnings, so ``logging.getLogger("reml").setLevel(logging.WARNING)`` (or no set-up at all) keeps it
quiet, ``reml_core.logs.configure()`` shows what the CLIs show, and any handler of your own
redirects it.
"""

from __future__ import annotations

import logging
import sys
import time

LOGGER = logging.getLogger("reml")


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time of each message (so redirections and
    pytest's capture see it), one ``[reml HH:MM:SS] message`` line each."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
            print(f"[reml {stamp}] {record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:  # a closed stderr must not turn a message into a crash
            self.handleError(record)


def configure(level: int = logging.INFO) -> None:
    """Show REML's messages on stderr at ``level`` and above (what the CLIs do); idempotent."""
    if not any(isinstance(handler, _StderrHandler) for handler in LOGGER.handlers):
        LOGGER.addHandler(_StderrHandler())
    LOGGER.setLevel(level)
    LOGGER.propagate = False


def log(message: str) -> None:
    """One progress message on the ``reml`` logger (INFO)."""
    LOGGER.info(message)
