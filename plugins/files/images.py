"""``image-folder``: N-way K-shot classification from a folder of images, one subfolder per class.

``root/<class>/*.png`` (or ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``), or ``root/train/<class>/...``,
``root/validation/<class>/...``, ``root/test/<class>/...`` to fix the class split yourself;
otherwise the classes are split by a seed. Images are read once, converted to grayscale (or RGB),
resized to ``image_size`` and scaled to [0, 1]. Tasks are built exactly as the built-in image
families' are (:class:`reml_plugins.classification.ImageTaskSampler`), for the conv pool.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from reml_core.errors import ComponentBuildError
from reml_core.specs import Recommendation, TaskSamplerSpec
from reml_plugins.classification import EXPERIMENT_PRESETS, ImageTaskSampler, stream_generator

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLITS = ("train", "validation", "test")


class ImageFolderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str | None = Field(
        None, description="the folder with one subfolder of images per class (or train/ validation/ test/ of them)"
    )
    ways: int = Field(5, ge=2, le=100, description="N, classes per task")
    train_per_class: int = Field(2, ge=1, description="inner-training images per class of a task")
    support_shots: int = Field(5, ge=1, description="support images per class; the K-shot set is the first K of each")
    query_per_class: int = Field(5, ge=1, description="query images per class")
    image_size: int = Field(28, ge=4, le=256, description="images are resized to image_size x image_size")
    color: bool = Field(False, description="keep RGB (3 channels) instead of grayscale")
    split: Literal["auto", "folders", "seeded"] = "auto"
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = Field(0, ge=0)
    test_seed: int = Field(2017, ge=0)


def _read_image(path: Path, size: int, color: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 - lazy: start-up time: PIL, for image files only

    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if color else "L").resize((size, size))
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as error:
        raise ComponentBuildError(
            f"task.root: cannot read image {path}: {' '.join(str(error).split())[:150]}"
        ) from None
    return array.transpose(2, 0, 1) if color else array[None]


class ImageFolderTaskSampler(ImageTaskSampler):
    """Tasks from class folders (see the module docstring)."""

    def __init__(self, config: ImageFolderConfig) -> None:
        if config.root is None:
            raise ComponentBuildError("task.root: name the folder of class folders (--set task.root=DIR)")
        root = Path(config.root).expanduser()
        if not root.is_dir():
            raise ComponentBuildError(f"task.root: {root} is not a folder")
        self.config = config
        by_folders = config.split == "folders" or (config.split == "auto" and (root / "train").is_dir())
        if by_folders:
            folders = {
                split: sorted(p for p in (root / split).iterdir() if p.is_dir()) if (root / split).is_dir() else []
                for split in SPLITS
            }
        else:
            found = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            order = stream_generator(config.split_seed, "split").permutation(len(found))
            n_validation = max(config.ways, round(config.validation_fraction * len(found)))
            n_test = max(config.ways, round(config.test_fraction * len(found)))
            chosen = [found[i] for i in order]
            folders = {
                "validation": chosen[:n_validation],
                "test": chosen[n_validation : n_validation + n_test],
                "train": chosen[n_validation + n_test :],
            }
        per_class = config.train_per_class + config.support_shots + config.query_per_class
        self.class_images: list[np.ndarray] = []
        self.class_names: list[str] = []
        self.classes: dict[str, tuple[int, ...]] = {}
        for split in SPLITS:
            if len(folders[split]) < config.ways:
                raise ComponentBuildError(
                    f"task.root: {len(folders[split])} {split} classes in {root}; a {config.ways}-way task needs "
                    f"at least {config.ways}"
                )
            ids = []
            for folder in folders[split]:
                files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                if len(files) < per_class:
                    raise ComponentBuildError(
                        f"task.root: class {folder} holds {len(files)} images; a task needs {per_class} of each "
                        "class (train_per_class + support_shots + query_per_class)"
                    )
                ids.append(len(self.class_images))
                self.class_images.append(np.stack([_read_image(p, config.image_size, config.color) for p in files]))
                self.class_names.append(str(folder.relative_to(root)))
            self.classes[split] = tuple(ids)
        self.input_shape = (3 if config.color else 1, config.image_size, config.image_size)
        self.input_size = int(np.prod(self.input_shape))
        self.ways = config.ways
        self.output_size = config.ways
        self.max_shots = config.support_shots
        self.train_points = config.train_per_class * config.ways
        self.descriptor_names = tuple(f"class_{i + 1}" for i in range(config.ways))
        self.descriptor_low = (0.0,) * config.ways
        self.descriptor_high = (float(len(self.class_images) - 1),) * config.ways

    def describe(self) -> str:
        c = self.config
        counts = "/".join(str(len(self.classes[s])) for s in SPLITS)
        return (
            f"{c.ways}-way few-shot classification of the images in {c.root}, classes split {counts} into meta-train/"
            f"validation/test; each task has {c.train_per_class} training, up to {c.support_shots} support (K-shot: K "
            "per class) "
            f"and {c.query_per_class} query images per class, {c.image_size}x{c.image_size}; loss: cross-entropy "
            "(metric: accuracy)."
        )

    def data_fingerprint(self) -> dict[str, str]:
        digest = hashlib.sha256()
        for name, images in zip(self.class_names, self.class_images):
            digest.update(name.encode())
            digest.update(images.tobytes())
        return {
            "images": (
                f"{len(self.class_images)} class folders, {sum(len(i) for i in self.class_images)} images, "
                f"sha256 {digest.hexdigest()[:12]}"
            )
        }

    def _draw_images(self, rng: np.random.Generator, classes: np.ndarray, per_class: int) -> np.ndarray:
        return np.stack(
            [
                self.class_images[int(c)][rng.choice(len(self.class_images[int(c)]), size=per_class, replace=False)]
                for c in classes
            ]
        )


IMAGE_FOLDER_SPEC = TaskSamplerSpec(
    name="image-folder",
    factory=lambda config, context: ImageFolderTaskSampler(config),
    config_model=ImageFolderConfig,
    description="Your own few-shot image classification: a folder with one subfolder of images per class (task.root).",
    recommended=Recommendation(
        encoder="prototypes",
        pool="conv",
        reward="neg-mse",
        policy="ppo-mlp",
        baselines=("maml", "scratch"),
        run_baselines=("scratch",),
    ),
    experiment_presets=EXPERIMENT_PRESETS,
)
