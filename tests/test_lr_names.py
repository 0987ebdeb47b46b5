"""A learning rate's name says which optimiser it drives; the former, ambiguous names stay accepted.

``env.inner_lr`` was Adam's rate in the env while MAML's ``inner_lr`` was an SGD step: they are now
``env.inner_adam_lr``, ``env.finetune_sgd_lr``, ``eval.curve_adam_lr``, ``baselines.maml.inner_sgd_lr`` and
``baselines.maml.meta_adam_lr``. Every way a user gives a setting accepts the former name, the
resolved config (``config.json``) writes only the new one, and both at once is an error naming both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reml_core.config import (
    deep_merge,
    load_config_file,
    load_resolved,
    parse_assignment,
    renamed_settings,
    resolve_config,
)
from reml_core.errors import ConfigError

#: (section path, former name, new name, a value other than the default)
RENAMED = [
    ("env", "inner_lr", "inner_adam_lr", 0.003),
    ("env", "finetune_lr", "finetune_sgd_lr", 0.05),
    ("eval", "curve_lr", "curve_adam_lr", 0.02),
    ("baselines.maml", "inner_lr", "inner_sgd_lr", 0.2),
    ("baselines.maml", "meta_lr", "meta_adam_lr", 0.002),
]
IDS = [f"{section}.{old}" for section, old, _, _ in RENAMED]


def _put(path: list[str], values: dict[str, Any]) -> dict[str, Any]:
    return {path[0]: _put(path[1:], values)} if path else dict(values)


def _user(section: str, values: dict[str, Any]) -> dict[str, Any]:
    return {"plugin": "sine", **_put(section.split("."), values)}


def _section(resolved: dict[str, Any], section: str) -> dict[str, Any]:
    for part in section.split("."):
        resolved = resolved[part]
    return resolved


def _model(config, section: str) -> Any:
    return {"env": config.core.env, "eval": config.core.eval}.get(section) or config.baselines["maml"].config


def _resolved_value(config, section: str, name: str) -> Any:
    return getattr(_model(config, section), name)


@pytest.mark.parametrize(("section", "old", "new", "value"), RENAMED, ids=IDS)
def test_the_new_name_is_what_the_resolved_config_writes(installed_registry, section, old, new, value):
    config = resolve_config(installed_registry, _user(section, {new: value}))
    assert _resolved_value(config, section, new) == value
    written = _section(config.to_dict(), section)
    assert written[new] == value and old not in written


@pytest.mark.parametrize(("section", "old", "new", "value"), RENAMED, ids=IDS)
def test_the_former_name_is_accepted_from_a_dict_a_set_flag_a_file_and_the_api(
    installed_registry, tmp_path, section, old, new, value
):
    from reml_core.api import user_settings

    expected = resolve_config(installed_registry, _user(section, {new: value})).to_dict()
    file = tmp_path / "old.toml"
    file.write_text(f'plugin = "sine"\n[{section}]\n{old} = {value}\n')
    head, _, last = section.partition(".")
    given = {
        "dict": _user(section, {old: value}),
        "--set": deep_merge({"plugin": "sine"}, parse_assignment(f"{section}.{old}={value}")),
        "file": load_config_file(file),
        "overrides": user_settings(overrides={f"{section}.{old}": value}, plugin="sine"),
        "keyword": user_settings(
            plugin="sine", **{head: _put(last.split("."), {old: value}) if last else {old: value}}
        ),
    }
    for how, user in given.items():
        config = resolve_config(installed_registry, user)
        assert _resolved_value(config, section, new) == value, how
        assert new in _model(config, section).model_fields_set, how  # given, not a default
        assert config.to_dict() == expected, how  # config.json: the new name only, the same value


@pytest.mark.parametrize(("section", "old", "new", "value"), RENAMED, ids=IDS)
def test_both_names_at_once_is_an_error_naming_both(installed_registry, section, old, new, value):
    with pytest.raises(ConfigError) as raised:
        resolve_config(installed_registry, _user(section, {old: value, new: value}))
    [problem] = raised.value.problems
    assert problem.startswith(f"{section}: ") and old in problem and new in problem, problem


@pytest.mark.parametrize(("section", "old", "new", "value"), RENAMED, ids=IDS)
def test_a_later_layer_under_either_name_replaces_an_earlier_one(installed_registry, section, old, new, value):
    """A file with the former name and ``--set`` with the new one (or the other way round): the flag wins, as for any
    key."""
    for first, second in ((old, new), (new, old)):
        user = deep_merge(
            _user(section, {first: 0.123}),
            parse_assignment(f"{section}.{second}={value}"),
            renamed_settings(installed_registry),
        )
        assert _resolved_value(resolve_config(installed_registry, user), section, new) == value


@pytest.mark.parametrize(("section", "old", "new", "value"), RENAMED, ids=IDS)
def test_a_set_flag_under_either_name_replaces_the_config_file_s_setting(
    installed_registry, tmp_path, section, old, new, value
):
    """The command line's own layering (reml_core.cli.common.user_config): a file, then --set."""
    from reml_core.cli import run
    from reml_core.cli.common import user_config

    for first, second in ((old, new), (new, old)):
        file = tmp_path / f"{first}.toml"
        file.write_text(f'plugin = "sine"\n[{section}]\n{first} = 0.123\n')
        args = run.build_parser().parse_args(["--config", str(file), "--set", f"{section}.{second}={value}"])
        user = user_config(args, registry=installed_registry)
        assert _resolved_value(resolve_config(installed_registry, user), section, new) == value


@pytest.mark.parametrize(("section", "old", "new", "value"), RENAMED, ids=IDS)
def test_a_bad_value_under_the_former_name_is_reported_under_that_name(installed_registry, section, old, new, value):
    with pytest.raises(ConfigError) as raised:
        resolve_config(installed_registry, _user(section, {old: -1}))
    assert raised.value.problems == [f"{section}.{old}: Input should be greater than 0 (got -1)"]


def test_unknown_keys_are_still_refused(installed_registry):
    for section, key in (
        ("env", "inner_sgd_lr"),
        ("env", "inner_lrx"),
        ("baselines.maml", "inner_adam_lr"),
        ("baselines.maml", "meta_sgd_lr"),
    ):
        with pytest.raises(ConfigError) as raised:
            resolve_config(installed_registry, _user(section, {key: 0.1}))
        [problem] = raised.value.problems  # the message may go on with "; did you mean ...?"
        assert problem.startswith(f"{section}.{key}: Extra inputs are not permitted")


def test_the_former_attribute_names_still_read_the_settings():
    from reml_core.settings import EnvConfig
    from reml_plugins.maml.config import MAMLConfig

    env = EnvConfig(inner_lr=0.003, finetune_sgd_lr=0.05)
    assert (env.inner_lr, env.inner_adam_lr, env.finetune_lr, env.finetune_sgd_lr) == (0.003, 0.003, 0.05, 0.05)
    maml = MAMLConfig(inner_lr=0.2, meta_adam_lr=0.002)
    assert (maml.inner_lr, maml.inner_sgd_lr, maml.meta_lr, maml.meta_adam_lr) == (0.2, 0.2, 0.002, 0.002)
    assert set(maml.model_dump()) >= {"inner_sgd_lr", "meta_adam_lr"} and not {"inner_lr", "meta_lr"} & set(
        maml.model_dump()
    )


def test_a_deliberate_finetune_rate_under_the_former_name_is_not_overridden_by_the_protocol(installed_registry):
    """ExperimentConfig makes env.finetune_sgd_lr follow eval.sgd_lr unless it was set; set under its former name
    counts."""
    follow = resolve_config(installed_registry, {"plugin": "sine", "eval": {"sgd_lr": 0.02}})
    assert follow.core.env.finetune_sgd_lr == 0.02
    own = resolve_config(installed_registry, {"plugin": "sine", "eval": {"sgd_lr": 0.02}, "env": {"finetune_lr": 0.05}})
    assert own.core.env.finetune_sgd_lr == 0.05


def test_reml_plugins_show_lists_the_new_names_and_mentions_the_former(capsys):
    from reml_core.cli.plugins import main

    assert main(["--show", "core"]) == 0
    core = capsys.readouterr().out
    assert "env.inner_adam_lr: float" in core and "env.finetune_sgd_lr: float" in core
    assert "formerly inner_lr" in core and "formerly finetune_lr" in core and "formerly curve_lr" in core
    assert main(["--show", "maml"]) == 0
    maml = capsys.readouterr().out
    assert "inner_sgd_lr: float" in maml and "meta_adam_lr: float" in maml
    assert "formerly inner_lr" in maml and "formerly meta_lr" in maml


# -- a real run's config.json ---------------------------------------------------------------------


def _rename_back(data: dict[str, Any]) -> dict[str, Any]:
    """A config.json as REML wrote it before the rename."""
    old = json.loads(json.dumps(data))
    for section, former, new, _ in RENAMED:
        table = _section(old, section)
        table[former] = table.pop(new)
    return old


@pytest.fixture(scope="module")
def run_with_former_names(tmp_path_factory) -> Path:
    """A tiny reml-run given every renamed setting under its former name (MAML compared too)."""
    from helpers.runs import tiny_run

    out = tmp_path_factory.mktemp("lr-names") / "run"
    sets = [arg for section, old, _, value in RENAMED for arg in ("--set", f"{section}.{old}={value}")]
    return tiny_run(
        out, *sets, "--baselines", "scratch,maml", "--set", "baselines.maml.iterations=3"
    )  # options never add a baseline


@pytest.mark.slow
def test_a_run_writes_the_new_names_and_reads_its_config_back(run_with_former_names, installed_registry):
    run = run_with_former_names
    for path in [run / "config.json", *sorted(run.glob("checkpoints/*/config.json"))]:
        data = json.loads(path.read_text())
        for section, old, new, value in RENAMED:
            table = _section(data, section)
            assert table[new] == value and old not in table, (path, section, new)
    assert load_resolved(run / "config.json", installed_registry).to_dict() == json.loads(
        (run / "config.json").read_text()
    )


@pytest.mark.slow
def test_a_config_json_with_the_former_names_loads_and_resumes(run_with_former_names, installed_registry, tmp_path):
    import shutil

    from reml_core.pipeline import check_resumable

    run = tmp_path / "copy"
    shutil.copytree(run_with_former_names, run)
    written = json.loads((run / "config.json").read_text())
    old = _rename_back(written)
    assert "inner_lr" in old["env"] and "meta_lr" in old["baselines"]["maml"]
    (run / "config.json").write_text(json.dumps(old))
    config = load_resolved(run / "config.json", installed_registry)
    assert config.to_dict() == written
    check_resumable(config, run, installed_registry)  # the checkpoint's config (new names) matches: no error


@pytest.mark.parametrize(("section", "old", "new", "value"), RENAMED, ids=IDS)
def test_a_sweep_takes_a_setting_once_whichever_name_it_is_swept_under(installed_registry, section, old, new, value):
    from reml_core.errors import UserError
    from reml_core.sweep import FileSweep, combine_space, parse_grid_flag

    renames = renamed_settings(installed_registry)
    both = [parse_grid_flag(f"{section}.{old}=0.1,0.2"), parse_grid_flag(f"{section}.{new}=0.3")]
    with pytest.raises(UserError, match=f"given twice \\(the same setting as {section}.{old}"):
        combine_space(FileSweep(), both, [], None, renames)
    # a flag under the new name replaces the file's entry under the former name, and the reverse
    for file_key, flag_key in ((old, new), (new, old)):
        file = FileSweep(grid=[parse_grid_flag(f"{section}.{file_key}=0.1,0.2")])
        space = combine_space(file, [parse_grid_flag(f"{section}.{flag_key}={value}")], [], None, renames)
        assert [(d.key, d.values) for d in space.grid] == [(f"{section}.{flag_key}", (value,))]
    unrelated = combine_space(
        FileSweep(), [parse_grid_flag(f"{section}.{new}=0.3"), parse_grid_flag("env.depth=3,4")], [], None, renames
    )
    assert len(unrelated.grid) == 2
