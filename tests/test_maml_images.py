"""MAML on an image family (digits): the pool's conv network, K-per-class meta-batches, both backends, checkpoints.

The sine path is covered, unchanged, by tests/test_maml.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest
import torch

from reml_core.config import resolve_config
from reml_core.errors import CheckpointError, UserError
from reml_core.experiment import build_components
from reml_core.interfaces import Baseline
from reml_core.registry import PluginRegistry
from reml_plugins.maml.baseline import MAMLBaseline
from reml_plugins.maml.batches import MetaBatch, balanced_training_indices, draw_batch, stack_classification_tasks
from reml_plugins.maml.checkpoint import METADATA, TENSORS
from reml_plugins.maml.config import MAMLConfig

needs_learn2learn = pytest.mark.skipif(
    importlib.util.find_spec("learn2learn") is None, reason="learn2learn (optional) is not installed"
)
SHOTS, META_BATCH = 2, 4


@pytest.fixture(scope="module")
def components():
    registry = PluginRegistry.discover(disabled=())
    config = resolve_config(registry, {"plugin": "digits", "preset": "smoke"}, baselines=["maml"])
    return config, build_components(config)


@pytest.fixture(scope="module")
def context(components):
    return components[1].context


@pytest.fixture(scope="module")
def batch(context) -> MetaBatch:
    return draw_batch(context.task_sampler.train_stream(0), META_BATCH, SHOTS, stack_classification_tasks)


def make(context, **overrides) -> MAMLBaseline:
    options = {"shots": SHOTS, "meta_batch": META_BATCH, **overrides}
    return MAMLBaseline(MAMLConfig(**options), context)


def meta_gradient(baseline: MAMLBaseline, batch: MetaBatch) -> tuple[float, list[torch.Tensor]]:
    loss = baseline.backend.meta_gradient(batch)
    return float(loss), [p.grad.clone() for p in baseline.network.parameters()]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- the network is the pool's ---------------------------------------------------------------


def test_the_registry_factory_builds_maml_on_the_pools_architecture(components):
    config, built = components
    selected = config.baselines["maml"]
    baseline = selected.spec.factory(selected.config, built.context)
    assert isinstance(baseline, Baseline) and baseline.images
    assert (
        "shots" not in selected.config.model_fields_set and baseline.shots == built.task_sampler.max_shots == 5
    )  # sine's K=10 does not fit
    pool, depth = built.context.pool, built.context.depth
    reference = pool.fresh_network(depth, torch.Generator().manual_seed(built.context.seed))
    assert type(baseline.network) is type(reference)
    assert [(n, p.shape) for n, p in baseline.network.named_parameters()] == [
        (n, p.shape) for n, p in reference.named_parameters()
    ]
    assert all(
        torch.equal(a, b) for a, b in zip(baseline.network.parameters(), reference.parameters())
    )  # seeded by the run seed


def test_without_a_pool_an_image_family_is_refused_clearly(context):
    with pytest.raises(
        ValueError, match="meta-learns the layer pool's architecture on an image family .* without a layer pool"
    ):
        make(dataclasses.replace(context, pool=None))


def test_more_shots_than_the_family_holds_is_refused_with_the_fix(context):
    assert make(context, shots=3).shots == 3
    with pytest.raises(
        UserError,
        match="K = 10 per class .* holds only 5 support images per class; set baselines.maml.shots to at most 5",
    ):
        make(context, shots=10)


# -- K-per-class meta-batches ------------------------------------------------------------------


def test_meta_batches_are_k_per_class_support_inside_training_points_outside(context, batch):
    tasks = [task for task, _ in zip(context.task_sampler.train_stream(0), range(META_BATCH))]
    ways = tasks[0].ways
    assert ways == context.task_sampler.output_size > 1
    assert batch.x_inner.shape == (META_BATCH, ways * SHOTS, *context.task_sampler.input_shape)
    for i, task in enumerate(tasks):
        assert task.split == "train"
        x_support, y_support = task.support(SHOTS)
        assert torch.equal(batch.x_inner[i], x_support) and torch.equal(batch.y_inner[i], y_support)
        # digits interleaves its training points by class: the first N*K are K of each class
        assert torch.equal(batch.x_outer[i], task.x_train[: ways * SHOTS]) and torch.equal(
            batch.y_outer[i], task.y_train[: ways * SHOTS]
        )
        for labels in (batch.y_inner[i], batch.y_outer[i]):
            assert torch.bincount(labels, minlength=ways).tolist() == [SHOTS] * ways


def test_outer_points_are_class_balanced_whatever_the_training_order(context):
    task = context.task_sampler.validation_tasks(1)[0]
    order = torch.argsort(task.y_train, stable=True)  # grouped by class instead of interleaved
    grouped = dataclasses.replace(task, x_train=task.x_train[order], y_train=task.y_train[order])
    index = balanced_training_indices(grouped, 3)
    assert grouped.y_train[index].tolist() == list(range(task.ways)) * 3
    assert torch.equal(grouped.x_train[index], task.x_train[: 3 * task.ways])  # the same points digits' own order gives
    with pytest.raises(UserError, match="K = 11 per class needs 11 training points of each"):
        balanced_training_indices(task, 11)


# -- the two backends compute the same thing -------------------------------------------------


@pytest.mark.numerics
@needs_learn2learn
@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_backends_give_the_same_meta_gradient_on_the_conv_network(context, batch, first_order, inner_steps):
    options = {"first_order": first_order, "inner_steps": inner_steps, "inner_lr": 0.1}
    func = make(context, backend="torch-func", **options)
    reference = make(context, backend="learn2learn", **options)
    assert all(torch.equal(a, b) for a, b in zip(func.network.parameters(), reference.network.parameters()))
    func_loss, func_grads = meta_gradient(func, batch)
    ref_loss, ref_grads = meta_gradient(reference, batch)
    assert abs(func_loss - ref_loss) <= 1e-5 * abs(ref_loss)
    names = [name for name, _ in func.network.named_parameters()]
    for name, a, b in zip(names, func_grads, ref_grads, strict=True):
        assert relative_error(a, b) <= 1e-4, name


def test_first_order_drops_terms_second_order_keeps_on_images(context, batch):
    """Guards the equality test: the orders differ on the conv network, so agreeing in each means something."""
    _, second = meta_gradient(make(context, inner_lr=0.1), batch)
    _, first = meta_gradient(make(context, inner_lr=0.1, first_order=True), batch)
    assert max(relative_error(a, b) for a, b in zip(first, second)) > 0.01


# -- meta-training and the handed-out networks -------------------------------------------------


@pytest.fixture(scope="module")
def trained(context) -> MAMLBaseline:
    baseline = make(context, iterations=30, meta_lr=0.003, inner_lr=0.1)
    baseline.summary = baseline.meta_train(context.task_sampler.train_stream(context.seed), progress=False)
    return baseline


def test_short_meta_training_runs_finitely_and_lowers_the_held_out_meta_loss(context, trained):
    held_out = stack_classification_tasks(context.task_sampler.validation_tasks(20), SHOTS)
    untrained = make(context, inner_lr=0.1)
    before, after = float(untrained.backend.meta_gradient(held_out)), float(trained.backend.meta_gradient(held_out))
    summary = trained.summary
    assert summary["iterations"] == 30 and trained.iterations_done == 30 and summary["task_batches"] == 0.0
    assert all(torch.isfinite(torch.tensor(v)) for v in summary.values())
    assert after < before, (before, after)


def test_network_for_hands_out_independent_copies_of_the_pools_architecture(context, trained):
    task = context.task_sampler.test_tasks(1)[0]
    network = trained.network_for(task, SHOTS)
    built = context.pool.build([0, *([context.pool.config.input_layers] * (context.depth - 2)), context.pool.size - 1])
    assert type(network) is type(built)
    assert [p.shape for p in network.parameters()] == [p.shape for p in built.parameters()]
    logits = network(task.x_query)
    assert logits.shape == (len(task.x_query), task.ways) and torch.isfinite(logits).all()
    assert torch.equal(logits, trained.network(task.x_query))
    assert not {id(p) for p in network.parameters()} & {id(p) for p in trained.network.parameters()}
    before = [p.detach().clone() for p in trained.network.parameters()]
    with torch.no_grad():
        next(network.parameters()).add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, trained.network.parameters()))


# -- checkpoints ------------------------------------------------------------------------------


def test_save_load_round_trip_of_the_conv_network(context, trained, tmp_path):
    trained.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [METADATA, TENSORS]
    metadata = json.loads((tmp_path / METADATA).read_text())
    assert metadata["architecture"]["module"].endswith("ConvComposedNetwork") and metadata["iterations"] == 30
    assert [e["name"] for e in metadata["architecture"]["state"]] == list(trained.network.state_dict())
    restored = make(dataclasses.replace(context, seed=99), inner_lr=0.1)
    assert not torch.equal(next(restored.network.parameters()), next(trained.network.parameters()))
    restored.load(tmp_path)
    assert restored.iterations_done == 30
    assert all(torch.equal(a, b) for a, b in zip(trained.network.parameters(), restored.network.parameters()))
    task = context.task_sampler.test_tasks(1)[0]
    assert torch.equal(trained.network_for(task, SHOTS)(task.x_query), restored.network_for(task, SHOTS)(task.x_query))


def test_a_checkpoint_of_another_network_is_refused(context, trained, tmp_path):
    trained.save(tmp_path)
    shallower = make(dataclasses.replace(context, depth=context.depth - 1))
    before = [p.detach().clone() for p in shallower.network.parameters()]
    with pytest.raises(
        CheckpointError,
        match="holds a ConvComposedNetwork \\(10 tensors, .* but this baseline is configured for "
        "ConvComposedNetwork \\(8 tensors, .*\\(tensor weights.3 is float32 \\(16, 16, 3, 3\\), expected float32 \\(5, "
        "16\\)\\)",
    ) as caught:
        shallower.load(tmp_path)
    assert "\n" not in str(caught.value)
    assert all(torch.equal(a, b) for a, b in zip(before, shallower.network.parameters()))


def test_a_damaged_image_checkpoint_is_refused(context, trained, tmp_path):
    trained.save(tmp_path)
    data = bytearray((tmp_path / TENSORS).read_bytes())
    data[-5] ^= 0x40
    (tmp_path / TENSORS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the SHA-256"):
        make(context).load(tmp_path)


def test_a_sine_checkpoint_is_refused_by_the_image_path_and_vice_versa(context, trained, tmp_path):
    from reml_core.interfaces import TaskContext
    from reml_plugins.sine.sampler import SineConfig, SineTaskSampler

    sine = MAMLBaseline(MAMLConfig(), TaskContext(seed=0, task_sampler=SineTaskSampler(SineConfig())))
    sine.save(tmp_path / "sine")
    with pytest.raises(
        CheckpointError, match="holds a 1-40-40-1 relu network but this baseline is configured for ConvComposedNetwork"
    ):
        make(context).load(tmp_path / "sine")
    trained.save(tmp_path / "conv")
    with pytest.raises(CheckpointError, match="holds a ConvComposedNetwork .* configured for 1-40-40-1 relu"):
        sine.load(tmp_path / "conv")


@pytest.mark.parametrize("plugin", ["sine", "digits"])
def test_the_budget_a_benchmark_reports_lists_only_what_applies_to_the_family(installed_registry, plugin):
    from reml_core.experiment import build_one

    config = resolve_config(installed_registry, {"plugin": plugin, "preset": "smoke"}, baselines=["maml", "scratch"])
    components = build_components(config)
    maml = build_one(config.baselines["maml"], components.context)
    budget = maml.describe()
    assert "iterations=300" in budget and f"shots={maml.shots}" in budget
    if plugin == "digits":  # the pool's conv network: the MLP options do not apply, and K is the family's largest
        assert "hidden=" not in budget and "activation=" not in budget and "network=ConvComposedNetwork" in budget
        assert maml.shots < config.baselines["maml"].config.shots
    else:
        assert "hidden=[40, 40]" in budget and "network=MLP 1-40-40-1 (relu)" in budget
    assert "depth 5" in build_one(config.baselines["scratch"], components.context).describe()
