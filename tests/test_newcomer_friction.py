"""What a new user tripped over (issue 25): misspelt settings, options that added baselines,
an oracle with nothing to read, an empty ``dir(reml_core)``, and the reports' and terminal's words."""

from __future__ import annotations

import json

import numpy as np
import pytest

import reml_core
from reml_core.api import prepare_run
from reml_core.cli import run as run_cli
from reml_core.config import resolve_config
from reml_core.errors import ConfigError


# -- dir(reml_core) ---------------------------------------------------------------------------


def test_dir_of_the_package_lists_its_public_api_for_tab_completion():
    listed = dir(reml_core)
    assert set(reml_core.__all__) <= set(listed) and "Any" not in listed
    for name in ("run", "bench", "load", "Results", "ArgumentError", "Learner", "save_network", "hookimpl", "hookspec"):
        assert name in reml_core.__all__ and name in listed
        assert getattr(reml_core, name) is not None  # every listed name resolves


# -- did you mean -----------------------------------------------------------------------------


@pytest.mark.parametrize(("user", "line"), [
    ({"trian": {"env_steps": 5}}, "trian: Extra inputs are not permitted; did you mean 'train'?"),
    ({"train": {"env_step": 5}}, "train.env_step: Extra inputs are not permitted; did you mean 'env_steps'?"),
    ({"eval": {"shot": [5]}}, "eval.shot: Extra inputs are not permitted; did you mean 'shots'?"),
    ({"pool": {"hiden_layers": 3}}, "pool.hiden_layers: Extra inputs are not permitted; did you mean 'hidden_layers'"),
    ({"policy": {"learning_rat": 0.1}}, "policy.learning_rat: Extra inputs are not permitted; did you mean 'learning_rate'"),
    ({"baselines": {"maml": {"iteratons": 3}}}, "baselines.maml.iteratons: Extra inputs are not permitted; did you mean 'iterations'?"),
])
def test_a_misspelt_setting_is_answered_with_the_closest_valid_names(installed_registry, user, line):
    with pytest.raises(ConfigError) as raised:
        resolve_config(installed_registry, {"plugin": "sine", "preset": "smoke", **user}, baselines=["maml"])
    assert any(problem.startswith(line) for problem in raised.value.problems), raised.value.problems


def test_a_setting_with_no_close_name_gets_no_guess(installed_registry):
    with pytest.raises(ConfigError) as raised:
        resolve_config(installed_registry, {"plugin": "sine", "colour": "red"})
    assert raised.value.problems == ["colour: Extra inputs are not permitted"]


def test_the_command_line_and_the_python_api_suggest_too(tmp_path, capsys):
    assert run_cli.main(["--plugin", "sine", "--preset", "smoke", "--set", "env.detph=4", "--out", str(tmp_path / "r")]) == 2
    assert "env.detph: Extra inputs are not permitted; did you mean 'depth'?" in capsys.readouterr().err
    config = tmp_path / "c.toml"
    config.write_text('plugin = "sine"\n[task]\namplitude_hig = 3.0\n')
    assert run_cli.main(["--config", str(config), "--out", str(tmp_path / "r")]) == 2
    assert "task.amplitude_hig: Extra inputs are not permitted; did you mean 'amplitude_high'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="did you mean 'env_steps'"):
        reml_core.run(plugin="sine", preset="smoke", out=tmp_path / "api", train={"env_step": 5})
    assert not (tmp_path / "r").exists() and not (tmp_path / "api").exists()


# -- a baseline's options configure it, never add it -----------------------------------------


def test_a_baselines_options_do_not_add_it_to_a_run(installed_registry, tmp_path, capsys):
    user = {"plugin": "sine", "preset": "smoke", "baselines": {"maml": {"iterations": 3}}}
    prepared = prepare_run(user, out=tmp_path / "run", registry=installed_registry)
    assert "maml" not in prepared.config.baselines
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert "maml" not in saved["baselines"]  # a --resume evaluates what the run did
    note = capsys.readouterr().err
    assert "baselines.maml configures a baseline this run does not evaluate" in note and "--baselines" in note and "maml" in note

    chosen = prepare_run(user, out=tmp_path / "with", baselines=["maml"], registry=installed_registry)
    assert set(chosen.config.baselines) == {"maml"} and chosen.config.baselines["maml"].config.iterations == 3
    assert "does not evaluate" not in capsys.readouterr().err


def test_a_misspelt_option_of_a_baseline_not_evaluated_is_still_refused(installed_registry, tmp_path):
    with pytest.raises(ConfigError, match="baselines.maml.iteratons"):
        prepare_run({"plugin": "sine", "preset": "smoke", "baselines": {"maml": {"iteratons": 3}}}, out=tmp_path / "r",
                    registry=installed_registry)
    assert not (tmp_path / "r").exists()


# -- the oracle needs a descriptor -------------------------------------------------------------


def _files_family(root):
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("validation", 2), ("test", 2)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            t = rng.uniform(0, 5, 30)
            np.savez(root / split / f"task-{i}.npz", t=t, y=np.sin(t))


def test_the_oracle_on_a_family_without_descriptors_is_one_config_error(tmp_path, capsys):
    _files_family(tmp_path / "data")
    config = tmp_path / "files.toml"
    config.write_text(f'plugin = "files"\npreset = "smoke"\n[task]\nroot = "{tmp_path / "data"}"\ninputs = ["t"]\noutputs = ["y"]\n'
                      'support_points = 5\nquery_points = 8\n[env]\nshots = [2, 5]\n[eval]\nshots = [2, 5]\n')
    code = run_cli.main(["--config", str(config), "--encoder", "oracle", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    [line] = [text for text in err.splitlines() if "oracle" in text]
    assert "encoder" in line and "'oracle'" in line and "'files'" in line and "descriptor" in line
    assert not (tmp_path / "r").exists()
