"""env.candidate_loss: the observation scores each layer that may fill the next slot by its support loss."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from reml_core.config import ConfigError, resolve_config
from reml_core.env import candidate_score_rows, candidate_scores, network_order
from reml_core.inner_loop import evaluate_loss, finetune_sgd
from reml_core.interfaces import Role
from reml_core.vec_env import stream_seed


def _pool_state(pool) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in pool.state_dict().items()}


def _scores(observation, pool_size: int) -> np.ndarray:
    return observation[-pool_size:]


def _direct_losses(env, layers: list[int], candidates: list[int], steps: int) -> list[float]:
    """Each candidate's support loss computed here, network by network, from the pool as it is."""
    x, y = env.task.support(env.shots)
    losses = []
    for candidate in candidates:
        network = env.pool.build(network_order([*layers, candidate]))
        if steps and not finetune_sgd(network, x, y, env.task_sampler.loss, steps=steps, lr=env.config.finetune_sgd_lr):
            losses.append(math.inf)
            continue
        losses.append(evaluate_loss(network, x, y, env.task_sampler.loss))
    return losses


def _candidates(env, layers: list[int]) -> list[int]:
    role = [Role.INPUT, Role.OUTPUT, *([Role.HIDDEN] * (env.depth - 2))][len(layers)]
    return [i for i, r in enumerate(env.pool.roles) if r == role and i not in layers]


@pytest.mark.numerics  # compared within rounding: also run under other CPU dispatches
@pytest.mark.parametrize("plugin", ["sine", "digits"])  # a dense pool and a conv pool
@pytest.mark.parametrize("kind, steps", [("composed", 0), ("adapted", 1)])
def test_each_slot_scores_exactly_its_candidates_by_their_own_support_loss(make_components, plugin, kind, steps):
    components = make_components(plugin=plugin, env={"depth": 4, "candidate_loss": kind})
    env = components.make_env()
    size = components.pool.size
    plain = make_components(plugin=plugin, env={"depth": 4}).make_env()
    assert env.observation_space.shape[0] == plain.observation_space.shape[0] + size
    observation, _ = env.reset(seed=2)
    assert not _scores(observation, size).any()  # before the input layer there is no network to score a layer in
    rng = np.random.default_rng(0)
    layers: list[int] = []
    for _ in range(env.depth - 1):
        layers.append(int(rng.choice(np.flatnonzero(env.action_masks()))))
        observation, *_ = env.step(layers[-1])
        scores = _scores(observation, size)
        candidates = _candidates(env, layers)
        assert set(np.flatnonzero(scores).tolist()) <= set(candidates)  # only layers that may fill the next slot
        assert set(candidates) == set(np.flatnonzero(env.action_masks()).tolist())
        expected = candidate_scores(_direct_losses(env, layers, candidates, steps))
        np.testing.assert_allclose(scores[candidates], expected, atol=1e-4)
        best = candidates[int(np.argmin(_direct_losses(env, layers, candidates, steps)))]
        assert scores.argmax() == best  # the highest score is the candidate with the lowest support loss
    observation, _, terminated, _, _ = env.step(int(np.flatnonzero(env.action_masks())[0]))
    assert terminated and not _scores(observation, size).any()  # no slot is left to choose for
    assert env.observation_space.contains(observation)


def test_scores_read_the_support_set_only_and_never_change_the_pool(make_components):
    components = make_components(env={"depth": 4, "candidate_loss": "adapted"})
    env = components.make_env(mode="evaluate")
    task = components.task_sampler.test_tasks(1)[0]
    # Query and training data a few-shot method must not see, replaced by garbage: the scores cannot change.
    hidden = dataclasses.replace(
        task,
        x_query=torch.full_like(task.x_query, float("nan")),
        y_query=torch.full_like(task.y_query, 1e9),
        x_train=torch.full_like(task.x_train, float("nan")),
        y_train=torch.full_like(task.y_train, 1e9),
    )
    before = _pool_state(env.pool)
    traces = []
    for variant in (task, hidden):
        observation, _ = env.reset(options={"task": variant, "shots": 5})
        trace = [observation]
        for _ in range(env.depth - 1):
            observation, *_ = env.step(int(np.flatnonzero(env.action_masks())[0]))
            trace.append(observation)
        traces.append(np.stack(trace))
    np.testing.assert_array_equal(traces[0], traces[1])
    assert all(torch.equal(before[k], v) for k, v in _pool_state(env.pool).items())


@pytest.mark.numerics  # compared within rounding: also run under other CPU dispatches
def test_the_vector_env_scores_as_each_env_alone(make_components):
    components = make_components(env={"depth": 4, "candidate_loss": "adapted"})
    vector = components.make_vec_env(4)
    vector.seed(5)
    batched = [vector.reset()]
    singles = [components.make_env() for _ in range(4)]
    alone = [[env.reset(seed=stream_seed(5, index))[0]] for index, env in enumerate(singles)]
    rng = np.random.default_rng(1)
    for _ in range(3):
        actions = np.array([rng.choice(np.flatnonzero(env.action_masks())) for env in vector.envs])
        batched.append(vector.step(actions)[0])
        for index, env in enumerate(singles):
            alone[index].append(env.step(actions[index])[0])
    size = components.pool.size
    for step, observations in enumerate(batched):
        for index in range(4):
            scores, expected = _scores(observations[index], size), _scores(alone[index][step], size)
            np.testing.assert_allclose(scores, expected, atol=1e-3)
            assert scores.argmax() == expected.argmax()


@pytest.mark.numerics  # compared within rounding: also run under other CPU dispatches
def test_workers_score_shares_of_the_candidates_to_the_same_numbers(make_components):
    # "adapted": candidates fine-tuned a step each, split across the workers (the dense pool scores "composed"
    # candidates itself, in the collector, far cheaper than shipping them)
    components = make_components(env={"depth": 5, "candidate_loss": "adapted"})
    traces = []
    for workers in (1, 2):
        vector = components.make_vec_env(64, workers=workers)
        try:
            vector.seed(3)
            trace = [vector.reset()]
            rng = np.random.default_rng(4)
            for _ in range(4):
                actions = np.array([rng.choice(np.flatnonzero(env.action_masks())) for env in vector.envs])
                trace.append(vector.step(actions)[0])
            if workers == 2:
                assert vector.workers.started  # hundreds of candidates a step: the second process scored its share
            traces.append(np.stack(trace))
        finally:
            vector.close()
    np.testing.assert_allclose(traces[1], traces[0], atol=1e-4)


def test_scores_rank_the_candidates_and_survive_non_finite_losses():
    scores = candidate_scores([0.5, 2.0, 0.1, 8.0])
    assert list(np.argsort(-scores)) == [2, 0, 1, 3]
    assert scores.mean() == pytest.approx(0.0, abs=1e-6) and scores.std() == pytest.approx(1.0, rel=1e-5)
    diverged = candidate_scores([0.5, math.inf, float("nan"), 0.2])
    assert np.isfinite(diverged).all() and diverged[3] > diverged[0] > diverged[1] and diverged[1] == diverged[2]
    assert not candidate_scores([1.0, 1.0, 1.0]).any()  # all alike: nothing to tell apart
    assert not candidate_scores([math.inf, math.nan]).any()
    assert not candidate_scores([3.0]).any()


def _one_row_scores(losses: np.ndarray) -> np.ndarray:
    """The scores as defined, for one env's candidates on their own (the reference)."""
    values = np.log1p(np.maximum(losses, 0.0))
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(len(values), dtype=np.float32)
    values = np.where(finite, values, values[finite].max() + 1.0)
    spread = values.std()
    return (
        np.zeros(len(values), np.float32) if spread < 1e-8 else ((values.mean() - values) / spread).astype(np.float32)
    )


def test_scoring_every_envs_candidates_as_one_array_gives_each_envs_own_scores_exactly():
    # the vector env scores a slot's candidates for all its envs at once: an observation must not depend on that
    rng = np.random.default_rng(0)
    for trial in range(300):
        losses = np.exp(rng.normal(0.0, 3.0, size=(int(rng.integers(1, 130)), int(rng.integers(1, 40)))))
        losses[rng.random(losses.shape) < 0.05 * (trial % 3)] = math.inf
        losses[rng.random(losses.shape) < 0.03 * (trial % 2)] = math.nan
        losses[0] = 1.5 if trial % 4 == 0 else losses[0]  # a row whose candidates all agree
        rows = candidate_score_rows(losses)
        for row, expected in zip(rows, (_one_row_scores(values) for values in losses)):
            assert np.array_equal(row, expected)


def test_a_policy_trains_and_evaluates_with_the_scores(tmp_path):
    from helpers.runs import cli

    result = cli(
        "reml-run",
        "--plugin",
        "sine",
        "--preset",
        "smoke",
        "--baselines",
        "none",
        "--set",
        "env.candidate_loss=composed",
        "--set",
        "train.env_steps=512",
        "--out",
        str(tmp_path / "run"),
    )
    assert result.returncode == 0, result.stderr
    assert '"candidate_loss": "composed"' in (tmp_path / "run" / "config.json").read_text()


def test_an_unknown_kind_is_refused_by_name(sine_registry):
    with pytest.raises(ConfigError, match="candidate_loss"):
        resolve_config(sine_registry, {"plugin": "sine", "env": {"candidate_loss": "query"}})


def test_a_run_recorded_before_the_scores_existed_loads_without_them(sine_registry, tmp_path):
    """sine's default preset scores candidates now; a config.json written before env.candidate_loss existed
    records a policy that never saw the scores, and must resolve (for --resume, --from, reml-adapt) as made."""
    import json

    from reml_core.config import load_resolved

    config = resolve_config(sine_registry, {"plugin": "sine", "preset": "default"})
    assert config.core.env.candidate_loss == "composed"
    recorded = config.to_dict()
    assert recorded["env"]["candidate_loss"] == "composed"
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    assert load_resolved(tmp_path / "config.json", sine_registry).core.env.candidate_loss == "composed"
    del recorded["env"]["candidate_loss"]
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    assert load_resolved(tmp_path / "config.json", sine_registry).core.env.candidate_loss == "none"


def _random_templates(pool, rng, count: int, depth: int, slot: int) -> tuple[list[list[int]], list[list[int]]]:
    by_role = {role: [i for i, r in enumerate(pool.roles) if r == role] for role in Role}
    roles = [Role.INPUT, *([Role.HIDDEN] * (depth - 2)), Role.OUTPUT]
    templates, candidates = [], []
    for _ in range(count):
        hidden = [int(i) for i in rng.choice(by_role[Role.HIDDEN], size=depth - 2, replace=False)]
        templates.append([int(rng.choice(by_role[Role.INPUT])), *hidden, int(rng.choice(by_role[Role.OUTPUT]))])
        others = [i for i in by_role[roles[slot]] if i not in templates[-1]]
        candidates.append([int(i) for i in rng.choice(others, size=min(4, len(others)), replace=False)])
    return templates, candidates


@pytest.mark.numerics  # compared within rounding: also run under other CPU dispatches
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("depth", [2, 3, 5])
def test_the_dense_pool_scores_a_slot_as_each_network_alone(make_components, activation, depth):
    """The shared-prefix computation (the layers before the slot once per template, every layer of the role in
    one product) gives each candidate network's own composed support loss, in each template's candidate order,
    whether every template has as many candidates or not."""
    components = make_components(pool={"activation": activation})
    pool = components.pool
    rng = np.random.default_rng(depth)
    tasks = components.task_sampler.test_tasks(3)
    x = torch.stack([task.support(5)[0] for task in tasks])
    y = torch.stack([task.support(5)[1] for task in tasks])
    for slot, ragged in itertools.product(range(depth), (False, True)):
        templates, candidates = _random_templates(pool, rng, 3, depth, slot)
        if ragged:  # templates with different numbers of candidates (a pool whose roles are unevenly stocked)
            candidates = [chosen[: e + 1] for e, chosen in enumerate(candidates)]
        got = pool.slot_losses(templates, slot, candidates, x, y, components.task_sampler.loss)
        assert [len(values) for values in got] == [len(chosen) for chosen in candidates]
        for e, template in enumerate(templates):
            expected = []
            for candidate in candidates[e]:
                network = pool.build([*template[:slot], candidate, *template[slot + 1 :]])
                assert network.activation == activation
                expected.append(evaluate_loss(network, x[e], y[e], components.task_sampler.loss))
            np.testing.assert_allclose(got[e], expected, rtol=1e-5)


def test_the_dense_pool_refuses_a_candidate_of_another_role_and_reports_overflow_as_inf(make_components):
    components = make_components()
    pool = components.pool
    task = components.task_sampler.test_tasks(1)[0]
    x, y = (value.unsqueeze(0) for value in task.support(5))
    templates, candidates = _random_templates(pool, np.random.default_rng(0), 1, 4, 1)
    with pytest.raises(ValueError, match=f"pool layer {templates[0][0]} cannot fill slot 1"):
        pool.slot_losses(templates, 1, [[templates[0][0]]], x, y, components.task_sampler.loss)
    two = [templates[0], templates[0]]  # candidate lists of different lengths: the same check
    with pytest.raises(ValueError, match=f"pool layer {templates[0][0]} cannot fill slot 1"):
        pool.slot_losses(
            two,
            1,
            [candidates[0], [*candidates[0][:1], templates[0][0]]],
            x.expand(2, -1, -1),
            y.expand(2, -1, -1),
            components.task_sampler.loss,
        )
    losses = pool.slot_losses(templates, 1, candidates, x, y * 1e30, components.task_sampler.loss)
    assert len(losses[0]) == len(candidates[0]) and all(value == math.inf for value in losses[0])
