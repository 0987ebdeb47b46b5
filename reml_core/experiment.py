"""Building an experiment's components from a resolved config, and the checks that span components."""

from __future__ import annotations

from dataclasses import dataclass, replace

from reml_core.config import RunConfig
from reml_core.env import CompositionEnv, Mode, check_pool_fits
from reml_core.errors import ConfigError
from reml_core.interfaces import BuildContext, LayerPool, RewardFunction, StateEncoder, TaskSampler


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


def build_components(config: RunConfig) -> Components:
    """Call each plugin's factory with its config; report cross-component problems as config errors."""
    context = BuildContext(seed=config.seed, preset=config.core.preset, depth=config.core.env.depth)
    sampler = config.task.spec.factory(config.task.config, context)
    context = replace(context, task_sampler=sampler)
    encoder = config.encoder.spec.factory(config.encoder.config, context)
    pool = config.pool.spec.factory(config.pool.config, context)
    reward = config.reward.spec.factory(config.reward.config, context)
    context = replace(context, pool=pool)

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
