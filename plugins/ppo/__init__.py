"""The ``ppo`` plugin: PPO with an MLP, RecurrentPPO with an LSTM, and MaskablePPO."""

from __future__ import annotations

from reml_core import hookimpl
from reml_core.interfaces import PolicyContext
from reml_core.specs import PolicySpec
from reml_plugins.ppo.config import PPOConfig, RecurrentPPOConfig


def build(name: str):
    """A factory for one backend; stable-baselines3 is imported only when a policy is built."""

    def factory(config: PPOConfig, context: PolicyContext):
        from reml_plugins.ppo.backends import SB3PolicyBackend  # noqa: PLC0415 - lazy: start-up time: stable-baselines3 (and an import cycle: backends imports this module)

        return SB3PolicyBackend(name, config, context)

    return factory


SMOKE = {"n_steps": 256, "batch_size": 64, "n_epochs": 4}


BACKENDS = (
    ("ppo-mlp", PPOConfig, "PPO with an MLP policy (stable-baselines3); invalid actions are penalised."),
    (
        "ppo-lstm",
        RecurrentPPOConfig,
        "RecurrentPPO with an LSTM policy (sb3-contrib): the order of chosen layers is a sequence.",
    ),
    (
        "ppo-mlp-masked",
        PPOConfig,
        "MaskablePPO with an MLP policy (sb3-contrib): only layers that fit the slot are ever chosen.",
    ),
)


@hookimpl
def reml_policies():
    for name, config_model, description in BACKENDS:
        yield PolicySpec(
            name=name, factory=build(name), config_model=config_model, description=description, presets={"smoke": SMOKE}
        )
