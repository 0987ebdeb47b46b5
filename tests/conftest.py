"""Shared fixtures: fresh plugin registries, so no test sees another's plugins."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from reml_core.registry import PluginRegistry

# A suite started in the background by a non-interactive shell (`make test &`, nohup, some CI
# runners) inherits SIGINT ignored, and so would every reml-run it starts (an ignored signal stays
# ignored across exec): the Ctrl-C tests would wait for a run that cannot be interrupted. A handled
# SIGINT is reset to the default in the children, where Python turns it into KeyboardInterrupt.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Networks here are tiny: one thread is fastest, and keeps tests steady on a busy 2-core machine.
torch.set_num_threads(1)


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


@pytest.fixture
def sine_registry() -> PluginRegistry:
    """The installed plugins plus the toy plugin (whose policy lets engine tests resolve a config)."""
    from helpers import toy_plugin

    registry = PluginRegistry.discover(disabled=())
    registry.register(toy_plugin, name="toy", distribution="toy-dist")
    return registry


@pytest.fixture
def make_components(sine_registry):
    """Build a sine experiment's components: ``make_components(seed=1, env={"depth": 4})``."""
    from reml_core.config import resolve_config
    from reml_core.experiment import build_components

    def make(**user):
        user.setdefault("plugin", "sine")
        user.setdefault("policy", "toy-policy")
        user.setdefault("preset", "smoke")
        return build_components(resolve_config(sine_registry, user))

    return make


@pytest.fixture
def released_locks():
    """Every folder lock this process holds, released after the test (for tests that claim folders in-process)."""
    yield
    from reml_core.folders import release_all

    release_all()


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory) -> Path:
    """One finished tiny ``reml-run`` folder (``helpers.runs.tiny_run``), shared by every test that reads it:
    copy it before changing anything in it."""
    from helpers.runs import tiny_run

    return tiny_run(tmp_path_factory.mktemp("finished") / "run")
