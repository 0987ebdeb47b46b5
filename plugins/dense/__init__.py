"""The ``dense`` layer-pool plugin: a global pool of dense input, hidden and output layers."""

from __future__ import annotations

from reml_core import hookimpl
from reml_core.specs import HyperparameterChoice, LayerPoolSpec
from reml_plugins.dense.pool import ACTIVATIONS, DensePoolConfig, build_dense_pool, set_activation


@hookimpl
def reml_layer_pools():
    yield LayerPoolSpec(
        name="dense",
        factory=build_dense_pool,
        config_model=DensePoolConfig,
        description=(
            "Dense layers (input 1->H, hidden H->H, output H->1) with Xavier init; thesis scale 10/30/10, H = 40."
        ),
        presets={"smoke": {"input_layers": 4, "hidden_layers": 8, "output_layers": 4}},
        # A structural hyperparameter the policy may choose per task: env.choose.activation = ["relu", "tanh"].
        choices=(
            HyperparameterChoice(
                name="activation",
                values=tuple(ACTIVATIONS),
                apply=set_activation,
                description="the activation between the composed network's layers (in place of dense.activation)",
            ),
        ),
    )
