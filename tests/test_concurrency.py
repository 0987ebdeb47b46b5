"""One writer per run folder: a second reml-run (or reml-bench) on a folder in use is refused at once,
naming the process that holds it, and changes nothing; the holder carries on undisturbed."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import pytest
from helpers.runs import TINY, cli, start

# Long enough that the holder is still training while four contenders start (each imports torch:
# seconds) on a fast, quiet machine; a shorter budget raced them there.
LONGER = [*TINY, "--set", "train.env_steps=40000", "--set", "train.checkpoint_every=1000"]


def _wait_for(path: Path, process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        assert process.poll() is None, process.stderr.read()[-2000:]
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear in time")


def test_a_second_writer_is_refused_and_the_first_finishes_undisturbed(tmp_path):
    out = tmp_path / "run"
    holder = start("reml-run", *LONGER, "--out", str(out))
    try:
        _wait_for(out / "checkpoints" / "latest", holder)
        contenders = {
            "resume": start("reml-run", "--resume", str(out)),
            "force": start("reml-run", *TINY, "--out", str(out), "--force"),
            "new run": start("reml-run", *TINY, "--out", str(out)),
            "bench force": start(
                "reml-bench",
                "--plugin",
                "sine",
                "--preset",
                "smoke",
                "--methods",
                "scratch",
                "--out",
                str(out),
                "--force",
            ),
        }
        refusals = {what: (p, *p.communicate(timeout=120)) for what, p in contenders.items()}
        for what, (process, _, stderr) in refusals.items():
            lines = stderr.strip().splitlines()
            assert process.returncode == 2, (what, stderr[-2000:])
            assert len(lines) == 1 and f"is in use by another REML process (PID {holder.pid})" in lines[0], (
                what,
                lines,
            )
        assert holder.poll() is None, "the running process was disturbed"
        _, stderr = holder.communicate(timeout=300)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert holder.returncode == 0, stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["training"]["resumes"] == 0 and results["training"]["env_steps"] >= 8000
    assert all(
        math.isfinite(c["mse_mean"]) for t in results["methods"].values() for r in t.values() for c in r.values()
    )
    steps = [record["timesteps"] for record in results["training"]["history"]]
    assert steps == sorted(set(steps)), "checkpoints of two processes were mixed"


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    holder = start("reml-run", *LONGER, "--out", str(out))
    _wait_for(out / "checkpoints" / "latest", holder)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    result = cli("reml-run", "--resume", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["training"]["resumes"] == 1


def test_two_runs_started_on_one_new_folder_let_exactly_one_write(tmp_path):
    out = tmp_path / "run"
    processes = [start("reml-run", *TINY, "--out", str(out)) for _ in range(2)]
    outcomes = [(p, *p.communicate(timeout=300)) for p in processes]
    codes = sorted(p.returncode for p, _, _ in outcomes)
    assert codes == [0, 2], [stderr[-1500:] for _, _, stderr in outcomes]
    loser = next(stderr for p, _, stderr in outcomes if p.returncode == 2)
    assert "is in use by another REML process" in loser or "already holds a run" in loser, loser
    assert json.loads((out / "results.json").read_text())["training"]["resumes"] == 0


CLAIMING = """
import sys, time
from pathlib import Path
from reml_core.folders import lock_folder
out = Path(sys.argv[1])
out.mkdir()
lock_folder(out, "--out")
(out / sys.argv[2]).write_text("")  # the ledger's or the marker's temporary file, before the marker exists
print("claiming", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("temporary", ["..reml.files.ynb6tpz3.tmp", "..reml.json.k2j4abcd.tmp"])
@pytest.mark.parametrize("tool", ["reml-run", "reml-bench"])
def test_a_folder_another_process_is_claiming_is_in_use_not_foreign(tmp_path, tool, temporary):
    """Two commands started on one new folder: the second can look in while the first is between taking the lock
    and writing its marker (a temporary file there, no marker yet). It is told the folder is in use by that
    process, not that the folder holds files that are not REML's (the fresh-clone suite met that race)."""
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", CLAIMING, str(out), temporary], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "claiming\n"
        result = cli(tool, *TINY, "--out", str(out))
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"is in use by another REML process (PID {holder.pid})" in result.stderr, result.stderr[-2000:]
        assert sorted(path.name for path in out.iterdir()) == sorted([".reml.lock", temporary])  # nothing touched
    finally:
        holder.kill()
        holder.wait()


def test_a_bench_folder_in_use_is_refused_too(tmp_path):
    out = tmp_path / "bench"
    holder = start(
        "reml-bench", *TINY, "--methods", "reml,scratch", "--set", "train.env_steps=40000", "--out", str(out)
    )
    try:
        _wait_for(out / "config.json", holder)
        # The holder is still writing (checkpoints appear and are pruned), so a snapshot of the whole
        # folder would race with it: compare what it wrote once and never touches again.
        stable = {name: (out / name).read_bytes() for name in ("config.json", ".reml.json")}
        result = cli(
            "reml-bench", "--plugin", "sine", "--preset", "smoke", "--methods", "scratch", "--out", str(out), "--force"
        )
        assert result.returncode == 2 and f"PID {holder.pid}" in result.stderr, result.stderr[-2000:]
        assert {name: (out / name).read_bytes() for name in stable} == stable
        assert (out / "seed-0").is_dir()
    finally:
        holder.send_signal(signal.SIGTERM)
        _, stderr = holder.communicate(timeout=120)
    assert holder.returncode == 143 and "Traceback" not in stderr, stderr[-2000:]


def test_a_new_run_on_a_folder_being_written_is_told_it_is_in_use_not_to_resume_it(tmp_path):
    # Without --force, a folder that holds a run would be answered "continue it with --resume"; while
    # another process writes it, that advice would only be refused, so the refusal names the writer.
    out = tmp_path / "run"
    holder = start("reml-run", *LONGER, "--out", str(out))
    try:
        _wait_for(out / "checkpoints" / "latest", holder)
        result = cli("reml-run", *TINY, "--out", str(out))
        assert result.returncode == 2
        assert f"is in use by another REML process (PID {holder.pid})" in result.stderr, result.stderr[-2000:]
        assert "--resume" not in result.stderr
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.communicate(timeout=120)
    result = cli("reml-run", *TINY, "--out", str(out))  # once it has stopped: the folder holds a run to resume
    assert result.returncode == 2 and "already holds a run" in result.stderr and "--resume" in result.stderr
