"""Quirks of third-party packages that REML works around in one place."""

from __future__ import annotations

import contextlib
import importlib.util
import io


def import_gym_quietly() -> None:
    """Import the legacy ``gym`` package, if installed, without its deprecation notice.

    learn2learn needs ``gym``; stable-baselines3 imports it whenever it is installed, and
    ``gym_notices`` then prints a multi-line notice to stderr on every run. REML never uses
    ``gym`` itself, so the notice only confuses users.
    """
    if importlib.util.find_spec("gym") is None:
        return
    with contextlib.redirect_stderr(io.StringIO()):
        import gym  # noqa: F401, PLC0415 - lazy: optional: only to silence gym_notices when gym is installed
