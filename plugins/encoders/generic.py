"""Generic state encoders: the thesis' oracle (any family with task descriptors) and a fair
support-set encoder (any family with 1-D inputs and targets), scaled by what the family declares."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from reml_core.errors import ComponentBuildError
from reml_core.interfaces import PointSetLayout, Task, TaskContext, TaskSampler


class OracleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OracleEncoder:
    """The task's true descriptor (the family's ``descriptor_names``), scaled to [-1, 1] by its
    ``descriptor_low``/``descriptor_high``.

    Privileged: no baseline and no part of the evaluation protocol sees it. Every comparison that uses it says so.
    """

    privileged = True

    def __init__(self, sampler: TaskSampler) -> None:
        self.low = np.asarray(sampler.descriptor_low, dtype=np.float64)
        self.span = np.asarray(sampler.descriptor_high, dtype=np.float64) - self.low
        self.observation_size = len(sampler.descriptor_names)
        self.names = tuple(sampler.descriptor_names)

    def describe(self) -> str:
        return f"the task's true {', '.join(self.names)}, each scaled to [-1, 1] (privileged: no baseline sees it)."

    def encode(self, task: Task, shots: int) -> np.ndarray:
        return (2.0 * (np.asarray(task.descriptor, dtype=np.float64) - self.low) / self.span - 1.0).astype(np.float32)


class SupportSetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x_scale: float | None = Field(
        None,
        gt=0,
        description=(
            "inputs are divided by this (default: the family's input_scale, else the largest |x| of its validation "
            "tasks)"
        ),
    )
    y_scale: float | None = Field(
        None,
        gt=0,
        description=(
            "targets are divided by this (default: the family's target_scale, else the largest |y| of its validation "
            "tasks)"
        ),
    )


#: Validation tasks measured for a scale when the family declares none.
SCALE_TASKS = 20


def family_scale(sampler: TaskSampler, attribute: str, values: Any) -> float:
    """The typical magnitude the family declares (``input_scale`` / ``target_scale``), else the
    largest absolute value over a few of its validation tasks (never test or training tasks)."""
    declared = getattr(sampler, attribute, None)
    if isinstance(declared, (int, float)) and math.isfinite(declared) and declared > 0:
        return float(declared)
    largest = max((float(values(task).abs().max()) for task in sampler.validation_tasks(SCALE_TASKS)), default=0.0)
    return largest if math.isfinite(largest) and largest > 0 else 1.0


class SupportSetEncoder:
    """Only the K support points: sorted by x, scaled, padded to the task's maximum K, with a mask.

    Layout: x[0..M), y[0..M), mask[0..M), then mean(y), std(y) and K / M, where M is the most
    support points a task holds. No privileged information.
    """

    privileged = False

    def __init__(self, sampler: TaskSampler, config: SupportSetConfig) -> None:
        self.max_shots = sampler.max_shots
        self.config = config
        self.x_scale = config.x_scale or family_scale(sampler, "input_scale", lambda task: task.x_train)
        self.y_scale = config.y_scale or family_scale(sampler, "target_scale", lambda task: task.y_train)
        self.observation_size = 3 * self.max_shots + 3
        self.point_set = PointSetLayout(offset=0, points=self.max_shots, channels=2)  # x and y, then the mask

    def describe(self) -> str:
        return (
            f"only the K support points, sorted by x, x / {self.x_scale:g} and y / {self.y_scale:g}, "
            f"padded to {self.max_shots} with a mask, then mean and spread of y and K / {self.max_shots}."
        )

    def encode(self, task: Task, shots: int) -> np.ndarray:
        x_support, y_support = task.support(shots)
        x = x_support.reshape(-1).double().numpy() / self.x_scale
        y = y_support.reshape(-1).double().numpy() / self.y_scale
        order = np.argsort(x, kind="stable")
        m = self.max_shots
        out = np.zeros(self.observation_size, dtype=np.float64)
        out[:shots] = x[order]
        out[m : m + shots] = y[order]
        out[2 * m : 2 * m + shots] = 1.0
        out[3 * m :] = (y.mean(), y.std(), shots / m)
        return out.astype(np.float32)


def _family(sampler: Any) -> str:
    """The task family a sampler comes from, for a message: a built-in plugin's name (its package
    under ``reml_plugins``), else the sampler's class."""
    module = type(sampler).__module__.split(".")
    return module[1] if len(module) > 2 and module[0] == "reml_plugins" else type(sampler).__name__


def build_oracle(config: OracleConfig, context: TaskContext) -> OracleEncoder:
    sampler = context.task_sampler
    if not tuple(getattr(sampler, "descriptor_names", ()) or ()):
        raise ComponentBuildError(
            f"the task family {_family(sampler)!r} declares no task descriptor (its descriptor_names is empty), so the "
            "oracle would read nothing; "
            "use an encoder that reads the support set (support-set for 1-D regression, prototypes for classification)"
        )
    return OracleEncoder(sampler)


def build_support_set(config: SupportSetConfig, context: TaskContext) -> SupportSetEncoder:
    sampler = context.task_sampler
    shape = tuple(getattr(sampler, "input_shape", ()) or ())
    if len(shape) > 1 or sampler.input_size != 1 or sampler.output_size != 1:
        raise ComponentBuildError(
            "the support-set encoder reads 1-D inputs and targets; this family's inputs are "
            f"{shape or sampler.input_size} "
            f"and its outputs {sampler.output_size} (for classification use the prototypes encoder)"
        )
    return SupportSetEncoder(context.task_sampler, config)
