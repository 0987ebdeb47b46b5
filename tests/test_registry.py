"""The plugin registry: discovery by entry point, conflicts, broken and disabled plugins."""

from __future__ import annotations

import types

import pytest
from pydantic import BaseModel

from reml_core import hookimpl
from reml_core.errors import PluginConflictError, UnknownComponentError
from reml_core.registry import PluginRegistry, PluginWarning, disabled_plugins
from reml_core.specs import KINDS, PolicySpec, RewardSpec


class _Empty(BaseModel):
    pass


def _plugin(**hooks) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{name: hookimpl(function) for name, function in hooks.items()})


def _reward(name: str) -> RewardSpec:
    return RewardSpec(
        name=name, factory=lambda config, context: None, config_model=_Empty, description=f"{name} reward."
    )


def test_components_are_indexed_by_kind_and_name(toy_registry):
    entry = toy_registry.get("policy", "toy-policy-2")
    assert entry.plugin == "toy" and entry.distribution == "toy-dist"
    assert toy_registry.names("policy") == ["toy-policy", "toy-policy-2"]
    assert {kind: len(toy_registry.names(kind)) for kind in KINDS} == {
        "task_sampler": 1,
        "state_encoder": 1,
        "layer_pool": 1,
        "reward": 1,
        "policy": 2,
        "baseline": 1,
    }
    # the same name under another kind is a different component
    toy_registry.register(_plugin(reml_rewards=lambda: [_reward("toy-policy")]), name="other")
    assert toy_registry.get("reward", "toy-policy").plugin == "other"


def test_unknown_name_lists_what_is_available(toy_registry):
    with pytest.raises(
        UnknownComponentError, match=r"unknown policy backend 'nope' \(available: toy-policy, toy-policy-2\)"
    ):
        toy_registry.get("policy", "nope")


def test_two_plugins_claiming_one_name_is_an_error_naming_both(toy_registry):
    clash = _plugin(
        reml_policies=lambda: [PolicySpec(name="toy-policy", factory=print, config_model=_Empty, description="Clash.")]
    )
    with pytest.raises(PluginConflictError) as raised:
        toy_registry.register(clash, name="clash", distribution="clash-dist")
    message = str(raised.value)
    assert "'toy-policy'" in message and "'toy' (toy-dist)" in message and "'clash' (clash-dist)" in message


def test_a_plugin_that_raises_in_its_hook_is_reported_and_the_others_keep_working(toy_registry):
    def broken():
        raise RuntimeError("database unreachable")

    with pytest.warns(
        PluginWarning, match=r"plugin 'broken' \(broken-dist\) failed in reml_rewards\(\).*database unreachable"
    ):
        toy_registry.register(
            _plugin(reml_rewards=broken, reml_baselines=lambda: []), name="broken", distribution="broken-dist"
        )
    assert toy_registry.names("reward") == ["toy-reward"]
    assert toy_registry.get("task_sampler", "toy").plugin == "toy"


@pytest.mark.parametrize(
    ("returned", "complaint"),
    [
        (None, "expected an iterable of RewardSpec, got NoneType"),
        ("neg-mse", "expected an iterable of RewardSpec, got str"),
        ([{"name": "dict-record"}], "expected RewardSpec records, got dict"),
        (
            [PolicySpec(name="wrong-kind", factory=print, config_model=_Empty, description="x")],
            "expected RewardSpec records, got PolicySpec",
        ),
    ],
)
def test_malformed_records_are_reported_by_plugin_name_and_skipped(empty_registry, returned, complaint):
    with pytest.warns(PluginWarning, match=rf"plugin 'sloppy'.*{complaint}"):
        empty_registry.register(_plugin(reml_rewards=lambda: returned), name="sloppy")
    assert empty_registry.names("reward") == []


def test_an_invalid_record_fails_inside_the_plugin_that_builds_it(empty_registry):
    def bad_name():
        return [RewardSpec(name="Not A Name", factory=print, config_model=_Empty, description="x")]

    def no_model():
        return [RewardSpec(name="ok", factory=print, config_model=dict, description="x")]

    with pytest.warns(PluginWarning, match=r"plugin 'bad'.*must be lowercase"):
        empty_registry.register(_plugin(reml_rewards=bad_name), name="bad")
    with pytest.warns(PluginWarning, match=r"plugin 'nomodel'.*pydantic model class"):
        empty_registry.register(_plugin(reml_rewards=no_model), name="nomodel")
    assert empty_registry.names("reward") == []


def test_a_misspelled_hookimpl_is_caught_and_the_plugin_skipped(empty_registry):
    misspelled = _plugin(reml_reward=lambda: [_reward("never")])  # the spec is reml_rewards
    with pytest.warns(PluginWarning, match=r"plugin 'typo'.*does not define.*reml_reward"):
        assert not empty_registry.register(misspelled, name="typo")
    assert empty_registry.plugins() == {}
    # the registry stays usable: a correct plugin registers after the bad one
    assert empty_registry.register(_plugin(reml_rewards=lambda: [_reward("fine")]), name="good")
    assert empty_registry.names("reward") == ["fine"]


def test_a_hookimpl_with_a_wrong_signature_is_skipped(empty_registry):
    with pytest.warns(PluginWarning, match=r"plugin 'args'.*could not be registered"):
        assert not empty_registry.register(_plugin(reml_rewards=lambda extra: []), name="args")


def test_disabled_plugins_are_not_registered(toy_registry):
    registry = PluginRegistry(disabled={"blocked"})
    assert not registry.register(_plugin(reml_rewards=lambda: [_reward("hidden")]), name="blocked")
    assert registry.names("reward") == []


def test_disable_variable_is_a_comma_separated_list():
    assert disabled_plugins({"REML_DISABLE_PLUGINS": " sine, maml ,,"}) == {"sine", "maml"}
    assert disabled_plugins({}) == frozenset()


def test_unregister_removes_a_plugins_components(toy_registry):
    toy_registry.unregister("toy")
    assert all(toy_registry.names(kind) == [] for kind in KINDS)


def test_the_same_plugin_name_twice_is_a_conflict(toy_registry):
    with pytest.raises(PluginConflictError, match="two plugins are named 'toy'"):
        toy_registry.register(_plugin(reml_rewards=lambda: []), name="toy", distribution="elsewhere")


def test_disabling_takes_plugin_or_distribution_names_and_warns_about_unknown_ones(recwarn):
    from reml_core.registry import PluginRegistry, PluginWarning

    by_plugin = PluginRegistry.discover(disabled={"maml"})
    assert "maml" not in by_plugin.names("baseline") and "scratch" in by_plugin.names("baseline")
    by_distribution = PluginRegistry.discover(disabled={"reml"})  # what reml-plugins shows as the plugin
    assert by_distribution.names("task_sampler") == [] and by_distribution.names("baseline") == []
    assert not [w for w in recwarn if issubclass(w.category, PluginWarning)]
    PluginRegistry.discover(disabled={"mamll"})
    messages = [str(w.message) for w in recwarn if issubclass(w.category, PluginWarning)]
    assert len(messages) == 1 and "REML_DISABLE_PLUGINS names 'mamll', which is no installed plugin" in messages[0]
    assert "maml" in messages[0]  # the names that would work are listed
