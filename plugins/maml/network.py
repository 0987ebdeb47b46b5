"""The network MAML meta-learns: a plain MLP, as a module and as a function of its parameters.

The module is what the evaluator fine-tunes and what learn2learn wraps; :func:`forward` is the
same computation on an explicit parameter tuple, which the torch.func backend transforms.
The equality test checks that both backends, one on each form, give the same meta-gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "tanh": torch.tanh}


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

    def describe(self) -> str:
        return f"MLP {'-'.join(map(str, self.sizes))} ({self.activation})"


class MetaNetwork(nn.Module):
    """Linear, activation, ..., linear: ``forward(x: [N, in]) -> [N, out]``."""

    layers: nn.ModuleList

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
        for layer in cast("list[nn.Linear]", list(self.layers)):
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


@dataclass(frozen=True)
class ModuleArchitecture:
    """An arbitrary module's identity as a checkpoint checks it: its class and its state's names, shapes and dtypes.

    The image path meta-learns whatever network the layer pool builds (``pool.fresh_network``);
    MAML knows nothing about it beyond this. Two networks of the same class with the same state
    names and shapes are taken to be the same architecture (settings that hold no tensor, such as
    a conv network's pooling plan, are the pool's and the task family's, not recorded here).
    """

    module: str  # the class's qualified name
    state: tuple[tuple[str, tuple[int, ...], str], ...]  # (name, shape, dtype) in state_dict order

    @classmethod
    def of(cls, network: nn.Module) -> ModuleArchitecture:
        return cls.of_state(type(network), network.state_dict())

    @classmethod
    def of_state(cls, kind: type, state: Mapping[str, torch.Tensor]) -> ModuleArchitecture:
        """The identity of an object that is not a module but has a ``state_dict`` (a layer pool): its class and
        that state's names, shapes and dtypes."""
        entries = tuple((name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in state.items())
        return cls(f"{kind.__module__}.{kind.__qualname__}", entries)

    @property
    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """State name -> shape, in ``state_dict`` order."""
        return {name: shape for name, shape, _ in self.state}

    @property
    def dtypes(self) -> dict[str, str]:
        return {name: dtype for name, _, dtype in self.state}

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "state": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in self.state]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModuleArchitecture:
        return cls(data["module"], tuple((e["name"], tuple(e["shape"]), e["dtype"]) for e in data["state"]))

    def describe(self) -> str:
        count = sum(math.prod(shape) for _, shape, _ in self.state)
        return f"{self.module.rsplit('.', 1)[-1]} ({len(self.state)} tensors, {count} values)"
