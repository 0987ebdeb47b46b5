"""MAML with learn2learn, the reference library: ``MAML.clone()`` and ``adapt()``, one task at a time.

This is learn2learn's own idiom (as in its examples): clone the wrapped model per task, adapt the
clone on the task's inner points, backpropagate the clone's outer loss into the original
parameters, and average the gradients over the meta-batch. It is slow on a CPU but it is what
experts trust; the equality test holds the torch.func backend to it.
"""

from __future__ import annotations

import contextlib
import io
from types import ModuleType

import torch
from torch import nn

from reml_core.errors import UserError
from reml_core.interfaces import LossFn
from reml_plugins.maml.batches import MetaBatch
from reml_plugins.maml.config import MAMLConfig
from reml_plugins.maml.network import MetaNetwork

INSTALL_HINT = (
    "maml: the learn2learn backend needs the optional package learn2learn "
    "(pip install 'reml[learn2learn]'; on Python >= 3.11 `make install` builds it from source), "
    "or set baselines.maml.backend=torch-func"
)


def import_learn2learn() -> ModuleType:
    """learn2learn, imported on first use; its ``gym`` dependency's deprecation notice is silenced."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # gym prints a multi-line notice on import
            import learn2learn  # noqa: PLC0415 - lazy: optional dependency learn2learn
    except ImportError as error:
        raise UserError(f"{INSTALL_HINT} ({error})") from None
    return learn2learn


class Learn2LearnMAML:
    """Meta-gradients of a network's parameters through ``learn2learn.algorithms.MAML``.

    The network is the sine path's :class:`MetaNetwork` or the image path's pool-built module:
    ``MAML`` wraps any module (its ``clone``/``adapt`` rewrite the module's parameters). Runs eagerly, as the library is
    meant to be used; the ``compile`` setting concerns torch-func only.
    """

    name = "learn2learn"

    def __init__(self, network: MetaNetwork | nn.Module, config: MAMLConfig, loss_fn: LossFn) -> None:
        learn2learn = import_learn2learn()
        self.maml = learn2learn.algorithms.MAML(network, lr=config.inner_sgd_lr, first_order=config.first_order)
        self.inner_steps = config.inner_steps
        self.loss_fn = loss_fn

    def meta_gradient(self, batch: MetaBatch) -> torch.Tensor:
        """The meta-loss of ``batch``; its gradient is left in each parameter's ``.grad``."""
        params = list(self.maml.parameters())
        for param in params:
            param.grad = None
        total = torch.zeros((), device=batch.x_inner.device)
        for x_inner, y_inner, x_outer, y_outer in zip(*batch.as_tuple()):
            learner = self.maml.clone()
            for _ in range(self.inner_steps):
                learner.adapt(self.loss_fn(learner(x_inner), y_inner))
            outer = self.loss_fn(learner(x_outer), y_outer)
            outer.backward()
            total += outer.detach()
        for param in params:
            param.grad.div_(batch.tasks)
        return total / batch.tasks
