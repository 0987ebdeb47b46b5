"""A global pool of convolutional layers for few-shot image classification (N-way K-shot).

Roles, for images ``[n, C_in, H, W]`` and ``N`` classes (read from the task sampler's
``input_shape`` and ``output_size``):

- an INPUT layer is a conv block ``C_in -> C`` (3x3, padding 1), the task norm, ReLU, and a 2x2
  max-pool (under the pooling rule below);
- a HIDDEN layer is a conv block ``C -> C`` (3x3, padding 1), the task norm, ReLU, and a 2x2
  max-pool (under the pooling rule below);
- an OUTPUT layer is the classification head: global average pooling over space, then a linear
  ``C -> N`` giving the logits ``[n, N]``. Average pooling makes the head independent of the
  spatial size, so any depth composes with any head.

The pooling rule. A pooling decision belongs to the *slot*, never to the layer (any hidden layer
can sit in any hidden slot): every slot before the head (the input slot and each hidden slot)
max-pools 2x2 iff the feature map it produces is at least ``2 * min_spatial`` in both height and
width, i.e. iff pooling leaves it at least ``min_spatial``. Spatial sizes therefore depend only on
the input shape and the slot position: with ``min_spatial`` 2, digits' 8x8 runs
8 -> 4 (input) -> 2 (hidden 1) -> 2 -> ..., Omniglot's 28x28 runs 28 -> 14 -> 7 -> 3 -> 3 -> ...
(:meth:`ConvLayerPool.spatial_sizes`). Any number of hidden layers composes.

The task norm (``norm="task"``) is ``group_norm`` with one group and no affine parameters after
every conv, before the ReLU: each image is normalised over its own channels and pixels, so there
is nothing in the pool to store, no batch statistics (one image works as well as a hundred), and
no information passes between the images of a batch.

The pool stores each role's layers stacked in one tensor per parameter; pool index order is all
input layers, then all hidden layers, then all output layers. Beside the per-network path of the
:class:`reml_core.interfaces.LayerPool` protocol it has the batched one
(:class:`~reml_core.interfaces.BatchedLayerPool`: ``build_batch``, ``write_back_batch``) and the
:class:`~reml_core.interfaces.MetaGradientLayerPool` capability (``parameters()``; ``build_batch``
gathers the layers differentiably), so ``env.pool_update = "protocol"`` can train it.

The batched networks (:class:`BatchedConvNetwork`) stack B networks' channels and convolve them as
one grouped convolution (``groups=B``: group ``b`` sees only network ``b``'s channels and weights);
the task norm becomes ``group_norm`` with B groups, which normalises each network's C channels of
each image on their own, exactly the single network's one-group norm; max-pooling is per channel.
Nothing is shared between rows and there is no state besides the parameters (the task norm has
none), so row ``b`` computes what the single network computes, within rounding (the grouped kernel
sums in its own order; ``tests/test_conv_meta_gradient.py`` states the bound). Grouped convolution
was chosen over ``torch.func.vmap`` of the single network (vmap lowers a batched-weight conv2d to a
grouped call too, but measured 1.6x slower for 16 digits networks' loss and gradient) and over a
loop of single convolutions (1.5-3.5x slower on digits, about even on 28x28 images); written out it
differentiates twice (the protocol update's second-order meta-gradient) with plain autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from reml_core.errors import ComponentBuildError
from reml_core.interfaces import Role, TaskContext
from reml_core.pools import RoleIndex

#: A pool larger than these cannot be what anyone meant: it would exhaust memory before training.
MAX_LAYERS_PER_ROLE = 1000
MAX_CHANNELS = 1024
MAX_PARAMETERS = 50_000_000  # 200 MB of float32
MAX_MIN_SPATIAL = 256
#: Image channels and classes the pool accepts from a task sampler.
MAX_INPUT_CHANNELS = 64
MAX_CLASSES = 10_000
KERNEL = 3
#: Probe images (the first ones) over which hidden units are judged in :meth:`ConvLayerPool.diagnostics`:
#: every input layer's representation of each is fed to every hidden layer, so this bounds the cost.
HIDDEN_PROBE_IMAGES = 32
NORM_EPS = 1e-5


def _parameter_count(
    input_layers: int, hidden_layers: int, output_layers: int, channels: int, in_channels: int, classes: int
) -> int:
    k = KERNEL * KERNEL
    return (
        input_layers * (channels * in_channels * k + channels)
        + hidden_layers * (channels * channels * k + channels)
        + output_layers * (classes * channels + classes)
    )


class ConvPoolConfig(BaseModel):
    """Pool size, channel count, normalisation and the pooling floor."""

    model_config = ConfigDict(extra="forbid")

    input_layers: int = Field(
        8, gt=0, le=MAX_LAYERS_PER_ROLE, description="conv blocks that map the image's C_in channels to C"
    )
    hidden_layers: int = Field(16, gt=0, le=MAX_LAYERS_PER_ROLE, description="conv blocks that map C channels to C")
    output_layers: int = Field(
        8, gt=0, le=MAX_LAYERS_PER_ROLE, description="heads: global average pooling, then linear C -> N classes"
    )
    channels: int = Field(32, gt=0, le=MAX_CHANNELS, description="C, the channels of every feature map")
    norm: Literal["none", "task"] = Field(
        "task",
        description="'task': group norm with one group and no parameters after each conv (per image, nothing pooled); "
        "'none': no normalisation",
    )
    min_spatial: int = Field(
        2,
        ge=1,
        le=MAX_MIN_SPATIAL,
        description=(
            "a slot before the head max-pools 2x2 iff its feature map stays at least this high and wide afterwards"
        ),
    )

    @model_validator(mode="after")
    def _fits_in_memory(self) -> ConvPoolConfig:
        """Refuse a pool too large to hold, before a single tensor is allocated (1 input channel and 1 class
        assumed)."""
        parameters = _parameter_count(self.input_layers, self.hidden_layers, self.output_layers, self.channels, 1, 1)
        if parameters > MAX_PARAMETERS:
            raise ValueError(
                f"a pool of {self.input_layers}/{self.hidden_layers}/{self.output_layers} conv layers of "
                f"{self.channels} "
                f"channels holds {parameters:,} parameters; the limit is {MAX_PARAMETERS:,} (200 MB)"
            )
        return self


def pooling_plan(input_hw: tuple[int, int], depth: int, min_spatial: int) -> tuple[list[bool], list[tuple[int, int]]]:
    """For a ``depth``-layer network: whether each slot before the head pools, and the (height, width) it outputs.

    Both lists have ``depth - 1`` entries (the input slot, then the hidden slots). A slot pools
    iff its feature map (convs keep the size) is at least ``2 * min_spatial`` high and wide.
    """
    if depth < 2:
        raise ValueError(f"a network needs at least 2 layers (an input layer and a head), got depth {depth}")
    h, w = input_hw
    pools, sizes = [], []
    for _ in range(depth - 1):
        pooled = h >= 2 * min_spatial and w >= 2 * min_spatial
        if pooled:
            h, w = h // 2, w // 2
        pools.append(pooled)
        sizes.append((h, w))
    return pools, sizes


_POOL = [2, 2]  # max_pool2d's kernel and stride
_NO_PADDING = [0, 0]
_NO_DILATION = [1, 1]


class _ChannelsLastMaxPool(torch.autograd.Function):
    """``F.max_pool2d(x, 2)`` of a CPU tensor, with its indices found in the channels-last layout.

    PyTorch's CPU max-pool kernel for contiguous ``[n, C, H, W]`` tensors visits one output pixel
    at a time, without SIMD, where the channels-last kernel takes a vector of channels at a time:
    on a stack of conv networks (``B * C`` channels, small images) the first was about a quarter
    of a digits step, and the copy to channels-last and back is cheaper than the difference
    (forward 3-5x faster, docs/performance.md). Both kernels scan each window in the same order
    and keep the first of equal maxima, so the values and the indices are the ones
    ``F.max_pool2d`` finds; the backward pass is PyTorch's own with those indices, so the
    gradients (and their own gradients, for the protocol update's second-order meta-gradient)
    are bit for bit ``F.max_pool2d``'s (``tests/test_conv_pool.py``).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        result, indices = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), _POOL, _POOL, _NO_PADDING, _NO_DILATION, False
        )
        indices = indices.contiguous()  # a flat index into each (image, channel)'s H x W plane: layout-free
        ctx.save_for_backward(x, indices)
        return result.contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        x, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), x, _POOL, _POOL, _NO_PADDING, _NO_DILATION, False, indices
        )


def _plain_max_pool_only(x: torch.Tensor) -> bool:
    """Whether ``x`` must take ``F.max_pool2d`` itself: not a contiguous CPU batch of images, or inside a
    ``torch.func`` transform (MAML's torch-func backend vmaps and differentiates the network) or
    ``torch.compile``, which a hand-written autograd function would have to be taught."""
    if x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous() or torch.compiler.is_compiling():
        return True
    wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return wrapped is None or bool(wrapped(x))


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` of ``[n, C, H, W]``, the same values and gradients, faster on the CPU."""
    if _plain_max_pool_only(x):
        return F.max_pool2d(x, 2)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2).contiguous()
    return cast("torch.Tensor", _ChannelsLastMaxPool.apply(x))


def _block(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, norm: bool, pooled: bool) -> torch.Tensor:
    """One conv block: 3x3 conv (padding 1), the task norm, ReLU, and a 2x2 max-pool if ``pooled``."""
    x = _pre_activation(x, weight, bias, norm)
    x = F.relu(x)
    return max_pool_2x2(x) if pooled else x


def _pre_activation(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, norm: bool) -> torch.Tensor:
    x = F.conv2d(x, weight, bias, padding=KERNEL // 2)
    return F.group_norm(x, 1, eps=NORM_EPS) if norm else x


class ConvComposedNetwork(nn.Module):
    """Conv blocks then a head, built from pool layers; maps images ``[n, C_in, H, W]`` to logits ``[n, N]``.

    ``weights[i]``/``biases[i]`` are copies of the pool layer in slot ``i`` (network order: input,
    hidden..., head). ``pools[i]`` says whether slot ``i`` (before the head) max-pools; it is fixed
    by the slot's position (see :func:`pooling_plan`). Flat inputs ``[n, C_in * H * W]`` are
    reshaped to ``input_shape``.
    """

    def __init__(
        self,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor],
        *,
        pools: Sequence[bool],
        norm: bool,
        input_shape: tuple[int, int, int],
    ) -> None:
        super().__init__()
        if len(pools) != len(weights) - 1:
            raise ValueError(f"{len(weights)} layers need {len(weights) - 1} pooling flags, got {len(pools)}")
        self.weights = nn.ParameterList([nn.Parameter(w) for w in weights])
        self.biases = nn.ParameterList([nn.Parameter(b) for b in biases])
        self.pools = tuple(bool(p) for p in pools)
        self.norm = norm
        self.input_shape = cast("tuple[int, int, int]", tuple(input_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.reshape(x.shape[0], *self.input_shape)
        if x.dim() != 4:
            raise ValueError(
                f"a conv network takes images [n, C, H, W] (or flat [n, C*H*W]), got shape {tuple(x.shape)}"
            )
        last = len(self.weights) - 1
        for i in range(last):
            x = _block(x, self.weights[i], self.biases[i], self.norm, self.pools[i])
        return F.linear(x.mean(dim=(2, 3)), self.weights[last], self.biases[last])


class BatchedConvNetwork:
    """``B`` conv networks of one depth, parameters stacked: ``weights[i]`` is ``[B, *layer shape]``.

    See :class:`reml_core.interfaces.BatchedNetwork` and the module docstring. Calling it maps images
    ``[B, n, C_in, H, W]`` (or flat ``[B, n, C_in * H * W]``) to logits ``[B, n, N]``; row ``b``
    equals :class:`ConvComposedNetwork` of network ``b`` on ``x[b]``, within rounding.
    """

    def __init__(
        self,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor],
        *,
        pools: Sequence[bool],
        norm: bool,
        input_shape: tuple[int, int, int],
    ) -> None:
        if len(pools) != len(weights) - 1:
            raise ValueError(f"{len(weights)} layers need {len(weights) - 1} pooling flags, got {len(pools)}")
        self.weights = list(weights)
        self.biases = list(biases)
        self.pools = tuple(bool(p) for p in pools)
        self.norm = norm
        self.input_shape = cast("tuple[int, int, int]", tuple(input_shape))

    def __len__(self) -> int:
        return self.weights[0].shape[0]

    def parameters(self) -> list[torch.Tensor]:
        """The stacked tensors in :class:`ConvComposedNetwork`'s parameter order: every weight, then every bias."""
        return [*self.weights, *self.biases]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = len(self)
        if x.dim() == 3:
            x = x.reshape(x.shape[0], x.shape[1], *self.input_shape)
        if x.dim() != 5 or x.shape[0] != rows:
            raise ValueError(
                f"{rows} stacked conv networks take images [{rows}, n, C, H, W] (or flat [{rows}, n, C*H*W]), "
                f"got shape {tuple(x.shape)}"
            )
        n = x.shape[1]
        # [B, n, C, H, W] -> [n, B * C, H, W]: network b's channels are the b-th group of C.
        h = x.transpose(0, 1).reshape(n, rows * x.shape[2], x.shape[3], x.shape[4])
        last = len(self.weights) - 1
        for i in range(last):
            weight, bias = self.weights[i], self.biases[i]
            h = F.conv2d(h, weight.reshape(-1, *weight.shape[2:]), bias.reshape(-1), padding=KERNEL // 2, groups=rows)
            if self.norm:
                h = F.group_norm(h, rows, eps=NORM_EPS)  # one group per network: its C channels of each image
            h = F.relu(h)
            if self.pools[i]:
                h = max_pool_2x2(h)
        features = h.mean(dim=(2, 3)).reshape(n, rows, -1).transpose(0, 1)  # [B, n, C]
        head, head_bias = self.weights[last], self.biases[last]
        return torch.baddbmm(head_bias.unsqueeze(1), features, head.transpose(1, 2))

    def with_parameters(self, params: Sequence[torch.Tensor]) -> BatchedConvNetwork:
        """The same networks computing with ``params`` (stacked as :meth:`parameters`) instead of their own."""
        depth = len(self.weights)
        return BatchedConvNetwork(
            params[:depth], params[depth:], pools=self.pools, norm=self.norm, input_shape=self.input_shape
        )

    def network(self, row: int) -> ConvComposedNetwork:
        """A copy of network ``row`` as a single :class:`ConvComposedNetwork`."""
        return ConvComposedNetwork(
            [w[row].detach().clone() for w in self.weights],
            [b[row].detach().clone() for b in self.biases],
            pools=self.pools,
            norm=self.norm,
            input_shape=self.input_shape,
        )

    def value_and_grad(
        self,
        params: Sequence[torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        losses_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The ``[B]`` losses and the gradients of their sum, by autograd on detached copies of ``params``:
        the core updates the stacked tensors in place, so they are kept free of autograd history."""
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_(True) for p in params]
            losses = losses_fn(self.with_parameters(leaves)(x), y)
            grads = torch.autograd.grad(losses.sum(), leaves)
        return losses.detach(), list(grads)


class ConvLayerPool:
    """Conv blocks and classification heads, each with a role; see :class:`reml_core.interfaces.LayerPool`."""

    def __init__(self, config: ConvPoolConfig, context: TaskContext) -> None:
        sampler = context.task_sampler
        shape = getattr(sampler, "input_shape", None) if sampler is not None else None
        if shape is None:
            raise ComponentBuildError(
                "the conv pool needs a task sampler with input_shape (C_in, H, W) for image tasks; "
                f"{'no task sampler was given' if sampler is None else type(sampler).__name__ + ' has none'}"
            )
        try:
            shape = tuple(int(v) for v in shape)
        except (TypeError, ValueError):
            raise ComponentBuildError(f"the task sampler's input_shape must be (C_in, H, W), got {shape!r}") from None
        if len(shape) != 3 or min(shape) < 1:
            raise ComponentBuildError(
                f"the task sampler's input_shape must be three positive sizes (C_in, H, W), got {shape}"
            )
        if shape[0] > MAX_INPUT_CHANNELS:
            raise ComponentBuildError(
                f"the task sampler's input_shape {shape} has {shape[0]} channels; the conv pool takes at most "
                f"{MAX_INPUT_CHANNELS}"
            )
        classes = int(getattr(sampler, "output_size", 0) or 0)
        if not 1 <= classes <= MAX_CLASSES:
            raise ComponentBuildError(
                f"the task sampler's output_size (N classes) must be 1..{MAX_CLASSES}, got {classes}"
            )
        parameters = _parameter_count(
            config.input_layers, config.hidden_layers, config.output_layers, config.channels, shape[0], classes
        )
        if parameters > MAX_PARAMETERS:
            raise ComponentBuildError(
                f"this conv pool would hold {parameters:,} parameters for input {shape} and {classes} classes; "
                f"the limit is {MAX_PARAMETERS:,} (200 MB)"
            )
        self.config = config
        self.input_shape: tuple[int, int, int] = shape
        self.in_channels = shape[0]
        self.classes = classes
        c = config.channels
        self._shapes: dict[Role, tuple[int, tuple[int, ...]]] = {
            Role.INPUT: (config.input_layers, (c, self.in_channels, KERNEL, KERNEL)),
            Role.HIDDEN: (config.hidden_layers, (c, c, KERNEL, KERNEL)),
            Role.OUTPUT: (config.output_layers, (classes, c)),
        }
        self.device = torch.device(context.device)
        generator = torch.Generator().manual_seed(context.seed)  # drawn on the CPU: the same layers on every device
        self.weights: dict[Role, torch.Tensor] = {}
        self.biases: dict[Role, torch.Tensor] = {}
        for role, (count, _) in self._shapes.items():
            weight, bias = self._initial(role, count, generator)
            self.weights[role], self.biases[role] = weight.to(self.device), bias.to(self.device)
        self._index = RoleIndex(
            {role: shape[0] for role, shape in self._shapes.items()}
        )  # global index <-> (role, row)
        self.roles: list[Role] = self._index.roles
        self.size = self._index.size

    def describe(self) -> str:
        c = self.config
        shape = "x".join(str(v) for v in self.input_shape)
        norm = "group norm (one group, no parameters), " if c.norm == "task" else ""
        return (
            f"{c.input_layers} input, {c.hidden_layers} hidden and {c.output_layers} output conv layers of "
            f"{c.channels} channels "
            f"(3x3 conv, {norm}ReLU, 2x2 max-pool in every slot whose map stays at least {c.min_spatial} wide; "
            f"head: global average pooling and a linear layer) mapping {shape} images to {self.classes} logits; "
            f"write-back blends trained layers into the pool."
        )

    # -- initialisation ----------------------------------------------------------------------

    def _initial(self, role: Role, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` fresh layers of ``role``: Kaiming-uniform convs (ReLU gain), Xavier-uniform heads, zero biases."""
        shape = self._shapes[role][1]
        if role is Role.OUTPUT:
            fan_out, fan_in = shape
            bound = math.sqrt(6.0 / (fan_in + fan_out))
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            bound = math.sqrt(6.0 / fan_in)  # kaiming_uniform_ with gain sqrt(2): sqrt(2) * sqrt(3 / fan_in)
        weight = (torch.rand(count, *shape, generator=generator) * 2 - 1) * bound
        bias = torch.zeros(count, shape[0])
        return weight, bias

    # -- indices -----------------------------------------------------------------------------

    def locate(self, index: int) -> tuple[Role, int]:
        """The role of a pool index and its position among that role's layers."""
        return self._index.locate(index)

    def count(self, role: Role) -> int:
        return self._shapes[role][0]

    def _located(self, indices: Sequence[int]) -> list[tuple[Role, int]]:
        """Each index's (role, local position), checking the network order input, hidden..., output."""
        if len(indices) < 2:
            raise ValueError(f"a conv network needs an input layer and a head, got {len(indices)} layer(s)")
        located = [self.locate(int(index)) for index in indices]
        expected = [Role.INPUT, *([Role.HIDDEN] * (len(indices) - 2)), Role.OUTPUT]
        for slot, ((role, _), wanted) in enumerate(zip(located, expected)):
            if role is not wanted:
                raise ValueError(
                    f"slot {slot} of a {len(indices)}-layer network needs a {wanted.value} layer; "
                    f"pool index {indices[slot]} is a {role.value} layer"
                )
        return located

    def spatial_sizes(self, depth: int) -> list[tuple[int, int]]:
        """The (height, width) each slot before the head outputs in a ``depth``-layer network."""
        return pooling_plan(self.input_shape[1:], depth, self.config.min_spatial)[1]

    def output_spatial(self, hidden: int) -> tuple[int, int]:
        """The (height, width) of the feature map the head averages, with ``hidden`` hidden layers."""
        return self.spatial_sizes(hidden + 2)[-1]

    # -- networks ----------------------------------------------------------------------------

    def _network(self, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> ConvComposedNetwork:
        pools, _ = pooling_plan(self.input_shape[1:], len(weights), self.config.min_spatial)
        return ConvComposedNetwork(
            weights, biases, pools=pools, norm=self.config.norm == "task", input_shape=self.input_shape
        )

    def build(self, indices: Sequence[int]) -> ConvComposedNetwork:
        """A network of copies of the given layers, in network order (input, hidden..., output)."""
        weights, biases = [], []
        for role, local in self._located(indices):
            weights.append(self.weights[role][local].clone())
            biases.append(self.biases[role][local].clone())
        return self._network(weights, biases)

    def fresh_network(self, depth: int, generator: torch.Generator) -> ConvComposedNetwork:
        """The architecture ``build`` gives for ``depth`` layers, freshly initialised from ``generator`` (for
        scratch)."""
        if depth < 2:
            raise ValueError(f"a conv network needs at least 2 layers, got depth {depth}")
        weights, biases = [], []
        for role in [Role.INPUT, *([Role.HIDDEN] * (depth - 2)), Role.OUTPUT]:
            weight, bias = self._initial(role, 1, generator)
            weights.append(weight[0].to(self.device))
            biases.append(bias[0].to(self.device))
        return self._network(weights, biases)

    @torch.no_grad()
    def write_back(self, indices: Sequence[int], network: nn.Module, rate: float = 1.0) -> None:
        """Move the pool layers the network was built from towards its (trained) layers, slot by slot in order.

        ``rate`` 1 replaces them; below 1 it is a Reptile-style step ``pool += rate * (trained - pool)``.
        An index named twice moves towards its first slot, then its second (at rate 1 the later slot wins).
        """
        if not isinstance(network, ConvComposedNetwork) or len(network.weights) != len(indices):
            raise TypeError("write_back needs the ConvComposedNetwork that build() returned for these indices")
        for slot, (role, local) in enumerate(self._located(indices)):
            self.weights[role][local].lerp_(network.weights[slot], rate)
            self.biases[role][local].lerp_(network.biases[slot], rate)

    def parameters(self) -> list[torch.Tensor]:
        """The pool's own tensors, every role's weights then biases (the MetaGradientLayerPool capability)."""
        return [*self.weights.values(), *self.biases.values()]

    # -- many networks at once (the BatchedLayerPool capability) ---------------------------------

    def _slot_rows(self, indices: Sequence[Sequence[int]]) -> list[tuple[Role, torch.Tensor]]:
        """Per slot: its role (every index list is checked in network order, so one role per slot) and the local
        rows."""
        return self._index.slot_rows(indices, self._located, self.device)

    def build_batch(self, indices: Sequence[Sequence[int]]) -> BatchedConvNetwork:
        """Networks of copies of the given layers, stacked; row ``b`` equals ``build(indices[b])``.

        The copies are an indexed gather, differentiable with respect to the pool's tensors while
        they require gradients (the protocol update): a layer several networks chose receives the
        sum of their gradients.
        """
        slots = self._slot_rows(indices)
        weights = [self.weights[role].index_select(0, rows) for role, rows in slots]
        biases = [self.biases[role].index_select(0, rows) for role, rows in slots]
        pools, _ = pooling_plan(self.input_shape[1:], len(slots), self.config.min_spatial)
        return BatchedConvNetwork(
            weights, biases, pools=pools, norm=self.config.norm == "task", input_shape=self.input_shape
        )

    @torch.no_grad()
    def write_back_batch(
        self, indices: Sequence[Sequence[int]], network: BatchedConvNetwork, rate: float, keep: Sequence[bool]
    ) -> None:
        """``write_back(indices[b], network b, rate)`` for every kept ``b``, in order: a pool layer that
        several networks chose moves towards each of them in turn, as sequential write-backs move it
        (the same in-place ``lerp_`` on the same slices, so the same bits)."""
        if not isinstance(network, BatchedConvNetwork):
            raise TypeError(
                "write_back_batch needs the BatchedConvNetwork that build_batch() returned for these indices"
            )
        if len(keep) != len(indices) or len(network) != len(indices):
            raise ValueError("write_back_batch needs one keep flag and one network row per index list")
        slots = self._slot_rows(indices)
        if len(network.weights) != len(slots):
            raise ValueError(f"the network has {len(network.weights)} layers, the index lists {len(slots)}")
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
            state[f"{role.value}.weight"] = self.weights[role].to("cpu", copy=True).contiguous()
            state[f"{role.value}.bias"] = self.biases[role].to("cpu", copy=True).contiguous()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = {
            f"{role.value}.{kind}": tensor
            for role in self._shapes
            for kind, tensor in (("weight", self.weights[role]), ("bias", self.biases[role]))
        }
        if set(state) != set(expected):
            raise ValueError(f"conv pool state has keys {sorted(state)}, expected {sorted(expected)}")
        for key, tensor in expected.items():
            value = state[key]
            if not isinstance(value, torch.Tensor) or value.shape != tensor.shape:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"conv pool state {key!r} has shape {shape}, expected {tuple(tensor.shape)}")
            if not value.is_floating_point():
                raise ValueError(f"conv pool state {key!r} has dtype {value.dtype}, expected floating point")
            if not torch.isfinite(value).all():
                raise ValueError(f"conv pool state {key!r} holds NaN or infinite values")
        with torch.no_grad():
            for role in self._shapes:
                self.weights[role].copy_(state[f"{role.value}.weight"])
                self.biases[role].copy_(state[f"{role.value}.bias"])

    # -- health ------------------------------------------------------------------------------

    @torch.no_grad()
    def diagnostics(self, probe: torch.Tensor) -> dict[str, float]:
        """Signs of collapse: dead channels and weight norms per role.

        An input channel is dead when its pre-activation (after the norm) is never positive at any
        pixel of any ``probe`` image (task inputs). A hidden channel is dead when it is never
        positive, in the first hidden slot, for any representation an input layer of the pool
        produces from the first ``HIDDEN_PROBE_IMAGES`` probe images. Norms are Frobenius norms,
        averaged over layers.
        """
        if probe.dim() == 2:
            probe = probe.reshape(probe.shape[0], *self.input_shape)
        probe = probe.to(self.device, self.weights[Role.INPUT].dtype)
        norm = self.config.norm == "task"
        pools, _ = pooling_plan(self.input_shape[1:], 2, self.config.min_spatial)
        dead_input, representations = [], []
        for layer in range(self.count(Role.INPUT)):
            pre = _pre_activation(probe, self.weights[Role.INPUT][layer], self.biases[Role.INPUT][layer], norm)
            dead_input.append((pre <= 0).all(dim=3).all(dim=2).all(dim=0))  # [C]
            rep = F.relu(pre[:HIDDEN_PROBE_IMAGES])
            representations.append(max_pool_2x2(rep) if pools[0] else rep)
        reps = torch.cat(representations)
        dead_hidden = []
        for layer in range(self.count(Role.HIDDEN)):
            pre = _pre_activation(reps, self.weights[Role.HIDDEN][layer], self.biases[Role.HIDDEN][layer], norm)
            dead_hidden.append((pre <= 0).all(dim=3).all(dim=2).all(dim=0))
        stats = {
            "dead_input_units": torch.stack(dead_input).float().mean().item(),
            "dead_hidden_units": torch.stack(dead_hidden).float().mean().item(),
        }
        for role in self._shapes:
            stats[f"weight_norm_{role.value}"] = self.weights[role].flatten(1).norm(dim=1).mean().item()
        return stats


def build_conv_pool(config: ConvPoolConfig, context: TaskContext) -> ConvLayerPool:
    return ConvLayerPool(config, context)
