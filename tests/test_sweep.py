"""``reml-sweep``: plans, bad input, a real grid on Ray Tune, its files, and a SIGKILLed sweep resumed.

The Ray tests run real trials on budgets of a few seconds each (a local Ray instance on this
machine's CPUs); every subprocess has a timeout, so no test can hang.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.runs import TINY, snapshot

from reml_core.cli.sweep import build_parser, main
from reml_core.config import default_baselines, load_config_file, resolve_config
from reml_core.folders import MARKER, release_all
from reml_core.sweep import (
    SearchSpace,
    claim_sweep_folder,
    combine_space,
    config_id,
    configurations,
    parse_file_sweep,
    parse_grid_flag,
    parse_random_flag,
    plan_sweep,
    to_toml,
)

BIN = Path(sys.executable).parent
# TINY, with few envs so episodes end inside the budget: inner training and write-back happen, so
# the swept values change the validation scores (with 128 envs no episode of 400 steps ends).
SWEEP_TINY = [*TINY, "--set", "train.n_envs=8", "--set", "policy.n_steps=64", "--set", "policy.batch_size=64"]
GRID = ["--grid", "env.inner_lr=0.001,0.02"]


def _sweep(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "reml-sweep"), *args], capture_output=True, text=True, timeout=timeout)


def _run_main(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


# -- the search space and the plan (no Ray) -----------------------------------------------------


def test_grid_values_are_read_like_set_values():
    assert parse_grid_flag("env.inner_lr=0.001,0.003").values == (0.001, 0.003)
    assert parse_grid_flag("env.shots=[5],[5,10]").values == ([5], [5, 10])
    assert parse_grid_flag("policy.name=ppo-mlp,ppo-lstm,ppo-mlp").values == (
        "ppo-mlp",
        "ppo-lstm",
    )  # repeats kept once
    assert parse_grid_flag("train.progress=true,false").values == (True, False)
    # as with --set, nothing YAML would drop or reinterpret is lost: a comment, an anchor, a "key: value"
    assert parse_grid_flag("task.root=/data/a #1,/data/b").values == ("/data/a #1", "/data/b")
    assert parse_grid_flag("task.note=&x,a: b").values == ("&x", "a: b")


def test_random_configurations_are_drawn_reproducibly_within_their_bounds():
    space = combine_space(
        parse_file_sweep(None, "-"),
        [parse_grid_flag("env.depth=4,5")],
        [
            parse_random_flag("env.inner_lr=loguniform:1e-4:1e-2"),
            parse_random_flag("policy.n_epochs=randint:1:3"),
            parse_random_flag("env.inner_steps=choice:10,30"),
        ],
        samples=3,
    )
    first, again, other = configurations(space, 0), configurations(space, 0), configurations(space, 1)
    assert first == again and first != other
    assert len(first) == 6  # 3 draws x 2 grid points
    for values in first:
        assert 1e-4 <= values["env.inner_lr"] <= 1e-2 and values["policy.n_epochs"] in (1, 2, 3)
        assert values["env.inner_steps"] in (10, 30) and values["env.depth"] in (4, 5)
    assert len({config_id(v) for v in first}) == 6


def test_a_config_files_sweep_table_is_read_and_flags_override_it(tmp_path, installed_registry):
    path = tmp_path / "sweep.toml"
    path.write_text(
        'plugin = "sine"\npreset = "smoke"\n[env]\ndepth = 4\n[sweep]\nseeds = 2\n'
        '[sweep.grid]\n"env.inner_lr" = [0.001, 0.003]\n"env.inner_steps" = [10, 20]\n'
    )
    args = build_parser().parse_args(["--config", str(path), "--grid", "env.inner_steps=5"])
    from reml_core.api import prepare_sweep
    from reml_core.cli.common import user_config

    prepared = prepare_sweep(
        user_config(args),
        grid=[parse_grid_flag(text) for text in args.grid],
        source=str(path),
        out=tmp_path / "out",
        registry=installed_registry,
    )
    plan = prepared.plan
    assert not (tmp_path / "out").exists()  # planned and checked; nothing written until it runs
    assert [c["values"] for c in plan.configurations] == [
        {"env.inner_lr": 0.001, "env.inner_steps": 5},
        {"env.inner_lr": 0.003, "env.inner_steps": 5},
    ]
    assert plan.seeds == [0, 1] and len(plan.trials) == 4
    assert plan.configurations[0]["config"]["env"]["depth"] == 4  # the rest of the file is the base config
    # reml-run reads a config file without the table as before; the sweep reads the table and hands on the rest
    plain = tmp_path / "plain.toml"
    plain.write_text('plugin = "sine"\npreset = "smoke"\n[env]\ndepth = 4\n')
    assert resolve_config(installed_registry, load_config_file(plain)).to_dict()["env"]["depth"] == 4


@pytest.mark.parametrize(
    "user, cpus, expected",
    [
        ({}, None, 1),  # Ray reserves train.threads (1) CPU per trial by default
        ({}, 2.0, 2),
        ({}, 1.5, 1),  # whole CPUs
        ({"train": {"workers": 3}}, 1.0, 3),  # what the sweep sets is kept
    ],
)
def test_a_trial_trains_with_the_cpus_ray_reserves_for_it(installed_registry, user, cpus, expected):
    """train.workers defaults to the driver's CPUs; a trial has only the CPUs Ray gives it, and a process more
    (an episode worker, the update's process) on each of several trials at once would oversubscribe them."""
    space = SearchSpace(grid=(parse_grid_flag("env.shots=[5],[5,10]"),), samples=1)
    plan = plan_sweep(installed_registry, {"plugin": "sine", "preset": "smoke", **user}, space, 1, cpus)
    for configuration, trial in zip(plan.configurations, plan.trials):
        assert configuration["config"]["train"]["workers"] == expected
        assert f"workers = {expected}" in plan.trial_configs[trial.id]
    swept = SearchSpace(grid=(parse_grid_flag("train.workers=2,3"),), samples=1)
    plan = plan_sweep(installed_registry, {"plugin": "sine", "preset": "smoke"}, swept, 1, 1.0)
    assert [c["config"]["train"]["workers"] for c in plan.configurations] == [2, 3]


def test_trial_configs_are_toml_that_reml_runs_loader_reads_back_to_the_same_config(tmp_path, installed_registry):
    space = SearchSpace(grid=(parse_grid_flag("env.shots=[5],[5,10]"),), samples=1)
    plan = plan_sweep(
        installed_registry, {"plugin": "sine", "preset": "smoke", "task": {"test_seed": 7}}, space, 1, None
    )
    for configuration, trial in zip(plan.configurations, plan.trials):
        path = tmp_path / "trial.toml"
        path.write_text(plan.trial_configs[trial.id])
        data = load_config_file(path)
        again = resolve_config(
            installed_registry, data, baselines=default_baselines(installed_registry, "sine", "run")
        ).to_dict()
        assert again == {**configuration["config"], "train": {**configuration["config"]["train"], "progress": False}}
    # strings with quotes, backslashes and control characters, and keys that are not bare
    tricky = {"a": 'say "hi" \\ there\n\tok\x7f', "b": {"c d": [1, 2.5, True], "e": None}}
    path.write_text(to_toml(tricky))
    assert load_config_file(path) == {"a": tricky["a"], "b": {"c d": [1, 2.5, True]}}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--plugin", "sine", "--grid", "env.inner_lrx=0.001,0.003"],
            "--grid env.inner_lrx=0.001: env.inner_lrx: Extra inputs are not permitted",
        ),
        (
            ["--plugin", "sine", "--grid", "env.inner_lr=0.001,-1"],
            "--grid env.inner_lr=-1: env.inner_lr: Input should be greater than 0",
        ),
        (["--plugin", "sine", "--grid", "env.inner_lr="], "--grid env.inner_lr: no values"),
        (["--plugin", "sine", "--grid", "env.inner_lr"], "--grid: expected KEY=V1,V2,..., got 'env.inner_lr' (no '=')"),
        (["--plugin", "sine"], "nothing to sweep"),
        (["--plugin", "sine", "--grid", "seed=1,2"], "sweep seeds with --seeds N"),
        (["--plugin", "sine", "--random", "env.inner_lr=loguniform:0:1", "--samples", "2"], "loguniform needs LOW > 0"),
        (
            ["--plugin", "sine", "--random", "env.inner_lr=normal:0:1", "--samples", "2"],
            "unknown distribution 'normal'",
        ),
        (["--plugin", "sine", "--random", "env.inner_lr=uniform:0.1:0.2"], "--random needs --samples N"),
        (
            ["--plugin", "sine", "--grid", "env.inner_lr=0.1", "--samples", "2"],
            "--samples N draws random configurations",
        ),
        (["--plugin", "sine", "--grid", "train.validation_tasks=0"], "train.validation_tasks is 0"),
        (["--plugin", "sine", "--grid", "env.inner_lr=0.1", "--grid", "env.inner_lr=0.2"], "given twice"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, expected):
    out = tmp_path / "sweep"
    code, err = _run_main(capsys, *args, "--out", str(out))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reml-sweep: error: ") and expected in lines[0], err
    assert not out.exists()


def test_out_and_resume_folders_are_checked_before_anything_is_written(tmp_path, capsys):
    sweep = tmp_path / "old-sweep"
    claim_sweep_folder(sweep, force=False)
    release_all()
    before = snapshot(sweep)
    code, err = _run_main(capsys, "--plugin", "sine", *GRID, "--out", str(sweep))
    assert (
        code == 2
        and "already holds a sweep; continue it with reml-sweep --resume" in err
        and len(err.strip().splitlines()) == 1
    )
    assert snapshot(sweep) == before

    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    code, err = _run_main(capsys, "--plugin", "sine", *GRID, "--out", str(stranger), "--force")
    assert code == 2 and "not a REML run, benchmark or sweep" in err and (stranger / "notes.txt").read_text() == "mine"

    code, err = _run_main(capsys, "--resume", str(stranger))
    assert code == 2 and err.strip() == (
        f"reml-sweep: error: --resume {stranger}: not a REML sweep directory (no {MARKER} marker; "
        "only folders reml-sweep created can be resumed)"
    )
    code, err = _run_main(capsys, "--resume", str(sweep), "--grid", "env.inner_lr=0.1")
    assert code == 2 and "--resume takes every setting from" in err
    assert sorted(p.name for p in stranger.iterdir()) == ["notes.txt"]


def test_without_ray_it_exits_2_with_the_command_that_installs_it(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a, **k: None if name.split(".")[0] == "ray" else real(name, *a, **k)
    )
    out = tmp_path / "sweep"
    code, err = _run_main(capsys, "--plugin", "sine", *GRID, "--out", str(out))
    assert code == 2
    assert (
        err.strip()
        == "reml-sweep: error: reml-sweep needs Ray, which is not installed; install it with: pip install 'reml[ray]'"
    )
    assert not out.exists()


# -- real sweeps on Ray ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweeps") / "grid"
    start = time.perf_counter()
    result = _sweep(*SWEEP_TINY, *GRID, "--out", str(out))
    return out, result, time.perf_counter() - start


@pytest.mark.slow
def test_a_grid_sweep_writes_its_table_plot_and_best_config(grid_sweep):
    out, result, seconds = grid_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("sweep.json", "sweep.md", "sweep.png", "best.toml"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))
    document = json.loads((out / "sweep.json").read_text())
    assert document["schema"] == "reml.sweep/1" and document["status"] == "finished"
    assert document["search_space"]["grid"] == {"env.inner_lr": [0.001, 0.02]} and document["seeds"] == [0]
    assert {"ray", "torch", "reml"} <= set(document["versions"])
    assert len(document["trials"]) == 2 and all(
        t["status"] == "finished" and t["invocations"] == 1 for t in document["trials"]
    )
    # one progress line per finished trial: its values, seed, score, time and where its folder and log are
    progress = [line for line in result.stderr.splitlines() if "validation score" in line]
    assert len(progress) == 2
    for trial in document["trials"]:
        line = next(line for line in progress if trial["id"] in line)
        assert (
            f"env.inner_lr={trial['values']['env.inner_lr']}" in line
            and "seed 0" in line
            and f"{trial['score']:.4f}" in line
        )
        assert str(out / trial["folder"]) in line and str(out / trial["log"]) in line and line.startswith("[reml ")
    # the table: every configuration, its mean and spread, the best marked
    table = (out / "sweep.md").read_text()
    best = document["best"]
    assert table.count("| **best** |") == 1 and f"| **best** | {best['configuration']} |" in table
    for configuration in document["configurations"]:
        assert f"| {configuration['id']} |" in table and f"{configuration['mean']:.4f}" in table
    assert best["mean"] == min(c["mean"] for c in document["configurations"])
    assert len({c["mean"] for c in document["configurations"]}) == 2  # the swept value mattered
    print(f"2-trial grid sweep: {seconds:.1f} s")


@pytest.mark.slow
def test_the_objective_is_the_validation_score_never_the_test_numbers(grid_sweep):
    out, result, _ = grid_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((out / "sweep.json").read_text())
    for trial in document["trials"]:
        results = json.loads((out / trial["folder"] / "results.json").read_text())
        validation = [record["validation/score"] for record in results["training"]["history"]]
        assert trial["score"] == results["training"]["selected_checkpoint"]["score"] == min(validation)
        tests = [
            cell["mse_mean"] for table in results["methods"].values() for row in table.values() for cell in row.values()
        ]
        assert all(not math.isclose(trial["score"], value, rel_tol=1e-9) for value in tests)
        assert results["config"]["env"]["inner_adam_lr"] == trial["values"]["env.inner_lr"]


@pytest.mark.slow
def test_best_toml_is_a_config_reml_run_takes_and_gives_the_trials_run(grid_sweep, tmp_path, installed_registry):
    out, result, _ = grid_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((out / "sweep.json").read_text())
    best = next(c for c in document["configurations"] if c["best"])
    data = load_config_file(out / "best.toml")
    assert (
        resolve_config(
            installed_registry, data, baselines=default_baselines(installed_registry, "sine", "run")
        ).to_dict()
        == best["config"]
    )
    # the same config and seed through reml-run gives the trial's run, number for number
    run = tmp_path / "again"
    rerun = subprocess.run(
        [str(BIN / "reml-run"), "--config", str(out / "best.toml"), "--out", str(run)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trial = json.loads((out / "trials" / f"{best['id']}-s0" / "results.json").read_text())
    again = json.loads((run / "results.json").read_text())
    assert again["training"]["history"] == trial["training"]["history"]
    assert again["methods"] == trial["methods"]


def _reml_processes(folder: Path) -> list[int]:
    """PIDs of processes whose command line names ``folder`` (a sweep's trials)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(folder) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_a_sigkilled_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    out = tmp_path / "killed"
    # one trial at a time (2 CPUs each), so the driver is killed with one trial finished and the next running
    driver = subprocess.Popen(
        [
            str(BIN / "reml-sweep"),
            *SWEEP_TINY,
            "--grid",
            "env.inner_lr=0.001,0.02,0.005",
            "--cpus-per-trial",
            "2",
            "--out",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline, lines = time.monotonic() + 180, []
    try:
        for line in driver.stderr:
            lines.append(line)
            if "trial 1/3" in line or time.monotonic() > deadline:
                break
    finally:
        driver.kill()
        driver.wait(timeout=30)
    assert any("trial 1/3" in line for line in lines), "".join(lines)[-3000:]
    finished = [child for child in (out / "trials").iterdir() if (child / "report.md").is_file()]
    assert len(finished) >= 1
    kept = {
        child.name: ((child / "results.json").read_bytes(), (child / "results.json").stat().st_mtime_ns)
        for child in finished
    }

    resumed = _sweep("--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    document = json.loads((out / "sweep.json").read_text())
    assert document["status"] == "finished" and all(t["status"] == "finished" for t in document["trials"])
    for name, (data, mtime) in kept.items():  # finished trials were read, not run again
        assert (
            (out / "trials" / name / "results.json").read_bytes(),
            (out / "trials" / name / "results.json").stat().st_mtime_ns,
        ) == (data, mtime)
        record = json.loads((out / "logs" / f"{name}.json").read_text())
        assert len(record["invocations"]) == 1
        assert not any(
            name in line and "validation score" in line and " s; run " in line for line in resumed.stderr.splitlines()
        )
    ran_on_resume = [
        line for line in resumed.stderr.splitlines() if "validation score" in line and "not rerun" not in line
    ]
    assert len(ran_on_resume) == 3 - len(kept)
    time.sleep(1)
    leftovers = _reml_processes(out)
    for pid in leftovers:  # nothing of this sweep may outlive it; end any that did, so the suite stays clean
        os.kill(pid, signal.SIGKILL)
    assert not leftovers


@pytest.mark.slow
def test_sigterm_stops_the_sweep_with_exit_143_and_the_trials_checkpoint(tmp_path):
    out = tmp_path / "stopped"
    budget = [*SWEEP_TINY, "--set", "train.env_steps=20000"]  # far more than the test waits for
    driver = subprocess.Popen(
        [str(BIN / "reml-sweep"), *budget, "--grid", "env.inner_lr=0.001", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        log = out / "logs"
        while time.monotonic() < deadline and not any(
            "step 200:" in p.read_text(errors="replace") for p in log.glob("*.log")
        ):
            time.sleep(0.5)
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=90)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 143, err[-3000:]
    assert (
        err.strip().splitlines()[-1]
        == f"reml-sweep: terminated (SIGTERM); the sweep can be continued with: reml-sweep --resume {out}"
    )
    deadline = (
        time.monotonic() + 60
    )  # the trial's reml-run got SIGTERM when its worker ended: it checkpoints, then exits
    while _reml_processes(out) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _reml_processes(out)
    text = next((out / "logs").glob("*.log")).read_text()
    assert "SIGTERM received: checkpointing" in text and "checkpoint step-" in text and "saved" in text


@pytest.mark.slow
def test_a_failing_trial_is_named_with_its_log_and_the_others_finish(tmp_path):
    out = tmp_path / "failing"
    bad = f"{config_id({'env.inner_lr': 0.02})}-s0"
    driver = subprocess.Popen(
        [str(BIN / "reml-sweep"), *SWEEP_TINY, *GRID, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "configs").is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        (out / "trials" / bad).mkdir(
            parents=True
        )  # a file of the user's where the trial's run folder goes: reml-run refuses it
        (out / "trials" / bad / "notes.txt").write_text("mine")
        _, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    failed = next(line for line in err.splitlines() if f"trial {bad} " in line and "failed (" in line)
    assert (
        "reml-run exited with code 2" in failed and "notes.txt" in failed and str(out / "logs" / f"{bad}.log") in failed
    )
    assert (
        err.strip().splitlines()[-1] == "reml-sweep: 1 of 2 trials did not finish; the table shows the others. "
        f"Retry them with: reml-sweep --resume {out}"
    )
    document = json.loads((out / "sweep.json").read_text())
    assert document["status"] == "incomplete"
    assert {t["id"]: t["status"] for t in document["trials"]}[bad] == "failed"
    assert document["best"]["configuration"] == config_id({"env.inner_lr": 0.001})
    assert (out / "trials" / bad / "notes.txt").read_text() == "mine"


def test_a_ray_address_where_nothing_listens_is_refused_before_the_sweep_folder_exists(tmp_path, capsys):
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
    code = main(["--plugin", "sine", *GRID, "--ray-address", f"127.0.0.1:{port}", "--out", str(tmp_path / "sweep")])
    err = capsys.readouterr().err
    assert code == 2 and "nothing answers there" in err and "Traceback" not in err
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("command", ["run", "bench"])
def test_a_sweep_config_given_to_reml_run_or_bench_is_refused_naming_reml_sweep(command, tmp_path, capsys):
    from reml_core.cli import bench as bench_cli
    from reml_core.cli import run as run_cli

    config = tmp_path / "sweep.toml"
    config.write_text('plugin = "sine"\npreset = "smoke"\n[sweep]\ngrid = {"env.depth" = [3, 4]}\n')
    main_of = {"run": run_cli.main, "bench": bench_cli.main}[command]
    code = main_of(["--config", str(config), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "[sweep] table is reml-sweep's search space" in err and "reml-sweep --config" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def _processes_with(variable: str, value: str) -> list[int]:
    """PIDs of this user's processes whose environment has ``variable=value``: everything a driver
    started with it (Ray's GCS, raylet, agents, workers, the trials), and no other process."""
    wanted = f"{variable}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if wanted in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_a_sigkilled_sweep_takes_its_ray_instance_and_trials_with_it(tmp_path):
    """Ray's workers and agents notice a SIGKILLed driver late (minutes on a busy machine); the
    sweep's watchdog ends them, and the running trial checkpoints and ends, within seconds."""
    import uuid

    marker = uuid.uuid4().hex
    out = tmp_path / "killed"
    budget = [*SWEEP_TINY, "--set", "train.env_steps=20000"]  # the trial is still training when the driver dies
    driver = subprocess.Popen(
        [str(BIN / "reml-sweep"), *budget, "--grid", "env.inner_lr=0.001", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "REML_TEST_SWEEP": marker},
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "trials").is_dir() or not any(
            (child / "checkpoints" / "latest").exists() for child in (out / "trials").iterdir()
        ):
            assert driver.poll() is None and time.monotonic() < deadline, (
                driver.stderr.read()[-3000:] if driver.poll() is not None else "no trial checkpoint"
            )
            time.sleep(0.2)
        running = _processes_with("REML_TEST_SWEEP", marker)
        commands = " ".join(
            Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            for pid in running
            if Path(f"/proc/{pid}/cmdline").exists()
        )
        assert "raylet" in commands and "reml-run" in commands, commands  # the marker does find the session's processes
    finally:
        driver.kill()
        driver.wait(timeout=30)
        driver.stderr.close()
    deadline = time.monotonic() + 20
    while _processes_with("REML_TEST_SWEEP", marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftovers = _processes_with("REML_TEST_SWEEP", marker)
    described = [
        Path(f"/proc/{pid}/cmdline").read_bytes()[:120] for pid in leftovers if Path(f"/proc/{pid}/cmdline").exists()
    ]
    for pid in leftovers:  # end what outlived it, so the suite stays clean
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not leftovers, described
    # the trial was stopped as a scheduler stops a run: with a checkpoint, so --resume continues it
    trial = next((out / "trials").iterdir())
    assert (trial / "checkpoints" / "latest").exists() and not (trial / "results.json").exists()
