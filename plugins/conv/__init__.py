"""The ``conv`` layer-pool plugin: a global pool of conv blocks and classification heads for few-shot images."""

from __future__ import annotations

from reml_core import hookimpl
from reml_core.specs import LayerPoolSpec
from reml_plugins.conv.pool import ConvPoolConfig, build_conv_pool


@hookimpl
def reml_layer_pools():
    yield LayerPoolSpec(
        name="conv",
        factory=build_conv_pool,
        config_model=ConvPoolConfig,
        description=(
            "Conv blocks (3x3 conv, task norm, ReLU, 2x2 max-pool) and average-pool + linear heads for N-way image "
            "classification; 8/16/8 layers, 32 channels."
        ),
        presets={"smoke": {"input_layers": 4, "hidden_layers": 6, "output_layers": 4, "channels": 16}},
    )
