"""The ``omniglot`` task plugin: few-shot N-way K-shot classification of Omniglot, read from the
standard folder layout the user points at (``--set task.root=FOLDER``; nothing is downloaded),
rotations as extra classes, with disjoint meta-train/validation/test classes split by character."""

from __future__ import annotations

from reml_core import hookimpl
from reml_core.specs import Recommendation, TaskSamplerSpec
from reml_plugins.omniglot.sampler import OmniglotConfig, OmniglotTaskSampler

# K values per class: a task holds support_shots (default 5) support images per class, so the
# core's default K of 5 and 10 would not fit. Budgets over the core's (reml_core.config.CORE_PRESETS).
_SHOTS = {"env": {"shots": [1, 5]}}
EXPERIMENT_PRESETS = {
    "smoke": {
        **_SHOTS,
        "train": {"env_steps": 2_000, "checkpoint_every": 1_000, "validation_tasks": 10, "calibration_episodes": 20},
        "eval": {"shots": [1, 5], "test_tasks": 50, "curve_steps": 50, "curve_tasks": 20},
    },
    "default": {
        **_SHOTS,
        "train": {"env_steps": 100_000, "checkpoint_every": 10_000, "validation_tasks": 100, "calibration_episodes": 200},
        "eval": {"shots": [1, 5], "test_tasks": 600, "curve_steps": 100, "curve_tasks": 100},
    },
    "full": {
        **_SHOTS,
        "train": {"env_steps": 1_000_000, "checkpoint_every": 100_000, "validation_tasks": 200, "calibration_episodes": 500},
        "eval": {"shots": [1, 5], "test_tasks": 600, "curve_steps": 100, "curve_tasks": 600},
    },
}


@hookimpl
def reml_task_samplers():
    yield TaskSamplerSpec(
        name="omniglot",
        factory=lambda config, context: OmniglotTaskSampler(config),
        config_model=OmniglotConfig,
        description=("Few-shot N-way K-shot classification of Omniglot from a local folder (task.root, the standard "
                     "images_background/images_evaluation layout; nothing is downloaded), rotations as extra classes, "
                     "disjoint class splits by character."),
        recommended=Recommendation(
            encoder="prototypes", pool="conv", reward="neg-mse", policy="ppo-mlp", baselines=("maml", "scratch"), run_baselines=("scratch",)
        ),
        experiment_presets=EXPERIMENT_PRESETS,
    )
