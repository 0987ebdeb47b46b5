"""REML: reinforcement meta-learning. An RL policy composes networks from a global layer pool.

Plugin authors need ``hookimpl`` and the record types in :mod:`reml_core.specs`; the protocols
their components implement are in :mod:`reml_core.interfaces`.
"""

from reml_core.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"
__all__ = ["hookimpl", "hookspec", "__version__"]
