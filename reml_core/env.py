"""The composition MDP: each action picks a pool layer for the next slot of a network.

Slots are filled in the thesis' order: the input layer, then the output layer, then the hidden
layers from the input side (``input, output, hidden_1, ..., hidden_{depth-2}``); the network
itself runs input -> hidden_1 -> ... -> output. The thesis' environment starts from a network
holding an input and an output layer, and choosing those two first keeps that: from the second
step on the network is complete, so the loss and prediction-scale features of the observation
are real for every hidden-layer choice, and the policy sees what each layer it adds does.

An episode ends when the network reaches ``depth`` layers. In ``train`` mode the network is then
trained with Adam on the task's training data and its trained layers are written back into the
pool; the reward comes from the reward function. ``calibrate`` mode does the same without the
write-back; ``evaluate`` mode only composes (evaluation never changes the pool it evaluates).

With ``env.choose`` the layer slots are followed by one choice step per hyperparameter, whose
options are action indices after the pool's (see :mod:`reml_core.choices` and docs/architecture.md,
"Hyperparameter choices"); the chosen values set that episode's own settings.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, cast

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from reml_core.batched import (
    EpisodeEnd,
    EpisodeOutcome,
    MeasureRequest,
    end_episodes,
    measure_networks,
    support_losses,
)
from reml_core.choices import ChoiceStep, apply_choices, choice_steps
from reml_core.interfaces import (
    LayerPool,
    RewardFunction,
    Role,
    ScoresSlotCandidates,
    StateEncoder,
    Task,
    TaskSampler,
)
from reml_core.settings import EnvConfig

Mode = Literal["train", "calibrate", "evaluate"]
StepKind = Literal["invalid", "partial", "measure", "complete"]
OBSERVATION_BOUND = 10.0

#: What stepping and resetting change in a training env (:meth:`CompositionEnv.shard_state`).
_STEP_STATE = (
    "task",
    "shots",
    "_support",
    "_minibatch_seed",
    "episodes",
    "_chosen",
    "_options",
    "_invalid",
    "_task_features",
    "_network_features",
    "_current_loss",
    "_candidate_scores",
    "_candidates",
    "_last_valid",
    "_seed",
    "_first_episode",
    "_drawn",
    "training_progress",
    "_np_random",
    "_np_random_seed",
)


class _LazyStream:
    """An env's task stream after :meth:`CompositionEnv.load_shard_state`: rebuilt at its position when first drawn
    from (a run's training envs are rarely reset again after their shards stop)."""

    def __init__(self, env: CompositionEnv) -> None:
        self.env = env

    def __iter__(self) -> _LazyStream:
        return self

    def __next__(self) -> Task:
        tasks = self.env._stream_at(self.env._drawn)
        self.env._tasks = tasks
        return next(tasks)


def slot_roles(depth: int) -> list[Role]:
    """The role of each slot, in the order slots are filled."""
    return [Role.INPUT, Role.OUTPUT, *([Role.HIDDEN] * (depth - 2))]


def network_order(chosen: list[int]) -> list[int]:
    """Pool indices in the order the network runs them, from indices in slot (fill) order."""
    if len(chosen) < 2:
        return list(chosen)
    return [chosen[0], *chosen[2:], chosen[1]]


def check_pool_fits(pool: LayerPool, depth: int) -> str | None:
    """Why a pool cannot fill a ``depth``-layer network with distinct layers, or None if it can."""
    needed = {Role.INPUT: 1, Role.OUTPUT: 1, Role.HIDDEN: depth - 2}
    for role, count in needed.items():
        available = sum(1 for r in pool.roles if r == role)
        if available < count:
            return f"a depth-{depth} network needs {count} distinct {role.value} layer(s) but the pool has {available}"
    return None


class CompositionEnv(gym.Env[np.ndarray, np.int64]):
    """Compose a network for a task out of a global layer pool; see the module docstring.

    Observation (float32, clipped to +-10): the state encoder's task features; the chosen pool
    indices in slot order, as (index + 1) / pool size, 0 for an empty slot; a pool-membership
    vector (1 for each chosen layer); log(1 + loss) of the current network on the K support
    points; log(1 + std of its predictions there); 1 if the network is complete (input and
    output chosen); K / max K; a one-hot of the slot being filled. With choice steps
    (``env.choose``): the one-hot continues with one entry per choice step (the step's kind), then
    per choice step its chosen option / (options - 1) and a chosen flag. With ``env.candidate_loss``:
    one score per pool layer, nonzero for the layers that may fill the slot being filled (see
    :func:`candidate_scores`).
    """

    action_space: spaces.Discrete
    observation_space: spaces.Box

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        task_sampler: TaskSampler,
        encoder: StateEncoder,
        pool: LayerPool,
        reward: RewardFunction,
        config: EnvConfig,
        *,
        seed: int = 0,
        mode: Mode = "train",
        first_episode: int = 0,
        render_mode: str | None = None,
        pool_update: Any = None,
        choices: Any = (),
    ) -> None:
        problem = check_pool_fits(pool, config.depth)
        if problem:
            raise ValueError(problem)
        too_many = [k for k in config.shots if k > task_sampler.max_shots]
        if too_many:
            raise ValueError(f"K = {too_many[0]} exceeds the {task_sampler.max_shots} support points a task holds")
        self.task_sampler = task_sampler
        self.encoder = encoder
        self.pool = pool
        self.reward_function = reward
        self.pool_update = (
            pool_update  # a ProtocolPoolUpdate (env.pool_update = "protocol") shared by every env of a run
        )
        self.config = config
        self.mode = mode
        self.render_mode = render_mode
        self.depth = config.depth
        self.slot_roles = slot_roles(config.depth)
        self._roles = np.array([role.value for role in pool.roles])
        self._by_role = {value: np.flatnonzero(self._roles == value).tolist() for value in set(self._roles.tolist())}
        # Hyperparameter choice steps (env.choose) follow the layer slots; their options are action
        # indices after the pool's: option j of choice step c is pool.size + offsets[c] + j.
        self.choice_steps: list[ChoiceStep] = choice_steps(config.choose, choices)
        self._offsets = [
            pool.size + sum(len(step.values) for step in self.choice_steps[:c]) for c in range(len(self.choice_steps))
        ]
        self.appliers = {step.name: step.apply for step in self.choice_steps if step.apply is not None}
        self.episode_steps = self.depth + len(self.choice_steps)  # valid steps of a complete episode
        self.action_space = spaces.Discrete(pool.size + sum(len(step.values) for step in self.choice_steps))
        self.scores_candidates = config.candidate_loss != "none"
        size = encoder.observation_size + self.depth + pool.size + 4 + self.depth + 3 * len(self.choice_steps)
        size += pool.size if self.scores_candidates else 0
        self.observation_space = spaces.Box(-OBSERVATION_BOUND, OBSERVATION_BOUND, shape=(size,), dtype=np.float32)
        self._first_episode = first_episode
        self.training_progress = 0.0  # fraction of meta-training done; set by the trainer
        self._restart_stream(seed)
        self.task: Task | None = None
        self.shots = config.shots[-1]
        self._chosen: list[int] = []
        self._options: list[int] = []  # the option chosen at each choice step so far
        self._invalid = 0
        self._task_features = np.zeros(encoder.observation_size, dtype=np.float32)
        self._network_features = (0.0, 0.0)
        self._current_loss: float | None = None
        self._candidate_scores = np.zeros(pool.size, dtype=np.float32)
        self._candidates: list[int] = []  # the pool layers candidate_requests() asked about, in its order
        self._last_valid = True
        # what each network prefix measured, while remembering_measurements() is open (evaluate mode only)
        self._remembered: dict[tuple[Any, ...], tuple[float | None, tuple[float, float], np.ndarray]] | None = None
        self._encodings: dict[tuple[Any, ...], np.ndarray] | None = None  # the task features, likewise

    # -- gymnasium API -----------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode on the next training task, or on ``options["task"]`` with ``options["shots"]``.

        A ``seed`` restarts the training task stream from that seed. Everything random in an
        episode (its K, its minibatches) derives from (seed, episode number), so a resumed run
        continues the stream exactly where the checkpoint left it.
        """
        super().reset(seed=seed)
        if seed is not None:
            self._restart_stream(seed)
        options = options or {}
        episode_rng = np.random.default_rng([self._seed, self.episodes])
        if "task" in options:
            self.task = options["task"]
        else:
            self.task = next(self._tasks)
            self._drawn += 1
        self.shots = int(options["shots"]) if "shots" in options else int(episode_rng.choice(self.config.shots))
        if not 1 <= self.shots <= self.task_sampler.max_shots:
            raise ValueError(f"K = {self.shots} is outside 1..{self.task_sampler.max_shots}")
        self._support = self.task.support(self.shots)  # the K points every measurement of the episode uses
        self._minibatch_seed = int(episode_rng.integers(2**62))
        self.episodes += 1
        self._chosen = []
        self._options = []
        self._invalid = 0
        self._task_features = self._encoded()
        self._network_features = (0.0, 0.0)
        self._current_loss = None
        self._candidate_scores[:] = 0.0  # no network exists before the input layer, so no candidate is scored
        return self._observation(), self._info(valid=True)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        kind = self.apply(action)
        if kind == "measure":
            self._measure_once()
        if kind != "complete":
            return self.partial_result()
        if self.mode == "evaluate":
            return self.conclude(None)
        extra: dict[str, Any] = {"appliers": self.appliers} if self.appliers else {}
        (outcome,) = end_episodes(
            self.pool,
            [self.episode_end()],
            loss_fn=self.task_sampler.loss,
            config=self.config,
            required=self.reward_function.required_losses,
            write_back_rate=self.write_back_rate if self.mode == "train" else None,
            pool_update=self.pool_update,
            **extra,
        )
        return self.conclude(outcome)

    @contextmanager
    def remembering_measurements(self) -> Iterator[None]:
        """Within it, a network prefix already measured on the same task and K is not measured again: its loss,
        scale and candidate scores are taken from the first time, and so are the state encoder's task features
        (evaluate mode, whose pool never changes, only).

        For many rollouts of one task (``eval.reml_rollouts``): rollouts that share their first layers share that
        work, and every observation is the one a fresh measurement gives. Forgotten when the block ends.
        """
        if self.mode != "evaluate":
            raise RuntimeError("measurements are remembered in evaluate mode only (training changes the pool)")
        self._remembered, self._encodings = {}, {}
        try:
            yield
        finally:
            self._remembered = self._encodings = None

    def _measure_once(self) -> None:
        """What a ``measure`` step observes: :func:`measure`, or what the same prefix observed before (see
        :meth:`remembering_measurements`)."""
        if not self.recall_measurement():
            measure([self])
            self.remember_measurement()

    def _encoded(self) -> np.ndarray:
        """The state encoder's features of the episode's task and K (remembered, as measurements are)."""
        assert self.task is not None
        key = (id(self.task), self.task.task_id, self.shots)
        if self._encodings is not None and key in self._encodings:
            return self._encodings[key]
        features = np.asarray(self.encoder.encode(self.task, self.shots), dtype=np.float32)
        if self._encodings is not None:
            self._encodings[key] = features
        return features

    def _prefix_key(self) -> tuple[Any, ...]:
        assert self.task is not None
        return (id(self.task), self.task.task_id, self.shots, tuple(self._chosen))

    def recall_measurement(self) -> bool:
        """Within :meth:`remembering_measurements`: take what this network prefix (task, K, layers) observed
        before, if it was measured; True when it was (nothing to measure), False otherwise."""
        seen = None if self._remembered is None else self._remembered.get(self._prefix_key())
        if seen is None:
            return False
        self._current_loss, self._network_features, scores = seen
        self._candidate_scores[:] = scores
        return True

    def remember_measurement(self) -> None:
        """Within :meth:`remembering_measurements`: keep what this prefix just measured (else nothing)."""
        if self._remembered is not None:
            self._remembered[self._prefix_key()] = (
                self._current_loss,
                self._network_features,
                self._candidate_scores.copy(),
            )

    def twin(self) -> CompositionEnv:
        """Another evaluate-mode environment like this one (the same pool, task family, encoder, reward and
        config) with an episode of its own: for rolling many test tasks out side by side
        (:meth:`reml_core.methods.ReMLMethod.networks_for`). Nothing is remembered in it."""
        if self.mode != "evaluate":
            raise RuntimeError("only an evaluate-mode environment is twinned (a training env owns a task stream)")
        twin = copy.copy(self)
        twin.task = None
        twin._chosen, twin._options, twin._candidates = [], [], []
        twin._candidate_scores = np.zeros_like(self._candidate_scores)
        twin._remembered = twin._encodings = None
        return twin

    # -- a step in parts (the vector env measures and ends many networks together between them) --

    def apply(self, action: Any) -> StepKind:
        """Apply ``action`` to the network; what the step still needs before its result.

        ``invalid`` and ``partial``: nothing, :meth:`partial_result` is the result. ``measure``:
        what the observation shows of the network so far (:func:`measure`), then
        :meth:`partial_result`. ``complete``: the episode's end
        (:meth:`episode_end`, then :meth:`conclude`, which gives the result).
        """
        assert self.task is not None, "call reset() before step()"
        action = int(action)
        if not self.is_valid(action):
            self._invalid += 1
            self._last_valid = False
            return "invalid"
        self._last_valid = True
        if len(self._chosen) < self.depth:
            self._chosen.append(action)
            if len(self._chosen) >= self.depth:
                self._candidate_scores[:] = 0.0  # no layer slot is left to score candidates for
                # with choice steps to come, the complete network is measured so the policy sees its support loss
                return "measure" if self.choice_steps else "complete"
            return "measure" if len(self._chosen) >= 2 or self.scores_candidates else "partial"
        self._options.append(action - self._offsets[len(self._options)])
        return "complete" if len(self._options) >= len(self.choice_steps) else "partial"

    def measurement_request(self) -> MeasureRequest | None:
        """The network so far and the K support points it is measured on (all a few-shot method may see);
        None before it is a network (input and output chosen)."""
        assert self.task is not None
        if len(self._chosen) < 2:
            return None
        x, y = self._support
        return MeasureRequest(tuple(self.chosen), x, y)

    def candidate_requests(self) -> list[MeasureRequest]:
        """With ``env.candidate_loss``: per layer that may fill the next slot, the network so far with that layer
        there, on the K support points (none from a complete network, or without ``env.candidate_loss``)."""
        asked = self.candidate_slot()
        if asked is None:
            return []
        template, slot, candidates, x, y = asked
        return [MeasureRequest((*template[:slot], i, *template[slot + 1 :]), x, y) for i in candidates]

    def candidate_slot(self) -> tuple[tuple[int, ...], int, list[int], Any, Any] | None:
        """What :meth:`candidate_requests` asks, as one template: the network so far with the next slot's
        position held by the first candidate, that position (network order), the candidates and the K support
        points; None where nothing is asked."""
        assert self.task is not None
        if not self.scores_candidates or not 1 <= len(self._chosen) < self.depth:
            self._candidates = []
            return None
        role = self.slot_roles[len(self._chosen)].value
        self._candidates = [i for i in self._by_role.get(role, []) if i not in self._chosen]
        x, y = self._support
        template = tuple(network_order([*self._chosen, self._candidates[0]]))
        slot = len(self._chosen) - 1 if len(self._chosen) >= 2 else 1  # hidden layers fill from the input side
        return template, slot, list(self._candidates), x, y

    def record_candidates(self, losses: Sequence[float]) -> None:
        """The candidates' support losses, in :meth:`candidate_requests`' order, as the observation scores them."""
        if len(losses) != len(self._candidates):
            raise ValueError(f"{len(losses)} candidate losses for {len(self._candidates)} candidates")
        self.record_scores(candidate_scores(losses))

    def record_scores(self, scores: np.ndarray) -> None:
        """The candidates' scores (:func:`candidate_scores` of their losses), in :meth:`candidate_requests`' order."""
        if len(scores) != len(self._candidates):
            raise ValueError(f"{len(scores)} candidate scores for {len(self._candidates)} candidates")
        self._candidate_scores[:] = 0.0
        self._candidate_scores[self._candidates] = scores

    def record_measurement(self, loss: float, scale: float) -> None:
        """The loss and prediction scale of the network so far, as the observation shows them."""
        self._current_loss = loss
        self._network_features = (_log_feature(loss), _log_feature(scale))

    def partial_result(self) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """The result of a step that did not complete the network."""
        if not self._last_valid:
            truncated = self._invalid > self.config.max_invalid_actions
            return (
                self._observation(),
                float(self.reward_function.invalid_action_penalty),
                False,
                truncated,
                self._info(valid=False),
            )
        return self._observation(), 0.0, False, False, self._info(valid=True)

    def episode_end(self) -> EpisodeEnd:
        """The complete network of this episode, for :func:`reml_core.batched.end_episodes`."""
        assert (
            self.task is not None and len(self._chosen) == self.depth and len(self._options) == len(self.choice_steps)
        )
        if not self.choice_steps:
            return EpisodeEnd(self.task, tuple(self.chosen), self.shots, self._minibatch_seed)
        return EpisodeEnd(
            self.task, tuple(self.chosen), self.shots, self._minibatch_seed, tuple(self.chosen_values.items())
        )

    def conclude(self, outcome: EpisodeOutcome | None) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """The last step's result from the episode's outcome (None in evaluate mode: nothing is measured).

        The network trained on copies: a faulted one left every chosen layer of the pool exactly as
        it was before the episode, and gets the reward function's worst reward.
        """
        assert self.task is not None
        if outcome is None:
            reward, details = 0.0, {"losses": {}, "numerical_fault": False}
        else:
            reward = (
                self.reward_function.worst_reward
                if outcome.fault
                else float(self.reward_function(outcome.losses, self.task))
            )
            details = {"losses": outcome.losses, "numerical_fault": outcome.fault}
        info = self._info(valid=True)
        info.update(details)
        return self._observation(), reward, True, False, info

    def _restart_stream(self, seed: int) -> None:
        """Training tasks from ``seed``'s stream, starting at ``first_episode`` (past tasks a resumed run saw)."""
        self._seed = seed
        self._tasks = self._stream_at(self._first_episode)
        self._drawn = self._first_episode  # tasks taken from the stream so far (its position)
        self.episodes = self._first_episode

    def _stream_at(self, position: int) -> Iterator[Task]:
        tasks = self.task_sampler.train_stream(self._seed)
        for _ in range(position):
            next(tasks)
        return tasks

    def shard_state(self) -> dict[str, Any]:
        """What stepping changes in this env (its episode, its place in the task stream; not its components):
        what a vector env's shard process sends back when it stops, for :meth:`load_shard_state`."""
        return {name: getattr(self, name) for name in _STEP_STATE if hasattr(self, name)}

    def load_shard_state(self, state: dict[str, Any]) -> None:
        """Continue from another process's copy of this env (:meth:`shard_state`): its episode, and its task
        stream from the same position (rebuilt at the next reset that draws a task)."""
        moved = state.get("_drawn") != getattr(self, "_drawn", None) or state.get("_seed") != getattr(
            self, "_seed", None
        )
        for name, value in state.items():
            setattr(self, name, value)
        if moved:
            self._tasks = _LazyStream(self)

    def action_masks(self) -> np.ndarray:
        """True for each action valid at this step (for maskable policies): the pool indices that fit the
        slot being filled, or the options of the hyperparameter being chosen."""
        mask = np.zeros(int(self.action_space.n), dtype=bool)
        if len(self._chosen) >= self.depth:
            step = len(self._options)
            if step < len(self.choice_steps):
                start = self._offsets[step]
                mask[start : start + len(self.choice_steps[step].values)] = True
            return mask
        mask[: self.pool.size][self._roles == self.slot_roles[len(self._chosen)].value] = True
        mask[self._chosen] = False
        return mask

    def is_valid(self, action: int) -> bool:
        if len(self._chosen) >= self.depth:
            step = len(self._options)
            if step >= len(self.choice_steps):
                return False
            return 0 <= action - self._offsets[step] < len(self.choice_steps[step].values)
        if not 0 <= action < self.pool.size:
            return False
        return self.pool.roles[action] == self.slot_roles[len(self._chosen)] and action not in self._chosen

    @property
    def chosen_values(self) -> dict[str, Any]:
        """The hyperparameter values chosen so far in this episode, by name (``env.choose``)."""
        return {step.name: step.values[option] for step, option in zip(self.choice_steps, self._options)}

    def build_network(self, indices: list[int], values: dict[str, Any] | None = None) -> Any:
        """The pool's network of ``indices`` (network order) with a plugin's chosen values applied (a copy)."""
        return apply_choices(self.pool.build(indices), tuple((values or {}).items()), self.appliers)

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        slots = ", ".join(f"{role.value}={index}" for role, index in zip(self.slot_roles, self._chosen))
        slots += "".join(f", {name}={value}" for name, value in self.chosen_values.items())
        return f"task {self.task.task_id if self.task else '-'} K={self.shots}: [{slots}]"

    # -- internals ---------------------------------------------------------------------------

    @property
    def write_back_rate(self) -> float:
        """The configured rate, annealed by ``training_progress`` under the linear schedule."""
        rate = self.config.write_back_rate
        return rate * (1.0 - self.training_progress) if self.config.write_back_schedule == "linear" else rate

    @property
    def chosen(self) -> list[int]:
        """Pool indices chosen so far, in network order."""
        return network_order(self._chosen)

    def _observation(self) -> np.ndarray:
        # Filled in place, section by section (see the class docstring for the layout): the vector
        # env builds one per env per step, so this is on the hot path.
        count = len(self._chosen)
        observation = np.zeros(self.observation_space.shape[0], dtype=np.float32)
        start = self.encoder.observation_size
        observation[:start] = self._task_features
        if count:
            chosen = np.asarray(self._chosen)
            observation[start : start + count] = (chosen.astype(np.float32) + 1.0) / self.pool.size
            observation[start + self.depth + chosen] = 1.0  # pool membership
        network = start + self.depth + self.pool.size
        observation[network : network + 4] = (
            *self._network_features,
            float(count >= 2),
            self.shots / self.task_sampler.max_shots,
        )
        if count < self.depth:
            observation[network + 4 + count] = 1.0  # the slot being filled
        elif len(self._options) < len(self.choice_steps):
            observation[network + 4 + self.depth + len(self._options)] = 1.0  # the hyperparameter being chosen
        if self.choice_steps:
            values = network + 4 + self.depth + len(self.choice_steps)
            for c, option in enumerate(self._options):  # each chosen value as option / (options - 1), and a chosen flag
                options = len(self.choice_steps[c].values)
                observation[values + 2 * c] = option / (options - 1) if options > 1 else 0.0
                observation[values + 2 * c + 1] = 1.0
        if self.scores_candidates:
            observation[-self.pool.size :] = self._candidate_scores
        np.clip(observation, -OBSERVATION_BOUND, OBSERVATION_BOUND, out=observation)  # +-inf to the bounds
        np.copyto(observation, OBSERVATION_BOUND, where=np.isnan(observation))  # (cheaper than np.nan_to_num)
        return observation

    def _info(self, *, valid: bool) -> dict[str, Any]:
        return {
            "valid": valid,
            "indices": self.chosen,
            "loss": self._current_loss,
            "task_id": self.task.task_id if self.task else None,
            "shots": self.shots,
            **({"choices": self.chosen_values} if self.choice_steps else {}),
        }


def measure(envs: Sequence[CompositionEnv], *, batched: bool = True, workers: Any = None) -> None:
    """Measure what the observations of ``envs`` (one pool, one config) show after a ``measure`` step: each
    network so far (one stacked forward pass) and, with ``env.candidate_loss``, every candidate's network
    (stacked computations, cut into shares across the vector env's ``workers`` when it has them); a lone
    network exactly as a single environment measures it."""
    first = envs[0]
    loss_fn = first.task_sampler.loss
    networks = [(env, request) for env in envs if (request := env.measurement_request()) is not None]
    if networks:
        features = measure_networks(first.pool, [request for _, request in networks], loss_fn, batched=batched)
        for (env, _), (loss, scale) in zip(networks, features):
            env.record_measurement(loss, scale)
    steps = 1 if first.config.candidate_loss == "adapted" else 0
    if steps == 0 and batched and isinstance(first.pool, ScoresSlotCandidates):
        _score_slots(envs)
        return
    asked = [(env, env.candidate_requests()) for env in envs]
    flat = [request for _, requests in asked for request in requests]
    if not flat:
        return
    scorer = support_losses if workers is None else workers.support_losses
    losses = scorer(first.pool, flat, loss_fn, steps=steps, lr=first.config.finetune_sgd_lr, batched=batched)
    offset = 0
    for env, requests in asked:
        if requests:
            env.record_candidates(losses[offset : offset + len(requests)])
            offset += len(requests)


def _score_slots(envs: Sequence[CompositionEnv]) -> None:
    """The composed candidate losses of ``envs`` from a pool that scores a slot's candidates itself
    (:class:`~reml_core.interfaces.ScoresSlotCandidates`): one call per group of envs whose networks and
    points stack (the prefix before the slot runs once per env, not once per candidate)."""
    groups: dict[tuple[Any, ...], list[tuple[CompositionEnv, tuple[tuple[int, ...], int, list[int], Any, Any]]]] = {}
    for env in envs:
        asked = env.candidate_slot()
        if asked is not None:
            template, slot, _, x, y = asked
            groups.setdefault((len(template), slot, tuple(x.shape), tuple(y.shape)), []).append((env, asked))
    for (_, slot, _, _), members in groups.items():
        pool = cast("ScoresSlotCandidates", members[0][0].pool)
        losses = pool.slot_losses(
            [asked[0] for _, asked in members],
            slot,
            [asked[2] for _, asked in members],
            torch.stack([asked[3] for _, asked in members]),
            torch.stack([asked[4] for _, asked in members]),
            members[0][0].task_sampler.loss,
        )
        if isinstance(losses, np.ndarray) or len({len(values) for values in losses}) == 1:  # scored as one array
            for (env, _), scores in zip(members, candidate_score_rows(np.asarray(losses, dtype=np.float64))):
                env.record_scores(scores)
        else:
            for (env, _), values in zip(members, losses, strict=True):
                env.record_candidates(values)


def candidate_scores(losses: Sequence[float]) -> np.ndarray:
    """The observation's score of each candidate from its support loss: how many standard deviations its
    log(1 + loss) is below the mean of the slot's candidates (higher is better; 0 when they all agree).
    A non-finite loss scores as the worst finite one plus one (log scale); all non-finite: all 0."""
    return candidate_score_rows(np.asarray(losses, dtype=np.float64).reshape(1, -1))[0]


def candidate_score_rows(losses: np.ndarray) -> np.ndarray:
    """:func:`candidate_scores` of each row of ``losses`` (envs x candidates), the same numbers row by row (each
    row's mean and spread reduced along it, as for a lone row)."""
    values = np.log1p(np.maximum(losses, 0.0))
    finite = np.isfinite(values)
    worst = np.where(finite, values, -np.inf).max(axis=1, keepdims=True)
    values = np.where(finite, values, worst + 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = values.std(axis=1, keepdims=True)
        scores = (values.mean(axis=1, keepdims=True) - values) / spread
    scores[~finite.any(axis=1) | ~(spread[:, 0] >= 1e-8)] = 0.0
    return scores.astype(np.float32)


def _log_feature(value: float) -> float:
    return math.log1p(value) if math.isfinite(value) and value >= 0 else OBSERVATION_BOUND
