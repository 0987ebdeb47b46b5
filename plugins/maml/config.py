"""The MAML baseline's configuration: Finn et al.'s (2017) sinusoid settings by default."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator

from reml_core.settings import RenamableModel, renamed

Backend = Literal["torch-func", "learn2learn"]
#: Beyond these sizes a run cannot be what anyone meant and would exhaust memory or time first.
MAX_WIDTH = 4096
Width = Annotated[int, Field(gt=0, le=MAX_WIDTH)]


class MAMLConfig(RenamableModel):
    """Everything that defines a MAML run except the seed, which comes from the run (``BuildContext.seed``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    backend: Backend = Field(
        "torch-func", description="torch-func (batched, fast) or learn2learn (the reference library)"
    )
    hidden: list[Width] = Field(
        default_factory=lambda: [40, 40],
        min_length=1,
        max_length=16,
        description="hidden layer widths (Finn et al.: 40, 40)",
    )
    activation: Literal["relu", "tanh"] = "relu"
    inner_sgd_lr: float = renamed(
        "inner_sgd_lr", "inner_lr", 0.01, gt=0, description="SGD step size of the inner loop (alpha)"
    )
    inner_steps: int = Field(1, ge=1, le=1000, description="inner SGD steps per task during meta-training")
    first_order: bool = Field(False, description="drop the second-order terms of the meta-gradient (FOMAML)")
    meta_adam_lr: float = renamed(
        "meta_adam_lr", "meta_lr", 0.001, gt=0, description="Adam learning rate of the outer loop (beta)"
    )
    meta_batch: int = Field(25, ge=1, le=100_000, description="tasks per meta-iteration")
    shots: int = Field(
        10, ge=1, le=100_000, description="K: points for the inner step(s), and as many other points for the outer loss"
    )
    iterations: int = Field(70_000, ge=1, le=100_000_000, description="meta-iterations (Finn et al.: 50 000 to 70 000)")
    task_batches: bool = Field(
        True,
        description=(
            "draw each meta-batch in one vectorised call when the task sampler can (BatchedTaskSampler.train_batches "
            "with the run's seed; the task stream meta_train is handed is then not read); false: take tasks one by one "
            "from that stream"
        ),
    )
    compile: bool = Field(
        False,
        description=(
            "torch-func only: torch.compile the meta-gradient (same numbers, several times faster after a warm-up; "
            "needs a C++ compiler, else it warns and runs eagerly)"
        ),
    )


class MAMLSelectConfig(MAMLConfig):
    """The ``maml-select`` baseline: MAML's options, and how many initialisations it meta-learns (M).

    Each task takes the initialisation whose support loss after one SGD step (``inner_sgd_lr``) is
    lowest. Only the torch-func backend is implemented (the choice and the gather are vmapped).
    """

    initialisations: int = Field(
        8,
        ge=1,
        le=1024,
        description=(
            "M: initialisations meta-learned side by side; each task takes the one with the lowest support loss "
            "after one SGD step (M = 1 is plain MAML)"
        ),
    )

    @field_validator("backend")
    @classmethod
    def _torch_func_only(cls, backend: str) -> str:
        if backend != "torch-func":
            raise ValueError(
                f"maml-select implements the torch-func backend only, not {backend}; set backend=torch-func (the "
                "default)"
            )
        return backend
