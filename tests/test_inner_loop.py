"""The inner training loops agree with torch's own optimizers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from reml_core.inner_loop import finetune_sgd, train_adam
from reml_core.interfaces import TaskContext
from reml_plugins.dense.pool import DenseLayerPool, DensePoolConfig
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler

pytestmark = (
    pytest.mark.numerics
)  # compares floats exactly or to rounding: also run under other CPU dispatches (make test-dispatch)


def _mse(prediction, target):
    return torch.mean((prediction - target) ** 2)


def _data(n=100):
    x = torch.rand(n, 1, generator=torch.Generator().manual_seed(0)) * 10 - 5
    return x, 3 * torch.sin(x + 1)


def _networks():
    pool = DenseLayerPool(
        DensePoolConfig(input_layers=1, hidden_layers=2, output_layers=1, width=12),
        TaskContext(seed=1, task_sampler=SineTaskSampler(SineConfig())),
    )
    composed = pool.build([0, 1, 2, 3])
    plain = nn.Sequential(nn.Linear(1, 12), nn.ReLU(), nn.Linear(12, 1))  # no fast path: autograd
    return [composed, plain]


@pytest.mark.parametrize("network", _networks(), ids=["composed-fast-gradients", "plain-autograd"])
def test_adam_matches_torch_optim_adam(network):
    x, y = _data()
    ours, reference = copy.deepcopy(network), copy.deepcopy(network)
    assert train_adam(ours, x, y, _mse, steps=20, lr=0.01, batch_size=100)
    optimizer = torch.optim.Adam(reference.parameters(), lr=0.01)
    for _ in range(20):
        optimizer.zero_grad()
        _mse(reference(x), y).backward()
        optimizer.step()
    for a, b in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_minibatches_follow_the_generator():
    x, y = _data()
    network = _networks()[0]
    a, b, c = copy.deepcopy(network), copy.deepcopy(network), copy.deepcopy(network)
    for net, seed in ((a, 5), (b, 5), (c, 6)):
        train_adam(net, x, y, _mse, steps=5, lr=0.01, batch_size=10, generator=torch.Generator().manual_seed(seed))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize("network", _networks(), ids=["composed-fast-gradients", "plain-autograd"])
def test_sgd_matches_torch_optim_sgd(network):
    x, y = _data(10)
    ours, reference = copy.deepcopy(network), copy.deepcopy(network)
    assert finetune_sgd(ours, x, y, _mse, steps=10, lr=0.01)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.01)
    for _ in range(10):
        optimizer.zero_grad()
        _mse(reference(x), y).backward()
        optimizer.step()
    for a, b in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_non_finite_training_is_reported():
    x, y = _data()
    network = _networks()[0]
    assert not train_adam(copy.deepcopy(network), x, y, _mse, steps=30, lr=1e12, batch_size=100)
    assert not finetune_sgd(copy.deepcopy(network), x, y * 1e30, _mse, steps=30, lr=1e6)
