"""The plugin API the core keeps to: it names no plugin's component, takes budgets from presets of
its own when a family gives none, checks an encoder's output once, and reports what components say
about themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

from reml_core import hookimpl
from reml_core.cli import plugins as plugins_cli
from reml_core.config import CORE_PRESETS, default_baselines, resolve_config
from reml_core.errors import ConfigError, PluginError, UserError, describe_error
from reml_core.experiment import build_components
from reml_core.registry import PluginRegistry
from reml_core.specs import BaselineSpec, Recommendation, StateEncoderSpec, TaskSamplerSpec
from reml_plugins.encoders.generic import SupportSetConfig, SupportSetEncoder
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler

BIN = Path(sys.executable).parent


class _Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _family(name: str, *, presets=None, recommendation=None):
    """A task family record reusing the sine sampler, with the presets and recommendation given."""
    return TaskSamplerSpec(
        name=name,
        factory=lambda config, context: SineTaskSampler(SineConfig()),
        config_model=_Empty,
        description="test family",
        experiment_presets=presets or {},
        recommended=recommendation
        or Recommendation(encoder="support-set", pool="dense", reward="neg-mse", policy="toy-policy"),
    )


def _with(registry: PluginRegistry, name: str, **hooks) -> PluginRegistry:
    plugin = SimpleNamespace(**{hook: hookimpl(lambda records=records: records) for hook, records in hooks.items()})
    for hook in hooks:  # pluggy reads the implementation's name from the attribute
        getattr(plugin, hook).__name__ = hook
    registry.register(plugin, name=name, distribution=f"{name}-dist")
    return registry


# -- presets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["smoke", "default", "full"])
def test_a_family_without_experiment_presets_gets_the_cores_budget_for_every_preset(sine_registry, preset):
    registry = _with(sine_registry, "bare", reml_task_samplers=[_family("bare")])
    config = resolve_config(registry, {"plugin": "bare", "preset": preset})
    for section, values in CORE_PRESETS[preset].items():
        for key, value in values.items():
            assert getattr(getattr(config.core, section), key) == value, f"{section}.{key}"
    assert config.core.preset == preset
    if preset == "smoke":  # smoke stays small whatever the family
        assert config.core.train.env_steps <= 5_000 and config.core.eval.test_tasks <= 100


def test_family_presets_override_the_cores_key_by_key_and_the_user_overrides_both(sine_registry):
    family = _family("partial", presets={"smoke": {"train": {"env_steps": 700}}})
    registry = _with(sine_registry, "partial", reml_task_samplers=[family])
    config = resolve_config(registry, {"plugin": "partial", "preset": "smoke"})
    assert config.core.train.env_steps == 700
    assert config.core.train.checkpoint_every == CORE_PRESETS["smoke"]["train"]["checkpoint_every"]
    assert config.core.eval.test_tasks == CORE_PRESETS["smoke"]["eval"]["test_tasks"]
    user = resolve_config(
        registry, {"plugin": "partial", "preset": "smoke", "train": {"env_steps": 300}, "eval": {"test_tasks": 7}}
    )
    assert (user.core.train.env_steps, user.core.eval.test_tasks) == (300, 7)


# -- baselines come from records, not from the core -----------------------------------------------


def test_default_baselines_follow_each_baselines_own_offer(installed_registry):
    assert default_baselines(installed_registry, "sine", "run") == ["scratch"]
    assert default_baselines(installed_registry, "sine", "bench") == ["maml", "scratch"]
    without_scratch = PluginRegistry.discover(disabled=("scratch",))
    assert default_baselines(without_scratch, "sine", "run") == []
    assert default_baselines(without_scratch, "sine", "bench") == ["maml"]


def test_a_familys_recommended_baselines_win_and_missing_ones_are_skipped_with_a_note(sine_registry, capsys):
    family = _family(
        "picky",
        recommendation=Recommendation(
            encoder="support-set",
            pool="dense",
            reward="neg-mse",
            policy="toy-policy",
            baselines=("not-installed", "scratch"),
            run_baselines=(),
        ),
    )
    registry = _with(sine_registry, "picky", reml_task_samplers=[family])
    assert default_baselines(registry, "picky", "run") == []
    assert default_baselines(registry, "picky", "bench") == ["scratch"]
    assert "'not-installed', recommended by 'picky', is not installed" in capsys.readouterr().err


def test_a_baseline_record_checks_its_label_and_commands():
    spec = BaselineSpec(name="mine", factory=lambda c, x: None, config_model=_Empty, description="d")
    assert (spec.label, spec.compare_in) == ("mine", ("bench",))
    with pytest.raises(ValueError, match="compare_in"):
        BaselineSpec(
            name="mine", factory=lambda c, x: None, config_model=_Empty, description="d", compare_in=("train",)
        )
    with pytest.raises(TypeError, match="tuple of baseline names"):
        Recommendation(encoder="e", pool="p", reward="r", policy="q", baselines="maml")


def test_report_labels_come_from_the_baseline_records(installed_registry):
    from reml_core.experiment import baseline_labels

    config = resolve_config(installed_registry, {"plugin": "sine", "preset": "smoke"}, baselines=["maml", "scratch"])
    assert baseline_labels(config) == {"maml": "MAML", "scratch": "scratch"}


# -- generic encoders ----------------------------------------------------------------------------


def test_generic_encoders_survive_disabling_the_sine_family():
    registry = PluginRegistry.discover(disabled=("sine",))
    assert "sine" not in registry.names("task_sampler")
    assert {"oracle", "support-set"} <= set(registry.names("state_encoder"))
    assert registry.get("state_encoder", "support-set").plugin == "encoders"


class _UndeclaredSampler(SineTaskSampler):
    """A family that declares no input or target scale."""

    def __init__(self, config):
        super().__init__(config)
        del self.input_scale, self.target_scale


def test_support_set_scales_come_from_the_family_else_from_its_validation_tasks():
    sine = SineTaskSampler(SineConfig(x_low=-2.0, x_high=3.0, amplitude_high=4.0))
    declared = SupportSetEncoder(sine, SupportSetConfig())
    assert (declared.x_scale, declared.y_scale) == (3.0, 4.0)
    undeclared = _UndeclaredSampler(SineConfig(x_low=-2.0, x_high=3.0, amplitude_high=4.0))
    measured = SupportSetEncoder(undeclared, SupportSetConfig())
    largest_x = max(float(t.x_train.abs().max()) for t in undeclared.validation_tasks(20))
    assert measured.x_scale == pytest.approx(largest_x) and 2.5 < measured.x_scale <= 3.0
    assert 0 < measured.y_scale <= 4.0
    explicit = SupportSetEncoder(undeclared, SupportSetConfig(x_scale=7.0, y_scale=0.5))
    assert (explicit.x_scale, explicit.y_scale) == (7.0, 0.5)


# -- build-time checks ---------------------------------------------------------------------------


class _SizedEncoder:
    privileged = False

    def __init__(self, declared, output):
        self.observation_size, self._output = declared, output

    def encode(self, task, shots):
        return self._output(shots)


@pytest.mark.parametrize(
    ("declared", "output", "message"),
    [
        (3, lambda k: np.zeros(2, np.float32), "declares observation_size = 3 but encode() returned shape (2,)"),
        (4, lambda k: np.zeros((2, 2), np.float32), "returned shape (2, 2)"),
        (2, lambda k: np.zeros(2 if k == 5 else 3, np.float32), "at K = 10"),
        (2, lambda k: np.array([0.0, np.nan], np.float32), "non-finite"),
        (2, lambda k: ["a", "b"], "failed to encode"),
        ("2", lambda k: np.zeros(2, np.float32), "must be a non-negative integer"),
    ],
)
def test_an_encoder_whose_output_breaks_its_declaration_is_a_config_error_naming_it(
    sine_registry, declared, output, message
):
    spec = StateEncoderSpec(
        name="liar",
        factory=lambda config, context: _SizedEncoder(declared, output),
        config_model=_Empty,
        description="d",
    )
    registry = _with(sine_registry, "liar", reml_state_encoders=[spec])
    config = resolve_config(registry, {"plugin": "sine", "preset": "smoke", "encoder": "liar", "policy": "toy-policy"})
    with pytest.raises(ConfigError) as caught:
        build_components(config)
    assert "encoder 'liar'" in str(caught.value) and message in str(caught.value)


def test_a_factory_that_raises_is_a_plugin_error_naming_the_component(sine_registry, monkeypatch):
    def broken(config, context):
        raise KeyError("width")

    spec = StateEncoderSpec(name="broken-enc", factory=broken, config_model=_Empty, description="d")
    registry = _with(sine_registry, "broken-enc", reml_state_encoders=[spec])
    config = resolve_config(
        registry, {"plugin": "sine", "preset": "smoke", "encoder": "broken-enc", "policy": "toy-policy"}
    )
    monkeypatch.delenv("REML_DEBUG", raising=False)
    with pytest.raises(
        PluginError, match=r"state encoder 'broken-enc' failed to build: KeyError: 'width' \(set REML_DEBUG=1"
    ):
        build_components(config)
    monkeypatch.setenv("REML_DEBUG", "1")
    with pytest.raises(PluginError) as caught:
        build_components(config)
    assert "Traceback (most recent call last)" in str(caught.value) and "in broken" in str(caught.value)
    assert isinstance(caught.value, UserError)  # the CLI prints it and exits 2


def test_describe_error_is_one_line_unless_debugging(monkeypatch):
    error = ValueError("bad")
    monkeypatch.setenv("REML_DEBUG", "0")
    assert "\n" not in describe_error(error)
    monkeypatch.setenv("REML_DEBUG", "yes")
    assert describe_error(error).startswith("ValueError: bad\n")


# -- what the core shows -------------------------------------------------------------------------


def test_reml_plugins_show_lists_options_with_types_defaults_limits_and_descriptions(installed_registry):
    [support] = plugins_cli.show(installed_registry, "support-set")
    rows = {row["key"]: row for row in support["options"]}
    assert rows["x_scale"]["default"] is None and "> 0" in rows["x_scale"]["constraints"]
    assert "family's input_scale" in rows["x_scale"]["description"]
    [core] = plugins_cli.show(installed_registry, "core")
    keys = {row["key"]: row for row in core["options"]}
    assert keys["train.env_steps"]["type"] == "int" and keys["train.env_steps"]["default"] == 100_000
    assert keys["train.n_envs"]["description"] and core["presets"] == CORE_PRESETS
    [sine] = plugins_cli.show(installed_registry, "sine")
    assert sine["recommended"]["encoder"] == "support-set" and "default" in sine["experiment_presets"]
    with pytest.raises(UserError, match="no component is named 'nope'"):
        plugins_cli.show(installed_registry, "nope")


def test_reml_plugins_show_from_the_command_line():
    ok = subprocess.run(
        [str(BIN / "reml-plugins"), "--show", "dense", "--json"], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    [dense] = json.loads(ok.stdout)
    assert dense["kind"] == "layer_pool" and any(row["key"] == "width" for row in dense["options"])
    text = subprocess.run([str(BIN / "reml-plugins"), "--show", "dense"], capture_output=True, text=True, timeout=60)
    assert "options (config section [pool], or --set pool.KEY=VALUE):" in text.stdout
    missing = subprocess.run([str(BIN / "reml-plugins"), "--show", "nope"], capture_output=True, text=True, timeout=60)
    assert (
        missing.returncode == 2
        and "no component is named 'nope'" in missing.stderr
        and "Traceback" not in missing.stderr
    )


def test_pool_diagnostics_are_logged_and_reported_whatever_their_names():
    from reml_core.reports import format_stat, render_run_report, stat_label
    from reml_core.results import ResultsDocument

    assert (stat_label("pool/dead_hidden_units"), format_stat("pool/dead_hidden_units", 0.25)) == (
        "dead hidden units",
        "25%",
    )
    assert format_stat("pool/spectral_norm", 3.14159) == "3.14" and format_stat("x", float("nan")) == "NaN"
    results = {
        "plugin": "p",
        "policy": "q",
        "encoder": "e",
        "encoder_privileged": False,
        "seed": 0,
        "test_tasks": 1,
        "methods": {},
        "curves": {},
        "timing_s": {},
        "versions": {},
        "config": {
            "preset": "smoke",
            "eval": {"sgd_lr": 0.01, "curve_steps": 1, "curve_lr": 0.1, "curve_tasks": 1, "steps": [0, 10]},
            "reward": {"name": "r"},
            "pool": {"name": "mine"},
        },
        "training": {
            "env_steps": 10,
            "history": [
                {
                    "timesteps": 10,
                    "validation/score": 1.0,
                    "validation/finetune_gain": 0.5,
                    "pool/spectral_norm": 2.5,
                    "pool/frozen_fraction": 0.5,
                }
            ],
            "policy_stats": {"entropy": 0.7},
        },
        "components": {"task": "facts the family states."},
    }
    report = render_run_report(ResultsDocument.from_json(results))
    assert "pool: spectral norm | pool: frozen fraction" in report and "| 2.5 | 50% |" in report
    assert "- task: facts the family states." in report and "entropy 0.7" in report
    assert "dead" not in report


def test_reml_run_works_with_the_scratch_plugin_disabled(tmp_path):
    environ = {**os.environ, "REML_DISABLE_PLUGINS": "scratch"}
    result = subprocess.run(
        [
            str(BIN / "reml-run"),
            "--plugin",
            "sine",
            "--preset",
            "smoke",
            "--out",
            str(tmp_path / "run"),
            "--set",
            "train.env_steps=256",
            "--set",
            "train.n_envs=8",
            "--set",
            "policy.n_steps=128",
            "--set",
            "eval.test_tasks=5",
            "--set",
            "train.progress=false",
        ],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(results["methods"]) == ["reml"]
    assert "mean squared error" in results["components"]["task"]  # the family's own facts
    refused = subprocess.run(
        [str(BIN / "reml-run"), "--plugin", "sine", "--baselines", "scratch", "--out", str(tmp_path / "no")],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )
    assert refused.returncode == 2 and "unknown baseline 'scratch'" in refused.stderr and not (tmp_path / "no").exists()
