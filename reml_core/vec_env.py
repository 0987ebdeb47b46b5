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
from functools import partial
from typing import Any

import numpy as np
from gymnasium import spaces

from reml_core.batched import end_episodes
from reml_core.compat import import_gym_quietly
from reml_core.env import CompositionEnv, measure
from reml_core.shards import shard_ranges, shard_work
from reml_core.workers import make_workers, merge_gradients, replay

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
    stack them (same numbers within 1e-5; for tests and benchmarks). ``shards=False`` (``train.split =
    "ends"``): the ``workers`` share each step's finished networks only, never shards of the envs.
    """

    _envs: list[CompositionEnv]
    observation_space: spaces.Box

    def __init__(
        self, envs: Sequence[CompositionEnv], *, batched: bool = True, workers: int = 1, shards: bool = True
    ) -> None:
        if not envs:
            raise ValueError("a vector env needs at least one environment")
        first = envs[0]
        if any(env.pool is not first.pool for env in envs):
            raise ValueError("the environments of a vector env must share one layer pool")
        if any(env.mode != first.mode for env in envs) or first.mode == "evaluate":
            raise ValueError("a vector env runs train- or calibrate-mode environments, all in one mode")
        self._sharded = False  # whether the shards' workers have stepped their envs (ours are then stale)
        self._masks: np.ndarray | None = None  # the envs' action masks after the last sharded step, when asked for
        self._masks_wanted = False
        super().__init__([_returning(env) for env in envs])  # (it reads attributes of the envs through get_attr)
        self.pool = first.pool
        self.mode = first.mode
        self.batched = batched
        self._returns = np.zeros(self.num_envs, dtype=np.float64)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._started = time.time()
        # train.workers > 1: each process steps a shard of the envs (reml_core.shards) where there are enough envs
        # (MIN_SHARD each); otherwise only a step's episode ends are split (reml_core.workers); started lazily
        self.workers = make_workers(self._envs, workers, serve=shard_work) if workers > 1 else None
        ranges = shard_ranges(self.num_envs, workers) if self.workers is not None and shards else []
        self.shards = ranges if len(ranges) > 1 else None

    @property  # type: ignore[override]
    def envs(self) -> list[CompositionEnv]:
        """The environments, current: while the workers step shards of them, reading them stops the workers
        first (:meth:`stop_workers`; they start again at the next step), so nothing reads a stale copy."""
        if self._sharded:
            self.stop_workers()
        return self._envs

    @envs.setter
    def envs(self, value: list[CompositionEnv]) -> None:
        self._envs = value

    # -- what the trainer reads and sets ---------------------------------------------------

    @property
    def episodes(self) -> list[int]:
        """Episodes started so far by each env (its position in its own task stream)."""
        return [env.episodes for env in self._envs]

    @property
    def training_progress(self) -> float:
        return self._envs[0].training_progress

    @training_progress.setter
    def training_progress(self, value: float) -> None:
        for env in self._envs:
            env.training_progress = value

    @property
    def write_back_rate(self) -> float:
        return self._envs[0].write_back_rate

    # -- VecEnv API --------------------------------------------------------------------------

    def close(self) -> None:
        self.stop_workers()
        super().close()

    def stop_workers(self) -> None:
        """Stop the worker processes (they start again at the next step that needs them), first bringing back the
        state of the envs they stepped, so this process's envs continue where the shards were."""
        if self.workers is None:
            return
        if self._sharded and self.workers.started:
            assert self.shards is not None
            shares: list[tuple[Any, ...]] = [("state", (share.start, share.stop), {}) for share in self.shards]
            states = self.workers.run(shares, check_pool=False)
            for share, shard_states in zip(self.shards[1:], states[1:]):
                for index, state in zip(share, shard_states):
                    self._envs[index].load_shard_state(state)
        self._sharded = False
        self._masks = None
        self.workers.close()

    def env_method(self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any) -> list[Any]:
        if method_name == "action_masks" and not method_args and not method_kwargs:
            self._masks_wanted = True  # from now on each sharded step brings the masks back
            if self._sharded:
                if self._masks is None:
                    assert self.shards is not None and self.workers is not None
                    shares: list[tuple[Any, ...]] = [("masks", (share.start, share.stop), {}) for share in self.shards]
                    self._masks = np.concatenate(self.workers.run(shares, check_pool=False))
                return [self._masks[i] for i in self._get_indices(indices)]
        return super().env_method(method_name, *method_args, indices=indices, **method_kwargs)  # (envs: current)

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seed the next reset: env i gets the task stream of ``stream_seed(seed, i)``."""
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        self._seeds = [stream_seed(seed, index) for index in range(self.num_envs)]
        return self._seeds

    def reset(self) -> VecEnvObs:
        observations = np.empty((self.num_envs, *self.observation_space.shape), dtype=np.float32)
        if self._sharded:  # the shards' envs reset where they are
            assert self.shards is not None and self.workers is not None
            shares: list[tuple[Any, ...]] = [
                ("reset", (r.start, r.stop, self._seeds[r.start : r.stop], self._options[r.start : r.stop]), {})
                for r in self.shards
            ]
            replies = []
            for share, (pairs, episodes) in zip(self.shards, self.workers.run(shares, check_pool=False)):
                replies.extend(pairs)
                for index, count in zip(share, episodes):
                    self._envs[index].episodes = count
            self._masks = None
        else:
            replies = []
            for index, env in enumerate(self._envs):
                options = {"options": self._options[index]} if self._options[index] else {}
                replies.append(env.reset(seed=self._seeds[index], **options))
        for index, (observation, info) in enumerate(replies):
            observations[index], self.reset_infos[index] = observation, info
        self._reset_seeds()
        self._reset_options()
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return observations

    def step_wait(self) -> VecEnvStepReturn:
        if self.shards is not None:
            return self._finish(*self._step_shards())
        first = self._envs[0]
        kinds = [env.apply(action) for env, action in zip(self._envs, self.actions)]
        measured = [self._envs[index] for index, kind in enumerate(kinds) if kind == "measure"]
        if measured:
            measure(measured, batched=self.batched, workers=self.workers)
        finished = [index for index, kind in enumerate(kinds) if kind == "complete"]
        results: list[Any] = [None] * self.num_envs
        if finished:
            end = end_episodes if self.workers is None else self.workers.end_episodes
            extra: dict[str, Any] = {"appliers": first.appliers} if first.appliers else {}
            outcomes = end(
                self.pool,
                [self._envs[index].episode_end() for index in finished],
                loss_fn=first.task_sampler.loss,
                config=first.config,
                required=first.reward_function.required_losses,
                write_back_rate=self.write_back_rate if self.mode == "train" else None,
                batched=self.batched,
                pool_update=first.pool_update,
                **extra,
            )
            for index, outcome in zip(finished, outcomes):
                results[index] = self._envs[index].conclude(outcome)
        for index, env in enumerate(self._envs):
            if results[index] is None:
                results[index] = env.partial_result()
        return self._finish(results, None)

    def _step_shards(self) -> tuple[list[Any], dict[int, Any]]:
        """One vector step, each shard's envs stepped by the process that owns them (reml_core.shards); the pool
        then updated here from the shards' write-backs or gradients, in shard order (env order)."""
        assert self.shards is not None and self.workers is not None
        first = self._envs[0]
        rate = self.write_back_rate if self.mode == "train" else None
        options = {
            "progress": self.training_progress,
            "write_back_rate": rate,
            "batched": self.batched,
            "required": first.reward_function.required_losses,
            "masks": self._masks_wanted,
        }
        if self.workers.pool_replaced():  # forked anew from the new tensors, with the envs as the shards left them
            self.stop_workers()
        actions = np.asarray(self.actions)
        replies = self.workers.run(  # (the pool was checked just above)
            [("step", (r.start, r.stop, actions[r.start : r.stop]), options) for r in self.shards], check_pool=False
        )
        self._sharded = True
        results: list[Any] = []
        resets: dict[int, Any] = {}
        for share, reply in zip(self.shards, replies):
            results.extend(reply["results"])
            resets.update({share.start + i: pair for i, pair in reply["resets"].items()})
            for index, episodes in zip(share, reply["episodes"]):
                self._envs[index].episodes = episodes  # what a checkpoint records, current for every shard
        self._masks = np.concatenate([reply["masks"] for reply in replies]) if self._masks_wanted else None
        pool_update = first.pool_update
        if pool_update is None or rate is None:
            for reply in replies:
                replay(self.pool, reply["writes"])
        elif any(reply["keep"] for reply in replies):
            update_options = next(reply["update_options"] for reply in replies if reply["keep"])
            if not pool_update.batch:  # one Adam step on the shards' gradients, merged in shard order
                parts: list[tuple[Any, Any, int]] = [reply["gradient"] or ([], None, 0) for reply in replies]
                gradient = merge_gradients([count for _, _, count in parts], [grads for _, grads, _ in parts])
                if gradient is not None:
                    pool_update.step(gradient, update_options.get("lr_scale", 1.0))
            else:  # several steps on consecutive ends: the ends came back, their gradients split as end splits are
                ends = [end for reply in replies for end in (reply["ends"] or [])]
                keep = [flag for reply in replies for flag in reply["keep"]]
                pool_update.gradients = partial(self.workers.protocol_gradients, pool_update)
                try:
                    pool_update.apply(ends, keep, **update_options)
                finally:
                    del pool_update.gradients
        return results, resets

    def _finish(self, results: list[Any], resets: dict[int, Any] | None) -> VecEnvStepReturn:
        """SB3's step return from each env's result (Monitor's episode statistics; finished envs reset here, or by
        their shard: ``resets``)."""
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
                reset = self._envs[index].reset() if resets is None else resets[index]
                observation, self.reset_infos[index] = reset
            observations[index] = observation
            rewards[index] = reward
            dones[index] = done
            infos.append(info)
        return observations, rewards, dones, infos
