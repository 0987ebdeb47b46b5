"""State encoders for 1-D regression tasks: the thesis' oracle and a fair support-set encoder."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from reml_core.interfaces import BuildContext, PointSetLayout, Task, TaskSampler


class OracleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OracleEncoder:
    """The task's true descriptor (for sine: amplitude and phase), scaled to [-1, 1].

    Privileged: MAML and the evaluation protocol never see it. Every comparison that uses it says so.
    """

    privileged = True

    def __init__(self, sampler: TaskSampler) -> None:
        self.low = np.asarray(sampler.descriptor_low, dtype=np.float64)
        self.span = np.asarray(sampler.descriptor_high, dtype=np.float64) - self.low
        self.observation_size = len(sampler.descriptor_names)

    def encode(self, task: Task, shots: int) -> np.ndarray:
        return (2.0 * (np.asarray(task.descriptor, dtype=np.float64) - self.low) / self.span - 1.0).astype(np.float32)


class SupportSetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x_scale: float = Field(5.0, gt=0, description="inputs are divided by this")
    y_scale: float = Field(5.0, gt=0, description="targets are divided by this")


class SupportSetEncoder:
    """Only the K support points: sorted by x, scaled, padded to the task's maximum K, with a mask.

    Layout: x[0..M), y[0..M), mask[0..M), then mean(y), std(y) and K / M, where M is the most
    support points a task holds. No privileged information.
    """

    privileged = False

    def __init__(self, sampler: TaskSampler, config: SupportSetConfig) -> None:
        self.max_shots = sampler.max_shots
        self.config = config
        self.observation_size = 3 * self.max_shots + 3
        self.point_set = PointSetLayout(offset=0, points=self.max_shots, channels=2)  # x and y, then the mask

    def encode(self, task: Task, shots: int) -> np.ndarray:
        x, y = task.support(shots)
        x = x.reshape(-1).double().numpy() / self.config.x_scale
        y = y.reshape(-1).double().numpy() / self.config.y_scale
        order = np.argsort(x, kind="stable")
        m = self.max_shots
        out = np.zeros(self.observation_size, dtype=np.float64)
        out[:shots] = x[order]
        out[m : m + shots] = y[order]
        out[2 * m : 2 * m + shots] = 1.0
        out[3 * m :] = (y.mean(), y.std(), shots / m)
        return out.astype(np.float32)


def build_oracle(config: OracleConfig, context: BuildContext) -> OracleEncoder:
    assert context.task_sampler is not None
    return OracleEncoder(context.task_sampler)


def build_support_set(config: SupportSetConfig, context: BuildContext) -> SupportSetEncoder:
    assert context.task_sampler is not None
    return SupportSetEncoder(context.task_sampler, config)
