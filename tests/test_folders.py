"""A folder is REML's only if its marker says so; --force removes only what REML wrote; one writer per folder."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.runs import snapshot

from reml_core.errors import UserError
from reml_core.folders import LOCK, MARKER, check_path, claim_new_folder, claim_run_to_resume, read_marker, release_all
from reml_core.storage import LEDGER, atomic_write_text


@pytest.fixture(autouse=True)
def _release_locks():
    yield
    release_all()


def _reml_folder(path: Path, kind: str = "run") -> Path:
    claim_new_folder(path, kind=kind, force=False, entries=("seed-0",) if kind == "bench" else ())
    atomic_write_text(path / "config.json", "{}")  # REML's writers list what they write in the folder's ledger
    if kind == "run":
        (path / "checkpoints").mkdir()
        atomic_write_text(path / "checkpoints" / "latest", "step-1\n")
    else:
        (path / "seed-0").mkdir()
        atomic_write_text(path / "seed-0" / "results.json", "{}")
    release_all()
    return path


def test_a_new_folder_gets_the_marker_first_and_a_lock(tmp_path):
    out = claim_new_folder(tmp_path / "a" / "b", kind="run", force=False)
    marker = read_marker(out)
    assert marker is not None and marker.kind == "run" and "results.json" in marker.entries
    assert sorted(os.listdir(out)) == sorted([MARKER, LOCK, LEDGER])
    assert (out / LOCK).read_text().strip() == str(os.getpid())


@pytest.mark.parametrize("stray", ["config.json", "results.json", "notes.txt"])
def test_files_without_a_marker_are_never_touched_even_with_force(tmp_path, stray):
    folder = tmp_path / "work"
    (folder / "src").mkdir(parents=True)
    (folder / stray).write_text("{}")
    (folder / "src" / "a.js").write_text("x")
    before = snapshot(folder)
    for force in (False, True):
        with pytest.raises(UserError, match="not a REML run"):
            claim_new_folder(folder, kind="run", force=force)
    assert snapshot(folder) == before, "a folder REML did not make was changed"


@pytest.mark.parametrize("kind", ["run", "bench"])
def test_force_removes_only_what_the_marker_names(tmp_path, kind):
    folder = _reml_folder(tmp_path / "run", kind)
    with pytest.raises(UserError, match="already holds a"):
        claim_new_folder(folder, kind=kind, force=False)
    claim_new_folder(folder, kind=kind, force=True)
    assert sorted(os.listdir(folder)) == sorted([MARKER, LOCK, LEDGER])


@pytest.mark.parametrize("foreign", ["my-notes.txt", "src/a.js", ".hidden", ".config.json.abc.txt"])
def test_force_refuses_a_run_folder_holding_anything_else(tmp_path, foreign):
    folder = _reml_folder(tmp_path / "run")
    target = folder / foreign
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("mine")
    before = snapshot(folder)
    shown = (
        foreign if "/" not in foreign else Path(foreign).parts[0] + "/"
    )  # a folder REML did not make is named as one
    with pytest.raises(UserError, match=f"holds '{shown}', which REML did not write"):
        claim_new_folder(folder, kind="run", force=True)
    assert snapshot(folder) == before


def test_temporary_files_of_a_killed_write_are_reml_s(tmp_path):
    from reml_core.storage import record_written

    folder = _reml_folder(tmp_path / "run")
    record_written(
        folder / "results.json"
    )  # what an atomic write does first; killed before it renamed its temporary file:
    (folder / ".results.json.x1y2z3.tmp").write_text("half")
    claim_new_folder(folder, kind="run", force=True)
    assert sorted(os.listdir(folder)) == sorted([MARKER, LOCK, LEDGER])


@pytest.mark.parametrize(
    "content", [b"{}", b"[1, 2]", b"\xff\xfe", b'{"format": "other/1", "kind": "run", "entries": []}']
)
def test_a_marker_reml_did_not_write_protects_the_folder(tmp_path, content):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / MARKER).write_bytes(content)
    (folder / "thesis.tex").write_text("years of work")
    before = snapshot(folder)
    with pytest.raises(UserError):
        claim_new_folder(folder, kind="run", force=True)
    assert snapshot(folder) == before


def test_only_reml_run_folders_can_be_resumed(tmp_path):
    bench = _reml_folder(tmp_path / "bench", "bench")
    with pytest.raises(UserError, match="is a reml-bench folder; reml-run --resume continues only reml-run runs"):
        claim_run_to_resume(bench)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    with pytest.raises(UserError, match="not a REML run directory"):
        claim_run_to_resume(plain)
    with pytest.raises(UserError, match="no such directory"):
        claim_run_to_resume(tmp_path / "missing")
    assert claim_run_to_resume(_reml_folder(tmp_path / "run")) == (tmp_path / "run").resolve()


@pytest.mark.parametrize(
    ("path", "complaint"),
    [
        ("a" * 256, "a path component is 256 bytes long; the limit is 255"),
        ("/".join(["b" * 200] * 21), "the path is"),
        ("bad\udcffname", "is not valid UTF-8"),
        ("  ", "empty path"),
        ("nul\x00byte", "NUL byte"),
    ],
)
def test_paths_are_checked_before_anything_is_written(tmp_path, path, complaint):
    os.chdir(tmp_path)
    with pytest.raises(UserError, match=complaint):
        claim_new_folder(Path(path), kind="run", force=False)
    assert os.listdir(tmp_path) == []
    with pytest.raises(UserError, match=complaint):
        check_path(path, "--out")


_HOLD_LOCK = """
import sys, time
from pathlib import Path
from reml_core.folders import lock_folder
lock_folder(Path(sys.argv[1]), "--out")
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_writer_is_refused_with_the_holder_s_pid_and_a_dead_holder_leaves_no_stale_lock(tmp_path):
    folder = _reml_folder(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(folder)
        with pytest.raises(UserError, match=f"in use by another REML process \\(PID {holder.pid}\\)"):
            claim_run_to_resume(folder)
        with pytest.raises(UserError, match=f"PID {holder.pid}"):
            claim_new_folder(folder, kind="run", force=True)
        assert snapshot(folder) == before, "--force on a locked folder changed it"
    finally:
        holder.kill()
        holder.wait()
    assert claim_run_to_resume(folder) == folder.resolve()  # the kernel dropped the dead holder's lock


def test_output_files_follow_the_umask(tmp_path):
    from reml_core.storage import atomic_write_json, new_checkpoint

    previous = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "results.json", {"a": 1})
        with new_checkpoint(tmp_path / "checkpoints", "step-1") as staging:
            for name in ("pool.safetensors", "reward.json", "trainer.json", "config.json"):
                (staging / name).write_text("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "checkpoints" / "step-1").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "checkpoints" / "latest").stat().st_mode) == 0o640
    assert json.loads((tmp_path / "results.json").read_text()) == {"a": 1}


def test_two_claims_racing_for_one_new_folder_let_exactly_one_through(tmp_path):
    script = """
import sys
from pathlib import Path
from reml_core.errors import UserError
from reml_core.folders import claim_new_folder
try:
    claim_new_folder(Path(sys.argv[1]), kind="run", force=False)
    print("claimed", flush=True)
    import time; time.sleep(3)
except UserError as error:
    print("refused", error, flush=True)
"""
    target = tmp_path / "contested"
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    start = time.monotonic()
    outputs = [p.communicate(timeout=60)[0] for p in processes]
    assert time.monotonic() - start < 60
    assert sum(out.startswith("claimed") for out in outputs) == 1, outputs
    assert all(out.startswith(("claimed", "refused")) for out in outputs), outputs


def test_force_refuses_a_folder_an_older_reml_wrote_without_a_list_of_its_files(tmp_path):
    folder = _reml_folder(tmp_path / "run")
    (folder / LEDGER).unlink()  # what a REML from before the ledger left: a marker only
    before = snapshot(folder)
    with pytest.raises(UserError, match="older REML that did not list the files it wrote"):
        claim_new_folder(folder, kind="run", force=True)
    assert snapshot(folder) == before


def test_the_ledger_lists_each_file_once_before_it_is_written_and_a_torn_last_line_is_ignored(tmp_path):
    from reml_core.folders import read_ledger
    from reml_core.storage import record_written

    folder = _reml_folder(tmp_path / "run")
    for _ in range(3):
        atomic_write_text(folder / "results.json", "{}")
    record_written(folder / "logs", pattern="events.*")
    lines = (folder / LEDGER).read_text().splitlines()
    assert lines.count("results.json") == 1 and "glob:logs/events.*" in lines and "checkpoints/latest" in lines
    with open(folder / LEDGER, "a") as ledger:
        ledger.write("my-notes")  # a line a killed process did not finish: not a name REML wrote
    (folder / "my-notes").write_text("mine")
    (folder / "logs").mkdir()
    (folder / "logs" / "events.out.1").write_text("")
    ledger = read_ledger(folder)
    assert ledger.owns_file(("logs", "events.out.1")) and ledger.owns_folder(("logs",))
    assert not ledger.owns_file(("my-notes",)) and not ledger.owns_file(("logs", "notes"))
    release_all()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from reml_core.storage import atomic_write_text; "
            "atomic_write_text(Path(sys.argv[1]) / 'report.md', '')",
            str(folder),
        ],
        check=True,
    )  # the next process's line
    assert "report.md" in (folder / LEDGER).read_text().splitlines() and read_ledger(folder).owns_file(("report.md",))
    with pytest.raises(UserError, match="holds 'my-notes'"):
        claim_new_folder(folder, kind="run", force=True)
