"""The ``digits`` task plugin: few-shot N-way K-shot classification of scikit-learn's 8x8 digits,
rotations as extra classes (Omniglot practice), with disjoint meta-train/validation/test classes."""

from __future__ import annotations

from reml_core import hookimpl
from reml_core.specs import Recommendation, TaskSamplerSpec
from reml_plugins.digits.sampler import DigitsConfig, DigitsTaskSampler

# K values per class: a task holds at most support_shots (default 5) support images per class, so the
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
        name="digits",
        factory=lambda config, context: DigitsTaskSampler(config),
        config_model=DigitsConfig,
        description="Few-shot N-way K-shot classification of scikit-learn's 8x8 digits, rotations as extra classes (40), disjoint class splits.",
        recommended=Recommendation(
            encoder="prototypes", pool="conv", reward="neg-mse", policy="ppo-mlp", baselines=("maml", "scratch"), run_baselines=("scratch",)
        ),
        experiment_presets=EXPERIMENT_PRESETS,
    )
