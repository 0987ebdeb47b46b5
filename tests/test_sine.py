"""The sine task plugin and its state encoders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from reml_core.interfaces import BuildContext
from reml_plugins.sine.encoders import OracleEncoder, SupportSetConfig, SupportSetEncoder
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
    shuffled = type(task)(task.task_id, task.split, (0.0, 0.0), task.x_train * 0, task.y_train * 0,
                          task.x_support[order], task.y_support[order], task.x_query * 0, task.y_query * 0)
    np.testing.assert_array_equal(encoder.encode(shuffled, 10), ten)
    x, y = task.support(10)
    assert ten[0] == pytest.approx(float(x.min()) / 5) and np.all(np.diff(ten[:10]) >= 0)


def test_encoders_are_built_from_the_registry(installed_registry):
    sampler = SineTaskSampler(SineConfig(support_points=7))
    context = BuildContext(seed=0, task_sampler=sampler)
    for name, size in (("oracle", 2), ("support-set", 24)):
        spec = installed_registry.get("state_encoder", name).spec
        assert spec.factory(spec.config_model(), context).observation_size == size
