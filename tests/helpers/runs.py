"""Real REML runs small enough for tests: every phase runs (calibration, training, checkpoints,
validation, evaluation, reports), on budgets of a few seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent

#: The budgets of a tiny run as ``--set`` flags, for any task family whose ``smoke`` preset they fit.
TINY_SETTINGS = [
    "--set",
    "train.env_steps=400",
    "--set",
    "train.checkpoint_every=200",
    "--set",
    "train.validation_tasks=3",
    "--set",
    "train.calibration_episodes=5",
    "--set",
    "train.progress=false",
    "--set",
    "eval.test_tasks=5",
    "--set",
    "eval.curve_steps=3",
    "--set",
    "eval.curve_tasks=2",
    "--set",
    "policy.n_steps=256",
    "--set",
    "policy.batch_size=128",
]
TINY = ["--plugin", "sine", "--preset", "smoke", *TINY_SETTINGS]


def cli(tool: str, *args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run one of REML's console scripts to the end, capturing its output."""
    return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def start(tool: str, *args: str, **kwargs) -> subprocess.Popen[str]:
    """Start one of REML's console scripts in the background."""
    return subprocess.Popen(
        [str(BIN / tool), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def tiny_run(out: Path, *extra: str) -> Path:
    """A finished ``reml-run`` folder at ``out``."""
    result = cli("reml-run", *TINY, "--out", str(out), *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders): to prove nothing changed.

    ``.reml.lock`` only records the PID of the latest process that locked the folder, so its
    content is left out (its presence is not).
    """
    return {
        str(p.relative_to(folder)): (None if p.is_dir() or p.name == ".reml.lock" else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }
