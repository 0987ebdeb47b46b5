"""A method's own adaptation rate (issue 23): per-parameter rates, chosen rates and chosen step counts."""

from __future__ import annotations

import copy

import torch
from torch import nn

from reml_core.evaluation import FewShotEvaluator, OwnAdaptation
from reml_core.inner_loop import finetune_sgd
from reml_core.interfaces import Task


def _task(seed: int = 0) -> Task:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(30, 1, generator=generator) * 10 - 5
    y = 2.0 * torch.sin(x + 0.5)
    return Task(f"t{seed}", "test", (2.0, 0.5), x[:10], y[:10], x[10:20], y[10:20], x[20:], y[20:])


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))


def test_per_parameter_rates_equal_to_one_rate_give_the_same_network() -> None:
    task = _task()
    x, y = task.support(5)
    one, many = _net(), _net()
    assert finetune_sgd(one, x, y, nn.functional.mse_loss, steps=3, lr=0.02)
    rates = [torch.full_like(p, 0.02) for p in many.parameters()]
    assert finetune_sgd(many, x, y, nn.functional.mse_loss, steps=3, lr=rates)
    for a, b in zip(one.parameters(), many.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_a_zero_rate_freezes_exactly_the_parameters_it_covers() -> None:
    task = _task()
    x, y = task.support(5)
    network = _net()
    before = copy.deepcopy(network)
    rates = [torch.zeros_like(p) if i == 0 else torch.full_like(p, 0.05) for i, p in enumerate(network.parameters())]
    assert finetune_sgd(network, x, y, nn.functional.mse_loss, steps=2, lr=rates)
    after, original = list(network.parameters()), list(before.parameters())
    assert torch.equal(after[0], original[0])
    assert not torch.equal(after[-1], original[-1])


def test_own_rate_rows_use_the_methods_rate_and_chosen_steps_fill_only_their_column() -> None:
    tasks = [_task(i) for i in range(4)]
    evaluator = FewShotEvaluator(tasks, nn.functional.mse_loss, shots=[5], steps=[0, 1, 10], lr=0.01)
    fixed = evaluator.few_shot(lambda task, shots: _net())
    same = evaluator.few_shot(lambda task, shots: (_net(), OwnAdaptation(lr=0.01)), own=True)
    assert {s: c.mse_mean for s, c in fixed[5].items()} == {s: c.mse_mean for s, c in same[5].items()}
    faster = evaluator.few_shot(lambda task, shots: (_net(), OwnAdaptation(lr=0.05)), own=True)
    assert faster[5][0].mse_mean == fixed[5][0].mse_mean
    assert faster[5][1].mse_mean != fixed[5][1].mse_mean

    def chosen(task: Task, shots: int) -> tuple[nn.Module, OwnAdaptation]:
        return _net(), OwnAdaptation(lr=0.01, steps=1 if task.task_id in {"t0", "t1"} else 10)

    split = evaluator.few_shot(chosen, own=True)
    assert split[5][0].tasks == 4
    assert split[5][1].tasks == 2 and split[5][10].tasks == 2
