"""Reward functions: negative MSE, raw or min-max scaled per task.

Both measure the loss of the finished network at a configurable moment (``loss_at``):
``composed`` (right after composition: what the 0-step evaluation measures), ``trained`` (after
the inner Adam training, as in the thesis), ``finetuned`` (after the evaluation protocol's
K-shot SGD fine-tuning), or ``blend`` (``blend_weight`` x composed + (1 - blend_weight) x trained).
Every reward is finite and monotone (non-increasing) in the loss; a NaN loss gets the worst reward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from reml_core.errors import ComponentBuildError
from reml_core.interfaces import Task, TaskContext, TaskSampler

LossMoment = Literal["composed", "trained", "finetuned", "blend"]


class RewardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loss_at: LossMoment = Field(
        "finetuned", description="when the loss is measured; the thesis used 'trained' (docs/pool-health.md)"
    )
    blend_weight: float = Field(0.5, ge=0, le=1, description="weight of the composed loss when loss_at = blend")
    invalid_action_penalty: float = Field(-1.0, le=0, description="reward of an action that does not fit the slot")


class NegMSEConfig(RewardConfig):
    max_loss: float = Field(100.0, gt=0, description="losses above this are clipped; -max_loss is the worst reward")


class MinMaxConfig(RewardConfig):
    low_quantile: float = Field(0.05, ge=0, lt=1, description="calibration quantile mapped to reward 0")
    high_quantile: float = Field(0.95, gt=0, le=1, description="calibration quantile mapped to reward -1")
    worst_reward: float = Field(-10.0, lt=-1, description="reward for a NaN loss; the floor of every reward")

    @model_validator(mode="after")
    def _ordered(self) -> MinMaxConfig:
        if self.low_quantile >= self.high_quantile:
            raise ValueError("low_quantile must be below high_quantile")
        return self


def _required(config: RewardConfig) -> frozenset[str]:
    return frozenset({"composed", "trained"}) if config.loss_at == "blend" else frozenset({config.loss_at})


def measured_loss(config: RewardConfig, losses: Mapping[str, float]) -> float:
    """The loss the reward is about, from the losses the environment measured."""
    if config.loss_at == "blend":
        return config.blend_weight * losses["composed"] + (1 - config.blend_weight) * losses["trained"]
    return losses[config.loss_at]


_MOMENTS = {
    "composed": "of the network as composed (before training)",
    "trained": "after the inner Adam training",
    "finetuned": "after the K-shot SGD fine-tuning of the evaluation protocol",
}


def _moment(config: RewardConfig) -> str:
    if config.loss_at == "blend":
        return f"blended ({config.blend_weight:g} composed, {1 - config.blend_weight:g} trained)"
    return _MOMENTS.get(config.loss_at, f"at {config.loss_at}")


class NegMSEReward:
    """Minus the MSE, clipped at ``max_loss``."""

    needs_calibration = False

    def __init__(self, config: NegMSEConfig) -> None:
        self.config = config
        self.required_losses = _required(config)
        self.invalid_action_penalty = config.invalid_action_penalty
        self.worst_reward = -config.max_loss

    def describe(self) -> str:
        return f"minus the task loss {_moment(self.config)}, clipped at {self.config.max_loss:g}."

    def __call__(self, losses: Mapping[str, float], task: Task) -> float:
        loss = measured_loss(self.config, losses)
        if not math.isfinite(loss):
            return self.worst_reward
        return -min(loss, self.config.max_loss)

    def calibrate(self, samples: Sequence[tuple[Task, Mapping[str, float]]]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class MinMaxReward:
    """The thesis' min-max scaled reward, made safe for a stream of fresh tasks.

    The thesis scaled each task's loss by that task's min and max over a calibration pass, which
    a never-seen task does not have (its reward was NaN) and which could flip sign. Here:

    1. The loss is first divided by the variance of the task's query targets: the MSE of
       predicting their mean. This puts every task on one scale (no task dominates) and needs no
       calibration, so it exists for every fresh task.
    2. The calibration pass (random compositions on calibration tasks) gives the ``low`` and
       ``high`` quantiles of that normalised loss; they map to rewards 0 and -1.
    3. Beyond ``high`` the penalty grows logarithmically (1 + log x), so a wild network gets a
       finite, still-ordered reward; the floor is ``worst_reward``, also given to NaN losses.

    Before calibration ``low`` = 0 and ``high`` = 1 (a perfect fit and the mean predictor).
    """

    needs_calibration = True

    def __init__(self, config: MinMaxConfig) -> None:
        self.config = config
        self.required_losses = _required(config)
        self.invalid_action_penalty = config.invalid_action_penalty
        self.worst_reward = config.worst_reward
        self.low = 0.0
        self.high = 1.0
        self.calibrated = False

    def describe(self) -> str:
        return (
            f"the task loss {_moment(self.config)} over the variance of the query targets, mapped by calibrated "
            f"quantiles to [-1, 0] (log-growing penalty beyond)."
        )

    @staticmethod
    def normalised(loss: float, task: Task) -> float:
        return loss / (float(task.y_query.var(unbiased=False)) + 1e-8)

    def __call__(self, losses: Mapping[str, float], task: Task) -> float:
        loss = measured_loss(self.config, losses)
        if not math.isfinite(loss):
            return self.worst_reward
        scaled = (self.normalised(loss, task) - self.low) / (self.high - self.low)
        penalty = scaled if scaled <= 1.0 else 1.0 + math.log(scaled)
        return max(-penalty, self.worst_reward)

    def calibrate(self, samples: Sequence[tuple[Task, Mapping[str, float]]]) -> None:
        values = [self.normalised(measured_loss(self.config, losses), task) for task, losses in samples]
        finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
        if finite.size < 2:
            raise ComponentBuildError(
                f"reward calibration needs at least two finite losses, but only {finite.size} of {len(values)} "
                "calibration "
                "episodes ended with a finite loss (raise train.calibration_episodes, or use the neg-mse reward, which "
                "needs no calibration)"
            )
        low, high = np.quantile(finite, [self.config.low_quantile, self.config.high_quantile])
        if not high > low:  # every calibration network scored the same: keep a unit range
            high = low + 1.0
        self.low, self.high, self.calibrated = float(low), float(high), True

    def state_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "calibrated": self.calibrated}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        low, high = float(state["low"]), float(state["high"])
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise ValueError(f"invalid reward calibration: low={low}, high={high}")
        self.low, self.high, self.calibrated = low, high, bool(state["calibrated"])


def build_neg_mse(config: NegMSEConfig, context: TaskContext) -> NegMSEReward:
    return NegMSEReward(config)


def build_minmax(config: MinMaxConfig, context: TaskContext) -> MinMaxReward:
    check_real_valued_targets(context.task_sampler)
    return MinMaxReward(config)


def check_real_valued_targets(sampler: TaskSampler) -> None:
    """Refuse a family whose targets are not real numbers (class indices): the min-max reward divides a
    task's loss by the variance of its query targets, which class labels do not have."""
    tasks = sampler.validation_tasks(1)
    if tasks and not tasks[0].y_query.is_floating_point():
        raise ComponentBuildError(
            f"it scales a task's loss by the variance of its query targets, but this family's targets are "
            f"{tasks[0].y_query.dtype} class labels (a classification family): use the neg-mse reward"
        )
