"""What the core expects of each kind of component. Plugins implement these protocols.

The core never imports a plugin: it builds components through the factories in the records
plugins register, and talks to them only through the methods below.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from torch import nn

#: A family's loss: ``loss(prediction, target)`` -> a scalar tensor (``TaskSampler.loss``).
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: A family's metrics: ``metrics(prediction, target)`` -> named numbers (``MeasuresMetrics.metrics``).
MetricsFn = Callable[[torch.Tensor, torch.Tensor], dict[str, float]]


class Role(str, enum.Enum):
    """Where a pool layer can go in a composed network."""

    INPUT = "input"
    HIDDEN = "hidden"
    OUTPUT = "output"


@dataclass(frozen=True, eq=False)
class Task:
    """One task of a family: its data splits and its (privileged) descriptor.

    ``x_support``/``y_support`` hold ``max_shots`` points; the K-shot support set is their first K,
    so the 5-shot set is contained in the 10-shot set and every method sees the same points.
    The query set is separate from both the support set and the inner-training data.

    A classification task sets ``ways`` (N, its number of classes): K-shot then means K examples
    of each class, so the K-shot set is the first ``ways * K`` support points, and the family
    orders them so that every such prefix holds K of each class (class ``i % ways`` at position
    ``i``). Its targets are class indices (int64, shape ``[n]``) and its predictions logits.
    """

    task_id: str
    split: str
    descriptor: tuple[float, ...]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    ways: int = 1

    def support(self, shots: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The K-shot support set: the first ``shots`` points (``shots`` of each class when ``ways`` > 1)."""
        count = shots * self.ways
        if not 1 <= count <= len(self.x_support):
            raise ValueError(
                f"{shots}-shot support requested but task {self.task_id} holds {len(self.x_support)} support points"
            )
        return self.x_support[:count], self.y_support[:count]


@dataclass(frozen=True)
class OwnAdaptation:
    """A method's own way of adapting the network it hands out, in place of the protocol's fixed SGD rate.

    ``lr`` is one SGD rate (a rate the method chose for this task, e.g. REML's hyperparameter
    action) or one tensor of rates per parameter in ``network.parameters()`` order (a learned
    per-parameter rate, Meta-SGD's). ``steps`` is a number of steps the method chose for this task,
    or None to be measured at every step count of the protocol. The adaptation is still plain SGD
    on the task's K support points, the same points at every step; only the rate (and, if chosen,
    the number of steps) is the method's. Reports keep these rows apart from the protocol's
    fixed-rate rows (see :data:`OWN_RATE_SUFFIX`).
    """

    lr: float | Sequence[torch.Tensor]
    steps: int | None = None


@runtime_checkable
class TaskSampler(Protocol):
    """A task family with a seeded training stream and fixed held-out sets.

    The three splits are drawn from independent random streams, so held-out tasks never come out
    of the training stream. ``validation_tasks`` and ``test_tasks`` depend only on the sampler's
    config (not on the run seed): every run and every method is measured on the same tasks.

    Optional: ``input_scale`` and ``target_scale`` (typical magnitudes of inputs and targets, for
    encoders that scale what they see) and ``describe()`` (see :class:`Describable`).
    """

    descriptor_names: tuple[str, ...]
    """Names of the numbers that define a task (sine: ``("amplitude", "phase")``); ``()`` when there are none."""
    descriptor_low: tuple[float, ...]
    """The lower end of each descriptor's range, one per name (the ``oracle`` encoder scales by them)."""
    descriptor_high: tuple[float, ...]
    """The upper end of each descriptor's range, one per name."""
    input_size: int
    """Numbers per input point (flat: an image's ``C*H*W``)."""
    output_size: int
    """Numbers per target (regression), or classes N (classification)."""
    max_shots: int
    """Support points a task holds (K per class for classification): the largest K a run may use."""
    train_points: int
    """Points of a task's inner-training data (``x_train``)."""

    def train_stream(self, seed: int) -> Iterator[Task]:
        """Endless meta-training tasks, the same for the same seed, never a held-out task."""

    def validation_tasks(self, count: int) -> list[Task]:
        """The first ``count`` validation tasks: the same for every run and seed (they choose the checkpoint)."""

    def test_tasks(self, count: int) -> list[Task]:
        """The first ``count`` test tasks, the same for every run and seed: every method is measured on them."""

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """A scalar loss (mean squared error; cross-entropy on logits for classification)."""


@dataclass(frozen=True, eq=False)
class TaskBatch:
    """``N`` tasks of one split as stacked tensors: ``x_train`` is ``[N, train_points, input_size]``, etc.

    Row ``i`` of every tensor belongs to task ``task_ids[i]``; ``descriptors`` is ``[N, len(descriptor_names)]``.
    As in :class:`Task`, a K-shot support set is the first K of ``x_support``/``y_support``.
    """

    split: str
    task_ids: tuple[str, ...]
    descriptors: torch.Tensor
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    ways: int = 1

    def __len__(self) -> int:
        return len(self.task_ids)

    def task(self, index: int) -> Task:
        """Task ``index`` of the batch (its tensors are views into the batch's)."""
        return Task(
            self.task_ids[index],
            self.split,
            tuple(self.descriptors[index].tolist()),
            self.x_train[index],
            self.y_train[index],
            self.x_support[index],
            self.y_support[index],
            self.x_query[index],
            self.y_query[index],
            self.ways,
        )

    def tasks(self) -> list[Task]:
        return [self.task(i) for i in range(len(self))]


@runtime_checkable
class BatchedTaskSampler(Protocol):
    """Optional capability of a :class:`TaskSampler`: training tasks drawn ``batch_size`` at a time.

    For consumers that want many tasks at once (a MAML meta-batch, N environments side by side):
    one vectorised draw per batch instead of one per task. ``train_batches(seed, batch_size)`` is
    an endless, seeded stream of training batches: the same (seed, batch_size) gives the same
    batches; its tasks come from the same family and distribution as ``train_stream(seed)`` and,
    like it, never from the held-out sets, but need not be the same tasks in the same order.
    The core never assumes a sampler has it: check ``isinstance(sampler, BatchedTaskSampler)``
    and fall back to ``train_stream``.
    """

    def train_batches(self, seed: int, batch_size: int) -> Iterator[TaskBatch]: ...


@runtime_checkable
class StateEncoder(Protocol):
    """The task part of the observation, of a fixed, declared size.

    An encoder whose output holds a padded set of points may also declare ``point_set``
    (a :class:`PointSetLayout`), so that a policy can embed the points permutation-invariantly;
    without it (or with None) policies see the output as a flat vector.
    """

    observation_size: int
    """How many numbers ``encode`` returns, always."""
    privileged: bool
    """True when it sees more than the K support points (e.g. the true amplitude and phase); reports say so."""

    def encode(self, task: Task, shots: int) -> np.ndarray: ...


@dataclass(frozen=True)
class PointSetLayout:
    """Where an encoder's output holds a padded set of points, channel-major.

    Channel ``c`` of point ``i`` is at ``offset + c * points + i``; after the ``channels`` blocks
    comes a mask block (1 for a real point, 0 for padding). The encoder's output is the start of
    the observation, so ``offset`` counts from there.
    """

    offset: int
    points: int
    channels: int


@runtime_checkable
class LayerPool(Protocol):
    """A global pool of layers shared across tasks, each with a role.

    Nothing here is specific to dense layers: a pool builds a network from a sequence of its
    indices (in network order: input, hidden..., output), can build the same architecture freshly
    initialised, and writes a trained network's layers back into the slots they came from.

    A pool keeps its layers on ``BuildContext.device``; ``state_dict`` returns CPU tensors (so a
    checkpoint loads on any machine) and ``diagnostics`` takes a CPU ``probe``.
    """

    size: int
    """How many layers the pool holds: the policy's actions are their indices."""
    roles: Sequence[Role]
    """Each layer's role (input, hidden or output), one per index."""

    def build(self, indices: Sequence[int]) -> nn.Module: ...

    def fresh_network(self, depth: int, generator: torch.Generator) -> nn.Module: ...

    def write_back(self, indices: Sequence[int], network: nn.Module, rate: float = 1.0) -> None:
        """pool += rate * (network's layers - pool) for the layers ``indices`` names (rate 1: replace)."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None: ...

    def diagnostics(self, probe: torch.Tensor) -> dict[str, float]: ...


@runtime_checkable
class BatchedNetwork(Protocol):
    """``B`` networks of one architecture whose parameters are stacked along a leading dimension.

    Calling it maps inputs ``[B, n, in]`` to predictions ``[B, n, out]``, network ``b`` on row
    ``b`` only. ``parameters()`` lists the stacked tensors (each ``[B, ...]``) that training
    updates in place. It may offer ``value_and_grad(params, x, y, losses_fn)`` returning the
    ``[B]`` losses and the gradients of their sum (row ``b`` of each gradient is network ``b``'s
    own); without it the core differentiates the forward pass with autograd.
    """

    def parameters(self) -> Sequence[torch.Tensor]: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class BatchedLayerPool(Protocol):
    """Optional capability of a :class:`LayerPool`: build and write back many networks at once.

    The vectorised environment ends the episodes that finish on the same step together: it builds
    their networks in one call, trains them as one stacked computation and writes them back in one
    call. ``build_batch(indices)`` takes one index list per network (all the same length) and
    returns a :class:`BatchedNetwork` whose row ``b`` equals ``build(indices[b])``.
    ``write_back_batch(indices, network, rate, keep)`` must leave the pool exactly as calling
    ``write_back(indices[b], network b, rate)`` for each ``b`` with ``keep[b]``, in order ``b = 0,
    1, ...``, would (order matters when two networks share a layer). The core never assumes a pool
    has it: check ``isinstance(pool, BatchedLayerPool)``; without it every network takes the
    per-network path (``build``, train, ``write_back``) with the same results.
    """

    def build_batch(self, indices: Sequence[Sequence[int]]) -> BatchedNetwork: ...

    def write_back_batch(
        self, indices: Sequence[Sequence[int]], network: BatchedNetwork, rate: float, keep: Sequence[bool]
    ) -> None: ...


@runtime_checkable
class ScoresSlotCandidates(Protocol):
    """Optional capability of a :class:`LayerPool`: the support losses of networks that differ in one slot.

    ``slot_losses(templates, slot, candidates, x, y, loss_fn)``: for each template ``e`` (pool indices in
    network order, all of one length; the entry at ``slot`` is ignored) and each pool index ``c`` in
    ``candidates[e]`` (layers of the slot's role), ``loss_fn`` of the network ``templates[e]`` with ``c`` at
    ``slot``, as composed (no fine-tuning), on ``x[e]``, ``y[e]`` (stacked ``[E, n, ...]``): one sequence of
    floats per template (a list of lists, or an ``[E, C]`` array when every template has C candidates), in its
    candidates' order, ``inf`` where the loss is not finite. The same numbers as
    :func:`reml_core.batched.support_losses` with ``steps=0`` within rounding, computed once per shared part
    (the layers before the slot run once per template, not once per candidate): what the environment's
    candidate scores (``env.candidate_loss = "composed"``) cost. The core never assumes a pool has it.
    """

    def slot_losses(
        self,
        templates: Sequence[Sequence[int]],
        slot: int,
        candidates: Sequence[Sequence[int]],
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: LossFn,
    ) -> Sequence[Sequence[float]] | np.ndarray: ...


@runtime_checkable
class MetaGradientLayerPool(Protocol):
    """Optional capability of a :class:`BatchedLayerPool`: be trained by gradients (``env.pool_update = "protocol"``).

    ``parameters()`` returns the pool's own tensors (the same objects every call, updated in place
    by the core's optimiser). While they require gradients, ``build_batch(indices)`` must return a
    network whose ``parameters()`` are differentiable functions of them (an indexed gather: a layer
    chosen by several networks receives the sum of their gradients), and that network's
    ``with_parameters(params)`` must return the same architecture computing with ``params`` instead
    (stacked like ``parameters()``), so the core can run an adaptation on it functionally.
    ``build(indices)``'s module must accept its parameters by name through
    ``torch.func.functional_call`` (any ``nn.Module`` does). See :mod:`reml_core.pool_update`.
    """

    def parameters(self) -> list[torch.Tensor]: ...

    def build_batch(self, indices: Sequence[Sequence[int]]) -> BatchedNetwork: ...


@runtime_checkable
class MaintainedLayerPool(Protocol):
    """Optional capability of a layer pool: upkeep the trainer runs at every checkpoint.

    ``maintain(probe)`` may repair the pool in place (e.g. revive dead units) and returns numbers
    to log (logged as ``pool/<key>``); ``probe`` is task inputs spanning the domain. It runs after
    the checkpoint's validation and before it is saved, so a resumed run sees the same pool.
    """

    def maintain(self, probe: torch.Tensor) -> dict[str, float]: ...


@runtime_checkable
class RewardFunction(Protocol):
    """Maps the losses of a finished network to a reward; penalises invalid actions.

    ``required_losses`` names the losses the environment must measure, among
    ``composed`` (right after composition), ``trained`` (after the inner Adam training) and
    ``finetuned`` (after the evaluation protocol's K-shot SGD fine-tuning).
    """

    required_losses: frozenset[str]
    """The losses the environment must measure for a finished network (see above)."""
    invalid_action_penalty: float
    """The reward of an action that does not fit the slot being filled."""
    worst_reward: float
    """The reward of a network with a non-finite loss or parameter."""
    needs_calibration: bool
    """True when ``calibrate`` must see a pass of episodes before training starts."""

    def __call__(self, losses: Mapping[str, float], task: Task) -> float: ...

    def calibrate(self, samples: Sequence[tuple[Task, Mapping[str, float]]]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@runtime_checkable
class PolicyBackend(Protocol):
    """An RL learner acting on a ``CompositionEnv``."""

    recurrent: bool
    """True when the policy keeps a state across an episode's steps (an LSTM)."""

    def learn(
        self, total_timesteps: int, callback: Callable[[int], bool] | None = None, progress_bar: bool = False
    ) -> None:
        """Train for ``total_timesteps`` more steps; ``callback(num_timesteps)`` after each step, False stops."""

    def record(self, metrics: Mapping[str, float], step: int) -> None:
        """Write metrics to the backend's training log (CSV/TensorBoard)."""

    def act(
        self, observation: np.ndarray, state: Any, episode_start: bool, action_mask: np.ndarray | None
    ) -> tuple[int, Any]: ...

    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path, *, trust_pickle: bool = False) -> None:
        """Restore what ``save`` wrote; never unpickle unless ``trust_pickle``."""

    @property
    def num_timesteps(self) -> int: ...


@runtime_checkable
class SamplesActions(Protocol):
    """Optional for a policy backend: what it would choose, as probabilities, so a rollout can also be sampled
    (``eval.reml_rollouts`` > 1 draws compositions from the policy and keeps the best by support loss).

    ``action_probabilities`` returns one probability per action (zero for the invalid ones when
    ``action_mask`` is given, summing to 1) and the next recurrent state, as :meth:`PolicyBackend.act`
    threads it.
    """

    def action_probabilities(
        self, observation: np.ndarray, state: Any, episode_start: bool, action_mask: np.ndarray | None
    ) -> tuple[np.ndarray, Any]: ...


@runtime_checkable
class ActsInBatches(Protocol):
    """Optional for a policy backend: :meth:`PolicyBackend.act` and :meth:`SamplesActions.action_probabilities`
    for many environments in one forward pass, so REML rolls out many test tasks side by side
    (:meth:`reml_core.methods.ReMLMethod.networks_for`).

    ``observations`` has one row per environment, ``episode_starts`` and ``action_masks`` one entry
    (row) each; ``state`` is the whole batch's recurrent state (None at the start), returned for the
    next step. ``act_batch`` returns each row's most probable valid action, ``action_probabilities_batch``
    each row's probabilities renormalised over its valid actions; row for row what the one-env methods
    return, up to floating-point rounding.
    """

    def act_batch(
        self, observations: np.ndarray, state: Any, episode_starts: np.ndarray, action_masks: np.ndarray
    ) -> tuple[np.ndarray, Any]: ...

    def action_probabilities_batch(
        self, observations: np.ndarray, state: Any, episode_starts: np.ndarray, action_masks: np.ndarray
    ) -> tuple[np.ndarray, Any]: ...


@runtime_checkable
class Baseline(Protocol):
    """A method REML is compared with: meta-train once, then hand out a starting network per task."""

    def meta_train(self, tasks: Iterator[Task], progress: bool = True) -> dict[str, float]: ...

    def network_for(self, task: Task, shots: int) -> nn.Module: ...

    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...


@runtime_checkable
class ChoosesForMany(Protocol):
    """Optional for a baseline or method: the starting networks of many test tasks at once, each the one
    ``network_for(task, K)`` hands out (up to floating-point rounding where a choice is computed in a batch).

    The evaluator asks for the tasks of one K a chunk at a time (:data:`reml_core.evaluation.CHOOSE_CHUNK`), so a
    method that chooses by computation (a policy's rollouts, a search by support loss) does it for the chunk in
    stacked passes rather than task by task.
    """

    def networks_for(self, tasks: Sequence[Task], shots: int) -> list[nn.Module]: ...


@runtime_checkable
class ChoosesInProcesses(Protocol):
    """Optional for a method with ``networks_for`` (:class:`ChoosesForMany`): its networks for a chunk of tasks
    depend on nothing but the chunk and K (nothing carried from one call to the next, no global random
    generator), so with ``train.workers`` > 1 the evaluator asks for whole chunks, and measures them, in forked
    processes (every number the one process's).

    ``choice_counts()`` is what the calls change in the method that outlives them, as counts (a policy's
    decisions), or None when this method cannot be asked in another process now; the evaluator adds each
    forked process's counts to this process's with ``add_choice_counts``, so the method ends as if one process
    had asked for every chunk. It is asked right before the processes are forked: a method brings itself up
    to date there (a policy's update in flight loaded), so that no forked process waits for the same thing.
    """

    def choice_counts(self) -> dict[str, int] | None: ...

    def add_choice_counts(self, counts: Mapping[str, int]) -> None: ...


@runtime_checkable
class AdaptsItsOwnWay(Protocol):
    """Optional for a baseline or method: it also hands out, with each network, its own adaptation.

    ``adapted_network_for(task, K)`` returns the network and the :class:`OwnAdaptation` it asks
    for (a rate it chose for this task, or learned per-parameter rates). The evaluator measures such
    a method twice on the same tasks: the protocol's fixed-rate rows (``network_for``) and its
    own-rate rows (results key ``<name>@own-rate``), labelled apart in every report.
    """

    def adapted_network_for(self, task: Task, shots: int) -> tuple[nn.Module, OwnAdaptation]: ...


@runtime_checkable
class Describable(Protocol):
    """Optional for any component: the facts about itself a report should state.

    ``describe()`` returns one or two plain sentences (e.g. a task family: how many support and
    query points a task holds and what its loss is; a reward: which loss it rewards). Reports quote
    them instead of reading a component's config or attributes, so the core never needs to know
    what a plugin's options mean. A baseline's ``describe()`` is its budget in a benchmark's report
    (without it, the report lists the baseline's options).
    """

    def describe(self) -> str: ...


@runtime_checkable
class MeasuresMetrics(Protocol):
    """Optional for a task sampler: metrics beside its loss, reported for every method.

    ``metrics(prediction, target)`` returns named numbers for one task's query set, higher is
    better (a classification family: ``{"accuracy": ...}``). The evaluation protocol records
    each one's mean and 95% CI over the test tasks next to the loss (``<name>_mean``,
    ``<name>_ci95`` in ``results.json``); tables and plots show them.
    """

    def metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]: ...


@runtime_checkable
class FingerprintsData(Protocol):
    """Optional for a task sampler whose tasks depend on data outside its config (a folder of
    images, a data set installed with a package): a fingerprint of that data.

    ``data_fingerprint()`` returns a non-empty mapping from what people would call each part of the
    data (``"characters"``, ``"images"``) to a short string that changes whenever that part does,
    best a count and a digest (``"1623 character folders, sha256 3fa2c1d9e0b1"``). It is cheap
    (names and sizes, not every byte, for data on disk) and deterministic.

    The core records it when a run starts (``data.json`` in the run folder) and compares it when
    the run is resumed or loaded (``reml-run --resume``, ``reml-bench --resume`` and ``--from``):
    a difference is refused with one error naming the parts that changed, because a sampler that
    splits its classes by the data would otherwise continue on another split and could put test
    classes into training. A sampler whose tasks depend on its config alone (``sine``) needs none.
    """

    def data_fingerprint(self) -> Mapping[str, str]: ...


@runtime_checkable
class ReportsStats(Protocol):
    """Optional for a policy backend (or any component): numbers about its own behaviour to report.

    ``stats()`` returns named numbers (e.g. ``invalid_argmax_rate`` of a masked policy) that the
    core records in ``results.json`` under ``training.policy_stats`` and lists in the report.
    """

    def stats(self) -> dict[str, float]: ...


#: The fields of later stages, which a context of an earlier stage answers with None (see :class:`BuildContext`).
_LATER_FIELDS = frozenset({"task_sampler", "pool", "encoder", "env", "log_dir", "overlap_update"})
_Context = TypeVar("_Context", bound="BuildContext")


@dataclass(frozen=True)
class BuildContext:
    """What a factory may need besides its own config, in stages: each factory gets the context of its stage.

    The core builds a run's components in order and hands each factory the context of its stage,
    whose fields are set by construction (none is None for want of a component not yet built):

    | the factory of                          | receives                 | which adds                                 |
    |-----------------------------------------|--------------------------|--------------------------------------------|
    | a task sampler                          | :class:`BuildContext`    | ``seed``, ``preset``, ``depth``, ``device`` |
    | a state encoder, a layer pool, a reward | :class:`TaskContext`     | ``task_sampler``                           |
    | a baseline                              | :class:`BaselineContext` | ``pool``, ``encoder``                      |
    | a policy backend                        | :class:`PolicyContext`   | ``env``, ``log_dir``                       |

    Each stage's type is a subclass of the one before, so a factory annotated with
    ``BuildContext`` accepts them all. ``depth`` is the number of layers of the networks REML
    composes. ``device`` (``train.device``, already checked to exist: ``cpu``, ``cuda`` or
    ``cuda:N``) is where a layer pool keeps its layers (so the networks it builds,
    ``fresh_network``'s included, live there) and where a baseline puts its networks. Task samplers
    and encoders produce CPU tensors; the core moves a task to a network's device before training
    or measuring it (:func:`reml_core.device.task_on`), and a baseline does the same with its own batches.

    A context answers None for a field of a later stage (``context.pool`` in an encoder's factory),
    as the single context of earlier versions did, so plugins written for it keep working; a
    component should read only the fields of its own stage. A component that cannot be built
    with what it is given raises :class:`reml_core.errors.ComponentBuildError`.

    Tests and tools that call a factory themselves construct the stage's type:
    ``TaskContext(seed=0, task_sampler=sampler)``; :meth:`with_task_sampler`,
    :meth:`TaskContext.with_pool_and_encoder` and :meth:`BaselineContext.with_env` go one stage on.
    """

    seed: int
    preset: str = "default"
    depth: int = 5
    device: str = "cpu"

    def __getattr__(self, name: str) -> Any:
        """None for a field of a later stage (Python asks only for names the context does not have)."""
        if name in _LATER_FIELDS:
            return None
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _stage(self, stage: type[_Context], **added: Any) -> _Context:
        kept = {f.name: getattr(self, f.name) for f in fields(stage) if f.name not in added}
        return stage(**kept, **added)

    def with_task_sampler(self, task_sampler: TaskSampler) -> TaskContext:
        """The context of encoders, pools and rewards: this one and the run's task sampler."""
        return self._stage(TaskContext, task_sampler=task_sampler)


@dataclass(frozen=True, kw_only=True)
class TaskContext(BuildContext):
    """What state encoders, layer pools and reward functions get: the base context and the run's task sampler."""

    task_sampler: TaskSampler

    def with_pool_and_encoder(self, pool: LayerPool, encoder: StateEncoder) -> BaselineContext:
        """The context of baselines: this one, the run's layer pool and its state encoder."""
        return self._stage(BaselineContext, pool=pool, encoder=encoder)


@dataclass(frozen=True, kw_only=True)
class BaselineContext(TaskContext):
    """What baselines get: the task sampler, the run's layer pool (for a network of REML's architecture,
    ``pool.fresh_network(depth, generator)``) and its state encoder."""

    pool: LayerPool
    encoder: StateEncoder

    def with_env(self, env: Any, log_dir: Path | None = None, *, overlap_update: bool = False) -> PolicyContext:
        """The context of policy backends: this one, the environment, the folder of the training log and
        whether the backend may update beside the next rollout."""
        return self._stage(PolicyContext, env=env, log_dir=log_dir, overlap_update=overlap_update)


@dataclass(frozen=True, kw_only=True)
class PolicyContext(BaselineContext):
    """What policy backends get: everything a baseline gets, and the environment they learn on.

    ``env`` is a ``CompositionEnv``, or with ``train.n_envs`` > 1 a ``CompositionVecEnv`` (a
    stable-baselines3 ``VecEnv``). ``log_dir`` is the folder for the backend's training log
    (CSV/TensorBoard); None means write none (a build that only checks the policy can be built,
    or a run read back with ``--from``). ``overlap_update`` (``train.overlap_update``) asks the
    backend to run its update in another process while the next rollout is collected, acting one
    update behind (the PPO backends do: ``reml_plugins/ppo/overlap.py``); a backend that cannot,
    updates as before, and whatever it saves, evaluates or hands out must include every update made.
    """

    env: Any
    log_dir: Path | None = None
    overlap_update: bool = False
