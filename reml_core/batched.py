"""The end of composition episodes: measure, train and write back finished networks, one or many at once.

When an episode's network is complete it is fine-tuned on the K support points (if the reward
needs that loss), trained with Adam on the task's training data and evaluated, and in ``train``
mode its trained layers are written back into the pool. :func:`end_episodes` does this for the
networks of every episode that finished on the same environment step:

- all of them are built from the pool as it is at that moment (none sees another's write-back);
- with a pool that has the :class:`~reml_core.interfaces.BatchedLayerPool` capability, networks
  of one shape are trained as one stacked computation; otherwise (or for a lone network) one by
  one with :mod:`reml_core.inner_loop`'s single-network functions. The two draw the same
  minibatches and fault alike exactly; their composed and fine-tuned losses agree within
  rounding, their Adam-trained losses and pool within Adam's reach (2 x lr x steps), typically
  within rounding and on this project's AMD CPU bit for bit: which BLAS kernel a batched and a
  single product get is the CPU's (``tests/test_batched_pool.py``, docs/performance.md);
- the write-backs happen in the order the episodes are listed (the vector env's env-index order),
  skipping every network that faulted (a non-finite loss or parameter): only that one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from reml_core.choices import apply_choices, has_plugin_choice, settings_for
from reml_core.device import module_device, task_on
from reml_core.inner_loop import (
    LossFn,
    batched_loss,
    evaluate_loss,
    evaluate_loss_batch,
    finetune_sgd,
    finetune_sgd_batch,
    train_adam,
    train_adam_batch,
)
from reml_core.interfaces import BatchedLayerPool, LayerPool, Task
from reml_core.settings import EnvConfig

# Networks stacked per computation at most: beyond about 32 of the thesis-scale networks (1-40-40-40-40-1,
# 100 points) their activations outgrow the CPU cache and each costs more (docs/performance.md).
MAX_BATCH = 32


@dataclass(frozen=True)
class EpisodeEnd:
    """A complete network waiting for the end of its episode: its layers, task, K and minibatch seed."""

    task: Task
    indices: tuple[int, ...]  # pool indices in network order
    shots: int
    minibatch_seed: int
    #: The hyperparameters the policy chose for this episode, as (name, value) pairs (``env.choose``;
    #: empty without it): built-in ones set the episode's settings, a plugin's is applied to its network.
    choices: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class EpisodeOutcome:
    """The losses measured at the end of an episode (NaN where the network faulted) and whether it faulted."""

    losses: dict[str, float]
    fault: bool


@dataclass(frozen=True)
class MeasureRequest:
    """An incomplete network (pool indices in network order) and the support points it is measured on."""

    indices: tuple[int, ...]
    x: torch.Tensor
    y: torch.Tensor


def measure_networks(
    pool: LayerPool, requests: Sequence[MeasureRequest], loss_fn: LossFn, *, batched: bool = True
) -> list[tuple[float, float]]:
    """(loss, prediction scale) of each network on its points; the scale is the predictions' std.

    Networks of one depth and data shape are measured as one stacked forward pass when the pool
    has the BatchedLayerPool capability; a lone one exactly as a single environment measures it.
    """
    results: list[tuple[float, float] | None] = [None] * len(requests)
    use_batches = batched and isinstance(pool, BatchedLayerPool)
    with torch.no_grad():
        for members, indices, x, y in stacked_requests(requests):
            if len(members) == 1 or not use_batches:
                for i in members:
                    request = requests[i]
                    network = pool.build(list(request.indices))
                    device = module_device(network)
                    prediction = network(request.x.to(device))
                    loss = float(loss_fn(prediction, request.y.to(device)))
                    scale = (
                        float(prediction.std(unbiased=False))
                        if prediction.numel() > 1
                        else float(prediction.abs().mean())
                    )
                    results[i] = (loss, scale)
                continue
            network = pool.build_batch(indices)  # type: ignore[attr-defined]
            device = module_device(network)
            prediction = network(x.to(device))
            losses = batched_loss(loss_fn)(prediction, y.to(device)).tolist()
            flat = prediction.flatten(1)
            scales = (flat.std(dim=1, correction=0) if flat.shape[1] > 1 else flat.abs().mean(1)).tolist()
            for row, i in enumerate(members):
                results[i] = (losses[row], scales[row])
    return results  # type: ignore[return-value]


#: Networks fine-tuned in one stacked computation at most by :func:`support_losses` (bounds its memory).
SUPPORT_ROWS = 2048


def support_losses(
    pool: LayerPool,
    requests: Sequence[MeasureRequest],
    loss_fn: LossFn,
    *,
    steps: int = 0,
    lr: float = 0.0,
    batched: bool = True,
    max_rows: int = SUPPORT_ROWS,
) -> list[float]:
    """Each network's loss on its own points after ``steps`` plain SGD steps at ``lr`` on them (0: as composed);
    ``inf`` for one that went non-finite. The pool is never changed (networks are copies of its layers).

    On a batched pool the networks of one depth and data shape are fine-tuned as stacked computations
    of at most ``max_rows`` networks, in the order given; otherwise one by one, with
    :mod:`reml_core.inner_loop`'s single-network functions (the same numbers within rounding).
    """
    results = [math.inf] * len(requests)
    if not (batched and isinstance(pool, BatchedLayerPool)):
        for i, request in enumerate(requests):
            network = pool.build(list(request.indices))
            device = module_device(network)
            x, y = request.x.to(device), request.y.to(device)
            if steps and not finetune_sgd(network, x, y, loss_fn, steps=steps, lr=lr):
                continue
            with torch.no_grad():
                loss = evaluate_loss(network, x, y, loss_fn)
            results[i] = loss if math.isfinite(loss) else math.inf
        return results
    for positions, indices, x, y in stacked_requests(requests):
        values = stacked_support_losses(pool, indices, x, y, loss_fn, steps=steps, lr=lr, max_rows=max_rows)
        for i, value in zip(positions, values):
            results[i] = value
    return results


def stacked_requests(
    requests: Sequence[MeasureRequest],
) -> list[tuple[list[int], list[list[int]], torch.Tensor, torch.Tensor]]:
    """The requests grouped by network depth and data shapes, in order of first appearance: per group the
    positions of its requests, their index lists, and their points stacked (``x`` ``[n, ...]``, ``y`` ``[n, ...]``)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault((len(request.indices), tuple(request.x.shape), tuple(request.y.shape)), []).append(i)
    return [
        (
            members,
            [list(requests[i].indices) for i in members],
            torch.stack([requests[i].x for i in members]),
            torch.stack([requests[i].y for i in members]),
        )
        for members in groups.values()
    ]


def stacked_support_losses(
    pool: LayerPool,
    indices: Sequence[Sequence[int]],
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    *,
    steps: int = 0,
    lr: float = 0.0,
    max_rows: int = SUPPORT_ROWS,
) -> list[float]:
    """:func:`support_losses` of networks of one depth on stacked points of one shape (a batched pool's), as
    stacked computations of at most ``max_rows`` networks in order; ``inf`` for a non-finite loss."""
    losses_fn = batched_loss(loss_fn)
    results: list[float] = []
    batched = cast(BatchedLayerPool, pool)
    for start in range(0, len(indices), max_rows):
        stacked = batched.build_batch(indices[start : start + max_rows])
        device = module_device(stacked)
        rows_x, rows_y = x[start : start + max_rows].to(device), y[start : start + max_rows].to(device)
        if steps:
            finetune_sgd_batch(stacked, rows_x, rows_y, losses_fn, steps=steps, lr=lr)
        with torch.no_grad():
            values = evaluate_loss_batch(stacked, rows_x, rows_y, losses_fn).tolist()
        results.extend(value if math.isfinite(value) else math.inf for value in values)
    return results


def end_episodes(
    pool: LayerPool,
    ends: Sequence[EpisodeEnd],
    *,
    loss_fn: LossFn,
    config: EnvConfig,
    required: frozenset[str],
    write_back_rate: float | None,
    batched: bool = True,
    min_batch: int = 2,
    max_batch: int = MAX_BATCH,
    pool_update: Any = None,
    appliers: Mapping[str, Callable[[Any, Any], None]] | None = None,
) -> list[EpisodeOutcome]:
    """Train and measure every finished network; update the pool (``write_back_rate`` not None) from all but faulted
    ones.

    The update is the thesis' write-back of the Adam-trained networks, in order, or, given a
    ``pool_update`` (:class:`reml_core.pool_update.ProtocolPoolUpdate`), its meta-gradient step;
    then the Adam training runs only when the reward asks for the ``trained`` loss.
    ``batched=False`` forces the per-network path (the reference the batched path is tested
    against). Groups of fewer than ``min_batch`` stackable networks take the per-network path:
    a lone network gets exactly the numbers a single environment gets, and faster. Larger groups
    are stacked ``max_batch`` at a time.

    An end's chosen hyperparameters (``EpisodeEnd.choices``) set its own settings: networks are
    stacked only with others that chose the same values, and one with a plugin's choice
    (``appliers``: name -> apply(network, value)) takes the per-network path.
    """
    if not ends:
        return []
    use_batches = batched and isinstance(pool, BatchedLayerPool)
    protocol = pool_update is not None and write_back_rate is not None
    if not protocol:
        required = required | {"trained"}  # the write-back (or the caller's loss) needs the trained network
    groups = _groups(ends, max_batch) if use_batches else [[i] for i in range(len(ends))]
    outcomes: list[EpisodeOutcome | None] = [None] * len(ends)
    trained: list[Any] = [None] * len(ends)  # per end: (network, its row or None, the ends it was trained with)
    for members in groups:
        if len(members) < min_batch or has_plugin_choice(ends[members[0]].choices):
            for i in members:
                outcomes[i], network = _one(pool, ends[i], loss_fn, config, required, appliers)
                trained[i] = (network, None, [i])
        else:
            results, network = _batch(pool, [ends[i] for i in members], loss_fn, config, required)  # type: ignore[arg-type]
            for row, i in enumerate(members):
                outcomes[i] = results[row]
                trained[i] = (network, row, members)
    if protocol:
        # write_back_rate is the configured rate as the schedule has annealed it so far: the same fraction scales the
        # Adam rate.
        scale = write_back_rate / config.write_back_rate  # type: ignore[operator]
        keep = [not outcome.fault for outcome in cast("list[EpisodeOutcome]", outcomes)]  # every end has one now
        if appliers:
            pool_update.apply(ends, keep, batched=batched, lr_scale=scale, appliers=appliers)
        else:
            pool_update.apply(ends, keep, batched=batched, lr_scale=scale)
    elif write_back_rate is not None:
        _write_back(pool, ends, outcomes, trained, write_back_rate)  # type: ignore[arg-type]
    return outcomes  # type: ignore[return-value]


def _groups(ends: Sequence[EpisodeEnd], max_batch: int) -> list[list[int]]:
    """Ends whose networks and data stack (same depth, same data shapes, same chosen hyperparameters),
    in order of first appearance, in chunks of at most ``max_batch``."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, end in enumerate(ends):
        task = end.task
        key = (
            len(end.indices),
            tuple(task.x_train.shape),
            tuple(task.y_train.shape),
            tuple(task.x_query.shape),
            tuple(task.y_query.shape),
            end.choices,
        )
        groups.setdefault(key, []).append(i)
    return [
        members[start : start + max_batch] for members in groups.values() for start in range(0, len(members), max_batch)
    ]


def _one(
    pool: LayerPool,
    end: EpisodeEnd,
    loss_fn: LossFn,
    config: EnvConfig,
    required: frozenset[str],
    appliers: Mapping[str, Callable[[Any, Any], None]] | None = None,
) -> tuple[EpisodeOutcome, Any]:
    """One network, exactly as a single environment has always ended its episodes."""
    indices = list(end.indices)
    config = settings_for(config, end.choices)
    appliers = appliers or {}
    network = apply_choices(pool.build(indices), end.choices, appliers)
    task = task_on(end.task, module_device(network))
    losses: dict[str, float] = {}
    if "composed" in required:
        losses["composed"] = evaluate_loss(network, task.x_query, task.y_query, loss_fn)
    if "finetuned" in required:
        tuned = apply_choices(pool.build(indices), end.choices, appliers)
        x_support, y_support = task.support(end.shots)
        ok = finetune_sgd(tuned, x_support, y_support, loss_fn, steps=config.finetune_steps, lr=config.finetune_sgd_lr)
        losses["finetuned"] = evaluate_loss(tuned, task.x_query, task.y_query, loss_fn) if ok else math.nan
    if "trained" in required:
        generator = torch.Generator().manual_seed(end.minibatch_seed)
        trained_ok = train_adam(
            network,
            task.x_train,
            task.y_train,
            loss_fn,
            steps=config.inner_steps,
            lr=config.inner_adam_lr,
            batch_size=config.inner_batch,
            generator=generator,
        )
        losses["trained"] = evaluate_loss(network, task.x_query, task.y_query, loss_fn) if trained_ok else math.nan
    return EpisodeOutcome(losses, not all(math.isfinite(value) for value in losses.values())), network


def _batch(
    pool: BatchedLayerPool, ends: Sequence[EpisodeEnd], loss_fn: LossFn, config: EnvConfig, required: frozenset[str]
) -> tuple[list[EpisodeOutcome], Any]:
    """Networks of one shape, stacked: the same measurements as :func:`_one` for each row (all chose the same
    values)."""
    config = settings_for(config, ends[0].choices)
    losses_fn = batched_loss(loss_fn)
    indices = [list(end.indices) for end in ends]
    network = pool.build_batch(indices)
    device = module_device(network)
    tasks = [task_on(end.task, device) for end in ends]
    x_query = torch.stack([task.x_query for task in tasks])
    y_query = torch.stack([task.y_query for task in tasks])
    columns: dict[str, torch.Tensor] = {}
    if "composed" in required:
        columns["composed"] = evaluate_loss_batch(network, x_query, y_query, losses_fn)
    if "finetuned" in required:
        # One stacked fine-tuning for every K: support sets padded with zeros to the largest K, each
        # row's loss taken on its own first K points only, so padded points get no gradient. (Adam
        # below keeps to the single network's kernels; SGD does not amplify rounding as Adam does, so
        # here the longer sums' rounding is harmless: within ROUNDING of the per-network path,
        # tests/test_batched_pool.py.)
        support = [task.support(end.shots) for task, end in zip(tasks, ends)]
        counts = [len(x) for x, _ in support]  # K points, or K of each class for a classification task
        longest = max(counts)
        tuned = pool.build_batch(indices)
        x_support = torch.stack([_padded(x, longest) for x, _ in support])
        y_support = torch.stack([_padded(y, longest) for _, y in support])
        ok = finetune_sgd_batch(
            tuned,
            x_support,
            y_support,
            _ragged_loss(loss_fn, counts),
            steps=config.finetune_steps,
            lr=config.finetune_sgd_lr,
        )
        values = evaluate_loss_batch(tuned, x_query, y_query, losses_fn)
        finetuned = torch.where(ok, values, torch.full_like(values, math.nan))
        columns["finetuned"] = finetuned
    if "trained" in required:
        generators = (
            [torch.Generator().manual_seed(end.minibatch_seed) for end in ends]
            if config.inner_batch < tasks[0].x_train.shape[0]
            else None
        )
        trained_ok = train_adam_batch(
            network,
            torch.stack([task.x_train for task in tasks]),
            torch.stack([task.y_train for task in tasks]),
            losses_fn,
            steps=config.inner_steps,
            lr=config.inner_adam_lr,
            batch_size=config.inner_batch,
            generators=generators,
        )
        values = evaluate_loss_batch(network, x_query, y_query, losses_fn)
        columns["trained"] = torch.where(trained_ok, values, torch.full_like(values, math.nan))
    table = {name: column.tolist() for name, column in columns.items()}
    outcomes = []
    for row in range(len(ends)):
        losses = {name: float(values[row]) for name, values in table.items()}
        outcomes.append(EpisodeOutcome(losses, not all(math.isfinite(value) for value in losses.values())))
    return outcomes, network


def _padded(points: torch.Tensor, count: int) -> torch.Tensor:
    """``points`` followed by zero rows up to ``count`` rows."""
    if len(points) == count:
        return points
    return torch.cat([points, points.new_zeros(count - len(points), *points.shape[1:])])


def _ragged_loss(loss_fn: LossFn, lengths: Sequence[int]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Row b's loss on its first ``lengths[b]`` points (rows padded beyond that), as ``[B]``."""
    per_row = batched_loss(loss_fn)
    distinct = sorted(set(lengths))
    if len(distinct) == 1:
        (k,) = distinct
        return lambda prediction, target: per_row(prediction[:, :k], target[:, :k])
    groups = [(k, torch.tensor([row for row, n in enumerate(lengths) if n == k])) for k in distinct]
    order = torch.cat([rows for _, rows in groups])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))

    def losses(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        parts = [per_row(prediction[rows, :k], target[rows, :k]) for k, rows in groups]
        return torch.cat(parts)[inverse]

    return losses


def _write_back(
    pool: LayerPool,
    ends: Sequence[EpisodeEnd],
    outcomes: Sequence[EpisodeOutcome],
    trained: Sequence[tuple[Any, int | None, list[int]]],
    rate: float,
) -> None:
    """Write back every network that did not fault, in the order of ``ends``.

    A run of consecutive ends trained in one stacked network is written back with one
    ``write_back_batch`` (normally the whole batch in one call).
    """
    i = 0
    while i < len(ends):
        network, row, members = trained[i]
        if row is None:
            if not outcomes[i].fault:
                pool.write_back(list(ends[i].indices), network, rate=rate)
            i += 1
            continue
        j = i
        while j < len(ends) and trained[j][0] is network:
            j += 1
        run = {trained[k][1]: k for k in range(i, j)}
        keep = [r in run and not outcomes[run[r]].fault for r in range(len(members))]
        pool.write_back_batch([list(ends[k].indices) for k in members], network, rate, keep)  # type: ignore[attr-defined]
        i = j
