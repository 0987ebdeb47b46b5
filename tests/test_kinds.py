"""One source of truth for the component kinds: every table, flag and field follows the record types.

Each record type in :mod:`reml_core.specs` declares its kind, hook, label, config section, whether
a section picks one by name, and its flag's help. These tests fail when a kind is added (or
renamed) in one place without the others: the command-line flags, the resolved config, a task
plugin's recommendation, the registry and the hooks.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import get_args

import pytest

from reml_core import hookspecs, specs
from reml_core.cli import bench, plugins, run, sweep
from reml_core.cli.common import user_config
from reml_core.config import RunConfig, _RawConfig, resolve_config
from reml_core.specs import CHOICE_FLAGS, KINDS, NAMED_SECTIONS, SECTIONS, SPEC_TYPES, Recommendation

#: The kinds no flag picks by name: a run may compare several baselines (--baselines, --methods).
PICKED_SEVERAL = {"baseline"}


def _experiment_options(parser) -> dict[str, object]:
    group = next(group for group in parser._action_groups if group.title == "experiment")
    return {option: action for action in group._group_actions for option in action.option_strings}


def test_the_kind_literal_lists_the_record_types_kinds():
    assert get_args(specs.Kind) == KINDS
    assert len(set(SECTIONS.values())) == len(KINDS), "two kinds share a config section"


def test_every_kind_has_its_hook_and_every_hook_its_kind():
    assert hookspecs.HOOKS_BY_KIND == specs.HOOKS
    assert sorted(name for name in dir(hookspecs) if name.startswith("reml_")) == sorted(specs.HOOKS.values())


def test_choice_flags_pick_every_kind_but_baselines():
    assert CHOICE_FLAGS == {"plugin": "task_sampler", **NAMED_SECTIONS}
    assert set(CHOICE_FLAGS.values()) == set(KINDS) - PICKED_SEVERAL
    for kind in CHOICE_FLAGS.values():
        spec = SPEC_TYPES[kind]
        assert spec.flag_help.strip() and spec.flag_examples, f"{spec.__name__} declares no flag help"


@pytest.mark.parametrize("module", [run, bench, sweep], ids=["reml-run", "reml-bench", "reml-sweep"])
def test_each_command_has_one_flag_per_choice_and_no_other_component_flag(module):
    options = _experiment_options(module.build_parser())
    assert set(options) == {f"--{flag}" for flag in CHOICE_FLAGS} | {"--preset", "--config", "--seed", "--set"}
    for flag, kind in CHOICE_FLAGS.items():
        action = options[f"--{flag}"]
        assert action.dest == flag and action.help
        for example in SPEC_TYPES[kind].flag_examples:
            assert example in action.help
    assert tuple(options["--preset"].choices) == specs.PRESETS


def test_reml_bench_takes_several_encoders_and_the_others_one():
    assert _experiment_options(bench.build_parser())["--encoder"].metavar == "A,B"
    assert "trained once per encoder" in _experiment_options(bench.build_parser())["--encoder"].help
    for module in (run, sweep):
        assert _experiment_options(module.build_parser())["--encoder"].metavar == "NAME"
    for flag in set(CHOICE_FLAGS) - {"encoder"}:
        assert _experiment_options(bench.build_parser())[f"--{flag}"].metavar == "NAME"


def test_resume_refuses_every_choice_flag():
    """--resume takes every setting from the folder, so each command's list of defining flags has them all."""
    for defining in (run.EXPERIMENT_FLAGS, bench.PLAN_FLAGS, sweep.PLAN_FLAGS):
        assert set(CHOICE_FLAGS) <= set(defining)


def test_a_flag_per_named_section_sets_its_name(tmp_path):
    (tmp_path / "c.toml").write_text("".join(f'{section} = "from-file-{section}"\n' for section in NAMED_SECTIONS))
    argv = ["--plugin", "sine", *(item for section in NAMED_SECTIONS for item in (f"--{section}", f"flag-{section}"))]
    assert user_config(run.build_parser().parse_args(argv)) == {
        "plugin": "sine",
        **{section: {"name": f"flag-{section}"} for section in NAMED_SECTIONS},
    }
    from_file = user_config(run.build_parser().parse_args(["--config", str(tmp_path / "c.toml")]))
    assert from_file == {section: {"name": f"from-file-{section}"} for section in NAMED_SECTIONS}


def test_every_kind_declares_the_build_context_its_factory_gets():
    from reml_core import interfaces
    from reml_core.experiment import STAGE_CONTEXTS

    assert set(STAGE_CONTEXTS) == set(KINDS)
    for kind, spec in SPEC_TYPES.items():
        context = getattr(interfaces, spec.context)
        assert issubclass(context, interfaces.BuildContext) and STAGE_CONTEXTS[kind] is context
    # a later stage holds every field of an earlier one: a baseline sees the task sampler an encoder sees
    assert issubclass(interfaces.BaselineContext, interfaces.TaskContext)


def test_sections_of_one_table_per_component_are_what_the_config_and_reml_plugins_treat_so(toy_registry):
    assert specs.TABLE_EACH_KINDS == {"baseline"}  # a new kind of that shape is declared on its record type
    types = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    for kind, section in SECTIONS.items():
        per_component = kind in specs.TABLE_EACH_KINDS
        assert ("dict[" in str(types[section])) == per_component
        assert ("dict[str, dict" in str(_RawConfig.model_fields[section].annotation)) == per_component


def test_recommendation_names_one_component_per_named_section():
    components = [f.name for f in dataclasses.fields(Recommendation) if f.name not in ("baselines", "run_baselines")]
    assert components == list(NAMED_SECTIONS)


def test_run_config_has_one_field_per_section_and_round_trips(toy_registry):
    assert [f.name for f in dataclasses.fields(RunConfig) if f.name != "core"] == list(SECTIONS.values())
    assert list(_RawConfig.model_fields)[-len(SECTIONS) :] == list(SECTIONS.values())
    config = resolve_config(toy_registry, {"plugin": "toy", "policy": "toy-policy-2"}, baselines=["toy-baseline"])
    data = config.to_dict()
    assert set(SECTIONS.values()) <= set(data)
    for section in NAMED_SECTIONS:  # each from the flag/file if given, else from the recommendation
        expected = "toy-policy-2" if section == "policy" else getattr(config.task.spec.recommended, section)
        assert data[section]["name"] == getattr(config, section).name == expected
    assert list(data["baselines"]) == ["toy-baseline"]
    assert resolve_config(toy_registry, data).to_dict() == data


def test_the_registry_and_reml_plugins_know_every_kind(installed_registry):
    assert {entry.kind for entry in installed_registry.components()} == set(KINDS)
    assert list(plugins.listing(installed_registry)) == list(KINDS)
    for kind in CHOICE_FLAGS.values():  # the flags' help shows names that exist
        for example in SPEC_TYPES[kind].flag_examples:
            assert example in installed_registry.names(kind), f"--help names {kind} {example!r}, which is not built in"


def test_the_commands_build_their_flags_before_importing_pydantic():
    """specs.py imports only the standard library, so the tools handle Ctrl-C from the start."""
    code = (
        "import sys; import reml_core.cli.run, reml_core.cli.bench, reml_core.cli.sweep, reml_core.cli.plugins; "
        "from reml_core.cli import run; run.build_parser(); print(sorted(m for m in ('pydantic', 'torch', 'yaml') if m "
        "in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
