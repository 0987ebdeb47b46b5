"""Hyperparameters of the PPO backends (stable-baselines3 names), kept apart from the backends
so that discovering plugins does not import stable-baselines3."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Sizes beyond these cannot be what anyone meant, and would exhaust memory before training starts.
MAX_WIDTH = 4096
MAX_LAYERS = 16
MAX_ROLLOUT_STEPS = 65_536
Width = Annotated[int, Field(gt=0, le=MAX_WIDTH)]


class PPOConfig(BaseModel):
    """PPO hyperparameters (stable-baselines3 names). Defaults suit 5-step composition episodes."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(
        3e-4,
        gt=0,
        description="Adam learning rate of the policy and value networks (stable-baselines3's name for it)",
    )
    n_steps: int = Field(
        1024,
        gt=1,
        le=MAX_ROLLOUT_STEPS,
        description="env steps per rollout, over all train.n_envs envs (each collects n_steps / n_envs, rounded up)",
    )
    batch_size: int = Field(128, gt=1, le=MAX_ROLLOUT_STEPS)
    n_epochs: int = Field(10, gt=0, le=1000)
    clip_range: float = Field(0.2, gt=0)
    gamma: float = Field(0.99, gt=0, le=1)
    gae_lambda: float = Field(0.95, gt=0, le=1)
    ent_coef: float = Field(0.01, ge=0)
    vf_coef: float = Field(0.5, ge=0)
    max_grad_norm: float = Field(0.5, gt=0)
    net_arch: list[Width] = Field(
        [64, 64], max_length=MAX_LAYERS, description="hidden layer sizes of the policy and value networks"
    )
    activation: Literal["tanh", "relu"] = "tanh"
    features: Literal["flat", "point-set"] = Field(
        "flat",
        description="'flat': the policy sees the observation as one vector; 'point-set': the support points the state "
        "encoder declares (e.g. support-set) are embedded by a permutation-invariant set network trained with the "
        "policy",
    )
    point_set_hidden: int = Field(
        64, gt=0, le=MAX_WIDTH, description="hidden width of the set network's per-point embedding"
    )
    point_set_embedding: int = Field(
        32, gt=0, le=MAX_WIDTH, description="size of each point's embedding (mean and max pooled)"
    )


class RecurrentPPOConfig(PPOConfig):
    """RecurrentPPO adds an LSTM in front of the policy and value heads."""

    lstm_hidden_size: int = Field(64, gt=0, le=MAX_WIDTH)
    n_lstm_layers: int = Field(1, gt=0, le=MAX_LAYERS)
    enable_critic_lstm: bool = True
