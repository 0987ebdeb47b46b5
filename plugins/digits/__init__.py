"""The ``digits`` task plugin: few-shot N-way K-shot classification of scikit-learn's 8x8 digits,
rotations as extra classes (Omniglot practice), with disjoint meta-train/validation/test classes."""

from __future__ import annotations

from reml_core import hookimpl
from reml_core.specs import Recommendation, TaskSamplerSpec
from reml_plugins.classification import EXPERIMENT_PRESETS
from reml_plugins.digits.sampler import DigitsConfig, DigitsTaskSampler

# K values per class and the budgets of the image families: reml_plugins.classification.


@hookimpl
def reml_task_samplers():
    yield TaskSamplerSpec(
        name="digits",
        factory=lambda config, context: DigitsTaskSampler(config),
        config_model=DigitsConfig,
        description=(
            "Few-shot N-way K-shot classification of scikit-learn's 8x8 digits, rotations as extra classes (40), "
            "disjoint class splits."
        ),
        recommended=Recommendation(
            encoder="prototypes",
            pool="conv",
            reward="neg-mse",
            policy="ppo-mlp",
            # reference: the nearest class mean of the support images, no training (what meta-learning adds)
            baselines=("maml", "scratch", "reference"),
            run_baselines=("scratch", "reference"),
        ),
        experiment_presets=EXPERIMENT_PRESETS,
    )
