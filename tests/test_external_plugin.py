"""A plugin shipped as its own distribution is found through the entry point, end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).parent / "external_plugin"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The example plugin pip-installed into a temporary folder (not into the venv)."""
    build = tmp_path_factory.mktemp("external-src")
    shutil.copytree(SOURCE, build / "src")
    target = tmp_path_factory.mktemp("external-site")
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


def _run(tool: str, *args: str, site: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key != "REML_DISABLE_PLUGINS"}
    environ.update(PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])), **env)
    return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, env=environ, timeout=120)


def test_reml_plugins_lists_the_external_plugins_components(plugin_site):
    result = _run("reml-plugins", "--json", site=plugin_site)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert set(listing) == {"task_sampler", "state_encoder", "layer_pool", "reward", "policy", "baseline"}
    line = [item for item in listing["task_sampler"] if item["name"] == "line"]
    assert line == [
        {
            "name": "line",
            "plugin": "reml-example-plugin",
            "entry_point": "example",
            "description": "Straight lines y = a*x + b with a, b uniform in [-1, 1] (example third-party plugin).",
        }
    ]
    assert any(item["name"] == "support-moments" for item in listing["state_encoder"])
    # Its broken sibling is reported by name and takes nothing else down.
    assert "plugin 'example-broken' (reml-example-plugin) failed to import" in result.stderr
    assert "needs a package that is not installed" in result.stderr


def test_disabled_external_plugins_are_not_loaded(plugin_site):
    result = _run("reml-plugins", "--json", site=plugin_site, REML_DISABLE_PLUGINS="example,example-broken")
    assert result.returncode == 0
    assert result.stderr == ""
    assert all(item["name"] != "line" for item in json.loads(result.stdout)["task_sampler"])


def test_the_external_task_family_is_a_valid_plugin_choice(plugin_site):
    result = _run(
        "reml-run",
        "--plugin",
        "line",
        "--set",
        "task.support_points=0",
        site=plugin_site,
        REML_DISABLE_PLUGINS="example-broken",
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "task.support_points: Input should be greater than 0 (got 0)"


def test_the_external_task_family_runs_end_to_end(plugin_site, tmp_path):
    # Its own task sampler and encoder, REML's built-in pool, reward and policy: a full smoke run.
    result = _run(
        "reml-run",
        "--plugin",
        "line",
        "--preset",
        "smoke",
        "--out",
        str(tmp_path / "run"),
        "--set",
        "train.progress=false",
        site=plugin_site,
        REML_DISABLE_PLUGINS="example-broken",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (results["plugin"], results["encoder"], results["encoder_privileged"]) == ("line", "support-moments", False)
    assert results["methods"]["reml"]["10"]["10"]["mse_mean"] is not None


def test_a_family_without_presets_and_a_pool_of_its_own_runs_smoke_quickly_to_the_end(plugin_site, tmp_path):
    # `cubic` declares no experiment_presets and composes from its own tanh pool (neither dense nor
    # conv), which reports diagnostics of its own: the core's smoke budget applies, the pool's numbers
    # are logged and reported, and nothing in the report names another family.
    out = tmp_path / "run"
    result = _run(
        "reml-run",
        "--plugin",
        "cubic",
        "--preset",
        "smoke",
        "--out",
        str(out),
        "--set",
        "train.progress=false",
        site=plugin_site,
        REML_DISABLE_PLUGINS="example-broken",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "smoke" and config["pool"]["name"] == "tanh-pool"
    assert config["train"]["env_steps"] == 2000 and config["eval"]["test_tasks"] == 50  # the core's smoke budget
    results = json.loads((out / "results.json").read_text())
    assert results["training"]["env_steps"] < 5000
    history = results["training"]["history"]
    assert history and all(
        "pool/saturated_input_units" in record and "pool/mean_abs_weight" in record for record in history
    )
    assert not any(key.startswith("pool/dead") for record in history for key in record)
    assert "saturated input units" in result.stderr  # logged at each checkpoint
    report = (out / "report.md").read_text()
    assert "pool: saturated input units" in report and "cubic polynomials" in report
    for other in ("sine", "sinus", "amplitude", "MAML"):
        assert other not in report


def test_an_encoder_that_breaks_its_declared_size_is_refused_before_anything_is_written(plugin_site, tmp_path):
    out = tmp_path / "run"
    result = _run(
        "reml-run",
        "--plugin",
        "cubic",
        "--encoder",
        "bad-moments",
        "--preset",
        "smoke",
        "--out",
        str(out),
        site=plugin_site,
        REML_DISABLE_PLUGINS="example-broken",
    )
    assert result.returncode == 2
    assert "encoder 'bad-moments' declares observation_size = 3 but encode() returned shape (2,)" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_REML_DEBUG_shows_the_traceback_of_a_failing_plugin(plugin_site):
    quiet = _run("reml-plugins", site=plugin_site)
    assert "failed to import" in quiet.stderr and "set REML_DEBUG=1 to see the traceback" in quiet.stderr
    assert "Traceback" not in quiet.stderr
    loud = _run("reml-plugins", site=plugin_site, REML_DEBUG="1")
    assert loud.returncode == 0
    assert "Traceback (most recent call last)" in loud.stderr and "reml_example_plugin/broken.py" in loud.stderr
