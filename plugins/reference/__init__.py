"""The ``reference`` baseline: no training at all, so a reader can tell what meta-learning adds.

For a classification task (``Task.ways`` > 1, integer labels) the network is the nearest class
mean of the K-shot support images: a linear layer on the flattened image whose row ``c`` is
``2 * mu_c`` and whose bias is ``-||mu_c||^2`` (``mu_c`` the mean support image of class ``c``),
so its logits ``2 x.mu_c - ||mu_c||^2 = ||x||^2 - ||x - mu_c||^2`` rank the classes by the distance
of ``x`` to their means: the arg-max is the nearest mean. For a regression task it is the support
targets' mean: the same linear layer with zero weights and the mean as its bias (a constant).

Either is a plain ``nn.Module``, so the evaluator fine-tunes and measures it exactly as it does
every other method's network (with fine-tuning it becomes a linear model started at that point).
Nothing is learned across tasks: ``meta_train`` returns at once and there is nothing to save.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from reml_core import hookimpl
from reml_core.interfaces import BaselineContext, Task
from reml_core.specs import BaselineSpec


class ReferenceConfig(BaseModel):
    """No options: the reference is defined by the task's support set alone."""

    model_config = ConfigDict(extra="forbid")


class FlatLinear(nn.Module):
    """A linear layer on the flattened input, its output shaped ``out_shape`` per point."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        self.out_shape = tuple(out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)).reshape(x.shape[0], *self.out_shape)


def nearest_class_mean(x: torch.Tensor, y: torch.Tensor, ways: int) -> FlatLinear:
    """The linear layer whose logits rank ``ways`` classes by distance to the class means of ``x``."""
    flat = x.flatten(1).to(torch.float32)
    labels = y.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= ways):
        raise ValueError(f"class labels must be in 0..{ways - 1}, got {int(labels.min())}..{int(labels.max())}")
    counts = torch.bincount(labels, minlength=ways)
    if bool((counts == 0).any()):
        missing = [c for c in range(ways) if counts[c] == 0]
        raise ValueError(f"the support set holds no image of class(es) {missing}: a class mean needs at least one")
    sums = torch.zeros(ways, flat.shape[1], dtype=flat.dtype, device=flat.device).index_add_(0, labels, flat)
    means = sums / counts.unsqueeze(1).to(flat.dtype)
    return FlatLinear(2 * means, -(means * means).sum(1), (ways,))


def support_mean(x: torch.Tensor, y: torch.Tensor) -> FlatLinear:
    """The constant network predicting the mean support target (zero weights on the flattened input)."""
    targets = y.to(torch.float32)
    out_shape = tuple(targets.shape[1:])
    mean = targets.mean(0).reshape(-1)
    return FlatLinear(
        torch.zeros(mean.numel(), x.flatten(1).shape[1], dtype=mean.dtype, device=mean.device), mean, out_shape
    )


class ReferenceBaseline:
    """See the module docstring."""

    def __init__(self, config: ReferenceConfig, context: BaselineContext) -> None:
        self.device = torch.device(context.device)

    def describe(self) -> str:
        return (
            "no training: classification, the nearest class mean of the K support images (a linear layer on the "
            "flattened image, weights 2*mu_c, bias -||mu_c||^2); regression, the mean support target (a constant)"
        )

    def meta_train(self, tasks: Iterator[Task], progress: bool = True) -> dict[str, float]:
        return {}  # nothing is learned across tasks

    def network_for(self, task: Task, shots: int) -> nn.Module:
        x, y = task.support(shots)
        if task.ways > 1 and not y.is_floating_point():
            network = nearest_class_mean(x, y, task.ways)
        else:
            network = support_mean(x, y)
        return network.to(self.device)

    def save(self, directory: Path) -> None:
        pass  # nothing to save

    def load(self, directory: Path) -> None:
        pass


@hookimpl
def reml_baselines():
    yield BaselineSpec(
        name="reference",
        factory=ReferenceBaseline,
        config_model=ReferenceConfig,
        description="No training: the nearest class mean of the support images (classification) or the support "
        "targets' mean (regression), as a plain network; what a method must beat to have learned anything.",
        label="reference (no training)",
        # Offered by no command on its own (a family recommends it, as digits and omniglot do; name it with
        # --methods / --baselines elsewhere), so the sine family's tables stay as they are.
        compare_in=(),
    )
