"""A second out-of-tree family, written as a newcomer would from docs/plugins.md: cubic polynomials,
a layer pool of its own (tanh layers, neither dense nor conv) that reports diagnostics of its own,
and no ``experiment_presets`` at all (the core's budgets apply). ``bad-moments`` is an encoder whose
output does not match the size it declares, for the build-time check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from reml_core import hookimpl
from reml_core.interfaces import Role, Task
from reml_core.specs import HyperparameterChoice, LayerPoolSpec, Recommendation, StateEncoderSpec, TaskSamplerSpec


class CubicConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    test_seed: int = 99
    support_points: int = Field(10, gt=0)


class CubicSampler:
    """y = a x^3 + b x on x in [-1, 1], a and b uniform in [-1, 1]."""

    descriptor_names = ("cubic", "linear")
    descriptor_low = (-1.0, -1.0)
    descriptor_high = (1.0, 1.0)
    input_size = output_size = 1
    train_points = 40

    def __init__(self, config: CubicConfig) -> None:
        self.config, self.max_shots = config, config.support_points

    def _task(self, generator: torch.Generator, task_id: str, split: str) -> Task:
        a, b = (torch.rand(2, generator=generator) * 2 - 1).tolist()
        n, k = self.train_points, self.max_shots
        x = torch.rand(n + k + 30, 1, generator=generator) * 2 - 1
        y = a * x**3 + b * x
        return Task(task_id, split, (a, b), x[:n], y[:n], x[n : n + k], y[n : n + k], x[n + k :], y[n + k :])

    def train_stream(self, seed: int):
        generator, index = torch.Generator().manual_seed(seed), 0
        while True:
            yield self._task(generator, f"train-{index}", "train")
            index += 1

    def _held_out(self, split: str, offset: int, count: int) -> list[Task]:
        generator = torch.Generator().manual_seed(self.config.test_seed * 31 + offset)
        return [self._task(generator, f"{split}-{i}", split) for i in range(count)]

    def validation_tasks(self, count: int) -> list[Task]:
        return self._held_out("validation", 1, count)

    def test_tasks(self, count: int) -> list[Task]:
        return self._held_out("test", 2, count)

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.mean((prediction - target) ** 2)

    def describe(self) -> str:
        return "cubic polynomials a x^3 + b x on [-1, 1]; 40 training points, 10 support and 30 query points per task."


class TanhPoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(16, gt=0, le=4096)
    layers_per_role: int = Field(6, gt=0, le=1000)


class TanhPool:
    """Layers kept as a list of (weight, bias) pairs; networks are tanh MLPs. Not a DenseLayerPool."""

    def __init__(self, config: TanhPoolConfig, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        w = config.width
        shapes = {Role.INPUT: (w, 1), Role.HIDDEN: (w, w), Role.OUTPUT: (1, w)}
        self.roles: list[Role] = []
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        for role, (fan_out, fan_in) in shapes.items():
            for _ in range(config.layers_per_role):
                self.roles.append(role)
                self.layers.append(self._init(fan_out, fan_in, generator))
        self.size = len(self.layers)

    @staticmethod
    def _init(fan_out: int, fan_in: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        return (torch.rand(fan_out, fan_in, generator=generator) * 2 - 1) * bound, torch.zeros(fan_out)

    def _network(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
        modules: list[nn.Module] = []
        for i, (weight, bias) in enumerate(layers):
            linear = nn.Linear(weight.shape[1], weight.shape[0])
            with torch.no_grad():
                linear.weight.copy_(weight)
                linear.bias.copy_(bias)
            modules.append(linear)
            if i < len(layers) - 1:
                modules.append(nn.Tanh())
        return nn.Sequential(*modules)

    def build(self, indices: Sequence[int]) -> nn.Module:
        return self._network([self.layers[i] for i in indices])

    def fresh_network(self, depth: int, generator: torch.Generator) -> nn.Module:
        w = self.layers[0][0].shape[0]
        shapes = [(w, 1)] + [(w, w)] * (depth - 2) + [(1, w)]
        return self._network([self._init(o, i, generator) for o, i in shapes])

    def write_back(self, indices: Sequence[int], network: nn.Module, rate: float = 1.0) -> None:
        linears = [m for m in network if isinstance(m, nn.Linear)]
        for index, linear in zip(indices, linears):
            weight, bias = self.layers[index]
            self.layers[index] = (
                weight + rate * (linear.weight.detach() - weight),
                bias + rate * (linear.bias.detach() - bias),
            )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            f"{kind}.{i}": tensor.clone()
            for i, layer in enumerate(self.layers)
            for kind, tensor in zip(("w", "b"), layer)
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.layers = [(state[f"w.{i}"].clone(), state[f"b.{i}"].clone()) for i in range(self.size)]

    def diagnostics(self, probe: torch.Tensor) -> dict[str, float]:
        """Its own health measures: tanh units saturated over the probe, and the mean |weight|."""
        saturated = []
        for (weight, bias), role in zip(self.layers, self.roles):
            if role is Role.INPUT:
                saturated.append(((probe @ weight.T + bias).abs() > 3).all(dim=0).float().mean().item())
        return {
            "saturated_input_units": float(np.mean(saturated)),
            "mean_abs_weight": float(np.mean([weight.abs().mean().item() for weight, _ in self.layers])),
        }

    def describe(self) -> str:
        return f"{self.size} tanh layers kept as a list (example third-party pool)."


class EmptyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BadMomentsEncoder:
    """Declares three numbers and returns two: the build-time check must name it."""

    observation_size = 3
    privileged = False

    def encode(self, task: Task, shots: int) -> np.ndarray:
        _, y = task.support(shots)
        return np.array([y.mean().item(), y.std(unbiased=False).item()], dtype=np.float32)


@hookimpl
def reml_task_samplers():
    yield TaskSamplerSpec(
        name="cubic",
        factory=lambda config, context: CubicSampler(config),
        config_model=CubicConfig,
        description="Cubic polynomials a x^3 + b x (example third-party plugin without experiment presets).",
        recommended=Recommendation(encoder="support-moments", pool="tanh-pool", reward="neg-mse", policy="ppo-mlp"),
    )


ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def set_activation(network: nn.Module, name: str) -> None:
    """The pool's structural choice: every activation of a built network becomes ``name`` (in place,
    the linear layers untouched, so the write-back reads them as before)."""
    for index, module in enumerate(network):
        if not isinstance(module, nn.Linear):
            network[index] = ACTIVATIONS[name]()


@hookimpl
def reml_layer_pools():
    yield LayerPoolSpec(
        name="tanh-pool",
        factory=lambda config, context: TanhPool(config, context.seed),
        config_model=TanhPoolConfig,
        description="Tanh layers in a plain list, with diagnostics of its own (example third-party pool).",
        # A hyperparameter of its own the policy may choose per task: env.choose.activation = ["tanh", "relu"].
        choices=(
            HyperparameterChoice(
                name="activation",
                values=tuple(ACTIVATIONS),
                apply=set_activation,
                description="the activation between the network's layers",
            ),
        ),
    )


@hookimpl
def reml_state_encoders():
    yield StateEncoderSpec(
        name="bad-moments",
        factory=lambda config, context: BadMomentsEncoder(),
        config_model=EmptyConfig,
        description="An encoder whose output is smaller than it declares (example of a plugin bug).",
    )
