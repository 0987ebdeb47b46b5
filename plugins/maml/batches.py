"""Meta-batches: a few tasks' inner and outer points, stacked into ``[tasks, K, features]`` tensors.

Finn et al.'s protocol: the inner step(s) of a task use K of its points and the outer (meta) loss
uses K *other* points of the same task. Both come from the task's training data (the first K and
the next K of ``x_train``, which are independent draws); the query set is left to evaluation.
A meta-batch is stacked from tasks drawn one by one (:func:`draw_batch`) or cut out of a task
sampler's ready-stacked :class:`TaskBatch` (:func:`from_task_batch`): the same points either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from reml_core.errors import UserError
from reml_core.interfaces import Task, TaskBatch


@dataclass(frozen=True)
class MetaBatch:
    """Inner (adaptation) and outer (meta-loss) points of each task, task-major."""

    x_inner: torch.Tensor
    y_inner: torch.Tensor
    x_outer: torch.Tensor
    y_outer: torch.Tensor

    @property
    def tasks(self) -> int:
        return self.x_inner.shape[0]

    def as_tuple(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.x_inner, self.y_inner, self.x_outer, self.y_outer


def check_training_points(shots: int, points: int, which: str) -> None:
    """A task (``which``: "task <id>") must hold K inner and K other outer training points."""
    if points < 2 * shots:
        raise UserError(
            f"maml: K = {shots} needs {2 * shots} training points per task (K inner + K outer) "
            f"but {which} has {points}; lower baselines.maml.shots"
        )


def stack_tasks(tasks: list[Task], shots: int) -> MetaBatch:
    """The first ``shots`` training points of each task for the inner loop, the next ``shots`` for the outer loss."""
    for task in tasks:
        check_training_points(shots, len(task.x_train), f"task {task.task_id}")
    x = torch.stack([task.x_train[: 2 * shots] for task in tasks])
    y = torch.stack([task.y_train[: 2 * shots] for task in tasks])
    return MetaBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


def draw_batch(tasks: Iterator[Task], size: int, shots: int) -> MetaBatch:
    """The next ``size`` tasks of the stream as one meta-batch."""
    chosen = []
    for _ in range(size):
        try:
            chosen.append(next(tasks))
        except StopIteration:
            raise ValueError(f"maml: the task stream ran out after {len(chosen)} tasks of a {size}-task meta-batch") from None
    return stack_tasks(chosen, shots)


def from_task_batch(batch: TaskBatch, shots: int) -> MetaBatch:
    """:func:`stack_tasks` of a batch's tasks, cut straight out of its stacked tensors (contiguous, as stacking gives)."""
    check_training_points(shots, batch.x_train.shape[1], f"task {batch.task_ids[0]}")
    x, y = batch.x_train, batch.y_train
    return MetaBatch(
        x[:, :shots].contiguous(), y[:, :shots].contiguous(), x[:, shots : 2 * shots].contiguous(), y[:, shots : 2 * shots].contiguous()
    )
