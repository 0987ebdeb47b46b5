"""The sine task plugin and its state encoders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from reml_core.interfaces import BatchedTaskSampler, TaskBatch, TaskContext, TaskSampler
from reml_plugins.encoders.generic import OracleEncoder, SupportSetConfig, SupportSetEncoder
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler


@pytest.fixture
def sampler() -> SineTaskSampler:
    return SineTaskSampler(SineConfig())


def _take(stream, n):
    return [next(stream) for _ in range(n)]


def test_tasks_follow_finn_et_al(sampler):
    tasks = _take(sampler.train_stream(0), 500)
    amplitudes = np.array([t.descriptor[0] for t in tasks])
    phases = np.array([t.descriptor[1] for t in tasks])
    assert amplitudes.min() >= 0.1 and amplitudes.max() <= 5.0 and np.ptp(amplitudes) > 4.5
    assert phases.min() >= 0 and phases.max() <= math.pi and np.ptp(phases) > 3.0
    task = tasks[0]
    assert task.x_train.shape == (100, 1) and task.x_support.shape == (10, 1) and task.x_query.shape == (100, 1)
    assert task.x_train.abs().max() <= 5
    amplitude, phase = task.descriptor
    torch.testing.assert_close(task.y_train, amplitude * torch.sin(task.x_train + phase))
    torch.testing.assert_close(task.x_query, torch.linspace(-5, 5, 100).unsqueeze(1))


def test_support_sets_are_nested_and_bounded(sampler):
    task = sampler.test_tasks(1)[0]
    x5, y5 = task.support(5)
    x10, _ = task.support(10)
    assert torch.equal(x5, x10[:5]) and len(y5) == 5
    with pytest.raises(ValueError, match="11-shot support requested but task test-0 holds 10"):
        task.support(11)


def test_streams_are_seeded(sampler):
    a, b, c = (_take(sampler.train_stream(s), 3) for s in (4, 4, 5))
    assert [t.descriptor for t in a] == [t.descriptor for t in b] != [t.descriptor for t in c]
    assert torch.equal(a[2].x_train, b[2].x_train)


def test_held_out_sets_are_fixed_and_never_come_out_of_training(sampler):
    test = sampler.test_tasks(600)
    validation = sampler.validation_tasks(100)
    assert [t.descriptor for t in sampler.test_tasks(50)] == [t.descriptor for t in test[:50]]
    held_out = {t.descriptor for t in test} | {t.descriptor for t in validation}
    assert len(held_out) == 700
    for seed in (0, 1, 2017):  # 2017 is also the held-out seed: the split keeps the streams apart
        train = {t.descriptor for t in _take(sampler.train_stream(seed), 5000)}
        assert not train & held_out
    x_train = {tuple(t.x_train[:3].flatten().tolist()) for t in test}
    assert len(x_train) == 600
    other_run = SineTaskSampler(SineConfig()).test_tasks(5)
    assert [t.descriptor for t in other_run] == [t.descriptor for t in test[:5]]


@pytest.mark.numerics
def test_held_out_sets_have_not_changed(sampler):
    """Every method is measured on these tasks: pinned to the values they had before batched sampling existed."""
    test, validation = sampler.test_tasks(600), sampler.validation_tasks(100)
    assert test[0].descriptor == (4.936554699003542, 2.631997573044654)
    assert test[599].descriptor == (2.976610610983355, 1.0784881177259362)
    assert validation[0].descriptor == (1.9520458495557875, 0.8385673418161909)
    assert float(torch.stack([t.x_train for t in test]).double().sum()) == pytest.approx(-2.10365831101808, abs=1e-9)
    # y = A sin(x + phase) in float32: torch's vector and scalar sin (one per CPU dispatch) may differ in the
    # last bit, so each y is pinned to 2 ulps of the largest |y| (A <= 5: 2 * 2**-21), summed over the values.
    y_support, y_query = torch.stack([t.y_support for t in test]), torch.stack([t.y_query for t in validation])
    assert float(y_support.double().sum()) == pytest.approx(-2027.4869094484602, abs=y_support.numel() * 2**-20)
    assert float(y_query.double().sum()) == pytest.approx(-2859.359740735308, abs=y_query.numel() * 2**-20)


# -- batched training tasks (the optional BatchedTaskSampler capability) -----------------------


def _batches(sampler, seed, size, n):
    stream = sampler.train_batches(seed, size)
    return [next(stream) for _ in range(n)]


def _tensors(batch: TaskBatch) -> list[torch.Tensor]:
    return [
        batch.descriptors,
        batch.x_train,
        batch.y_train,
        batch.x_support,
        batch.y_support,
        batch.x_query,
        batch.y_query,
    ]


def test_sine_sampler_declares_batched_sampling(sampler):
    assert isinstance(sampler, TaskSampler) and isinstance(sampler, BatchedTaskSampler)


def test_train_batches_are_seeded(sampler):
    a, b, c = (_batches(sampler, seed, 25, 3) for seed in (4, 4, 5))
    for first, second in zip(a, b):
        assert first.task_ids == second.task_ids
        assert all(torch.equal(x, y) for x, y in zip(_tensors(first), _tensors(second)))
    assert not torch.equal(a[0].descriptors, c[0].descriptors) and not torch.equal(a[0].x_train, c[0].x_train)
    assert not torch.equal(a[0].descriptors, a[1].descriptors)  # the stream moves on
    ids = [task_id for batch in a for task_id in batch.task_ids]
    assert len(set(ids)) == 75 and ids[0] != c[0].task_ids[0]
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        next(sampler.train_batches(0, 0))


def test_train_batches_follow_finn_et_al(sampler):
    batches = _batches(sampler, 0, 25, 40)
    assert all(len(b) == 25 and b.split == "train" for b in batches)
    batch = batches[0]
    shapes = [tuple(t.shape) for t in _tensors(batch)]
    assert shapes == [(25, 2), (25, 100, 1), (25, 100, 1), (25, 10, 1), (25, 10, 1), (25, 100, 1), (25, 100, 1)]
    assert batch.x_train.dtype == batch.y_query.dtype == torch.float32
    descriptors = torch.cat([b.descriptors for b in batches]).numpy()  # 1000 tasks
    amplitudes, phases = descriptors[:, 0], descriptors[:, 1]
    assert amplitudes.min() >= 0.1 and amplitudes.max() <= 5.0 and phases.min() >= 0 and phases.max() <= math.pi
    # uniform: every decile within a small margin of where U[low, high]'s is
    deciles = np.linspace(0.1, 0.9, 9)
    np.testing.assert_allclose(np.quantile(amplitudes, deciles), 0.1 + 4.9 * deciles, atol=0.35)
    np.testing.assert_allclose(np.quantile(phases, deciles), math.pi * deciles, atol=0.25)
    xs = torch.cat([torch.cat([b.x_train, b.x_support], dim=1) for b in batches]).flatten().numpy()
    assert xs.min() >= -5 and xs.max() <= 5
    np.testing.assert_allclose(np.quantile(xs, deciles), -5 + 10 * deciles, atol=0.1)
    # every point of every task lies on y = A sin(x + phase), the query points on the 100-point grid
    for b in batches:
        amplitude, phase = (b.descriptors[:, i, None, None] for i in (0, 1))
        for x, y in ((b.x_train, b.y_train), (b.x_support, b.y_support), (b.x_query, b.y_query)):
            torch.testing.assert_close(y.double(), amplitude * torch.sin(x.double() + phase), rtol=1e-5, atol=1e-5)
        assert torch.equal(b.x_query, torch.linspace(-5, 5, 100).expand(25, 100).unsqueeze(-1))
    # training and support points are independent draws, different from task to task
    assert not torch.equal(batch.x_train[0], batch.x_train[1]) and not torch.equal(
        batch.x_train[0, :10], batch.x_support[0]
    )


def test_a_batch_unpacks_into_tasks_like_the_stream(sampler):
    batch = next(sampler.train_batches(3, 4))
    tasks = batch.tasks()
    assert [t.task_id for t in tasks] == list(batch.task_ids)
    reference = next(sampler.train_stream(3))
    for task in tasks:
        assert task.split == "train" and len(task.descriptor) == 2
        assert [tuple(t.shape) for t in (task.x_train, task.x_support, task.x_query)] == [
            tuple(t.shape) for t in (reference.x_train, reference.x_support, reference.x_query)
        ]
        amplitude, phase = task.descriptor
        assert torch.equal(task.y_train, amplitude * torch.sin(task.x_train + phase))  # as the stream computes it
        assert torch.equal(task.support(5)[0], batch.x_support[tasks.index(task), :5])
    assert tasks[2].descriptor == tuple(batch.descriptors[2].tolist())


def test_train_batches_follow_the_config():
    config = SineConfig(
        amplitude_low=1.0,
        amplitude_high=2.0,
        phase_low=0.5,
        phase_high=0.6,
        x_low=0.0,
        x_high=1.0,
        train_points=7,
        support_points=3,
        query_points=5,
        query_grid=False,
    )
    batch = next(SineTaskSampler(config).train_batches(0, 6))
    assert [tuple(t.shape) for t in _tensors(batch)] == [
        (6, 2),
        (6, 7, 1),
        (6, 7, 1),
        (6, 3, 1),
        (6, 3, 1),
        (6, 5, 1),
        (6, 5, 1),
    ]
    assert bool((batch.descriptors[:, 0] >= 1).all() and (batch.descriptors[:, 0] <= 2).all())
    assert bool((batch.descriptors[:, 1] >= 0.5).all() and (batch.descriptors[:, 1] <= 0.6).all())
    points = torch.cat([batch.x_train, batch.x_support, batch.x_query], dim=1)
    assert bool((points >= 0).all() and (points <= 1).all())
    assert len({tuple(row.flatten().tolist()) for row in batch.x_query}) == 6  # query points drawn, not a grid


def test_train_batches_never_hold_held_out_tasks(sampler):
    held_out = {t.descriptor for t in sampler.test_tasks(600)} | {t.descriptor for t in sampler.validation_tasks(100)}
    for seed in (0, 2017):
        drawn = {tuple(row) for b in _batches(sampler, seed, 25, 100) for row in b.descriptors.tolist()}
        assert len(drawn) == 2500 and not drawn & held_out
        per_task = {t.descriptor for t in _take(sampler.train_stream(seed), 2500)}
        assert not drawn & per_task  # an independent stream, not a reordering of the per-task one


def test_sine_config_rejects_bad_ranges():
    with pytest.raises(ValidationError, match="amplitude_low must be below amplitude_high"):
        SineConfig(amplitude_low=5.0, amplitude_high=1.0)
    with pytest.raises(ValidationError):
        SineConfig(support_points=0)
    with pytest.raises(ValidationError):
        SineConfig(query_grid="sometimes")


def test_oracle_encoder_sees_amplitude_and_phase(sampler):
    encoder = OracleEncoder(sampler)
    assert encoder.observation_size == 2 and encoder.privileged
    for task in sampler.test_tasks(50):
        code = encoder.encode(task, 5)
        assert code.dtype == np.float32 and np.all(np.abs(code) <= 1.0)
        assert code[0] == pytest.approx(2 * (task.descriptor[0] - 0.1) / 4.9 - 1, abs=1e-6)


def test_support_set_encoder_sees_only_the_k_points(sampler):
    encoder = SupportSetEncoder(sampler, SupportSetConfig())
    assert encoder.observation_size == 33 and not encoder.privileged
    task = sampler.test_tasks(1)[0]
    five, ten = encoder.encode(task, 5), encoder.encode(task, 10)
    assert five.shape == ten.shape == (33,)
    assert five[20:30].sum() == 5 and ten[20:30].sum() == 10
    assert np.all(five[5:10] == 0) and np.all(five[15:20] == 0)
    # Shuffling the support points or changing data the encoder may not see changes nothing.
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    shuffled = type(task)(
        task.task_id,
        task.split,
        (0.0, 0.0),
        task.x_train * 0,
        task.y_train * 0,
        task.x_support[order],
        task.y_support[order],
        task.x_query * 0,
        task.y_query * 0,
    )
    np.testing.assert_array_equal(encoder.encode(shuffled, 10), ten)
    x, y = task.support(10)
    assert ten[0] == pytest.approx(float(x.min()) / 5) and np.all(np.diff(ten[:10]) >= 0)


def test_encoders_are_built_from_the_registry(installed_registry):
    sampler = SineTaskSampler(SineConfig(support_points=7))
    context = TaskContext(seed=0, task_sampler=sampler)
    for name, size in (("oracle", 2), ("support-set", 24)):
        spec = installed_registry.get("state_encoder", name).spec
        assert spec.factory(spec.config_model(), context).observation_size == size
