"""The PPO backends: deterministic masked rollouts, LSTM state threading, save and load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reml_core.config import resolve_config
from reml_core.experiment import build_components
from reml_core.methods import ReMLMethod


def _backend(installed_registry, policy: str, seed: int, tmp_path):
    config = resolve_config(installed_registry, {"plugin": "sine", "preset": "smoke", "policy": policy, "seed": seed})
    components = build_components(config)
    env = components.make_env()
    context = components.context.with_env(env, log_dir=tmp_path / f"logs-{policy}-{seed}")
    return config.policy.spec.factory(config.policy.config, context), components


def _observations(components, count=20):
    env = components.make_env(mode="evaluate")
    tasks = components.task_sampler.test_tasks(count)
    return [env.reset(options={"task": task, "shots": 10})[0] for task in tasks], env


@pytest.mark.parametrize("policy", ["ppo-mlp", "ppo-lstm", "ppo-mlp-masked"])
def test_a_loaded_checkpoint_reproduces_the_saved_policys_actions(installed_registry, policy, tmp_path):
    saved, components = _backend(installed_registry, policy, 0, tmp_path)
    saved.learn(256)
    saved.save(tmp_path)
    fresh, _ = _backend(installed_registry, policy, 1, tmp_path)  # another seed: another initial policy
    observations, env = _observations(components)
    mask = env.action_masks()

    def actions(backend):
        return [backend.act(obs, None, True, mask)[0] for obs in observations]

    def probabilities(backend):
        obs = torch.as_tensor(np.stack(observations))
        if backend.recurrent:
            return None
        return backend.model.policy.get_distribution(obs).distribution.probs

    before = probabilities(fresh)
    fresh.load(tmp_path)
    assert actions(fresh) == actions(saved)
    assert fresh.num_timesteps == saved.num_timesteps == 256
    if before is not None:
        assert not torch.allclose(before, probabilities(fresh))
        torch.testing.assert_close(probabilities(fresh), probabilities(saved))
    for a, b in zip(fresh.model.policy.state_dict().values(), saved.model.policy.state_dict().values()):
        assert torch.equal(a, b)


def test_a_bare_sb3_zip_is_refused_unless_trusted(installed_registry, tmp_path):
    backend, _ = _backend(installed_registry, "ppo-mlp", 0, tmp_path)
    backend.model.save(tmp_path / "policy.zip")
    from reml_core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="loader can run code.*--trust-checkpoint"):
        backend.load(tmp_path)
    backend.load(tmp_path, trust_pickle=True)


def test_lstm_state_is_threaded_through_the_rollout(installed_registry, tmp_path):
    backend, components = _backend(installed_registry, "ppo-lstm", 0, tmp_path)
    backend.learn(256)
    env = components.make_env(mode="evaluate")
    task = components.task_sampler.test_tasks(1)[0]
    observation, _ = env.reset(options={"task": task, "shots": 10})
    state, start = None, True
    sb3_state = None
    states = []
    for _ in range(env.depth):
        ours, state = backend.act(observation, state, start, None)
        reference, sb3_state = backend.model.predict(
            observation, state=sb3_state, episode_start=np.array([start]), deterministic=True
        )
        assert ours == int(reference)  # the same action SB3 takes with the same recurrent state
        torch.testing.assert_close(state[0], torch.as_tensor(sb3_state[0]))
        states.append(state[0].clone())
        start = False
        observation, _, terminated, _, _ = env.step(ours)
        if terminated:
            break
    assert not torch.equal(states[0], states[-1])  # the state evolves along the episode


def test_rollouts_are_deterministic_and_build_valid_networks(installed_registry, tmp_path):
    backend, components = _backend(installed_registry, "ppo-mlp", 0, tmp_path)
    method = ReMLMethod(backend, components.make_env(mode="evaluate"))
    tasks = components.task_sampler.test_tasks(10)
    first = [method.indices_for(task, 5) for task in tasks]
    assert first == [method.indices_for(task, 5) for task in tasks]
    for indices in first:
        roles = [components.pool.roles[i].value for i in indices]
        assert roles == ["input"] + ["hidden"] * (len(indices) - 2) + ["output"] and len(set(indices)) == len(indices)
    with pytest.raises(ValueError, match="evaluate-mode"):
        ReMLMethod(backend, components.make_env(mode="train"))


def test_the_lstm_update_runs_whole_sequences_with_the_same_result_as_step_by_step():
    # Sequences as sb3-contrib's rollout buffer cuts them: an episode start only at a sequence's
    # first step (some sequences continue an episode from the previous rollout), zero padding after.
    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy

    from reml_plugins.ppo.backends import SequenceLstmPolicy

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(6, 8)
    n_seq, length = 5, 7
    features = torch.randn(n_seq * length, 6)
    starts = torch.zeros(n_seq, length)
    starts[[0, 1, 3], 0] = 1.0
    states = (torch.randn(1, n_seq, 8), torch.randn(1, n_seq, 8))
    ours, (h, c) = SequenceLstmPolicy._process_sequence(features, states, starts.flatten(), lstm)
    theirs, (h_ref, c_ref) = RecurrentActorCriticPolicy._process_sequence(features, states, starts.flatten(), lstm)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c, c_ref, rtol=1e-5, atol=1e-6)
    ours.sum().backward()
    our_grads = [parameter.grad.clone() for parameter in lstm.parameters()]
    lstm.zero_grad()
    theirs.sum().backward()
    for ours_grad, parameter in zip(our_grads, lstm.parameters()):
        torch.testing.assert_close(ours_grad, parameter.grad, rtol=1e-4, atol=1e-6)
    # A start in the middle of a sequence (not how the buffer cuts them) takes sb3-contrib's loop.
    starts[2, 3] = 1.0
    mixed, _ = SequenceLstmPolicy._process_sequence(features, states, starts.flatten(), lstm)
    reference, _ = RecurrentActorCriticPolicy._process_sequence(features, states, starts.flatten(), lstm)
    assert torch.equal(mixed, reference)


def test_the_lstm_minibatches_are_padded_as_sb3_contrib_pads_them():
    from gymnasium import spaces
    from sb3_contrib.common.recurrent.buffers import RecurrentRolloutBuffer
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    from reml_plugins.ppo.backends import GatherPaddedRolloutBuffer

    rng = np.random.default_rng(0)
    n_steps, n_envs, hidden = 12, 4, 3
    buffer = RecurrentRolloutBuffer(
        n_steps, spaces.Box(-1, 1, (5,)), spaces.Discrete(7), (n_steps, 1, n_envs, hidden), "cpu", n_envs=n_envs
    )
    for _ in range(n_steps):
        starts = rng.random(n_envs) < 0.3  # episodes of assorted lengths in every env
        states = RNNStates(*[(torch.randn(1, n_envs, hidden), torch.randn(1, n_envs, hidden)) for _ in range(2)])
        buffer.add(
            rng.random((n_envs, 5)).astype(np.float32),
            rng.integers(7, size=(n_envs, 1)),
            rng.random(n_envs),
            starts.astype(np.float32),
            torch.randn(n_envs),
            torch.randn(n_envs),
            lstm_states=states,
        )
    buffer.compute_returns_and_advantage(torch.randn(n_envs), np.zeros(n_envs))
    next(buffer.get(16))  # flattens the buffer as training does
    env_change = buffer.swap_and_flatten(np.vstack([np.ones((1, n_envs)), np.zeros((n_steps - 1, n_envs))]))
    for start in (0, 5, 29):
        batch = np.concatenate([np.arange(n_steps * n_envs)[start:], np.arange(start)])[:20]
        ours = GatherPaddedRolloutBuffer._get_samples(buffer, batch, env_change)
        theirs = RecurrentRolloutBuffer._get_samples(buffer, batch, env_change)
        for field in (
            "observations",
            "actions",
            "old_values",
            "old_log_prob",
            "advantages",
            "returns",
            "episode_starts",
            "mask",
        ):
            assert torch.equal(getattr(ours, field), getattr(theirs, field)), field
        for ours_states, their_states in zip(ours.lstm_states, theirs.lstm_states):
            assert all(torch.equal(a, b) for a, b in zip(ours_states, their_states))
        assert int(theirs.mask.sum()) == 20 and len(theirs.mask) > 20  # there was padding to reproduce
