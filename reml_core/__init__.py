"""REML: reinforcement meta-learning. An RL policy composes networks from a global layer pool.

From Python: :func:`reml_core.run`, :func:`reml_core.bench` and :func:`reml_core.load`
(:mod:`reml_core.api`) run an experiment, run a benchmark and load either back.

Plugin authors need ``hookimpl`` and the record types in :mod:`reml_core.specs`; the protocols
their components implement are in :mod:`reml_core.interfaces`.

Everything here is imported on first use, so starting a command-line tool imports nothing but
the standard library before it can handle Ctrl-C.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["run", "bench", "load", "Results", "hookimpl", "hookspec", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("hookimpl", "hookspec"):
        from reml_core import hookspecs

        return getattr(hookspecs, name)
    if name in ("run", "bench", "load", "Results"):
        from reml_core import api

        return getattr(api, name)
    raise AttributeError(f"module 'reml_core' has no attribute {name!r}")
