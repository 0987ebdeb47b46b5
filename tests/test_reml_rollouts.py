"""``eval.reml_rollouts``: REML's network for a test task as the best of N policy rollouts.

N = 1 is the policy's most probable composition, as always. N > 1 adds N - 1 compositions sampled
from the policy's masked probabilities, with a generator seeded by (seed, task, K), and hands out
the one whose support loss after one SGD step is lowest: only the support set decides, the pool is
never changed, the same seed gives the same networks, and a recorded run made before the setting
existed is evaluated as it was (one rollout).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from reml_core import env as env_module
from reml_core import methods as methods_module
from reml_core.batched import MeasureRequest, support_losses
from reml_core.config import load_resolved, resolve_config
from reml_core.errors import ConfigError
from reml_core.experiment import build_components
from reml_core.methods import ReMLMethod, task_generator

#: The policy sees each candidate layer's support loss (as sine's default does): most of what a step measures.
SCORES = {"candidate_loss": "composed"}


def _method(installed_registry, tmp_path, *, policy: str = "ppo-mlp", rollouts: int = 8, seed: int = 0, **user):
    config = resolve_config(
        installed_registry,
        {
            "plugin": "sine",
            "preset": "smoke",
            "policy": policy,
            "seed": seed,
            "eval": {"reml_rollouts": rollouts},
            **user,
        },
    )
    components = build_components(config)
    env = components.make_env()
    context = components.context.with_env(env, log_dir=tmp_path / f"logs-{policy}-{seed}")
    backend = config.policy.spec.factory(config.policy.config, context)
    return ReMLMethod.for_run(backend, components.make_env(mode="evaluate"), config), components, config


@pytest.mark.parametrize("policy", ["ppo-mlp", "ppo-lstm"])
def test_the_network_is_the_lowest_one_step_support_loss_among_the_policys_compositions(
    installed_registry, tmp_path, policy
):
    method, components, config = _method(installed_registry, tmp_path, policy=policy)
    single, _, _ = _method(installed_registry, tmp_path, policy=policy, rollouts=1)
    before = {key: value.clone() for key, value in components.pool.state_dict().items()}
    improved = 0
    for task in components.task_sampler.test_tasks(6):
        compositions = method.compositions(task, 5)
        assert len(compositions) == 8
        assert compositions[0] == single.indices_for(task, 5)  # the most probable one is always a candidate
        for indices in compositions:
            roles = [components.pool.roles[i].value for i in indices]
            assert roles == ["input"] + ["hidden"] * (len(indices) - 2) + ["output"]
            assert len(set(indices)) == len(indices)
        x, y = task.support(5)
        losses = support_losses(
            components.pool,
            [MeasureRequest(tuple(c), x, y) for c in compositions],
            components.task_sampler.loss,
            steps=1,
            lr=config.core.eval.sgd_lr,
        )
        chosen = method.indices_for(task, 5)
        assert chosen == compositions[int(np.argmin(losses))]
        assert losses[compositions.index(chosen)] <= losses[0]
        improved += chosen != compositions[0]
        network = method.network_for(task, 5)
        rebuilt = components.pool.build(chosen)
        for a, b in zip(network.parameters(), rebuilt.parameters(), strict=True):
            assert torch.equal(a, b)
    assert improved > 0  # an untrained policy's most probable composition is not always the best of eight
    for key, value in components.pool.state_dict().items():
        assert torch.equal(value, before[key])  # choosing never changes the pool


def test_the_same_seed_gives_the_same_compositions_and_another_seed_others(installed_registry, tmp_path):
    method, components, _ = _method(installed_registry, tmp_path)
    tasks = components.task_sampler.test_tasks(4)
    first = [method.compositions(task, 10) for task in tasks]
    assert first == [method.compositions(task, 10) for task in tasks]
    other = ReMLMethod(method.policy, method.env, rollouts=8, seed=1)
    assert [other.compositions(task, 10)[0] for task in tasks] == [c[0] for c in first]
    assert [other.compositions(task, 10) for task in tasks] != first


def test_only_the_support_set_decides(installed_registry, tmp_path):
    method, components, _ = _method(installed_registry, tmp_path)
    for task in components.task_sampler.test_tasks(4):
        garbage = dataclasses.replace(
            task,
            x_query=torch.full_like(task.x_query, 1e6),
            y_query=torch.full_like(task.y_query, -1e6),
            x_train=torch.zeros_like(task.x_train),
            y_train=torch.full_like(task.y_train, 1e6),
        )
        assert method.indices_for(garbage, 5) == method.indices_for(task, 5)


def test_a_diverged_composition_never_wins(installed_registry, tmp_path):
    method, components, _ = _method(installed_registry, tmp_path)
    task = components.task_sampler.test_tasks(1)[0]
    compositions = method.compositions(task, 5)
    huge = dataclasses.replace(task, y_support=task.y_support * 1e30)  # every loss overflows
    best, losses = method.best_of(huge, 5, compositions)
    assert best == 0 and all(not math.isfinite(loss) for loss in losses)


def test_sampled_probabilities_are_masked_and_sum_to_one(installed_registry, tmp_path):
    method, components, _ = _method(installed_registry, tmp_path, policy="ppo-lstm")
    env = method.env
    observation, _ = env.reset(options={"task": components.task_sampler.test_tasks(1)[0], "shots": 5})
    mask = env.action_masks()
    probabilities, state = method.policy.action_probabilities(observation, None, True, mask)
    assert probabilities.shape == mask.shape and math.isclose(probabilities.sum(), 1.0, rel_tol=1e-9)
    assert np.all(probabilities[~mask] == 0) and np.all(probabilities[mask] > 0)
    action, act_state = method.policy.act(observation, None, True, mask)
    assert action == int(np.argmax(probabilities))  # the rollout's action is the most probable valid one
    torch.testing.assert_close(state[0], act_state[0])


def test_a_report_and_a_budget_line_say_how_the_network_was_chosen(installed_registry, tmp_path):
    method, _, _ = _method(installed_registry, tmp_path, rollouts=4)
    assert "best of 4 policy rollouts" in method.describe() and "one SGD step (lr 0.01)" in method.describe()
    from reml_core.reports import _rollouts_words

    assert "best of 4 rollouts" in _rollouts_words({"reml_rollouts": 4, "sgd_lr": 0.01})
    assert _rollouts_words({"sgd_lr": 0.01}) == "a deterministic rollout of the policy"


@pytest.mark.parametrize(
    ("user", "words"),
    [
        ({"eval": {"reml_rollouts": 0}}, "eval.reml_rollouts"),
        ({"eval": {"reml_rollouts": "many"}}, "eval.reml_rollouts"),
        ({"eval": {"reml_rollouts": 4}, "env": {"choose": {"finetune_sgd_lr": [0.01, 0.1]}}}, "env.choose"),
    ],
)
def test_a_bad_setting_is_refused_by_name(installed_registry, user, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        resolve_config(installed_registry, {"plugin": "sine", "preset": "smoke", **user})


def test_a_policy_that_cannot_sample_is_refused_when_rollouts_ask_for_it(installed_registry, tmp_path):
    method, _, _ = _method(installed_registry, tmp_path, rollouts=1)

    class ArgmaxOnly:
        recurrent = False

        def act(self, observation, state, episode_start, action_mask):
            return int(np.flatnonzero(action_mask)[0]), state

    with pytest.raises(ValueError, match="cannot sample a rollout"):
        ReMLMethod(ArgmaxOnly(), method.env, rollouts=2)  # type: ignore[arg-type]
    assert ReMLMethod(ArgmaxOnly(), method.env).rollouts == 1  # type: ignore[arg-type]


def test_a_run_recorded_before_the_setting_is_evaluated_with_one_rollout(installed_registry, tmp_path):
    config = resolve_config(installed_registry, {"plugin": "sine", "preset": "default"})
    assert config.core.eval.reml_rollouts == 8  # sine's default preset's own setting
    recorded = config.to_dict()
    del recorded["eval"]["reml_rollouts"]
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    assert load_resolved(tmp_path / "config.json", installed_registry).core.eval.reml_rollouts == 1


def test_each_test_task_costs_at_most_n_rollouts_and_shared_first_steps_are_done_once(
    installed_registry, tmp_path, monkeypatch
):
    method, components, _ = _method(installed_registry, tmp_path, rollouts=6, env=SCORES)
    calls = {"act": 0, "sample": 0, "measure": 0}
    policy = method.policy
    act, probabilities = policy.act, policy.action_probabilities

    def counted_act(*args):
        calls["act"] += 1
        return act(*args)

    def counted_probabilities(*args):
        calls["sample"] += 1
        return probabilities(*args)

    measure = env_module.measure

    def counted_measure(envs, **options):
        calls["measure"] += 1
        return measure(envs, **options)

    policy.act, policy.action_probabilities = counted_act, counted_probabilities
    monkeypatch.setattr(env_module, "measure", counted_measure)
    task = components.task_sampler.test_tasks(1)[0]
    compositions = method.compositions(task, 5)
    finetuned = []
    monkeypatch.setattr(
        methods_module,
        "support_losses",
        lambda pool, requests, *a, **k: finetuned.extend(requests) or [1.0] * len(requests),
    )
    method.best_of(task, 5, compositions + compositions[:2])
    assert sorted(r.indices for r in finetuned) == sorted({tuple(c) for c in compositions})  # each composition once
    depth = method.env.depth
    # the order actions were taken in (input, output, hidden...) from the network order the rollouts return
    taken = [(c[0], c[-1], *c[1:-1]) for c in compositions]
    sampled_prefixes = {a[:n] for a in taken[1:] for n in range(depth)}
    measured_prefixes = {a[:n] for a in taken for n in range(1, depth)}  # every step before the last measures
    assert calls["act"] == depth  # the most probable rollout
    assert calls["sample"] == len(sampled_prefixes) < 5 * depth  # the first step at least is shared by all five
    assert calls["measure"] == len(measured_prefixes) < 6 * (depth - 1)


@pytest.mark.parametrize("policy", ["ppo-mlp", "ppo-lstm"])
def test_shared_first_steps_give_the_compositions_of_rollouts_run_afresh(installed_registry, tmp_path, policy):
    method, components, _ = _method(installed_registry, tmp_path, policy=policy, env=SCORES)
    for task in components.task_sampler.test_tasks(3):
        for shots in (5, 10):
            generator = task_generator(method.seed, task, shots)
            afresh = [method.rollout(task, shots)[0]]
            afresh += [method.rollout(task, shots, generator)[0] for _ in range(method.rollouts - 1)]
            assert method.compositions(task, shots) == afresh


def test_remembered_measurements_give_the_observations_of_fresh_ones(installed_registry, tmp_path):
    _, components, _ = _method(installed_registry, tmp_path, env=SCORES)
    env = components.make_env(mode="evaluate")
    assert env.scores_candidates  # the candidate scores are part of what is remembered
    rng = np.random.default_rng(0)
    task = components.task_sampler.test_tasks(1)[0]
    paths = []
    for _ in range(6):  # random valid compositions, several sharing their first layers
        env.reset(options={"task": task, "shots": 5})
        path = []
        for _ in range(env.depth):
            action = int(rng.choice(np.flatnonzero(env.action_masks())))
            path.append(action)
            env.step(action)
        paths.append(path if len(paths) % 2 == 0 else paths[-1][:2] + path[2:])

    def observations(path, shots=5):
        seen = [env.reset(options={"task": task, "shots": shots})[0]]
        for action in path:
            if not env.action_masks()[action]:  # a spliced path may repeat a layer: stop where it would
                break
            seen.append(env.step(action)[0])
        return seen

    fresh = [observations(path) for path in paths] + [observations(paths[0], shots=10)]
    with env.remembering_measurements():
        # the same layers on another K are measured again, not taken from K = 5
        remembered = [observations(path) for path in paths] + [observations(paths[0], shots=10)]
    assert not np.array_equal(fresh[0][-2], fresh[-1][-2])  # K shows in what was measured
    for a, b in zip(fresh, remembered, strict=True):
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert env._remembered is None  # forgotten when the block ends


def test_only_an_evaluating_environment_remembers_measurements(installed_registry, tmp_path):
    _, components, _ = _method(installed_registry, tmp_path)
    with pytest.raises(RuntimeError, match="evaluate mode"):
        with components.make_env().remembering_measurements():
            pass
