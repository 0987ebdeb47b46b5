"""Few-shot N-way K-shot classification of scikit-learn's bundled 8x8 digits.

As with Omniglot (Santoro et al. 2016; Finn et al. 2017), rotations by 0, 90, 180 and 270 degrees
are classes of their own: 10 digits x 4 rotations = 40 classes, global class id
``digit + 10 * quarter_turns``. The classes are split once, by ``split_seed``, into disjoint
meta-train, validation and test classes (60/20/20: 24/8/8, or 6/2/2 without rotations) by
splitting the digits 6/2/2 and giving each split all rotations of its own digits; the
training stream draws only meta-train classes, the validation and test tasks only their own.
The split and the held-out tasks depend only on the config, never on the run seed.

A task picks N classes of its split and maps them to labels 0..N-1 in a random order; for each
class it draws ``train_per_class + support_shots + query_per_class`` distinct images of that
digit (without replacement) for its inner-training, support and query sets. Every set is
interleaved (position ``i`` holds label ``i % N``), so the first ``N * K`` support images, the
K-shot set the core takes, hold K images of each class.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from reml_core.errors import ComponentBuildError
from reml_plugins.classification import ImageTaskSampler, stream_generator

DIGITS = 10
ROTATIONS = 4  # quarter turns: 0, 90, 180, 270 degrees
#: Images of the rarest digit in scikit-learn's bundled set (digit 8: 174 of 1797); a class
#: (one digit at one rotation) never holds more distinct images than its digit has.
MIN_DIGIT_IMAGES = 174
#: Pixel values of the bundled images run 0..16; images are divided by this.
PIXEL_MAX = 16.0
IMAGE_SHAPE = (1, 8, 8)


def class_count(rotations: bool) -> int:
    return DIGITS * (ROTATIONS if rotations else 1)


def split_sizes(rotations: bool) -> tuple[int, int, int]:
    """Meta-train, validation and test classes: 60/20/20 (24/8/8 with rotations, 6/2/2 without)."""
    total = class_count(rotations)
    held_out = total // 5
    return total - 2 * held_out, held_out, held_out


class DigitsConfig(BaseModel):
    """The digits family: N-way K-shot classification of 8x8 digits, rotations as extra classes."""

    model_config = ConfigDict(extra="forbid")

    ways: int = Field(
        5,
        ge=2,
        le=class_count(True),
        description="N, the classes of a task (at most the test classes: 8, or 2 without rotations)",
    )
    support_shots: int = Field(
        5,
        ge=1,
        le=MIN_DIGIT_IMAGES,
        description="support images per class; the K-shot set is the first K of each class",
    )
    train_per_class: int = Field(10, ge=1, le=MIN_DIGIT_IMAGES, description="inner-training images per class")
    query_per_class: int = Field(
        15, ge=1, le=MIN_DIGIT_IMAGES, description="query images per class, measuring the loss and accuracy"
    )
    rotations: bool = Field(
        True, description="rotations by 0/90/180/270 degrees are extra classes (40 classes; else the 10 digits)"
    )
    split_seed: int = Field(
        0, ge=0, description="seed of the meta-train/validation/test class split (independent of the run seed)"
    )
    test_seed: int = Field(
        2017, ge=0, description="seed of the held-out validation and test tasks (independent of the run seed)"
    )

    @model_validator(mode="after")
    def _fits(self) -> DigitsConfig:
        per_class = self.train_per_class + self.support_shots + self.query_per_class
        if per_class > MIN_DIGIT_IMAGES:
            raise ValueError(
                f"a task needs train_per_class + support_shots + query_per_class = {self.train_per_class} + "
                f"{self.support_shots} + {self.query_per_class} = {per_class} distinct images per class, but the "
                "rarest "
                f"digit has only {MIN_DIGIT_IMAGES}"
            )
        train, validation, test = split_sizes(self.rotations)
        smallest = min(train, validation, test)
        if self.ways > smallest:
            raise ValueError(
                f"ways = {self.ways} does not fit the class split {train}/{validation}/{test} "
                f"(meta-train/validation/test{', rotations off' if not self.rotations else ''}): at most {smallest} "
                "ways"
            )
        return self


@functools.lru_cache(maxsize=1)
def _rotated_images(load_digits) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """All images at every rotation, ``[ROTATIONS, n, 1, 8, 8]`` float32 in [0, 1], and each digit's image indices.

    Kept as numpy: gathering a task's images with numpy indexing takes microseconds, where torch's
    advanced indexing spends milliseconds starting threads on a busy machine.
    """
    data = load_digits()
    images = torch.from_numpy(np.asarray(data.images, dtype=np.float32) / PIXEL_MAX).unsqueeze(1)
    rotated = torch.stack([torch.rot90(images, k, dims=(2, 3)) for k in range(ROTATIONS)]).contiguous().numpy()
    target = np.asarray(data.target)
    return rotated, tuple(np.flatnonzero(target == digit) for digit in range(DIGITS))


class DigitsTaskSampler(ImageTaskSampler):
    """Seeded N-way K-shot digit tasks from disjoint class splits."""

    input_size = int(np.prod(IMAGE_SHAPE))
    input_shape = IMAGE_SHAPE

    def __init__(self, config: DigitsConfig) -> None:
        try:
            from sklearn.datasets import load_digits  # noqa: PLC0415 - lazy: start-up time: scikit-learn, for digits only
        except ImportError as error:
            raise ImportError("the digits family needs scikit-learn: pip install scikit-learn") from error
        self.config = config
        self.images, self.digit_images = _rotated_images(load_digits)
        per_class = config.train_per_class + config.support_shots + config.query_per_class
        rarest = min(len(indices) for indices in self.digit_images)
        if per_class > rarest:  # the validator's bound, checked against the data actually installed
            raise ComponentBuildError(
                f"a task needs {per_class} distinct images per class but the rarest digit has {rarest}"
            )
        ways = config.ways
        self.ways = ways
        self.output_size = ways
        self.max_shots = config.support_shots
        self.train_points = config.train_per_class * ways
        self.n_classes = class_count(config.rotations)
        self.descriptor_names = tuple(f"class_{i + 1}" for i in range(ways))
        self.descriptor_low = (0.0,) * ways
        self.descriptor_high = (float(self.n_classes - 1),) * ways
        # Split the digits, then give each split every rotation of its own digits (the Omniglot
        # practice: a rotated character is a new class of the same split), so no test class is a
        # rotated copy of a training class. (A 6 turned by 180 degrees still resembles a 9.)
        digits = stream_generator(config.split_seed, "split").permutation(DIGITS)
        n_train, n_validation, _ = (size // (self.n_classes // DIGITS) for size in split_sizes(config.rotations))
        turns = range(self.n_classes // DIGITS)
        parts = {
            "train": digits[:n_train],
            "validation": digits[n_train : n_train + n_validation],
            "test": digits[n_train + n_validation :],
        }
        self.classes: dict[str, tuple[int, ...]] = {
            split: tuple(sorted(int(digit) + DIGITS * turn for digit in chosen for turn in turns))
            for split, chosen in parts.items()
        }

    def data_fingerprint(self) -> dict[str, str]:
        """The images scikit-learn installed (:class:`reml_core.interfaces.FingerprintsData`): a
        different version of its bundled digits would draw other tasks."""
        digest = hashlib.sha256(np.ascontiguousarray(self.images[0]).tobytes())
        for indices in self.digit_images:
            digest.update(np.asarray(indices, dtype=np.int64).tobytes())
        return {"images": f"{self.images.shape[1]} scikit-learn digits, sha256 {digest.hexdigest()[:12]}"}

    def describe(self) -> str:
        c = self.config
        train, validation, test = (len(self.classes[s]) for s in ("train", "validation", "test"))
        kind = (
            f"{self.n_classes} classes (10 digits x rotations by 0/90/180/270 degrees)"
            if c.rotations
            else f"{self.n_classes} classes (the digits, no rotations)"
        )
        return (
            f"{c.ways}-way few-shot classification of scikit-learn's 8x8 digits, {kind} split "
            f"{train}/{validation}/{test} "
            f"into disjoint meta-train/validation/test classes; each task has {c.train_per_class} training, up to "
            f"{c.support_shots} support (K-shot: K per class) and {c.query_per_class} query images per class; "
            f"loss: cross-entropy (metric: accuracy)."
        )

    def _draw_images(self, rng: np.random.Generator, classes: np.ndarray, per_class: int) -> np.ndarray:
        chosen = np.stack(
            [rng.choice(self.digit_images[int(cls) % DIGITS], size=per_class, replace=False) for cls in classes]
        )
        return self.images[(classes // DIGITS)[:, None], chosen]  # [ways, per_class, 1, 8, 8]
