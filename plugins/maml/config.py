"""The MAML baseline's configuration: Finn et al.'s (2017) sinusoid settings by default."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Backend = Literal["torch-func", "learn2learn"]
#: Beyond these sizes a run cannot be what anyone meant and would exhaust memory or time first.
MAX_WIDTH = 4096
Width = Annotated[int, Field(gt=0, le=MAX_WIDTH)]


class MAMLConfig(BaseModel):
    """Everything that defines a MAML run except the seed, which comes from the run (``BuildContext.seed``)."""

    model_config = ConfigDict(extra="forbid")

    backend: Backend = Field("torch-func", description="torch-func (batched, fast) or learn2learn (the reference library)")
    hidden: list[Width] = Field(default_factory=lambda: [40, 40], min_length=1, max_length=16, description="hidden layer widths (Finn et al.: 40, 40)")
    activation: Literal["relu", "tanh"] = "relu"
    inner_lr: float = Field(0.01, gt=0, description="SGD step size of the inner loop (alpha)")
    inner_steps: int = Field(1, ge=1, le=1000, description="inner SGD steps per task during meta-training")
    first_order: bool = Field(False, description="drop the second-order terms of the meta-gradient (FOMAML)")
    meta_lr: float = Field(0.001, gt=0, description="Adam step size of the outer loop (beta)")
    meta_batch: int = Field(25, ge=1, le=100_000, description="tasks per meta-iteration")
    shots: int = Field(10, ge=1, le=100_000, description="K: points for the inner step(s), and as many other points for the outer loss")
    iterations: int = Field(10_000, ge=1, le=100_000_000, description="meta-iterations (Finn et al.: 50 000 to 70 000)")
    task_batches: bool = Field(
        True,
        description="draw each meta-batch in one vectorised call when the task sampler can (BatchedTaskSampler.train_batches "
        "with the run's seed; the task stream meta_train is handed is then not read); false: take tasks one by one from that stream",
    )
    compile: bool = Field(
        False,
        description="torch-func only: torch.compile the meta-gradient (same numbers, several times faster after a warm-up; "
        "needs a C++ compiler, else it warns and runs eagerly)",
    )
