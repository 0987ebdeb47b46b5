"""The ``scratch`` baseline: the same architecture as REML's networks, freshly initialised per task."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from reml_core import hookimpl
from reml_core.interfaces import BaselineContext, LayerPool, Task
from reml_core.specs import BaselineSpec


class ScratchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    depth: int | None = Field(
        None, ge=2, description="layers per network (default: the run's env.depth, REML's architecture)"
    )


class ScratchBaseline:
    """A fresh network per task from the pool's own init (so REML and scratch share architecture and init family).

    The init of a task's network depends only on the run seed and the task, so every K and
    every step count starts scratch from the same network for that task.
    """

    def __init__(self, config: ScratchConfig, context: BaselineContext) -> None:
        self.pool: LayerPool = context.pool
        self.depth = config.depth or context.depth
        self.seed = context.seed
        self.device = torch.device(context.device)

    def describe(self) -> str:
        return f"no meta-training: a fresh network of the pool's architecture, depth {self.depth}, for every task"

    def meta_train(self, tasks: Iterator[Task], progress: bool = True) -> dict[str, float]:
        return {}  # nothing to learn across tasks

    def network_for(self, task: Task, shots: int) -> nn.Module:
        digest = hashlib.sha256(f"{self.seed}/{task.task_id}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)
        return self.pool.fresh_network(self.depth, generator).to(self.device)  # a no-op for a pool on the run's device

    def save(self, directory: Path) -> None:
        pass

    def load(self, directory: Path) -> None:
        pass


@hookimpl
def reml_baselines():
    yield BaselineSpec(
        name="scratch",
        factory=ScratchBaseline,
        config_model=ScratchConfig,
        description="REML's network architecture and init, freshly initialised for every task (no meta-learning).",
        label="scratch",
        compare_in=("run", "bench"),
    )
