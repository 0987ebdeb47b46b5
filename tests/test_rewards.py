"""Reward functions: monotone in the loss, finite for every task, calibrated safely."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from reml_core.interfaces import Task
from reml_plugins.rewards.functions import MinMaxConfig, MinMaxReward, NegMSEConfig, NegMSEReward

LOSSES = [0.0, 1e-6, 0.01, 0.5, 1.0, 2.0, 10.0, 1e3, 1e8, 1e30, math.inf]


def _task(amplitude: float) -> Task:
    x = torch.linspace(-5, 5, 20).unsqueeze(1)
    y = amplitude * torch.sin(x)
    return Task("t", "train", (amplitude, 0.0), x, y, x[:10], y[:10], x, y)


@pytest.mark.parametrize(
    "reward",
    [NegMSEReward(NegMSEConfig(loss_at="trained")), MinMaxReward(MinMaxConfig(loss_at="trained"))],
    ids=["neg-mse", "neg-mse-minmax"],
)
@pytest.mark.parametrize("amplitude", [0.1, 1.0, 5.0])
def test_rewards_are_finite_and_monotone_in_the_loss(reward, amplitude):
    task = _task(amplitude)
    values = [reward({"trained": loss}, task) for loss in LOSSES]
    assert all(math.isfinite(v) for v in values)
    assert all(a >= b for a, b in zip(values, values[1:])), values
    assert values[0] > values[4]  # strictly better for a perfect fit than for the mean predictor's loss scale
    assert reward({"trained": math.nan}, task) == reward.worst_reward
    assert min(values) >= reward.worst_reward


def test_minmax_is_finite_before_calibration_and_scales_per_task():
    reward = MinMaxReward(MinMaxConfig(loss_at="trained"))
    small, large = _task(0.1), _task(5.0)
    # The mean predictor's loss is the target variance: it scores -1 on every task, whatever its amplitude.
    for task in (small, large):
        variance = float(task.y_query.var(unbiased=False))
        assert reward({"trained": variance}, task) == pytest.approx(-1.0, rel=1e-5)
        assert reward({"trained": 0.0}, task) == pytest.approx(0.0, abs=1e-6)


def test_minmax_calibration_maps_quantiles_to_zero_and_minus_one():
    reward = MinMaxReward(MinMaxConfig(loss_at="trained", low_quantile=0.0, high_quantile=1.0))
    task = _task(2.0)
    variance = float(task.y_query.var(unbiased=False))
    samples = [(task, {"trained": variance * f}) for f in np.linspace(0.2, 0.8, 7)]
    samples.append((task, {"trained": math.nan}))  # ignored
    reward.calibrate(samples)
    assert (
        reward.calibrated and reward.low == pytest.approx(0.2, rel=1e-4) and reward.high == pytest.approx(0.8, rel=1e-4)
    )
    assert reward({"trained": variance * 0.2}, task) == pytest.approx(0.0, abs=1e-5)
    assert reward({"trained": variance * 0.8}, task) == pytest.approx(-1.0, rel=1e-4)
    restored = MinMaxReward(MinMaxConfig(loss_at="trained"))
    restored.load_state_dict(reward.state_dict())
    assert restored({"trained": variance * 0.5}, task) == reward({"trained": variance * 0.5}, task)
    with pytest.raises(ValueError, match="invalid reward calibration"):
        restored.load_state_dict({"low": 1.0, "high": 0.5, "calibrated": True})
    with pytest.raises(ValueError, match="at least two finite losses"):
        MinMaxReward(MinMaxConfig(loss_at="trained")).calibrate([(task, {"trained": math.nan})])


def test_when_the_loss_is_measured():
    task = _task(1.0)
    losses = {"composed": 4.0, "trained": 1.0, "finetuned": 2.0}
    assert NegMSEReward(NegMSEConfig(loss_at="composed"))(losses, task) == -4.0
    assert NegMSEReward(NegMSEConfig(loss_at="trained"))(losses, task) == -1.0
    assert NegMSEReward(NegMSEConfig(loss_at="finetuned"))(losses, task) == -2.0
    blended = NegMSEReward(NegMSEConfig(loss_at="blend", blend_weight=0.25))
    assert blended(losses, task) == pytest.approx(-(0.25 * 4 + 0.75 * 1))
    assert blended.required_losses == {"composed", "trained"}
    assert NegMSEReward(NegMSEConfig(loss_at="finetuned")).required_losses == {"finetuned"}


@pytest.mark.parametrize(
    ("model", "data"),
    [
        (NegMSEConfig, {"invalid_action_penalty": 0.5}),
        (NegMSEConfig, {"loss_at": "later"}),
        (NegMSEConfig, {"max_loss": 0}),
        (MinMaxConfig, {"low_quantile": 0.9, "high_quantile": 0.1}),
        (MinMaxConfig, {"blend_weight": 1.5}),
    ],
)
def test_reward_configs_reject_bad_values(model, data):
    with pytest.raises(ValidationError):
        model(**data)
