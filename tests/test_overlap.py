"""``train.overlap_update``: PPO's update in a learner process beside the next rollout
(reml_plugins/ppo/overlap.py). What a user relies on: the learner's update is PPO's own, moved
exactly; everything saved, validated or handed out includes every update made; the same settings
repeat the same numbers; and where it applies (train.workers >= 2) is decided and recorded once."""

from __future__ import annotations

import json

import pytest
import torch

from reml_core.config import load_resolved, resolve_config
from reml_core.experiment import build_components
from reml_core.settings import episode_processes, overlaps_update

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _backend(sine_registry, policy: str, overlap: bool, tmp_path=None, seed: int = 0):
    config = resolve_config(
        sine_registry,
        {
            "plugin": "sine",
            "preset": "smoke",
            "seed": seed,
            "train": {"n_envs": 16, "workers": 1, "progress": False},
            "policy": {"name": policy, "n_steps": 64, "batch_size": 32, "n_epochs": 2},
        },
    )
    torch.manual_seed(config.seed)
    components = build_components(config)
    env = components.make_train_env()
    context = components.context.with_env(env, log_dir=tmp_path, overlap_update=overlap)
    return config.policy.spec.factory(config.policy.config, context), env


def _weights(backend) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in backend.model.policy.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("policy", ["ppo-mlp", "ppo-lstm", "ppo-mlp-masked"])
def test_one_rollout_overlapped_is_ppos_own_update_bit_for_bit(sine_registry, policy):
    """After one rollout the learner has made the same update the run's process would have: the rollout,
    the schedule's progress, the optimizer state and the update count all reach it and come back exactly."""
    results = {}
    for overlap in (False, True):
        backend, env = _backend(sine_registry, policy, overlap)
        rollout = backend.model.n_steps * backend.model.n_envs
        before = _weights(backend)
        backend.learn(rollout)
        optimizer = backend.model.policy.optimizer.state_dict()
        results[overlap] = (_weights(backend), optimizer, backend.model._n_updates, backend.num_timesteps)
        assert not _equal(before, results[overlap][0]), "the update changed nothing"
        env.close()
    (plain, plain_opt, plain_n, plain_t), (moved, moved_opt, moved_n, moved_t) = results[False], results[True]
    assert _equal(plain, moved)
    assert plain_n == moved_n > 0 and plain_t == moved_t
    assert all(
        torch.equal(plain_opt["state"][k]["exp_avg"], moved_opt["state"][k]["exp_avg"]) for k in plain_opt["state"]
    )


def test_later_rollouts_act_one_update_behind_and_repeat_exactly(sine_registry):
    runs = []
    for overlap in (False, True, True):
        backend, env = _backend(sine_registry, "ppo-mlp", overlap)
        backend.learn(4 * backend.model.n_steps * backend.model.n_envs)
        runs.append(_weights(backend))
        assert all(torch.isfinite(value).all() for value in runs[-1].values())
        env.close()
    plain, overlapped, again = runs
    assert _equal(overlapped, again), "the same settings gave other numbers"
    assert not _equal(plain, overlapped), "the rollouts after the first should act with the policy one update behind"


def test_a_checkpoint_mid_rollout_holds_the_update_in_flight(sine_registry, tmp_path):
    """The trainer saves from inside a rollout, while the learner is still updating on the previous one:
    the saved policy must already include that update (and validation must see it too)."""
    backend, env = _backend(sine_registry, "ppo-mlp", True)
    rollout = backend.model.n_steps * backend.model.n_envs
    saved = {}

    def callback(timesteps: int) -> bool:
        if timesteps > rollout and not saved:  # inside the second rollout: the first update is in flight
            assert backend.overlap is not None and backend.overlap.pending
            backend.save(tmp_path)
            saved["n_updates"] = json.loads((tmp_path / "policy_progress.json").read_text())["n_updates"]
            saved["weights"] = _weights(backend)
        return True

    backend.learn(2 * rollout, callback=callback)
    env.close()
    assert saved["n_updates"] == backend.model.n_epochs  # the first update, received before saving

    reference, env = _backend(sine_registry, "ppo-mlp", False)
    reference.learn(rollout)
    env.close()
    assert _equal(saved["weights"], _weights(reference))


def test_acting_settles_the_update_first(sine_registry):
    backend, env = _backend(sine_registry, "ppo-mlp", True)
    rollout = backend.model.n_steps * backend.model.n_envs
    acted = {}

    def callback(timesteps: int) -> bool:
        if timesteps > rollout and not acted:
            backend.act(backend.model.observation_space.sample(), None, True, None)  # as validation does
            acted["pending"] = backend.overlap.pending
            acted["n_updates"] = backend.model._n_updates
        return True

    backend.learn(2 * rollout, callback=callback)
    env.close()
    assert acted == {"pending": False, "n_updates": backend.model.n_epochs}


def test_where_it_applies_is_decided_once_and_recorded(sine_registry, tmp_path):
    assert overlaps_update(2, True) and not overlaps_update(1, True) and not overlaps_update(4, False)
    assert episode_processes(2, True) == 1 and episode_processes(4, True) == 3 and episode_processes(4, False) == 4
    assert episode_processes(1, True) == 1

    config = resolve_config(sine_registry, {"plugin": "sine", "preset": "smoke"})
    assert config.to_dict()["train"]["overlap_update"] is True
    recorded = config.to_dict()
    del recorded["train"]["overlap_update"]  # a config.json written before it existed: each update was waited for
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    assert load_resolved(tmp_path / "config.json", sine_registry).core.train.overlap_update is False


def test_the_vector_env_leaves_a_core_to_the_update(sine_registry):
    for overlap, expected in ((True, None), (False, 2)):
        config = resolve_config(
            sine_registry,
            {"plugin": "sine", "preset": "smoke", "train": {"n_envs": 16, "workers": 2, "overlap_update": overlap}},
        )
        env = build_components(config).make_train_env()
        try:
            assert (env.workers.count if env.workers is not None else None) == expected
        finally:
            env.close()


@pytest.mark.parametrize("policy", ["ppo-mlp", "ppo-lstm", "ppo-mlp-masked"])
def test_the_decoupled_update_reads_the_rollout_as_its_policy_collected_it(sine_registry, policy):
    """On a rollout the current policy collected itself, the proximal log-probabilities recomputed from the
    buffer (an LSTM's from the states each step was collected in) are the ones stored, and every weight is 1."""
    from reml_plugins.ppo.overlap import decouple

    backend, env = _backend(sine_registry, policy, False)
    model = backend.model
    model.train = lambda: None  # keep the collected rollout as it is
    backend.learn(model.n_steps * model.n_envs)
    env.close()
    stored = model.rollout_buffer.log_probs.copy()
    advantages = model.rollout_buffer.advantages.copy()
    assert decouple(model) == pytest.approx(1.0, abs=1e-5)
    assert abs(model.rollout_buffer.log_probs - stored).max() < 1e-4
    assert abs(model.rollout_buffer.advantages - advantages).max() < 1e-3 * max(1.0, abs(advantages).max())
