"""A third-party plugin's own hyperparameter choice (issue 23), end to end.

The example plugin's ``tanh-pool`` (tests/external_plugin, ``cubic.py``) declares ``activation`` on its
record: the policy chooses it per episode when a config asks (``env.choose.activation``); the chosen
activation is applied to the network that is trained and written back during meta-training and to the
network REML hands out at evaluation; and what was chosen is recorded in results.json and the report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from reml_core.config import resolve_config
from reml_core.errors import ConfigError
from reml_core.experiment import build_components
from reml_core.methods import ReMLMethod
from reml_core.registry import PluginRegistry

SOURCE = Path(__file__).parent / "external_plugin"
BIN = Path(sys.executable).parent


@pytest.fixture
def cubic_registry() -> PluginRegistry:
    """The installed plugins, the toy plugin (its policy) and the example plugin's modules, in process."""
    sys.path.insert(0, str(SOURCE))
    try:
        import reml_example_plugin
        import reml_example_plugin.cubic
    finally:
        sys.path.remove(str(SOURCE))
    from helpers import toy_plugin

    registry = PluginRegistry.discover(disabled=())
    registry.register(toy_plugin, name="toy", distribution="toy-dist")
    registry.register(reml_example_plugin, name="example-in-process", distribution="reml-example-plugin")
    registry.register(reml_example_plugin.cubic, name="example-cubic-in-process", distribution="reml-example-plugin")
    return registry


def _components(registry, choose):
    user = {"plugin": "cubic", "policy": "toy-policy", "preset": "smoke", "env": {"depth": 4, "choose": choose}}
    return build_components(resolve_config(registry, user))


class LastValid:
    def act(self, observation, state, episode_start, action_mask):
        return int(np.flatnonzero(action_mask)[-1]), state


def test_the_pools_declared_choice_is_a_step_of_the_episode_and_applied_to_the_trained_network(cubic_registry):
    components = _components(cubic_registry, {"activation": ["tanh", "relu"], "finetune_sgd_lr": [0.01, 0.1]})
    env = components.make_env()
    assert [step.name for step in env.choice_steps] == [
        "finetune_sgd_lr",
        "activation",
    ]  # built-in first, then the plugin's
    assert env.action_space.n == env.pool.size + 4
    written: list[nn.Module] = []
    write_back = env.pool.write_back
    env.pool.write_back = lambda indices, network, rate=1.0: (
        written.append(network),
        write_back(indices, network, rate),
    )
    env.reset(seed=0)
    for _ in range(env.depth + 1):
        env.step(int(np.flatnonzero(env.action_masks())[0]))
    assert np.flatnonzero(env.action_masks()).tolist() == [env.pool.size + 2, env.pool.size + 3]
    _, _, terminated, _, info = env.step(env.pool.size + 3)  # relu
    assert terminated and info["choices"] == {"finetune_sgd_lr": 0.01, "activation": "relu"}
    assert len(written) == 1
    kinds = {type(module) for module in written[0]}
    assert (
        nn.ReLU in kinds and nn.Tanh not in kinds
    )  # the network that trained and went back to the pool was a ReLU one


def test_reml_applies_the_chosen_value_to_the_network_it_hands_out(cubic_registry):
    components = _components(cubic_registry, {"activation": ["tanh", "relu"]})
    method = ReMLMethod(LastValid(), components.make_env(mode="evaluate"))
    task = components.task_sampler.test_tasks(1)[0]
    network = method.network_for(task, 5)
    assert any(isinstance(module, nn.ReLU) for module in network) and not any(
        isinstance(module, nn.Tanh) for module in network
    )
    assert method.choices_summary()["tasks"][0]["values"] == {"activation": "relu"}
    assert not hasattr(method, "adapted_network_for")  # the activation is not an adaptation rate


def test_a_value_the_plugin_does_not_offer_is_refused_naming_the_key(cubic_registry):
    components = _components(cubic_registry, {"activation": ["tanh", "gelu"]})
    with pytest.raises(ConfigError) as caught:
        components.make_env()
    assert str(caught.value) == (
        "env.choose.activation: 'gelu' is not one of its values ['tanh', 'relu', 'sigmoid'] "
        "(the activation between the network's layers)"
    )


def test_a_run_on_another_pool_gets_that_pools_choice_not_the_plugins(cubic_registry):
    # The built-in dense pool declares an activation choice of its own (relu, tanh): a run on it is
    # offered the dense pool's values, never the tanh-pool's (sigmoid is only the plugin's).
    user = {"plugin": "sine", "policy": "toy-policy", "preset": "smoke", "env": {"choose": {"activation": ["sigmoid"]}}}
    components = build_components(resolve_config(cubic_registry, user))
    with pytest.raises(
        ConfigError, match=r"env.choose.activation: 'sigmoid' is not one of its values \['relu', 'tanh'\]"
    ):
        components.make_env()
    user["env"] = {"choose": {"no_such_choice": [1, 2]}}
    components = build_components(resolve_config(cubic_registry, user))
    with pytest.raises(ConfigError, match="env.choose.no_such_choice: no such hyperparameter to choose"):
        components.make_env()


@pytest.mark.slow
def test_a_smoke_run_with_the_installed_plugins_choice_chooses_records_and_reports_it(tmp_path):
    # The plugin pip-installed into a temporary folder, found through its entry point like any user's.
    build = tmp_path / "src"
    shutil.copytree(SOURCE, build)
    site = tmp_path / "site"
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
            str(site),
            str(build),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    environ = {key: value for key, value in os.environ.items() if key != "REML_DISABLE_PLUGINS"}
    environ.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        REML_DISABLE_PLUGINS="example-broken",
    )
    out = tmp_path / "run"
    args = [
        "--plugin",
        "cubic",
        "--preset",
        "smoke",
        "--out",
        str(out),
        "--set",
        "env.choose.activation=[tanh,relu,sigmoid]",
        "--set",
        "train.env_steps=400",
        "--set",
        "train.checkpoint_every=200",
        "--set",
        "train.validation_tasks=3",
        "--set",
        "train.calibration_episodes=5",
        "--set",
        "train.progress=false",
        "--set",
        "train.n_envs=4",
        "--set",
        "eval.test_tasks=6",
        "--set",
        "eval.curve_steps=3",
        "--set",
        "eval.curve_tasks=2",
        "--set",
        "policy.n_steps=64",
        "--set",
        "policy.batch_size=64",
    ]
    result = subprocess.run([str(BIN / "reml-run"), *args], capture_output=True, text=True, env=environ, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    choices = results["choices"]["reml"]
    assert len(choices["tasks"]) == 6 * 2  # every test task at K = 5 and 10
    assert all(
        set(record["values"]) == {"activation"} and record["values"]["activation"] in {"tanh", "relu", "sigmoid"}
        for record in choices["tasks"]
    )
    for shots in ("5", "10"):
        counts = choices["summary"][shots]["activation"]
        assert sum(entry["count"] for entry in counts.values()) == 6
        assert all(set(entry["mean_descriptor"]) == {"cubic", "linear"} for entry in counts.values())
    assert json.loads((out / "config.json").read_text())["env"]["choose"] == {"activation": ["tanh", "relu", "sigmoid"]}
    report = (out / "report.md").read_text()
    assert "## Hyperparameters the policy chose" in report and "- K = 5, `activation`:" in report
