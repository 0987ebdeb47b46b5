"""Env shards: with ``train.workers`` = W > 1, each process owns a consecutive range of the vector env's envs.

Splitting only a step's episode ends across processes (:mod:`reml_core.workers`) left the rest of
the env step in one process: the observations, the masks, the stacked measurement of the
incomplete networks and the candidate scores, more than half of a sine step. Here each of W
processes makes the *whole* step of its envs (:func:`step_shard`): apply the actions, measure,
train and measure the finished networks on a recording pool, conclude, reset the finished envs
(a reset reads no pool tensor). The process that owns the pool and the policy steps shard 0
itself; forked workers, which inherited every env when they were forked (Ray actors rebuild
theirs from :meth:`~reml_core.env.CompositionEnv.shard_state` the first time), step the others, so
only the actions go out and only the results come back (observations, rewards, infos, the
recorded write-backs or the protocol update's per-shard gradient). The owner then updates the
pool exactly as :func:`reml_core.batched.end_episodes` does for one process: the write-backs
replayed in shard order, which is env order, or one Adam step on the shards' gradients merged in
shard order, weighted by the networks each counted.

So the pool every env reads during a step is the pool before that step's update, as in one
process, and results are a function of (seed, n_envs, workers, ``train.split``); what ``workers`` changes is how
a step's networks are cut into stacks and, under the protocol rule, the order the gradients are
summed in (rounding: docs/performance.md).

The owner keeps its copies of the other shards' envs; they are stale while the workers run.
What the trainer reads of them is kept current each step (each env's episode count, for the
checkpoint; the action masks MaskablePPO asks for); reading ``vec_env.envs`` (or stopping the
workers, as the trainer does at the end of ``learn``) first brings every env's whole state back
(:meth:`~reml_core.env.CompositionEnv.shard_state`, ``load_shard_state``), so the vector env
continues exactly where its shards were and nothing reads a stale copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from reml_core.workers import chunks, end_share

#: Envs per shard at least: a vector env of fewer than 2 x MIN_SHARD envs splits only its episode ends.
MIN_SHARD = 8


def shard_ranges(num_envs: int, count: int) -> list[range]:
    """The envs each of ``count`` processes owns: consecutive ranges of about equal length, at least
    :data:`MIN_SHARD` envs each (one range: no sharding)."""
    return chunks(num_envs, max(1, min(count, num_envs // MIN_SHARD)))


def step_shard(
    pool: Any,
    envs: Sequence[Any],
    actions: Any,
    options: dict[str, Any],
    *,
    loss_fn: Any,
    config: Any,
    pool_update: Any,
) -> dict[str, Any]:
    """One vector step of ``envs`` (one shard), the pool left as it was; see the module docstring.

    Returns each env's ``(observation, reward, terminated, truncated, info)`` (an ended env's next
    observation and reset info under ``resets``), the write-backs to replay, and under the protocol rule
    either the gradient of the shard's kept ends (``gradient``: its losses, mean gradient and the count of
    networks it averages) or, when the update takes several steps a vector step (``env.pool_batch``), the
    ends themselves for the owner to update with."""
    from reml_core.env import measure  # noqa: PLC0415 - lazy: import cycle (env -> batched -> workers)

    for env in envs:
        env.training_progress = options["progress"]
    batched = options["batched"]
    kinds = [env.apply(action) for env, action in zip(envs, actions)]
    measured = [env for env, kind in zip(envs, kinds) if kind == "measure"]
    if measured:
        measure(measured, batched=batched)
    finished = [i for i, kind in enumerate(kinds) if kind == "complete"]
    reply: dict[str, Any] = {"writes": [], "keep": [], "update_options": {}, "gradient": None, "ends": None}
    results: list[Any] = [None] * len(envs)
    if finished:
        ends = [envs[i].episode_end() for i in finished]
        rate = options["write_back_rate"]
        protocol = pool_update is not None and rate is not None
        extra: dict[str, Any] = {"appliers": envs[0].appliers} if envs[0].appliers else {}
        given = {"required": options["required"], "write_back_rate": rate, "batched": batched, "protocol": protocol}
        outcomes, reply["writes"], calls = end_share(pool, ends, {**given, **extra}, loss_fn=loss_fn, config=config)
        if protocol:
            ((keep, update_options),) = calls
            reply["keep"], reply["update_options"] = keep, update_options
            if not pool_update.batch:  # one Adam step on all the step's ends: its gradient is the shards' merged
                gradient_options = {key: value for key, value in update_options.items() if key != "lr_scale"}
                losses, gradients = type(pool_update).gradients(pool_update, ends, keep, **gradient_options)
                count = sum(np.isfinite(value) for value in losses)
                reply["gradient"] = (losses, gradients, int(count))
            else:
                reply["ends"] = ends
        for i, outcome in zip(finished, outcomes):
            results[i] = envs[i].conclude(outcome)
    resets: dict[int, Any] = {}
    for i, env in enumerate(envs):
        if results[i] is None:
            results[i] = env.partial_result()
        if results[i][2] or results[i][3]:
            resets[i] = env.reset()
    reply.update(
        results=results,
        resets=resets,
        episodes=[env.episodes for env in envs],
        masks=np.stack([env.action_masks() for env in envs]) if options["masks"] else None,
    )
    return reply


def reset_shard(
    envs: Sequence[Any], seeds: Sequence[int | None], options: Sequence[Any]
) -> tuple[list[Any], list[int]]:
    """``reset`` of each env of a shard (the vector env's seeds and options for them): observations and infos, and
    the envs' episode counts after it."""
    pairs = [
        env.reset(seed=seed, **({"options": given} if given else {})) for env, seed, given in zip(envs, seeds, options)
    ]
    return pairs, [env.episodes for env in envs]


def shard_work(kind: str, envs: Sequence[Any], request: Any, options: dict[str, Any], **context: Any) -> Any:
    """A shard's request (``step``, ``reset``, ``masks`` or ``state``) on the envs ``request`` names."""
    if kind == "step":
        start, stop, actions = request
        return step_shard(context["pool"], envs[start:stop], actions, options, **context["end"])
    if kind == "reset":
        start, stop, seeds, given = request
        return reset_shard(envs[start:stop], seeds, given)
    start, stop = request
    if kind == "masks":
        return np.stack([env.action_masks() for env in envs[start:stop]])
    return [env.shard_state() for env in envs[start:stop]]
