"""``train.device``: checked before anything is written, carried to every component that holds
networks, and honoured by the core wherever it trains or measures one.

This machine (like CI) has no GPU, so placement is checked on PyTorch's ``meta`` device: a device
that is not the CPU, where tensors have shapes but no data. A component that ignored the setting
would leave its tensors on the CPU, which these tests catch.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from reml_core import experiment
from reml_core.cli import bench, run
from reml_core.config import resolve_config
from reml_core.device import module_device, resolve_device, task_on
from reml_core.errors import ConfigError
from reml_core.pipeline import build_baselines
from reml_core.registry import PluginRegistry

META = torch.device("meta")
CPU = torch.device("cpu")


def _refused(main, argv, capsys, out) -> str:
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists(), "a refused command wrote its output folder"
    return err


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:x", "cuda:", "", "cuda:1:2", "tpu:0"])
def test_a_device_name_that_is_no_device_is_refused_before_anything_is_written(name, tmp_path, capsys):
    err = _refused(
        run.main, ["--plugin", "sine", "--preset", "smoke", "--set", f"train.device={name}"], capsys, tmp_path / "out"
    )
    assert err.startswith("train.device:")
    # `cuda:` reads as a YAML mapping, so it is refused as "not a string"; every other spelling gets the fix.
    assert "'cpu', 'cuda' or 'cuda:N'" in err or (name == "cuda:" and "valid string" in err), err


def _missing_devices() -> list[str]:
    missing = [f"cuda:{torch.cuda.device_count() + 7}"]  # an index past the last GPU, on any machine
    if not torch.cuda.is_available():
        missing.append("cuda")
    return missing


@pytest.mark.parametrize("main", [run.main, bench.main], ids=["reml-run", "reml-bench"])
@pytest.mark.parametrize("plugin", ["sine", "digits"])
def test_a_device_this_machine_lacks_is_refused_naming_it(main, plugin, tmp_path, capsys):
    for name in _missing_devices():
        err = _refused(
            main, ["--plugin", plugin, "--preset", "smoke", "--set", f"train.device={name}"], capsys, tmp_path / "out"
        )
        assert err.startswith("train.device:") and f"{name!r} was asked for" in err, err


def test_the_cpu_is_always_there_and_cuda_only_when_torch_sees_it():
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        with pytest.raises(
            ConfigError, match="train.device: 'cuda' was asked for but this machine has no usable CUDA device"
        ):
            resolve_device("cuda")


@pytest.fixture
def on_meta(monkeypatch):
    """Builds components as if ``train.device`` named a second device (``meta``) that this machine has."""
    seen = []

    def resolve(name: str, **_: object) -> torch.device:
        seen.append(name)
        return META

    monkeypatch.setattr(experiment, "resolve_device", resolve)
    return seen


def _on(tensors, device: torch.device) -> bool:
    tensors = list(tensors)
    return bool(tensors) and all(t.device == device for t in tensors)


@pytest.mark.parametrize("plugin", ["sine", "digits"])
def test_the_run_s_device_reaches_the_pool_its_networks_and_every_baseline(plugin, on_meta):
    registry = PluginRegistry.discover(disabled=())
    config = resolve_config(
        registry, {"plugin": plugin, "preset": "smoke", "train": {"device": "cuda:0"}}, baselines=["maml", "scratch"]
    )
    components = experiment.build_components(config)
    assert on_meta == ["cuda:0"] and components.context.device == "meta"

    pool = components.pool
    assert _on([*pool.weights.values(), *pool.biases.values()], META)
    depth = config.core.env.depth
    chosen = _first_network(pool, depth)
    assert _on(pool.build(chosen).parameters(), META)
    assert _on(pool.fresh_network(depth, torch.Generator().manual_seed(0)).parameters(), META)

    baselines = build_baselines(components, ["maml", "scratch"])
    task = components.task_sampler.test_tasks(1)[0]
    assert _on(baselines["maml"].network.parameters(), META)
    for name, baseline in baselines.items():
        assert _on(baseline.network_for(task, 1).parameters(), META), name


def _first_network(pool, depth: int) -> list[int]:
    """A valid network: the first input layer, the first ``depth - 2`` hidden ones, the first head."""
    from reml_core.interfaces import Role

    hidden = pool.roles.index(Role.HIDDEN)
    return [pool.roles.index(Role.INPUT), *range(hidden, hidden + depth - 2), pool.roles.index(Role.OUTPUT)]


def test_a_checkpoint_of_a_pool_holds_cpu_tensors_that_no_longer_share_the_pool_s_memory(make_components):
    pool = make_components().pool
    state = pool.state_dict()
    assert _on(state.values(), CPU)
    before = {key: value.clone() for key, value in state.items()}
    pool.load_state_dict({key: value + 1 for key, value in state.items()})
    assert all(torch.equal(state[key], before[key]) for key in state)


def test_task_on_moves_every_split_and_keeps_a_task_already_there(make_components):
    task = make_components().task_sampler.test_tasks(1)[0]
    assert task_on(task, CPU) is task
    moved = task_on(task, META)
    tensors = [
        getattr(moved, field.name)
        for field in dataclasses.fields(moved)
        if isinstance(getattr(moved, field.name), torch.Tensor)
    ]
    assert len(tensors) == 6 and _on(tensors, META)
    assert (moved.task_id, moved.descriptor, moved.ways) == (task.task_id, task.descriptor, task.ways)


def test_module_device_reads_modules_stacked_networks_and_parameterless_ones(make_components):
    pool = make_components().pool
    assert module_device(pool.build([0, pool.size - 1]).to(META)) == META
    assert module_device(pool.build_batch([[0, pool.size - 1]])) == CPU
    assert module_device(torch.nn.ReLU()) == CPU
    assert module_device(torch.nn.BatchNorm1d(2, affine=False).to(META)) == META  # buffers only


def test_the_core_moves_each_task_to_its_network_s_device_to_train_and_measure_it(make_components, monkeypatch):
    """Every place the core trains or measures a network hands it the task on that network's device."""
    from reml_core import batched, evaluation
    from reml_core.batched import EpisodeEnd, end_episodes
    from reml_core.evaluation import FewShotEvaluator

    calls: list[tuple[str, torch.device]] = []

    def spy(where):
        def moved(task, device):
            calls.append((where, device))
            return task_on(task, device)

        return moved

    monkeypatch.setattr(batched, "task_on", spy("env"))
    monkeypatch.setattr(evaluation, "task_on", spy("eval"))
    components = make_components()
    pool, sampler = components.pool, components.task_sampler
    tasks = sampler.test_tasks(3)
    ends = [EpisodeEnd(task, (0, pool.size - 1), 5, i) for i, task in enumerate(tasks)]
    config = components.config.core.env
    for stacked in (True, False):
        calls.clear()
        end_episodes(
            pool,
            ends,
            loss_fn=sampler.loss,
            config=config,
            required=frozenset({"trained"}),
            write_back_rate=None,
            batched=stacked,
        )
        assert calls == [("env", CPU)] * len(ends)
    calls.clear()
    evaluator = FewShotEvaluator(tasks, sampler.loss, shots=[5], steps=[0, 1], lr=0.01, curve_steps=2, curve_tasks=2)
    evaluator.few_shot(lambda task, shots: pool.build([0, pool.size - 1]))
    evaluator.curve(lambda task, shots: pool.build([0, pool.size - 1]))
    assert calls == [("eval", CPU)] * (len(tasks) + 2)
