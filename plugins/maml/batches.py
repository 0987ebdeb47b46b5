"""Meta-batches: a few tasks' inner and outer points, stacked into ``[tasks, K, features]`` tensors.

Finn et al.'s protocol: the inner step(s) of a task use K of its points and the outer (meta) loss
uses K *other* points of the same task. Both come from the task's training data (the first K and
the next K of ``x_train``, which are independent draws); the query set is left to evaluation.
A meta-batch is stacked from tasks drawn one by one (:func:`draw_batch`) or cut out of a task
sampler's ready-stacked :class:`TaskBatch` (:func:`from_task_batch`): the same points either way.

Classification tasks (``task.ways`` N > 1; the image path) follow the core's K-shot meaning, K
*per class*: the inner points are the task's K-shot support set ``task.support(K)`` (N * K
points, K of each class) and the outer points are K training points of each class, the first of
each class in ``x_train`` order (:func:`stack_classification_tasks`); held-out tasks and query
sets are never read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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

    def to(self, device: torch.device) -> MetaBatch:
        """This batch with its tensors on ``device`` (itself when they already are)."""
        if self.x_inner.device == device:
            return self
        return MetaBatch(*(tensor.to(device) for tensor in self.as_tuple()))


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


def draw_batch(
    tasks: Iterator[Task], size: int, shots: int, stack: Callable[[list[Task], int], MetaBatch] = stack_tasks
) -> MetaBatch:
    """The next ``size`` tasks of the stream as one meta-batch (stacked by ``stack``)."""
    chosen = []
    for _ in range(size):
        try:
            chosen.append(next(tasks))
        except StopIteration:
            raise ValueError(
                f"maml: the task stream ran out after {len(chosen)} tasks of a {size}-task meta-batch"
            ) from None
    return stack(chosen, shots)


def from_task_batch(batch: TaskBatch, shots: int) -> MetaBatch:
    """:func:`stack_tasks` of a batch's tasks, cut straight out of its stacked tensors (contiguous, as stacking
    gives)."""
    check_training_points(shots, batch.x_train.shape[1], f"task {batch.task_ids[0]}")
    x, y = batch.x_train, batch.y_train
    return MetaBatch(
        x[:, :shots].contiguous(),
        y[:, :shots].contiguous(),
        x[:, shots : 2 * shots].contiguous(),
        y[:, shots : 2 * shots].contiguous(),
    )


def balanced_training_indices(task: Task, shots: int) -> torch.Tensor:
    """Positions in ``task.x_train`` of the first ``shots`` points of each class, interleaved (position i: class i % N).

    For a family that already interleaves its training points by class (digits, omniglot) these
    are simply ``0 .. N * K - 1``; any other order gives the same selection by class.
    """
    ways = task.ways
    if ways == 1:
        if len(task.x_train) < shots:
            raise UserError(
                f"maml: K = {shots} needs {shots} training points per task for the outer loss "
                f"but task {task.task_id} has {len(task.x_train)}; lower baselines.maml.shots"
            )
        return torch.arange(shots)
    labels = task.y_train
    counts = torch.bincount(labels, minlength=ways)
    if len(counts) > ways or int(counts.min()) < shots:
        raise UserError(
            f"maml: K = {shots} per class needs {shots} training points of each of the {ways} classes for the outer "
            "loss "
            f"but task {task.task_id} has {counts.tolist()}; lower baselines.maml.shots"
        )
    order = torch.argsort(labels, stable=True)  # grouped by class, each class in x_train order
    starts = torch.cumsum(counts, 0) - counts
    per_class = order[starts.unsqueeze(1) + torch.arange(shots)]  # [ways, shots]
    return per_class.T.reshape(-1)


def stack_classification_tasks(tasks: list[Task], shots: int) -> MetaBatch:
    """Inner points: each task's K-shot support set (K per class); outer points: K training points per class."""
    inner, outer = [], []
    for task in tasks:
        try:
            inner.append(task.support(shots))
        except ValueError:
            raise UserError(
                f"maml: K = {shots} per class needs {shots * task.ways} support points but task {task.task_id} holds "
                f"{len(task.x_support)}; lower baselines.maml.shots"
            ) from None
        index = balanced_training_indices(task, shots)
        outer.append((task.x_train[index], task.y_train[index]))
    return MetaBatch(
        torch.stack([x for x, _ in inner]),
        torch.stack([y for _, y in inner]),
        torch.stack([x for x, _ in outer]),
        torch.stack([y for _, y in outer]),
    )
