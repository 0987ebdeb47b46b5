"""REML: reinforcement meta-learning. An RL policy composes networks from a global layer pool.

Plugin authors need ``hookimpl`` and the record types in :mod:`reml_core.specs`; the protocols
their components implement are in :mod:`reml_core.interfaces`.

``hookimpl`` and ``hookspec`` are imported on first use, so starting a command-line tool imports
nothing but the standard library before it can handle Ctrl-C.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["hookimpl", "hookspec", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("hookimpl", "hookspec"):
        from reml_core import hookspecs

        return getattr(hookspecs, name)
    raise AttributeError(f"module 'reml_core' has no attribute {name!r}")
