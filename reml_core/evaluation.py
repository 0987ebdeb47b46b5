"""The few-shot protocol of Finn et al. (2017), the same for every method.

A method is anything that hands out a starting network for a task and a K: REML by a policy
rollout over its pool, MAML from its meta-learned initialisation, scratch from a fresh init.
The evaluator fine-tunes each with plain SGD on the K support points (the same K points at every
step) and measures the query loss (the family's: MSE for regression, cross-entropy for
classification) after the requested numbers of steps, and any metrics the family defines (e.g.
accuracy). It never sees how a network was made, and it works on the network it is given, never
on a method's own state.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from reml_core.device import module_device, task_on
from reml_core.inner_loop import evaluate_loss, finetune_sgd, train_adam
from reml_core.interfaces import ChoosesInProcesses, LossFn, MetricsFn, OwnAdaptation, Task

NetworkProvider = Callable[[Task, int], nn.Module]
#: A method that hands out many tasks' networks at once (``networks_for``, :class:`ChoosesForMany`).
ManyProvider = Callable[[Sequence[Task], int], Sequence[nn.Module]]
#: Tasks per :class:`ManyProvider` call: a batch of rollouts as large as the default vector env's (``train.n_envs``),
#: whose stacked measurements meta-training already holds in memory.
CHOOSE_CHUNK = 128


#: A method that adapts its networks its own way: ``(task, K) -> (network, adaptation)``.
AdaptedProvider = Callable[[Task, int], tuple[nn.Module, OwnAdaptation]]
#: The suffix of a results key (and label) whose rows were adapted at the method's own rate,
#: e.g. ``"meta-sgd" + OWN_RATE_SUFFIX``; the key without it holds the protocol's fixed-rate rows.
OWN_RATE_SUFFIX = "@own-rate"


def _mean_ci(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0 or not np.isfinite(array).all():
        return math.nan, math.nan
    ci = 1.96 * array.std(ddof=1) / math.sqrt(array.size) if array.size > 1 else math.nan
    return float(array.mean()), float(ci)


@dataclass(frozen=True)
class Cell:
    """Query loss over the test tasks for one (K, steps): mean and 95% CI half-width.

    ``mse_*`` holds the family's loss (MSE for regression; the name is the schema's). A task whose
    fine-tuning diverged (a non-finite loss) is left out of the mean and CI, which are over the
    tasks that did not diverge, and counted in ``nan_tasks``: reports show the count beside the mean
    and never rank a cell with diverged tasks first in its column. Only a cell where every task
    diverged has a NaN mean. ``metrics`` maps each of the family's metrics to its (mean, 95% CI
    half-width) over the tasks that did not diverge.
    """

    mse_mean: float
    mse_ci95: float
    nan_tasks: int
    tasks: int
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def from_losses(cls, losses: Sequence[float], metrics: Mapping[str, Sequence[float]] | None = None) -> Cell:
        values = np.asarray(losses, dtype=np.float64)
        finite = np.isfinite(values)
        nan_tasks = int((~finite).sum())
        measured = {}
        for name, series in (metrics or {}).items():
            array = np.asarray(series, dtype=np.float64)
            measured[name] = _mean_ci(array[finite] if array.shape == values.shape else array)
        mean, ci = _mean_ci(values[finite])
        return cls(mean, ci, nan_tasks, int(values.size), measured)


FewShotTable = dict[int, dict[int, Cell]]  # K -> steps -> cell

#: The trivial references a report shows beside the methods: what predictions that learn nothing score
#: on the same test tasks and support points. Keys of :func:`trivial_references`.
PREDICT_ZERO = "predict zero"
SUPPORT_MEAN = "support mean"


def trivial_references(
    tasks: Sequence[Task], loss_fn: LossFn, shots: Sequence[int], output_size: int, metrics_fn: MetricsFn | None = None
) -> dict[str, FewShotTable]:
    """The query loss (and the family's metrics) of two predictors that learn nothing, per K, on
    ``tasks``, as a table with one column (0 steps: nothing is fine-tuned).

    ``predict zero``: every query prediction 0 (for classification, equal scores for every class:
    chance). ``support mean``: the mean of the K support targets (regression only: targets that are
    numbers). A method's number means something only next to these; neither consumes any randomness.
    """
    references: dict[str, dict[int, Cell]] = {PREDICT_ZERO: {}, SUPPORT_MEAN: {}}
    for k in sorted(shots):
        losses: dict[str, list[float]] = {PREDICT_ZERO: [], SUPPORT_MEAN: []}
        metrics: dict[str, dict[str, list[float]]] = {PREDICT_ZERO: {}, SUPPORT_MEAN: {}}
        for task in tasks:
            _, y_support = task.support(k)
            target = task.y_query
            numeric = target.is_floating_point()
            zero = torch.zeros_like(target) if numeric else torch.zeros(len(target), output_size)
            predictions = {PREDICT_ZERO: zero}
            if numeric:
                predictions[SUPPORT_MEAN] = y_support.to(target.dtype).mean(dim=0, keepdim=True).expand_as(target)
            with torch.no_grad():
                for name, prediction in predictions.items():
                    losses[name].append(float(loss_fn(prediction, target)))
                    for metric, value in (metrics_fn(prediction, target) if metrics_fn is not None else {}).items():
                        metrics[name].setdefault(metric, []).append(float(value))
        for name, values in losses.items():
            if values:
                references[name][k] = Cell.from_losses(values, metrics[name])
    return {name: {k: {0: cell} for k, cell in cells.items()} for name, cells in references.items() if cells}


#: With several processes, the networks handed out are fine-tuned in one go (one fork) until their parameters
#: reach this many elements (128 MiB of float32), so that a family of large networks does not hold them all.
PENDING_ELEMENTS = 1 << 25


def _parameter_count(network: Any) -> int:
    parameters = getattr(network, "parameters", None)
    return sum(p.numel() for p in parameters()) if callable(parameters) else 0


class FewShotEvaluator:
    """Fine-tune every method the same way on the same held-out tasks and support points."""

    def __init__(
        self,
        tasks: Sequence[Task],
        loss_fn: LossFn,
        *,
        shots: Sequence[int],
        steps: Sequence[int],
        lr: float,
        curve_steps: int = 0,
        curve_lr: float = 0.005,
        curve_tasks: int | None = None,
        progress: bool = False,
        metrics_fn: MetricsFn | None = None,
    ) -> None:
        self.tasks = list(tasks)
        self.loss_fn = loss_fn
        self.metrics_fn = metrics_fn
        self.shots = sorted(shots)
        self.steps = sorted(steps)
        self.lr = lr
        self.curve_steps = curve_steps
        self.curve_lr = curve_lr
        self.curve_tasks = self.tasks[: curve_tasks or len(self.tasks)]
        self.progress = progress
        #: Seconds each method (by label) spent handing out its networks in :meth:`few_shot`.
        self.choosing_seconds: dict[str, float] = {}

    def few_shot(
        self,
        provider: NetworkProvider | AdaptedProvider,
        label: str = "",
        *,
        own: bool = False,
        many: ManyProvider | None = None,
        processes: int = 1,
        forkable: ChoosesInProcesses | None = None,
    ) -> FewShotTable:
        """Query MSE after each number of SGD steps, for each K, over all tasks.

        With ``own=True`` the provider returns ``(network, OwnAdaptation)`` and each network is
        adapted at its own rate (see :class:`OwnAdaptation`); a chosen number of steps ``s`` puts
        the task in column ``s`` only (a task whose ``s`` is not one of the protocol's step counts
        is measured nowhere but at 0 steps).

        ``many`` (a method's ``networks_for``, :class:`~reml_core.interfaces.ChoosesForMany`) hands out the
        networks of :data:`CHOOSE_CHUNK` tasks at a time instead of ``provider``'s one by one; every network is
        fine-tuned and measured the same way. The seconds spent obtaining the networks (the method's test-time
        cost of choosing them, apart from the protocol's fine-tuning) add up in :attr:`choosing_seconds` under
        ``label``.

        ``processes`` > 1 fine-tunes and measures the networks of each chunk in that many processes
        (:func:`reml_core.workers.fork_map`: consecutive shares of the chunk, the networks handed out here first,
        as one process does, and inherited by the forked processes), the measurements put back in task order:
        the fine-tuning of one network reads nothing but it and its task, so every number is the one
        process's, bit for bit. ``forkable`` (the method behind ``many``, when it is
        :class:`~reml_core.interfaces.ChoosesInProcesses`): the processes take whole chunks (K, 128 tasks),
        choosing their networks too, and what choosing counted in the method is added back here; the
        choosing seconds are then the processes' sum.
        """
        from reml_core.workers import chunks, fork_map  # noqa: PLC0415 - lazy: start-up time: reml_core.workers imports the settings' models

        spent = 0.0
        batched = many is not None and not own
        size = CHOOSE_CHUNK if batched or processes > 1 else 1
        measured: dict[int, list[dict[int, tuple[float, dict[str, float]]]]] = {shots: [] for shots in self.shots}
        pending: list[tuple[int, Task, Any]] = []  # (K, task, what the method handed out), not yet measured
        elements = 0  # the parameters of the pending networks
        bar = tqdm(
            total=len(self.shots) * len(self.tasks),
            desc=f"eval {label}".rstrip(),
            disable=None if self.progress else True,
            leave=False,
        )

        def flush() -> None:
            shares = chunks(len(pending), processes) if processes > 1 else [range(len(pending))]
            adapted = fork_map(partial(self._measure_share, list(pending), own), shares, what="evaluation")
            for (shots, _, _), result in zip(pending, (result for share in adapted for result in share)):
                measured[shots].append(result)
            bar.update(len(pending))
            pending.clear()

        def hand_out(shots: int, chunk: list[Task]) -> tuple[list[Any], float]:
            start = time.perf_counter()
            handed: list[Any]
            if batched:
                handed = list(cast("ManyProvider", many)(chunk, shots))
                if len(handed) != len(chunk):
                    raise RuntimeError(
                        f"{label or 'a method'} handed out {len(handed)} networks for {len(chunk)} tasks"
                    )
            else:
                handed = [provider(task, shots) for task in chunk]
            return handed, time.perf_counter() - start

        parent = os.getpid()

        def choose_and_measure(share: list[tuple[int, int]]) -> tuple[list[Any], dict[str, int]]:
            """Whole chunks, chosen and measured (in a forked process: and what choosing them counted)."""
            assert forkable is not None
            before = forkable.choice_counts() or {}
            done = []
            for shots, first in share:
                chunk = self.tasks[first : first + size]
                handed, seconds = hand_out(shots, chunk)
                pieces = [(shots, task, given) for task, given in zip(chunk, handed)]
                done.append((shots, self._measure_share(pieces, own, range(len(pieces))), seconds))
                if os.getpid() == parent:
                    bar.update(len(chunk))
            after = forkable.choice_counts() or {}
            return done, {key: value - before.get(key, 0) for key, value in after.items()}

        whole = processes > 1 and batched and forkable is not None and forkable.choice_counts() is not None
        with bar:
            if whole:  # whole chunks in each process: choosing them too is shared
                assert forkable is not None
                chunked = [(shots, first) for shots in self.shots for first in range(0, len(self.tasks), size)]
                shares = [chunked[r.start : r.stop] for r in chunks(len(chunked), processes)]
                for index, (done, counts) in enumerate(fork_map(choose_and_measure, shares, what="evaluation")):
                    if index:
                        forkable.add_choice_counts(counts)
                    for shots, results, seconds in done:
                        measured[shots].extend(results)
                        spent += seconds
                bar.update(bar.total - bar.n)
            else:  # the networks handed out here, their fine-tuning shared
                for shots in self.shots:
                    for first in range(0, len(self.tasks), size):
                        chunk = self.tasks[first : first + size]
                        handed, seconds = hand_out(shots, chunk)
                        spent += seconds
                        pending.extend((shots, task, given) for task, given in zip(chunk, handed))
                        if processes > 1:  # measured in one go per fork (a fork costs tens of ms), memory allowing
                            elements += sum(_parameter_count(given[0] if own else given) for given in handed)
                        if processes == 1 or elements >= PENDING_ELEMENTS:
                            flush()
                            elements = 0
                if pending:
                    flush()
        table: FewShotTable = {}
        for shots, results in measured.items():
            losses: dict[int, list[float]] = {s: [] for s in self.steps}
            metrics: dict[int, dict[str, list[float]]] = {s: {} for s in self.steps}
            for result in results:
                for step, (loss, values) in result.items():
                    losses[step].append(loss)
                    for name, value in values.items():
                        metrics[step].setdefault(name, []).append(value)
            table[shots] = {step: Cell.from_losses(values, metrics[step]) for step, values in losses.items() if values}
        self.choosing_seconds[label] = self.choosing_seconds.get(label, 0.0) + spent
        return table

    def _measure_share(
        self, pending: Sequence[tuple[int, Task, Any]], own: bool, positions: range
    ) -> list[dict[int, tuple[float, dict[str, float]]]]:
        """:meth:`measured_adaptation` of the pending (K, task, handed-out network) at ``positions`` (``own``: each
        network with its own rate)."""
        adapted = []
        for i in positions:
            shots, task, given = pending[i]
            if own:
                network, adaptation = given
                adapted.append(self.measured_adaptation(network, task, shots, adaptation=adaptation))
            else:
                adapted.append(self.measured_adaptation(given, task, shots))
        return adapted

    def adaptation(self, network: nn.Module, task: Task, shots: int) -> dict[int, float]:
        """Query loss after each requested number of SGD steps on the task's K support points."""
        return {step: loss for step, (loss, _) in self.measured_adaptation(network, task, shots).items()}

    def measured_adaptation(
        self, network: nn.Module, task: Task, shots: int, *, adaptation: OwnAdaptation | None = None
    ) -> dict[int, tuple[float, dict[str, float]]]:
        """Query loss and the family's metrics after each requested number of SGD steps on the K support points.

        ``adaptation``: the method's own rate (and chosen steps) instead of the protocol's rate; with
        chosen steps ``s`` only 0 and ``s`` (if it is one of the protocol's step counts) are measured.
        """
        task = task_on(task, module_device(network))
        x_support, y_support = task.support(shots)
        recorded: dict[int, tuple[float, dict[str, float]]] = {}
        lr = self.lr if adaptation is None else adaptation.lr
        wanted = set(self.steps)
        if adaptation is not None and adaptation.steps is not None:
            wanted = {0} | ({adaptation.steps} & wanted)
        last = max(wanted)

        def record(step: int) -> None:
            if step not in wanted:
                return
            if self.metrics_fn is None:
                recorded[step] = (evaluate_loss(network, task.x_query, task.y_query, self.loss_fn), {})
                return
            with torch.no_grad():
                prediction = network(task.x_query)
                recorded[step] = (
                    float(self.loss_fn(prediction, task.y_query)),
                    {name: float(value) for name, value in self.metrics_fn(prediction, task.y_query).items()},
                )

        record(0)
        finished = finetune_sgd(network, x_support, y_support, self.loss_fn, steps=last, lr=lr, callback=record)
        if not finished:
            for step in wanted:
                recorded.setdefault(step, (math.nan, {}))
        return {step: recorded[step] for step in self.steps if step in wanted}

    def curve(self, provider: NetworkProvider, label: str = "", *, processes: int = 1) -> list[float]:
        """Mean query MSE after each of 0..curve_steps full-batch Adam steps on each task's training data.

        ``processes`` > 1: the networks are handed out here, task by task, and their Adam training is shared by
        that many processes as :meth:`few_shot` shares its fine-tuning (every number the one process's)."""
        from reml_core.workers import chunks, fork_map  # noqa: PLC0415 - lazy: start-up time: reml_core.workers imports the settings' models

        if self.curve_steps == 0:
            return []
        shots = self.shots[-1]
        totals = np.zeros(self.curve_steps + 1)
        size = CHOOSE_CHUNK if processes > 1 else 1
        bar = tqdm(
            total=len(self.curve_tasks), desc=f"curve {label}", disable=None if self.progress else True, leave=False
        )
        with bar:
            for first in range(0, len(self.curve_tasks), size):
                chunk = self.curve_tasks[first : first + size]
                networks = [provider(task, shots) for task in chunk]

                shares = chunks(len(chunk), processes) if processes > 1 else [range(len(chunk))]
                train = partial(self._curve_share, chunk, networks)
                for share in fork_map(train, shares, what="evaluation"):
                    for losses in share:
                        totals += losses
                bar.update(len(chunk))
        return [float(v) for v in totals / len(self.curve_tasks)]

    def _curve_share(self, tasks: Sequence[Task], networks: Sequence[nn.Module], positions: range) -> list[np.ndarray]:
        return [self._curve_losses(networks[i], tasks[i]) for i in positions]

    def _curve_losses(self, network: nn.Module, task: Task) -> np.ndarray:
        """The query loss of ``network`` after each of 0..curve_steps Adam steps on the task's training data."""
        task = task_on(task, module_device(network))
        losses = np.full(self.curve_steps + 1, math.nan)

        def record(step: int) -> None:
            losses[step] = evaluate_loss(network, task.x_query, task.y_query, self.loss_fn)

        record(0)
        train_adam(
            network,
            task.x_train,
            task.y_train,
            self.loss_fn,
            steps=self.curve_steps,
            lr=self.curve_lr,
            batch_size=len(task.x_train),
            callback=record,
        )
        return losses
