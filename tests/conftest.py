"""Shared fixtures: fresh plugin registries, so no test sees another's plugins."""

from __future__ import annotations

import pytest

from reml_core.registry import PluginRegistry


@pytest.fixture
def empty_registry() -> PluginRegistry:
    """A registry with no plugins at all."""
    return PluginRegistry()


@pytest.fixture
def toy_registry() -> PluginRegistry:
    """A registry holding only the in-process toy plugin (one component of every kind)."""
    from helpers import toy_plugin

    registry = PluginRegistry()
    registry.register(toy_plugin, name="toy", distribution="toy-dist")
    return registry


@pytest.fixture
def installed_registry() -> PluginRegistry:
    """The registry the command-line tools see: every plugin installed through entry points."""
    return PluginRegistry.discover(disabled=())
