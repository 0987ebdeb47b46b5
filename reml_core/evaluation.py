"""The few-shot protocol of Finn et al. (2017), the same for every method.

A method is anything that hands out a starting network for a task and a K: REML by a policy
rollout over its pool, MAML from its meta-learned initialisation, scratch from a fresh init.
The evaluator fine-tunes each with plain SGD on the K support points (the same K points at every
step) and measures the query MSE after the requested numbers of steps. It never sees how a
network was made, and it works on the network it is given, never on a method's own state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from reml_core.inner_loop import LossFn, evaluate_loss, finetune_sgd, train_adam
from reml_core.interfaces import Task

NetworkProvider = Callable[[Task, int], nn.Module]


@dataclass(frozen=True)
class Cell:
    """Query MSE over the test tasks for one (K, steps): mean and 95% CI half-width.

    A task whose fine-tuning diverged counts as NaN; a cell with any NaN task has a NaN mean
    (reported, never hidden), and ``nan_tasks`` says how many.
    """

    mse_mean: float
    mse_ci95: float
    nan_tasks: int
    tasks: int

    @classmethod
    def from_losses(cls, losses: Sequence[float]) -> Cell:
        values = np.asarray(losses, dtype=np.float64)
        nan_tasks = int((~np.isfinite(values)).sum())
        if nan_tasks or values.size == 0:
            return cls(math.nan, math.nan, nan_tasks, int(values.size))
        ci = 1.96 * values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else math.nan
        return cls(float(values.mean()), float(ci), 0, int(values.size))


FewShotTable = dict[int, dict[int, Cell]]  # K -> steps -> cell


class FewShotEvaluator:
    """Fine-tune every method the same way on the same held-out tasks and support points."""

    def __init__(
        self,
        tasks: Sequence[Task],
        loss_fn: LossFn,
        *,
        shots: Sequence[int],
        steps: Sequence[int],
        lr: float,
        curve_steps: int = 0,
        curve_lr: float = 0.005,
        curve_tasks: int | None = None,
        progress: bool = False,
    ) -> None:
        self.tasks = list(tasks)
        self.loss_fn = loss_fn
        self.shots = sorted(shots)
        self.steps = sorted(steps)
        self.lr = lr
        self.curve_steps = curve_steps
        self.curve_lr = curve_lr
        self.curve_tasks = self.tasks[: curve_tasks or len(self.tasks)]
        self.progress = progress

    def few_shot(self, provider: NetworkProvider, label: str = "") -> FewShotTable:
        """Query MSE after each number of SGD steps, for each K, over all tasks."""
        table: FewShotTable = {}
        for shots in self.shots:
            losses: dict[int, list[float]] = {s: [] for s in self.steps}
            tasks = tqdm(self.tasks, desc=f"eval {label} K={shots}", disable=None if self.progress else True, leave=False)
            for task in tasks:
                for step, loss in self.adaptation(provider(task, shots), task, shots).items():
                    losses[step].append(loss)
            table[shots] = {step: Cell.from_losses(values) for step, values in losses.items()}
        return table

    def adaptation(self, network: nn.Module, task: Task, shots: int) -> dict[int, float]:
        """Query loss after each requested number of SGD steps on the task's K support points."""
        x_support, y_support = task.support(shots)
        recorded: dict[int, float] = {}

        def record(step: int) -> None:
            if step in self.steps:
                recorded[step] = evaluate_loss(network, task.x_query, task.y_query, self.loss_fn)

        record(0)
        finished = finetune_sgd(network, x_support, y_support, self.loss_fn, steps=self.steps[-1], lr=self.lr, callback=record)
        if not finished:
            for step in self.steps:
                recorded.setdefault(step, math.nan)
        return {step: recorded[step] for step in self.steps}

    def curve(self, provider: NetworkProvider, label: str = "") -> list[float]:
        """Mean query MSE after each of 0..curve_steps full-batch Adam steps on each task's training data."""
        if self.curve_steps == 0:
            return []
        shots = self.shots[-1]
        totals = np.zeros(self.curve_steps + 1)
        tasks = tqdm(self.curve_tasks, desc=f"curve {label}", disable=None if self.progress else True, leave=False)
        for task in tasks:
            network = provider(task, shots)
            losses = np.full(self.curve_steps + 1, math.nan)

            def record(step: int, network: nn.Module = network, losses: np.ndarray = losses, task: Task = task) -> None:
                losses[step] = evaluate_loss(network, task.x_query, task.y_query, self.loss_fn)

            record(0)
            train_adam(
                network, task.x_train, task.y_train, self.loss_fn,
                steps=self.curve_steps, lr=self.curve_lr, batch_size=len(task.x_train), callback=record,
            )
            totals += losses
        return [float(v) for v in totals / len(self.curve_tasks)]

