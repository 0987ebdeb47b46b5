"""The Python API: the module's doctest, the notebook-style quickstart in docs/, and the typed results."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
from pathlib import Path

import pytest

import reml_core
from reml_core import api
from reml_core.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_api_docstring_examples_run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    failures, tried = doctest.testmod(api, optionflags=doctest.ELLIPSIS, raise_on_error=False)
    assert tried > 5 and failures == 0


@pytest.mark.slow
def test_the_notebook_style_quickstart_runs_and_plots_with_the_public_api_only(tmp_path):
    script = ROOT / "docs" / "examples" / "quickstart.py"
    imports = [line for line in script.read_text().splitlines() if line.startswith(("import ", "from "))]
    assert [line for line in imports if "reml" in line] == ["import reml_core"]  # nothing but the public API
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in (
        "run-few-shot.png",
        "run-convergence.png",
        "bench-few-shot.png",
        "bench-convergence.png",
        "run/results.json",
        "bench/results.json",
    ):
        assert (tmp_path / name).is_file(), name
    assert "REML, K=5, 10 steps: CellResult(mean=" in result.stdout


def test_results_read_a_benchmark_of_several_seeds(tmp_path):
    data = {
        "plugin": "digits",
        "config": {"seed": 0},
        "seed_list": [0, 1],
        "loss_name": "cross-entropy",
        "encoders": {"reml": {"name": "prototypes", "privileged": False}},
        "methods": {
            "reml": {
                "5": {
                    "0": {
                        "mse_mean": 1.2,
                        "mse_ci95": 0.1,
                        "seed_spread": 0.05,
                        "nan_tasks": 0,
                        "accuracy_mean": 0.6,
                        "accuracy_ci95": 0.02,
                        "accuracy_seed_spread": 0.01,
                    }
                }
            }
        },
        "curves": {"reml": [1.0, 0.5]},
    }
    (tmp_path / "results.json").write_text(json.dumps(data))
    results = reml_core.load(tmp_path)
    assert results.kind == "bench" and results.methods == ["reml"] and results.loss_name == "cross-entropy"
    cell = results.cell("reml", 5, 0)
    assert (cell.mean, cell.ci95, cell.seed_spread, cell.metrics) == (1.2, 0.1, 0.05, {"accuracy": (0.6, 0.02)})
    [row] = results.rows()
    assert {
        key: row[key] for key in ("method", "shots", "steps", "loss", "seed_spread", "accuracy", "accuracy_ci95")
    } == {
        "method": "reml",
        "shots": 5,
        "steps": 0,
        "loss": 1.2,
        "seed_spread": 0.05,
        "accuracy": 0.6,
        "accuracy_ci95": 0.02,
    }
    assert results.to_dataframe().shape == (1, len(row))
    with pytest.raises(KeyError, match="no method 'maml'"):
        results.table("maml")
    assert results.plot(tmp_path / "figure.png").is_file()


def test_load_refuses_what_is_not_a_results_folder(tmp_path):
    with pytest.raises(UserError):
        reml_core.load(tmp_path)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(UserError, match="not a REML results file"):
        reml_core.load(tmp_path)


def test_settings_merge_a_config_keywords_and_dotted_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('plugin = "sine"\npolicy = "ppo-lstm"\n[env]\ninner_lr = 0.003\ndepth = 4\n')
    merged = api.user_settings(path, {"env.depth": 5, "eval.shots": [5]}, seed=3, encoder="oracle")
    assert merged == {
        "plugin": "sine",
        "policy": {"name": "ppo-lstm"},
        "env": {"inner_lr": 0.003, "depth": 5},
        "seed": 3,
        "encoder": {"name": "oracle"},
        "eval": {"shots": [5]},
    }


def test_bad_settings_raise_a_config_error_and_write_nothing(tmp_path):
    with pytest.raises(ConfigError, match="env.depth"):
        reml_core.run(plugin="sine", preset="smoke", env={"depth": 1}, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
