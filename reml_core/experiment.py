"""Building an experiment's components from a resolved config, and the checks that span components."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from reml_core import interfaces
from reml_core.choices import run_choices
from reml_core.config import RunConfig, Selected
from reml_core.device import resolve_device
from reml_core.env import CompositionEnv, Mode, check_pool_fits
from reml_core.errors import ComponentBuildError, ConfigError, PluginError, UserError, describe_error
from reml_core.interfaces import (
    BaselineContext,
    BuildContext,
    Describable,
    LayerPool,
    RewardFunction,
    StateEncoder,
    TaskSampler,
)
from reml_core.pool_update import ProtocolPoolUpdate, make_pool_update
from reml_core.settings import episode_processes, resolve_workers
from reml_core.specs import KIND_LABELS, SECTIONS, SPEC_TYPES, TABLE_EACH_KINDS

if TYPE_CHECKING:
    from reml_core.vec_env import CompositionVecEnv


#: The context each kind of component's factory receives (see :class:`reml_core.interfaces.BuildContext`).
STAGE_CONTEXTS: dict[str, type[BuildContext]] = {
    kind: getattr(interfaces, spec.context) for kind, spec in SPEC_TYPES.items()
}


@dataclass
class Components:
    """The built task sampler, state encoder, layer pool and reward function of one run.

    ``context`` is what a baseline's factory gets (:class:`~reml_core.interfaces.BaselineContext`);
    ``context.with_env(env, log_dir)`` is a policy backend's.
    """

    config: RunConfig
    context: BaselineContext
    task_sampler: TaskSampler
    encoder: StateEncoder
    pool: LayerPool
    reward: RewardFunction

    @cached_property
    def pool_update(self) -> ProtocolPoolUpdate | None:
        """The run's one protocol-aligned pool update (its optimiser state is checkpointed), or None for the thesis
        rule."""
        return make_pool_update(self.pool, self.config.core.env, self.task_sampler.loss)

    def make_env(self, *, mode: Mode = "train", seed: int | None = None, first_episode: int = 0) -> CompositionEnv:
        return CompositionEnv(
            self.task_sampler,
            self.encoder,
            self.pool,
            self.reward,
            self.config.core.env,
            seed=self.config.seed if seed is None else seed,
            mode=mode,
            first_episode=first_episode,
            pool_update=self.pool_update if mode == "train" else None,
            choices=run_choices(self.config),
        )

    def make_vec_env(
        self,
        n_envs: int,
        *,
        first_episodes: Sequence[int] | None = None,
        batched: bool = True,
        workers: int | None = None,
    ) -> CompositionVecEnv:
        """``n_envs`` train-mode environments side by side; env i continues its own task stream at
        ``first_episodes[i]``;
        stepped by ``workers`` processes, each a shard of the envs, or sharing each step's finished networks only
        (``train.split``; default count: ``train.workers`` resolved, less the one that runs the policy's update under
        ``train.overlap_update``)."""
        from reml_core.vec_env import CompositionVecEnv, stream_seed  # noqa: PLC0415 - lazy: start-up time: reml_core.vec_env imports stable_baselines3

        starts = list(first_episodes) if first_episodes is not None else [0] * n_envs
        if len(starts) != n_envs:
            raise ValueError(f"{len(starts)} episode counts given for {n_envs} environments")
        envs = [
            self.make_env(mode="train", seed=stream_seed(self.config.seed, index), first_episode=start)
            for index, start in enumerate(starts)
        ]
        train = self.config.core.train
        if workers is None:
            workers = episode_processes(resolve_workers(train.workers, n_envs), train.overlap_update)
        return CompositionVecEnv(
            envs, batched=batched, workers=resolve_workers(workers, n_envs), shards=train.split == "envs"
        )

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


def build_one(selected: Selected, context: BuildContext, label: str | None = None) -> Any:
    """Call one component's factory with the context of its stage (:data:`STAGE_CONTEXTS`).

    A :class:`~reml_core.errors.ComponentBuildError` (the component refusing this configuration or
    these other components) passes through, named after the component; so does any other user
    error. A ``ValueError`` is read the same way as a refusal (the convention before
    ``ComponentBuildError``: a config error naming the component). Anything else is the plugin's
    own failure, one line naming the component (``REML_DEBUG=1``: with its traceback)."""
    kind = label or KIND_LABELS.get(selected.spec.kind, selected.spec.kind)
    stage = STAGE_CONTEXTS.get(selected.spec.kind, BuildContext)
    if not isinstance(context, stage):  # the core's own mistake, never the user's
        raise TypeError(f"{kind} {selected.name!r} is built with a {stage.__name__}, not a {type(context).__name__}")
    section = SECTIONS.get(selected.spec.kind, selected.spec.kind)
    section = f"{section}.{selected.name}" if selected.spec.kind in TABLE_EACH_KINDS else section
    try:
        return selected.spec.factory(selected.config, context)
    except ComponentBuildError as error:
        error.identify(kind, selected.name, section)  # the same error, now naming its component
        raise
    except UserError:
        raise
    except ValueError as error:
        raise ConfigError(
            [f"{section}: {kind} {selected.name!r} cannot be used in this run: {' '.join(str(error).split())}"]
        ) from None
    except Exception as error:
        raise PluginError(f"{kind} {selected.name!r} failed to build: {describe_error(error)}") from error


def build_components(config: RunConfig) -> Components:
    """Call each plugin's factory with its config; report cross-component problems as config errors."""
    device = resolve_device(config.core.train.device)
    base = BuildContext(seed=config.seed, preset=config.core.preset, depth=config.core.env.depth, device=str(device))
    sampler = build_one(config.task, base, "task plugin")
    with_sampler = base.with_task_sampler(sampler)
    encoder = build_one(config.encoder, with_sampler)
    pool = build_one(config.pool, with_sampler)
    reward = build_one(config.reward, with_sampler)
    context = with_sampler.with_pool_and_encoder(pool, encoder)

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
    if config.core.env.pool_update == "protocol" and not isinstance(pool, interfaces.MetaGradientLayerPool):
        problems.append(
            f"env.pool_update: pool {config.pool.name!r} cannot be trained by meta-gradients (it lacks parameters() "
            "and a "
            "differentiable build_batch); use env.pool_update = 'thesis' or a pool that has them, e.g. 'dense'"
        )
    if not problems:
        problems += check_encoder_output(
            encoder, sampler, config.encoder.name, sorted({*config.core.env.shots, *config.core.eval.shots})
        )
    if problems:
        raise ConfigError(problems)
    return Components(config, context, sampler, encoder, pool, reward)


def check_encoder_output(encoder: StateEncoder, sampler: TaskSampler, name: str, shots: list[int]) -> list[str]:
    """Encode one validation task at every K the run uses: the output must be a finite vector of the
    encoder's declared ``observation_size``. A mismatch found here names the encoder; found later it
    would be a broadcasting error deep inside the policy's rollout buffer."""
    declared = getattr(encoder, "observation_size", None)
    if isinstance(declared, bool) or not isinstance(declared, int) or declared < 0:
        return [
            f"encoder.name: encoder {name!r} declares observation_size = {declared!r}; it must be a non-negative "
            "integer"
        ]
    tasks = sampler.validation_tasks(1)
    if not tasks:
        return []
    for k in shots:
        try:
            output = np.asarray(encoder.encode(tasks[0], k), dtype=np.float32)
        except Exception as error:  # a plugin's own bug, reported as its own
            return [
                f"encoder.name: encoder {name!r} failed to encode a task at K = {k}: {type(error).__name__}: {error}"
            ]
        if output.shape != (declared,):
            return [
                f"encoder.name: encoder {name!r} declares observation_size = {declared} but encode() returned "
                f"shape {tuple(output.shape)} at K = {k}; they must agree (a flat vector of observation_size numbers)"
            ]
        if not np.isfinite(output).all():
            return [f"encoder.name: encoder {name!r} returned non-finite values (NaN or inf) at K = {k}"]
    return []


def component_facts(components: Components) -> dict[str, str]:
    """What each component says about itself for reports (those that implement ``describe()``)."""
    facts: dict[str, str] = {}
    parts = (
        ("task", components.task_sampler),
        ("encoder", components.encoder),
        ("pool", components.pool),
        ("reward", components.reward),
    )
    for section, component in parts:
        if isinstance(component, Describable):
            facts[section] = " ".join(str(component.describe()).split())
    return facts


def loss_name(sampler: TaskSampler) -> str:
    """How reports name the family's loss (its optional ``loss_name``: "MSE", "cross-entropy")."""
    name = getattr(sampler, "loss_name", None)
    return name if isinstance(name, str) and name.strip() else "loss"


def baseline_labels(config: RunConfig) -> dict[str, str]:
    """Display names of the config's baselines, as their records give them."""
    return {name: getattr(selected.spec, "label", "") or name for name, selected in config.baselines.items()}


def check_policy_builds(components: Components) -> None:
    """Build the policy once on a throwaway training env, so a policy that cannot be built for these
    components (e.g. a set network without an encoder that declares a point set) is a config error
    before anything is written, not a traceback in the middle of a run."""
    config = components.config
    env = components.make_train_env()
    try:
        with warnings.catch_warnings():  # the real build, in the run, shows a backend's warnings once
            warnings.simplefilter("ignore")
            config.policy.spec.factory(config.policy.config, components.context.with_env(env, log_dir=None))
    except ValueError as error:  # a ComponentBuildError too; the policy's line has always led with "policy: <reason>"
        reason = error.reason if isinstance(error, ComponentBuildError) else str(error)
        raise ComponentBuildError(
            reason, setting="policy", kind=KIND_LABELS["policy"], name=config.policy.name, section="policy"
        ) from None
    except UserError:
        raise
    except Exception as error:
        raise PluginError(f"policy backend {config.policy.name!r} failed to build: {describe_error(error)}") from error
    finally:
        env.close()
