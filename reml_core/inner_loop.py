"""Training a single network on one task: the episode's Adam training and K-shot SGD fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def value_and_grad(
    network: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
    """Loss and gradients (``params`` is ``list(network.parameters())``).

    A network may offer a faster ``value_and_grad(params, x, y, loss_fn)`` of its own; it is used when present.
    """
    fast = getattr(network, "value_and_grad", None)
    if fast is not None:
        return fast(params, x, y, loss_fn)
    loss = loss_fn(network(x), y)
    return loss.detach(), torch.autograd.grad(loss, params)


def train_adam(
    network: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    callback: Callable[[int], None] | None = None,
) -> bool:
    """Train ``network`` in place with Adam; False as soon as a loss or parameter is not finite.

    With ``batch_size`` >= the number of points every step is full-batch (the thesis: 100 of
    100); otherwise each step draws a minibatch without replacement using ``generator``.
    ``callback(step)`` runs after each update (step 1..steps).
    The update is the fused kernel behind ``torch.optim.Adam(fused=True)``, called directly:
    on networks this small the optimizer object's per-step overhead costs more than the
    arithmetic (tests check that both give the same parameters).
    """
    params = list(network.parameters())
    first = [torch.zeros_like(p) for p in params]
    second = [torch.zeros_like(p) for p in params]
    counts = [torch.zeros((), dtype=torch.float32) for _ in params]
    n = x.shape[0]
    for step in range(1, steps + 1):
        if batch_size < n:
            chosen = torch.randperm(n, generator=generator)[:batch_size]
            xb, yb = x[chosen], y[chosen]
        else:
            xb, yb = x, y
        loss, grads = value_and_grad(network, params, xb, yb, loss_fn)
        if not math.isfinite(loss.item()):
            return False
        with torch.no_grad():
            torch._foreach_add_(counts, 1)
            torch._fused_adam_(
                params, list(grads), first, second, [], counts,
                lr=lr, beta1=betas[0], beta2=betas[1], weight_decay=0.0, eps=eps, amsgrad=False, maximize=False,
            )
        if callback is not None:
            callback(step)
    return all(bool(torch.isfinite(p).all()) for p in params)


def finetune_sgd(
    network: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    *,
    steps: int,
    lr: float,
    callback: Callable[[int], None] | None = None,
) -> bool:
    """Plain SGD on the same K points at every step (Finn et al.'s protocol); False on a non-finite loss.

    ``callback(step)`` runs after each update (step 1..steps).
    """
    params = list(network.parameters())
    for step in range(1, steps + 1):
        loss, grads = value_and_grad(network, params, x, y, loss_fn)
        if not math.isfinite(loss.item()):
            return False
        with torch.no_grad():
            torch._foreach_add_(params, grads, alpha=-lr)
        if callback is not None:
            callback(step)
    return all(bool(torch.isfinite(p).all()) for p in params)


@torch.no_grad()
def evaluate_loss(network: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> float:
    return float(loss_fn(network(x), y))
