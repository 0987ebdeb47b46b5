"""The core's settings: the pydantic models of the ``env``, ``train`` and ``eval`` sections, their
limits and the core's budget for each preset.

Pure data models: nothing here knows about plugins or the registry (that is
:mod:`reml_core.config`, which resolves a whole experiment), so the environment and the trainer
depend only on these settings and on :mod:`reml_core.interfaces`.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError, PydanticUndefined

from reml_core.choices import check_choose
from reml_core.device import check_device_name
from reml_core.specs import Preset


def renames_of(model: type[BaseModel]) -> dict[str, tuple[str, ...]]:
    """The model's renamed settings (fields declared with :func:`renamed`): name -> its former names."""
    found: dict[str, tuple[str, ...]] = {}
    for name, info in model.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and alias.choices and alias.choices[0] == name:
            former = tuple(choice for choice in alias.choices[1:] if isinstance(choice, str) and choice != name)
            if former:
                found[name] = former
    return found


class RenamableModel(BaseModel):
    """Base for a config model with renamed settings (:func:`renamed`): for each one, the model refuses
    both names at once, and gets a read-only attribute of the former name (deprecated) that reads the
    new one. A plugin's config model derives from it (or from :class:`StrictModel`) to rename a setting."""

    @model_validator(mode="before")
    @classmethod
    def _one_name_per_setting(cls, data: Any) -> Any:
        return one_name_per_setting(cls, data)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for new, former in renames_of(cls).items():
            for old in former:
                if old not in cls.__dict__:
                    setattr(cls, old, _former_name(new))


def _former_name(new: str) -> property:
    def read(self: BaseModel) -> Any:
        return getattr(self, new)

    return property(read, doc=f"Deprecated: the former name of :attr:`{new}`.")


class StrictModel(RenamableModel):
    """Base for every config model: unknown keys are errors, numbers are finite, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def renamed(new: str, old: str, default: Any = PydanticUndefined, *, description: str = "", **constraints: Any) -> Any:
    """A renamed setting, declared once: ``inner_adam_lr: float = renamed("inner_adam_lr", "inner_lr", 0.005, gt=0,
    description=...)``.

    A pydantic ``Field`` (``default``, ``description`` and the ``constraints`` as ``Field`` takes them)
    that accepts the former name as well (its ``validation_alias``) and says so in its description.
    The resolved config (``model_dump``, ``config.json``) writes only the new name. In a
    :class:`RenamableModel` (every :class:`StrictModel` is one) both names at once are an error, and the
    former name reads the setting as a deprecated attribute. Everything else that needs the rename
    reads it from the alias (:func:`renames_of`; :func:`reml_core.config.renamed_settings` for a whole
    config, plugins' sections included), so nothing else names it.
    """
    note = f"formerly {old}, still accepted"
    return Field(
        default,
        validation_alias=AliasChoices(new, old),
        description=f"{description}; {note}" if description else note,
        **constraints,
    )


def one_name_per_setting(model: type[BaseModel], data: Any) -> Any:
    """Refuse a renamed setting given under both its names (see :func:`renamed`), naming both."""
    if not isinstance(data, Mapping):
        return data
    for info in model.model_fields.values():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            given = [name for name in alias.choices if isinstance(name, str) and name in data]
            if len(given) > 1:
                raise PydanticCustomError(
                    "renamed_setting_given_twice",
                    "{new} and its former name {old} are both given; give only {new}",
                    {"new": given[0], "old": ", ".join(given[1:])},
                )
    return data


#: Upper bounds on sizes and counts. Each is far beyond any sensible experiment and far below what
#: would exhaust memory or run for days, so an absurd value fails at once with the limit named.
MAX_STEPS = 1_000_000_000
MAX_TASKS = 100_000
MAX_ITERATIONS = 1_000_000
#: A config file larger than this, or with more settings than this, is not a REML config.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_CONFIG_SETTINGS = 10_000


#: ``train.workers`` at most by default (beyond about 8 the serial part of a step dominates: docs/performance.md).
DEFAULT_CAP = 8


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def can_fork() -> bool:
    """Whether this platform starts processes by forking (Linux, macOS; not Windows): ``train.workers``'
    processes are forked from the run's, so that they inherit its envs and its pool in shared memory."""
    return "fork" in multiprocessing.get_all_start_methods()


def resolve_workers(workers: int | None, n_envs: int) -> int:
    """``train.workers`` as a number: the given count, or by default the available CPUs, at most
    :data:`DEFAULT_CAP` (1 where processes cannot fork: :func:`can_fork`); never more than ``n_envs``
    (one env has nothing to split)."""
    count = workers if workers is not None else (min(available_cpus(), DEFAULT_CAP) if can_fork() else 1)
    return max(1, min(count, n_envs))


def overlaps_update(workers: int, overlap_update: bool) -> bool:
    """Whether one of a run's ``workers`` processes runs the policy's update (``train.overlap_update``): the
    learner is forked, so where processes cannot fork (Windows) each update is waited for instead."""
    return overlap_update and workers > 1 and can_fork()


def episode_processes(workers: int, overlap_update: bool) -> int:
    """How many of a run's ``workers`` processes share a vector step's episode ends: all of them, or all
    but the one that runs the policy's update (:func:`overlaps_update`)."""
    return workers - 1 if overlaps_update(workers, overlap_update) else workers


#: The core's budgets of its own sections for each preset, used under a task plugin's
#: ``experiment_presets`` (which override them key by key): a family that declares no presets still
#: gets a quick ``smoke`` and a thorough ``full``. ``default`` is the models' own defaults.
CORE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "train": {"env_steps": 2_000, "checkpoint_every": 1_000, "validation_tasks": 10, "calibration_episodes": 20},
        "eval": {"test_tasks": 50, "curve_steps": 100, "curve_tasks": 20},
    },
    "default": {},
    "full": {
        "train": {
            "env_steps": 1_000_000,
            "checkpoint_every": 100_000,
            "validation_tasks": 200,
            "calibration_episodes": 500,
        },
        "eval": {"test_tasks": 600, "curve_tasks": 600},
    },
}


def _distinct_sorted(values: list[int]) -> list[int]:
    if len(set(values)) != len(values):
        raise ValueError("values must be distinct")
    return sorted(values)


def check_shots(value: list[int]) -> list[int]:
    """A list of K values (``env.shots``, a baseline's): each positive, distinct; sorted."""
    if any(k <= 0 for k in value):
        raise ValueError("every K must be positive")
    return _distinct_sorted(value)


def check_step_counts(value: list[int]) -> list[int]:
    """A list of SGD adaptation step counts (``env.meta_steps``, a baseline's): each in 0..1000, distinct; sorted."""
    if any(s < 0 or s > 1000 for s in value):
        raise ValueError("each adaptation step count must be in 0..1000")
    return _distinct_sorted(value)


class EnvConfig(StrictModel):
    """The composition MDP: network depth, inner training, and the K-shot fine-tuning it can measure."""

    depth: int = Field(5, ge=2, le=64, description="layers per network: input + (depth - 2) hidden + output")
    inner_steps: int = Field(
        30, ge=0, le=MAX_ITERATIONS, description="Adam steps on the task's training data at the end of an episode"
    )
    inner_adam_lr: float = renamed(
        "inner_adam_lr",
        "inner_lr",
        0.005,
        gt=0,
        description="Adam learning rate of the episode's inner training (not an SGD step: see env.finetune_sgd_lr)",
    )
    inner_batch: int = Field(100, gt=0, le=MAX_ITERATIONS, description="minibatch size of the inner training")
    shots: list[int] = Field([5, 10], min_length=1, description="K values an episode draws from for its support set")
    finetune_steps: int = Field(
        10,
        ge=0,
        le=MAX_ITERATIONS,
        description=(
            "SGD steps on the K support points for the 'finetuned' loss a reward may use; unless set, the "
            "evaluation protocol's longest fine-tuning (the largest of eval.steps), so the reward measures what is "
            "reported"
        ),
    )
    finetune_sgd_lr: float = renamed(
        "finetune_sgd_lr",
        "finetune_lr",
        0.01,
        gt=0,
        description=(
            "plain SGD learning rate of the 'finetuned' loss; unless set, eval.sgd_lr (the evaluation protocol's)"
        ),
    )
    max_invalid_actions: int = Field(
        10, ge=0, le=MAX_ITERATIONS, description="invalid actions after which an episode is truncated"
    )
    write_back_rate: float = Field(
        0.1,
        gt=0,
        le=1,
        description="pool += rate * (trained - pool); 1 replaces the layers as the thesis did (the pool collapses, "
        "docs/pool-health.md), below 1 is a Reptile step",
    )
    pool_update: Literal["thesis", "protocol"] = Field(
        "thesis",
        description="what the end of an episode does to the pool: 'thesis' trains the network with Adam on the task's "
        "data and blends it back (env.write_back_rate); 'protocol' takes the meta-gradient of the query loss after the "
        "evaluation's SGD adaptation on the support set and steps the pool with Adam (env.pool_adam_lr); "
        "docs/experiments.md compares them",
    )
    pool_adam_lr: float = Field(
        0.003,
        gt=0,
        le=1,
        description=(
            "Adam learning rate of the pool under env.pool_update = 'protocol' (annealed by env.write_back_schedule)"
        ),
    )
    pool_batch: int = Field(
        0,
        ge=0,
        le=100_000,
        description="under env.pool_update = 'protocol', how many finished networks make one Adam step of the pool: "
        "an environment step's finished networks are cut, in environment order, into consecutive batches of at most "
        "this many, each its own step on the pool the previous one left; 0 (the default): one step on all of them",
    )
    meta_steps: list[int] = Field(
        [],
        description="SGD adaptation steps whose query losses the protocol update averages (each >= 0); unless set, "
        "the evaluation's step counts other than 0 (eval.steps), so the pool trains for every adaptation that is "
        "reported",
    )
    meta_order: Literal["second", "first"] = Field(
        "second",
        description="'second': the exact meta-gradient through the adaptation, as MAML; 'first': without "
        "its second-order terms (cheaper)",
    )
    write_back_schedule: Literal["constant", "linear"] = Field(
        "linear",
        description=(
            "'linear' anneals the pool's update to 0 over train.env_steps (the write-back rate, Reptile's schedule; or "
            "the "
            "protocol update's Adam rate); 'constant' keeps it"
        ),
    )
    choose: dict[str, list[float | int | str]] = Field(
        {},
        description="hyperparameters the policy chooses per episode, each with its candidate values, e.g. "
        "env.choose.finetune_sgd_lr = [0.003, 0.01, 0.03, 0.1]: one extra episode step per name, after the layer slots "
        "(built in: finetune_sgd_lr, finetune_steps, inner_adam_lr, inner_steps; or a name a plugin declares). "
        "Empty (the default): the episode chooses layers only and every hyperparameter is the fixed setting "
        "(docs/architecture.md, the MDP)",
    )
    pool_follows_choices: bool = Field(
        True,
        description="under env.pool_update = 'protocol', whether the pool's meta-gradient adapts each network at the "
        "rate and steps its policy chose (env.choose.finetune_sgd_lr / finetune_steps); false: at the fixed "
        "env.finetune_sgd_lr and env.meta_steps, so the pool is trained for the protocol while the choice only "
        "drives the reward (docs/experiments.md)",
    )

    candidate_loss: Literal["none", "composed", "adapted"] = Field(
        "none",
        description="what the observation tells the policy about each layer it may choose next: 'none' nothing; "
        "'composed' the support loss of the network with that layer in the next slot; 'adapted' that network's "
        "support loss after one SGD step at env.finetune_sgd_lr (how maml-select and pool-search choose). Each as a "
        "score against the slot's other candidates; the support set only, so as fair as MAML (docs/architecture.md)",
    )

    @field_validator("shots")
    @classmethod
    def _shots_positive(cls, value: list[int]) -> list[int]:
        return check_shots(value)

    @field_validator("meta_steps")
    @classmethod
    def _meta_steps(cls, value: list[int]) -> list[int]:
        return check_step_counts(value)

    @field_validator("choose", mode="before")
    @classmethod
    def _choose_candidates(cls, value: Any) -> Any:
        return check_choose(value, cls.model_fields)


class TrainConfig(StrictModel):
    """Meta-training budget and bookkeeping."""

    env_steps: int = Field(100_000, gt=0, le=MAX_STEPS, description="policy (environment) steps of meta-training")
    checkpoint_every: int = Field(10_000, gt=0, le=MAX_STEPS, description="env steps between checkpoints")
    validation_tasks: int = Field(
        50, ge=0, le=MAX_TASKS, description="held-out validation tasks scored at each checkpoint (0: off)"
    )
    calibration_episodes: int = Field(
        200, gt=0, le=MAX_ITERATIONS, description="random episodes of the reward calibration pass"
    )
    progress: bool = Field(True, description="show progress bars")
    threads: int = Field(1, gt=0, le=1024, description="torch intra-op threads (tiny networks run fastest on one)")
    device: str = Field(
        "cpu",
        description="where the layer pool, the networks it builds and the baselines' networks train: 'cpu', 'cuda' or "
        "'cuda:N' (refused when this machine has no such device); the policy always runs on the CPU",
    )
    n_envs: int = Field(
        128,
        ge=1,
        le=1024,
        description="composition episodes run side by side as one vector env (1: the single env). Networks that finish "
        "on the same step are trained as one stacked computation, so more envs give larger batches; each env takes "
        "rollout length / n_envs steps of every rollout. Results depend on (seed, n_envs); docs/performance.md has "
        "the measured throughput",
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=256,
        description="processes that share the vector env's work (train.n_envs > 1; what they share: train.split), "
        "and the fine-tuning of the validation's and the evaluation's networks (the same numbers as one process), "
        "forked at the first step that needs them; the pool reaches them in "
        "shared memory and its updates are merged in env order by the run's process. Default: the CPUs "
        "this process may use, at most 8 and at most train.n_envs (1 where processes cannot fork, as on Windows; "
        "there, more than 1 needs --executor ray), recorded in config.json as the number used; "
        "1 is the single-process path. Results depend on (seed, n_envs, workers) (docs/performance.md)",
    )
    overlap_update: bool = Field(
        True,
        description="with train.workers >= 2, one of the workers runs the policy's update (PPO's epochs over a "
        "rollout) while the others, the run's own process included, collect the next rollout and share its work "
        "(train.split); each rollout then acts with the policy one update behind. false: every worker shares the "
        "rollout's work and each update is waited for. Results depend on it as on workers (docs/performance.md)",
    )
    split: Literal["envs", "ends"] = Field(
        "envs",
        description="what the processes of train.workers share: 'envs': each steps a consecutive shard of at least "
        "8 of the vector env's envs whole (actions, measurements, candidate scores, finished networks; a vector env of "
        "fewer than 16 envs splits 'ends'); 'ends': the run's process steps every env and only each step's finished "
        "networks are split, in equal shares (better balanced where a finished network is nearly all of a step, as "
        "with conv pools: the image families' presets). Results depend on it as on workers (docs/performance.md)",
    )

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        return check_device_name(value)


class EvalConfig(StrictModel):
    """The few-shot protocol of Finn et al. (2017) on held-out tasks."""

    test_tasks: int = Field(600, gt=0, le=MAX_TASKS, description="held-out meta-test tasks")
    shots: list[int] = Field([5, 10], min_length=1, description="K support points per task")
    steps: list[int] = Field([0, 1, 10], min_length=1, description="SGD fine-tuning steps reported")
    sgd_lr: float = Field(0.01, gt=0, description="plain SGD learning rate of the fine-tuning")
    curve_steps: int = Field(
        100, ge=0, le=MAX_ITERATIONS, description="Adam steps of the convergence curve (0: no curve)"
    )
    curve_adam_lr: float = renamed(
        "curve_adam_lr", "curve_lr", 0.005, gt=0, description="Adam learning rate of the convergence curve"
    )
    curve_tasks: int = Field(100, gt=0, le=MAX_TASKS, description="test tasks averaged in the convergence curve")
    pool_search: int = Field(
        0,
        ge=0,
        le=4096,
        description="also evaluate REML's trained pool without its policy: per task, the best of this many random "
        "compositions by support loss after one SGD step (the 'REML pool + search' row; 0: off)",
    )

    reml_rollouts: int = Field(
        1,
        ge=1,
        le=256,
        description="REML's rollouts per test task: 1, the policy's most probable composition; N > 1 adds N - 1 "
        "compositions sampled from the policy (seeded by the run's seed, the task and K) and hands out the one whose "
        "support loss after one SGD step at eval.sgd_lr is lowest (only the support set decides; N times the "
        "rollout's test-time cost)",
    )

    @field_validator("shots", "steps")
    @classmethod
    def _non_negative(cls, value: list[int], info: Any) -> list[int]:
        if any(v < (1 if info.field_name == "shots" else 0) for v in value):
            raise ValueError("every K must be positive" if info.field_name == "shots" else "steps must be >= 0")
        if info.field_name == "steps" and any(v > MAX_ITERATIONS for v in value):
            raise ValueError(f"fine-tuning steps must be at most {MAX_ITERATIONS}")
        return _distinct_sorted(value)


class ExperimentConfig(StrictModel):
    """The core's own part of an experiment config."""

    plugin: str
    preset: Preset = "default"
    seed: int = Field(0, ge=0, lt=2**32)
    env: EnvConfig = Field(default_factory=EnvConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _rollouts_compare_compositions_only(self) -> ExperimentConfig:
        if self.eval.reml_rollouts > 1 and self.env.choose:
            raise ValueError(
                "eval.reml_rollouts > 1 compares compositions by their support loss, and cannot weigh the "
                f"hyperparameters env.choose lets the policy pick ({', '.join(sorted(self.env.choose))}): "
                "set eval.reml_rollouts = 1 or leave env.choose empty"
            )
        return self

    @model_validator(mode="after")
    def _finetuning_follows_the_protocol(self) -> ExperimentConfig:
        """The reward's fine-tuning and the protocol update's adaptations are the evaluation's unless deliberately
        set: what is trained for, rewarded and reported cannot drift apart silently."""
        follow: dict[str, Any] = {}
        if "finetune_sgd_lr" not in self.env.model_fields_set and self.env.finetune_sgd_lr != self.eval.sgd_lr:
            follow["finetune_sgd_lr"] = self.eval.sgd_lr
        if "finetune_steps" not in self.env.model_fields_set and self.env.finetune_steps != max(self.eval.steps):
            follow["finetune_steps"] = max(self.eval.steps)
        adapted = [steps for steps in self.eval.steps if steps > 0] or [max(self.eval.steps)]
        if "meta_steps" not in self.env.model_fields_set and self.env.meta_steps != adapted:
            follow["meta_steps"] = adapted
        if follow:
            env = self.env.model_copy(update=follow)
            object.__setattr__(self, "env", env)  # no re-validation of the whole model for a derived value
        return self
