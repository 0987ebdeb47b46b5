"""N composition episodes side by side, as a stable-baselines3 ``VecEnv``.

Each of the N environments is a :class:`~reml_core.env.CompositionEnv` with its own position in
the run's training-task stream: env 0 follows the run seed's own stream (so one env is exactly
the single environment, number for number), env i > 0 the stream of :func:`stream_seed` (seed, i).
Everything random in an episode derives from (its env's stream seed, its episode number), so
results are a deterministic function of (seed, N), and a checkpoint needs only each env's
episode count to continue every stream where it stopped.

On every vector step all N actions are applied first; the incomplete networks whose features
the observations show are then measured together (one stacked forward pass), and the networks
of every episode that finished on that step are trained and measured together by
:func:`reml_core.batched.end_episodes` (one stacked computation when the pool has the
``BatchedLayerPool`` capability) and written back in env-index order, faulted ones left out.
Finished envs are reset at once, as SB3's ``DummyVecEnv`` does (``terminal_observation`` in
their info), and report ``episode`` statistics the way SB3's ``Monitor`` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from reml_core.batched import end_episodes
from reml_core.compat import import_gym_quietly
from reml_core.env import CompositionEnv, measure
from reml_core.workers import make_workers

import_gym_quietly()

from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn  # noqa: E402


def stream_seed(seed: int, index: int) -> int:
    """The seed of env ``index``'s task stream: the run seed for env 0, one derived from (seed, index) otherwise.

    Derived with NumPy's ``SeedSequence`` rather than ``seed + index``, so that env 1 of seed s
    never replays env 0 of seed s + 1.
    """
    if index == 0:
        return int(seed)
    return int(np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index),)).generate_state(1, np.uint64)[0] >> 1)


def _returning(env: CompositionEnv) -> Callable[[], CompositionEnv]:
    """DummyVecEnv's environment factory for an environment that already exists."""
    return lambda: env


class CompositionVecEnv(DummyVecEnv):
    """N :class:`CompositionEnv` sharing one pool, stepped together; see the module docstring.

    ``batched=False`` ends finished episodes one network at a time even when the pool could
    stack them (same numbers within 1e-5; for tests and benchmarks).
    """

    envs: list[CompositionEnv]  # type: ignore[assignment]
    observation_space: spaces.Box

    def __init__(self, envs: Sequence[CompositionEnv], *, batched: bool = True, workers: int = 1) -> None:
        if not envs:
            raise ValueError("a vector env needs at least one environment")
        first = envs[0]
        if any(env.pool is not first.pool for env in envs):
            raise ValueError("the environments of a vector env must share one layer pool")
        if any(env.mode != first.mode for env in envs) or first.mode == "evaluate":
            raise ValueError("a vector env runs train- or calibrate-mode environments, all in one mode")
        super().__init__([_returning(env) for env in envs])
        self.pool = first.pool
        self.mode = first.mode
        self.batched = batched
        self._returns = np.zeros(self.num_envs, dtype=np.float64)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._started = time.time()
        # train.workers > 1: episode ends split across worker processes (reml_core.workers; started lazily)
        self.workers = make_workers(first, workers) if workers > 1 else None

    # -- what the trainer reads and sets ---------------------------------------------------

    @property
    def episodes(self) -> list[int]:
        """Episodes started so far by each env (its position in its own task stream)."""
        return [env.episodes for env in self.envs]

    @property
    def training_progress(self) -> float:
        return self.envs[0].training_progress

    @training_progress.setter
    def training_progress(self, value: float) -> None:
        for env in self.envs:
            env.training_progress = value

    @property
    def write_back_rate(self) -> float:
        return self.envs[0].write_back_rate

    # -- VecEnv API --------------------------------------------------------------------------

    def close(self) -> None:
        if self.workers is not None:
            self.workers.close()
        super().close()

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seed the next reset: env i gets the task stream of ``stream_seed(seed, i)``."""
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        self._seeds = [stream_seed(seed, index) for index in range(self.num_envs)]
        return self._seeds

    def reset(self) -> VecEnvObs:
        observations = np.empty((self.num_envs, *self.observation_space.shape), dtype=np.float32)
        for index, env in enumerate(self.envs):
            options = {"options": self._options[index]} if self._options[index] else {}
            observations[index], self.reset_infos[index] = env.reset(seed=self._seeds[index], **options)
        self._reset_seeds()
        self._reset_options()
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return observations

    def step_wait(self) -> VecEnvStepReturn:
        first = self.envs[0]
        kinds = [env.apply(action) for env, action in zip(self.envs, self.actions)]
        measured = [self.envs[index] for index, kind in enumerate(kinds) if kind == "measure"]
        if measured:
            measure(measured, batched=self.batched, workers=self.workers)
        finished = [index for index, kind in enumerate(kinds) if kind == "complete"]
        results: list[Any] = [None] * self.num_envs
        if finished:
            end = end_episodes if self.workers is None else self.workers.end_episodes
            extra: dict[str, Any] = {"appliers": first.appliers} if first.appliers else {}
            outcomes = end(
                self.pool,
                [self.envs[index].episode_end() for index in finished],
                loss_fn=first.task_sampler.loss,
                config=first.config,
                required=first.reward_function.required_losses,
                write_back_rate=self.write_back_rate if self.mode == "train" else None,
                batched=self.batched,
                pool_update=first.pool_update,
                **extra,
            )
            for index, outcome in zip(finished, outcomes):
                results[index] = self.envs[index].conclude(outcome)
        for index, env in enumerate(self.envs):
            if results[index] is None:
                results[index] = env.partial_result()
        observations = np.empty((self.num_envs, *self.observation_space.shape), dtype=np.float32)
        rewards = np.empty(self.num_envs, dtype=np.float32)
        dones = np.empty(self.num_envs, dtype=bool)
        infos = []
        for index, (observation, reward, terminated, truncated, info) in enumerate(results):
            self._returns[index] += reward
            self._lengths[index] += 1
            done = terminated or truncated
            info["TimeLimit.truncated"] = truncated and not terminated
            if done:
                info["terminal_observation"] = observation
                info["episode"] = {
                    "r": round(float(self._returns[index]), 6),
                    "l": int(self._lengths[index]),
                    "t": round(time.time() - self._started, 6),
                }
                self._returns[index] = 0.0
                self._lengths[index] = 0
                observation, self.reset_infos[index] = self.envs[index].reset()
            observations[index] = observation
            rewards[index] = reward
            dones[index] = done
            infos.append(info)
        return observations, rewards, dones, infos
