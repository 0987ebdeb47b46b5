"""A global pool of dense layers: input (in -> H), hidden (H -> H) and output (H -> out) layers.

The pool stores each role's layers stacked in one tensor per parameter, so building a network
is a handful of small copies and writing one back is an indexed copy. Pool index order is all
input layers, then all hidden layers, then all output layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from reml_core.errors import ComponentBuildError
from reml_core.inner_loop import batched_loss
from reml_core.interfaces import Role, TaskContext
from reml_core.pools import RoleIndex

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "tanh": torch.tanh}


#: A pool larger than these cannot be what anyone meant: it would exhaust memory before training.
MAX_LAYERS_PER_ROLE = 1000
MAX_WIDTH = 4096
MAX_PARAMETERS = 50_000_000  # 200 MB of float32


class DensePoolConfig(BaseModel):
    """Pool size and layer shape. Defaults are the thesis' scale."""

    model_config = ConfigDict(extra="forbid")

    input_layers: int = Field(10, gt=0, le=MAX_LAYERS_PER_ROLE, description="layers that map the task input to H units")
    hidden_layers: int = Field(30, gt=0, le=MAX_LAYERS_PER_ROLE, description="layers that map H units to H units")
    output_layers: int = Field(
        10, gt=0, le=MAX_LAYERS_PER_ROLE, description="layers that map H units to the task output"
    )
    width: int = Field(40, gt=0, le=MAX_WIDTH, description="H, the width of every hidden representation")
    activation: Literal["relu", "tanh"] = "relu"
    init: Literal["xavier_uniform", "xavier_normal"] = Field(
        "xavier_uniform", description="weight init (thesis: Xavier)"
    )
    bias_init: Literal["uniform", "zeros"] = Field(
        "uniform", description="uniform(+-1/sqrt(fan_in)) as torch.nn.Linear does, or zeros"
    )
    revive_dead_units: bool = Field(
        True,
        description="at every checkpoint, lift the bias of each dead ReLU unit (never positive over the task domain) "
        "just enough that it fires again on part of it; networks change little, and the unit can learn again",
    )
    revival_margin: float = Field(
        0.1, gt=0, le=10, description="pre-activation a revived unit reaches at its best probe point"
    )

    @model_validator(mode="after")
    def _fits_in_memory(self) -> DensePoolConfig:
        """Refuse a pool too large to hold, before a single tensor is allocated (inputs/outputs of size 1 assumed)."""
        width = self.width
        parameters = (
            self.input_layers * 2 * width + self.hidden_layers * (width + 1) * width + self.output_layers * (width + 1)
        )
        if parameters > MAX_PARAMETERS:
            raise ValueError(
                f"a pool of {self.input_layers}/{self.hidden_layers}/{self.output_layers} layers of width {width} "
                "holds "
                f"{parameters:,} parameters; the limit is {MAX_PARAMETERS:,} (200 MB)"
            )
        return self


def set_activation(network: Any, name: str) -> None:
    """The dense pool's structural choice (``env.choose.activation``): the activation between a built
    network's layers becomes ``name``; its weights, the pool's, are untouched."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; the dense pool offers {', '.join(ACTIVATIONS)}")
    network.activation = name


class ComposedNetwork(nn.Module):
    """A feed-forward network built from pool layers: linear, activation, ..., linear.

    ``weights[i]``/``biases[i]`` are copies of the pool layer in slot ``i`` (network order).
    """

    def __init__(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], activation: str) -> None:
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(w) for w in weights])
        self.biases = nn.ParameterList([nn.Parameter(b) for b in biases])
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = ACTIVATIONS[self.activation]
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = F.linear(x, weight, bias)
            if i < last:
                x = act(x)
        return x

    def value_and_grad(
        self,
        params: Sequence[torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The loss and its gradient for every parameter; ``params`` is ``list(self.parameters())``.

        Backpropagation written out for this one architecture: about three times faster than
        autograd on networks this small, where per-operation overhead dominates. Autograd only
        differentiates ``loss_fn`` with respect to the prediction, so any loss works.
        Tests check it against autograd.
        """
        depth = len(params) // 2
        weights, biases = params[:depth], params[depth:]
        last = depth - 1
        with torch.no_grad():
            inputs, outputs = [], []
            h = x
            for i, (weight, bias) in enumerate(zip(weights, biases)):
                inputs.append(h)
                h = torch.addmm(bias, h, weight.t())
                if i < last:
                    h = h.clamp_min(0) if self.activation == "relu" else torch.tanh(h)
                    outputs.append(h)
        prediction = h.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(prediction, y)
            (delta,) = torch.autograd.grad(loss, prediction)
        with torch.no_grad():
            grad_w: list[torch.Tensor] = [delta] * len(weights)
            grad_b: list[torch.Tensor] = [delta] * len(weights)
            for i in range(last, -1, -1):
                grad_w[i] = delta.t() @ inputs[i]
                grad_b[i] = delta.sum(0)
                if i > 0:
                    delta = delta @ weights[i]
                    activated = outputs[i - 1]
                    delta = (
                        delta * (activated > 0) if self.activation == "relu" else delta * (1 - activated * activated)
                    )
        return loss.detach(), [*grad_w, *grad_b]


# Row for row, the stacked computation keeps to the single network's kernels where it can: Adam turns
# a rounding difference in a near-zero gradient into a full step, so networks that start equal to
# 1e-8 part after a few steps. Batched products call the same BLAS routine family as single ones,
# except that ATen multiplies small matrices (rows x columns x contraction < 400) with a loop of its
# own that sums in another order; such products, and only those, are computed network by network
# here. Whether a batched and a single BLAS product round alike is the BLAS library's choice per CPU:
# on this project's AMD EPYC they do (the rows are the single network's bits), on an Intel AVX-512
# CPU MKL's one-output products do not. What is promised on every CPU is therefore agreement within
# rounding before Adam and within Adam's reach after it (tests/test_batched_pool.py, docs/performance.md).
_ATEN_SMALL_MATMUL = 400


def _is_small(rows: int, columns: int, contraction: int) -> bool:
    return rows * columns * contraction < _ATEN_SMALL_MATMUL


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ weight^T + bias`` per network (x ``[B, n, in]``, weight ``[B, out, in]``, bias ``[B, out]``),
    what ``torch.addmm(bias, x, weight.t())`` gives each network (bit for bit where the BLAS rounds
    a batched product as a single one, as on this project's AMD CPU; within rounding elsewhere).

    One input feature (sine's x): a multiply and an add, as addmm computes it, and five times
    cheaper than a batched product with an inner dimension of 1. One output feature: addmm's
    matrix-vector product, which the batched product with the row vector first reproduces.
    """
    n, fan_out, fan_in = x.shape[1], weight.shape[1], weight.shape[2]
    if fan_in == 1:
        return x * weight.transpose(1, 2) + bias.unsqueeze(1)
    if _is_small(n, fan_out, fan_in):
        return torch.stack([torch.addmm(b, h, w.t()) for h, w, b in zip(x, weight, bias)])
    if fan_out == 1:
        return torch.baddbmm(bias.unsqueeze(2), weight, x.transpose(1, 2)).transpose(1, 2)
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def _weight_grad(delta: torch.Tensor, layer_input: torch.Tensor) -> torch.Tensor:
    """``delta^T @ layer_input`` per network: ``[B, out, in]``, as ``delta.t() @ layer_input`` gives each."""
    n, fan_out, fan_in = delta.shape[1], delta.shape[2], layer_input.shape[2]
    if fan_in == 1:
        return torch.bmm(layer_input.transpose(1, 2), delta).transpose(1, 2)
    if fan_out != 1 and _is_small(fan_out, fan_in, n):
        return torch.stack([d.t() @ h for d, h in zip(delta, layer_input)])
    return torch.bmm(delta.transpose(1, 2), layer_input)


def _input_grad(delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``delta @ weight`` per network: the gradient reaching a layer's input, as ``delta @ weight`` gives each."""
    n, fan_out, fan_in = delta.shape[1], weight.shape[1], weight.shape[2]
    if fan_out == 1:
        return delta * weight
    if _is_small(n, fan_in, fan_out):
        return torch.stack([d @ w for d, w in zip(delta, weight)])
    return torch.bmm(delta, weight)


class BatchedComposedNetwork:
    """``B`` composed networks of one depth, parameters stacked: ``weights[i]`` is ``[B, out, in]``.

    See :class:`reml_core.interfaces.BatchedNetwork`. Row ``b`` computes what
    :class:`ComposedNetwork` computes for network ``b`` (within rounding, the same bits on some
    CPUs; see ``_affine``), as
    batched matrix products, so ``B`` networks cost far less than ``B`` single ones when each is
    as small as REML's: per-operation overhead, not arithmetic, dominates those.
    """

    def __init__(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], activation: str) -> None:
        self.weights = list(weights)
        self.biases = list(biases)
        self.activation = activation

    def __len__(self) -> int:
        return self.weights[0].shape[0]

    def parameters(self) -> list[torch.Tensor]:
        """The stacked tensors, in :class:`ComposedNetwork`'s order: every weight, then every bias."""
        return [*self.weights, *self.biases]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        act = ACTIVATIONS[self.activation]
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = _affine(x, weight, bias)
            if i < last:
                x = act(x)
        return x

    def with_parameters(self, params: Sequence[torch.Tensor]) -> BatchedComposedNetwork:
        """The same networks computing with ``params`` (stacked as :meth:`parameters`) instead of their own."""
        depth = len(self.weights)
        return BatchedComposedNetwork(params[:depth], params[depth:], self.activation)

    def network(self, row: int) -> ComposedNetwork:
        """A copy of network ``row`` as a single :class:`ComposedNetwork`."""
        return ComposedNetwork(
            [w[row].clone() for w in self.weights], [b[row].clone() for b in self.biases], self.activation
        )

    def value_and_grad(
        self,
        params: Sequence[torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        losses_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The ``[B]`` losses and every parameter's gradient: :meth:`ComposedNetwork.value_and_grad`'s
        backpropagation with batched products, row for row within rounding (tests check it against
        the single network and autograd). Autograd only differentiates ``losses_fn`` with respect
        to the predictions."""
        depth = len(params) // 2
        weights, biases = params[:depth], params[depth:]
        last = depth - 1
        relu = self.activation == "relu"
        with torch.no_grad():
            inputs, outputs = [], []
            h = x
            for i, (weight, bias) in enumerate(zip(weights, biases)):
                inputs.append(h)
                h = _affine(h, weight, bias)
                if i < last:
                    h = h.clamp_min_(0) if relu else h.tanh_()
                    outputs.append(h)
        prediction = h.requires_grad_(True)
        with torch.enable_grad():
            losses = losses_fn(prediction, y)
            (delta,) = torch.autograd.grad(losses, prediction, grad_outputs=torch.ones_like(losses))
        with torch.no_grad():
            grad_w: list[torch.Tensor] = [delta] * depth
            grad_b: list[torch.Tensor] = [delta] * depth
            for i in range(last, -1, -1):
                grad_w[i] = _weight_grad(delta, inputs[i])
                grad_b[i] = delta.sum(1)
                if i > 0:
                    delta = _input_grad(delta, weights[i])
                    activated = outputs[i - 1]
                    # ReLU's backward as one kernel (what autograd runs): delta where the unit was active, else 0.
                    delta = (
                        torch.ops.aten.threshold_backward(delta, activated, 0)
                        if relu
                        else delta * (1 - activated * activated)
                    )
        return losses.detach(), [*grad_w, *grad_b]


class DenseLayerPool:
    """Dense layers for regression, each with a role; see :class:`reml_core.interfaces.LayerPool`.

    It also has the optional :class:`reml_core.interfaces.BatchedLayerPool` capability
    (``build_batch``, ``write_back_batch``).
    """

    def __init__(self, config: DensePoolConfig, context: TaskContext) -> None:
        sampler = context.task_sampler
        shape = tuple(getattr(sampler, "input_shape", ()) or ())
        if len(shape) > 1:
            raise ComponentBuildError(
                "the dense pool's networks take flat inputs of input_size numbers; this family's inputs have shape "
                f"{shape} "
                "(for images use the conv pool)"
            )
        self.config = config
        self.in_features = sampler.input_size
        self.out_features = sampler.output_size
        width = config.width
        self._shapes = {
            Role.INPUT: (config.input_layers, width, self.in_features),
            Role.HIDDEN: (config.hidden_layers, width, width),
            Role.OUTPUT: (config.output_layers, self.out_features, width),
        }
        self.device = torch.device(context.device)
        generator = torch.Generator().manual_seed(context.seed)  # drawn on the CPU: the same layers on every device
        self.weights: dict[Role, torch.Tensor] = {}
        self.biases: dict[Role, torch.Tensor] = {}
        for role, (count, fan_out, fan_in) in self._shapes.items():
            weight, bias = self._initial(count, fan_out, fan_in, generator)
            self.weights[role], self.biases[role] = weight.to(self.device), bias.to(self.device)
        self._index = RoleIndex(
            {role: shape[0] for role, shape in self._shapes.items()}
        )  # global index <-> (role, row)
        self.roles: list[Role] = self._index.roles
        self.size = self._index.size

    def describe(self) -> str:
        c = self.config
        return (
            f"{c.input_layers} input, {c.hidden_layers} hidden and {c.output_layers} output dense layers of width "
            f"{c.width}, {c.activation} between them (or as the policy chooses, env.choose.activation)."
        )

    # -- initialisation ----------------------------------------------------------------------

    def _initial(
        self, count: int, fan_out: int, fan_in: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.init == "xavier_uniform":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            weight = (torch.rand(count, fan_out, fan_in, generator=generator) * 2 - 1) * bound
        else:
            weight = torch.randn(count, fan_out, fan_in, generator=generator) * math.sqrt(2.0 / (fan_in + fan_out))
        if self.config.bias_init == "uniform":
            bias = (torch.rand(count, fan_out, generator=generator) * 2 - 1) / math.sqrt(fan_in)
        else:
            bias = torch.zeros(count, fan_out)
        return weight, bias

    # -- indices -----------------------------------------------------------------------------

    def locate(self, index: int) -> tuple[Role, int]:
        """The role of a pool index and its position among that role's layers."""
        return self._index.locate(index)

    # -- networks ----------------------------------------------------------------------------

    def build(self, indices: Sequence[int]) -> ComposedNetwork:
        """A network of copies of the given layers, in network order (input, hidden..., output)."""
        weights, biases = [], []
        for index in indices:
            role, local = self.locate(index)
            weights.append(self.weights[role][local].clone())
            biases.append(self.biases[role][local].clone())
        return ComposedNetwork(weights, biases, self.config.activation)

    def fresh_network(self, depth: int, generator: torch.Generator) -> ComposedNetwork:
        """The architecture ``build`` gives for ``depth`` layers, freshly initialised (for scratch)."""
        roles = [Role.INPUT, *([Role.HIDDEN] * (depth - 2)), Role.OUTPUT]
        weights, biases = [], []
        for role in roles:
            _, fan_out, fan_in = self._shapes[role]
            weight, bias = self._initial(1, fan_out, fan_in, generator)
            weights.append(weight[0].to(self.device))
            biases.append(bias[0].to(self.device))
        return ComposedNetwork(weights, biases, self.config.activation)

    @torch.no_grad()
    def write_back(self, indices: Sequence[int], network: nn.Module, rate: float = 1.0) -> None:
        """Move the pool layers the network was built from towards its (trained) layers.

        ``rate`` 1 replaces them (the thesis); below 1 it is a Reptile-style step
        ``pool += rate * (trained - pool)``.
        """
        if not isinstance(network, ComposedNetwork) or len(network.weights) != len(indices):
            raise TypeError("write_back needs the ComposedNetwork that build() returned for these indices")
        for slot, index in enumerate(indices):
            role, local = self.locate(index)
            self.weights[role][local].lerp_(network.weights[slot], rate)
            self.biases[role][local].lerp_(network.biases[slot], rate)

    def parameters(self) -> list[torch.Tensor]:
        """The pool's own tensors, every role's weights then biases (the MetaGradientLayerPool capability)."""
        return [*self.weights.values(), *self.biases.values()]

    # -- many networks at once (the optional BatchedLayerPool capability) -----------------------

    def _slot_rows(self, indices: Sequence[Sequence[int]]) -> list[tuple[Role, torch.Tensor]]:
        """Per slot: its role (the same in every network, or the networks cannot be stacked) and the local rows."""
        return self._index.slot_rows(indices)

    def build_batch(self, indices: Sequence[Sequence[int]]) -> BatchedComposedNetwork:
        """Networks of copies of the given layers, stacked; row ``b`` equals ``build(indices[b])``."""
        weights, biases = [], []
        for role, rows in self._slot_rows(indices):
            rows = rows.to(self.device)
            weights.append(self.weights[role].index_select(0, rows))
            biases.append(self.biases[role].index_select(0, rows))
        return BatchedComposedNetwork(weights, biases, self.config.activation)

    @torch.no_grad()
    def slot_losses(
        self,
        templates: Sequence[Sequence[int]],
        slot: int,
        candidates: Sequence[Sequence[int]],
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> np.ndarray | list[list[float]]:
        """The composed support loss of each template with each of its candidates at ``slot``
        (:class:`reml_core.interfaces.ScoresSlotCandidates`): an ``[E, C]`` array when every template has C
        candidates (what the env's scoring takes as it is), else a list per template.

        The layers before the slot run once per template; every layer of the slot's role then runs
        on that activation in one matrix product (``[E * n, in] @ [in, layers * out]``), and the
        layers after the slot on each result; a template's candidates are picked from its row.
        """
        depth = len(templates[0])
        if any(len(template) != depth for template in templates) or not 0 <= slot < depth:
            raise ValueError("slot_losses needs templates of one depth and a slot inside them")
        if len(candidates) != len(templates):
            raise ValueError("slot_losses needs one candidate list per template")
        role = Role.INPUT if slot == 0 else Role.OUTPUT if slot == depth - 1 else Role.HIDDEN
        offset, count = self._index.offsets[role], self._shapes[role][0]
        lengths = {len(chosen) for chosen in candidates}
        # each candidate's row among the role's layers: one array when every template has as many (the usual case)
        rows: np.ndarray | list[np.ndarray]
        if len(lengths) == 1:
            rows = np.asarray(candidates, dtype=np.int64).reshape(len(candidates), -1) - offset
            flat = rows.reshape(-1)
        else:
            rows = [np.asarray(chosen, dtype=np.int64) - offset for chosen in candidates]
            flat = np.concatenate(rows)
        wrong = flat[(flat < 0) | (flat >= count)]
        if len(wrong):
            raise ValueError(
                f"pool layer {int(wrong[0]) + offset} cannot fill slot {slot} of a {depth}-layer network ({role.value})"
            )
        act = ACTIVATIONS[self.config.activation]

        def stacked(position: int) -> tuple[torch.Tensor, torch.Tensor]:
            located = [self.locate(template[position]) for template in templates]
            local = torch.tensor([row for _, row in located], device=self.device)
            layer_role = located[0][0]
            return self.weights[layer_role].index_select(0, local), self.biases[layer_role].index_select(0, local)

        h = x.to(self.device)
        for position in range(slot):
            h = act(_affine(h, *stacked(position)))
        _, fan_out, fan_in = self.weights[role].shape
        templates_n, points = h.shape[0], h.shape[1]
        # every layer of the role on every template's activation: [E * n, in] @ [in, layers * out]
        every = h.reshape(-1, fan_in) @ self.weights[role].permute(2, 0, 1).reshape(fan_in, count * fan_out)
        h = every.reshape(templates_n, points, count, fan_out).transpose(1, 2) + self.biases[role][None, :, None, :]
        for position in range(slot + 1, depth):
            h = act(h)
            weight, bias = stacked(position)
            h = _affine(h.reshape(templates_n, count * points, -1), weight, bias).reshape(
                templates_n, count, points, -1
            )
        targets = y.to(self.device)
        losses = batched_loss(loss_fn)(
            h.reshape(templates_n * count, points, -1),
            targets.unsqueeze(1).expand(templates_n, count, *targets.shape[1:]).reshape(-1, *targets.shape[1:]),
        ).reshape(templates_n, count)
        values = torch.where(torch.isfinite(losses), losses, torch.full_like(losses, math.inf)).cpu().numpy()
        if isinstance(rows, np.ndarray):
            return np.take_along_axis(values, rows, axis=1)
        return [values[e][chosen].tolist() for e, chosen in enumerate(rows)]

    @torch.no_grad()
    def write_back_batch(
        self, indices: Sequence[Sequence[int]], network: BatchedComposedNetwork, rate: float, keep: Sequence[bool]
    ) -> None:
        """``write_back(indices[b], network b, rate)`` for every kept ``b``, in order: a pool layer that
        several networks chose moves towards each of them in turn, as sequential write-backs move it.

        Layer by layer, exactly as :meth:`write_back` (a few hundred small in-place updates per
        batch, cheap beside training, and the same bits: a stacked update would round some
        numbers in other vector lanes).
        """
        if len(keep) != len(indices) or len(network) != len(indices):
            raise ValueError("write_back_batch needs one keep flag and one network row per index list")
        slots = self._slot_rows(indices)
        for row, flag in enumerate(keep):
            if not flag:
                continue
            for slot, (role, locals_) in enumerate(slots):
                local = int(locals_[row])
                self.weights[role][local].lerp_(network.weights[slot][row], rate)
                self.biases[role][local].lerp_(network.biases[slot][row], rate)

    # -- persistence -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {}
        for role in self._shapes:
            state[f"{role.value}.weight"] = self.weights[role].to("cpu", copy=True)
            state[f"{role.value}.bias"] = self.biases[role].to("cpu", copy=True)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = self.state_dict()
        if set(state) != set(expected):
            raise ValueError(f"pool state has keys {sorted(state)}, expected {sorted(expected)}")
        for key, tensor in expected.items():
            value = state[key]
            if not isinstance(value, torch.Tensor) or value.shape != tensor.shape:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"pool state {key!r} has shape {shape}, expected {tuple(tensor.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"pool state {key!r} holds NaN or infinite values")
        for role in self._shapes:
            self.weights[role].copy_(state[f"{role.value}.weight"])
            self.biases[role].copy_(state[f"{role.value}.bias"])

    # -- health ------------------------------------------------------------------------------

    @torch.no_grad()
    def diagnostics(self, probe: torch.Tensor) -> dict[str, float]:
        """Signs of collapse: dead units and weight norms per role.

        An input unit is dead when it is never positive over ``probe`` (task inputs spanning the
        domain). A hidden unit is dead when it is never positive for any representation an input
        layer of the pool produces over ``probe``. Norms are Frobenius norms, averaged over layers.
        """
        act = ACTIVATIONS[self.config.activation]
        probe = probe.to(self.device)
        pre_input = torch.einsum("pi,lhi->lph", probe, self.weights[Role.INPUT]) + self.biases[Role.INPUT][:, None, :]
        dead_input = (pre_input <= 0).all(dim=1).float().mean().item()
        representations = act(pre_input).reshape(-1, self.config.width)
        pre_hidden = (
            torch.einsum("pi,lhi->lph", representations, self.weights[Role.HIDDEN])
            + self.biases[Role.HIDDEN][:, None, :]
        )
        dead_hidden = (pre_hidden <= 0).all(dim=1).float().mean().item()
        stats = {"dead_input_units": dead_input, "dead_hidden_units": dead_hidden}
        for role in self._shapes:
            stats[f"weight_norm_{role.value}"] = self.weights[role].flatten(1).norm(dim=1).mean().item()
        return stats

    @torch.no_grad()
    def maintain(self, probe: torch.Tensor) -> dict[str, float]:
        """Revive dead units (``revive_dead_units``); return the fraction revived per role.

        A unit is dead as :meth:`diagnostics` defines it. Its bias is raised so that its largest
        pre-activation over ``probe`` becomes ``revival_margin``: it fires on a sliver of the domain
        and gets gradients again, while every network it sits in changes only there. Input units
        are revived first, so hidden units are judged on the revived representations.
        """
        if not self.config.revive_dead_units or self.config.activation != "relu":
            return {}
        margin = self.config.revival_margin
        probe = probe.to(self.device)
        pre_input = torch.einsum("pi,lhi->lph", probe, self.weights[Role.INPUT]) + self.biases[Role.INPUT][:, None, :]
        best_input = pre_input.max(dim=1).values  # [layers, units]
        dead_input = best_input <= 0
        self.biases[Role.INPUT] += torch.where(dead_input, margin - best_input, torch.zeros_like(best_input))
        pre_input = torch.einsum("pi,lhi->lph", probe, self.weights[Role.INPUT]) + self.biases[Role.INPUT][:, None, :]
        representations = pre_input.clamp_min(0).reshape(-1, self.config.width)
        pre_hidden = (
            torch.einsum("pi,lhi->lph", representations, self.weights[Role.HIDDEN])
            + self.biases[Role.HIDDEN][:, None, :]
        )
        best_hidden = pre_hidden.max(dim=1).values
        dead_hidden = best_hidden <= 0
        self.biases[Role.HIDDEN] += torch.where(dead_hidden, margin - best_hidden, torch.zeros_like(best_hidden))
        return {
            "revived_input_units": dead_input.float().mean().item(),
            "revived_hidden_units": dead_hidden.float().mean().item(),
        }


def build_dense_pool(config: DensePoolConfig, context: TaskContext) -> DenseLayerPool:
    return DenseLayerPool(config, context)
