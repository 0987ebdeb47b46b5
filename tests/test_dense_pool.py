"""The dense layer pool: building, writing back, saving and loading, and its fast gradients."""

from __future__ import annotations

import pytest
import torch

from reml_core.interfaces import Role, TaskContext
from reml_plugins.dense.pool import DenseLayerPool, DensePoolConfig
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler

pytestmark = (
    pytest.mark.numerics
)  # compares floats exactly or to rounding: also run under other CPU dispatches (make test-dispatch)


@pytest.fixture
def pool() -> DenseLayerPool:
    return DenseLayerPool(
        DensePoolConfig(input_layers=2, hidden_layers=4, output_layers=2, width=8),
        TaskContext(seed=0, task_sampler=SineTaskSampler(SineConfig())),
    )


def test_roles_are_known_per_index(pool):
    assert pool.size == 8
    assert pool.roles == [Role.INPUT] * 2 + [Role.HIDDEN] * 4 + [Role.OUTPUT] * 2
    assert (
        pool.locate(0) == (Role.INPUT, 0) and pool.locate(5) == (Role.HIDDEN, 3) and pool.locate(7) == (Role.OUTPUT, 1)
    )
    with pytest.raises(IndexError):
        pool.locate(8)


def test_built_networks_are_copies_and_write_back_targets_their_slots(pool):
    network = pool.build([1, 3, 2, 6])
    original = pool.state_dict()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(1.0)
    assert all(torch.equal(original[k], v) for k, v in pool.state_dict().items())  # building copies
    pool.write_back([1, 3, 2, 6], network)
    state = pool.state_dict()
    assert torch.equal(state["hidden.weight"][1], original["hidden.weight"][1] + 1)  # pool index 3
    assert torch.equal(state["hidden.weight"][0], original["hidden.weight"][0] + 1)  # pool index 2
    assert torch.equal(state["hidden.weight"][2], original["hidden.weight"][2])  # index 4: untouched
    assert torch.equal(state["input.bias"][1], original["input.bias"][1] + 1)
    assert torch.equal(state["output.weight"][0], original["output.weight"][0] + 1)


def test_same_seed_same_pool_and_fresh_networks_share_the_architecture(pool):
    twin = DenseLayerPool(pool.config, TaskContext(seed=0, task_sampler=SineTaskSampler(SineConfig())))
    assert all(torch.equal(a, b) for a, b in zip(pool.state_dict().values(), twin.state_dict().values()))
    fresh = pool.fresh_network(4, torch.Generator().manual_seed(1))
    built = pool.build([0, 2, 3, 6])
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in built.parameters()]
    x = torch.linspace(-5, 5, 7).unsqueeze(1)
    assert fresh(x).shape == built(x).shape == (7, 1)


def test_state_round_trip_and_rejects_damaged_state(pool):
    other = DenseLayerPool(pool.config, TaskContext(seed=9, task_sampler=SineTaskSampler(SineConfig())))
    other.load_state_dict(pool.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(pool.state_dict().values(), other.state_dict().values()))
    damaged = pool.state_dict()
    damaged["hidden.weight"] = damaged["hidden.weight"][:2]
    with pytest.raises(ValueError, match=r"'hidden.weight' has shape \(2, 8, 8\), expected \(4, 8, 8\)"):
        other.load_state_dict(damaged)
    poisoned = pool.state_dict()
    poisoned["output.bias"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        other.load_state_dict(poisoned)
    with pytest.raises(ValueError, match="keys"):
        other.load_state_dict({"input.weight": pool.state_dict()["input.weight"]})


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_hand_written_gradients_match_autograd(activation):
    pool = DenseLayerPool(
        DensePoolConfig(input_layers=1, hidden_layers=3, output_layers=1, width=16, activation=activation),
        TaskContext(seed=3, task_sampler=SineTaskSampler(SineConfig())),
    )
    network = pool.build([0, 1, 2, 3, 4])
    params = list(network.parameters())
    x = torch.rand(50, 1) * 10 - 5
    y = 2 * torch.sin(x + 0.3)

    def loss_fn(prediction, target):
        return torch.mean((prediction - target) ** 2)

    loss, grads = network.value_and_grad(params, x, y, loss_fn)
    reference_loss = loss_fn(network(x), y)
    reference = torch.autograd.grad(reference_loss, params)
    assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-6)
    for ours, theirs in zip(grads, reference):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_diagnostics_report_dead_units_and_norms(pool):
    probe = torch.linspace(-5, 5, 101).unsqueeze(1)
    stats = pool.diagnostics(probe)
    assert set(stats) == {
        "dead_input_units",
        "dead_hidden_units",
        "weight_norm_input",
        "weight_norm_hidden",
        "weight_norm_output",
    }
    assert 0 <= stats["dead_input_units"] <= 1 and 0 <= stats["dead_hidden_units"] <= 1
    with torch.no_grad():
        pool.biases[Role.INPUT].fill_(-1e3)  # every input unit now negative everywhere
    assert pool.diagnostics(probe)["dead_input_units"] == 1.0
