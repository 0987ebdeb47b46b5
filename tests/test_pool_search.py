"""The pool-search rival (``eval.pool_search``): REML's pool without its policy, composed per task by support loss."""

from __future__ import annotations

import copy

import torch

from reml_core.inner_loop import evaluate_loss, finetune_sgd
from reml_core.interfaces import Role, TaskContext
from reml_core.methods import PoolSearchMethod
from reml_plugins.dense.pool import DenseLayerPool, DensePoolConfig
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler


def _mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((prediction - target) ** 2)


def _setup(candidates: int = 12):
    sampler = SineTaskSampler(SineConfig())
    pool = DenseLayerPool(
        DensePoolConfig(input_layers=3, hidden_layers=5, output_layers=3, width=16),
        TaskContext(seed=0, task_sampler=sampler),
    )
    search = PoolSearchMethod(pool, _mse, depth=4, candidates=candidates, lr=0.01, seed=7)
    return sampler, pool, search


def test_it_hands_out_the_candidate_with_the_lowest_support_loss_after_one_step():
    sampler, pool, search = _setup()
    for task in sampler.test_tasks(5):
        for shots in (5, 10):
            x, y = task.support(shots)
            scores = []
            for indices in search._compositions(task, shots):
                network = pool.build(indices)
                assert finetune_sgd(network, x, y, _mse, steps=1, lr=0.01)
                scores.append(evaluate_loss(network, x, y, _mse))
            chosen = search.indices_for(task, shots)
            best = min(scores)
            # the stacked search may round differently from one network at a time: any candidate within rounding of the
            # best
            assert scores[search._compositions(task, shots).index(chosen)] <= best * (1 + 1e-5) + 1e-7


def test_compositions_are_valid_and_seeded_by_task_and_k():
    sampler, pool, search = _setup()
    task, other = sampler.test_tasks(2)
    first = search._compositions(task, 5)
    assert first == search._compositions(task, 5)
    assert first != search._compositions(task, 10) and first != search._compositions(other, 5)
    for indices in first:
        roles = [pool.roles[i] for i in indices]
        assert roles == [Role.INPUT, Role.HIDDEN, Role.HIDDEN, Role.OUTPUT] and len(set(indices)) == 4


def test_searching_never_changes_the_pool():
    sampler, pool, search = _setup()
    before = copy.deepcopy(pool.state_dict())
    for task in sampler.test_tasks(3):
        search.network_for(task, 5)
    after = pool.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_one_candidate_is_one_random_composition():
    sampler, _, search = _setup(candidates=1)
    task = sampler.test_tasks(1)[0]
    assert search.indices_for(task, 5) == search._compositions(task, 5)[0]
