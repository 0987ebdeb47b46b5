"""A small in-process plugin providing one component of every kind, for registry and config tests.

Its components are records only: the factories are never called by these tests.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from reml_core import hookimpl
from reml_core.specs import (
    BaselineSpec,
    LayerPoolSpec,
    PolicySpec,
    Recommendation,
    RewardSpec,
    StateEncoderSpec,
    TaskSamplerSpec,
)


class ToyTaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    points: int = Field(20, gt=0)
    noise: float = Field(0.0, ge=0)


class ToyPoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden_layers: int = Field(6, gt=0)
    width: int = Field(8, gt=0)


class ToyPolicyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    learning_rate: float = Field(3e-4, gt=0)
    n_steps: int = Field(64, gt=0)


class EmptyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _unused_factory(config, context):  # pragma: no cover - never called by these tests
    raise AssertionError("toy components are not built")


@hookimpl
def reml_task_samplers():
    yield TaskSamplerSpec(
        name="toy",
        factory=_unused_factory,
        config_model=ToyTaskConfig,
        description="A toy task family for tests.",
        recommended=Recommendation(encoder="toy-encoder", pool="toy-pool", reward="toy-reward", policy="toy-policy"),
        presets={"smoke": {"points": 5}},
        experiment_presets={"smoke": {"train": {"env_steps": 100}, "eval": {"test_tasks": 3}}},
    )


@hookimpl
def reml_state_encoders():
    yield StateEncoderSpec(
        name="toy-encoder", factory=_unused_factory, config_model=EmptyConfig, description="Toy encoder."
    )


@hookimpl
def reml_layer_pools():
    yield LayerPoolSpec(
        name="toy-pool",
        factory=_unused_factory,
        config_model=ToyPoolConfig,
        description="Toy pool.",
        presets={"smoke": {"hidden_layers": 2}},
    )


@hookimpl
def reml_rewards():
    yield RewardSpec(name="toy-reward", factory=_unused_factory, config_model=EmptyConfig, description="Toy reward.")


@hookimpl
def reml_policies():
    yield PolicySpec(
        name="toy-policy", factory=_unused_factory, config_model=ToyPolicyConfig, description="Toy policy."
    )
    yield PolicySpec(
        name="toy-policy-2", factory=_unused_factory, config_model=ToyPolicyConfig, description="Another toy policy."
    )


@hookimpl
def reml_baselines():
    yield BaselineSpec(
        name="toy-baseline", factory=_unused_factory, config_model=EmptyConfig, description="Toy baseline."
    )
