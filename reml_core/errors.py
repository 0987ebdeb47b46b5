"""Errors a user can cause and fix. The command-line tools print them without a traceback and exit 2."""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable

#: Set to 1 to see the traceback of a plugin's failure (a hook, a factory) besides its one-line summary.
DEBUG_ENV_VAR = "REML_DEBUG"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV_VAR, "").strip().lower() not in ("", "0", "false", "no", "off")


def describe_error(error: BaseException) -> str:
    """``Type: message`` of a plugin's exception; with ``REML_DEBUG=1`` followed by its traceback."""
    summary = f"{type(error).__name__}: {error}"
    if debug_enabled():
        return summary + "\n" + "".join(traceback.format_exception(error)).rstrip()
    return summary + f" (set {DEBUG_ENV_VAR}=1 to see the traceback)"


class UserError(Exception):
    """A problem in the user's input (flags, config, files, plugins): printed as-is, exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """One or more invalid configuration values, each reported as ``path.to.field: message``."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class UnknownComponentError(UserError):
    """A component name that no installed plugin provides."""

    def __init__(self, kind_label: str, name: str, available: Iterable[str]):
        self.name = name
        names = ", ".join(sorted(available)) or "none installed"
        super().__init__(f"unknown {kind_label} {name!r} (available: {names})")


class PluginConflictError(UserError):
    """Two plugins claim the same component (kind, name)."""


class PluginError(UserError):
    """A plugin's own code failed (its factory raised, or it broke a protocol): named, exit code 2."""


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, tampered with or untrusted."""
