"""A symbolic (or hard) link placed anywhere REML writes never makes it write or delete outside its folder.

REML never makes links. A link in a folder it claims, continues or replaces is refused with one
line naming it (exit 2); its write paths open nothing through a link; an atomic write renames
over a link (replacing the link itself, never what it points to).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers.runs import TINY, cli, snapshot

from reml_core.cli.bench import main as bench_main
from reml_core.cli.run import main as run_main
from reml_core.errors import UserError
from reml_core.folders import (
    LOCK,
    MARKER,
    claim_bench_to_resume,
    claim_new_folder,
    claim_run_to_resume,
    release_all,
)
from reml_core.storage import atomic_write_json, atomic_write_text, new_checkpoint, open_for_append
from reml_core.sweep import SCHEMA, claim_sweep_folder, claim_sweep_to_resume

CHECKPOINT_FILES = ("pool.safetensors", "reward.json", "trainer.json", "config.json")


pytestmark = pytest.mark.usefixtures("released_locks")


def _outside(tmp_path: Path) -> tuple[Path, Path]:
    """A file and a folder outside every REML folder, with content to prove untouched."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "kept.txt").write_text("keep")
    target = tmp_path / "p.txt"
    target.write_text("keep\n")
    return target, elsewhere


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# -- the example of the issue ------------------------------------------------------------------


def test_a_symlinked_lock_never_gets_the_pid_written_through_it(tmp_path):
    (tmp_path / "x" / "out").mkdir(parents=True)
    (tmp_path / "x" / "p.txt").write_text("keep\n")
    (tmp_path / "x" / "out" / LOCK).symlink_to("../p.txt")
    result = cli("reml-run", "--plugin", "sine", "--preset", "smoke", "--out", str(tmp_path / "x" / "out"), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{LOCK} is a symbolic link" in _one_line(result.stderr)
    assert (tmp_path / "x" / "p.txt").read_text() == "keep\n"
    assert sorted(os.listdir(tmp_path / "x" / "out")) == [LOCK]


def _bench_folder(path: Path) -> Path:
    claim_new_folder(path, kind="bench", force=False, entries=("seed-0",))
    atomic_write_json(path / "bench-plan.json", {})
    (path / "sub").mkdir()
    atomic_write_json(path / "sub" / "file.json", {})  # a folder REML wrote into
    release_all()
    return path


def _sweep_folder(path: Path) -> Path:
    claim_sweep_folder(path, force=False)
    atomic_write_json(path / "sweep.json", {"schema": SCHEMA})
    (path / "sub").mkdir()
    atomic_write_json(path / "sub" / "file.json", {})  # a folder REML wrote into
    release_all()
    return path


def _run_folder(path: Path) -> Path:
    claim_new_folder(path, kind="run", force=False)
    atomic_write_json(path / "config.json", {})
    (path / "sub").mkdir()
    atomic_write_json(path / "sub" / "file.json", {})  # a folder REML wrote into
    release_all()
    return path


CLAIMS = {
    "run --force": (_run_folder, lambda folder: claim_new_folder(folder, kind="run", force=True)),
    "run --resume": (_run_folder, claim_run_to_resume),
    "bench --force": (_bench_folder, lambda folder: claim_new_folder(folder, kind="bench", force=True)),
    "bench --resume": (_bench_folder, claim_bench_to_resume),
    "sweep --force": (_sweep_folder, lambda folder: claim_sweep_folder(folder, force=True)),
    "sweep --resume": (_sweep_folder, claim_sweep_to_resume),
}


@pytest.mark.parametrize("claim", CLAIMS)
def test_a_symlinked_lock_is_refused_by_every_claim(tmp_path, claim):
    make, take = CLAIMS[claim]
    folder = make(tmp_path / "out")
    target, _ = _outside(tmp_path)
    (folder / LOCK).unlink()
    (folder / LOCK).symlink_to(target)
    with pytest.raises(UserError, match=f"{LOCK} is a symbolic link"):
        take(folder)
    assert target.read_text() == "keep\n"


@pytest.mark.parametrize("claim", CLAIMS)
def test_a_hard_linked_lock_is_refused_too(tmp_path, claim):
    make, take = CLAIMS[claim]
    folder = make(tmp_path / "out")
    target, _ = _outside(tmp_path)
    (folder / LOCK).unlink()
    os.link(target, folder / LOCK)
    with pytest.raises(UserError, match=f"{LOCK} has other hard links"):
        take(folder)
    assert target.read_text() == "keep\n"


@pytest.mark.parametrize("claim", CLAIMS)
@pytest.mark.parametrize("where", ["link-to-file", "sub/link-to-folder"])
def test_a_link_anywhere_inside_is_refused_by_every_claim_and_nothing_outside_changes(tmp_path, claim, where):
    make, take = CLAIMS[claim]
    folder = make(tmp_path / "out")
    target, elsewhere = _outside(tmp_path)
    (folder / where).parent.mkdir(parents=True, exist_ok=True)
    (folder / where).symlink_to(elsewhere if "folder" in where else target)
    before, outside = snapshot(folder), snapshot(elsewhere)
    with pytest.raises(UserError, match=f"{where}.*symbolic link"):
        take(folder)
    assert snapshot(folder) == before and snapshot(elsewhere) == outside and target.read_text() == "keep\n"


# -- a link at each place a run writes, met by reml-run --resume and --force ---------------------


PLACES = [
    "results.json",
    "report.md",
    "config.json",
    MARKER,
    "checkpoints/latest",
    "logs/progress.csv",
    "logs",
    "checkpoints",
    "checkpoints/best",
    "checkpoints/best/pool.safetensors",
]


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("flag", ["--resume", "--force"])
def test_a_link_at_any_place_a_run_writes_is_refused_naming_it(finished_tiny_run, tmp_path, capsys, place, flag):
    run = tmp_path / "run"
    shutil.copytree(finished_tiny_run, run, symlinks=True)
    target, elsewhere = _outside(tmp_path)
    victim = run / place
    if victim.is_dir():
        shutil.copytree(victim, elsewhere / victim.name)  # what REML would find (and could delete) through the link
        shutil.rmtree(victim)
        victim.symlink_to(elsewhere / victim.name, target_is_directory=True)
    else:
        victim.unlink()
        victim.symlink_to(target)
    before, outside = snapshot(run), snapshot(elsewhere)
    args = ["--resume", str(run)] if flag == "--resume" else [*TINY, "--out", str(run), "--force"]
    code = run_main(args)  # in this process: the refusal comes before anything is trained
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-2000:]
    line = _one_line(stderr)
    assert place in line and "symbolic link" in line, line
    assert snapshot(run) == before and snapshot(elsewhere) == outside and target.read_text() == "keep\n"


def test_a_bench_resume_with_a_linked_job_folder_is_refused(tmp_path, capsys):
    bench = _bench_folder(tmp_path / "bench")
    target, elsewhere = _outside(tmp_path)
    (bench / "seed-0").mkdir()
    (bench / "seed-0" / "reml-mlp").symlink_to(elsewhere, target_is_directory=True)
    code = bench_main(["--resume", str(bench)])
    assert code == 2 and "seed-0/reml-mlp is a symbolic link" in _one_line(capsys.readouterr().err)
    assert sorted(os.listdir(elsewhere)) == ["kept.txt"]


# -- REML's writers themselves never write through a link ----------------------------------------


def test_writing_into_a_linked_subfolder_is_refused(tmp_path):
    folder = _run_folder(tmp_path / "run")
    _, elsewhere = _outside(tmp_path)
    (folder / "logs").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UserError, match="logs is a symbolic link inside"):
        atomic_write_json(folder / "logs" / "x.json", {})
    with pytest.raises(UserError, match="logs is a symbolic link inside"):
        open_for_append(folder / "logs" / "job.log")
    assert sorted(os.listdir(elsewhere)) == ["kept.txt"]


def test_an_atomic_write_replaces_a_link_never_what_it_points_to(tmp_path):
    folder = _run_folder(tmp_path / "run")
    target, _ = _outside(tmp_path)
    (folder / "results.json").symlink_to(target)
    atomic_write_text(folder / "results.json", "new")
    assert target.read_text() == "keep\n"
    assert not (folder / "results.json").is_symlink() and (folder / "results.json").read_text() == "new"


def test_appending_through_a_link_or_into_a_hard_linked_file_is_refused(tmp_path):
    folder = _run_folder(tmp_path / "run")
    target, _ = _outside(tmp_path)
    (folder / "job.log").symlink_to(target)
    with pytest.raises(UserError, match="job.log is a symbolic link"):
        open_for_append(folder / "job.log")
    os.link(target, folder / "other.log")
    with pytest.raises(UserError, match="other.log has other hard links"):
        open_for_append(folder / "other.log")
    assert target.read_text() == "keep\n"


@pytest.mark.parametrize("place", ["checkpoints", "checkpoints/best"])
def test_a_checkpoint_is_never_written_or_replaced_through_a_link(tmp_path, place):
    folder = _run_folder(tmp_path / "run")
    _, elsewhere = _outside(tmp_path)
    (folder / place).parent.mkdir(parents=True, exist_ok=True)
    (folder / place).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UserError, match=f"{place} is a symbolic link"):
        with new_checkpoint(folder / "checkpoints", "best") as staging:
            for name in CHECKPOINT_FILES:
                (staging / name).write_text("{}")
    assert sorted(os.listdir(elsewhere)) == ["kept.txt"]
    if place != "checkpoints":  # the staging folder it filled is gone; the link is left for the user
        assert [p.name for p in (folder / "checkpoints").iterdir()] == ["best"] and (folder / place).is_symlink()


def test_a_finished_run_resumes_and_is_replaced_when_no_link_is_there(finished_tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_tiny_run, run, symlinks=True)
    ledger = (run / ".reml.files").read_text().splitlines()
    assert "logs/progress.csv" in ledger and "glob:logs/events.out.tfevents.*" in ledger and "results.json" in ledger
    result = cli("reml-run", "--resume", str(run), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run / "results.json").read_text())
