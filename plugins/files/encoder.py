"""``support-points``: a fair encoder for regression families of any input and output width.

It reads only the K support points. Each point is its inputs and targets, each divided by the
family's scale for that column (``input_scales``/``target_scales`` when the family declares them,
else its ``input_scale``/``target_scale``, else 1: never anything measured on test tasks). Points are
sorted by their first input, padded to the family's largest K with a mask, laid out channel-major
(a :class:`~reml_core.interfaces.PointSetLayout`, so point-set policies embed them
permutation-invariantly), then come each target column's mean and spread and K / max K.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from reml_core.errors import ComponentBuildError
from reml_core.interfaces import PointSetLayout, Task, TaskContext, TaskSampler


class SupportPointsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _scales(sampler: TaskSampler, name: str, width: int) -> np.ndarray:
    declared: Any = getattr(sampler, f"{name}_scales", None)
    if isinstance(declared, (tuple, list)) and len(declared) == width:
        values = np.asarray(declared, dtype=np.float64)
    else:
        single = getattr(sampler, f"{name}_scale", None)
        values = np.full(
            width, float(single) if isinstance(single, (int, float)) and math.isfinite(single) and single > 0 else 1.0
        )
    return np.where(np.isfinite(values) & (values > 0), values, 1.0)


class SupportPointsEncoder:
    """See the module docstring."""

    privileged = False

    def __init__(self, sampler: TaskSampler) -> None:
        self.inputs = int(sampler.input_size)
        self.outputs = int(sampler.output_size)
        self.max_shots = int(sampler.max_shots)
        self.x_scales = _scales(sampler, "input", self.inputs)
        self.y_scales = _scales(sampler, "target", self.outputs)
        channels = self.inputs + self.outputs
        self.observation_size = (channels + 1) * self.max_shots + 2 * self.outputs + 1
        self.point_set = PointSetLayout(offset=0, points=self.max_shots, channels=channels)

    def describe(self) -> str:
        return (
            f"only the K support points ({self.inputs} inputs and {self.outputs} targets each, every column divided by "
            "the "
            f"family's scale for it), sorted by the first input, padded to {self.max_shots} with a mask, then each "
            "target's "
            f"mean and spread and K / {self.max_shots}."
        )

    def encode(self, task: Task, shots: int) -> np.ndarray:
        x, y = task.support(shots)
        x = x.reshape(len(x), -1).double().numpy() / self.x_scales
        y = y.reshape(len(y), -1).double().numpy() / self.y_scales
        order = np.lexsort(x.T[::-1])  # by the first input, then the next...
        points = np.concatenate([x, y], axis=1)[order]
        m = self.max_shots
        out = np.zeros(self.observation_size, dtype=np.float64)
        channels = self.inputs + self.outputs
        for c in range(channels):
            out[c * m : c * m + shots] = points[:, c]
        out[channels * m : channels * m + shots] = 1.0
        tail = (channels + 1) * m
        out[tail : tail + self.outputs] = y.mean(axis=0)
        out[tail + self.outputs : tail + 2 * self.outputs] = y.std(axis=0)
        out[-1] = shots / m
        return out.astype(np.float32)


def build_support_points(config: SupportPointsConfig, context: TaskContext) -> SupportPointsEncoder:
    sampler = context.task_sampler
    if (
        len(tuple(getattr(sampler, "input_shape", ()) or ())) > 1
        or getattr(sampler, "loss_name", "") == "cross-entropy"
    ):
        raise ComponentBuildError(
            "the support-points encoder reads regression points; for images use the prototypes encoder"
        )
    return SupportPointsEncoder(sampler)
