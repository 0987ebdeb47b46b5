"""The vector env: N composition episodes side by side, as stable-baselines3 sees them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported

from reml_core.config import resolve_config
from reml_core.env import CompositionEnv
from reml_core.experiment import build_components
from reml_core.vec_env import CompositionVecEnv, stream_seed


def _pool_state(pool) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in pool.state_dict().items()}


def _random_valid_actions(env: CompositionVecEnv, rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.choice(np.flatnonzero(mask)) for mask in get_action_masks(env)])


def _trace(env: CompositionVecEnv, steps: int, seed: int = 0, invalid_every: int = 0):
    """Observations, rewards, dones and (task, K, indices, losses) of finished episodes over ``steps`` vector steps."""
    rng = np.random.default_rng(seed)
    records = [env.reset().tobytes()]
    for step in range(steps):
        actions = _random_valid_actions(env, rng)
        if invalid_every and step % invalid_every == 0:  # an invalid action desynchronises one env's episodes
            index = step % env.num_envs
            actions[index] = np.flatnonzero(~env.envs[index].action_masks())[0]
        observations, rewards, dones, infos = env.step(actions)
        records.append((observations.tobytes(), rewards.tobytes(), dones.tobytes()))
        for info in infos:
            if "episode" in info:
                records.append(
                    (info["task_id"], info["shots"], tuple(info["indices"]), tuple(sorted(info["losses"].items())))
                )
    return records


def test_steps_reset_finished_envs_and_report_episodes_as_sb3_expects(make_components):
    components = make_components()
    env = components.make_vec_env(3)
    env.seed(0)
    observations = env.reset()
    assert observations.shape == (3, *env.observation_space.shape) and observations.dtype == np.float32
    rng = np.random.default_rng(0)
    for _ in range(1, components.config.core.env.depth + 1):
        observations, rewards, dones, infos = env.step(_random_valid_actions(env, rng))
        assert rewards.dtype == np.float32 and dones.dtype == bool
        assert all(env.observation_space.contains(row) for row in observations)
    assert dones.all()  # valid actions only: every episode ends after depth steps, together
    for index, info in enumerate(infos):
        assert info["episode"]["l"] == components.config.core.env.depth
        assert info["episode"]["r"] == pytest.approx(rewards[index], abs=1e-5)
        assert not info["TimeLimit.truncated"]
        assert info["terminal_observation"].shape == env.observation_space.shape
        assert not np.array_equal(info["terminal_observation"], observations[index])  # already the next episode's
    assert env.episodes == [2, 2, 2]


@pytest.mark.numerics
def test_one_env_in_a_vector_is_the_single_env_bit_for_bit(make_components):
    single_components, vector_components = make_components(seed=5), make_components(seed=5)
    single = single_components.make_env()
    vector = vector_components.make_vec_env(1)
    vector.seed(5)
    first, _ = single.reset(seed=5)
    np.testing.assert_array_equal(vector.reset()[0], first)
    rng = np.random.default_rng(1)
    for _ in range(23):
        action = rng.choice(np.flatnonzero(single.action_masks()))
        observation, reward, terminated, truncated, info = single.step(action)
        if terminated or truncated:
            observation, _ = single.reset()
        observations, rewards, dones, infos = vector.step(np.array([action]))
        np.testing.assert_array_equal(observations[0], observation)
        assert rewards[0] == np.float32(reward) and dones[0] == (terminated or truncated)
        assert infos[0].get("losses") == info.get("losses")
    for key, value in single_components.pool.state_dict().items():
        assert torch.equal(vector_components.pool.state_dict()[key], value)


def test_every_env_has_its_own_stream_and_env_0_keeps_the_seeds_own(make_components):
    components = make_components(seed=2)
    env = components.make_vec_env(4)
    env.seed(2)
    env.reset()
    task_ids = [sub.task.task_id for sub in env.envs]
    assert task_ids[0] == next(components.task_sampler.train_stream(2)).task_id
    assert len(set(task_ids)) == 4
    assert [stream_seed(2, index) for index in range(4)] == [sub._seed for sub in env.envs]  # noqa: SLF001
    assert len({stream_seed(2, 1), stream_seed(3, 0), stream_seed(3, 1), stream_seed(2, 2)}) == 4


@pytest.mark.numerics
def test_the_same_seed_and_n_envs_give_the_same_run_and_others_do_not(make_components):
    def run(seed, n_envs, batched=True):
        env = make_components(seed=seed).make_vec_env(n_envs, batched=batched)
        env.seed(seed)
        return _trace(env, 12, invalid_every=5), _pool_state(env.pool)

    first, first_pool = run(3, 4)
    second, second_pool = run(3, 4)
    assert first == second
    assert all(torch.equal(first_pool[key], second_pool[key]) for key in first_pool)
    assert run(4, 4)[0] != first
    assert run(3, 3)[0][1:] != first[1:]


def test_a_vector_continues_every_stream_from_a_checkpoints_episode_counts(make_components):
    components = make_components(seed=1)
    env = components.make_vec_env(3)
    env.seed(1)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(12):
        env.step(_random_valid_actions(env, rng))
    counts = env.episodes
    resumed = make_components(seed=1).make_vec_env(3, first_episodes=counts)
    resumed.seed(1)
    resumed.reset()
    # A resumed env starts on the task after the ones its counterpart started: the stream goes on.
    streams = [components.task_sampler.train_stream(stream_seed(1, index)) for index in range(3)]
    for index, stream in enumerate(streams):
        expected = [next(stream) for _ in range(counts[index] + 1)][-1]
        assert resumed.envs[index].task.task_id == expected.task_id
    assert resumed.episodes == [count + 1 for count in counts]


def test_train_env_is_single_for_one_env_and_old_checkpoints_load(make_components):
    single = make_components(train={"n_envs": 1}).make_train_env(7)
    assert isinstance(single, CompositionEnv) and single.episodes == 7
    vector = make_components(train={"n_envs": 3}).make_train_env(7)  # a plain int: a checkpoint of one env
    assert isinstance(vector, CompositionVecEnv) and vector.episodes == [7, 0, 0]
    assert make_components(train={"n_envs": 3}).make_train_env([4, 5, 6]).episodes == [4, 5, 6]
    with pytest.raises(ValueError, match="holds 3 environments' positions but train.n_envs is 2"):
        make_components(train={"n_envs": 2}).make_train_env([4, 5, 6])


def test_action_masks_work_for_the_vector(make_components):
    env = make_components().make_vec_env(4)
    env.seed(0)
    env.reset()
    assert is_masking_supported(env)
    rng = np.random.default_rng(0)
    for _ in range(9):
        masks = get_action_masks(env)
        assert masks.shape == (4, env.action_space.n)
        for index, sub in enumerate(env.envs):
            np.testing.assert_array_equal(masks[index], sub.action_masks())
        env.step(_random_valid_actions(env, rng))


def test_the_training_progress_anneals_every_envs_write_back(make_components):
    env = make_components(env={"write_back_rate": 0.2, "write_back_schedule": "linear"}).make_vec_env(3)
    env.training_progress = 0.5
    assert env.write_back_rate == pytest.approx(0.1)
    assert [sub.write_back_rate for sub in env.envs] == pytest.approx([0.1] * 3)


def _backend(installed_registry, policy, n_envs, tmp_path):
    config = resolve_config(
        installed_registry, {"plugin": "sine", "preset": "smoke", "policy": policy, "train": {"n_envs": n_envs}}
    )
    components = build_components(config)
    env = components.make_train_env()
    context = components.context.with_env(env, log_dir=tmp_path / f"logs-{policy}")
    return config.policy.spec.factory(config.policy.config, context), env


@pytest.mark.parametrize("policy", ["ppo-mlp", "ppo-lstm", "ppo-mlp-masked"])
def test_every_policy_learns_on_the_vector_env(installed_registry, policy, tmp_path):
    backend, env = _backend(installed_registry, policy, 4, tmp_path)
    assert backend.model.n_envs == 4
    assert backend.model.n_steps == 64  # the smoke preset's 256-step rollout, split over 4 envs
    actions = []
    original = env.step_async

    def record(chosen):
        actions.append(np.array(chosen))
        original(chosen)

    env.step_async = record
    backend.learn(256)
    assert backend.num_timesteps == 256 and len(actions) == 64
    assert all(a.shape == (4,) for a in actions)  # one action per env per vector step
    assert min(env.episodes) >= 2  # every env ran episodes
    if policy == "ppo-lstm":  # one LSTM state per env
        assert backend.model._last_lstm_states.pi[0].shape[1] == 4  # noqa: SLF001


def test_masked_policy_never_chooses_an_invalid_layer_in_the_vector(installed_registry, tmp_path):
    backend, env = _backend(installed_registry, "ppo-mlp-masked", 4, tmp_path)
    invalid = []
    original = env.step_wait

    def watch():
        observations, rewards, dones, infos = original()
        invalid.extend(not info["valid"] for info in infos)
        return observations, rewards, dones, infos

    env.step_wait = watch
    backend.learn(256)
    assert len(invalid) == 256 and not any(invalid)
