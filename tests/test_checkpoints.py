"""Checkpoints load safely: verified against their manifest, never unpickled, refused when damaged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reml_core.errors import CheckpointError
from reml_core.storage import atomic_write_json, latest_checkpoint, new_checkpoint, verify_checkpoint

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    result = subprocess.run(
        [str(BIN / "reml-run"), "--plugin", "sine", "--preset", "smoke", "--out", str(out), "--set", "train.env_steps=600",
         "--set", "train.checkpoint_every=300", "--set", "eval.test_tasks=5", "--set", "eval.curve_steps=3", "--set", "train.progress=false"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(run, target)
    return target


def _resume(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "reml-run"), "--resume", str(out), *extra], capture_output=True, text=True, timeout=300)


def test_checkpoints_are_sealed_with_a_manifest(finished_run):
    for name in ("best", "final", latest_checkpoint(finished_run / "checkpoints").name):
        manifest = verify_checkpoint(finished_run / "checkpoints" / name)
        assert {"pool.safetensors", "policy.safetensors", "policy.zip", "reward.json", "trainer.json", "config.json"} <= set(manifest["files"])


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_a_damaged_checkpoint_is_a_clear_error(finished_run, tmp_path, damage):
    run = _copy(finished_run, tmp_path)
    latest = latest_checkpoint(run / "checkpoints")
    pool = latest / "pool.safetensors"
    if damage == "truncate":
        pool.write_bytes(pool.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(pool.read_bytes())
        data[-5] ^= 0xFF
        pool.write_bytes(bytes(data))
    elif damage == "delete":
        pool.unlink()
    else:
        (latest / "manifest.json").write_text("{not json")
    result = _resume(run)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("reml-run: error: ") and "Traceback" not in result.stderr
    expected = {"truncate": "pool.safetensors does not match its manifest", "flip": "pool.safetensors does not match its manifest",
                "delete": "is missing pool.safetensors", "manifest": "manifest.json is damaged"}[damage]
    assert expected in lines[-1]


def test_a_foreign_sb3_zip_needs_trust(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    latest = latest_checkpoint(run / "checkpoints")
    # A checkpoint someone sent, carrying only a stable-baselines3 zip (whose loader unpickles).
    for name in ("policy.safetensors", "policy_optimizer.pt", "policy_progress.json"):
        (latest / name).unlink()
    manifest = json.loads((latest / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if (latest / k).exists()}
    atomic_write_json(latest / "manifest.json", manifest)
    result = _resume(run)
    assert result.returncode == 2
    assert "stable-baselines3 zip, whose loader can run code" in result.stderr and "--trust-checkpoint" in result.stderr
    trusted = _resume(run, "--trust-checkpoint")
    assert trusted.returncode == 0, trusted.stderr[-2000:]


def test_a_checkpoint_being_written_is_invisible_until_complete(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    with new_checkpoint(checkpoints, "step-1") as staging:
        (staging / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with new_checkpoint(checkpoints, "step-2") as staging:
            (staging / "a.txt").write_text("half")
            assert latest_checkpoint(checkpoints).name == "step-1"
            raise RuntimeError("killed while writing")
    assert latest_checkpoint(checkpoints).name == "step-1"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-1"]
    with pytest.raises(CheckpointError, match="no manifest.json"):
        (tmp_path / "bare").mkdir()
        verify_checkpoint(tmp_path / "bare")
