"""REML as a method the evaluator can use: a deterministic policy rollout that builds a network per task,
and its pool without the policy (a search by support loss), the rival that tells what the policy adds."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
from torch import nn

from reml_core.batched import MeasureRequest, support_losses
from reml_core.choices import ADAPTATION, ChoiceRecord, summarise
from reml_core.env import CompositionEnv, measure
from reml_core.interfaces import (
    ActsInBatches,
    LayerPool,
    LossFn,
    OwnAdaptation,
    PolicyBackend,
    Role,
    SamplesActions,
    Task,
)


def task_generator(seed: int, task: Task, shots: int) -> np.random.Generator:
    """The random stream of one (seed, task, K): what a method draws per test task, the same on every run."""
    return np.random.default_rng([seed, zlib.crc32(task.task_id.encode("utf-8")), shots])


class ReMLMethod:
    """Builds a task's network by rolling the policy out over the pool, deterministically.

    The rollout runs in an ``evaluate``-mode environment (no training, no write-back): the pool
    being evaluated is never changed, and the network handed out is a copy of its layers. The
    LSTM state, if any, is carried from step to step and reset at the start of each rollout.

    When the environment's episodes choose hyperparameters (``env.choose``), the rollout also
    chooses them: a plugin's chosen values are applied to the network :meth:`network_for` hands
    out, and what was chosen is recorded per (task, K) in :attr:`choices_made`. If the adaptation's
    rate or steps are among them, the instance is a :class:`ChoosingReMLMethod`, which also has
    ``adapted_network_for`` (the :class:`~reml_core.interfaces.AdaptsItsOwnWay` capability).
    """

    def __new__(cls, policy: PolicyBackend, env: CompositionEnv, **options: Any) -> ReMLMethod:
        if cls is ReMLMethod and any(step.name in ADAPTATION for step in getattr(env, "choice_steps", ())):
            cls = ChoosingReMLMethod
        return super().__new__(cls)

    def __init__(
        self,
        policy: PolicyBackend,
        env: CompositionEnv,
        *,
        rollouts: int = 1,
        lr: float | None = None,
        seed: int = 0,
        loss_fn: LossFn | None = None,
    ) -> None:
        """``rollouts`` > 1 (``eval.reml_rollouts``): per task, the most probable composition and ``rollouts - 1``
        sampled from the policy (a generator seeded by ``seed``, the task and K), the one whose support loss after
        one SGD step at ``lr`` (default ``env.finetune_sgd_lr``) is lowest handed out; ``loss_fn`` defaults to the
        task family's loss."""
        if env.mode != "evaluate":
            raise ValueError("REML rollouts need an evaluate-mode environment")
        if rollouts < 1:
            raise ValueError("REML needs at least one rollout per task")
        if rollouts > 1 and not isinstance(policy, SamplesActions):
            raise ValueError(
                f"{type(policy).__name__} cannot sample a rollout (no action_probabilities): use eval.reml_rollouts = 1"
            )
        if rollouts > 1 and env.choice_steps:
            raise ValueError("best-of-N rollouts compare compositions only: not with env.choose")
        self.policy = policy
        self.env = env
        self.pool: LayerPool = env.pool
        self.choices_made: dict[tuple[str, int], ChoiceRecord] = {}
        self.rollouts = rollouts
        self.lr = float(env.config.finetune_sgd_lr if lr is None else lr)
        self.seed = seed
        self.loss_fn: LossFn = loss_fn if loss_fn is not None else env.task_sampler.loss

    @classmethod
    def for_run(cls, policy: PolicyBackend, env: CompositionEnv, config: Any) -> ReMLMethod:
        """The method a run's config (:class:`reml_core.config.RunConfig`) asks for: ``eval.reml_rollouts``
        rollouts per task, compared after one SGD step at ``eval.sgd_lr``, seeded by the run's seed."""
        evaluation = config.core.eval
        return cls(policy, env, rollouts=evaluation.reml_rollouts, lr=evaluation.sgd_lr, seed=config.seed)

    def rollout(
        self,
        task: Task,
        shots: int,
        generator: np.random.Generator | None = None,
        seen: dict[tuple[int, ...], tuple[np.ndarray, Any]] | None = None,
    ) -> tuple[list[int], dict[str, Any]]:
        """The pool indices (network order) and the hyperparameter values the policy chooses for ``task``
        given its K support points (no values without ``env.choose``): its most probable action at every
        step, or, given a ``generator``, an action drawn from its probabilities (:class:`SamplesActions`).

        ``seen`` (with a generator) keeps the policy's probabilities and state after each sequence of actions
        of this task and K, for the next rollout that takes the same first actions (the policy is deterministic
        given them)."""
        observation, _ = self.env.reset(options={"task": task, "shots": shots})
        state, start = None, True
        taken: tuple[int, ...] = ()
        for _ in range(getattr(self.env, "episode_steps", self.env.depth)):
            mask = self.env.action_masks()
            if generator is None:
                action, state = self.policy.act(observation, state, start, mask)
            else:
                known = None if seen is None else seen.get(taken)
                if known is None:
                    known = cast("SamplesActions", self.policy).action_probabilities(observation, state, start, mask)
                    if seen is not None:
                        seen[taken] = known
                probabilities, state = known
                action = int(generator.choice(len(probabilities), p=probabilities))
            start = False
            taken = (*taken, action)
            observation, _, terminated, truncated, info = self.env.step(action)
            if terminated:
                values = dict(info.get("choices", {}))
                if values:
                    descriptor = (
                        tuple(float(v) for v in np.asarray(task.descriptor, dtype=np.float64).ravel())
                        if _numeric(task.descriptor)
                        else ()
                    )
                    self.choices_made[(task.task_id, shots)] = ChoiceRecord(task.task_id, shots, descriptor, values)
                return list(info["indices"]), values
            if truncated or not info["valid"]:
                break
        raise RuntimeError(f"the masked rollout for task {task.task_id} did not finish a network")

    def indices_for(self, task: Task, shots: int) -> list[int]:
        """The pool indices (network order) the policy chooses for ``task`` given its K support points (the best
        of ``rollouts`` compositions by support loss after one SGD step, when more than one)."""
        if self.rollouts == 1:
            return self.rollout(task, shots)[0]
        compositions = self.compositions(task, shots)
        return compositions[self.best_of(task, shots, compositions)[0]]

    def compositions(self, task: Task, shots: int) -> list[list[int]]:
        """The ``rollouts`` compositions tried for ``task``: the most probable first, then the sampled ones.

        Rollouts that begin with the same layers share that work: the environment measures a network prefix
        once and the policy is asked once per sequence of actions (the same compositions as rolling each out
        afresh, at the cost of the distinct prefixes)."""
        seen: dict[tuple[int, ...], tuple[np.ndarray, Any]] = {}
        with self.env.remembering_measurements():
            compositions = [self.rollout(task, shots)[0]]
            generator = task_generator(self.seed, task, shots)
            compositions += [self.rollout(task, shots, generator, seen)[0] for _ in range(self.rollouts - 1)]
        return compositions

    def best_of(self, task: Task, shots: int, compositions: Sequence[Sequence[int]]) -> tuple[int, list[float]]:
        """Which of ``compositions`` has the lowest support loss after one SGD step (the first such on a tie; a
        diverged one, whose loss :func:`~reml_core.batched.support_losses` makes ``inf``, never wins), and every
        one's loss. A composition tried more than once is fine-tuned once."""
        return self.best_of_many([task], shots, [compositions])[0]

    def best_of_many(
        self, tasks: Sequence[Task], shots: int, compositions: Sequence[Sequence[Sequence[int]]]
    ) -> list[tuple[int, list[float]]]:
        """:meth:`best_of` of every task and its compositions, all fine-tuned in stacked computations."""
        requests: list[MeasureRequest] = []
        spans: list[tuple[int, list[tuple[int, ...]]]] = []
        for task, options in zip(tasks, compositions, strict=True):
            x, y = task.support(shots)
            distinct = list(dict.fromkeys(tuple(c) for c in options))
            spans.append((len(requests), distinct))
            requests += [MeasureRequest(c, x, y) for c in distinct]
        losses = support_losses(self.pool, requests, self.loss_fn, steps=1, lr=self.lr, max_rows=SEARCH_ROWS)
        best = []
        for (start, distinct), options in zip(spans, compositions):
            measured = dict(zip(distinct, losses[start : start + len(distinct)]))
            every = [measured[tuple(c)] for c in options]
            best.append((int(np.argmin(every)), every))
        return best

    def network_for(self, task: Task, shots: int) -> nn.Module:
        """The composed network (a copy of pool layers), with any plugin-declared chosen values applied."""
        if self.rollouts > 1:
            return self.pool.build(self.indices_for(task, shots))
        indices, values = self.rollout(task, shots)
        return self.env.build_network(indices, values) if values else self.pool.build(indices)

    def networks_for(self, tasks: Sequence[Task], shots: int) -> list[nn.Module]:
        """:meth:`network_for` of every task (:class:`~reml_core.interfaces.ChoosesForMany`): with a policy that
        acts in batches (:class:`~reml_core.interfaces.ActsInBatches`) the tasks are rolled out side by side,
        see :meth:`indices_for_many`; task by task otherwise, and when the episodes choose hyperparameters."""
        if self.env.choice_steps or not isinstance(self.policy, ActsInBatches):
            return [self.network_for(task, shots) for task in tasks]
        return [self.pool.build(indices) for indices in self.indices_for_many(tasks, shots)]

    def choice_counts(self) -> dict[str, int] | None:
        """:class:`~reml_core.interfaces.ChoosesInProcesses`: the policy's decision counts when its tasks are rolled
        out side by side (their networks then depend on the chunk and K alone: per-task generators, fresh twin
        environments) and the policy counts what its batched acting changes (``decision_counts`` and
        ``add_decision_counts``, as the PPO backends do); None otherwise (hyperparameter choices are recorded per
        task, and a policy's other state is unknown)."""
        counts = getattr(self.policy, "decision_counts", None)
        if self.env.choice_steps or not isinstance(self.policy, ActsInBatches) or not callable(counts):
            return None
        return dict(counts())

    def add_choice_counts(self, counts: Mapping[str, int]) -> None:
        cast("Any", self.policy).add_decision_counts(counts)

    def indices_for_many(self, tasks: Sequence[Task], shots: int) -> list[list[int]]:
        """:meth:`indices_for` of every task, the tasks rolled out side by side: one environment per task
        (:meth:`CompositionEnv.twin`), one policy pass and one stacked measurement per step for all of them.

        With ``rollouts`` > 1 the rollouts follow one another (the most probable, then each sampled one, a
        task's draws from its own generator in the same order as :meth:`compositions`); a task's
        environment remembers what its prefixes measured across them, and one stacked support-loss
        computation compares every task's distinct compositions. The same compositions as task by task,
        up to floating-point rounding (a near-tie between two actions or two candidates can differ).
        """
        if not tasks:
            return []
        envs = [self.env.twin() for _ in tasks]
        policy = cast("ActsInBatches", self.policy)
        with contextlib.ExitStack() as stack:
            for env in envs:
                stack.enter_context(env.remembering_measurements())
            tried = [self._rollouts_side_by_side(envs, tasks, shots, policy, None)]
            generators = [task_generator(self.seed, task, shots) for task in tasks]
            tried += [
                self._rollouts_side_by_side(envs, tasks, shots, policy, generators) for _ in range(1, self.rollouts)
            ]
        compositions = [[rollout[i] for rollout in tried] for i in range(len(tasks))]
        if self.rollouts == 1:
            return [options[0] for options in compositions]
        best = self.best_of_many(tasks, shots, compositions)
        return [options[index] for options, (index, _) in zip(compositions, best)]

    def _rollouts_side_by_side(
        self,
        envs: Sequence[CompositionEnv],
        tasks: Sequence[Task],
        shots: int,
        policy: ActsInBatches,
        generators: Sequence[np.random.Generator] | None,
    ) -> list[list[int]]:
        """One rollout of each task in its own environment, all stepped together: the most probable actions,
        or, given a generator per task, actions drawn from the policy's probabilities."""
        observations = np.stack(
            [env.reset(options={"task": task, "shots": shots})[0] for env, task in zip(envs, tasks)]
        )
        starts = np.ones(len(envs), dtype=bool)
        state = None
        for step in range(self.env.depth):
            masks = np.stack([env.action_masks() for env in envs])
            if generators is None:
                greedy, state = policy.act_batch(observations, state, starts, masks)
                actions = [int(action) for action in greedy]
            else:
                probabilities, state = policy.action_probabilities_batch(observations, state, starts, masks)
                actions = [int(g.choice(len(p), p=p)) for g, p in zip(generators, probabilities)]
            starts[:] = False
            kinds = [env.apply(action) for env, action in zip(envs, actions)]
            if any(kind == "invalid" for kind in kinds):
                raise RuntimeError("a masked rollout took an invalid action")
            pending = [env for env, kind in zip(envs, kinds) if kind == "measure" and not env.recall_measurement()]
            if pending:
                measure(pending)
                for env in pending:
                    env.remember_measurement()
            if step < self.env.depth - 1:
                observations = np.stack([env.partial_result()[0] for env in envs])
        if any(len(env.chosen) != env.depth for env in envs):
            raise RuntimeError("a masked rollout did not finish a network")
        return [env.chosen for env in envs]

    def describe(self) -> str:
        """How a task's network is chosen, for a report's budget line."""
        if self.rollouts == 1:
            return "the policy's most probable composition"
        return (
            f"best of {self.rollouts} policy rollouts (the most probable and {self.rollouts - 1} sampled) by support "
            f"loss after one SGD step (lr {self.lr:g})"
        )

    def choices_summary(self, descriptor_names: Any = ()) -> dict[str, Any] | None:
        """What the policy chose on the tasks rolled out so far (for results.json), or None without choices."""
        if not self.choices_made:
            return None
        return summarise(list(self.choices_made.values()), descriptor_names)


class ChoosingReMLMethod(ReMLMethod):
    """REML whose policy chooses the adaptation's rate and/or steps: it also adapts its own way."""

    #: How reports label its own-rate rows ("REML (...) (chosen rate)"), apart from its fixed-rate rows.
    own_rate_words = "chosen rate"

    def adapted_network_for(self, task: Task, shots: int) -> tuple[nn.Module, OwnAdaptation]:
        """The same composition as :meth:`network_for`, with the rate (else ``env.finetune_sgd_lr``, the
        protocol's unless set) and the number of steps (else None: every step count) the policy chose."""
        indices, values = self.rollout(task, shots)
        network = self.env.build_network(indices, values)
        lr = float(values.get("finetune_sgd_lr", self.env.config.finetune_sgd_lr))
        steps = values.get("finetune_steps")
        return network, OwnAdaptation(lr=lr, steps=None if steps is None else int(steps))


def _numeric(descriptor: Any) -> bool:
    try:
        return np.asarray(descriptor, dtype=np.float64).size > 0
    except (TypeError, ValueError):
        return False


#: The key of the pool-search rival in results (its label: :data:`SEARCH_LABEL`).
SEARCH_KEY = "reml-search"
SEARCH_LABEL = "REML pool + search"
#: Candidate networks fine-tuned in one stacked computation at most (bounds the search's memory).
SEARCH_ROWS = 2048


class PoolSearchMethod:
    """REML's trained pool without its policy: the best of ``candidates`` random compositions, chosen
    by the support loss after one SGD step (issue 21's rival (b)).

    For each task the same ``candidates`` valid compositions (distinct layers, one role per slot)
    are drawn from a generator seeded by (``seed``, task, K); each is fine-tuned one SGD step
    (``lr``, the protocol's) on the K support points, and the composition whose support loss is
    then lowest is handed out, un-tuned, for the evaluator to fine-tune like any method's. Only the
    support set decides, as for every other method; the test-time cost is ``candidates`` forward
    and backward passes where the policy needs one rollout. The pool is never changed.
    """

    def __init__(self, pool: LayerPool, loss_fn: LossFn, *, depth: int, candidates: int, lr: float, seed: int) -> None:
        if candidates < 1:
            raise ValueError("a pool search needs at least one candidate")
        self.pool = pool
        self.loss_fn = loss_fn
        self.depth = depth
        self.candidates = candidates
        self.lr = lr
        self.seed = seed
        roles = np.array([role.value for role in pool.roles])
        self._by_role = {role: np.flatnonzero(roles == role.value) for role in set(pool.roles)}

    def _compositions(self, task: Task, shots: int) -> list[list[int]]:
        """The task's ``candidates`` compositions in network order: per candidate an input and an output layer
        drawn uniformly and ``depth - 2`` distinct hidden layers in random order (one vectorised draw per role)."""
        generator = task_generator(self.seed, task, shots)
        inputs = generator.choice(self._by_role[Role.INPUT], size=self.candidates)
        outputs = generator.choice(self._by_role[Role.OUTPUT], size=self.candidates)
        hidden = self._by_role[Role.HIDDEN]
        order = generator.random((self.candidates, len(hidden))).argsort(axis=1)[:, : self.depth - 2]
        return np.column_stack([inputs, hidden[order], outputs]).tolist()

    def indices_for(self, task: Task, shots: int) -> list[int]:
        """The composition whose support loss after one SGD step is lowest (the first such, on a tie)."""
        return self.choose_many([task], [shots])[0]

    def choose_many(self, tasks: Sequence[Task], shots: Sequence[int]) -> list[list[int]]:
        """:meth:`indices_for` of every ``(tasks[i], shots[i])``; on a batched pool the candidates of all the
        tasks of one K are fine-tuned as stacked computations of at most :data:`SEARCH_ROWS` networks (the
        ``pool-search`` baseline chooses for a whole meta-batch at once)."""
        if len(tasks) != len(shots):
            raise ValueError("choose_many needs one K per task")
        chosen: list[list[int]] = [[] for _ in tasks]
        by_shots: dict[int, list[int]] = {}
        for position, k in enumerate(shots):
            by_shots.setdefault(int(k), []).append(position)
        for k, members in by_shots.items():
            candidates = [self._compositions(tasks[i], k) for i in members]
            requests: list[MeasureRequest] = []
            for i, compositions in zip(members, candidates):
                x, y = tasks[i].support(k)
                requests.extend(MeasureRequest(tuple(composition), x, y) for composition in compositions)
            losses = support_losses(self.pool, requests, self.loss_fn, steps=1, lr=self.lr, max_rows=SEARCH_ROWS)
            for position, (i, compositions) in enumerate(zip(members, candidates)):
                scores = losses[position * self.candidates : (position + 1) * self.candidates]
                chosen[i] = compositions[int(np.argmin(scores))]
        return chosen

    def network_for(self, task: Task, shots: int) -> nn.Module:
        """A copy of the composition :meth:`indices_for` chooses. (The evaluator asks task by task: a task's
        candidates already stack into one computation, and stacking many tasks' was measured no faster.)"""
        return self.pool.build(self.indices_for(task, shots))
