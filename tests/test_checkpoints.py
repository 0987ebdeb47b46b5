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
        [
            str(BIN / "reml-run"),
            "--plugin",
            "sine",
            "--preset",
            "smoke",
            "--out",
            str(out),
            "--set",
            "train.env_steps=600",
            "--set",
            "train.checkpoint_every=300",
            "--set",
            "eval.test_tasks=5",
            "--set",
            "eval.curve_steps=3",
            "--set",
            "train.progress=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(run, target)
    return target


def _resume(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "reml-run"), "--resume", str(out), *extra], capture_output=True, text=True, timeout=300
    )


def test_checkpoints_are_sealed_with_a_manifest(finished_run):
    for name in ("best", "final", latest_checkpoint(finished_run / "checkpoints").name):
        manifest = verify_checkpoint(finished_run / "checkpoints" / name)
        assert {
            "pool.safetensors",
            "policy.safetensors",
            "policy.zip",
            "reward.json",
            "trainer.json",
            "config.json",
        } <= set(manifest["files"])


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
    expected = {
        "truncate": "pool.safetensors does not match its manifest",
        "flip": "pool.safetensors does not match its manifest",
        "delete": "is missing pool.safetensors",
        "manifest": "manifest.json is damaged",
    }[damage]
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


def _reseal(checkpoint: Path) -> None:
    """Rewrite a checkpoint's manifest so it matches its (edited) files, as a careless edit would."""
    from reml_core.storage import sha256

    files = {p.name: sha256(p) for p in sorted(checkpoint.iterdir()) if p.is_file() and p.name != "manifest.json"}
    (checkpoint / "manifest.json").write_text(json.dumps({"name": checkpoint.name, "files": files}))


def _refused(run: Path, expected: str) -> None:
    from helpers.runs import snapshot

    before = snapshot(run)
    result = _resume(run)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-2000:]
    assert expected in lines[0], lines[0]
    assert snapshot(run) == before, "a refused --resume changed the folder"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"seed": 7}, "seed (0 in the checkpoint, 7 now)"),
        (
            {"plugin": "sine", "policy": {"name": "ppo-mlp-masked"}},
            "policy.name ('ppo-mlp' in the checkpoint, 'ppo-mlp-masked' now)",
        ),
        ({"pool": {"width": 32}}, "pool.width (40 in the checkpoint, 32 now)"),
        ({"env": {"write_back_rate": 0.5}}, "env.write_back_rate"),
        ({"eval": {"sgd_lr": 0.1}}, "eval.sgd_lr"),
        ({"train": {"env_steps": 100}}, "train.env_steps is 100 but checkpoint"),
    ],
    ids=["seed", "policy", "pool", "env", "validation-protocol", "budget-below-done"],
)
def test_resume_refuses_a_config_that_no_longer_matches_its_checkpoint(finished_run, tmp_path, edit, expected):
    from reml_core.config import deep_merge

    run = _copy(finished_run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(deep_merge(config, edit)))
    _refused(run, expected)


def test_resume_accepts_a_longer_budget_and_settings_that_do_not_shape_training(finished_run, tmp_path):
    from reml_core.config import deep_merge, load_resolved
    from reml_core.pipeline import check_resumable
    from reml_core.registry import PluginRegistry

    run = _copy(finished_run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    changed = deep_merge(
        config, {"train": {"env_steps": 5000, "progress": True}, "eval": {"test_tasks": 7, "curve_tasks": 3}}
    )
    (run / "config.json").write_text(json.dumps(changed))
    registry = PluginRegistry.discover(disabled=())
    check_resumable(load_resolved(run / "config.json", registry), run, registry)  # no error


@pytest.mark.parametrize(
    "damage",
    [
        "empty-manifest",
        "manifest-without-pool",
        "unlisted-file",
        "latest-not-utf8",
        "latest-is-a-folder",
        "latest-names-nothing",
        "trainer-types",
        "trainer-not-an-object",
        "reward-not-json",
    ],
)
def test_damaged_checkpoint_files_are_one_clear_error(finished_run, tmp_path, damage):
    run = _copy(finished_run, tmp_path)
    checkpoints = run / "checkpoints"
    latest = latest_checkpoint(checkpoints)
    manifest = json.loads((latest / "manifest.json").read_text())
    if damage == "empty-manifest":
        (latest / "pool.safetensors").write_bytes(b"swapped")
        (latest / "manifest.json").write_text(json.dumps({"name": latest.name, "files": {}}))
        expected = "is incomplete: it does not list"
    elif damage == "manifest-without-pool":
        (latest / "pool.safetensors").write_bytes(b"swapped")
        del manifest["files"]["pool.safetensors"]
        (latest / "manifest.json").write_text(json.dumps(manifest))
        expected = "does not list pool.safetensors"
    elif damage == "unlisted-file":
        (latest / "extra.safetensors").write_bytes(b"from another run")
        expected = "holds extra.safetensors, which its manifest does not list"
    elif damage == "latest-not-utf8":
        (checkpoints / "latest").write_bytes(b"step-\xff\xfe\n")
        expected = "must be UTF-8 text"
    elif damage == "latest-is-a-folder":
        (checkpoints / "latest").unlink()
        (checkpoints / "latest").mkdir()
        expected = "latest is a folder"
    elif damage == "latest-names-nothing":
        (checkpoints / "latest").write_text("../../etc\n")
        expected = "names no checkpoint"
    elif damage == "trainer-types":
        state = json.loads((latest / "trainer.json").read_text())
        state["timesteps"] = "many"
        (latest / "trainer.json").write_text(json.dumps(state))
        _reseal(latest)
        expected = "trainer.json is damaged: timesteps"
    elif damage == "trainer-not-an-object":
        (latest / "trainer.json").write_text("[1, 2, 3]")
        _reseal(latest)
        expected = "trainer.json is damaged: the trainer's state should be a JSON object, not list"
    else:
        (latest / "reward.json").write_text("{truncated")
        _reseal(latest)
        expected = "reward.json is damaged"
    _refused(run, expected)


def test_a_resume_discards_every_half_written_leftover_and_nothing_else(tmp_path):
    """A SIGKILL can land in any write: a checkpoint's staging folder, the ``latest`` pointer's
    temporary file, or a temporary file of the run's own outputs. All go, nothing else does."""
    from reml_core.storage import discard_partial_writes

    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    (checkpoints / "step-000000256").mkdir(parents=True)
    (checkpoints / "step-000000256" / "pool.safetensors").write_bytes(b"kept")
    (checkpoints / "latest").write_text("step-000000256")
    (checkpoints / ".step-000000512.k9e29d5b").mkdir()
    (checkpoints / ".latest.sbrbp7rq.tmp").write_text("step-0000005")
    (out / ".results.json.abc123.tmp").write_text("{")
    (out / "config.json").write_text("{}")
    (out / ".reml.json").write_text("{}")
    removed = discard_partial_writes(out)
    assert {p.name for p in removed} == {".step-000000512.k9e29d5b", ".latest.sbrbp7rq.tmp", ".results.json.abc123.tmp"}
    remaining = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert remaining == [
        ".reml.json",
        "checkpoints",
        "checkpoints/latest",
        "checkpoints/step-000000256",
        "checkpoints/step-000000256/pool.safetensors",
        "config.json",
    ]
