"""Building an experiment's components from a resolved config, and the checks that span components."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from reml_core.config import RunConfig
from reml_core.env import CompositionEnv, Mode, check_pool_fits
from reml_core.errors import ConfigError
from reml_core.interfaces import BuildContext, LayerPool, RewardFunction, StateEncoder, TaskSampler

if TYPE_CHECKING:
    from reml_core.vec_env import CompositionVecEnv


@dataclass
class Components:
    """The built task sampler, state encoder, layer pool and reward function of one run."""

    config: RunConfig
    context: BuildContext
    task_sampler: TaskSampler
    encoder: StateEncoder
    pool: LayerPool
    reward: RewardFunction

    def make_env(self, *, mode: Mode = "train", seed: int | None = None, first_episode: int = 0) -> CompositionEnv:
        return CompositionEnv(
            self.task_sampler, self.encoder, self.pool, self.reward, self.config.core.env,
            seed=self.config.seed if seed is None else seed, mode=mode, first_episode=first_episode,
        )

    def make_vec_env(
        self, n_envs: int, *, first_episodes: Sequence[int] | None = None, batched: bool = True
    ) -> CompositionVecEnv:
        """``n_envs`` train-mode environments side by side; env i continues its own task stream at ``first_episodes[i]``."""
        from reml_core.vec_env import CompositionVecEnv, stream_seed  # imports stable-baselines3

        starts = list(first_episodes) if first_episodes is not None else [0] * n_envs
        if len(starts) != n_envs:
            raise ValueError(f"{len(starts)} episode counts given for {n_envs} environments")
        envs = [
            self.make_env(mode="train", seed=stream_seed(self.config.seed, index), first_episode=start)
            for index, start in enumerate(starts)
        ]
        return CompositionVecEnv(envs, batched=batched)

    def make_train_env(self, first_episodes: int | Sequence[int] = 0) -> CompositionEnv | CompositionVecEnv:
        """The meta-training environment: one :class:`CompositionEnv` when ``train.n_envs`` is 1 (as before
        vector envs existed), else a :class:`~reml_core.vec_env.CompositionVecEnv` of ``train.n_envs``.

        ``first_episodes`` is a checkpoint's ``TrainerState.episodes``: one count per env, or a plain
        int (checkpoints of one env, including those written before vector envs): env 0 continues
        there and any further env starts its stream from the beginning.
        """
        n_envs = self.config.core.train.n_envs
        counts = [first_episodes] if isinstance(first_episodes, int) else list(first_episodes)
        if len(counts) > n_envs:
            raise ValueError(f"the checkpoint holds {len(counts)} environments' positions but train.n_envs is {n_envs}")
        counts += [0] * (n_envs - len(counts))
        if n_envs == 1:
            return self.make_env(mode="train", first_episode=counts[0])
        return self.make_vec_env(n_envs, first_episodes=counts)


def build_components(config: RunConfig) -> Components:
    """Call each plugin's factory with its config; report cross-component problems as config errors."""
    context = BuildContext(seed=config.seed, preset=config.core.preset, depth=config.core.env.depth)
    sampler = config.task.spec.factory(config.task.config, context)
    context = replace(context, task_sampler=sampler)
    encoder = config.encoder.spec.factory(config.encoder.config, context)
    pool = config.pool.spec.factory(config.pool.config, context)
    reward = config.reward.spec.factory(config.reward.config, context)
    context = replace(context, pool=pool, encoder=encoder)

    problems = []
    for section in ("env", "eval"):
        shots = getattr(config.core, section).shots
        for k in shots:
            if k > sampler.max_shots:
                problems.append(
                    f"{section}.shots: K = {k} is more than the {sampler.max_shots} support points a "
                    f"{config.task.name!r} task holds"
                )
                break
    problem = check_pool_fits(pool, config.core.env.depth)
    if problem:
        problems.append(f"env.depth: {problem} (pool {config.pool.name!r}: make it larger or the network shallower)")
    if problems:
        raise ConfigError(problems)
    return Components(config, context, sampler, encoder, pool, reward)


def check_policy_builds(components: Components) -> None:
    """Build the policy once on a throwaway training env, so a policy that cannot be built for these
    components (e.g. a set network without an encoder that declares a point set) is a config error
    before anything is written, not a traceback in the middle of a run."""
    import warnings

    config = components.config
    env = components.make_train_env()
    try:
        with warnings.catch_warnings():  # the real build, in the run, shows a backend's warnings once
            warnings.simplefilter("ignore")
            config.policy.spec.factory(config.policy.config, replace(components.context, env=env, log_dir=None))
    except ValueError as error:
        raise ConfigError([f"policy: {' '.join(str(error).split())}"]) from None
    finally:
        env.close()
