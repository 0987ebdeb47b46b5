"""Every hook's docstring holds a complete example plugin: each one registers, builds and does its job."""

from __future__ import annotations

import inspect
import textwrap
import types

import numpy as np
import pytest
import torch

from reml_core import hookspecs
from reml_core.experiment import STAGE_CONTEXTS
from reml_core.interfaces import Baseline, BuildContext, LayerPool, Role, StateEncoder, TaskSampler
from reml_core.registry import PluginRegistry
from reml_plugins.dense.pool import DenseLayerPool, DensePoolConfig
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler


def _example(hook_name: str) -> str:
    doc = inspect.getdoc(getattr(hookspecs, hook_name))
    code = doc.split("::", 1)[1]
    return textwrap.dedent(code)


@pytest.mark.parametrize(("kind", "hook_name"), sorted(hookspecs.HOOKS_BY_KIND.items()))
def test_docstring_example_is_a_working_plugin(kind, hook_name, make_components, tmp_path):
    """Each example registers, builds, and does its component's job through the protocol the core uses."""
    module = types.ModuleType(f"example_{kind}")
    exec(compile(_example(hook_name), module.__name__, "exec"), module.__dict__)
    registry = PluginRegistry()
    assert registry.register(module, name=f"example-{kind}")
    [entry] = list(registry.components(kind))
    sampler = SineTaskSampler(SineConfig())
    base = BuildContext(seed=0)
    with_sampler = base.with_task_sampler(sampler)
    pool = DenseLayerPool(DensePoolConfig(input_layers=2, hidden_layers=4, output_layers=2), with_sampler)
    components = make_components()
    env = components.make_env(mode="train")
    for_baselines = with_sampler.with_pool_and_encoder(pool, components.encoder)
    stages = {
        "task_sampler": base,
        "state_encoder": with_sampler,
        "layer_pool": with_sampler,
        "reward": with_sampler,
        "baseline": for_baselines,
        "policy": for_baselines.with_env(env, log_dir=tmp_path / "logs"),
    }
    context = stages[kind]  # each example gets the context the core gives its kind, and no more
    assert type(context) is STAGE_CONTEXTS[kind]
    component = entry.spec.factory(entry.spec.config_model(), context)
    task = sampler.test_tasks(1)[0]
    if kind == "task_sampler":
        assert isinstance(component, TaskSampler)
        trained = next(component.train_stream(0))
        assert trained.x_train.shape[1] == 1 and trained.split == "train"
        held_out = component.test_tasks(3)
        assert len(held_out) == 3 and {t.task_id for t in held_out}.isdisjoint({trained.task_id})
        assert [t.task_id for t in component.test_tasks(3)] == [t.task_id for t in held_out]  # fixed held-out set
    elif kind == "state_encoder":
        assert isinstance(component, StateEncoder)
        encoded = component.encode(task, 5)
        assert encoded.shape == (component.observation_size,) and np.isfinite(encoded).all()
    elif kind == "layer_pool":
        assert isinstance(component, LayerPool) and component.size > 0
        indices = _a_network(component, depth=3)
        network = component.build(indices)
        assert network(task.x_query).shape == task.y_query.shape
        before = {key: value.clone() for key, value in component.state_dict().items()}
        with torch.no_grad():
            for param in network.parameters():
                param.add_(1.0)
        component.write_back(indices, network, rate=1.0)
        assert any(not torch.equal(before[key], value) for key, value in component.state_dict().items())
        component.load_state_dict(before)
        assert all(torch.equal(before[key], value) for key, value in component.state_dict().items())
    elif kind == "reward":
        assert component({"trained": 0.5}, task) > component({"trained": 5.0}, task)
    elif kind == "baseline":
        assert isinstance(component, Baseline)
        component.meta_train(sampler.train_stream(0), progress=False)
        network = component.network_for(task, 5)
        assert torch.count_nonzero(network(task.x_query)) == 0
    elif kind == "policy":
        steps = []
        component.learn(50, callback=lambda n: steps.append(n) or n < 20)
        assert steps[-1] == 20 and component.num_timesteps == 20  # the callback stopped it
        observation, _ = env.reset(seed=0)
        mask = env.action_masks()
        action, _ = component.act(observation, None, True, mask)
        assert mask[action]  # only valid layers are chosen
        component.save(tmp_path)
        twin = entry.spec.factory(entry.spec.config_model(), context)
        twin.load(tmp_path)
        assert twin.num_timesteps == 20


def _a_network(pool, depth: int) -> list[int]:
    """Valid indices: the first input layer, distinct hidden layers, the first output layer."""
    roles = list(pool.roles)
    hidden = [i for i, role in enumerate(roles) if role is Role.HIDDEN][: depth - 2]
    return [roles.index(Role.INPUT), *hidden, roles.index(Role.OUTPUT)]


def test_every_kind_is_declared_once_on_its_record_type_and_has_its_hook():
    from reml_core import specs

    assert sorted(name for name in dir(hookspecs) if name.startswith("reml_")) == sorted(specs.HOOKS.values())
    for kind, spec in specs.SPEC_TYPES.items():
        assert spec.kind == kind and callable(getattr(hookspecs, spec.hook))
        assert specs.KIND_LABELS[kind] == spec.kind_label and specs.SECTIONS[kind] == spec.section
    assert hookspecs.HOOKS_BY_KIND == specs.HOOKS
