"""What was learned, for a user's own task: a plain PyTorch network from a finished run or benchmark.

::

    learner = reml_core.load("runs/mine").learner()          # REML: policy + trained pool
    network = learner.network_for(x_support, y_support)      # torch.nn.Sequential of standard layers
    network = learner.adapt(network, x_support, y_support)   # the protocol's SGD fine-tuning
    y_query = learner.predict(x_support, y_support, x_query) # both in one call
    save_network(network, "net.pt")                           # loads with torch alone (weights_only=True)

``method="maml"`` and ``"scratch"`` hand out those methods' starting networks instead (where the
folder trained them). The network is rebuilt from the method's own module as an ``nn.Sequential`` of
standard ``torch.nn`` layers (``Linear``, ``ReLU``, ``Tanh``, ``Conv2d``, ``GroupNorm``,
``MaxPool2d``, ``AdaptiveAvgPool2d``, ``Flatten``), checked to compute the same outputs: it needs
nothing of REML to run, save or load, and ``torch.jit.script`` and ``torch.export`` accept it.

Every input is checked before anything runs, with one :class:`LearnerInputError` (a
:class:`~reml_core.errors.UserError`) per problem: shapes and dtypes, non-finite values, a K
outside what the run supports, a classification support set without K of each class. Data outside
the range the family was meta-trained on is a :class:`OutOfRangeWarning` naming the range.
Nothing here trains a policy, prints or exits: the folder is only read.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from reml_core.errors import CheckpointError, UserError
from reml_core.inner_loop import finetune_sgd
from reml_core.interfaces import LossFn, Task, TaskSampler
from reml_core.storage import atomic_write_bytes, latest_checkpoint, read_json_file, verify_checkpoint

if TYPE_CHECKING:
    from reml_core.config import RunConfig
    from reml_core.experiment import Components
    from reml_core.results import ResultsDocument

#: The format tag of a file written by :func:`save_network`.
NETWORK_FORMAT = "reml.plain-network/1"


class LearnerInputError(UserError, ValueError):
    """Data given to a :class:`Learner` that it cannot use (a ``ValueError`` too)."""


class InputDataError(LearnerInputError):
    """Support or query data of the wrong type, shape or dtype, empty, or not finite."""


class ShotsError(LearnerInputError):
    """A support set with a K (points, or examples per class) outside what the run supports."""


class ClassBalanceError(LearnerInputError):
    """A classification support set without the same number K of examples of every class."""


class UnavailableMethodError(UserError, KeyError):
    """A method, seed or encoder the folder does not hold (or that cannot make networks for new data)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OutOfRangeWarning(UserWarning):
    """Data outside the range of the family's meta-training data: the network may predict poorly there."""


# -- plain networks ----------------------------------------------------------------------------

#: The standard layers a plain network is made of, and the constructor arguments that rebuild each.
_LAYER_ARGUMENTS: dict[type[nn.Module], Callable[[Any], dict[str, Any]]] = {
    nn.Linear: lambda m: {"in_features": m.in_features, "out_features": m.out_features},
    nn.ReLU: lambda m: {},
    nn.Tanh: lambda m: {},
    nn.Flatten: lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim},
    nn.Conv2d: lambda m: {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": tuple(m.kernel_size),
        "padding": tuple(m.padding),
    },
    nn.GroupNorm: lambda m: {
        "num_groups": m.num_groups,
        "num_channels": m.num_channels,
        "eps": m.eps,
        "affine": m.affine,
    },
    nn.MaxPool2d: lambda m: {"kernel_size": m.kernel_size},
    nn.AdaptiveAvgPool2d: lambda m: {"output_size": m.output_size},
}
_ACTIVATION_LAYERS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def layer_spec(network: nn.Module) -> list[tuple[str, dict[str, Any]]]:
    """``[(torch.nn class name, constructor arguments), ...]`` of a plain ``nn.Sequential``: what rebuilds it with
    ``nn.Sequential(*(getattr(nn, name)(**arguments) for name, arguments in spec))``."""
    if type(network) is not nn.Sequential:
        raise TypeError(f"a plain network is a torch.nn.Sequential, not {type(network).__name__}")
    spec = []
    for layer in network:
        arguments = _LAYER_ARGUMENTS.get(type(layer))
        if arguments is None:
            raise TypeError(f"{type(layer).__name__} is not one of the standard layers a plain network holds")
        spec.append((type(layer).__name__, arguments(layer)))
    return spec


def save_network(network: nn.Module, path: str | Path) -> Path:
    """Write a plain network to ``path``: its layers and weights, readable by ``torch.load(path, weights_only=True)``.

    Load it anywhere with torch alone::

        saved = torch.load(path, weights_only=True)
        network = torch.nn.Sequential(*(getattr(torch.nn, name)(**arguments) for name, arguments in saved["layers"]))
        network.load_state_dict(saved["state_dict"])
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(
        {
            "format": NETWORK_FORMAT,
            "layers": layer_spec(network),
            "state_dict": {name: tensor.detach().cpu().clone() for name, tensor in network.state_dict().items()},
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_network(path: str | Path) -> nn.Sequential:
    """A network written by :func:`save_network` (what the three lines in its docstring do)."""
    saved = torch.load(Path(path), weights_only=True)
    network = nn.Sequential(*(getattr(nn, name)(**arguments) for name, arguments in saved["layers"]))
    network.load_state_dict(saved["state_dict"])
    return network


def _dense(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (weight, bias) in enumerate(zip(weights, biases)):
        linear = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        layers.append(linear)
        if i < len(weights) - 1:
            layers.append(_ACTIVATION_LAYERS[activation]())
    return nn.Sequential(*layers)


def _conv(network: Any) -> nn.Sequential:
    weights, biases = list(network.weights), list(network.biases)
    layers: list[nn.Module] = []
    for weight, bias, pooled in zip(weights[:-1], biases[:-1], network.pools):
        conv = nn.Conv2d(
            weight.shape[1],
            weight.shape[0],
            tuple(weight.shape[2:]),
            padding=(weight.shape[2] // 2, weight.shape[3] // 2),
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(weight)
            cast(torch.Tensor, conv.bias).copy_(bias)  # bias=True: never None
        layers.append(conv)
        if network.norm:
            layers.append(nn.GroupNorm(1, weight.shape[0], eps=1e-5, affine=False))
        layers.append(nn.ReLU())
        if pooled:
            layers.append(nn.MaxPool2d(2))
    head = _dense(weights[-1:], biases[-1:], "relu")
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), *head)


def plain_network(network: nn.Module, probe: torch.Tensor | None = None) -> nn.Sequential:
    """``network`` as an ``nn.Sequential`` of standard layers computing the same function (a copy).

    Known are: plain sequentials, the dense pool's and the conv pool's composed networks, MAML's MLP,
    and any module with a ``to_plain()`` method returning such a sequential (a third-party pool's way in).
    With a ``probe`` input both are run on it and must agree (within float rounding).
    """
    duck: Any = network  # the branches below recognise a network by its attributes
    if type(network) is nn.Sequential:
        plain = copy.deepcopy(network)
    elif callable(getattr(network, "to_plain", None)):
        plain = duck.to_plain()
    elif (
        hasattr(network, "weights")
        and hasattr(network, "biases")
        and hasattr(network, "pools")
        and hasattr(network, "input_shape")
    ):
        plain = _conv(network)
    elif (
        hasattr(network, "weights")
        and hasattr(network, "biases")
        and getattr(network, "activation", None) in _ACTIVATION_LAYERS
    ):
        plain = _dense(list(duck.weights), list(duck.biases), duck.activation)
    elif (
        isinstance(getattr(network, "layers", None), nn.ModuleList)
        and all(isinstance(m, nn.Linear) for m in duck.layers)
        and getattr(getattr(network, "architecture", None), "activation", None) in _ACTIVATION_LAYERS
    ):
        linears = list(duck.layers)
        plain = _dense([m.weight for m in linears], [m.bias for m in linears], duck.architecture.activation)
    else:
        raise UserError(
            f"cannot turn a {type(network).__name__} into a plain PyTorch network: give its class a to_plain() "
            "method returning a torch.nn.Sequential of standard layers"
        )
    layer_spec(plain)  # only standard layers
    if probe is not None:
        with torch.no_grad():
            expected, found = network(probe), plain(probe)
        scale = float(expected.abs().max()) if expected.numel() else 0.0
        if expected.shape != found.shape or not torch.allclose(found, expected, rtol=1e-4, atol=1e-5 * max(1.0, scale)):
            raise UserError(
                f"the plain copy of a {type(network).__name__} does not compute what it computes; "
                "its layers are not the ones REML knows how to copy (give its class a to_plain() method)"
            )
    return plain


# -- the learner -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataRange:
    """The range of the values a family's meta-training data holds (inputs or targets)."""

    low: float
    high: float

    def contains(self, values: torch.Tensor, slack: float = 1e-6) -> bool:
        margin = slack * max(1.0, abs(self.low), abs(self.high))
        return bool(values.min() >= self.low - margin) and bool(values.max() <= self.high + margin)

    def __str__(self) -> str:
        return f"[{self.low:g}, {self.high:g}]"


@dataclass
class Learner:
    """One method of a finished run or benchmark, turned into networks for a user's own tasks.

    ``task_sampler`` is the family the method was meta-trained on (its held-out tasks:
    ``task_sampler.test_tasks(n)``); ``shots`` the Ks the run was evaluated at and ``max_shots``
    the largest K it supports; ``steps`` and ``lr`` the protocol's fine-tuning (``eval.steps``'
    largest and ``eval.sgd_lr``).
    """

    method: str
    folder: Path
    task_sampler: TaskSampler
    loss_fn: LossFn
    provider: Callable[[Task, int], nn.Module]
    shots: tuple[int, ...]
    steps: int
    lr: float
    plugin: str
    input_range: DataRange | None = None
    target_range: DataRange | None = None

    # -- the user's data ----------------------------------------------------------------------

    @property
    def ways(self) -> int:
        """Classes per task for a classification family (its ``ways``), 1 for regression."""
        return int(self.task_sampler.output_size) if self.classification else 1

    @property
    def classification(self) -> bool:
        return getattr(self.task_sampler, "loss_name", "") == "cross-entropy" or bool(
            getattr(self.task_sampler, "input_shape", None)
        )

    @property
    def max_shots(self) -> int:
        return int(self.task_sampler.max_shots)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input: ``(input_size,)``, or an image's ``(C, H, W)``."""
        shape = tuple(getattr(self.task_sampler, "input_shape", ()) or ())
        return shape if shape else (int(self.task_sampler.input_size),)

    def _inputs(self, name: str, value: Any) -> torch.Tensor:
        array = _numeric(name, value)
        shape = self.input_shape
        if array.ndim == 1 and shape == (1,):
            array = array.reshape(-1, 1)
        elif array.ndim == 2 and len(shape) > 1 and array.shape[1] == math.prod(shape):
            array = array.reshape(-1, *shape)
        if array.ndim != 1 + len(shape) or tuple(array.shape[1:]) != shape:
            want = ", ".join(map(str, shape))
            flat = f" (or [n, {math.prod(shape)}])" if len(shape) > 1 else (" (or [n])" if shape == (1,) else "")
            raise InputDataError(
                f"{name} has shape {list(array.shape)}; the {self.plugin} family's inputs are [n, {want}]{flat}"
            )
        if array.shape[0] == 0:
            raise InputDataError(f"{name} is empty: give at least one point")
        return torch.as_tensor(array, dtype=torch.float32)

    def _targets(self, name: str, value: Any, count: int) -> torch.Tensor:
        array = _numeric(name, value)
        if self.classification:
            if array.ndim == 2 and array.shape[1] == 1:
                array = array.reshape(-1)
            if array.ndim != 1:
                raise InputDataError(f"{name} has shape {list(array.shape)}; class labels are [n]")
            if not np.all(np.equal(np.mod(array, 1), 0)):
                raise InputDataError(f"{name} holds non-integer values; class labels are integers 0..{self.ways - 1}")
            labels = array.astype(np.int64)
            if labels.min() < 0 or labels.max() >= self.ways:
                raise InputDataError(
                    f"{name} holds labels from {labels.min()} to {labels.max()}; this run's tasks have "
                    f"{self.ways} classes, labelled 0..{self.ways - 1}"
                )
            tensor = torch.as_tensor(labels)
        else:
            outputs = int(self.task_sampler.output_size)
            if array.ndim == 1 and outputs == 1:
                array = array.reshape(-1, 1)
            if array.ndim != 2 or array.shape[1] != outputs:
                raise InputDataError(
                    f"{name} has shape {list(array.shape)}; the {self.plugin} family's targets are [n, {outputs}]"
                    + (" (or [n])" if outputs == 1 else "")
                )
            tensor = torch.as_tensor(array, dtype=torch.float32)
        if len(tensor) != count:
            raise InputDataError(
                f"{name} holds {len(tensor)} points but x_support holds {count}; give one target per input"
            )
        return tensor

    def support_task(self, x_support: Any, y_support: Any) -> tuple[Task, int]:
        """A :class:`Task` holding only the user's support set (nothing else for a method to see), and its K.

        Training and query data are empty, the descriptor unknown (NaN): what a method may use of a
        task at test time is its K support points, and only those are given. A classification set
        is reordered so that position i holds class ``i % ways``, as the family's tasks are.
        """
        x = self._inputs("x_support", x_support)
        y = self._targets("y_support", y_support, len(x))
        ways = self.ways
        if self.classification:
            counts = torch.bincount(y, minlength=ways)
            if not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
                shown = ", ".join(f"class {i}: {int(c)}" for i, c in enumerate(counts))
                raise ClassBalanceError(
                    f"a {ways}-way support set needs K examples of each class 0..{ways - 1}, the same K for "
                    f"every class; y_support holds {shown}"
                )
            shots = int(counts[0])
            order = torch.stack([torch.nonzero(y == label).reshape(-1) for label in range(ways)], dim=1).reshape(-1)
            x, y = x[order], y[order]
        else:
            shots = len(x)
            self._check_range("x_support", x, self.input_range, "inputs")
            self._check_range("y_support", y, self.target_range, "targets")
        if not 1 <= shots <= self.max_shots:
            what = "examples of each class" if self.classification else "points"
            raise ShotsError(
                f"the support set holds K = {shots} {what}; this run supports K from 1 to {self.max_shots} "
                f"(it was evaluated at K = {', '.join(map(str, self.shots))})"
            )
        digest = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:16]
        descriptor = tuple(math.nan for _ in self.task_sampler.descriptor_names)
        task = Task(
            f"user-{digest}",
            "user",
            descriptor,
            x[:0],
            y[:0],
            x,
            y,
            x[:0],
            y[:0],
            ways=ways if self.classification else 1,
        )
        return task, shots

    def check_query(self, x_query: Any) -> torch.Tensor:
        """Query inputs as the network takes them (checked like the support set's; a warning when out of range)."""
        query = self._inputs("x_query", x_query)
        self._check_range("x_query", query, self.input_range, "inputs")
        return query

    def _check_range(self, name: str, values: torch.Tensor, known: DataRange | None, what: str) -> None:
        if known is not None and not known.contains(values):
            warnings.warn(
                f"{name} holds values in [{float(values.min()):g}, {float(values.max()):g}], outside {known}, the "
                "range of "
                f"the {what} the {self.plugin} family was meta-trained on; the network may predict poorly there",
                OutOfRangeWarning,
                stacklevel=4,
            )

    # -- networks -----------------------------------------------------------------------------

    def network_for(self, x_support: Any, y_support: Any) -> nn.Sequential:
        """The network the method starts from for this support set, as a plain ``nn.Sequential`` (on the CPU)."""
        task, shots = self.support_task(x_support, y_support)
        return self._network(task, shots)

    def _network(self, task: Task, shots: int) -> nn.Sequential:
        network = self.provider(task, shots)
        network = network.to("cpu")
        return plain_network(network, probe=task.x_support)

    def adapt(
        self, network: nn.Module, x_support: Any, y_support: Any, *, steps: int | None = None, lr: float | None = None
    ) -> nn.Module:
        """A copy of ``network`` fine-tuned as the protocol does: ``steps`` (default: the run's largest
        ``eval.steps``) plain SGD steps at rate ``lr`` (default: ``eval.sgd_lr``) on all K support points."""
        if not isinstance(network, nn.Module):
            raise InputDataError(f"network must be a torch.nn.Module, not {type(network).__name__}")
        steps, lr = self._protocol(steps, lr)
        task, shots = self.support_task(x_support, y_support)
        adapted = copy.deepcopy(network)
        self._finetune(adapted, task, shots, steps, lr)
        return adapted

    def _finetune(self, network: nn.Module, task: Task, shots: int, steps: int, lr: float) -> None:
        x, y = task.support(shots)
        with torch.enable_grad():  # also when called under torch.no_grad()
            finished = finetune_sgd(network, x, y, self.loss_fn, steps=steps, lr=lr)
        if not finished:
            warnings.warn(
                f"fine-tuning diverged (a loss or weight stopped being finite) within {steps} "
                f"step{'' if steps == 1 else 's'} at lr {lr:g}; "
                "try fewer steps or a smaller lr",
                RuntimeWarning,
                stacklevel=3,
            )

    def predict(
        self, x_support: Any, y_support: Any, x_query: Any, *, steps: int | None = None, lr: float | None = None
    ) -> torch.Tensor:
        """The query predictions of the method's network for this support set after the protocol's fine-tuning
        (targets ``[n, outputs]`` for regression, logits ``[n, classes]`` for classification)."""
        steps, lr = self._protocol(steps, lr)
        task, shots = self.support_task(x_support, y_support)
        query = self.check_query(x_query)
        network = self._network(task, shots)
        self._finetune(network, task, shots, steps, lr)
        with torch.no_grad():
            return network(query)

    def _protocol(self, steps: Any, lr: Any) -> tuple[int, float]:
        steps = self.steps if steps is None else steps
        lr = self.lr if lr is None else lr
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise InputDataError(f"steps must be an integer >= 0, not {steps!r}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise InputDataError(f"lr must be a finite number > 0, not {lr!r}")
        return int(steps), float(lr)


def _numeric(name: str, value: Any) -> np.ndarray:
    """``value`` as a float or integer numpy array, or one :class:`InputDataError` naming what is wrong."""
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().numpy()
    elif isinstance(value, (np.ndarray, list, tuple)):
        try:
            array = np.asarray(value)
        except ValueError as error:  # ragged lists
            raise InputDataError(f"{name} is not a rectangular array of numbers ({error})") from None
    else:
        raise InputDataError(
            f"{name} must be a numpy array, a torch tensor or a list of numbers, not {type(value).__name__}"
        )
    if array.dtype == np.bool_ or array.dtype.kind not in "iuf":
        raise InputDataError(f"{name} holds {array.dtype} values; give numbers (floats, or integers)")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputDataError(
            f"{name} holds {int((~np.isfinite(array)).sum())} NaN or infinite values; give finite numbers"
        )
    return array


# -- from a folder -----------------------------------------------------------------------------


def open_learner(
    folder: Path,
    document: ResultsDocument,
    method: str = "reml",
    *,
    seed: int | None = None,
    encoder: str | None = None,
    trust_checkpoint: bool = False,
) -> Learner:
    """The learner of ``method`` in a finished run, benchmark or benchmark seed folder (see
    :meth:`reml_core.api.Results.learner`)."""
    from reml_core.config import load_resolved, resolve_config  # noqa: PLC0415 - lazy: start-up time: reml_core.config imports pydantic
    from reml_core.experiment import build_components  # noqa: PLC0415 - lazy: start-up time: reml_core.experiment imports gymnasium
    from reml_core.registry import PluginRegistry  # noqa: PLC0415 - lazy: start-up time: reml_core.registry imports pluggy

    if method.startswith("reml:"):
        method, encoder = "reml", encoder or method.partition(":")[2]
    registry = PluginRegistry.discover()
    run_folder, seed_folder = _locate(folder, document, seed)
    if method == "reml":
        if run_folder is None:
            encoders = sorted(p.name.removeprefix("reml-") for p in seed_folder.glob("reml-*") if p.is_dir())  # type: ignore[union-attr]
            if not encoders:
                raise UnavailableMethodError(
                    f"{seed_folder} holds no trained REML (methods there: {', '.join(document.methods)})"
                )
            if encoder is None and len(encoders) > 1:
                raise UnavailableMethodError(
                    f"{folder} trained REML with encoders {', '.join(encoders)}; pick one with encoder="
                )
            chosen = encoder or encoders[0]
            if chosen not in encoders:
                raise UnavailableMethodError(
                    f"{folder} holds no REML with encoder {chosen!r} (it has {', '.join(encoders)})"
                )
            run_folder = seed_folder / f"reml-{chosen}"  # type: ignore[operator]
        config = load_resolved(run_folder / "config.json", registry)
        if encoder is not None and config.encoder.name != encoder:
            raise UnavailableMethodError(
                f"the REML in {run_folder} used encoder {config.encoder.name!r}, not {encoder!r}"
            )
        components = build_components(config)
        provider = _reml_provider(config, components, run_folder, trust_checkpoint)
    else:
        if encoder is not None:
            raise UnavailableMethodError(f"encoder= picks a REML; {method} has no encoder")
        if method not in document.methods:
            raise UnavailableMethodError(
                f"{folder} holds no method {method!r} (it holds {', '.join(document.methods)})"
            )
        # a run does not save its baselines: quick ones are meta-trained again, as the run did
        if run_folder is not None:
            config = load_resolved(run_folder / "config.json", registry)
        else:
            data = read_json_file(
                seed_folder.parent / "config.json",  # type: ignore[union-attr]
                "a benchmark's config (a JSON object)",
                error=UserError,
            )
            data["seed"] = int(seed_folder.name.removeprefix("seed-"))  # type: ignore[union-attr]
            config = resolve_config(registry, data, baselines=[method] if method in registry.names("baseline") else [])
        if method not in config.baselines:
            raise UnavailableMethodError(
                f"{folder} holds no method {method!r} (it holds {', '.join(document.methods)})"
            )
        components = build_components(config)
        provider = _baseline_provider(config, components, method, run_folder, seed_folder)
    return _learner(method, folder, config, components, provider)


def _locate(folder: Path, document: ResultsDocument, seed: int | None) -> tuple[Path | None, Path | None]:
    """(the run folder, or None) and (the benchmark seed folder, or None) that ``seed`` picks."""
    if document.kind == "run":
        if seed is not None and seed != document.seed:
            raise UnavailableMethodError(f"{folder} is one run of seed {document.seed}, not {seed}")
        return folder, None
    if document.kind == "seed":
        if seed is not None and seed != document.seed:
            raise UnavailableMethodError(f"{folder} holds seed {document.seed}, not {seed}")
        return None, folder
    seeds = document.seed_list
    if seed is None:
        if len(seeds) > 1:
            raise UnavailableMethodError(
                f"{folder} is a benchmark of seeds {', '.join(map(str, seeds))}; pick one with seed="
            )
        seed = seeds[0]
    if seed not in seeds:
        raise UnavailableMethodError(f"{folder} holds no seed {seed} (its seeds: {', '.join(map(str, seeds))})")
    return None, folder / f"seed-{seed}"


def _reml_provider(
    config: RunConfig, components: Components, out: Path, trust_checkpoint: bool
) -> Callable[[Task, int], nn.Module]:
    """REML's rollout (or best of ``eval.reml_rollouts``) over the trained pool, from the checkpoint chosen on
    validation tasks."""
    from reml_core.methods import ReMLMethod  # noqa: PLC0415 - lazy: start-up time: reml_core.methods imports gymnasium
    from reml_core.pipeline import check_data, unfinished_training  # noqa: PLC0415 - lazy: start-up time: reml_core.pipeline imports gymnasium
    from reml_core.training import load_components, read_trainer_state  # noqa: PLC0415 - lazy: start-up time: reml_core.training imports gymnasium

    if components.encoder.privileged:
        raise UnavailableMethodError(
            f"the REML in {out} was trained with the privileged encoder {config.encoder.name!r}, which reads a task's "
            "true "
            "descriptor; your data has none. Use a run trained with a fair encoder (one that reads only the support "
            "set)"
        )
    latest = latest_checkpoint(out / "checkpoints")
    if latest is None:
        raise CheckpointError(f"{out} holds no checkpoint: its training stopped before the first one")
    unfinished = unfinished_training(out, config.core.train.env_steps)
    if unfinished is not None:
        raise CheckpointError(f"{out} holds an unfinished REML run: {unfinished}; finish it first")
    check_data(out, components, f"REML in {out}")
    best = out / "checkpoints" / "best"
    chosen = (
        best
        if best.is_dir() and read_trainer_state(latest / "trainer.json").best is not None
        else out / "checkpoints" / "final"
    )
    verify_checkpoint(chosen)
    load_components(components, chosen)
    env = components.make_env(mode="evaluate")
    policy = config.policy.spec.factory(config.policy.config, components.context.with_env(env, log_dir=None))
    policy.load(chosen, trust_pickle=trust_checkpoint)
    return ReMLMethod.for_run(policy, env, config).network_for


def _baseline_provider(
    config: RunConfig, components: Components, name: str, run_folder: Path | None, seed_folder: Path | None
) -> Callable[[Task, int], nn.Module]:
    from reml_core.experiment import build_one  # noqa: PLC0415 - lazy: start-up time: reml_core.experiment imports gymnasium
    from reml_core.jobs import BASELINE_RECORD, load_baseline  # noqa: PLC0415 - lazy: start-up time: reml_core.jobs imports gymnasium

    baseline = build_one(config.baselines[name], components.context)
    if seed_folder is not None:
        saved = seed_folder / name
        if not (saved / BASELINE_RECORD).is_file():
            raise UnavailableMethodError(f"{seed_folder} holds no trained {name} (no {saved / BASELINE_RECORD})")
        load_baseline(baseline, name, saved)
    else:
        if "run" not in getattr(config.baselines[name].spec, "compare_in", ()):
            raise UnavailableMethodError(
                f"a run does not save {name}'s training; train it with reml-bench --methods reml,{name}"
            )
        baseline.meta_train(components.task_sampler.train_stream(config.seed), progress=False)
    return baseline.network_for


def _learner(
    method: str, folder: Path, config: RunConfig, components: Components, provider: Callable[[Task, int], nn.Module]
) -> Learner:
    sampler = components.task_sampler
    classification = getattr(sampler, "loss_name", "") == "cross-entropy" or bool(getattr(sampler, "input_shape", None))
    evaluation = config.core.eval
    return Learner(
        method=method,
        folder=folder,
        task_sampler=sampler,
        loss_fn=sampler.loss,
        provider=provider,
        shots=tuple(evaluation.shots),
        steps=max(evaluation.steps),
        lr=evaluation.sgd_lr,
        plugin=config.task.name,
        input_range=None if classification else family_range(sampler, "input"),
        target_range=None if classification else family_range(sampler, "target"),
    )


def family_range(sampler: TaskSampler, what: str) -> DataRange | None:
    """The range of a family's meta-training inputs or targets: its ``input_range``/``target_range``
    (low, high) if it declares one, else ``[-s, s]`` for its ``input_scale``/``target_scale`` s."""
    declared = getattr(sampler, f"{what}_range", None)
    if (
        isinstance(declared, (tuple, list))
        and len(declared) == 2
        and all(isinstance(v, (int, float)) for v in declared)
    ):
        return DataRange(float(declared[0]), float(declared[1]))
    scale = getattr(sampler, f"{what}_scale", None)
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0:
        return DataRange(-float(scale), float(scale))
    return None


# -- tables of numbers in files ----------------------------------------------------------------


class DataFileError(UserError):
    """A data file that is missing, unreadable, empty, or not a table of finite numbers: one line naming it."""


def read_csv(path: str | Path, what: str = "data file") -> tuple[list[str] | None, np.ndarray]:
    """A CSV file of numbers: (its header's column names, or None without a header) and a float64 array ``[rows,
    columns]``.

    A first line that is not all numbers is the header. Every row must have the header's (or the
    first row's) number of fields, every field a finite number; anything else is one
    :class:`DataFileError` naming the file, the line and the column.
    """
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{what} {path} does not exist")
    if not path.is_file():
        raise DataFileError(f"{what} {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataFileError(f"{what} {path} is not a UTF-8 text file (a CSV of numbers)") from None
    except OSError as error:
        raise DataFileError(f"cannot read {what} {path}: {error.strerror or error}") from None
    try:
        rows = [
            (number, row)
            for number, row in enumerate(csv.reader(text.splitlines()), start=1)
            if any(f.strip() for f in row)
        ]
    except csv.Error as error:
        raise DataFileError(f"{what} {path} is not a CSV file: {error}") from None
    if not rows:
        raise DataFileError(f"{what} {path} is empty: it needs a header line and at least one row of numbers")
    header: list[str] | None = None
    if not all(_is_number(field) for field in rows[0][1]):
        header = [field.strip() for field in rows[0][1]]
        rows = rows[1:]
        if not rows:
            raise DataFileError(f"{what} {path} holds only a header line; it needs at least one row of numbers")
    width = len(header) if header is not None else len(rows[0][1])
    values = np.empty((len(rows), width), dtype=np.float64)
    for index, (number, row) in enumerate(rows):
        if len(row) != width:
            raise DataFileError(
                f"{what} {path}, line {number}: {len(row)} fields where the {'header' if header else 'first row'} has "
                f"{width}"
            )
        for column, field in enumerate(row):
            try:
                value = float(field)
            except ValueError:
                name = f"column {header[column]!r}" if header else f"column {column + 1}"
                raise DataFileError(
                    f"{what} {path}, line {number}, {name}: {field.strip()!r} is not a number"
                ) from None
            if not math.isfinite(value):
                name = f"column {header[column]!r}" if header else f"column {column + 1}"
                raise DataFileError(f"{what} {path}, line {number}, {name}: {field.strip()} is not a finite number")
            values[index, column] = value
    return header, values


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True
