"""The network MAML meta-learns: a plain MLP, as a module and as a function of its parameters.

The module is what the evaluator fine-tunes and what learn2learn wraps; :func:`forward` is the
same computation on an explicit parameter tuple, which the torch.func backend transforms.
The equality test checks that both backends, one on each form, give the same meta-gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh}


@dataclass(frozen=True)
class Architecture:
    """Layer sizes and activation: what a checkpoint must match to be loaded."""

    sizes: tuple[int, ...]  # input, hidden..., output
    activation: str

    @property
    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape, in the order of ``MetaNetwork.parameters()``."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            shapes[f"layers.{i}.weight"] = (fan_out, fan_in)
            shapes[f"layers.{i}.bias"] = (fan_out,)
        return shapes

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": list(self.sizes), "activation": self.activation}


class MetaNetwork(nn.Module):
    """Linear, activation, ..., linear: ``forward(x: [N, in]) -> [N, out]``."""

    def __init__(self, architecture: Architecture) -> None:
        super().__init__()
        self.architecture = architecture
        sizes = architecture.sizes
        self.layers = nn.ModuleList(nn.Linear(fan_in, fan_out) for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))
        self._activation = ACTIVATIONS[architecture.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self._activation(x)
        return x

    @torch.no_grad()
    def initialise(self, generator: torch.Generator) -> MetaNetwork:
        """Xavier-uniform weights and uniform(+-1/sqrt(fan_in)) biases: the dense pool's init family."""
        for layer in self.layers:
            fan_out, fan_in = layer.weight.shape
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
            layer.bias.copy_((torch.rand(layer.bias.shape, generator=generator) * 2 - 1) / math.sqrt(fan_in))
        return self


def forward(params: Sequence[torch.Tensor], x: torch.Tensor, activation: str) -> torch.Tensor:
    """``MetaNetwork.forward`` on explicit parameters ``(w0, b0, w1, b1, ...)``."""
    act = ACTIVATIONS[activation]
    last = len(params) // 2 - 1
    for i in range(last + 1):
        x = F.linear(x, params[2 * i], params[2 * i + 1])
        if i < last:
            x = act(x)
    return x
