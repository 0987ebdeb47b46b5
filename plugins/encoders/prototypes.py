"""A generic state encoder for few-shot image classification: the class prototypes of the K-shot support set.

It serves any family whose tasks are classification tasks (``Task.ways`` > 1, the K-shot set the
first ``ways * K`` support images) and whose sampler declares ``input_shape`` (C, H, W) and
``output_size`` (the number of classes of a task).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from reml_core.errors import ComponentBuildError
from reml_core.interfaces import Task, TaskContext, TaskSampler


class PrototypesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grid: int = Field(
        4, ge=1, le=64, description="each class's mean support image is average-pooled to grid x grid per channel"
    )


class PrototypesEncoder:
    """Per label 0..N-1, the mean of its K support images average-pooled to ``grid`` x ``grid``
    (per channel), concatenated in label order, then K / max_shots.

    ``observation_size = N * C * grid * grid + 1``. No privileged information: it reads only the
    K-shot support set (never the query set, the inner-training data or the descriptor).
    """

    privileged = False

    def __init__(self, sampler: TaskSampler, config: PrototypesConfig, name: str = "prototypes") -> None:
        shape = getattr(sampler, "input_shape", None)
        if shape is None:
            raise ComponentBuildError(
                f"the {name} encoder needs image inputs: the task sampler declares no input_shape (channels, height, "
                "width)"
            )
        shape = tuple(int(v) for v in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ComponentBuildError(f"the {name} encoder needs input_shape = (channels, height, width), got {shape}")
        ways = getattr(sampler, "output_size", None)
        if not isinstance(ways, int) or ways < 2:
            raise ComponentBuildError(
                f"the {name} encoder needs a classification family: output_size (the classes of a task) must be at "
                f"least 2, got {ways!r}"
            )
        channels, height, width = shape
        if config.grid > min(height, width):
            raise ComponentBuildError(f"encoder grid = {config.grid} is larger than the {height}x{width} images")
        self.input_shape = shape
        self.ways = ways
        self.grid = config.grid
        self.max_shots = int(sampler.max_shots)
        self.features = channels * config.grid * config.grid
        self.observation_size = ways * self.features + 1

    def describe(self) -> str:
        c, h, w = self.input_shape
        return (
            f"only the K-shot support set: each of the {self.ways} classes' mean support image ({c}x{h}x{w}) "
            f"average-pooled to {self.grid}x{self.grid} per channel ({self.features} numbers per class), then K / "
            f"{self.max_shots}."
        )

    def encode(self, task: Task, shots: int) -> np.ndarray:
        if task.ways != self.ways:
            raise ValueError(f"task {task.task_id} has {task.ways} classes but the encoder was built for {self.ways}")
        x, y = task.support(shots)
        x = x.reshape(-1, *self.input_shape).to(torch.float32)
        pooled = F.adaptive_avg_pool2d(x, self.grid).flatten(
            1
        )  # pooling is linear: pool of the mean = mean of the pools
        labels = y.reshape(-1).to(torch.int64)
        sums = torch.zeros(self.ways, self.features, dtype=torch.float32).index_add_(0, labels, pooled)
        counts = torch.bincount(labels, minlength=self.ways)[: self.ways].clamp(min=1).to(torch.float32)
        prototypes = (sums / counts.unsqueeze(1)).reshape(-1).numpy()
        return np.concatenate([prototypes, np.array([shots / self.max_shots], dtype=np.float32)]).astype(np.float32)


def build_prototypes(config: PrototypesConfig, context: TaskContext) -> PrototypesEncoder:
    return PrototypesEncoder(context.task_sampler, config)
