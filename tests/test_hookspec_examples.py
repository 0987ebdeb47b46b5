"""Every hook's docstring holds a complete example plugin: each one registers and builds."""

from __future__ import annotations

import inspect
import textwrap
import types

import pytest
import torch

from reml_core import hookspecs
from reml_core.interfaces import BuildContext, LayerPool
from reml_core.registry import PluginRegistry
from reml_plugins.dense.pool import DenseLayerPool, DensePoolConfig
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler


def _example(hook_name: str) -> str:
    doc = inspect.getdoc(getattr(hookspecs, hook_name))
    code = doc.split("::", 1)[1]
    return textwrap.dedent(code)


@pytest.mark.parametrize(("kind", "hook_name"), sorted(hookspecs.HOOKS_BY_KIND.items()))
def test_docstring_example_is_a_working_plugin(kind, hook_name):
    module = types.ModuleType(f"example_{kind}")
    exec(compile(_example(hook_name), module.__name__, "exec"), module.__dict__)
    registry = PluginRegistry()
    assert registry.register(module, name=f"example-{kind}")
    [entry] = list(registry.components(kind))
    sampler = SineTaskSampler(SineConfig())
    pool = DenseLayerPool(DensePoolConfig(input_layers=2, hidden_layers=4, output_layers=2), BuildContext(seed=0, task_sampler=sampler))
    context = BuildContext(seed=0, task_sampler=sampler, pool=pool)
    component = entry.spec.factory(entry.spec.config_model(), context)
    task = sampler.test_tasks(1)[0]
    if kind == "task_sampler":
        assert next(component.train_stream(0)).x_train.shape[1] == 1
        assert len(component.test_tasks(3)) == 3
    elif kind == "state_encoder":
        assert component.encode(task, 5).shape == (component.observation_size,)
    elif kind == "layer_pool":
        assert isinstance(component, LayerPool) and component.size > 0
    elif kind == "reward":
        assert component({"trained": 0.5}, task) > component({"trained": 5.0}, task)
    elif kind == "baseline":
        network = component.network_for(task, 5)
        assert torch.count_nonzero(network(task.x_query)) == 0
    elif kind == "policy":
        assert hasattr(component, "act")
