"""Straight-line regression tasks y = a*x + b, and an encoder of the support set's moments."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from reml_core import hookimpl
from reml_core.interfaces import Task
from reml_core.specs import Recommendation, StateEncoderSpec, TaskSamplerSpec


class LineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    test_seed: int = 4321
    support_points: int = Field(10, gt=0)
    query_points: int = Field(50, gt=0)


class LineSampler:
    descriptor_names = ("slope", "bias")
    descriptor_low = (-1.0, -1.0)
    descriptor_high = (1.0, 1.0)
    input_size = 1
    output_size = 1
    train_points = 100

    def __init__(self, config: LineConfig) -> None:
        self.config = config
        self.max_shots = config.support_points

    def _task(self, generator: torch.Generator, task_id: str, split: str) -> Task:
        slope, bias = (torch.rand(2, generator=generator, dtype=torch.float64) * 2 - 1).tolist()
        n, k, q = self.train_points, self.max_shots, self.config.query_points
        x = torch.rand(n + k + q, 1, generator=generator) * 10 - 5
        y = slope * x + bias
        return Task(task_id, split, (slope, bias), x[:n], y[:n], x[n : n + k], y[n : n + k], x[n + k :], y[n + k :])

    def train_stream(self, seed: int):
        generator = torch.Generator().manual_seed(seed)
        index = 0
        while True:
            yield self._task(generator, f"train-{index}", "train")
            index += 1

    def _held_out(self, split: str, offset: int, count: int) -> list[Task]:
        generator = torch.Generator().manual_seed(self.config.test_seed * 7919 + offset)
        return [self._task(generator, f"{split}-{i}", split) for i in range(count)]

    def validation_tasks(self, count: int) -> list[Task]:
        return self._held_out("validation", 1, count)

    def test_tasks(self, count: int) -> list[Task]:
        return self._held_out("test", 2, count)

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.mean((prediction - target) ** 2)


class MomentsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MomentsEncoder:
    """Mean and standard deviation of the support targets: no privileged information."""

    observation_size = 2
    privileged = False

    def encode(self, task: Task, shots: int) -> np.ndarray:
        _, y = task.support(shots)
        return np.array([y.mean().item(), y.std(unbiased=False).item()], dtype=np.float32)


@hookimpl
def reml_task_samplers():
    yield TaskSamplerSpec(
        name="line",
        factory=lambda config, context: LineSampler(config),
        config_model=LineConfig,
        description="Straight lines y = a*x + b with a, b uniform in [-1, 1] (example third-party plugin).",
        recommended=Recommendation(encoder="support-moments", pool="dense", reward="neg-mse", policy="ppo-mlp"),
        experiment_presets={
            "smoke": {
                "train": {"env_steps": 256, "checkpoint_every": 128, "validation_tasks": 4, "calibration_episodes": 8},
                "eval": {"test_tasks": 10, "curve_steps": 10, "curve_tasks": 5},
            },
        },
    )


@hookimpl
def reml_state_encoders():
    yield StateEncoderSpec(
        name="support-moments",
        factory=lambda config, context: MomentsEncoder(),
        config_model=MomentsConfig,
        description="Mean and spread of the K support targets (example third-party plugin).",
    )
