"""A run is bit-identical to itself: the same seed, machine, CPU dispatch, versions and one thread
give the same numbers to the last bit (docs/reliability.md, "Determinism").

Marked ``numerics``: ``make test`` runs these again under emulated Intel AVX-512 and AVX2 dispatches,
where each run is again bit-identical to its twin (not to this machine's numbers: which kernel
sums in which order is the CPU's, see tests/test_batched_pool.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.numerics

BIN = Path(sys.executable).parent
SHORT = [
    "--plugin",
    "sine",
    "--preset",
    "smoke",
    "--set",
    "train.env_steps=1024",
    "--set",
    "train.checkpoint_every=512",
    "--set",
    "eval.test_tasks=20",
    "--set",
    "eval.curve_steps=20",
    "--set",
    "train.progress=false",
]


def _numbers(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    return {"methods": results["methods"], "curves": results["curves"], "history": results["training"]["history"]}


def _run(out: Path, *extra: str) -> dict:
    result = subprocess.run(
        [str(BIN / "reml-run"), *SHORT, "--out", str(out), *extra], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return _numbers(out)


def test_same_seed_same_numbers_bit_for_bit(tmp_path):
    first = _run(tmp_path / "a", "--seed", "3")
    second = _run(tmp_path / "b", "--seed", "3")
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    other = _run(tmp_path / "c", "--seed", "4")
    assert other["methods"]["reml"] != first["methods"]["reml"]
    assert other["methods"]["scratch"] != first["methods"]["scratch"]  # scratch's init follows the seed too


def test_same_seed_and_n_envs_same_numbers_bit_for_bit(tmp_path):
    """A vector env's results are a function of (seed, n_envs): each env follows its own seeded task stream."""
    first = _run(tmp_path / "a", "--seed", "3", "--set", "train.n_envs=4")
    second = _run(tmp_path / "b", "--seed", "3", "--set", "train.n_envs=4")
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    other = _run(tmp_path / "c", "--seed", "3", "--set", "train.n_envs=3")
    assert other["methods"]["reml"] != first["methods"]["reml"]
    assert other["history"] != first["history"]
