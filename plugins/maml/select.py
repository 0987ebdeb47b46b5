"""The ``maml-select`` baseline: M MAML-trained initialisations, each task taking the one that fits its support set
best.

The simplest rival of REML (issue 21, item 4a): no policy and no composition, only a per-task
choice among M initialisations of MAML's MLP. The choice rule is the same in meta-training and at
test time, and reads only the task's inner (support) points, so it is as fair as MAML: the
initialisation whose loss on those points after ONE SGD step (``inner_sgd_lr``) is lowest
(:func:`support_loss_after_one_step`, no gradient, vmapped over tasks and initialisations;
ties go to the lower index).

Meta-training, per meta-iteration: choose an initialisation for every task of the meta-batch,
gather each task's chosen parameters out of the stacked ``[M, ...]`` tensors (an indexed gather,
so the gradient flows back only to the initialisations some task chose; the others get zeros),
take MAML's meta-loss of each task from its own initialisation (``_task_loss`` of the torch-func
backend: ``inner_steps`` SGD steps, second order unless ``first_order``), mean over the batch,
and one Adam step (``meta_adam_lr``) on the whole stack. With M = 1 this is plain MAML: the same
initialisation (initialisation 0 is MAML's, drawn from the run seed), the same batches, the same
numbers within float rounding (``tests/test_maml_select.py``).

Everything else is MAML's (:class:`MAMLBaseline`): the meta-batches (the sampler's batched stream
with the run seed, or the task stream), the training loop and its progress bar and summary, the
compile fallback, the checkpoint files and their checks (the stack is saved as one module whose
tensors are ``[M, ...]``, so a checkpoint of another M or width is refused naming the tensor).
Sine-like families (flat inputs) only; an image family is refused at build time.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.func import vmap

from reml_core.errors import CheckpointError, ComponentBuildError, UserError
from reml_core.interfaces import BuildContext, LossFn, Task
from reml_plugins.maml.baseline import MAMLBaseline, mean_squared_error
from reml_plugins.maml.batches import MetaBatch
from reml_plugins.maml.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from reml_plugins.maml.config import MAMLSelectConfig
from reml_plugins.maml.network import Architecture, MetaNetwork, ModuleArchitecture
from reml_plugins.maml.torch_func import (
    CompileFallbackWarning,
    Params,
    TorchFuncMAML,
    _task_loss,
    meta_gradient_functions,
)


class InitialisationStack(nn.Module):
    """M initialisations of one :class:`MetaNetwork` architecture, stacked: ``layers.i.weight`` is ``[M, out, in]``.

    Initialisation m is ``MetaNetwork(architecture).initialise(generator)`` for m = 0, 1, ... in turn
    from one generator seeded by the run seed: initialisation 0 is MAML's, and initialisation m is
    the same for every M > m.
    """

    def __init__(self, architecture: Architecture, count: int) -> None:
        super().__init__()
        self.architecture = architecture
        self.count = count
        self.layers = nn.ModuleList()
        for fan_in, fan_out in zip(architecture.sizes[:-1], architecture.sizes[1:]):
            layer = nn.Module()
            layer.weight = nn.Parameter(torch.empty(count, fan_out, fan_in))
            layer.bias = nn.Parameter(torch.empty(count, fan_out))
            self.layers.append(layer)

    @torch.no_grad()
    def initialise(self, seed: int) -> InitialisationStack:
        generator = torch.Generator().manual_seed(seed)
        for index in range(self.count):
            network = MetaNetwork(self.architecture).initialise(generator)
            for target, source in zip(self.parameters(), network.parameters()):
                target[index].copy_(source)
        return self

    def network(self, index: int) -> MetaNetwork:
        """A fresh :class:`MetaNetwork` holding a copy of initialisation ``index``."""
        first = next(self.parameters())
        network = MetaNetwork(self.architecture).to(first.device)
        with torch.no_grad():
            for target, source in zip(network.parameters(), self.parameters()):
                target.copy_(source[index])
        return network


def support_loss_after_one_step(
    stacked: Params, x: torch.Tensor, y: torch.Tensor, *, loss_fn: LossFn, activation: str, inner_lr: float
) -> torch.Tensor:
    """``[tasks, M]``: each task's loss on its points ``x, y`` ``[tasks, K, in]`` after one SGD step on them, from each
    initialisation.

    The choice rule's criterion (no gradient is kept). MAML's own task loss with the support points as
    both the inner and the outer points, one step, first order (the same value; nothing to differentiate).
    """
    one_step = partial(
        _task_loss, loss_fn=loss_fn, activation=activation, inner_lr=inner_lr, inner_steps=1, first_order=True
    )
    over_initialisations = vmap(one_step, in_dims=(0, None, None, None, None))
    with torch.no_grad():
        return vmap(over_initialisations, in_dims=(None, 0, 0, 0, 0))(tuple(p.detach() for p in stacked), x, y, x, y)


def choose(losses: torch.Tensor) -> torch.Tensor:
    """The chosen initialisation per row of ``losses`` ``[tasks, M]``: the lowest (ties: the lower index; NaN never
    wins)."""
    return torch.argmin(torch.nan_to_num(losses, nan=math.inf), dim=-1)


def _select_meta_loss(params: Params, batch: tuple[torch.Tensor, ...], *, task_loss) -> torch.Tensor:
    """Mean over the tasks of MAML's outer loss from each task's chosen initialisation (``batch[0]``, ``[tasks]``)."""
    choice, *points = batch
    chosen = tuple(p[choice] for p in params)  # gather: the gradient reaches only chosen initialisations
    return vmap(task_loss)(chosen, *points).mean()


@dataclass(frozen=True)
class ChosenBatch:
    """A meta-batch with each task's chosen initialisation, in the form :meth:`TorchFuncMAML.meta_gradient` reads."""

    choice: torch.Tensor
    batch: MetaBatch

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        return (self.choice, *self.batch.as_tuple())


class SelectMAML(TorchFuncMAML):
    """The torch-func backend on a stack of initialisations: choose per task, then MAML's meta-gradient through the
    gather.

    Its meta-gradient, compile and compile fallback are :class:`TorchFuncMAML`'s; only the loss differs.
    """

    name = "torch-func"

    def __init__(self, stack: InitialisationStack, config: MAMLSelectConfig, loss_fn: LossFn) -> None:
        self.params = list(stack.parameters())
        activation = stack.architecture.activation
        self.choice_loss = partial(
            support_loss_after_one_step, loss_fn=loss_fn, activation=activation, inner_lr=config.inner_sgd_lr
        )
        task_loss = partial(
            _task_loss,
            loss_fn=loss_fn,
            activation=activation,
            inner_lr=config.inner_sgd_lr,
            inner_steps=config.inner_steps,
            first_order=config.first_order,
        )
        self.meta_loss = meta_loss = partial(_select_meta_loss, task_loss=task_loss)
        self._eager, self._gradient, self.compiled = meta_gradient_functions(meta_loss, config.compile, "maml-select")
        self._first_call = self.compiled
        # the meta-batches' choice is compiled too (about 4x faster); network_for's (one task, any K) stays eager
        self._batch_choice_loss = (
            torch.compile(self.choice_loss, fullgraph=True, dynamic=False) if self.compiled else self.choice_loss
        )
        self._first_choice = self.compiled
        self.last_choice: torch.Tensor | None = None

    def choose(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each task's initialisation (``[tasks]``) for a meta-batch's inner points ``x, y`` ``[tasks, K, in]``."""
        params = tuple(self.params)
        if not self._first_choice:
            return choose(self._batch_choice_loss(params, x, y))
        self._first_choice = False
        try:
            return choose(self._batch_choice_loss(params, x, y))
        # an internal torch.compile failure must not stop the run: eager is the same computation
        except Exception as error:
            lines = str(error).strip().splitlines()
            warnings.warn(
                f"maml-select: torch.compile of the choice failed ({lines[0] if lines else type(error).__name__}); "
                "choosing eagerly (slower)",
                CompileFallbackWarning,
                stacklevel=3,
            )
            self._batch_choice_loss = self.choice_loss
            return choose(self._batch_choice_loss(params, x, y))

    def meta_gradient(self, batch: MetaBatch) -> torch.Tensor:
        """Choose per task, then the meta-loss; its gradient (zero for initialisations no task chose) is left in
        ``.grad``."""
        self.last_choice = self.choose(batch.x_inner, batch.y_inner)
        return self._meta_gradient(ChosenBatch(self.last_choice, batch).as_tuple())


class MAMLSelectBaseline(MAMLBaseline):
    """M MAML initialisations, each task taking the one with the lowest support loss after one SGD step."""

    config: MAMLSelectConfig
    backend: SelectMAML

    def __init__(self, config: MAMLSelectConfig, context: BuildContext) -> None:
        sampler = context.task_sampler
        shape = getattr(sampler, "input_shape", None)
        if shape is not None and len(tuple(shape)) > 1:
            raise ComponentBuildError(
                "maml-select meta-learns MLP initialisations for flat inputs; this task family's inputs have shape "
                f"{tuple(shape)} (use maml on images)"
            )
        self.images = False
        self.config = config
        self.seed = context.seed
        self.device = torch.device(context.device)
        self.task_sampler = sampler
        self.loss_fn = sampler.loss if sampler is not None else mean_squared_error
        self.shots = config.shots
        inputs, outputs = (sampler.input_size, sampler.output_size) if sampler is not None else (1, 1)
        self.architecture = Architecture((inputs, *config.hidden, outputs), config.activation)
        self.stack = (
            InitialisationStack(self.architecture, config.initialisations).initialise(context.seed).to(self.device)
        )
        self.network = self.stack  # what MAMLBaseline's optimiser steps
        self.backend = SelectMAML(self.stack, config, self.loss_fn)
        self.optimizer = self._new_optimizer()
        self.iterations_done = 0
        self.chosen = torch.zeros(config.initialisations, dtype=torch.long)  # tasks that chose each, this meta_train
        self._recent: list[torch.Tensor] = []  # the choices of the last 100 meta-iterations

    def describe(self) -> str:
        options = self.config.model_dump(mode="json")
        options["network"] = self.architecture.describe()
        head = (
            f"M={self.config.initialisations} MAML initialisations, each task taking the one with the lowest support "
            "loss "
            f"after one SGD step (lr {self.config.inner_sgd_lr})"
        )
        return head + "; " + ", ".join(f"{key}={value}" for key, value in options.items())

    def meta_train(self, tasks, progress: bool = True) -> dict[str, float]:
        """MAML's loop; the summary adds how many initialisations tasks chose over the run and in its last 100
        iterations."""
        self.chosen.zero_()
        self._recent.clear()
        summary = super().meta_train(tasks, progress)
        summary["initialisations"] = float(self.config.initialisations)
        summary["initialisations_chosen"] = float((self.chosen > 0).sum())
        recent = torch.cat(self._recent) if self._recent else torch.zeros(0, dtype=torch.long)
        summary["initialisations_chosen_last_100"] = float(recent.unique().numel())
        return summary

    def meta_step(self, batch: MetaBatch) -> float:
        """One meta-iteration: choose, meta-gradient, Adam. Returns the meta-loss before the step."""
        loss = self.backend.meta_gradient(batch.to(self.device)).item()
        if not math.isfinite(loss):
            raise UserError(
                f"maml-select: meta-training diverged at iteration {self.iterations_done + 1} (meta-loss {loss}); "
                "lower baselines.maml-select.meta_adam_lr (the outer Adam rate) or baselines.maml-select.inner_sgd_lr "
                "(the inner SGD step)"
            )
        self.optimizer.step()
        self.iterations_done += 1
        choice = cast(torch.Tensor, self.backend.last_choice).cpu()  # meta_gradient just chose
        self.chosen += torch.bincount(choice, minlength=self.config.initialisations)
        self._recent.append(choice)
        del self._recent[:-100]
        return loss

    def choice_for(self, task: Task, shots: int) -> int:
        """The initialisation ``task`` takes: the lowest loss on ``task.support(shots)`` after one SGD step."""
        x, y = task.support(shots)
        losses = self.backend.choice_loss(
            tuple(self.stack.parameters()), x.to(self.device)[None], y.to(self.device)[None]
        )
        return int(choose(losses)[0])

    def network_for(self, task: Task, shots: int) -> nn.Module:
        """A fresh :class:`MetaNetwork` copy of the initialisation the task's K-shot support set chooses."""
        return self.stack.network(self.choice_for(task, shots))

    def networks_for(self, tasks: Sequence[Task], shots: int) -> list[nn.Module]:
        """:meth:`network_for` of every task, the choices of tasks whose support sets have one shape computed
        together (:class:`~reml_core.interfaces.ChoosesForMany`)."""
        supports = [task.support(shots) for task in tasks]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, (x, y) in enumerate(supports):
            groups.setdefault((tuple(x.shape), tuple(y.shape)), []).append(i)
        choices = [0] * len(tasks)
        params = tuple(self.stack.parameters())
        for members in groups.values():
            x = torch.stack([supports[i][0] for i in members]).to(self.device)
            y = torch.stack([supports[i][1] for i in members]).to(self.device)
            for i, choice in zip(members, choose(self.backend.choice_loss(params, x, y)).tolist()):
                choices[i] = int(choice)
        return [self.stack.network(choice) for choice in choices]

    def save(self, directory: Path) -> None:
        """MAML's checkpoint files (``maml.safetensors``, ``maml.json``) holding the stack (tensors ``[M, ...]``)."""
        parameters = {name: param.detach().cpu() for name, param in self.stack.named_parameters()}
        save_checkpoint(
            Path(directory),
            Checkpoint(
                parameters, self._checkpoint_architecture(), self.config.model_dump(mode="json"), self.iterations_done
            ),
        )

    def load(self, directory: Path) -> None:
        """Restore a saved stack (same M, sizes and activation); meta-training after a load starts a fresh Adam
        state."""
        checkpoint = load_checkpoint(Path(directory), self._checkpoint_architecture())
        saved = checkpoint.config.get("activation")
        if saved != self.config.activation:
            raise CheckpointError(
                f"{Path(directory) / 'maml.json'}: holds {saved} initialisations but this baseline is configured for "
                f"{self.config.activation}"
            )
        with torch.no_grad():
            for name, param in self.stack.named_parameters():
                param.copy_(checkpoint.parameters[name])
        self.iterations_done = checkpoint.iterations
        self.optimizer = self._new_optimizer()

    def _checkpoint_architecture(self) -> ModuleArchitecture:
        """The stack as a checkpoint records it: class, tensor names, ``[M, ...]`` shapes and dtypes."""
        return ModuleArchitecture.of(self.stack)
