"""What the end of an episode does to the pool: the thesis' write-back, or the protocol-aligned meta-gradient.

Two rules, chosen by ``env.pool_update``:

- ``thesis``: the composed network is trained with Adam on the task's training data and its trained
  layers are blended back into the pool (``pool += rate * (trained - pool)``, a Reptile step; rate 1
  is the thesis' replacement). This is :func:`reml_core.batched.end_episodes`' write-back.
- ``protocol``: the layers are trained for the job they are judged on. For each finished network
  the evaluation protocol's adaptation is run on the task's K support points (plain SGD at
  ``env.finetune_sgd_lr``), the query loss is taken after each of ``env.meta_steps`` steps, and the
  gradient of their mean with respect to the network's starting parameters (second order, as
  MAML's; ``env.meta_order = "first"`` drops the second-order terms) flows back to the pool layers
  the network was built from. Networks that share a layer add their gradients; the pool then takes
  one Adam step (``env.pool_adam_lr``, annealed by ``env.write_back_schedule``) on the mean over
  the networks of that step (or one step per ``env.pool_batch`` of them, in order). The optimiser's
  state is saved with every checkpoint (``pool_update.safetensors``), so a resume continues exactly.

The meta-gradient needs the :class:`~reml_core.interfaces.MetaGradientLayerPool` capability: the
pool's own tensors (``parameters()``), a ``build_batch`` that is differentiable with respect to them,
and batched networks that can be called with other parameters (``with_parameters``). Networks of one
shape are computed as one stacked computation (``batched=True``) or one at a time through
``torch.func.functional_call`` on the single network ``build`` returns (the reference the stacked
path is tested against); both push their gradients into the pool through the same differentiable
gather, so shared layers accumulate exactly as autograd sums them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from reml_core.batched import MAX_BATCH, _groups, _padded, _ragged_loss
from reml_core.choices import apply_choices, has_plugin_choice
from reml_core.errors import CheckpointError
from reml_core.inner_loop import batched_loss
from reml_core.interfaces import LayerPool, LossFn, MetaGradientLayerPool
from reml_core.settings import EnvConfig

#: The file of a checkpoint that holds the protocol update's optimiser state.
STATE_FILE = "pool_update.safetensors"


def meta_steps(config: EnvConfig) -> list[int]:
    """The adaptation step counts whose query losses the protocol update averages (a run's config fills
    ``env.meta_steps`` from ``eval.steps``; a bare EnvConfig without them means ``finetune_steps``)."""
    return list(config.meta_steps) if config.meta_steps else [config.finetune_steps]


class ProtocolPoolUpdate:
    """The protocol-aligned pool update (see the module docstring) for one pool, with its Adam state."""

    def __init__(self, pool: LayerPool, config: EnvConfig, loss_fn: LossFn) -> None:
        if not isinstance(pool, MetaGradientLayerPool):
            raise TypeError(
                f"{type(pool).__name__} has no meta-gradient capability (parameters(), a differentiable build_batch)"
            )
        self.pool = pool
        self.loss_fn = loss_fn
        self.lr = config.finetune_sgd_lr
        self.steps = meta_steps(config)
        self.second_order = config.meta_order == "second"
        self.follows_choices = config.pool_follows_choices
        self.parameters = list(pool.parameters())
        self.lr_base = config.pool_adam_lr
        self.batch = config.pool_batch
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.pool_adam_lr)
        self.updates = 0

    def describe(self) -> str:
        order = "second-order" if self.second_order else "first-order"
        steps = "/".join(str(s) for s in self.steps)
        per = f", one step per {self.batch} networks" if self.batch else ""
        return (
            f"protocol-aligned: {order} meta-gradient of the query loss after {steps} SGD steps (lr {self.lr:g}) "
            f"on the support set, Adam on the pool (lr {self.lr_base:g}{per})"
        )

    # -- the update --------------------------------------------------------------------------

    def apply(
        self,
        ends: Sequence[Any],
        keep: Sequence[bool],
        *,
        batched: bool = True,
        lr_scale: float = 1.0,
        appliers: Any = None,
    ) -> list[float]:
        """One Adam step of the pool on the mean meta-loss of the kept ``ends``
        (:class:`~reml_core.batched.EpisodeEnd`), or with ``env.pool_batch`` = B one step per
        consecutive B kept ends, in order, each taken on the pool the previous one left.

        The step's learning rate is ``env.pool_adam_lr * lr_scale`` (the environment anneals it with
        ``env.write_back_schedule``, as it anneals the thesis rule's write-back rate).

        Returns each end's meta-loss (NaN where it was not kept or not finite). A network whose
        meta-loss or gradient is not finite contributes nothing (only that one); with no
        contribution at all the pool and the optimiser stay as they were.

        An end's chosen adaptation rate and steps (``EpisodeEnd.choices``, ``env.choose``) replace
        ``env.finetune_sgd_lr`` and ``env.meta_steps`` for its network; ``appliers`` apply a plugin's
        chosen values to the network (such networks take the one-at-a-time path).
        """
        chosen = [i for i, flag in enumerate(keep) if flag]
        size = self.batch or max(len(chosen), 1)
        losses = [math.nan] * len(ends)
        for start in range(0, len(chosen), size):
            batch = set(chosen[start : start + size])
            mask = [i in batch for i in range(len(ends))]
            part, gradients = self.gradients(ends, mask, batched=batched, appliers=appliers)
            for i in batch:
                losses[i] = part[i]
            if gradients is not None:
                self.step(gradients, lr_scale)
        return losses

    def step(self, gradients: Sequence[torch.Tensor], lr_scale: float) -> None:
        """One Adam step of the pool on ``gradients`` (one per pool tensor, as :meth:`gradients` returns them)."""
        for parameter, gradient in zip(self.parameters, gradients):
            parameter.grad = gradient
        self.optimizer.param_groups[0]["lr"] = self.lr_base * lr_scale
        self.optimizer.step()
        self.updates += 1
        for parameter in self.parameters:
            parameter.grad = None

    def gradients(
        self, ends: Sequence[Any], keep: Sequence[bool], *, batched: bool = True, appliers: Any = None
    ) -> tuple[list[float], list[torch.Tensor] | None]:
        """Each end's meta-loss and the gradient of their mean (over the finite ones) for every pool tensor
        (None when no end contributed). The pool is not changed."""
        losses = [math.nan] * len(ends)
        chosen = [i for i, flag in enumerate(keep) if flag]
        if not chosen:
            return losses, None
        for parameter in self.parameters:
            parameter.grad = None
            parameter.requires_grad_(True)
        try:
            contributed = 0
            groups = _groups([ends[i] for i in chosen], MAX_BATCH) if batched else [[j] for j in range(len(chosen))]
            for members in groups:
                group = [ends[chosen[j]] for j in members]
                stack = batched and len(group) > 1 and not has_plugin_choice(getattr(group[0], "choices", ()))
                values = self._group(group) if stack else [self._one(end, appliers) for end in group]
                for j, value in zip(members, values):
                    losses[chosen[j]] = value
                    contributed += math.isfinite(value)
            if not contributed:
                return losses, None
            gradients = [
                torch.zeros_like(parameter) if parameter.grad is None else parameter.grad.div_(contributed)
                for parameter in self.parameters
            ]
        finally:
            for parameter in self.parameters:
                parameter.requires_grad_(False)
                parameter.grad = None
        return losses, gradients

    def _group(self, ends: Sequence[Any]) -> list[float]:
        """Networks of one shape as one stacked computation; their gradients pushed into the pool together."""
        indices = [list(end.indices) for end in ends]
        with torch.enable_grad():
            # a MetaGradientLayerPool's batch also offers with_parameters (see its docstring)
            gathered: Any = self.pool.build_batch(indices)
            starts = gathered.parameters()
            leaves = [tensor.detach().requires_grad_(True) for tensor in starts]
            supports = [end.task.support(end.shots) for end in ends]
            counts = [len(x) for x, _ in supports]
            longest = max(counts)
            x_support = torch.stack([_padded(x, longest) for x, _ in supports])
            y_support = torch.stack([_padded(y, longest) for _, y in supports])
            x_query = torch.stack([end.task.x_query for end in ends])
            y_query = torch.stack([end.task.y_query for end in ends])
            support_losses = _ragged_loss(self.loss_fn, counts)
            query_losses = batched_loss(self.loss_fn)

            def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
                return gathered.with_parameters(params)(x)

            lr, steps = self._adaptation(ends[0])
            meta = self._trajectory(
                leaves,
                forward,
                x_support,
                y_support,
                x_query,
                y_query,
                support_losses,
                query_losses,
                lr=lr,
                steps=steps,
            )
            grads: Sequence[torch.Tensor] = torch.autograd.grad(meta.sum(), leaves, allow_unused=True)
            grads = [torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(leaves, grads)]
            usable = torch.isfinite(meta) & _rows_finite(grads)
            grads = [torch.where(_broadcast(usable, grad), grad, torch.zeros_like(grad)) for grad in grads]
            torch.autograd.backward(starts, grads)
        return [float(value) if ok else math.nan for value, ok in zip(meta.detach().tolist(), usable.tolist())]

    def _adaptation(self, end: Any) -> tuple[float, list[int]]:
        """The SGD rate and the step counts of ``end``'s adaptation: the ones its policy chose, else (or with
        ``env.pool_follows_choices`` false) the run's."""
        chosen = dict(getattr(end, "choices", ())) if self.follows_choices else {}
        lr = float(chosen.get("finetune_sgd_lr", self.lr))
        steps = [int(chosen["finetune_steps"])] if "finetune_steps" in chosen else self.steps
        return lr, steps

    def _one(self, end: Any, appliers: Any = None) -> float:
        """One network through ``torch.func.functional_call`` on the module ``build`` returns (the reference)."""
        indices = list(end.indices)
        with torch.no_grad():
            network = apply_choices(self.pool.build(indices), getattr(end, "choices", ()), appliers or {})
        names = [name for name, _ in network.named_parameters()]
        with torch.enable_grad():
            gathered = self.pool.build_batch([indices])
            starts = gathered.parameters()
            leaves = [tensor[0].detach().requires_grad_(True) for tensor in starts]
            x_support, y_support = end.task.support(end.shots)

            def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
                return torch.func.functional_call(network, dict(zip(names, params)), (x,))

            lr, steps = self._adaptation(end)
            meta = self._trajectory(
                leaves,
                forward,
                x_support,
                y_support,
                end.task.x_query,
                end.task.y_query,
                self.loss_fn,
                self.loss_fn,
                lr=lr,
                steps=steps,
            )
            if not math.isfinite(float(meta.detach())):
                return math.nan
            grads: Sequence[torch.Tensor] = torch.autograd.grad(meta, leaves, allow_unused=True)
            grads = [torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(leaves, grads)]
            if not all(bool(torch.isfinite(grad).all()) for grad in grads):
                return math.nan
            torch.autograd.backward(starts, [grad.unsqueeze(0) for grad in grads])
        return float(meta.detach())

    def _trajectory(
        self,
        params: list[torch.Tensor],
        forward: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor],
        x_support: torch.Tensor,
        y_support: torch.Tensor,
        x_query: torch.Tensor,
        y_query: torch.Tensor,
        support_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        query_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        lr: float | None = None,
        steps: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """The mean query loss after each of ``steps`` (default ``self.steps``) SGD steps at ``lr`` (default
        ``self.lr``) on the support set, differentiable in ``params``."""
        lr = self.lr if lr is None else lr
        steps = self.steps if steps is None else list(steps)
        wanted = set(steps)
        collected = []
        if 0 in wanted:
            collected.append(query_loss(forward(params, x_query), y_query))
        for step in range(1, max(steps) + 1):
            loss = support_loss(forward(params, x_support), y_support)
            grads = torch.autograd.grad(loss.sum(), params, create_graph=self.second_order)
            params = [p - lr * g for p, g in zip(params, grads)]
            if step in wanted:
                collected.append(query_loss(forward(params, x_query), y_query))
        return torch.stack(collected).mean(0)

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The Adam state as flat tensors (safetensors holds tensors only)."""
        state: dict[str, torch.Tensor] = {"updates": torch.tensor(self.updates, dtype=torch.int64)}
        for index, parameter in enumerate(self.parameters):
            entry = self.optimizer.state.get(parameter)
            if not entry:
                continue
            for key in ("step", "exp_avg", "exp_avg_sq"):
                state[f"{index}.{key}"] = torch.as_tensor(entry[key]).detach().to("cpu", copy=True).contiguous()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor], where: str = "the pool update's state") -> None:
        if "updates" not in state:
            raise CheckpointError(f"{where} lacks its update count")
        self.optimizer.state.clear()
        for index, parameter in enumerate(self.parameters):
            keys = [f"{index}.{key}" for key in ("step", "exp_avg", "exp_avg_sq")]
            present = [key in state for key in keys]
            if not any(present):
                continue
            if not all(present):
                raise CheckpointError(f"{where} is incomplete for pool tensor {index}")
            step, exp_avg, exp_avg_sq = (state[key] for key in keys)
            if exp_avg.shape != parameter.shape or exp_avg_sq.shape != parameter.shape:
                raise CheckpointError(
                    f"{where}: pool tensor {index} has shape {tuple(parameter.shape)}, the state {tuple(exp_avg.shape)}"
                )
            self.optimizer.state[parameter] = {
                "step": step.to(torch.float32).clone(),
                "exp_avg": exp_avg.to(parameter.device, parameter.dtype).clone(),
                "exp_avg_sq": exp_avg_sq.to(parameter.device, parameter.dtype).clone(),
            }
        self.updates = int(state["updates"])


def make_pool_update(pool: LayerPool, config: EnvConfig, loss_fn: LossFn) -> ProtocolPoolUpdate | None:
    """The update object ``env.pool_update`` asks for (None for the thesis rule, which needs no state)."""
    if config.pool_update == "thesis":
        return None
    return ProtocolPoolUpdate(pool, config, loss_fn)


def _rows_finite(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    finite = torch.ones(tensors[0].shape[0], dtype=torch.bool)
    for tensor in tensors:
        finite &= torch.isfinite(tensor.flatten(1)).all(1)
    return finite


def _broadcast(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return rows.reshape(-1, *([1] * (like.dim() - 1)))
