"""Property-based fuzzing of the config loader: no input makes it raise anything but a clean ConfigError."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reml_core.config import parse_assignment, parse_config_text, resolve_config
from reml_core.errors import ConfigError

# Real keys mixed with noise, so the fuzzer reaches deep into every section's model.
KEYS = st.sampled_from(
    [
        "plugin",
        "preset",
        "seed",
        "env",
        "train",
        "eval",
        "task",
        "encoder",
        "pool",
        "reward",
        "policy",
        "baselines",
        "name",
        "depth",
        "inner_lr",
        "inner_steps",
        "shots",
        "steps",
        "test_tasks",
        "hidden_layers",
        "width",
        "loss_at",
        "n_steps",
        "learning_rate",
        "net_arch",
        "support_points",
        "amplitude_low",
        "maml",
        "scratch",
        "iterations",
        "sine",
        "oracle",
        "ppo-mlp",
        "dense",
        "neg-mse",
        "smoke",
        "full",
    ]
) | st.text(max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["sine", "oracle", "support-set", "ppo-lstm", "dense", "smoke", "full", "maml"])
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5), max_leaves=25
)
CONFIGS = st.dictionaries(KEYS, VALUES, max_size=8)


def _resolve(registry, data):
    try:
        resolve_config(registry, data, baselines=["scratch"])
    except ConfigError as error:
        assert error.problems and all(isinstance(p, str) and p and "\n" not in p for p in error.problems)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=CONFIGS)
def test_any_mapping_resolves_or_fails_cleanly(installed_registry, data):
    _resolve(installed_registry, data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300), fmt=st.sampled_from(["toml", "yaml"]))
def test_any_text_parses_or_fails_cleanly(installed_registry, text, fmt):
    try:
        data = parse_config_text(text, fmt)
    except ConfigError as error:
        assert len(error.problems) == 1 and "\n" not in error.problems[0]
        return
    _resolve(installed_registry, data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=CONFIGS, fmt=st.sampled_from(["yaml", "json-as-yaml"]))
def test_serialised_configs_round_trip_through_the_parser(installed_registry, data, fmt):
    try:
        text = yaml.safe_dump(data) if fmt == "yaml" else json.dumps(data)
    except (ValueError, yaml.YAMLError):
        return
    try:
        parsed = parse_config_text(text, "yaml")
    except ConfigError:
        return
    _resolve(installed_registry, parsed)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=60))
def test_any_set_assignment_is_a_dict_or_a_clean_error(text):
    try:
        assert isinstance(parse_assignment(text), dict)
    except ConfigError as error:
        assert len(error.problems) == 1


@pytest.mark.parametrize(
    "text", ["[" * 5000, "a: " + "[" * 3000, "x = " + "[" * 3000, "&a [*a]", "!!python/object:os.system {}"]
)
def test_pathological_documents(text):
    for fmt in ("yaml", "toml"):
        try:
            parse_config_text(text, fmt)
        except ConfigError as error:
            assert len(error.problems) == 1
