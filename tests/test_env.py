"""The composition MDP: spaces, masks, episode bounds, write-back, determinism, numerical faults."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from reml_core.env import network_order, slot_roles
from reml_core.interfaces import Role


def _pool_state(pool) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in pool.state_dict().items()}


def _valid_episode(env, rng):
    """Play one episode choosing uniformly among valid actions; return (steps, last info, reward)."""
    steps, done = 0, False
    while not done:
        action = rng.choice(np.flatnonzero(env.action_masks()))
        _, reward, terminated, truncated, info = env.step(action)
        steps += 1
        done = terminated or truncated
    return steps, info, reward


def test_both_environment_checkers_pass(make_components):
    components = make_components()
    gymnasium_check_env(components.make_env(), skip_render_check=True)
    sb3_check_env(components.make_env(), warn=True)


def test_slots_fill_input_then_output_then_hidden_and_networks_run_in_order():
    assert slot_roles(5) == [Role.INPUT, Role.OUTPUT, Role.HIDDEN, Role.HIDDEN, Role.HIDDEN]
    assert network_order([3, 40, 11, 12, 13]) == [3, 11, 12, 13, 40]


def test_a_valid_episode_lasts_exactly_depth_steps(make_components):
    env = make_components(env={"depth": 4}).make_env()
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        steps, info, _ = _valid_episode(env, rng)
        assert steps == 4 and len(info["indices"]) == 4
        roles = [env.pool.roles[i] for i in info["indices"]]
        assert roles == [Role.INPUT, Role.HIDDEN, Role.HIDDEN, Role.OUTPUT]
        env.reset()


def test_episode_length_is_bounded_under_any_policy(make_components):
    # Finished episodes take depth valid steps plus at most max_invalid_actions invalid ones;
    # one more invalid action truncates the episode. No policy can make an episode longer.
    env = make_components(env={"depth": 5, "max_invalid_actions": 3}).make_env()
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    finished, truncated_lengths = [], []
    for _ in range(60):
        steps, invalid, done = 0, 0, False
        while not done:
            _, _, terminated, truncated, info = env.step(rng.integers(env.action_space.n))
            steps += 1
            invalid += not info["valid"]
            done = terminated or truncated
        (finished if terminated else truncated_lengths).append(steps)
        assert steps <= 5 + 3
        assert invalid == 4 if truncated else invalid <= 3
        env.reset()
    assert finished and truncated_lengths
    assert all(5 <= n for n in finished)


def test_masks_agree_with_validity_and_invalid_actions_change_nothing(make_components):
    components = make_components()
    env = components.make_env()
    observation, _ = env.reset(seed=5)
    rng = np.random.default_rng(2)
    checked_invalid = 0
    for _ in range(60):
        mask = env.action_masks()
        for action in range(env.action_space.n):
            assert mask[action] == env.is_valid(action)
        invalid = np.flatnonzero(~mask)
        if invalid.size:
            before = env.chosen
            repeated, reward, terminated, _, info = env.step(rng.choice(invalid))
            assert reward == components.reward.invalid_action_penalty
            assert not info["valid"] and not terminated and env.chosen == before
            np.testing.assert_array_equal(repeated, observation)
            checked_invalid += 1
        observation, _, terminated, truncated, _ = env.step(rng.choice(np.flatnonzero(env.action_masks())))
        if terminated or truncated:
            observation, _ = env.reset()
    assert checked_invalid >= 50


def test_invalid_penalty_is_configurable(make_components):
    components = make_components(reward={"invalid_action_penalty": -0.25})
    env = components.make_env()
    env.reset(seed=0)
    hidden = next(i for i, role in enumerate(env.pool.roles) if role == Role.HIDDEN)
    _, reward, _, _, info = env.step(hidden)  # the first slot takes an input layer
    assert reward == -0.25 and not info["valid"]


def test_write_back_changes_exactly_the_chosen_layers(make_components):
    components = make_components()
    env = components.make_env()
    env.reset(seed=11)
    before = _pool_state(env.pool)
    _, info, _ = _valid_episode(env, np.random.default_rng(4))
    after = _pool_state(env.pool)
    chosen = set(info["indices"])
    for index in range(env.pool.size):
        role, local = env.pool.locate(index)
        changed = not torch.equal(before[f"{role.value}.weight"][local], after[f"{role.value}.weight"][local])
        assert changed == (index in chosen), f"pool index {index}"
    assert info["losses"]["trained"] < info["loss"] or info["losses"]["trained"] < 1.0


def test_trained_network_is_what_was_written_back(make_components):
    components = make_components(env={"inner_steps": 0})
    env = components.make_env()
    env.reset(seed=2)
    before = _pool_state(env.pool)
    _valid_episode(env, np.random.default_rng(0))
    assert all(torch.equal(before[k], v) for k, v in _pool_state(env.pool).items())  # 0 steps: unchanged


def test_the_same_seed_gives_the_same_episodes(make_components):
    def trace(seed):
        env = make_components(seed=seed).make_env()
        rng = np.random.default_rng(9)
        observation, info = env.reset(seed=seed)
        records = [(observation.tobytes(), info["task_id"], info["shots"])]
        for _ in range(25):
            observation, reward, terminated, truncated, info = env.step(rng.choice(np.flatnonzero(env.action_masks())))
            records.append((observation.tobytes(), reward, tuple(info["indices"]), info["loss"]))
            if terminated or truncated:
                observation, info = env.reset()
                records.append((observation.tobytes(), info["task_id"], info["shots"]))
        return records

    assert trace(7) == trace(7)
    assert trace(7) != trace(8)


def test_evaluation_mode_never_changes_the_pool(make_components):
    components = make_components()
    env = components.make_env(mode="evaluate")
    task = components.task_sampler.test_tasks(1)[0]
    env.reset(options={"task": task, "shots": 5})
    before = _pool_state(env.pool)
    steps, info, reward = _valid_episode(env, np.random.default_rng(0))
    assert info["task_id"] == "test-0" and info["shots"] == 5 and reward == 0.0
    assert all(torch.equal(before[k], v) for k, v in _pool_state(env.pool).items())


def test_a_numerical_fault_gives_the_worst_reward_and_leaves_the_pool_intact(make_components):
    components = make_components(env={"inner_lr": 1e12})
    env = components.make_env()
    env.reset(seed=0)
    before = _pool_state(env.pool)
    _, info, reward = _valid_episode(env, np.random.default_rng(0))
    assert info["numerical_fault"] and math.isnan(info["losses"]["trained"])
    assert reward == components.reward.worst_reward
    after = _pool_state(env.pool)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(bool(torch.isfinite(v).all()) for v in after.values())


def test_observation_layout_and_features(make_components):
    components = make_components(encoder="support-set", env={"depth": 4})
    env = components.make_env()
    size = components.encoder.observation_size + 4 + components.pool.size + 4 + 4
    assert env.observation_space.shape == (size,)
    observation, info = env.reset(seed=1)
    assert info["loss"] is None
    mask = env.action_masks()
    first = int(np.flatnonzero(mask)[0])
    observation, *_ = env.step(first)
    encoder_size = components.encoder.observation_size
    chosen = observation[encoder_size : encoder_size + 4]
    membership = observation[encoder_size + 4 : encoder_size + 4 + components.pool.size]
    assert chosen[0] == pytest.approx((first + 1) / components.pool.size) and chosen[1:].sum() == 0
    assert membership[first] == 1 and membership.sum() == 1
    output = int(np.flatnonzero(env.action_masks())[0])
    observation, _, _, _, info = env.step(output)
    assert info["loss"] is not None and info["loss"] > 0  # the network is complete from the second step
    network_features = observation[encoder_size + 4 + components.pool.size :][:4]
    assert network_features[0] == pytest.approx(math.log1p(info["loss"]), rel=1e-5)
    assert network_features[2] == 1.0
    assert env.observation_space.contains(observation)


def test_linear_schedule_anneals_the_write_back_rate(make_components):
    env = make_components(env={"write_back_rate": 0.2, "write_back_schedule": "linear"}).make_env()
    assert env.write_back_rate == pytest.approx(0.2)
    env.training_progress = 0.75
    assert env.write_back_rate == pytest.approx(0.05)
    constant = make_components(env={"write_back_rate": 0.2, "write_back_schedule": "constant"}).make_env()
    constant.training_progress = 0.75
    assert constant.write_back_rate == pytest.approx(0.2)
    # At the end of a linear schedule the pool no longer moves.
    env.training_progress = 1.0
    env.reset(seed=0)
    before = _pool_state(env.pool)
    _valid_episode(env, np.random.default_rng(0))
    assert all(torch.equal(before[k], v) for k, v in _pool_state(env.pool).items())
