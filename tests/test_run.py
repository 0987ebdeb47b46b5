"""``reml-run`` end to end: the smoke preset for each policy, its files, and their contents."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reml_core.results import SCHEMA

BIN = Path(sys.executable).parent


def _reml_run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "reml-run"), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module", params=["ppo-mlp", "ppo-lstm"])
def smoke_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / request.param
    start = time.perf_counter()
    result = _reml_run("--plugin", "sine", "--policy", request.param, "--preset", "smoke", "--out", str(out))
    return request.param, out, result, time.perf_counter() - start


def test_smoke_run_exits_0_and_writes_every_file(smoke_run):
    policy, out, result, seconds = smoke_run
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("results.json", "config.json", "report.md", "few_shot.png", "convergence.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("final", "best"):
        assert (out / "checkpoints" / name / "manifest.json").is_file()
        assert (out / "checkpoints" / name / "policy.zip").is_file()
        assert (out / "checkpoints" / name / "pool.safetensors").is_file()
    assert (out / "checkpoints" / "latest").read_text().strip().startswith("step-")
    assert (out / "logs" / "progress.csv").is_file()
    assert list((out / "logs").glob("events.out.tfevents.*"))
    assert (out / "few_shot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp")) and not list((out / "checkpoints").glob(".*"))
    print(f"{policy} smoke run: {seconds:.1f} s")


def test_results_follow_the_documented_schema(smoke_run):
    policy, out, result, _ = smoke_run
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == SCHEMA
    assert (results["plugin"], results["policy"], results["encoder"], results["seed"]) == (
        "sine",
        policy,
        "support-set",
        0,
    )
    assert results["encoder_privileged"] is False  # fair by default: the policy sees only the K support points
    assert results["test_tasks"] == 50
    assert set(results["methods"]) == {"reml", "scratch"}
    for table in results["methods"].values():
        assert set(table) == {"5", "10"}
        for row in table.values():
            assert set(row) == {"0", "1", "10"}
            for cell in row.values():
                assert math.isfinite(cell["mse_mean"]) and cell["mse_ci95"] > 0 and cell["nan_tasks"] == 0
    assert set(results["curves"]) == {"reml", "scratch"} and all(len(c) == 101 for c in results["curves"].values())
    assert {"training_reml", "evaluation_reml", "evaluation_scratch"} <= set(results["timing_s"])
    # what handing out the networks cost each method, a part of its evaluation
    for method in ("reml", "scratch"):
        assert 0 <= results["timing_s"][f"choosing_{method}"] <= results["timing_s"][f"evaluation_{method}"]
    assert {"python", "torch", "stable-baselines3", "sb3-contrib", "gymnasium"} <= set(results["versions"])
    assert results["training"]["env_steps"] >= 2000
    assert results["config"] == json.loads((out / "config.json").read_text())


def test_report_states_the_encoder_and_the_tables(smoke_run):
    _, out, _, _ = smoke_run
    report = (out / "report.md").read_text()
    assert "encoder: `support-set`, which sees only the K support points" in report
    assert ", privileged)" not in report and "not a fair comparison" not in report
    assert (
        "**K = 5**" in report
        and "**K = 10**" in report
        and "| REML (support-set) |" in report
        and "| scratch |" in report
    )
    assert "Wall time" in report


def test_output_files_follow_the_umask_and_an_unwritable_home_prints_no_warnings(tmp_path):
    """Files are created as any program's would be (not 0600), and matplotlib's cache never nags."""
    import os
    import stat

    from helpers.runs import TINY, cli

    out = tmp_path / "run"
    env = {**os.environ, "HOME": "/proc/reml-no-home", "XDG_CONFIG_HOME": "/proc/reml-no-config"}
    env.pop("MPLCONFIGDIR", None)
    result = cli("reml-run", *TINY, "--out", str(out), env=env, preexec_fn=lambda: os.umask(0o027))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "matplotlib" not in result.stderr.lower(), result.stderr[-2000:]
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert modes and all(mode == (0o750 if (out / name).is_dir() else 0o640) for name, mode in modes.items()), modes
    failed = cli("reml-run", "--plugin", "nosuch", env=env)
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr


def test_a_privileged_encoder_is_marked_in_every_table_and_note(tmp_path):
    from helpers.runs import TINY, cli

    out = tmp_path / "oracle"
    result = cli("reml-run", *TINY, "--encoder", "oracle", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| REML (oracle, privileged) |" in result.stdout
    report = (out / "report.md").read_text()
    assert "| REML (oracle, privileged) |" in report and "not a fair comparison" in report
    assert json.loads((out / "results.json").read_text())["encoder_privileged"] is True
