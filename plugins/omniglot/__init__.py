"""The ``omniglot`` task plugin: few-shot N-way K-shot classification of Omniglot, read from the
standard folder layout the user points at (``--set task.root=FOLDER``; nothing is downloaded),
rotations as extra classes, with disjoint meta-train/validation/test classes split by character."""

from __future__ import annotations

from reml_core import hookimpl
from reml_core.specs import Recommendation, TaskSamplerSpec
from reml_plugins.classification import EXPERIMENT_PRESETS
from reml_plugins.omniglot.sampler import OmniglotConfig, OmniglotTaskSampler

# K values per class and the budgets of the image families: reml_plugins.classification.


@hookimpl
def reml_task_samplers():
    yield TaskSamplerSpec(
        name="omniglot",
        factory=lambda config, context: OmniglotTaskSampler(config),
        config_model=OmniglotConfig,
        description=(
            "Few-shot N-way K-shot classification of Omniglot from a local folder (task.root, the standard "
            "images_background/images_evaluation layout; nothing is downloaded), rotations as extra classes, "
            "disjoint class splits by character."
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
