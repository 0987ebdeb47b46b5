"""``reml-bench`` end to end: every method on the same tasks, --from reloads, --seeds reports the spread."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "reml-bench"), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke_bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "smoke"
    result = _bench("--plugin", "sine", "--preset", "smoke", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_smoke_bench_has_every_method_k_and_step(smoke_bench):
    results = json.loads((smoke_bench / "results.json").read_text())
    assert results["schema"] == "reml.results/2"
    assert set(results["methods"]) == {"reml", "maml", "scratch"}
    for table in results["methods"].values():
        assert sorted(table, key=int) == ["5", "10"]
        for row in table.values():
            assert sorted(row, key=int) == ["0", "1", "10"]
            assert all(cell["mse_mean"] is not None and cell["mse_ci95"] > 0 for cell in row.values())
    assert results["encoders"] == {"reml": {"name": "support-set", "privileged": False}}  # fair by default
    assert set(results["budgets"]) == {"reml", "maml", "scratch"} and "iterations=300" in results["budgets"]["maml"]
    for name in (
        "report.md",
        "few_shot.png",
        "convergence.png",
        "config.json",
        "seed-0/results.json",
        "seed-0/maml/maml.safetensors",
        "seed-0/reml-support-set/checkpoints/best/manifest.json",
    ):
        assert (smoke_bench / name).is_file(), name


def test_report_marks_the_best_and_states_encoder_and_budgets(smoke_bench):
    report = (smoke_bench / "report.md").read_text()
    assert "| REML (support-set) |" in report and "| MAML |" in report and "| scratch |" in report
    assert "state encoder `support-set`, which sees only the K support points" in report and "privileged" not in report
    assert report.count("**") >= 2 * 2 * 3  # one bold (best) cell per K and step
    assert "Budgets, training time and test-time cost" in report and "env steps of ppo-mlp" in report
    assert "choosing the test networks (s, all seeds)" in report


def test_from_reloads_trained_methods_and_reproduces_their_numbers(smoke_bench, tmp_path):
    result = _bench(
        "--plugin", "sine", "--preset", "smoke", "--from", str(smoke_bench), "--out", str(tmp_path / "again")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "meta-training" not in result.stderr  # nothing was trained again
    first = json.loads((smoke_bench / "results.json").read_text())
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["methods"] == first["methods"]
    assert all(source.startswith("loaded from") or name == "scratch" for name, source in again["sources"]["0"].items())


def test_several_seeds_and_encoders_report_the_spread(tmp_path):
    out = tmp_path / "seeds"
    result = _bench(
        "--plugin",
        "sine",
        "--preset",
        "smoke",
        "--methods",
        "reml,scratch",
        "--encoder",
        "oracle,support-set",
        "--seeds",
        "2",
        "--test-tasks",
        "10",
        "--set",
        "train.env_steps=512",
        "--set",
        "eval.curve_steps=5",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"reml:oracle", "reml:support-set", "scratch"}
    assert results["encoders"]["reml:support-set"] == {"name": "support-set", "privileged": False}
    assert set(results["seeds"]) == {"0", "1"}
    cell = results["methods"]["reml:oracle"]["10"]["10"]
    per_seed = [results["seeds"][s]["methods"]["reml:oracle"]["10"]["10"]["mse_mean"] for s in ("0", "1")]
    assert cell["mse_mean"] == pytest.approx(sum(per_seed) / 2)
    assert cell["seed_spread"] > 0
    report = (out / "report.md").read_text()
    assert "REML (support-set)" in report and "seeds ±" in report
    assert "| REML (oracle, privileged) |" in report and "REML (support-set, privileged)" not in report


def _copy_bench(smoke_bench: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "source"
    shutil.copytree(smoke_bench, target)
    return target


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("bench-json", "maml's training record is not valid JSON"),
        ("bench-json-list", "maml's training record should be a JSON object, not list"),
        ("config-list", "should be a JSON object, not list"),
        ("config-not-utf8", "must be UTF-8 text"),
        ("maml-weights", "maml.safetensors: contents do not match"),
        ("reml-checkpoint", "does not match its manifest"),
    ],
)
def test_from_refuses_damaged_sources_before_writing_anything(smoke_bench, tmp_path, damage, expected):
    source = _copy_bench(smoke_bench, tmp_path)
    seed = source / "seed-0"
    if damage == "bench-json":
        (seed / "maml" / "bench.json").write_text("{oops")
    elif damage == "bench-json-list":
        (seed / "maml" / "bench.json").write_text("[]")
    elif damage == "config-list":
        (seed / "reml-support-set" / "config.json").write_text("[1, 2]")
    elif damage == "config-not-utf8":
        (seed / "reml-support-set" / "config.json").write_bytes(b'{"seed": "\xff"}')
    elif damage == "maml-weights":
        for path in (seed / "maml").iterdir():
            if path.suffix == ".safetensors":
                path.write_bytes(path.read_bytes()[:50])
    else:
        pool = next((seed / "reml-support-set" / "checkpoints").glob("step-*")) / "pool.safetensors"
        pool.write_bytes(pool.read_bytes()[:-8] + b"12345678")
        (seed / "reml-support-set" / "checkpoints" / "latest").write_text(pool.parent.name + "\n")
    out = tmp_path / "out"
    result = _bench("--plugin", "sine", "--preset", "smoke", "--from", str(source), "--out", str(out))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and expected in lines[-1], lines[-3:]
    assert not out.exists(), "a refused --from left the output folder behind"


def test_from_refuses_seeds_and_encoders_it_does_not_hold(smoke_bench, tmp_path):
    out = tmp_path / "out"
    for extra, expected in (
        (
            ["--seed", "5"],
            "holds no REML run for seed 5 with encoder 'support-set' (it holds: seed 0 (maml, reml-support-set, "
            "scratch)",
        ),
        (["--seeds", "2"], "holds no REML run for seed 1"),
        (["--encoder", "oracle"], "with encoder 'oracle'"),
        (["--methods", "maml", "--seed", "3"], "holds nothing for seed 3"),
    ):
        result = _bench("--plugin", "sine", "--preset", "smoke", "--from", str(smoke_bench), "--out", str(out), *extra)
        assert result.returncode == 2 and expected in result.stderr, result.stderr[-2000:]
        assert "meta-training" not in result.stderr and not out.exists()


def test_out_inside_from_is_refused(smoke_bench, tmp_path):
    source = _copy_bench(smoke_bench, tmp_path)
    result = _bench("--plugin", "sine", "--preset", "smoke", "--from", str(source), "--out", str(source), "--force")
    assert result.returncode == 2 and "is --from" in result.stderr
    assert (source / "results.json").exists()


def test_from_a_run_trains_the_baselines_that_run_never_had_with_the_bench_s_settings(tmp_path):
    """A reml-run folder names only its own baselines; --from it still trains the others, as asked."""
    from helpers.runs import tiny_run

    source = tiny_run(tmp_path / "run")
    assert "maml" not in json.loads((source / "config.json").read_text())["baselines"]
    out = tmp_path / "bench"
    result = _bench(
        "--plugin",
        "sine",
        "--preset",
        "smoke",
        "--methods",
        "reml,maml",
        "--from",
        str(source),
        "--set",
        "baselines.maml.iterations=7",
        "--set",
        "eval.test_tasks=5",
        "--set",
        "eval.curve_steps=0",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"reml", "maml"}
    assert "iterations=7" in results["budgets"]["maml"]
    assert results["sources"]["0"]["reml"].startswith("loaded from") and results["sources"]["0"]["maml"].startswith(
        "trained in"
    )
