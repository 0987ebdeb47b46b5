"""Config resolution: layering of presets, files and flags; one clear line per invalid value."""

from __future__ import annotations

import pytest

from reml_core.config import deep_merge, load_config_file, parse_assignment, parse_config_text, resolve_config
from reml_core.errors import ConfigError


def _problems(registry, user, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        resolve_config(registry, user, **kwargs)
    return raised.value.problems


def test_the_task_plugin_recommends_every_component(toy_registry):
    config = resolve_config(toy_registry, {"plugin": "toy"})
    assert (config.encoder.name, config.pool.name, config.reward.name, config.policy.name) == (
        "toy-encoder",
        "toy-pool",
        "toy-reward",
        "toy-policy",
    )
    assert config.core.preset == "default" and config.core.seed == 0
    assert config.pool.config.hidden_layers == 6


def test_layers_model_defaults_then_preset_then_user(toy_registry):
    config = resolve_config(
        toy_registry,
        {"plugin": "toy", "preset": "smoke", "pool": {"width": 3}, "train": {"checkpoint_every": 7}},
    )
    assert config.pool.config.hidden_layers == 2  # the pool's smoke preset
    assert config.pool.config.width == 3  # the user's value
    assert config.task.config.points == 5  # the task's smoke preset
    assert config.core.train.env_steps == 100  # the task plugin's experiment preset
    assert config.core.train.checkpoint_every == 7
    assert config.core.eval.test_tasks == 3
    overridden = resolve_config(toy_registry, {"plugin": "toy", "preset": "smoke", "pool": {"hidden_layers": 9}})
    assert overridden.pool.config.hidden_layers == 9


def test_resolved_config_round_trips(toy_registry):
    config = resolve_config(
        toy_registry, {"plugin": "toy", "policy": "toy-policy-2", "seed": 4}, baselines=["toy-baseline"]
    )
    data = config.to_dict()
    assert data["policy"] == {"name": "toy-policy-2", "learning_rate": 3e-4, "n_steps": 64}
    assert set(data["baselines"]) == {"toy-baseline"}
    assert resolve_config(toy_registry, data).to_dict() == data


def test_unknown_key_names_its_path(toy_registry):
    problems = _problems(toy_registry, {"plugin": "toy", "pool": {"hiden_layers": 3}, "colour": "red"})
    assert problems == ["colour: Extra inputs are not permitted"]
    problems = _problems(toy_registry, {"plugin": "toy", "pool": {"hiden_layers": 3}, "env": {"detph": 4}})
    assert "env.detph: Extra inputs are not permitted; did you mean 'depth'?" in problems
    assert "pool.hiden_layers: Extra inputs are not permitted; did you mean 'hidden_layers'?" in problems


def test_wrong_types_and_ranges_name_their_paths(toy_registry):
    problems = _problems(
        toy_registry,
        {"plugin": "toy", "seed": -1, "env": {"depth": 1}, "pool": {"width": "wide"}, "policy": {"learning_rate": 0}},
    )
    assert "seed: Input should be greater than or equal to 0 (got -1)" in problems
    assert "env.depth: Input should be greater than or equal to 2 (got 1)" in problems
    assert any(p.startswith("pool.width: Input should be a valid integer") for p in problems)
    assert "policy.learning_rate: Input should be greater than 0 (got 0)" in problems
    assert len(problems) == 4


def test_unknown_component_names_list_the_available_ones(toy_registry):
    assert _problems(toy_registry, {"plugin": "nosuch"}) == ["plugin: unknown task plugin 'nosuch' (available: toy)"]
    problems = _problems(toy_registry, {"plugin": "toy", "policy": {"name": "ppo-xl"}}, baselines=["maml"])
    assert problems == [
        "policy.name: unknown policy backend 'ppo-xl' (available: toy-policy, toy-policy-2)",
        "baselines.maml: unknown baseline 'maml' (available: toy-baseline)",
    ]


def test_missing_plugin_says_how_to_choose_one(toy_registry):
    assert _problems(toy_registry, {}) == ["plugin: no task plugin given; use --plugin NAME (available: toy)"]


def test_lists_are_checked_and_sorted(toy_registry):
    config = resolve_config(toy_registry, {"plugin": "toy", "eval": {"shots": [10, 5], "steps": [10, 0, 1]}})
    assert config.core.eval.shots == [5, 10] and config.core.eval.steps == [0, 1, 10]
    problems = _problems(toy_registry, {"plugin": "toy", "eval": {"shots": [0, 5], "steps": [1, 1]}})
    assert len(problems) == 2
    assert problems[0].startswith("eval.shots: Value error, every K must be positive")
    assert problems[1].startswith("eval.steps: Value error, values must be distinct")


def test_toml_and_yaml_files(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('plugin = "toy"\nseed = 3\npolicy = "toy-policy-2"\n[pool]\nwidth = 4\n')
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("plugin: toy\nseed: 3\npolicy: toy-policy-2\npool:\n  width: 4\n")
    assert (
        load_config_file(toml)
        == load_config_file(yaml_file)
        == {
            "plugin": "toy",
            "seed": 3,
            "policy": "toy-policy-2",
            "pool": {"width": 4},
        }
    )


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.toml", "plugin = \n", "invalid TOML"),
        ("bad.yaml", "plugin: [toy\n", "invalid YAML"),
        ("list.yaml", "- plugin\n- toy\n", "the top level must be a table of settings, not a list"),
        ("run.json", "{}", "unsupported file type '.json'"),
    ],
)
def test_unreadable_files_are_one_line_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config_file(path)
    assert len(raised.value.problems) == 1 and "\n" not in raised.value.problems[0]
    assert message in raised.value.problems[0] and str(path) in raised.value.problems[0]


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="--config: file not found: .*nope.toml"):
        load_config_file(tmp_path / "nope.toml")


def test_empty_file_is_an_empty_config():
    assert parse_config_text("", "yaml") == {} and parse_config_text("", "toml") == {}


def test_set_assignments_and_merging():
    assert parse_assignment("env.inner_lr=0.001") == {"env": {"inner_lr": 0.001}}
    assert parse_assignment("eval.shots=[5, 10]") == {"eval": {"shots": [5, 10]}}
    assert parse_assignment("policy.name=ppo-lstm") == {"policy": {"name": "ppo-lstm"}}
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        parse_assignment("env.inner_lr")
    base = {"env": {"depth": 5, "inner_lr": 0.1}, "seed": 1}
    assert deep_merge(base, {"env": {"inner_lr": 0.2}}) == {"env": {"depth": 5, "inner_lr": 0.2}, "seed": 1}
    assert base["env"]["inner_lr"] == 0.1  # inputs are not mutated


def test_the_rewards_fine_tuning_follows_the_evaluation_protocol_unless_set(installed_registry):
    """env.finetune_lr/steps (what a reward measures) cannot drift from eval.sgd_lr/steps (what is reported)
    silently."""
    follow = resolve_config(installed_registry, {"plugin": "sine", "eval": {"sgd_lr": 0.02, "steps": [0, 5]}})
    assert (follow.core.env.finetune_lr, follow.core.env.finetune_steps) == (0.02, 5)
    own = resolve_config(
        installed_registry,
        {"plugin": "sine", "eval": {"sgd_lr": 0.02}, "env": {"finetune_lr": 0.05, "finetune_steps": 3}},
    )
    assert (own.core.env.finetune_lr, own.core.env.finetune_steps) == (0.05, 3)
    again = resolve_config(installed_registry, follow.to_dict())  # a run's config.json reads back to the same values
    assert again.core.env == follow.core.env


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/data/omni #2", "/data/omni #2"),  # YAML would drop " #2" as a comment
        ("#2", "#2"),  # ... and read this as null
        ("[5, 10] # the usual", "[5, 10] # the usual"),
        ("&anchor value", "&anchor value"),  # YAML would drop the anchor
        ("!!str 5", "!!str 5"),  # ... or the tag
        ("*.png", "*.png"),  # an alias YAML cannot resolve
        ("note: hi", "note: hi"),  # not a one-key mapping
        ("- a", "- a"),  # not a one-item list
        ("1:30", "1:30"),  # not YAML 1.1's sexagesimal 90
        ("2024-01-01", "2024-01-01"),  # not a date object
        ("no", "no"),  # a word (pydantic reads yes/no/on/off for a bool setting itself)
        ("line one\nline two", "line one\nline two"),  # not folded into one line
        ("  padded  ", "padded"),
        # what YAML reads as written is still read as YAML
        ("0.001", 0.001),
        ("-3", -3),
        ("true", True),
        ("null", None),
        ("[5, 10]", [5, 10]),
        ("{a: 1, b: [2]}", {"a": 1, "b": [2]}),
        ("a#b", "a#b"),
        ("'quoted # kept'", "quoted # kept"),
        ("ppo-lstm", "ppo-lstm"),
        ("", ""),
    ],
)
def test_a_set_value_is_never_silently_truncated_or_changed(raw, expected):
    assert parse_assignment(f"task.root={raw}") == {"task": {"root": expected}}


def test_a_yaml_config_file_that_gives_a_key_twice_is_refused(tmp_path):
    """YAML keeps the last of two equal keys without a word (TOML refuses them): refused, naming the key and line."""
    path = tmp_path / "c.yaml"
    path.write_text("plugin: sine\nenv:\n  depth: 3\n  inner_lr: 0.01\n  depth: 5\n")
    with pytest.raises(ConfigError) as raised:
        load_config_file(path)
    assert raised.value.problems == [
        f"--config: {path}: invalid YAML: the key 'depth' is given twice (line 5); YAML would keep only the last one"
    ]
    # a merge key (<<: *base) with keys overriding it is not a repeat
    path.write_text("base: &b {depth: 3, inner_lr: 0.01}\nenv:\n  <<: *b\n  depth: 5\n")
    assert load_config_file(path)["env"] == {"depth": 5, "inner_lr": 0.01}
