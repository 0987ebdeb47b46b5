"""The built-in reward functions: ``neg-mse`` and the thesis' ``neg-mse-minmax``."""

from __future__ import annotations

from reml_core import hookimpl
from reml_core.specs import RewardSpec
from reml_plugins.rewards.functions import MinMaxConfig, NegMSEConfig, build_minmax, build_neg_mse


@hookimpl
def reml_rewards():
    yield RewardSpec(
        name="neg-mse",
        factory=build_neg_mse,
        config_model=NegMSEConfig,
        description="Minus the MSE of the finished network, clipped at max_loss.",
    )
    yield RewardSpec(
        name="neg-mse-minmax",
        factory=build_minmax,
        config_model=MinMaxConfig,
        description=(
            "Minus the MSE scaled per task and min-max calibrated (the thesis' reward, made safe for fresh tasks)."
        ),
    )
