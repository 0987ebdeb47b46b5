"""Errors a user can cause and fix. The command-line tools print them without a traceback and exit 2."""

from __future__ import annotations

from collections.abc import Iterable


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


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, tampered with or untrusted."""
