"""Training networks on tasks: the episode's Adam training and K-shot SGD fine-tuning, one network or many stacked."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

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


# -- many networks at once ---------------------------------------------------------------------
# The same three operations on a BatchedNetwork (see reml_core.interfaces): B networks of one
# architecture with stacked parameters, trained as one computation. Row b of every result is
# network b's, computed as the functions above would compute it for that network alone (tests
# check it within 1e-5). A network whose numbers stop being finite is reported, not stopped:
# stacked rows never mix, so its NaNs stay in its own row while the others carry on.

BatchedLossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batched_loss(loss_fn: LossFn) -> BatchedLossFn:
    """``loss_fn`` (one network's prediction and target -> scalar) applied row by row: ``[B, ...] -> [B]``."""
    return torch.func.vmap(loss_fn)


def value_and_grad_batch(
    network: Any, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, losses_fn: BatchedLossFn
) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
    """The ``[B]`` losses and the gradients of their sum (row b of a gradient is network b's own).

    A batched network may offer a faster ``value_and_grad(params, x, y, losses_fn)``; it is used when present.
    """
    fast = getattr(network, "value_and_grad", None)
    if fast is not None:
        return fast(params, x, y, losses_fn)
    with torch.enable_grad():
        losses = losses_fn(network(x), y)
        grads = torch.autograd.grad(losses.sum(), params)
    return losses.detach(), grads


def _rows_finite(params: Sequence[torch.Tensor]) -> torch.Tensor:
    finite = torch.isfinite(params[0]).flatten(1).all(1)
    for p in params[1:]:
        finite &= torch.isfinite(p).flatten(1).all(1)
    return finite


def train_adam_batch(
    network: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    losses_fn: BatchedLossFn,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    generators: Sequence[torch.Generator] | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.Tensor:
    """:func:`train_adam` for every row of ``x`` ``[B, n, in]``/``y``; True per network that stayed finite.

    With ``batch_size`` < n, network b draws its minibatches with ``generators[b]``, exactly as
    :func:`train_adam` draws them with one generator.
    """
    params = list(network.parameters())
    first = [torch.zeros_like(p) for p in params]
    second = [torch.zeros_like(p) for p in params]
    counts = [torch.zeros((), dtype=torch.float32) for _ in params]
    rows, n = x.shape[0], x.shape[1]
    finite = torch.ones(rows, dtype=torch.bool)
    if batch_size < n and (generators is None or len(generators) != rows):
        raise ValueError("minibatches need one generator per network")
    row_index = torch.arange(rows).unsqueeze(1)
    for _ in range(steps):
        if batch_size < n:
            chosen = torch.stack([torch.randperm(n, generator=g)[:batch_size] for g in generators])  # type: ignore[union-attr]
            xb, yb = x[row_index, chosen], y[row_index, chosen]
        else:
            xb, yb = x, y
        losses, grads = value_and_grad_batch(network, params, xb, yb, losses_fn)
        finite &= torch.isfinite(losses)
        with torch.no_grad():
            torch._foreach_add_(counts, 1)
            torch._fused_adam_(
                params, list(grads), first, second, [], counts,
                lr=lr, beta1=betas[0], beta2=betas[1], weight_decay=0.0, eps=eps, amsgrad=False, maximize=False,
            )
    return finite & _rows_finite(params)


def finetune_sgd_batch(
    network: Any, x: torch.Tensor, y: torch.Tensor, losses_fn: BatchedLossFn, *, steps: int, lr: float
) -> torch.Tensor:
    """:func:`finetune_sgd` for every row of ``x``/``y`` (one K for all rows); True per network that stayed finite."""
    params = list(network.parameters())
    finite = torch.ones(x.shape[0], dtype=torch.bool)
    for _ in range(steps):
        losses, grads = value_and_grad_batch(network, params, x, y, losses_fn)
        finite &= torch.isfinite(losses)
        with torch.no_grad():
            torch._foreach_add_(params, grads, alpha=-lr)
    return finite & _rows_finite(params)


@torch.no_grad()
def evaluate_loss_batch(network: Any, x: torch.Tensor, y: torch.Tensor, losses_fn: BatchedLossFn) -> torch.Tensor:
    """The ``[B]`` losses of every network on its own row of ``x``/``y``."""
    return losses_fn(network(x), y)
