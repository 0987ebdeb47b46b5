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


class ComponentBuildError(ConfigError, ValueError):
    """A component that cannot be built with this configuration or with these other components.

    A factory raises it to refuse, deliberately, a combination it cannot work with: a family it
    cannot serve (the ``conv`` pool on ``sine``), a setting that does not fit the data, a piece it
    needs that the run lacks. It is the one error for that, whatever the kind of component::

        raise ComponentBuildError("the conv pool needs a task sampler with input_shape (C_in, H, W)")

    The core names the component: :func:`reml_core.experiment.build_one` fills in ``kind``,
    ``name`` and ``section`` from the record it built, so the factory gives only the reason and
    the same class works under any name it is registered as. The CLIs then print one line and
    exit 2: ``pool: layer pool 'conv' cannot be used in this run: <reason>``. A refusal about one
    setting may name it (``setting="task.root"``); its line then leads with it:
    ``task.root: <reason>; task plugin 'omniglot' cannot be used in this run``.

    It is a :class:`ConfigError` (one problem, that line) and also a ``ValueError``, so code written
    for the older convention (a factory's ``ValueError`` meant "not with this configuration")
    keeps catching it.
    """

    def __init__(
        self,
        reason: str,
        *,
        setting: str | None = None,
        kind: str | None = None,
        name: str | None = None,
        section: str | None = None,
    ) -> None:
        self.reason = " ".join(str(reason).split())
        self.setting, self.kind, self.name, self.section = setting, kind, name, section
        super().__init__([self._line()])

    def _line(self) -> str:
        who = (
            None if self.kind is None or self.name is None else f"{self.kind} {self.name!r} cannot be used in this run"
        )
        if self.setting:
            return f"{self.setting}: {self.reason}" + (f"; {who}" if who else "")
        if who is None:
            return self.reason
        return f"{self.section}: {who}: {self.reason}" if self.section else f"{who}: {self.reason}"

    def identify(self, kind: str, name: str, section: str | None = None) -> ComponentBuildError:
        """Name the component that refused (the core does, from its record); a name already given is kept."""
        if self.kind is None or self.name is None:
            self.kind, self.name, self.section = kind, name, section
            self.problems = [self._line()]
            self.args = (self.problems[0],)
        return self


class DiskFullError(UserError, OSError):
    """A write that failed because the disk (or the user's quota, or the file-size limit) is full.

    The file being written is named; its temporary copy has been removed and every file written
    before it is complete, so freeing space and continuing with ``--resume`` loses nothing. It is
    a :class:`UserError` (one line, exit 2) and an ``OSError`` (so ``except OSError`` still catches it).
    """

    def __init__(self, path: object, reason: str = "no space left on device") -> None:
        self.path = str(path)
        UserError.__init__(
            self,
            f"cannot write {self.path}: {reason}; free some space and continue with --resume "
            "(everything written before it is complete)",
        )

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


#: The errnos that mean "out of room": disk full, quota exceeded, file larger than allowed.
DISK_FULL_ERRNOS = frozenset(
    n for n in (getattr(__import__("errno"), name, None) for name in ("ENOSPC", "EDQUOT", "EFBIG")) if n is not None
)
#: How the Rust (safetensors) and C++ (torch.save) writers word the same failures.
_DISK_FULL_WORDS = ("no space left", "storagefull", "disk quota", "quotaexceeded", "file too large", "filetoolarge")


def disk_full_reason(error: BaseException) -> str | None:
    """Why ``error`` is a full disk (a short reason), or None when it is something else.

    Recognises an ``OSError`` with ENOSPC/EDQUOT/EFBIG, safetensors' ``SafetensorError`` and
    torch.save's ``RuntimeError`` whose text names one of them (they carry no errno), and
    torch.save's "file write failed" (its only words for a short write).
    """
    if isinstance(error, DiskFullError):
        return None
    if isinstance(error, OSError) and error.errno is not None and error.errno in DISK_FULL_ERRNOS:
        return os.strerror(error.errno).lower()
    if isinstance(error, (OSError, RuntimeError)) or type(error).__name__ == "SafetensorError":
        text = " ".join(str(error).split()).lower()
        for words in _DISK_FULL_WORDS:
            if words in text:
                return {
                    "storagefull": "no space left on device",
                    "quotaexceeded": "disk quota exceeded",
                    "filetoolarge": "file too large",
                }.get(words, words if words != "no space left" else "no space left on device")
        if "pytorchstreamwriter failed writing" in text or "file write failed" in text or "unexpected pos" in text:
            return "the write failed (the disk is probably full)"
    return None
