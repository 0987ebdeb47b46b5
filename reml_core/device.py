"""Where networks live and train: the ``train.device`` setting.

The layer pool, the networks it builds, MAML's and scratch's networks are placed on the run's
device (``BuildContext.device``); task samplers and state encoders stay on the CPU (tasks are
small and encoders hand the policy NumPy arrays), so the core moves a task's tensors to a
network's device where it trains or measures that network (:func:`task_on`). The policy itself
(a small MLP or LSTM) always runs on the CPU, where stable-baselines3 runs such policies fastest.
"""

from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn

from reml_core.errors import ConfigError
from reml_core.interfaces import Task

#: The spellings ``train.device`` accepts.
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d{1,3})?")

_TASK_TENSORS = ("x_train", "y_train", "x_support", "y_support", "x_query", "y_query")


def check_device_name(name: str) -> str:
    """``name`` if it is a device spelling REML accepts (``cpu``, ``cuda`` or ``cuda:N``); ValueError otherwise."""
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name):
        raise ValueError(f"{name!r} is not a device; use 'cpu', 'cuda' or 'cuda:N' (N: a GPU index)")
    return name


def resolve_device(name: str, *, setting: str = "train.device") -> torch.device:
    """The torch device ``name`` names, if this machine has it; a config error naming it otherwise."""
    try:
        check_device_name(name)
    except ValueError as error:
        raise ConfigError([f"{setting}: {error}"]) from None
    device = torch.device(name)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(
            [
                f"{setting}: {name!r} was asked for but this machine has no usable CUDA device "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False); use {setting}=cpu or run where a "
                "GPU is"
            ]
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(
            [
                f"{setting}: {name!r} was asked for but this machine has {count} CUDA device(s) "
                f"(cuda:0..cuda:{count - 1})"
            ]
        )
    return device


def module_device(module: nn.Module | object) -> torch.device:
    """The device of a network's first parameter (or buffer); the CPU for one that has none."""
    if isinstance(module, nn.Module):
        for tensor in module.parameters():
            return tensor.device
        for buffer in module.buffers():
            return buffer.device
    parameters = getattr(module, "parameters", None)  # e.g. a batched network that is not an nn.Module
    if callable(parameters):
        for tensor in parameters():
            if isinstance(tensor, torch.Tensor):
                return tensor.device
    return torch.device("cpu")


def task_on(task: Task, device: torch.device) -> Task:
    """``task`` with its tensors on ``device`` (the task itself when they already are)."""
    if all(getattr(task, name).device == device for name in _TASK_TENSORS):
        return task
    return dataclasses.replace(task, **{name: getattr(task, name).to(device) for name in _TASK_TENSORS})
