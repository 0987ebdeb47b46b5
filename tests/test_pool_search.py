"""The pool-search rival (``eval.pool_search``): REML's pool without its policy, composed per task by support loss."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from helpers.runs import cli
from pydantic import ValidationError

from reml_core.batched import EpisodeEnd
from reml_core.errors import CheckpointError, ComponentBuildError
from reml_core.inner_loop import evaluate_loss, finetune_sgd
from reml_core.interfaces import Role, TaskContext
from reml_core.methods import PoolSearchMethod
from reml_core.pool_update import ProtocolPoolUpdate
from reml_plugins.dense.pool import DenseLayerPool, DensePoolConfig
from reml_plugins.maml.pool_search import PoolSearchBaseline, PoolSearchConfig
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


# -- the pool-search baseline: the same search as the composer in meta-training (issue 21, item 4b) ------------------


def _baseline(seed: int = 0, **config) -> tuple[SineTaskSampler, DenseLayerPool, PoolSearchBaseline]:
    sampler = SineTaskSampler(SineConfig())
    context = TaskContext(seed=seed, task_sampler=sampler, depth=4)
    pool = DenseLayerPool(DensePoolConfig(input_layers=3, hidden_layers=5, output_layers=3, width=16), context)
    options = {"candidates": 8, "meta_batch": 6, "iterations": 5} | config
    return sampler, pool, PoolSearchBaseline(PoolSearchConfig(**options), context.with_pool_and_encoder(pool, None))


def _states_equal(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def test_the_batched_search_of_a_meta_batch_chooses_what_each_task_s_own_search_chooses():
    sampler, _, search = _setup()
    tasks = sampler.test_tasks(6)
    shots = [5, 10, 5, 10, 10, 5]
    together = search.choose_many(tasks, shots)
    alone = [search.indices_for(task, k) for task, k in zip(tasks, shots)]
    assert together == alone


def test_it_trains_its_own_copy_of_the_run_s_pool_and_leaves_the_run_s_alone():
    sampler, pool, baseline = _baseline()
    before = copy.deepcopy(pool.state_dict())
    assert _states_equal(baseline.pool.state_dict(), before)  # the layers REML starts from
    summary = baseline.meta_train(sampler.train_stream(0), progress=False)
    assert _states_equal(pool.state_dict(), before)
    assert not _states_equal(baseline.pool.state_dict(), before)
    assert summary["iterations"] == 5 and baseline.iterations_done == 5
    assert 1 <= summary["compositions_chosen"] <= 30 and math.isfinite(summary["final_meta_loss"])


def test_a_meta_step_moves_exactly_the_layers_the_searched_compositions_used():
    sampler, _, baseline = _baseline()
    stream = sampler.train_stream(3)
    tasks = [next(stream) for _ in range(2)]
    before = copy.deepcopy(baseline.pool.state_dict())
    _, chosen = baseline.meta_step(tasks, [5, 10])
    used = {index for composition in chosen for index in composition}
    after = baseline.pool.state_dict()
    offset = 0
    for role in ("input", "hidden", "output"):
        rows = before[f"{role}.weight"].shape[0]
        for row in range(rows):
            moved = not torch.equal(before[f"{role}.weight"][row], after[f"{role}.weight"][row])
            assert moved == (offset + row in used), (role, row)
        offset += rows


def test_its_update_is_the_protocol_rule_on_the_searched_compositions():
    """One meta-step equals REML's protocol update (one Adam step, the same settings) applied to the ends the search
    chose: the baseline differs from REML only in who composes."""
    sampler, _, baseline = _baseline()
    stream = sampler.train_stream(4)
    tasks = [next(stream) for _ in range(4)]
    shots = [5, 10, 10, 5]
    chosen = baseline.search.choose_many(tasks, shots)
    reference = copy.deepcopy(baseline.pool)
    update = ProtocolPoolUpdate(reference, baseline._env_config(), _mse)
    update.apply([EpisodeEnd(task, tuple(c), k, 0) for task, c, k in zip(tasks, chosen, shots)], [True] * 4)
    baseline.meta_step(tasks, shots)
    assert _states_equal(baseline.pool.state_dict(), reference.state_dict())


def test_meta_training_is_seeded_and_learns_the_adaptation():
    runs = []
    for _ in range(2):
        sampler, _, baseline = _baseline(iterations=80, meta_batch=10, pool_adam_lr=0.01, meta_steps=[1])
        validation = sampler.validation_tasks(20)

        def adapted(baseline=baseline, validation=validation) -> float:
            losses = []
            for task in validation:
                network = baseline.network_for(task, 10)
                x, y = task.support(10)
                assert finetune_sgd(network, x, y, _mse, steps=1, lr=0.01)
                losses.append(evaluate_loss(network, task.x_query, task.y_query, _mse))
            return sum(losses) / len(losses)

        untrained = adapted()
        baseline.meta_train(sampler.train_stream(0), progress=False)
        runs.append((untrained, adapted(), baseline.pool.state_dict()))
    (untrained, trained, state), (_, again, state_again) = runs
    assert _states_equal(state, state_again) and trained == again
    assert trained < 0.85 * untrained, (untrained, trained)  # measured: 2.25 -> 1.62


def test_save_and_load_reproduce_its_networks_and_refuse_another_pool_or_depth(tmp_path):
    sampler, _, baseline = _baseline()
    baseline.meta_train(sampler.train_stream(0), progress=False)
    baseline.save(tmp_path / "saved")
    _, _, fresh = _baseline()
    fresh.load(tmp_path / "saved")
    assert fresh.iterations_done == 5
    for task in sampler.test_tasks(3):
        first, second = baseline.network_for(task, 5), fresh.network_for(task, 5)
        assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    context = TaskContext(seed=0, task_sampler=sampler, depth=4)
    wider = DenseLayerPool(DensePoolConfig(input_layers=3, hidden_layers=5, output_layers=3, width=8), context)
    other = PoolSearchBaseline(PoolSearchConfig(candidates=8), context.with_pool_and_encoder(wider, None))
    with pytest.raises(
        CheckpointError, match=r"tensor input.weight is float32 \(3, 16, 1\), expected float32 \(3, 8, 1\)"
    ):
        other.load(tmp_path / "saved")
    deeper_context = TaskContext(seed=0, task_sampler=sampler, depth=5)
    deeper = PoolSearchBaseline(
        PoolSearchConfig(candidates=8), deeper_context.with_pool_and_encoder(baseline.pool, None)
    )
    with pytest.raises(CheckpointError, match="depth 4 but this run composes depth-5 networks"):
        deeper.load(tmp_path / "saved")


def test_it_refuses_what_it_cannot_train_by_name():
    sampler, pool, _ = _baseline()
    with pytest.raises(ComponentBuildError, match="no parameters\\(\\) and build_batch"):
        PoolSearchBaseline(
            PoolSearchConfig(), TaskContext(seed=0, task_sampler=sampler, depth=4).with_pool_and_encoder(object(), None)
        )
    with pytest.raises(ComponentBuildError, match="needs 6 distinct hidden layer"):
        PoolSearchBaseline(
            PoolSearchConfig(), TaskContext(seed=0, task_sampler=sampler, depth=8).with_pool_and_encoder(pool, None)
        )
    for bad, field in (
        ({"meta_steps": [0]}, "meta_steps"),
        ({"shots": [0, 5]}, "shots"),
        ({"candidates": 0}, "candidates"),
    ):
        with pytest.raises(ValidationError, match=field):
            PoolSearchConfig(**bad)


def test_reml_bench_trains_saves_and_reloads_pool_search_to_the_same_numbers(tmp_path):
    common = ("--plugin", "sine", "--preset", "smoke", "--set", "eval.test_tasks=5", "--set", "eval.curve_steps=0")
    settings = ("--set", "baselines.pool-search.iterations=3", "--set", "baselines.pool-search.candidates=4")
    out, again = tmp_path / "bench", tmp_path / "again"
    first = cli("reml-bench", *common, *settings, "--methods", "pool-search", "--out", str(out), timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    second = cli(
        "reml-bench",
        *common,
        *settings,
        "--methods",
        "pool-search",
        "--from",
        str(out),
        "--out",
        str(again),
        timeout=600,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    results = [json.loads((folder / "results.json").read_text()) for folder in (out, again)]
    assert results[1]["sources"]["0"]["pool-search"].startswith("loaded from")
    assert results[1]["methods"]["pool-search"] == results[0]["methods"]["pool-search"]
    assert "| pool-search |" in (out / "report.md").read_text()
