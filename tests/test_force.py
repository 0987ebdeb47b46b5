"""``--force`` removes exactly the files REML wrote, at every depth, in runs, benchmarks and sweeps; a file
or folder of anyone else anywhere inside refuses it (exit 2, naming it) and nothing is touched.
What a SIGKILLed process leaves behind is REML's and never makes ``--force`` refuse."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.runs import TINY, cli, snapshot, start

from reml_core.cli.bench import main as bench_main
from reml_core.cli.run import main as run_main
from reml_core.errors import UserError
from reml_core.folders import LOCK, MARKER, claim_new_folder, release_all
from reml_core.storage import LEDGER, atomic_write_json, open_for_append
from reml_core.sweep import SearchSpace, claim_sweep_folder, parse_grid_flag, plan_sweep, write_plan

EMPTY_RUN = [LEDGER, MARKER, LOCK]


pytestmark = pytest.mark.usefixtures("released_locks")


@pytest.fixture(scope="module")
def finished_bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("force") / "bench"
    result = cli(
        "reml-bench", *TINY, "--methods", "reml,maml", "--set", "baselines.maml.iterations=3", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def sweep_folder(tmp_path_factory, finished_tiny_run) -> Path:
    """A sweep's folder as reml-sweep leaves it (its plan, a trial's reml-run folder, log and record, Tune's state),
    without Ray."""
    from reml_core.registry import PluginRegistry

    out = tmp_path_factory.mktemp("force") / "sweep"
    claim_sweep_folder(out, force=False)
    space = SearchSpace(grid=(parse_grid_flag("env.inner_lr=0.001,0.02"),), samples=1)
    plan = plan_sweep(PluginRegistry.discover(disabled=()), {"plugin": "sine", "preset": "smoke"}, space, 1, None)
    write_plan(out, plan)
    trial = plan.trials[0]
    # a trial is an ordinary reml-run folder, listing its own files
    shutil.copytree(finished_tiny_run, out / trial.folder)
    os.close(open_for_append(out / trial.log))
    atomic_write_json(out / trial.record, {"invocations": []})
    (out / "tune" / "trial_x").mkdir(parents=True)
    (out / "tune" / "trial_x" / "result.json").write_text("{}")  # Ray Tune's own files, written by Tune
    release_all()
    return out


def _copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy, symlinks=True)
    return copy


def _plant(folder: Path, foreign: str) -> None:
    path = folder / foreign
    if foreign.endswith("/"):
        path.mkdir(parents=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine, not REML's")


# -- runs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "foreign",
    [
        "my-notes.txt",
        "logs/my-notes.txt",
        "checkpoints/best/my-notes.txt",
        "checkpoints/my-folder/",
        "logs/deeper/still/notes.txt",
        ".results.json.mine",
    ],
)
def test_force_on_a_run_refuses_a_file_of_someone_else_at_any_depth(finished_tiny_run, tmp_path, capsys, foreign):
    run = _copy(finished_tiny_run, tmp_path)
    _plant(run, foreign)
    before = snapshot(run)
    shown = foreign if not foreign.startswith("logs/deeper") else "logs/deeper/"
    assert run_main([*TINY, "--out", str(run), "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"reml-run: error: --out {run} holds {shown!r}, which REML did not write there; --force removes only "
        "REML's own files, so move it away or choose another directory"
    )
    assert snapshot(run) == before


def test_force_on_a_finished_run_removes_every_file_it_wrote_at_every_depth(finished_tiny_run, tmp_path):
    run = _copy(finished_tiny_run, tmp_path)
    assert (
        list((run / "logs").glob("events.out.tfevents.*")) and (run / "checkpoints" / "best" / "policy.zip").is_file()
    )
    claim_new_folder(run, kind="run", force=True)
    assert sorted(os.listdir(run)) == sorted(EMPTY_RUN)
    assert (run / LEDGER).read_text() == ".reml.json\n"  # a new list, of the new run's files


# -- benchmarks -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "foreign",
    [
        "notes.txt",
        "seed-0/notes.txt",
        "seed-0/maml/notes.txt",
        "seed-0/reml-support-set/logs/notes.txt",
        "seed-0/reml-support-set/checkpoints/final/notes.txt",
    ],
)
def test_force_on_a_bench_refuses_a_file_of_someone_else_at_any_depth(finished_bench, tmp_path, capsys, foreign):
    bench = _copy(finished_bench, tmp_path)
    _plant(bench, foreign)
    before = snapshot(bench)
    assert (
        bench_main(["--plugin", "sine", "--preset", "smoke", "--methods", "scratch", "--out", str(bench), "--force"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert f"holds {foreign!r}, which REML did not write there" in err and len(err.splitlines()) == 1
    assert snapshot(bench) == before


def test_force_on_a_finished_bench_removes_every_file_it_wrote(finished_bench, tmp_path):
    bench = _copy(finished_bench, tmp_path)
    claim_new_folder(bench, kind="bench", force=True, entries=("seed-0",))
    assert sorted(os.listdir(bench)) == sorted(EMPTY_RUN)


# -- sweeps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "foreign",
    [
        "notes.txt",
        "trials/notes.txt",
        "logs/notes.txt",
        "configs/mine.toml",
        "trials/{trial}/notes.txt",
        "trials/{trial}/checkpoints/best/notes.txt",
        "trials/other-run/",
    ],
)
def test_force_on_a_sweep_refuses_a_file_of_someone_else_at_any_depth(sweep_folder, tmp_path, foreign):
    sweep = _copy(sweep_folder, tmp_path)
    trial = next((sweep / "trials").iterdir()).name
    foreign = foreign.format(trial=trial)
    _plant(sweep, foreign)
    before = snapshot(sweep)
    with pytest.raises(UserError, match=f"holds '{foreign}', which REML did not write there"):
        claim_sweep_folder(sweep, force=True)
    assert snapshot(sweep) == before


def test_force_on_a_sweep_removes_its_files_its_trials_and_tune_s_state(sweep_folder, tmp_path):
    sweep = _copy(sweep_folder, tmp_path)
    assert (sweep / "tune" / "trial_x" / "result.json").is_file() and len(list((sweep / "trials").iterdir())) == 1
    claim_sweep_folder(sweep, force=True)
    assert sorted(os.listdir(sweep)) == sorted([LEDGER, MARKER, LOCK])


def test_a_copied_run_dropped_into_a_sweep_is_not_the_sweep_s(sweep_folder, finished_tiny_run, tmp_path):
    sweep = _copy(sweep_folder, tmp_path)
    # a REML folder, but not one this sweep made
    shutil.copytree(finished_tiny_run, sweep / "trials" / "someone-elses-run")
    with pytest.raises(UserError, match="holds 'trials/someone-elses-run/'"):
        claim_sweep_folder(sweep, force=True)


# -- what a killed process leaves -------------------------------------------------------------------


_KILLED_MID_CHECKPOINT = """
import os, signal, sys
from pathlib import Path
from reml_core.folders import claim_new_folder
from reml_core.storage import atomic_write_with, new_checkpoint
out = claim_new_folder(Path(sys.argv[1]), kind="run", force=False)
with new_checkpoint(out / "checkpoints", "step-000000001") as staging:
    (staging / "pool.safetensors").write_bytes(b"half")
    def killed(temporary):
        temporary.write_bytes(b"{")
        os.kill(os.getpid(), signal.SIGKILL)
    atomic_write_with(out / "results.json", killed)
"""


def test_leftovers_of_a_process_killed_mid_write_are_reml_s(tmp_path):
    out = tmp_path / "run"
    process = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_CHECKPOINT, str(out)], capture_output=True, text=True, timeout=120
    )
    assert process.returncode == -signal.SIGKILL, process.stderr
    leftovers = sorted(p.name for p in out.rglob(".*") if p.name not in EMPTY_RUN)
    assert len(leftovers) == 2 and any(name.startswith(".results.json.") for name in leftovers), leftovers
    claim_new_folder(out, kind="run", force=True)
    assert sorted(os.listdir(out)) == sorted(EMPTY_RUN)


def test_a_run_sigkilled_while_training_is_replaced_by_force(tmp_path):
    out = tmp_path / "run"
    process = start("reml-run", *TINY, "--set", "train.env_steps=20000", "--out", str(out))
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "latest").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "checkpoints" / "latest").exists()
    finally:
        process.kill()
        process.communicate(timeout=60)
    claim_new_folder(out, kind="run", force=True)
    assert sorted(os.listdir(out)) == sorted(EMPTY_RUN)


def test_a_run_a_user_puts_inside_another_run_is_not_the_outer_run_s(finished_tiny_run, tmp_path):
    run = _copy(finished_tiny_run, tmp_path)
    claim_new_folder(run / "logs" / "inner", kind="run", force=False)  # reml-run --out RUN/logs/inner
    release_all()
    before = snapshot(run)
    with pytest.raises(UserError, match="holds 'logs/inner/'"):
        claim_new_folder(run, kind="run", force=True)
    assert snapshot(run) == before
