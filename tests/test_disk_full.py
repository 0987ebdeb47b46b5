"""A full disk (ENOSPC, EDQUOT, EFBIG) is one line naming the file, never a traceback; nothing complete is
lost, no temporary file is left, and ``--resume`` finishes once there is room again.

The disk is "filled" by making the writer fail the way it fails on a full disk: an ``OSError``
with the errno for Python's own writes, safetensors' ``SafetensorError`` and torch.save's
``RuntimeError`` (which carry the reason only in their text) for theirs.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.runs import TINY, cli, snapshot, tiny_run
from safetensors import SafetensorError

from reml_core.cli.common import run_main
from reml_core.errors import DiskFullError, UserError
from reml_core.folders import claim_new_folder, release_all
from reml_core.storage import (
    append_bytes,
    atomic_write_json,
    atomic_write_with,
    latest_checkpoint,
    new_checkpoint,
    verify_checkpoint,
)

CORE = ("pool.safetensors", "reward.json", "trainer.json", "config.json")
SAFETENSORS_FULL = (
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
)
TORCH_FULL = (
    "[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file data/0: file write failed"
)


@pytest.fixture(autouse=True)
def _release_locks():
    yield
    release_all()


# -- the writers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_an_atomic_write_on_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, number):
    claim_new_folder(tmp_path / "run", kind="run", force=False)
    target = tmp_path / "run" / "results.json"
    atomic_write_json(target, {"complete": True})

    def full(temporary: Path) -> None:
        temporary.write_bytes(b'{"half')
        raise OSError(number, os.strerror(number))

    with pytest.raises(
        DiskFullError,
        match=f"cannot write {target}: {os.strerror(number).lower()}; free some space and continue with --resume",
    ):
        atomic_write_with(target, full)
    assert json.loads(target.read_text()) == {"complete": True}
    assert not list(target.parent.glob(".*.tmp"))


def test_an_append_on_a_full_disk_is_a_disk_full_error(tmp_path, monkeypatch):
    claim_new_folder(tmp_path / "run", kind="run", force=False)
    real, calls = os.write, []

    def write(descriptor, data):
        calls.append(data)
        if len(calls) > 1:  # the ledger's line (written first) fits; the log's does not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(descriptor, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(DiskFullError, match="job.log: no space left on device"):
        append_bytes(tmp_path / "run" / "job.log", b"line\n")
    assert calls[0] == b"job.log\n"
    calls.clear()
    with pytest.raises(DiskFullError, match=r"\.reml\.files: disk quota exceeded"):  # the ledger itself full
        monkeypatch.setattr(os, "write", lambda *a: (_ for _ in ()).throw(OSError(errno.EDQUOT, "Disk quota exceeded")))
        append_bytes(tmp_path / "run" / "other.log", b"line\n")


@pytest.mark.parametrize(
    "error",
    [SafetensorError(SAFETENSORS_FULL), RuntimeError(TORCH_FULL), OSError(errno.ENOSPC, "No space left on device")],
)
def test_a_checkpoint_on_a_full_disk_leaves_the_previous_one_complete_and_no_staging_folder(tmp_path, error):
    claim_new_folder(tmp_path / "run", kind="run", force=False)
    checkpoints = tmp_path / "run" / "checkpoints"
    with new_checkpoint(checkpoints, "step-1") as staging:
        for name in CORE:
            (staging / name).write_text("{}")
    before = snapshot(checkpoints)
    with pytest.raises(
        DiskFullError, match=f"cannot write {checkpoints / 'step-2'}: .*free some space and continue with --resume"
    ):
        with new_checkpoint(checkpoints, "step-2") as staging:
            (staging / "reward.json").write_text("{}")
            raise error
    assert snapshot(checkpoints) == before and latest_checkpoint(checkpoints) == checkpoints / "step-1"


def test_other_write_failures_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(RuntimeError, match="something else") as caught:
        with new_checkpoint(tmp_path / "checkpoints", "step-1"):
            raise RuntimeError("something else")
    assert not isinstance(caught.value, UserError)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == []


def test_a_library_s_own_write_on_a_full_disk_is_one_line_from_the_command(capsys):
    def body(argv):
        raise OSError(
            errno.ENOSPC, "No space left on device", "run/logs/progress.csv"
        )  # what stable-baselines3's logger raises

    assert run_main("reml-run", body, []) == 2
    err = capsys.readouterr().err
    assert err == (
        "reml-run: error: cannot write run/logs/progress.csv: no space left on device; free some space and continue "
        "with --resume (everything written before it is complete)\n"
    )


# -- whole runs: a checkpoint, results.json, the resume of a finished run ---------------------------


_FILL = (
    """
import errno, pathlib, sys
from safetensors import SafetensorError
where, after = sys.argv[1], int(sys.argv[2])
seen = []
if where == "checkpoint":  # the pool's tensors of the after-th checkpoint: safetensors' own writer fails
    import reml_core.training as training
    real = training.save_file
    def save_file(tensors, filename, *args, **kwargs):
        seen.append(filename)
        if len(seen) > after:
            raise SafetensorError(%r)
        return real(tensors, filename, *args, **kwargs)
    training.save_file = save_file
else:  # the temporary copy of results.json: Python's write fails
    real = pathlib.Path.write_bytes
    def write_bytes(self, data):
        if self.name.startswith(".results.json."):
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)
    pathlib.Path.write_bytes = write_bytes
from reml_core.cli.run import main
sys.exit(main(sys.argv[3:]))
"""  # noqa: UP031 - a script template, filled with %r
    % SAFETENSORS_FULL
)


def _full_disk_run(where: str, *args: str, after: int = 0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _FILL, where, str(after), *args], capture_output=True, text=True, timeout=300
    )


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("[reml ")]  # progress lines aside
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_is_one_line_and_resume_finishes_the_run(tmp_path):
    out = tmp_path / "run"
    result = _full_disk_run("checkpoint", *TINY, "--out", str(out), after=1)
    assert result.returncode == 2, result.stderr[-3000:]
    line = _one_line(result.stderr)
    assert (
        line.startswith(f"reml-run: error: cannot write {out / 'checkpoints'}/") and "no space left on device" in line
    ), line
    assert "--resume" in line
    checkpoints = out / "checkpoints"
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")], "a staging folder was left behind"
    latest = latest_checkpoint(checkpoints)
    assert latest is not None  # the checkpoint before the full disk is complete and still the latest
    resumed = cli("reml-run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["schema"] == "reml.results/2"


@pytest.mark.slow
def test_a_full_disk_at_results_json_is_one_line_and_resume_writes_it(tmp_path):
    out = tmp_path / "run"
    result = _full_disk_run("results", *TINY, "--out", str(out))
    assert result.returncode == 2, result.stderr[-3000:]
    line = _one_line(result.stderr)
    assert line.startswith(f"reml-run: error: cannot write {out / 'results.json'}: no space left on device"), line
    assert not (out / "results.json").exists() and not list(out.glob(".*.tmp"))
    resumed = cli("reml-run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["schema"] == "reml.results/2"


@pytest.mark.slow
def test_a_full_disk_while_resuming_a_finished_run_loses_nothing_and_a_later_resume_finishes(tmp_path):
    out = tiny_run(tmp_path / "run")
    results = (out / "results.json").read_bytes()
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    result = _full_disk_run("results", "--resume", str(out))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "no space left on device" in _one_line(result.stderr)
    assert (out / "results.json").read_bytes() == results
    # resuming a finished run re-seals its final checkpoint; every checkpoint is still complete
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == checkpoints
    for name in checkpoints:
        if name != "latest":
            verify_checkpoint(out / "checkpoints" / name)
    assert not list(out.glob(".*.tmp"))
    resumed = cli("reml-run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["schema"] == "reml.results/2"
    shutil.rmtree(out)
