"""The ``pool-search`` baseline: REML's layer pool with a search as its composer, in meta-training and at test time.

Issue 21's rival (b), as its prototype trained it. REML's pool is composed by the policy; here
nothing is learned but the pool. For every task the same search chooses the composition
(:class:`~reml_core.methods.PoolSearchMethod`: the best of ``candidates`` random valid
compositions by the support loss after ONE SGD step at ``inner_sgd_lr``; only the K support
points decide, as for MAML), and the pool is trained for the job it is judged on with the very
update REML's protocol rule makes (:class:`~reml_core.pool_update.ProtocolPoolUpdate`: the
gradient of the query loss after ``meta_steps`` SGD steps on the support set, through the chosen
composition to the pool layers it used; networks that share a layer add their gradients; one Adam
step per meta-iteration at ``pool_adam_lr``).

The pool is a copy of the run's pool as it was built (the layers REML starts from, from the run
seed), never REML's own, so training either leaves the other alone. Per meta-iteration:
``meta_batch`` training tasks from the run's stream, each with a K drawn from ``shots`` (a
generator seeded by the run seed), the whole batch searched at once. The loop, its progress bar and
its summary are MAML's (:func:`reml_plugins.maml.baseline.run_meta_iterations`); the checkpoint is
MAML's format holding the pool's tensors.

Its test-time cost is ``candidates`` one-step fine-tunings per task where REML's policy needs one
rollout: the comparison the issue asks for is what REML's policy adds over such a search.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field, field_validator
from torch import nn

from reml_core.batched import EpisodeEnd
from reml_core.env import check_pool_fits
from reml_core.errors import CheckpointError, ComponentBuildError, UserError
from reml_core.interfaces import BatchedLayerPool, BuildContext, LayerPool, MetaGradientLayerPool, Task
from reml_core.methods import PoolSearchMethod
from reml_core.pool_update import ProtocolPoolUpdate
from reml_core.settings import EnvConfig, RenamableModel, check_shots, check_step_counts
from reml_plugins.maml.baseline import run_meta_iterations
from reml_plugins.maml.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from reml_plugins.maml.network import ModuleArchitecture

#: The K of each training task is drawn from its own stream of the run seed, ``(seed, SHOTS_STREAM)``.
SHOTS_STREAM = 21


class PoolSearchConfig(RenamableModel):
    """The ``pool-search`` baseline's options; the pool is the run's (``[pool]``), the depth ``env.depth``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    candidates: int = Field(
        64,
        ge=1,
        le=4096,
        description="N: random compositions per task; the one with the lowest support loss after one SGD step is taken",
    )
    iterations: int = Field(2_500, ge=1, le=100_000_000, description="meta-iterations (one pool Adam step each)")
    meta_batch: int = Field(25, ge=1, le=10_000, description="tasks per meta-iteration")
    shots: list[int] = Field(
        default_factory=lambda: [5, 10], min_length=1, description="the K each training task draws its support set with"
    )
    inner_sgd_lr: float = Field(0.01, gt=0, le=10, description="SGD rate of the search's step and of the adaptation")
    meta_steps: list[int] = Field(
        default_factory=lambda: [1, 10],
        min_length=1,
        description="SGD steps after which the query loss is taken; the pool trains on their mean (as env.meta_steps)",
    )
    meta_order: Literal["second", "first"] = Field(
        "second", description="'second': the exact meta-gradient through the adaptation; 'first': without it"
    )
    pool_adam_lr: float = Field(0.003, gt=0, le=1, description="Adam learning rate of the pool (as env.pool_adam_lr)")

    @field_validator("shots")
    @classmethod
    def _positive_shots(cls, value: list[int]) -> list[int]:
        return check_shots(value)

    @field_validator("meta_steps")
    @classmethod
    def _meta_steps(cls, value: list[int]) -> list[int]:
        value = check_step_counts(value)
        if max(value) == 0:
            raise ValueError("meta_steps needs at least one adaptation step (> 0): the pool trains for the adaptation")
        return value


class PoolSearchBaseline:
    """REML's pool composed by a search by support loss, trained with the protocol rule (see the module docstring)."""

    def __init__(self, config: PoolSearchConfig, context: BuildContext) -> None:
        pool: LayerPool = context.pool
        capable = isinstance(pool, MetaGradientLayerPool) and isinstance(pool, BatchedLayerPool)
        if not capable:  # (a flag, not the test itself: the pool stays typed as a LayerPool)
            raise ComponentBuildError(
                f"pool-search trains the run's layer pool through stacked compositions; {type(pool).__name__} has no "
                "parameters() and build_batch (the MetaGradientLayerPool and BatchedLayerPool capabilities)"
            )
        problem = check_pool_fits(pool, context.depth)
        if problem:
            raise ComponentBuildError(f"pool-search: {problem}")
        sampler = context.task_sampler
        max_shots = getattr(sampler, "max_shots", None)
        if isinstance(max_shots, int) and max(config.shots) > max_shots:
            raise ComponentBuildError(
                f"baselines.pool-search.shots asks for K = {max(config.shots)} but a task of this family holds only "
                f"{max_shots} support points per class"
            )
        self.config = config
        self.seed = context.seed
        self.depth = context.depth
        self.loss_fn = sampler.loss
        self.pool = copy.deepcopy(pool)  # the layers REML starts from, trained apart from REML's
        self.update = ProtocolPoolUpdate(self.pool, self._env_config(), self.loss_fn)
        self.search = PoolSearchMethod(
            self.pool,
            self.loss_fn,
            depth=context.depth,
            candidates=config.candidates,
            lr=config.inner_sgd_lr,
            seed=context.seed,
        )
        self.iterations_done = 0
        self.chosen: Counter[tuple[int, ...]] = Counter()

    def _env_config(self) -> EnvConfig:
        c = self.config
        return EnvConfig(
            depth=self.depth,
            finetune_sgd_lr=c.inner_sgd_lr,
            meta_steps=c.meta_steps,
            meta_order=c.meta_order,
            pool_update="protocol",
            pool_adam_lr=c.pool_adam_lr,
        )

    def describe(self) -> str:
        c = self.config
        return (
            f"the run's pool composed per task by the best of N={c.candidates} random compositions (support loss after "
            f"one SGD step at lr {c.inner_sgd_lr}), trained {c.iterations} iterations x {c.meta_batch} tasks with the "
            f"protocol rule (query loss after {'/'.join(map(str, c.meta_steps))} steps, {c.meta_order} order, pool "
            f"Adam lr {c.pool_adam_lr}); K drawn from {c.shots}"
        )

    # -- meta-training --------------------------------------------------------------------------

    def meta_train(self, tasks: Iterator[Task], progress: bool = True) -> dict[str, float]:
        """``iterations`` meta-iterations on ``tasks`` (the run's training stream); the summary adds how many distinct
        compositions the search chose over the run and in its last 1 000 tasks."""
        generator = np.random.default_rng([self.seed, SHOTS_STREAM])
        self.chosen.clear()
        recent: list[tuple[int, ...]] = []

        def batches() -> Iterator[tuple[list[Task], list[int]]]:
            while True:
                batch = [next(tasks) for _ in range(self.config.meta_batch)]
                yield batch, [int(k) for k in generator.choice(self.config.shots, size=len(batch))]

        def step(batch: tuple[list[Task], list[int]]) -> float:
            loss, compositions = self.meta_step(*batch)
            recent.extend(compositions)
            del recent[:-1000]
            return loss

        summary = run_meta_iterations(batches(), step, self.config.iterations, "pool-search", progress)
        summary["compositions_chosen"] = float(len(self.chosen))
        summary["compositions_chosen_last_1000_tasks"] = float(len(set(recent)))
        return summary

    def meta_step(self, tasks: list[Task], shots: list[int]) -> tuple[float, list[tuple[int, ...]]]:
        """One meta-iteration: search a composition per task, then one Adam step of the pool on their mean meta-loss.
        Returns the mean meta-loss (of the networks that stayed finite) and the compositions chosen."""
        chosen = [tuple(indices) for indices in self.search.choose_many(tasks, shots)]
        ends = [EpisodeEnd(task, indices, k, 0) for task, indices, k in zip(tasks, chosen, shots)]
        losses = [value for value in self.update.apply(ends, [True] * len(ends)) if math.isfinite(value)]
        if not losses:
            raise UserError(
                f"pool-search: meta-training diverged at iteration {self.iterations_done + 1} (no task's meta-loss was "
                "finite); lower baselines.pool-search.pool_adam_lr or baselines.pool-search.inner_sgd_lr"
            )
        self.iterations_done += 1
        self.chosen.update(chosen)
        return sum(losses) / len(losses), chosen

    # -- the method -----------------------------------------------------------------------------

    def network_for(self, task: Task, shots: int) -> nn.Module:
        """A copy of the composition the task's K-shot support set chooses (the pool is not changed)."""
        return self.search.network_for(task, shots)

    # -- checkpoints ----------------------------------------------------------------------------

    def _architecture(self) -> ModuleArchitecture:
        return ModuleArchitecture.of_state(type(self.pool), self.pool.state_dict())

    def save(self, directory: Path) -> None:
        """MAML's checkpoint files holding the pool's tensors (``maml.safetensors``, ``maml.json``)."""
        state = {name: tensor.detach().cpu() for name, tensor in self.pool.state_dict().items()}
        config = self.config.model_dump(mode="json") | {"depth": self.depth}
        save_checkpoint(Path(directory), Checkpoint(state, self._architecture(), config, self.iterations_done))

    def load(self, directory: Path) -> None:
        """Restore a saved pool (same kind and shapes, composed at the same depth); meta-training after a load starts
        a fresh Adam state."""
        checkpoint = load_checkpoint(Path(directory), self._architecture())
        saved_depth = checkpoint.config.get("depth")
        if saved_depth != self.depth:
            raise CheckpointError(
                f"{Path(directory) / 'maml.json'}: holds a pool searched at depth {saved_depth} but this run composes "
                f"depth-{self.depth} networks (env.depth)"
            )
        with torch.no_grad():
            self.pool.load_state_dict(checkpoint.parameters)
        self.iterations_done = checkpoint.iterations
        self.update = ProtocolPoolUpdate(self.pool, self._env_config(), self.loss_fn)
