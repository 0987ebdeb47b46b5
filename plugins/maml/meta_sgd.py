"""The ``meta-sgd`` baseline: Meta-SGD (Li et al. 2017), MAML whose inner SGD rate is learned, one rate per parameter
entry.

Meta-SGD meta-learns two things together: the initialisation theta (as MAML does) and a tensor
of inner-loop rates alpha of theta's shape. A task's adapted parameters after one inner step are
``theta - alpha * grad`` (element-wise product; a rate may turn negative, so alpha learns the
direction as well as the size of the step); the outer loss on K other points of the task is
minimised over theta and alpha by Adam, second order unless ``first_order``.

Choices, and where they come from:

- **The rates start uniform in [inner_sgd_lr_low, inner_sgd_lr_high] = [0.005, 0.1]**, one draw
  per entry, as Li et al. initialise alpha for their regression experiment; equal bounds start every
  rate at that value. They are drawn from their own generator, seeded by the run seed plus
  :data:`RATE_SEED_OFFSET`, so the initialisation theta is MAML's for the same seed and the rates are
  independent of it.
- **Everything else is MAML's** (:class:`MAMLBaseline`): the network (the 1-40-40-1 ReLU MLP on a
  flat-input family, the layer pool's network on an image family), K = 10 inner and 10 other outer
  points per task in meta-training, meta-batch 25, Adam at 0.001, one inner step, and the preset
  budgets (smoke 300 eager, default and full 70 000 compiled). Li et al. train one inner step and
  evaluate one step, as here.

Two backends, as MAML's, that differ in nothing but the meta-gradient: ``torch-func``
(:class:`TorchFuncMetaSGD`: the vmapped functional inner loop of MAML's torch-func backend with
the rates as extra leaves, through MAML's :func:`meta_gradient_functions`, so ``compile`` works the
same way) and ``learn2learn`` (:class:`Learn2LearnMetaSGD`: ``learn2learn.algorithms.MetaSGD``'s
``clone``/``adapt``, one task at a time). ``tests/test_meta_sgd.py`` holds them equal.

At evaluation Meta-SGD hands out two things: ``network_for`` (its initialisation, which the
protocol fine-tunes at its fixed rate like every method's) and ``adapted_network_for`` (the same
network with its learned rates, :class:`reml_core.interfaces.OwnAdaptation`), which the evaluator
measures as the separate ``meta-sgd@own-rate`` rows at every step count of the protocol.

Checkpoints are MAML's files (``maml.safetensors``, ``maml.json``) holding one module
(:class:`MetaSGDParameters`: ``network.*`` and ``rates.*``), so a MAML or maml-select checkpoint
is refused by Meta-SGD and the other way round, naming the tensor at fault.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.func import grad, vmap

from reml_core.errors import CheckpointError, ComponentBuildError, UserError
from reml_core.interfaces import BuildContext, LossFn, OwnAdaptation, Task
from reml_plugins.maml.baseline import MAMLBaseline, mean_squared_error, pool_network
from reml_plugins.maml.batches import MetaBatch
from reml_plugins.maml.checkpoint import METADATA, Checkpoint, load_checkpoint, save_checkpoint
from reml_plugins.maml.config import Backend, Width
from reml_plugins.maml.l2l import import_learn2learn
from reml_plugins.maml.network import Architecture, MetaNetwork, ModuleArchitecture, forward
from reml_plugins.maml.torch_func import Params, TorchFuncMAML, meta_gradient_functions, module_forward

#: The rates' generator is seeded by the run seed plus this, so they are drawn independently of the
#: initialisation (which the run seed's own generator draws, exactly as MAML's).
RATE_SEED_OFFSET = 7919


class MetaSGDConfig(BaseModel):
    """The ``meta-sgd`` baseline (Li et al. 2017): MAML's options, except that the inner SGD rate is learned per
    parameter.

    The rates start uniform in [``inner_sgd_lr_low``, ``inner_sgd_lr_high``] (Li et al.'s [0.005, 0.1]
    for regression; equal bounds start every rate at that value) and are meta-learned with the
    initialisation by the same Adam (``meta_adam_lr``). Everything else means what it means for MAML.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    backend: Backend = Field(
        "torch-func",
        description="torch-func (batched, fast) or learn2learn (learn2learn.algorithms.MetaSGD, the reference)",
    )
    hidden: list[Width] = Field(
        default_factory=lambda: [40, 40],
        min_length=1,
        max_length=16,
        description="hidden layer widths (Li et al., as Finn et al.: 40, 40)",
    )
    activation: Literal["relu", "tanh"] = "relu"
    inner_sgd_lr_low: float = Field(
        0.005,
        gt=0,
        le=10,
        description="the learned per-parameter inner SGD rates start uniform in [low, high] (Li et al.: 0.005)",
    )
    inner_sgd_lr_high: float = Field(
        0.1, gt=0, le=10, description="the upper end of the rates' starting range (Li et al.: 0.1)"
    )
    inner_steps: int = Field(
        1, ge=1, le=1000, description="inner SGD steps per task during meta-training (Li et al.: 1)"
    )
    first_order: bool = Field(
        False, description="drop the second-order terms of the meta-gradient (the rates are learned either way)"
    )
    meta_adam_lr: float = Field(
        0.001, gt=0, description="Adam learning rate of the outer loop, for the initialisation and the rates"
    )
    meta_batch: int = Field(25, ge=1, le=100_000, description="tasks per meta-iteration")
    shots: int = Field(
        10, ge=1, le=100_000, description="K: points for the inner step(s), and as many other points for the outer loss"
    )
    iterations: int = Field(70_000, ge=1, le=100_000_000, description="meta-iterations (MAML's budget)")
    task_batches: bool = Field(
        True, description="draw each meta-batch in one vectorised call when the task sampler can (as MAML's)"
    )
    compile: bool = Field(
        False, description="torch-func only: torch.compile the meta-gradient (same numbers, faster after a warm-up)"
    )

    @model_validator(mode="after")
    def _a_range(self) -> MetaSGDConfig:
        if self.inner_sgd_lr_low > self.inner_sgd_lr_high:
            raise ValueError(
                f"inner_sgd_lr_low ({self.inner_sgd_lr_low:g}) is above inner_sgd_lr_high "
                f"({self.inner_sgd_lr_high:g}); "
                "the rates start uniform in [low, high] (set both to one value to start every rate there)"
            )
        return self


class MetaSGDParameters(nn.Module):
    """What Meta-SGD meta-learns: ``network`` (the initialisation) and ``rates``, one tensor per parameter of the
    network.

    ``parameters()`` yields the network's parameters first, then the rates in the same order:
    the order both backends, the optimiser and the checkpoint use.
    """

    network: nn.Module
    rates: nn.ParameterList

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.rates = nn.ParameterList(nn.Parameter(torch.empty_like(p.detach())) for p in network.parameters())

    @torch.no_grad()
    def initialise_rates(self, low: float, high: float, generator: torch.Generator) -> MetaSGDParameters:
        """Every rate uniform in [low, high] (each entry one draw, in parameter order)."""
        for rate in self.rates:
            draw = torch.rand(rate.shape, generator=generator)
            rate.copy_(low + (high - low) * draw)
        return self

    @property
    def count(self) -> int:
        """How many tensors the network has (and how many rate tensors there are)."""
        return len(self.rates)


# -- torch.func ---------------------------------------------------------------------------------


def _task_loss(
    params: Params,
    rates: Params,
    x_inner: torch.Tensor,
    y_inner: torch.Tensor,
    x_outer: torch.Tensor,
    y_outer: torch.Tensor,
    *,
    loss_fn: LossFn,
    apply: Callable[[Params, torch.Tensor], torch.Tensor],
    inner_steps: int,
    first_order: bool,
) -> torch.Tensor:
    """One task's outer loss after ``inner_steps`` steps ``p - rate * grad`` on its inner points."""

    def inner_loss(p: Params) -> torch.Tensor:
        return loss_fn(apply(p, x_inner), y_inner)

    adapted = params
    for _ in range(inner_steps):
        gradients = grad(inner_loss)(adapted)
        if first_order:  # the rates still get their gradient: only the inner gradient's own graph is dropped
            gradients = tuple(g.detach() for g in gradients)
        adapted = tuple(p - r * g for p, r, g in zip(adapted, rates, gradients))
    return loss_fn(apply(adapted, x_outer), y_outer)


def _meta_loss(
    leaves: Params, batch: tuple[torch.Tensor, ...], *, count: int, task_loss: Callable[..., torch.Tensor]
) -> torch.Tensor:
    """Mean outer loss over a meta-batch's tasks; ``leaves`` are the network's ``count`` parameters, then their
    rates."""
    params, rates = tuple(leaves[:count]), tuple(leaves[count:])
    return vmap(task_loss, in_dims=(None, None, 0, 0, 0, 0))(params, rates, *batch).mean()


class TorchFuncMetaSGD(TorchFuncMAML):
    """MAML's torch-func backend with the rates as leaves beside the parameters: its meta-gradient,
    compile and compile fallback, only the loss differs."""

    name = "torch-func"

    def __init__(self, learned: MetaSGDParameters, config: MetaSGDConfig, loss_fn: LossFn) -> None:
        network = learned.network
        self.params = list(learned.parameters())  # the network's, then the rates
        apply: Callable[[Params, torch.Tensor], torch.Tensor]
        if isinstance(network, MetaNetwork):
            activation = network.architecture.activation

            def apply(params: Params, x: torch.Tensor) -> torch.Tensor:
                return forward(params, x, activation)
        else:
            apply = module_forward(network)
        task_loss = partial(
            _task_loss, loss_fn=loss_fn, apply=apply, inner_steps=config.inner_steps, first_order=config.first_order
        )
        self.meta_loss = meta_loss = partial(_meta_loss, count=learned.count, task_loss=task_loss)
        self._eager, self._gradient, self.compiled = meta_gradient_functions(meta_loss, config.compile, "meta-sgd")
        self._first_call = self.compiled


# -- learn2learn --------------------------------------------------------------------------------


class Learn2LearnMetaSGD:
    """Meta-gradients through ``learn2learn.algorithms.MetaSGD`` (its ``lrs`` are this baseline's rates, shared, not
    copied)."""

    name = "learn2learn"

    def __init__(self, learned: MetaSGDParameters, config: MetaSGDConfig, loss_fn: LossFn) -> None:
        try:
            learn2learn = import_learn2learn()
        except UserError as error:  # MAML's hint, naming this baseline's setting
            raise UserError(
                str(error).replace("maml:", "meta-sgd:", 1).replace("baselines.maml.", "baselines.meta-sgd.")
            ) from None
        self.meta_sgd = learn2learn.algorithms.MetaSGD(
            learned.network, lrs=learned.rates, first_order=config.first_order
        )
        self.params = list(learned.parameters())
        self.inner_steps = config.inner_steps
        self.loss_fn = loss_fn

    def meta_gradient(self, batch: MetaBatch) -> torch.Tensor:
        """The meta-loss of ``batch``; its gradient is left in each parameter's and rate's ``.grad``."""
        for param in self.params:
            param.grad = None
        total = torch.zeros((), device=batch.x_inner.device)
        for x_inner, y_inner, x_outer, y_outer in zip(*batch.as_tuple()):
            learner = self.meta_sgd.clone()
            for _ in range(self.inner_steps):
                learner.adapt(self.loss_fn(learner(x_inner), y_inner))
            outer = self.loss_fn(learner(x_outer), y_outer)
            outer.backward()
            total += outer.detach()
        for param in self.params:
            # a parameter the loss does not reach (none in an MLP): a zero gradient, as torch-func gives
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            param.grad.div_(batch.tasks)
        return total / batch.tasks


# -- the baseline -------------------------------------------------------------------------------


class MetaSGDBaseline(MAMLBaseline):
    """Meta-SGD: a meta-learned initialisation and per-parameter inner rates (see the module's docstring).

    MAML's meta-batches, training loop, progress and summary; its own parameters (network and
    rates), backends, divergence message, hand-out and checkpoint contents.
    """

    #: How a report names the rows adapted at the learned rates (``"Meta-SGD (learned rates)"``).
    own_rate_words = "learned rates"
    # MAML's options in a model of its own (no inner_sgd_lr: the rates are learned), not a MAMLConfig subclass;
    # MAMLBaseline reads only the options the two share.
    config: MetaSGDConfig  # type: ignore[assignment]

    def __init__(self, config: MetaSGDConfig, context: BuildContext) -> None:
        sampler = context.task_sampler
        shape: Any = getattr(sampler, "input_shape", None)
        self.images = shape is not None and len(tuple(shape)) > 1
        self.config = config
        self.seed = context.seed
        self.device = torch.device(context.device)
        self.task_sampler = sampler
        self.loss_fn = sampler.loss if sampler is not None else mean_squared_error
        self.shots = config.shots
        if self.images:
            if "shots" not in config.model_fields_set:
                self.shots = min(config.shots, sampler.max_shots)
            elif sampler.max_shots < config.shots:
                raise ComponentBuildError(
                    f"K = {config.shots} per class (baselines.meta-sgd.shots) but a task of this family holds only "
                    f"{sampler.max_shots} support images per class; set baselines.meta-sgd.shots to at most "
                    f"{sampler.max_shots}"
                )
            network = pool_network(context, tuple(shape))
        else:
            inputs, outputs = (sampler.input_size, sampler.output_size) if sampler is not None else (1, 1)
            architecture = Architecture((inputs, *config.hidden, outputs), config.activation)
            network = MetaNetwork(architecture).initialise(torch.Generator().manual_seed(context.seed))
        rates = torch.Generator().manual_seed(context.seed + RATE_SEED_OFFSET)
        self.learned = (
            MetaSGDParameters(network)
            .initialise_rates(config.inner_sgd_lr_low, config.inner_sgd_lr_high, rates)
            .to(self.device)
        )
        self.network = self.learned.network
        self.architecture = (
            ModuleArchitecture.of(self.network) if self.images else cast(MetaNetwork, self.network).architecture
        )
        self.backend = build_meta_sgd_backend(self.learned, config, self.loss_fn)
        self.optimizer = self._new_optimizer()
        self.iterations_done = 0

    def describe(self) -> str:
        """MAML's budget line, led by what Meta-SGD learns and how its rates start."""
        low, high = self.config.inner_sgd_lr_low, self.config.inner_sgd_lr_high
        start = f"uniform in [{low:g}, {high:g}]" if low != high else f"at {low:g}"
        head = f"Meta-SGD: initialisation and per-parameter inner SGD rates learned together (rates start {start})"
        return head + "; " + super().describe()

    def meta_train(self, tasks, progress: bool = True) -> dict[str, float]:
        """MAML's loop; the summary adds the learned rates' mean, range and share of negative ones."""
        summary = super().meta_train(tasks, progress)
        summary.update(rate_summary(self.learned.rates))
        return summary

    def _new_optimizer(self) -> torch.optim.Adam:
        return torch.optim.Adam(self.learned.parameters(), lr=self.config.meta_adam_lr, fused=True)

    def meta_step(self, batch: MetaBatch) -> float:
        """One meta-iteration: meta-gradient of the initialisation and the rates, then Adam."""
        loss = self.backend.meta_gradient(batch.to(self.device)).item()
        if not math.isfinite(loss):
            raise UserError(
                f"meta-sgd: meta-training diverged at iteration {self.iterations_done + 1} (meta-loss {loss}); "
                "lower baselines.meta-sgd.meta_adam_lr (the outer Adam rate) or baselines.meta-sgd.inner_sgd_lr_high "
                "(where the learned inner rates start)"
            )
        self.optimizer.step()
        self.iterations_done += 1
        return loss

    def rates(self) -> list[torch.Tensor]:
        """Copies of the learned rates, in ``network.parameters()`` order."""
        return [rate.detach().clone() for rate in self.learned.rates]

    def adapted_network_for(self, task: Task, shots: int) -> tuple[nn.Module, OwnAdaptation]:
        """The initialisation (as :meth:`network_for`) and its learned rates, for every step count of the protocol."""
        return self.network_for(task, shots), OwnAdaptation(lr=self.rates(), steps=None)

    def network_for(self, task: Task, shots: int) -> nn.Module:
        """A fresh copy of the meta-learned initialisation (the protocol fine-tunes it at its fixed rate)."""
        if self.images:
            return copy.deepcopy(self.network)
        return super().network_for(task, shots)

    def save(self, directory: Path) -> None:
        """The network and the rates in MAML's checkpoint files, as one module (``network.*``, ``rates.*``)."""
        parameters = {name: tensor.detach().cpu() for name, tensor in self.learned.state_dict().items()}
        save_checkpoint(
            Path(directory),
            Checkpoint(
                parameters,
                ModuleArchitecture.of(self.learned),
                self.config.model_dump(mode="json"),
                self.iterations_done,
            ),
        )

    def load(self, directory: Path) -> None:
        """Restore a saved initialisation and rates; meta-training after a load starts a fresh Adam state."""
        checkpoint = load_checkpoint(Path(directory), ModuleArchitecture.of(self.learned))
        if not self.images:
            saved = checkpoint.config.get("activation")
            if saved != self.config.activation:
                raise CheckpointError(
                    f"{Path(directory) / METADATA}: holds a {saved} network but this baseline is configured for "
                    f"{self.config.activation}"
                )
        with torch.no_grad():
            for name, tensor in self.learned.state_dict().items():  # state_dict tensors share the module's storage
                tensor.copy_(checkpoint.parameters[name])
        self.iterations_done = checkpoint.iterations
        self.optimizer = self._new_optimizer()


def build_meta_sgd_backend(
    learned: MetaSGDParameters, config: MetaSGDConfig, loss_fn: LossFn
) -> TorchFuncMetaSGD | Learn2LearnMetaSGD:
    """The configured backend; learn2learn is imported only when it is the one asked for."""
    if config.backend == "learn2learn":
        return Learn2LearnMetaSGD(learned, config, loss_fn)
    return TorchFuncMetaSGD(learned, config, loss_fn)


def rate_summary(rates: Iterable[torch.Tensor]) -> dict[str, float]:
    """Mean, smallest and largest learned rate, and the share of negative ones: what a summary reports of them."""
    flat = torch.cat([rate.detach().reshape(-1).cpu() for rate in rates])
    return {
        "rate_mean": float(flat.mean()),
        "rate_min": float(flat.min()),
        "rate_max": float(flat.max()),
        "negative_rate_fraction": float((flat < 0).double().mean()),
    }
