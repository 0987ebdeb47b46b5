"""``reml-bench --executor``: the same numbers on Ray as in one process; failing jobs named with
their method and seed; ``--resume`` reruns only what is missing; only the driver writes.

Ray runs as a local instance with 2 CPUs, started by each command; every command is bounded in time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import runs

from reml_core.cli import bench

BIN = Path(sys.executable).parent
FLAKY = Path(__file__).parent / "flaky_plugin"
TINY = [*runs.TINY, "--set", "baselines.maml.iterations=20"]
TIMEOUT = 300


@pytest.fixture(scope="module")
def flaky_site(tmp_path_factory) -> Path:
    """The test-only ``flaky`` baseline, pip-installed into a folder that PYTHONPATH adds."""
    build = tmp_path_factory.mktemp("flaky-src")
    shutil.copytree(FLAKY, build / "src")
    target = tmp_path_factory.mktemp("flaky-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(build / "src"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


def _bench(*args: str, site: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("REML_TEST_FLAKY")}
    if site is not None:
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    environ.update(env)
    return subprocess.run(
        [str(BIN / "reml-bench"), *args], capture_output=True, text=True, timeout=TIMEOUT, env=environ
    )


@pytest.fixture(scope="module")
def local_bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "bench"
    result = _bench(*TINY, "--seeds", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_ray_gives_the_numbers_the_local_executor_gives_for_the_same_seeds(local_bench, tmp_path):
    out = tmp_path / "ray"
    result = _bench(*TINY, "--seeds", "2", "--executor", "ray", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    local, ray = (json.loads((folder / "results.json").read_text()) for folder in (local_bench, out))
    assert ray["executor"] == "ray" and local["executor"] == "local"
    assert ray["methods"] == local["methods"] and ray["seeds"] == local["seeds"] and ray["curves"] == local["curves"]
    for seed in (0, 1):
        assert (
            json.loads((out / f"seed-{seed}" / "results.json").read_text())["methods"]
            == json.loads((local_bench / f"seed-{seed}" / "results.json").read_text())["methods"]
        )
    # The driver unpacked every job's folder whole: a REML run folder with its checkpoints, a saved MAML, logs.
    for name in (
        "seed-1/reml-support-set/checkpoints/final",
        "seed-1/maml/maml.safetensors",
        "seed-0/scratch/bench.json",
        "seed-0/reml-support-set/job.log",
    ):
        assert (out / name).exists(), name
    assert not list(out.rglob("*.tmp")), "a half-unpacked job folder was left behind"
    # One line per finished job, with its score, time and where its log is.
    finished = [line for line in result.stderr.splitlines() if "/6] " in line and " finished in " in line]
    assert len(finished) == 6, result.stderr[-3000:]
    assert all("K=10, 10 steps: MSE" in line and "its log: " in line for line in finished)


def _flaky_folders(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and "seed-0" in p.parts
    }


@pytest.mark.slow
@pytest.mark.parametrize(("executor", "mode"), [("local", "raise"), ("ray", "raise"), ("ray", "die")])
def test_a_failing_job_is_named_the_others_are_kept_and_resume_reruns_only_it(executor, mode, flaky_site, tmp_path):
    out = tmp_path / "bench"
    argv = [*TINY, "--seeds", "2", "--methods", "reml,flaky", "--executor", executor]
    result = _bench(*argv, "--out", str(out), site=flaky_site, REML_TEST_FLAKY_SEED="1", REML_TEST_FLAKY_MODE=mode)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 of 4 jobs failed" in result.stderr and "flaky, seed 1:" in result.stderr, result.stderr[-3000:]
    assert f"rerun only what is missing with: reml-bench --resume {out.resolve()}" in result.stderr
    if mode == "raise":
        assert "flaky failed on purpose for seed 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "results.json").exists()  # no benchmark results from a partial set of jobs
    assert (out / "seed-0" / "results.json").is_file() and not (out / "seed-1" / "results.json").exists()
    assert (out / "seed-1" / "reml-support-set" / "checkpoints" / "final").is_dir()
    kept = _flaky_folders(out)
    reml_seed_1 = (out / "seed-1" / "reml-support-set" / "checkpoints" / "final" / "manifest.json").read_bytes()

    again = _bench("--resume", str(out), "--executor", executor, site=flaky_site)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("(loaded from ") == 3 and "flaky, seed 1 finished" in again.stderr, again.stderr[-3000:]
    assert "meta-training flaky (seed 1)" in (out / "seed-1" / "flaky" / "job.log").read_text()
    assert _flaky_folders(out) == {**kept, "seed-0/results.json": (out / "seed-0" / "results.json").read_bytes()}
    assert (out / "seed-1" / "reml-support-set" / "checkpoints" / "final" / "manifest.json").read_bytes() == reml_seed_1
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"reml", "flaky"} and results["seed_list"] == [0, 1]


def test_resume_takes_every_setting_from_the_folder(local_bench, tmp_path, capsys):
    code = bench.main(["--resume", str(local_bench), "--plugin", "sine", "--seeds", "3"])
    assert code == 2 and "--resume takes every setting from" in capsys.readouterr().err
    run_folder = tmp_path / "run"
    from helpers.runs import tiny_run

    tiny_run(run_folder)
    assert bench.main(["--resume", str(run_folder)]) == 2
    assert "is a reml-run folder; reml-bench --resume continues only reml-bench benchmarks" in capsys.readouterr().err
    assert bench.main(["--resume", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_resuming_a_finished_benchmark_loads_every_job_and_gives_the_same_numbers(local_bench, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(local_bench, copy)
    before = json.loads((copy / "results.json").read_text())
    result = _bench("--resume", str(copy))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("(loaded from ") == 6 and "meta-training" not in result.stderr
    assert json.loads((copy / "results.json").read_text())["methods"] == before["methods"]


def test_without_ray_the_ray_executor_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a, **k: None if name == "ray" else real(name, *a, **k)
    )
    out = tmp_path / "out"
    code = bench.main([*TINY, "--executor", "ray", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert "--executor ray needs Ray, which is not installed; install it with: pip install 'reml[ray]'" in err
    assert not out.exists()


def test_a_ray_address_needs_the_ray_executor(tmp_path, capsys):
    assert bench.main([*TINY, "--ray-address", "10.0.0.1:6379", "--out", str(tmp_path / "out")]) == 2
    assert "--ray-address needs --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_resume_continues_a_reml_job_stopped_part_way_from_its_checkpoints(local_bench, executor, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(local_bench, copy)
    run = copy / "seed-1" / "reml-support-set"
    shutil.rmtree(run / "checkpoints" / "final")  # as a kill before the end of training leaves it
    for name in ("results.json", "report.md", "seed-1/results.json"):
        (copy / name).unlink()
    result = _bench("--resume", str(copy), "--executor", executor)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("(loaded from ") == 5, result.stderr[-3000:]
    assert "continuing REML (support-set encoder, seed 1) from its last checkpoint" in (run / "job.log").read_text()
    assert (run / "checkpoints" / "final").is_dir()
    assert (
        json.loads((copy / "results.json").read_text())["methods"]["maml"]
        == json.loads((local_bench / "results.json").read_text())["methods"]["maml"]
    )


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_job_resolves_its_config_as_the_driver_did(executor, tmp_path):
    """MAML on an image family takes the largest K the family holds unless K was given: a job must
    see the user's settings, not a resolved config in which every value looks given."""
    out = tmp_path / "bench"
    result = _bench(
        "--plugin",
        "digits",
        "--preset",
        "smoke",
        "--methods",
        "maml",
        "--executor",
        executor,
        "--set",
        "baselines.maml.iterations=3",
        "--set",
        "eval.test_tasks=5",
        "--set",
        "eval.curve_steps=0",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(json.loads((out / "results.json").read_text())["methods"]) == {"maml"}
    refused = _bench(
        "--plugin",
        "digits",
        "--preset",
        "smoke",
        "--methods",
        "maml",
        "--executor",
        executor,
        "--set",
        "baselines.maml.shots=10",
        "--out",
        str(tmp_path / "refused"),
    )
    assert refused.returncode == 2 and "set baselines.maml.shots to at most 5" in refused.stderr, refused.stderr[-2000:]


def test_a_ray_address_where_nothing_listens_is_refused_before_ray_starts(tmp_path, capsys):
    import socket

    from reml_core.distributed import unreachable

    with socket.socket() as server:  # a port that was just free: nothing listens there once closed
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
    assert unreachable(f"127.0.0.1:{port}") is not None and unreachable(f"ray://127.0.0.1:{port}") is not None
    assert unreachable("auto") is None
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert unreachable(f"127.0.0.1:{server.getsockname()[1]}") is None
    code = bench.main(
        [*TINY, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}", "--out", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"--ray-address 127.0.0.1:{port}: nothing answers there" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before the folder is claimed


class _Placed(Exception):
    """Raised by the fake Ray once every job was submitted: the test reads what each asked for."""


class _FakeRay:
    """Just enough of Ray for RayExecutor to submit its jobs: records each task's num_cpus."""

    class exceptions:  # noqa: N801 - the attribute Ray has
        RayTaskError = RuntimeError
        RayError = RuntimeError

    def __init__(self, node_cpus: int) -> None:
        self.node_cpus = node_cpus
        self.asked: dict[str, int] = {}

    def nodes(self):
        return [
            {"Alive": True, "Resources": {"CPU": float(self.node_cpus)}},
            {"Alive": False, "Resources": {"CPU": 64.0}},
        ]

    def cluster_resources(self):
        return {"CPU": float(self.node_cpus)}

    def remote(self, function):
        fake = self

        class Task:
            def options(self, num_cpus, max_retries):
                class Submit:
                    def remote(self, job, started):
                        fake.asked[job.folder] = num_cpus
                        return job.folder

                return Submit()

        return Task()

    def wait(self, refs, num_returns):
        raise _Placed

    def cancel(self, ref, force):
        pass


@pytest.mark.parametrize(("workers", "node_cpus", "expected"), [(None, 4, 4), (None, 2, 2), (1, 4, 1), (3, 2, 2)])
def test_a_ray_job_asks_for_the_cpus_its_training_processes_use(monkeypatch, tmp_path, workers, node_cpus, expected):
    """A REML job that trains with train.workers processes asks Ray for that many CPUs (at most a node's), so Ray
    never starts more such jobs on a node than its cores can run; a baseline asks for train.threads (1)."""
    import contextlib

    from reml_core import jobs as jobs_module
    from reml_core import settings
    from reml_core.bench import bench_jobs, plan_bench
    from reml_core.registry import PluginRegistry

    monkeypatch.setattr(settings, "available_cpus", lambda: 4)  # the driver's machine: 4 cores
    fake = _FakeRay(node_cpus)
    monkeypatch.setattr(jobs_module, "ray_session", lambda *a, **k: contextlib.nullcontext(fake))
    user = {"plugin": "sine", "preset": "smoke", "train": {"n_envs": 16, "workers": workers}}
    plan = plan_bench(PluginRegistry.discover(), user, methods=["reml", "maml"], encoders=None, seeds=2, from_dir=None)
    with pytest.raises(_Placed):
        list(jobs_module.RayExecutor().run(bench_jobs(plan, tmp_path), tmp_path))
    assert fake.asked == {
        "seed-0/reml-support-set": expected,
        "seed-0/maml": 1,
        "seed-1/reml-support-set": expected,
        "seed-1/maml": 1,
    }
