"""A renamed setting is declared once, with ``reml_core.settings.renamed``, and everything else reads it
from the model: a plugin renames a setting of its own without the core naming it anywhere."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from reml_core import hookimpl
from reml_core.config import deep_merge, parse_assignment, renamed_settings, resolve_config, same_setting
from reml_core.errors import ConfigError
from reml_core.registry import PluginRegistry
from reml_core.settings import StrictModel, renamed, renames_of
from reml_core.specs import BaselineSpec

CORE = Path(__file__).resolve().parent.parent / "reml_core"


class WidgetConfig(StrictModel):
    """A third-party baseline's options, one of them renamed."""

    step_sgd_lr: float = renamed("step_sgd_lr", "step_lr", 0.1, gt=0, description="SGD step of the widget")
    rounds: int = 3


def _unused(config, context):  # pragma: no cover - resolving a config never builds it
    raise AssertionError("not built")


@pytest.fixture
def widget_registry() -> PluginRegistry:
    """The installed plugins and a plugin the core has never heard of, with a renamed setting."""
    plugin = types.ModuleType("widget_plugin")

    @hookimpl
    def reml_baselines():
        yield BaselineSpec(name="widget", factory=_unused, config_model=WidgetConfig, description="A widget.")

    plugin.reml_baselines = reml_baselines
    registry = PluginRegistry.discover(disabled=())
    registry.register(plugin, name="widget", distribution="widget-dist")
    return registry


def _user(options: dict) -> dict:
    return {"plugin": "sine", "baselines": {"widget": options}}


def test_the_rename_is_declared_once_and_read_from_the_model():
    assert renames_of(WidgetConfig) == {"step_sgd_lr": ("step_lr",)}
    assert "formerly step_lr, still accepted" in WidgetConfig.model_fields["step_sgd_lr"].description
    widget = WidgetConfig(step_lr=0.3)
    assert widget.step_sgd_lr == 0.3 and widget.step_lr == 0.3  # the former name reads it (deprecated)
    assert widget.model_dump() == {"step_sgd_lr": 0.3, "rounds": 3}


def test_a_plugin_s_renamed_setting_works_in_every_layer_without_the_core_knowing_it(widget_registry):
    table = renamed_settings(widget_registry)
    assert table["baselines.widget.step_lr"] == "baselines.widget.step_sgd_lr"
    assert same_setting("baselines.widget.step_lr", "baselines.widget.step_sgd_lr", table)
    assert not same_setting("baselines.widget.step_lr", "baselines.maml.inner_sgd_lr", table)
    # the former name resolves; config.json writes the new one
    config = resolve_config(widget_registry, _user({"step_lr": 0.25}))
    assert config.baselines["widget"].config.step_sgd_lr == 0.25
    assert config.to_dict()["baselines"]["widget"] == {"step_sgd_lr": 0.25, "rounds": 3}
    # a later layer under either name replaces an earlier one
    for first, second in (("step_lr", "step_sgd_lr"), ("step_sgd_lr", "step_lr")):
        user = deep_merge(_user({first: 0.5}), parse_assignment(f"baselines.widget.{second}=0.75"), table)
        assert resolve_config(widget_registry, user).baselines["widget"].config.step_sgd_lr == 0.75
    # both names in one layer: the model's own error, naming both
    with pytest.raises(ConfigError) as raised:
        resolve_config(widget_registry, _user({"step_lr": 0.5, "step_sgd_lr": 0.5}))
    assert "step_sgd_lr and its former name step_lr are both given" in raised.value.problems[0]


def test_a_sweep_over_a_plugin_s_renamed_setting_takes_it_once(widget_registry):
    from reml_core.errors import UserError
    from reml_core.sweep import FileSweep, combine_space, parse_grid_flag

    both = [parse_grid_flag("baselines.widget.step_lr=0.1,0.2"), parse_grid_flag("baselines.widget.step_sgd_lr=0.3")]
    with pytest.raises(UserError, match="given twice"):
        combine_space(FileSweep(), both, [], None, renamed_settings(widget_registry))


def test_without_the_plugin_its_former_name_means_nothing_to_the_core(installed_registry):
    """The table comes from the registered models: without the widget plugin, its keys are not renames."""
    assert not any("widget" in key for key in renamed_settings(installed_registry))
    assert deep_merge({"a": {"step_lr": 1}}, {"a": {"step_sgd_lr": 2}}, renamed_settings(installed_registry)) == {
        "a": {"step_lr": 1, "step_sgd_lr": 2}
    }


def test_no_plugin_s_setting_names_appear_in_the_core():
    """MAML's renamed settings (and their former names) live in the MAML plugin only."""
    for path in CORE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for name in ("inner_sgd_lr", "meta_adam_lr", "meta_lr", "RENAMED_KEYS"):
            assert name not in text, f"{path.relative_to(CORE.parent)} names {name}"


def test_no_module_outside_the_command_line_imports_it():
    """The library never reaches into reml_core.cli (the command line wraps the library, not the reverse)."""
    import ast

    for path in [*CORE.rglob("*.py"), *(CORE.parent / "plugins").rglob("*.py")]:
        if path.is_relative_to(CORE / "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            assert not any(name == "reml_core.cli" or name.startswith("reml_core.cli.") for name in names), (
                f"{path.relative_to(CORE.parent)} imports {names}"
            )
