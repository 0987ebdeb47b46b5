"""What the built-in image-classification families (``digits``, ``omniglot``) share.

Not a plugin (no entry point): a base class that turns "pick these images for these classes" into
N-way K-shot :class:`reml_core.interfaces.Task`s with the same seeded streams, interleaved support
order, loss and metric, and the experiment presets whose K values fit such tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from reml_core.interfaces import Task
from reml_core.samplers import SPLIT_KEYS, SeededSplits, split_generator

#: Independent random streams (reml_core.samplers): the training stream, each held-out set and the class split.
STREAM_KEYS = {**SPLIT_KEYS, "split": 3}

# K values per class: a task holds support_shots (default 5) support images per class, so the
# core's default K of 5 and 10 would not fit. Budgets over the core's (reml_core.config.CORE_PRESETS).
_SHOTS = {"env": {"shots": [1, 5]}}
# The image protocol: the sine protocol's SGD rate (0.01) barely moves a classifier in 10 steps, so
# fine-tuning takes Finn et al.'s Omniglot step (alpha = 0.4), reported after 0, 1, 3 (their test-time
# count) and 10 steps. The reward's fine-tuning (env.finetune_sgd_lr/steps) follows eval unless set
# (reml_core.settings.ExperimentConfig), and MAML's inner step follows it here (its default is the sine
# protocol's 0.01; one inner step in meta-training, as Finn et al., is its default). Measured on 20
# validation digits tasks (5-way 5-shot, three fresh depth-5 conv-pool networks): query accuracy after
# 1 / 3 / 10 SGD steps was 0.22 / 0.24 / 0.38 at 0.4, 0.30 / 0.44 / 0.49 at 0.1, 0.35 at 0.01 after 10:
# 0.4 overshoots for a network not trained for it, so it rewards the methods that train for the rate.
# Processes: a conv episode end (its network's training) is about 98 % of a meta-training step and PPO's update
# about 2 %, so with train.workers = 2 both processes share the episode ends (train.overlap_update off) rather than
# one of them waiting beside the update (the sine default). Digits default preset, seed 20, this 2-core machine:
# meta-training 781 s with the ends shared against 1 277 s with the update overlapped (docs/performance.md).
# And they share the finished networks in equal shares (train.split = "ends"), not shards of the envs, whose
# finished networks differ in number from step to step: the same run meta-trained in 687 s so and 781 s with shards
# (docs/performance.md).
_TRAIN = {"overlap_update": False, "split": "ends"}
IMAGE_SGD_LR = 0.4
IMAGE_STEPS = [0, 1, 3, 10]
_PROTOCOL = {"sgd_lr": IMAGE_SGD_LR, "steps": IMAGE_STEPS}
_MAML = {"inner_sgd_lr": IMAGE_SGD_LR}
EXPERIMENT_PRESETS: Mapping[str, Mapping[str, Any]] = {
    "smoke": {
        **_SHOTS,
        "train": {
            "env_steps": 2_000,
            "checkpoint_every": 1_000,
            "validation_tasks": 10,
            "calibration_episodes": 20,
            **_TRAIN,
        },
        "eval": {"shots": [1, 5], "test_tasks": 50, "curve_steps": 50, "curve_tasks": 20, **_PROTOCOL},
        "baselines": {"maml": dict(_MAML)},
    },
    "default": {
        **_SHOTS,
        "train": {
            "env_steps": 100_000,
            "checkpoint_every": 10_000,
            "validation_tasks": 100,
            "calibration_episodes": 200,
            **_TRAIN,
        },
        "eval": {"shots": [1, 5], "test_tasks": 600, "curve_steps": 100, "curve_tasks": 100, **_PROTOCOL},
        # A conv MAML iteration costs far more than a sine one: 10 000 took 34 minutes on digits (README).
        "baselines": {"maml": {"iterations": 10_000, **_MAML}},
    },
    "full": {
        **_SHOTS,
        "train": {
            "env_steps": 1_000_000,
            "checkpoint_every": 100_000,
            "validation_tasks": 200,
            "calibration_episodes": 500,
            **_TRAIN,
        },
        "eval": {"shots": [1, 5], "test_tasks": 600, "curve_steps": 100, "curve_tasks": 600, **_PROTOCOL},
        "baselines": {"maml": dict(_MAML)},
    },
}


def stream_generator(entropy: int, stream: str) -> np.random.Generator:
    return split_generator(entropy, STREAM_KEYS[stream])


class ImageTaskSampler(SeededSplits):
    """Seeded N-way K-shot tasks from disjoint class splits; a family supplies the images.

    A subclass sets ``config`` (with ``ways``, ``train_per_class``, ``support_shots``,
    ``query_per_class``, ``test_seed``), ``classes`` (split -> class ids) and ``input_shape``, and
    implements :meth:`_draw_images`. A task picks ``ways`` classes of its split (label i -> the i-th),
    then ``train_per_class + support_shots + query_per_class`` distinct images of each, and lays
    every part out interleaved (position i holds label i % ways), so a K-shot prefix holds K of
    each class.
    """

    loss_name = "cross-entropy"
    stream_keys = STREAM_KEYS
    config: Any
    classes: dict[str, tuple[int, ...]]
    input_shape: tuple[int, ...]

    def _draw_images(self, rng: np.random.Generator, classes: np.ndarray, per_class: int) -> np.ndarray:
        """``[ways, per_class, *input_shape]`` float32 images in [0, 1], drawn with ``rng``."""
        raise NotImplementedError

    def _task(self, rng: np.random.Generator, task_id: str, split: str) -> Task:
        c = self.config
        ways = c.ways
        classes = rng.choice(np.asarray(self.classes[split]), size=ways, replace=False)  # label i -> classes[i]
        per_class = c.train_per_class + c.support_shots + c.query_per_class
        interleaved = self._draw_images(rng, classes, per_class).swapaxes(0, 1)  # [per_class, ways, ...]
        bounds = np.cumsum([0, c.train_per_class, c.support_shots, c.query_per_class])
        parts = []
        for start, stop in zip(bounds[:-1], bounds[1:]):
            x = torch.from_numpy(np.ascontiguousarray(interleaved[start:stop]).reshape(-1, *self.input_shape))
            y = torch.from_numpy(np.tile(np.arange(ways, dtype=np.int64), int(stop - start)))
            parts += [x, y]
        x_train, y_train, x_support, y_support, x_query, y_query = parts
        descriptor = tuple(float(cls) for cls in classes)
        return Task(task_id, split, descriptor, x_train, y_train, x_support, y_support, x_query, y_query, ways=ways)

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(prediction, target)

    def metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        return {"accuracy": float((prediction.argmax(dim=-1) == target).float().mean())}
