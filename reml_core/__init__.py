"""REML: reinforcement meta-learning. An RL policy composes networks from a global layer pool.

From Python: :func:`reml_core.run`, :func:`reml_core.bench`, :func:`reml_core.sweep` and
:func:`reml_core.load` (:mod:`reml_core.api`) run an experiment, run a benchmark, search config
values on Ray Tune and load a run or benchmark back; an argument
of the wrong type raises :class:`reml_core.ArgumentError`, naming it, before anything is written.

Plugin authors need ``hookimpl`` and the record types in :mod:`reml_core.specs`; the protocols
their components implement are in :mod:`reml_core.interfaces`.

Everything here is imported on first use, so starting a command-line tool imports nothing but
the standard library before it can handle Ctrl-C.
"""

import sys
import types
from typing import Any

__version__ = "0.1.0"
__all__ = [
    "run",
    "bench",
    "sweep",
    "load",
    "Results",
    "SweepResults",
    "ArgumentError",
    "Learner",
    "save_network",
    "hookimpl",
    "hookspec",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in ("hookimpl", "hookspec"):
        from reml_core import hookspecs  # noqa: PLC0415 - lazy: attribute imported on first use (start-up time; Ctrl-C at start-up)

        return getattr(hookspecs, name)
    if name in ("run", "bench", "sweep", "load", "Results", "SweepResults", "ArgumentError"):
        from reml_core import api  # noqa: PLC0415 - lazy: attribute imported on first use (start-up time; Ctrl-C at start-up)

        return getattr(api, name)
    if name in ("Learner", "save_network"):
        from reml_core import learner  # noqa: PLC0415 - lazy: attribute imported on first use (start-up time; Ctrl-C at start-up)

        return getattr(learner, name)
    raise AttributeError(f"module 'reml_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (for ``dir(reml_core)`` and tab-completion; the names are imported on first use)."""
    return sorted(__all__)


class _Package(types.ModuleType):
    """``reml_core.bench`` (and ``reml_core.sweep``) is the API function, also once the submodule or
    package of the same name (:mod:`reml_core.bench`, reached through ``sys.modules``) has been imported: the import
    system
    would otherwise bind the module over the function, and a second ``reml_core.bench(...)``
    would call a module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("run", "bench", "sweep", "load") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
