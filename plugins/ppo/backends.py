"""PPO policy backends on stable-baselines3 and sb3-contrib.

Evaluation rollouts are deterministic and masked: the policy's most probable action *among the
layers that fit the slot*. (An unmasked argmax that picks an invalid layer would repeat forever,
since an invalid action changes nothing.) How often the unmasked argmax would have been invalid
is counted, so a policy that never learned the slot rules cannot hide behind the mask.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reml_core.compat import import_gym_quietly
from reml_core.errors import CheckpointError, ComponentBuildError
from reml_core.interfaces import PolicyContext
from reml_core.storage import link_error, record_written
from reml_plugins.ppo.config import PPOConfig, RecurrentPPOConfig
from reml_plugins.ppo.extractors import point_set_kwargs
from reml_plugins.ppo.overlap import OverlappedUpdate

import_gym_quietly()

from safetensors.torch import load_file, save_file  # noqa: E402
from sb3_contrib import MaskablePPO, RecurrentPPO  # noqa: E402
from sb3_contrib.common.recurrent.buffers import RecurrentRolloutBuffer  # noqa: E402
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy  # noqa: E402
from sb3_contrib.common.recurrent.type_aliases import RecurrentRolloutBufferSamples, RNNStates  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.base_class import BaseAlgorithm  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.logger import configure  # noqa: E402


class _StepCallback(BaseCallback):
    """Adapts REML's plain ``callback(num_timesteps) -> bool`` to stable-baselines3's callback class."""

    def __init__(self, callback: Callable[[int], bool]) -> None:
        super().__init__()
        self._callback = callback

    def _on_step(self) -> bool:
        return bool(self._callback(self.num_timesteps))


class SequenceLstmPolicy(RecurrentActorCriticPolicy):
    """sb3-contrib's LSTM policy, whose gradient update runs each sequence through the LSTM in one call.

    sb3-contrib steps the LSTM one time step at a time whenever a minibatch holds an episode start,
    to reset the state there; but its rollout buffer cuts sequences at episode starts, so a start
    can only be a sequence's first step. Resetting the initial state then running the whole padded
    sequence is the same computation (within rounding) in one LSTM call instead of one per time
    step: with REML's 5-step episodes every minibatch holds starts, and the per-step loop was most
    of the update's cost. Any other pattern of starts takes sb3-contrib's loop.
    """

    # sb3-contrib annotates _process_sequence as returning tuple[Tensor, Tensor]; it returns (output, (h, c))
    @staticmethod
    def _process_sequence(  # type: ignore[override]
        features: torch.Tensor,
        lstm_states: tuple[torch.Tensor, torch.Tensor],
        episode_starts: torch.Tensor,
        lstm: torch.nn.LSTM,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        n_seq = lstm_states[0].shape[1]
        starts = episode_starts.reshape((n_seq, -1)).swapaxes(0, 1)
        if starts.shape[0] > 1 and not bool(torch.any(starts[1:] != 0.0)):
            keep = (1.0 - starts[0]).view(1, n_seq, 1)
            sequence = features.reshape((n_seq, -1, lstm.input_size)).swapaxes(0, 1)
            output, states = lstm(sequence, (keep * lstm_states[0], keep * lstm_states[1]))
            return torch.flatten(output.transpose(0, 1), start_dim=0, end_dim=1), states
        # its annotation is wrong (see above): it returns (output, (h, c))
        return RecurrentActorCriticPolicy._process_sequence(  # type: ignore[return-value]
            features, lstm_states, episode_starts, lstm
        )


class GatherPaddedRolloutBuffer(RecurrentRolloutBuffer):
    """sb3-contrib's recurrent rollout buffer, its minibatches padded with one gather per field.

    A minibatch is cut into sequences at episode starts and env changes, each padded with zeros
    to the longest. sb3-contrib builds one tensor per sequence and field and pads them; with many
    envs and 5-step episodes a 128-step minibatch holds dozens of sequences, and that was a
    quarter of RecurrentPPO's update. Here every field is gathered in one indexing operation into
    the same layout and values (tested against sb3-contrib's buffer).
    """

    # sb3-contrib's own signature, itself incompatible with SB3's RolloutBuffer._get_samples
    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env_change: np.ndarray, env: Any = None
    ) -> RecurrentRolloutBufferSamples:
        opens = np.logical_or(self.episode_starts[batch_inds], env_change[batch_inds]).flatten()
        opens[0] = True
        firsts = np.flatnonzero(opens)
        size = len(batch_inds)
        lengths = np.diff(np.append(firsts, size))
        longest = int(lengths.max())
        offsets = np.arange(longest)
        rows = np.minimum(firsts[:, None] + offsets[None, :], size - 1)  # (sequences, longest)
        padding = offsets[None, :] >= lengths[:, None]
        padded_size = len(firsts) * longest

        def padded(values: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
            gathered = values[batch_inds][rows]  # a copy: (sequences, longest, ...)
            gathered[padding] = 0
            return torch.as_tensor(gathered.reshape(padded_size, *shape), device=self.device)

        def states(values: np.ndarray) -> torch.Tensor:
            return self.to_torch(values[batch_inds][firsts].swapaxes(0, 1)).contiguous()

        return RecurrentRolloutBufferSamples(
            observations=padded(self.observations, self.obs_shape),
            actions=padded(self.actions, self.actions.shape[1:]),
            old_values=padded(self.values, ()),
            old_log_prob=padded(self.log_probs, ()),
            advantages=padded(self.advantages, ()),
            returns=padded(self.returns, ()),
            lstm_states=RNNStates(
                (states(self.hidden_states_pi), states(self.cell_states_pi)),
                (states(self.hidden_states_vf), states(self.cell_states_vf)),
            ),
            episode_starts=padded(self.episode_starts, ()),
            mask=padded(np.ones_like(self.returns), ()),
        )


class SequenceRecurrentPPO(RecurrentPPO):
    """RecurrentPPO with :class:`GatherPaddedRolloutBuffer` (vector observations only)."""

    def _setup_model(self) -> None:
        super()._setup_model()
        if type(self.rollout_buffer) is RecurrentRolloutBuffer:
            self.rollout_buffer.__class__ = GatherPaddedRolloutBuffer  # same state, faster minibatches


ALGORITHMS: dict[str, tuple[type[PPO] | type[RecurrentPPO] | type[MaskablePPO], str | type]] = {
    "ppo-mlp": (PPO, "MlpPolicy"),
    "ppo-lstm": (SequenceRecurrentPPO, SequenceLstmPolicy),
    "ppo-mlp-masked": (MaskablePPO, "MlpPolicy"),
}


def rollout_steps_per_env(n_steps: int, n_envs: int) -> int:
    """SB3's per-env ``n_steps`` for a rollout of about ``n_steps`` env steps over ``n_envs`` envs.

    REML's ``policy.n_steps`` counts the env steps of one rollout over all envs, so PPO updates
    after as many transitions, with as many minibatches, whatever ``train.n_envs`` is; SB3 counts
    per env, hence the division (rounded up, so a rollout never shrinks; at least 2 per env).
    """
    return max(math.ceil(n_steps / n_envs), 2)


class SB3PolicyBackend:
    """A stable-baselines3 algorithm acting on a ``CompositionEnv`` or a vector env of them; see ``PolicyBackend``.

    With a vector env (``train.n_envs`` > 1) SB3 steps every env at once: one policy forward pass
    per vector step, one LSTM state per env for RecurrentPPO, one action mask per env for
    MaskablePPO (through the vector env's ``env_method("action_masks")``).
    """

    def __init__(self, name: str, config: PPOConfig, context: PolicyContext) -> None:
        self.name = name
        self.algorithm, policy = ALGORITHMS[name]
        self.recurrent = issubclass(self.algorithm, RecurrentPPO)
        self.env = context.env
        self.log_dir = context.log_dir
        activation = torch.nn.Tanh if config.activation == "tanh" else torch.nn.ReLU
        policy_kwargs: dict[str, Any] = {"net_arch": list(config.net_arch), "activation_fn": activation}
        if isinstance(config, RecurrentPPOConfig):
            policy_kwargs.update(
                lstm_hidden_size=config.lstm_hidden_size,
                n_lstm_layers=config.n_lstm_layers,
                enable_critic_lstm=config.enable_critic_lstm,
            )
        if config.features == "point-set":
            layout = getattr(context.encoder, "point_set", None)
            if layout is None:
                raise ComponentBuildError(
                    "policy.features = 'point-set' needs a state encoder that declares a point set (e.g. support-set)"
                )
            policy_kwargs.update(point_set_kwargs(layout, config.point_set_hidden, config.point_set_embedding))
        self.n_envs = int(getattr(self.env, "num_envs", 1))
        with warnings.catch_warnings():
            # Split over n_envs, a rollout is rounded up to a whole number of steps per env and need not
            # be a multiple of batch_size any more; SB3 then warns that each epoch ends with a smaller
            # minibatch. That is harmless, and not something the user set, so it is not shown.
            if self.n_envs > 1:
                warnings.filterwarnings("ignore", message="You have specified a mini-batch size", category=UserWarning)
            self.model: BaseAlgorithm = self.algorithm(
                policy,
                self.env,
                learning_rate=config.learning_rate,
                n_steps=rollout_steps_per_env(config.n_steps, self.n_envs),
                batch_size=config.batch_size,
                n_epochs=config.n_epochs,
                clip_range=config.clip_range,
                gamma=config.gamma,
                gae_lambda=config.gae_lambda,
                ent_coef=config.ent_coef,
                vf_coef=config.vf_coef,
                max_grad_norm=config.max_grad_norm,
                policy_kwargs=policy_kwargs,
                seed=context.seed,
                device="cpu",
                verbose=0,
            )
        self._configure_logger()
        self.overlap_update = bool(context.overlap_update)
        self.overlap: OverlappedUpdate | None = None
        self._bind_overlap()
        self.invalid_argmax = 0
        self.decisions = 0

    def _bind_overlap(self) -> None:
        """With ``train.overlap_update``, the model's update runs in a learner process (reml_plugins/ppo/overlap.py)."""
        if self.overlap is not None:
            self.overlap.close()
            self.overlap = None
        if self.overlap_update:
            model: Any = self.model  # an on-policy algorithm (PPO and its kinds), whose learn loop calls train()
            self.overlap = OverlappedUpdate(model, type(model).train)
            model.train = self.overlap.submit

    def _settled(self) -> None:
        """Every update submitted so far is in the model (before it is saved, evaluated or handed out)."""
        if self.overlap is not None:
            self.overlap.settle()

    def _configure_logger(self) -> None:
        if self.log_dir is not None:
            # stable-baselines3 opens these itself (progress.csv in place): note them in the run's list of
            # what REML wrote first, and refuse a link where it would write (it would follow it out of the folder)

            for path in (self.log_dir, self.log_dir / "progress.csv"):
                if path.is_symlink():
                    raise link_error(path)
            record_written(self.log_dir / "progress.csv")
            record_written(self.log_dir, pattern="events.out.tfevents.*")
            self.model.set_logger(configure(str(self.log_dir), ["csv", "tensorboard"]))

    @property
    def num_timesteps(self) -> int:
        return int(self.model.num_timesteps)

    def learn(
        self, total_timesteps: int, callback: Callable[[int], bool] | None = None, progress_bar: bool = False
    ) -> None:
        """Train for ``total_timesteps`` more env steps (continuing the step count on resume)."""
        wrapped = _StepCallback(callback) if callback is not None else None
        try:
            self.model.learn(total_timesteps, callback=wrapped, progress_bar=progress_bar, reset_num_timesteps=False)
            self._settled()
        finally:
            if self.overlap is not None:
                self.overlap.close()

    def record(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.model.logger.record(key, value)
        self.model.logger.dump(step)

    @torch.no_grad()
    def act(
        self, observation: np.ndarray, state: Any, episode_start: bool, action_mask: np.ndarray | None
    ) -> tuple[int, Any]:
        """The most probable action (among the valid ones when a mask is given); threads LSTM state."""
        probabilities, state = self._probabilities(observation, state, episode_start)
        self.decisions += 1
        preferred = int(np.argmax(probabilities))
        if action_mask is not None:
            if not action_mask[preferred]:
                self.invalid_argmax += 1
            probabilities[~action_mask] = -1.0
        return int(np.argmax(probabilities)), state

    @torch.no_grad()
    def action_probabilities(
        self, observation: np.ndarray, state: Any, episode_start: bool, action_mask: np.ndarray | None
    ) -> tuple[np.ndarray, Any]:
        """The policy's probability of each action, renormalised over the valid ones when a mask is given
        (:class:`reml_core.interfaces.SamplesActions`); threads LSTM state as :meth:`act` does."""
        probabilities, state = self._probabilities(observation, state, episode_start)
        return _masked(probabilities, action_mask), state

    @torch.no_grad()
    def act_batch(
        self, observations: np.ndarray, state: Any, episode_starts: np.ndarray, action_masks: np.ndarray
    ) -> tuple[np.ndarray, Any]:
        """:meth:`act` for a batch of environments in one forward pass (``observations`` one row per env, the
        LSTM state of the batch threaded as a whole; :class:`reml_core.interfaces.ActsInBatches`)."""
        probabilities, state = self._batch_probabilities(observations, state, episode_starts)
        masks = np.asarray(action_masks, dtype=bool)
        rows = np.arange(len(probabilities))
        self.decisions += len(probabilities)
        self.invalid_argmax += int((~masks[rows, probabilities.argmax(axis=1)]).sum())
        probabilities[~masks] = -1.0
        return probabilities.argmax(axis=1), state

    @torch.no_grad()
    def action_probabilities_batch(
        self, observations: np.ndarray, state: Any, episode_starts: np.ndarray, action_masks: np.ndarray
    ) -> tuple[np.ndarray, Any]:
        """:meth:`action_probabilities` for a batch of environments in one forward pass (one row per env)."""
        probabilities, state = self._batch_probabilities(observations, state, episode_starts)
        return np.stack([_masked(row, mask) for row, mask in zip(probabilities, action_masks)]), state

    def _probabilities(self, observation: np.ndarray, state: Any, episode_start: bool) -> tuple[np.ndarray, Any]:
        probabilities, state = self._batch_probabilities(
            np.asarray(observation).reshape(1, -1), state, np.array([episode_start])
        )
        return probabilities[0], state

    def _batch_probabilities(
        self, observations: np.ndarray, state: Any, episode_starts: np.ndarray
    ) -> tuple[np.ndarray, Any]:
        """Each row's action probabilities and, for an LSTM, the batch's next (hidden, cell) state (zeros when
        ``state`` is None)."""
        self._settled()
        policy: Any = self.model.policy  # ActorCriticPolicy or its recurrent kind (an LSTM state in and out)
        policy.set_training_mode(False)
        obs = torch.as_tensor(np.asarray(observations), dtype=torch.float32).reshape(len(observations), -1)
        if self.recurrent:
            if state is None:
                state = self._initial_lstm_state(len(obs))
            starts = torch.as_tensor(np.asarray(episode_starts, dtype=np.float32))
            distribution, state = policy.get_distribution(obs, state, starts)
        else:
            distribution = policy.get_distribution(obs)
        return distribution.distribution.probs.numpy().copy(), state

    def decision_counts(self) -> dict[str, int]:
        """What acting at evaluation counts (:meth:`stats`' numbers): for an evaluation measured in several
        processes (:class:`reml_core.interfaces.ChoosesInProcesses`), which adds each one's to this one's.

        Asked right before those processes are forked, so the update in flight is loaded first: a forked
        process would otherwise wait for it too, and read the learner's reply from the same pipe."""
        self._settled()
        return {"decisions": self.decisions, "invalid_argmax": self.invalid_argmax}

    def add_decision_counts(self, counts: Mapping[str, int]) -> None:
        self.decisions += int(counts.get("decisions", 0))
        self.invalid_argmax += int(counts.get("invalid_argmax", 0))

    def stats(self) -> dict[str, float]:
        """How often, at evaluation, the unmasked most probable action of :meth:`act` would have been invalid."""
        return {"invalid_argmax_rate": self.invalid_argmax / max(self.decisions, 1)}

    def _initial_lstm_state(self, envs: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero (hidden, cell) state of the actor's LSTM, for ``envs`` environments."""
        policy: Any = self.model.policy  # a RecurrentActorCriticPolicy here
        layers, _, hidden = policy.lstm_hidden_state_shape
        return torch.zeros(layers, envs, hidden), torch.zeros(layers, envs, hidden)

    def save(self, directory: Path) -> None:
        """Write the policy: ``policy.zip`` (stable-baselines3's own format, for SB3 tools) and the
        weights, optimizer state and step count as safetensors / tensors-only files REML loads back."""
        self._settled()
        overlapped = self.model.__dict__.pop("train", None)  # the learner's hook is not the model's to save
        try:
            self.model.save(directory / "policy.zip")
        finally:
            if overlapped is not None:
                self.model.__dict__["train"] = overlapped
        weights = {key: value.detach().contiguous().clone() for key, value in self.model.policy.state_dict().items()}
        save_file(weights, str(directory / "policy.safetensors"))
        torch.save(self.model.policy.optimizer.state_dict(), directory / "policy_optimizer.pt")
        progress = {
            "num_timesteps": int(self.model.num_timesteps),
            "n_updates": int(getattr(self.model, "_n_updates", 0)),
        }
        (directory / "policy_progress.json").write_text(json.dumps(progress))

    def load(self, directory: Path, *, trust_pickle: bool = False) -> None:
        """Restore a saved policy without unpickling anything, from the files ``save`` wrote.

        A directory holding only a stable-baselines3 ``policy.zip`` is refused unless
        ``trust_pickle``: SB3's loader unpickles parts of the zip, which can run code.
        """
        if self.overlap is not None:  # an update in flight belongs to the policy being replaced
            self.overlap.close()
        weights_file = directory / "policy.safetensors"
        if weights_file.exists():
            self._load_weights(directory)
            return
        archive = directory / "policy.zip"
        if not archive.exists():
            raise CheckpointError(f"{directory}: no saved policy (policy.safetensors or policy.zip)")
        if not trust_pickle:
            raise CheckpointError(
                f"{archive} is a stable-baselines3 zip, whose loader can run code it carries; "
                "pass --trust-checkpoint only if you trust where it came from"
            )
        try:
            self.model = self.algorithm.load(archive, env=self.env, device="cpu")
        except Exception as error:  # a truncated or foreign zip
            raise CheckpointError(f"cannot load policy {archive}: {type(error).__name__}: {error}") from None
        self._configure_logger()
        self._bind_overlap()

    def _load_weights(self, directory: Path) -> None:
        try:
            weights = load_file(str(directory / "policy.safetensors"))
            optimizer_state = torch.load(directory / "policy_optimizer.pt", weights_only=True)
            progress = json.loads((directory / "policy_progress.json").read_text())
            self.model.policy.load_state_dict(weights)
            self.model.policy.optimizer.load_state_dict(optimizer_state)
            self.model.num_timesteps = int(progress["num_timesteps"])
            self.model._n_updates = int(progress["n_updates"])
        except Exception as error:
            raise CheckpointError(
                f"cannot restore the policy from {directory}: {type(error).__name__}: "
                f"{' '.join(str(error).split())[:300]}"
            ) from None


def _masked(probabilities: np.ndarray, action_mask: np.ndarray | None) -> np.ndarray:
    """``probabilities`` (float64) renormalised over the valid actions of ``action_mask`` (invalid ones 0);
    uniform over the valid ones when they all have probability 0 (or a value is not finite)."""
    probabilities = probabilities.astype(np.float64)
    if action_mask is not None:
        probabilities[~np.asarray(action_mask, dtype=bool)] = 0.0
    total = probabilities.sum()
    if not total > 0:
        probabilities = np.ones_like(probabilities) if action_mask is None else np.asarray(action_mask, float)
        total = probabilities.sum()
    return probabilities / total
