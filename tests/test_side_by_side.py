"""Test tasks rolled out side by side: REML's evaluation chooses many tasks' networks at once.

The evaluator asks a method that can (``networks_for``, :class:`ChoosesForMany`) for a chunk of
tasks at a time. REML steps one environment per task together, asking the policy once per step for
all of them (:class:`ActsInBatches`) and measuring every network in one stacked pass: what a user
relies on is that nothing but the cost changes. The compositions are the ones task-by-task
rollouts choose (best of N included), the pool is untouched, the fine-tuning is the protocol's,
and the seconds spent choosing are recorded beside the evaluation's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reml_core import evaluation as evaluation_module
from reml_core.config import resolve_config
from reml_core.evaluation import FewShotEvaluator
from reml_core.experiment import build_components
from reml_core.interfaces import ActsInBatches, ChoosesForMany, Role
from reml_core.methods import ReMLMethod

SCORES = {"candidate_loss": "composed"}


def _method(installed_registry, tmp_path, *, policy: str = "ppo-mlp", rollouts: int = 1, **env):
    config = resolve_config(
        installed_registry,
        {
            "plugin": "sine",
            "preset": "smoke",
            "policy": policy,
            "eval": {"reml_rollouts": rollouts},
            "env": {**SCORES, **env},
        },
    )
    components = build_components(config)
    context = components.context.with_env(components.make_env(), log_dir=tmp_path / f"logs-{policy}-{rollouts}")
    backend = config.policy.spec.factory(config.policy.config, context)
    return ReMLMethod.for_run(backend, components.make_env(mode="evaluate"), config), components


def _assert_same(network, expected) -> None:
    for mine, theirs in zip(network.parameters(), expected.parameters(), strict=True):
        assert torch.equal(mine, theirs)


@pytest.mark.numerics  # compared within rounding: also run under other CPU dispatches
@pytest.mark.parametrize("policy", ["ppo-mlp", "ppo-lstm"])
@pytest.mark.parametrize("rollouts", [1, 4])
def test_side_by_side_rollouts_choose_what_task_by_task_rollouts_choose(installed_registry, tmp_path, policy, rollouts):
    method, components = _method(installed_registry, tmp_path, policy=policy, rollouts=rollouts)
    assert isinstance(method.policy, ActsInBatches) and isinstance(method, ChoosesForMany)
    tasks = components.task_sampler.test_tasks(9)
    before = {key: value.clone() for key, value in components.pool.state_dict().items()}
    for shots in (5, 10):
        alone = [method.indices_for(task, shots) for task in tasks]
        assert method.indices_for_many(tasks, shots) == alone
        assert method.indices_for_many(tasks[3:5], shots) == alone[3:5]  # any chunk, any size
        networks = method.networks_for(tasks, shots)
        for indices, network in zip(alone, networks, strict=True):
            _assert_same(network, components.pool.build(indices))
        with torch.no_grad():
            next(networks[0].parameters()).add_(1.0)  # a copy: changing it changes no pool layer
    for key, value in components.pool.state_dict().items():
        assert torch.equal(value, before[key])
    assert method.indices_for_many([], 5) == []


def test_without_batched_acting_the_tasks_are_rolled_out_one_by_one(installed_registry, tmp_path):
    method, components = _method(installed_registry, tmp_path)

    class OneAtATime:  # a policy backend with act only (the PolicyBackend protocol's minimum)
        recurrent = False

        def act(self, observation, state, start, mask):
            return method.policy.act(observation, state, start, mask)

    plain = ReMLMethod(OneAtATime(), method.env)
    tasks = components.task_sampler.test_tasks(5)
    networks = plain.networks_for(tasks, 5)
    for task, network in zip(tasks, networks, strict=True):
        _assert_same(network, components.pool.build(method.indices_for(task, 5)))


@pytest.mark.numerics  # compared within rounding: also run under other CPU dispatches
@pytest.mark.parametrize("policy", ["ppo-mlp", "ppo-lstm"])
def test_a_batch_of_observations_acts_as_each_row_alone(installed_registry, tmp_path, policy):
    method, components = _method(installed_registry, tmp_path, policy=policy)
    backend = method.policy
    envs = [method.env.twin() for _ in range(4)]
    tasks = components.task_sampler.test_tasks(4)
    observations = np.stack([env.reset(options={"task": t, "shots": 5})[0] for env, t in zip(envs, tasks)])
    starts = np.ones(4, dtype=bool)
    batch_state, states = None, [None] * 4
    for _ in range(3):
        masks = np.stack([env.action_masks() for env in envs])
        masks[1, :] = True  # an unmasked row too: its most probable action may be any
        decisions, invalid = backend.decisions, backend.invalid_argmax
        actions, _ = backend.act_batch(observations, batch_state, starts, masks)
        probabilities, batch_state = backend.action_probabilities_batch(observations, batch_state, starts, masks)
        assert backend.decisions == decisions + 4
        counted = backend.invalid_argmax - invalid
        alone_invalid = backend.invalid_argmax
        for i in range(4):
            action, _ = backend.act(observations[i], states[i], bool(starts[i]), masks[i])
            alone, states[i] = backend.action_probabilities(observations[i], states[i], bool(starts[i]), masks[i])
            assert int(actions[i]) == action
            np.testing.assert_allclose(probabilities[i], alone, rtol=1e-5, atol=1e-7)
            assert probabilities[i][~masks[i]].sum() == 0 and abs(probabilities[i].sum() - 1) < 1e-9
        assert backend.invalid_argmax - alone_invalid == counted  # the same invalid-argmax count as one by one
        observations = np.stack([env.step(int(a))[0] for env, a in zip(envs, actions)])
        starts[:] = False


def test_a_twin_environment_has_an_episode_of_its_own(installed_registry, tmp_path):
    method, components = _method(installed_registry, tmp_path)
    task, other = components.task_sampler.test_tasks(2)
    method.env.reset(options={"task": task, "shots": 5})
    method.env.step(int(np.flatnonzero(method.env.action_masks())[0]))
    chosen = list(method.env.chosen)
    twin = method.env.twin()
    twin.reset(options={"task": other, "shots": 10})
    twin.step(int(np.flatnonzero(twin.action_masks())[-1]))
    assert method.env.chosen == chosen and method.env.task is task and method.env.shots == 5
    assert twin.pool is method.env.pool and twin.chosen != chosen
    with pytest.raises(RuntimeError, match="evaluate-mode"):
        components.make_env().twin()


class _Counting:
    """A method handing out fixed pool compositions, one by one or many at once, counting the calls."""

    def __init__(self, pool):
        self.pool = pool
        self.chunks: list[int] = []
        by_role = {role: [i for i, r in enumerate(pool.roles) if r is role] for role in set(pool.roles)}
        self.layers = {
            k: [by_role[Role.INPUT][k % 2], by_role[Role.HIDDEN][k // 5 - 1], by_role[Role.OUTPUT][-1]] for k in (5, 10)
        }

    def network_for(self, task, shots):
        return self.pool.build(self.layers[shots])

    def networks_for(self, tasks, shots):
        self.chunks.append(len(tasks))
        return [self.network_for(task, shots) for task in tasks]


def test_the_evaluator_asks_for_chunks_and_measures_the_same(installed_registry, tmp_path, monkeypatch):
    _, components = _method(installed_registry, tmp_path)
    tasks = components.task_sampler.test_tasks(7)
    evaluator = FewShotEvaluator(tasks, components.task_sampler.loss, shots=[5, 10], steps=[0, 1, 10], lr=0.01)
    method = _Counting(components.pool)
    one_by_one = evaluator.few_shot(method.network_for, "alone")
    monkeypatch.setattr(evaluation_module, "CHOOSE_CHUNK", 3)
    together = evaluator.few_shot(method.network_for, "together", many=method.networks_for)
    assert method.chunks == [3, 3, 1, 3, 3, 1]
    assert together == one_by_one
    assert set(evaluator.choosing_seconds) == {"alone", "together"}
    assert all(seconds > 0 for seconds in evaluator.choosing_seconds.values())


def test_a_method_handing_out_the_wrong_number_of_networks_is_named(installed_registry, tmp_path):
    _, components = _method(installed_registry, tmp_path)
    evaluator = FewShotEvaluator(
        components.task_sampler.test_tasks(3), components.task_sampler.loss, shots=[5], steps=[0], lr=0.01
    )
    method = _Counting(components.pool)
    with pytest.raises(RuntimeError, match="broken handed out 2 networks for 3 tasks"):
        evaluator.few_shot(
            method.network_for, "broken", many=lambda tasks, shots: method.networks_for(tasks[:2], shots)
        )
