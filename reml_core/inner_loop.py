"""Training networks on tasks: the episode's Adam training and K-shot SGD fine-tuning, one network or many stacked."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from reml_core.interfaces import LossFn

__all__ = ["LossFn"]  # defined in reml_core.interfaces; imported here by older code

#: Gradients as value_and_grad gives them: what torch.autograd.grad returns, or a network's own list.
Grads = list[torch.Tensor] | tuple[torch.Tensor, ...]


def value_and_grad(
    network: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
) -> tuple[torch.Tensor, Grads]:
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
    params: list[torch.Tensor] = list(network.parameters())
    first = [torch.zeros_like(p) for p in params]
    second = [torch.zeros_like(p) for p in params]
    counts = [torch.zeros((), dtype=torch.float32, device=p.device) for p in params]
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
                params,
                list(grads),
                first,
                second,
                [],
                counts,
                lr=lr,
                beta1=betas[0],
                beta2=betas[1],
                weight_decay=0.0,
                eps=eps,
                amsgrad=False,
                maximize=False,
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
    lr: float | Sequence[torch.Tensor],
    callback: Callable[[int], None] | None = None,
) -> bool:
    """Plain SGD on the same K points at every step (Finn et al.'s protocol); False on a non-finite loss.

    ``lr`` is one rate for every parameter (the protocol's), or one tensor of rates per parameter,
    in ``network.parameters()`` order and of each parameter's shape (a learned per-parameter rate,
    as Meta-SGD's). ``callback(step)`` runs after each update (step 1..steps).
    """
    params: list[torch.Tensor] = list(network.parameters())
    rates = (
        None
        if isinstance(lr, (int, float))
        else [rate.to(p.device, p.dtype) for rate, p in zip(lr, params, strict=True)]
    )
    for step in range(1, steps + 1):
        loss, grads = value_and_grad(network, params, x, y, loss_fn)
        if not math.isfinite(loss.item()):
            return False
        with torch.no_grad():
            if rates is None:
                torch._foreach_add_(params, grads, alpha=-float(lr))  # type: ignore[arg-type]
            else:
                torch._foreach_sub_(params, torch._foreach_mul(grads, rates))
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


def row_wise(rows: BatchedLossFn) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Give a loss its row-wise form: ``@row_wise(rows)`` on ``loss(prediction, target) -> scalar`` says that
    ``rows(prediction [B, ...], target [B, ...]) -> [B]`` is ``loss`` applied to each row, bit for bit.

    :func:`batched_loss` then calls ``rows`` directly instead of ``torch.func.vmap(loss)``, whose Python
    costs about 0.1 ms a call (a tenth of a sine env step's time). A method keeps the mark through
    its bound form (``sampler.loss.row_losses``); a subclass that overrides ``loss`` without the
    mark gets ``vmap`` of its own loss again.
    """

    def mark(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        setattr(loss, "row_losses", rows)  # noqa: B010 (a function attribute, read back through getattr)
        return loss

    return mark


def batched_loss(loss_fn: LossFn) -> BatchedLossFn:
    """``loss_fn`` (one network's prediction and target -> scalar) applied row by row: ``[B, ...] -> [B]``.

    The loss's own row-wise form when it has one (:func:`row_wise`), else ``torch.func.vmap(loss_fn)``.
    """
    rows = getattr(loss_fn, "row_losses", None)
    if callable(rows):
        return rows
    return torch.func.vmap(loss_fn)


def mean_squared_error_rows(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each row's mean squared error, ``[B, ...] -> [B]``: the bits of ``vmap`` of :func:`mean_squared_error`."""
    squared = (prediction - target) ** 2
    if squared.dim() == 1:  # one number per row: its own mean
        return squared
    return torch.mean(squared, dim=tuple(range(1, squared.dim())))


@row_wise(mean_squared_error_rows)
def mean_squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The regression families' loss: the mean of the squared errors over every number of the prediction."""
    return torch.mean((prediction - target) ** 2)


def value_and_grad_batch(
    network: Any, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, losses_fn: BatchedLossFn
) -> tuple[torch.Tensor, Grads]:
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


# Elementwise kernels (the fused Adam step, SGD's update) run vector lanes over the bulk of a tensor
# and scalar code over its tail, and the two can round differently. A stacked tensor is therefore
# updated network by network (one view per network: the very split a single network gets) unless
# each network's share is a whole number of vectors for any CPU's vector width, as for 40x40 weights.
_WHOLE_VECTORS = 64


def _row_views(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors to hand an elementwise kernel so that each network's numbers meet the same code
    as in the single-network functions: stacked tensors whole where that is safe, else per-network views."""
    views: list[torch.Tensor] = []
    for tensor in tensors:
        if tensor[0].numel() % _WHOLE_VECTORS == 0:
            views.append(tensor)
        else:
            views.extend(tensor.unbind(0))
    return views


class _RowGradients:
    """Each step's gradients as :func:`_row_views` lays them out, without making views every step.

    Gradients of tensors updated network by network are copied into buffers whose per-network views
    exist once (a copy is exact, and cheaper than a hundred new views per step).
    """

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        self._buffers: list[torch.Tensor | None] = []
        self._views: list[torch.Tensor] = []
        self._whole: list[tuple[int, int]] = []  # (position in views, index of the tensor)
        for index, param in enumerate(params):
            if param[0].numel() % _WHOLE_VECTORS == 0:
                self._whole.append((len(self._views), index))
                self._views.append(param)
                self._buffers.append(None)
            else:
                buffer = torch.empty_like(param)
                self._buffers.append(buffer)
                self._views.extend(buffer.unbind(0))

    def __call__(self, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        for buffer, grad in zip(self._buffers, grads):
            if buffer is not None:
                buffer.copy_(grad)
        for position, index in self._whole:
            self._views[position] = grads[index]
        return self._views


def _rows_finite(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """True per row whose parameters are all finite (0 * x sums to 0 unless some x is infinite or NaN)."""
    poison = params[0].flatten(1).mul(0).sum(1)
    for p in params[1:]:
        poison += p.flatten(1).mul(0).sum(1)
    return torch.isfinite(poison)


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
    params: list[torch.Tensor] = list(network.parameters())
    first = [torch.zeros_like(p) for p in params]
    second = [torch.zeros_like(p) for p in params]
    rows, n = x.shape[0], x.shape[1]
    # The fused update runs on each network's own slice of every tensor (views): it then walks each
    # network's numbers in exactly the vector lanes and scalar tail it walks for a single network,
    # so the bits match train_adam's (vector and scalar code round differently, and Adam turns a
    # rounding difference in a near-zero gradient into a full step).
    param_rows, first_rows, second_rows = (_row_views(tensors) for tensors in (params, first, second))
    count = torch.zeros(
        (), dtype=torch.float32, device=x.device
    )  # every tensor's step count: one tensor, stepped once per step
    counts = [count] * len(param_rows)
    grad_rows = _RowGradients(params)
    poison = torch.zeros(rows, device=x.device)  # stays 0 while every loss is finite (0 * inf and 0 * NaN are NaN)
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
        with torch.no_grad():
            poison.add_(losses * 0)
            count.add_(1)
            torch._fused_adam_(
                param_rows,
                grad_rows(grads),
                first_rows,
                second_rows,
                [],
                counts,
                lr=lr,
                beta1=betas[0],
                beta2=betas[1],
                weight_decay=0.0,
                eps=eps,
                amsgrad=False,
                maximize=False,
            )
    return torch.isfinite(poison) & _rows_finite(params)


def finetune_sgd_batch(
    network: Any, x: torch.Tensor, y: torch.Tensor, losses_fn: BatchedLossFn, *, steps: int, lr: float
) -> torch.Tensor:
    """:func:`finetune_sgd` for every row of ``x``/``y``; True per network that stayed finite.

    ``losses_fn`` may take each row's loss on part of its points (K differs between episodes: see
    ``reml_core.batched``). Unlike Adam, plain SGD moves a parameter in proportion to its gradient,
    so rounding differences stay rounding-sized and need no network-by-network update.
    """
    params: list[torch.Tensor] = list(network.parameters())
    poison = torch.zeros(x.shape[0], device=x.device)
    for _ in range(steps):
        losses, grads = value_and_grad_batch(network, params, x, y, losses_fn)
        with torch.no_grad():
            poison.add_(losses * 0)
            torch._foreach_add_(params, grads, alpha=-lr)
    return torch.isfinite(poison) & _rows_finite(params)


@torch.no_grad()
def evaluate_loss_batch(network: Any, x: torch.Tensor, y: torch.Tensor, losses_fn: BatchedLossFn) -> torch.Tensor:
    """The ``[B]`` losses of every network on its own row of ``x``/``y``."""
    return losses_fn(network(x), y)
