"""The MAML baseline: meta-train an initialisation on the task stream, hand out copies of it.

The training loop (task batches, Adam on the meta-gradient, progress, summary) is shared; the
backend only computes the meta-gradient, so the two backends differ in nothing else. When the
run's task sampler is a :class:`BatchedTaskSampler`, each meta-batch comes from one vectorised
draw (``train_batches(run seed, meta_batch)``) instead of ``meta_batch`` tasks taken one by one.

Two kinds of task family. A family with flat inputs (sine) gets the configured MLP
(:class:`MetaNetwork`, ``hidden``/``activation``) and K-point meta-batches. An image family (a
task sampler whose ``input_shape`` has more than one dimension) gets the very architecture REML
composes, ``context.pool.fresh_network(context.depth, generator seeded by the run seed)``, and
K-per-class meta-batches (:func:`stack_classification_tasks`); the loss is the sampler's and the
classes come from ``task.ways``, so nothing here is specific to any one family or pool.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from reml_core.errors import ComponentBuildError, UserError
from reml_core.inner_loop import mean_squared_error
from reml_core.interfaces import BatchedTaskSampler, BuildContext, LossFn, Task, TaskSampler
from reml_plugins.maml.batches import (
    MetaBatch,
    check_training_points,
    draw_batch,
    from_task_batch,
    stack_classification_tasks,
)
from reml_plugins.maml.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from reml_plugins.maml.config import MAMLConfig
from reml_plugins.maml.network import Architecture, MetaNetwork, ModuleArchitecture

SUMMARY_WINDOW = 100  # meta-iterations averaged for the initial and final meta-loss
PROGRESS_EVERY = 50  # meta-iterations between progress-bar refreshes


class MetaGradientBackend(Protocol):
    """Computes a meta-batch's meta-loss and leaves its gradient in the network parameters' ``.grad``."""

    name: str

    def meta_gradient(self, batch: MetaBatch) -> torch.Tensor: ...


def build_backend(network: nn.Module, config: MAMLConfig, loss_fn: LossFn) -> MetaGradientBackend:
    """The configured backend; learn2learn is imported only when it is the one asked for."""
    if config.backend == "learn2learn":
        from reml_plugins.maml.l2l import Learn2LearnMAML  # noqa: PLC0415 - lazy: import cycle: reml_plugins.maml.l2l imports this module

        return Learn2LearnMAML(network, config, loss_fn)
    from reml_plugins.maml.torch_func import TorchFuncMAML  # noqa: PLC0415 - lazy: import cycle: reml_plugins.maml.torch_func imports this module

    return TorchFuncMAML(network, config, loss_fn)


def run_meta_iterations(
    batches: Iterator[Any], step: Callable[[Any], float], iterations: int, label: str, progress: bool
) -> dict[str, float]:
    """The meta-training loop of MAML and the baselines built on its machinery: ``iterations`` times, the next batch
    and one ``step`` on it (which returns the meta-loss), under a progress bar on stderr (``label``; none unless
    ``progress``). Returns the summary numbers every such baseline reports."""
    losses: list[float] = []
    task_seconds = 0.0
    bar = tqdm(total=iterations, desc=label, disable=None if progress else True, leave=False)
    start = time.perf_counter()
    try:
        for iteration in range(iterations):
            drawn = time.perf_counter()
            batch = next(batches)
            task_seconds += time.perf_counter() - drawn
            losses.append(step(batch))
            if (iteration + 1) % PROGRESS_EVERY == 0:
                bar.update(PROGRESS_EVERY)
                bar.set_postfix(meta_loss=f"{sum(losses[-PROGRESS_EVERY:]) / PROGRESS_EVERY:.3f}", refresh=False)
        bar.update(iterations - bar.n)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    window = min(SUMMARY_WINDOW, len(losses))
    return {
        "iterations": float(len(losses)),
        "seconds": seconds,
        "iterations_per_s": len(losses) / seconds,
        "task_seconds": task_seconds,
        "initial_meta_loss": sum(losses[:window]) / window,
        "final_meta_loss": sum(losses[-window:]) / window,
    }


class MAMLBaseline:
    """Model-Agnostic Meta-Learning (Finn et al. 2017); see :class:`reml_core.interfaces.Baseline`."""

    def __init__(self, config: MAMLConfig, context: BuildContext) -> None:
        sampler = context.task_sampler
        shape: Any = getattr(sampler, "input_shape", None)
        self.images = shape is not None and len(tuple(shape)) > 1
        self.config = config
        self.seed = context.seed
        self.device = torch.device(context.device)
        self.task_sampler: TaskSampler | None = sampler
        self.loss_fn: LossFn = sampler.loss if sampler is not None else mean_squared_error
        self.architecture: Architecture | ModuleArchitecture
        self.network: nn.Module
        self.shots = config.shots  # K of the meta-batches
        if self.images:
            # K per class: the inner side is the K-shot support set. Sine's default K (10) rarely fits an
            # image family (digits holds 5 per class): left unset, K is the largest the family holds.
            if "shots" not in config.model_fields_set:
                self.shots = min(config.shots, sampler.max_shots)
            elif sampler.max_shots < config.shots:
                raise ComponentBuildError(
                    f"K = {config.shots} per class (baselines.maml.shots) but a task of this family holds only "
                    f"{sampler.max_shots} support images per class; set baselines.maml.shots to at most "
                    f"{sampler.max_shots}"
                )
            self.network = pool_network(context, tuple(shape))
            self.architecture = ModuleArchitecture.of(self.network)
        else:
            inputs, outputs = (sampler.input_size, sampler.output_size) if sampler is not None else (1, 1)
            self.architecture = Architecture((inputs, *config.hidden, outputs), config.activation)
            self.network = (
                MetaNetwork(self.architecture).initialise(torch.Generator().manual_seed(context.seed)).to(self.device)
            )
        self.backend = build_backend(self.network, config, self.loss_fn)
        self.optimizer = self._new_optimizer()
        self.iterations_done = 0

    def describe(self) -> str:
        """The budget a report shows: the options that apply to this family, with the K and network used
        (an image family's network is the pool's, so ``hidden``/``activation`` do not apply to it)."""
        options = self.config.model_dump(mode="json")
        options["shots"] = self.shots
        if not isinstance(self.architecture, Architecture):
            options.pop("hidden"), options.pop("activation")
        options["network"] = self.architecture.describe()
        return ", ".join(f"{key}={value}" for key, value in options.items())

    def _new_optimizer(self) -> torch.optim.Adam:
        return torch.optim.Adam(self.network.parameters(), lr=self.config.meta_adam_lr, fused=True)

    def uses_task_batches(self) -> bool:
        """Whether meta-batches come from the sampler's ``train_batches`` (it has one, and ``task_batches`` is on)."""
        return self._batched_sampler() is not None

    def _batched_sampler(self) -> BatchedTaskSampler | None:
        """The sampler, when meta-batches come from its ``train_batches``; else None."""
        if self.config.task_batches and isinstance(self.task_sampler, BatchedTaskSampler):
            return self.task_sampler
        return None

    def meta_batches(self, tasks: Iterator[Task]) -> Iterator[MetaBatch]:
        """The meta-batches ``meta_train`` trains on, from the sampler's batched stream or else from ``tasks``.

        The batched stream is ``train_batches(seed, meta_batch)`` with the run's seed
        (``BuildContext.seed``), started afresh, as the core hands ``meta_train`` a fresh
        ``train_stream(seed)``; ``tasks`` is then not read.
        """
        config = self.config
        batched = self._batched_sampler()
        if self.images:  # K per class: support set inside, K training points per class outside
            if batched is not None:
                batches = batched.train_batches(self.seed, config.meta_batch)
                return (stack_classification_tasks(batch.tasks(), self.shots) for batch in batches)
            return (
                draw_batch(tasks, config.meta_batch, self.shots, stack_classification_tasks)
                for _ in itertools.repeat(None)
            )
        if batched is not None:
            sampler = cast(TaskSampler, batched)  # a TaskSampler that also draws batches
            check_training_points(config.shots, sampler.train_points, "a task of this sampler")
            return (
                from_task_batch(batch, config.shots) for batch in batched.train_batches(self.seed, config.meta_batch)
            )
        return (draw_batch(tasks, config.meta_batch, config.shots) for _ in itertools.repeat(None))

    def meta_train(self, tasks: Iterator[Task], progress: bool = True) -> dict[str, float]:
        """Run ``config.iterations`` meta-iterations; return summary numbers.

        Tasks come from ``tasks`` (the run's training stream), unless the task sampler can draw
        whole batches (see :meth:`meta_batches`): then from its ``train_batches`` with the run's seed.
        """
        config = self.config
        summary = run_meta_iterations(
            self.meta_batches(tasks), self.meta_step, config.iterations, f"maml ({config.backend})", progress
        )
        summary["task_batches"] = float(self.uses_task_batches())
        return summary

    def meta_step(self, batch: MetaBatch) -> float:
        """One meta-iteration on a ready batch: meta-gradient, then Adam. Returns the meta-loss before the step."""
        loss = self.backend.meta_gradient(batch.to(self.device)).item()
        if not math.isfinite(loss):
            raise UserError(
                f"maml: meta-training diverged at iteration {self.iterations_done + 1} (meta-loss {loss}); "
                "lower baselines.maml.meta_adam_lr (the outer Adam rate) or baselines.maml.inner_sgd_lr (the inner SGD "
                "step)"
            )
        self.optimizer.step()
        self.iterations_done += 1
        return loss

    def network_for(self, task: Task, shots: int) -> nn.Module:
        """A fresh copy of the meta-learned initialisation (the same for every task and K).

        On the image path it is a deep copy of the pool-built network: the pool's own architecture.
        """
        if self.images:
            return copy.deepcopy(self.network)
        network = MetaNetwork(cast(Architecture, self.architecture)).to(self.device)  # flat inputs: an MLP
        with torch.no_grad():
            for target, source in zip(network.parameters(), self.network.parameters()):
                target.copy_(source)
        return network

    def save(self, directory: Path) -> None:
        if self.images:
            parameters = {name: tensor.cpu() for name, tensor in self.network.state_dict().items()}
        else:
            parameters = {name: param.detach().cpu() for name, param in self.network.named_parameters()}
        config = self.config.model_dump(mode="json")
        save_checkpoint(Path(directory), Checkpoint(parameters, self.architecture, config, self.iterations_done))

    def load(self, directory: Path) -> None:
        """Restore a saved initialisation; meta-training after a load starts a fresh Adam state."""
        checkpoint = load_checkpoint(Path(directory), self.architecture)
        with torch.no_grad():
            if self.images:
                for name, tensor in self.network.state_dict().items():  # state_dict tensors share the module's storage
                    tensor.copy_(checkpoint.parameters[name])
            else:
                for name, param in self.network.named_parameters():
                    param.copy_(checkpoint.parameters[name])
        self.iterations_done = checkpoint.iterations
        self.optimizer = self._new_optimizer()


def pool_network(context: BuildContext, shape: tuple[int, ...]) -> nn.Module:
    """The image path's initial network: the architecture REML composes, from the run's layer pool, seeded by the run
    seed."""
    pool = context.pool
    if pool is None or not callable(getattr(pool, "fresh_network", None)):
        raise ComponentBuildError(
            "the maml baseline meta-learns the layer pool's architecture on an image family (inputs of shape "
            f"{shape}), "
            "but it was built without a layer pool that has fresh_network(depth, generator)"
        )
    network = pool.fresh_network(context.depth, torch.Generator().manual_seed(context.seed))
    if not isinstance(network, nn.Module) or not any(True for _ in network.parameters()):
        raise ComponentBuildError(
            "the maml baseline needs an nn.Module with parameters from pool.fresh_network; got "
            f"{type(network).__name__}"
        )
    network = network.to(torch.device(context.device))  # a pool that ignores the device still trains there
    for param in network.parameters():
        param.requires_grad_(True)
    return network
