"""Few-shot N-way K-shot classification of Omniglot, read from the standard folder layout.

Nothing is downloaded: ``root`` (``--set task.root=FOLDER``) holds ``images_background/`` and/or
``images_evaluation/`` as unzipped from brendenlake/omniglot's ``python/images_background.zip`` and
``python/images_evaluation.zip``: ``ROOT/images_*/<Alphabet>/<characterNN>/<NNNN_MM>.png``, 20
black-on-white 105x105 drawings per character. Every character folder found is a character.

As in Santoro et al. (2016) and Finn et al. (2017), rotations by 0, 90, 180 and 270 degrees are
classes of their own: global class id ``character + n_characters * quarter_turns``, characters
numbered in the sorted order of their folder paths. The characters are split once, by
``split_seed``, into disjoint meta-train, validation and test characters (``train_fraction``,
``validation_fraction``, the rest: 60/20/20 by default), and each split gets every rotation of its
own characters, so no held-out class is a rotated copy of a training class. The training stream
draws only meta-train classes, the validation and test tasks only their own; the split and the
held-out tasks depend only on the config (and the folder), never on the run seed.

Images are resized to ``image_size`` (28 by default) with Lanczos filtering and inverted, so
strokes are 1 and the background 0. They are decoded once per sampler, on the first task drawn
(not when the sampler is built), and kept as uint8 (about 25 MB for the whole of Omniglot at
28x28); samplers of the same unchanged folder and size in one process share the decoded images.

A task picks N classes of its split and maps them to labels 0..N-1 in a random order; for each
class it draws ``train_per_class + support_shots + query_per_class`` distinct drawings of that
character (without replacement) for its inner-training, support and query sets. Every set is
interleaved (position ``i`` holds label ``i % N``), so the first ``N * K`` support images, the
K-shot set the core takes, hold K images of each class.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from reml_core.errors import ComponentBuildError
from reml_plugins.classification import ImageTaskSampler, stream_generator

ROTATIONS = 4  # quarter turns: 0, 90, 180, 270 degrees
#: The two folders of the standard layout (either or both may be present).
SUBSETS = ("images_background", "images_evaluation")
#: Size of the original drawings; ``image_size`` may shrink them, not enlarge them.
ORIGINAL_SIZE = 105
#: Drawings per character in the standard dataset (the bound that counts is the data on disk).
DRAWINGS_PER_CHARACTER = 20
#: How to get the data, in every message about a missing or unusable root.
DOWNLOAD_HINT = (
    "download images_background.zip and images_evaluation.zip from https://github.com/brendenlake/omniglot "
    "(python/ folder), unzip them into one folder and pass --set task.root=FOLDER"
)


class OmniglotDataError(ComponentBuildError):
    """The folder's content does not fit the config (no characters, an unreadable image, too few
    drawings, too few characters for the split): the sampler cannot be built, ``task.KEY: ...``."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message, setting=f"task{'.' + key if key else ''}")


class OmniglotConfig(BaseModel):
    """The omniglot family: N-way K-shot classification of Omniglot characters, rotations as extra classes."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field(
        description="the Omniglot folder, holding images_background/ and/or images_evaluation/ (nothing is downloaded; "
        "to get them: " + DOWNLOAD_HINT + ")",
    )
    image_size: int = Field(
        28, ge=4, le=ORIGINAL_SIZE, description="drawings are resized to image_size x image_size (Lanczos)"
    )
    ways: int = Field(5, ge=2, description="N, the classes of a task (at most the smallest split's classes)")
    support_shots: int = Field(
        5, ge=1, description="support images per class; the K-shot set is the first K of each class"
    )
    train_per_class: int = Field(5, ge=1, description="inner-training images per class")
    query_per_class: int = Field(5, ge=1, description="query images per class, measuring the loss and accuracy")
    rotations: bool = Field(True, description="rotations by 0/90/180/270 degrees are extra classes (4 per character)")
    train_fraction: float = Field(0.6, gt=0.0, lt=1.0, description="fraction of the characters used for meta-training")
    validation_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="fraction of the characters for validation (the rest: test)"
    )
    split_seed: int = Field(
        0, ge=0, description="seed of the meta-train/validation/test character split (independent of the run seed)"
    )
    test_seed: int = Field(
        2017, ge=0, description="seed of the held-out validation and test tasks (independent of the run seed)"
    )

    @model_validator(mode="wrap")
    @classmethod
    def _say_how_to_get_the_data(cls, data: Any, handler: Any) -> OmniglotConfig:
        """A missing ``root`` is reported as ``task.root: required: ... how to get the data``, beside any other
        problem."""
        try:
            return handler(data)
        except ValidationError as error:
            items = error.errors(include_url=False)
            if not any(item["type"] == "missing" and tuple(item["loc"]) == ("root",) for item in items):
                raise
            details = []
            for item in items:
                if item["type"] == "missing" and tuple(item["loc"]) == ("root",):
                    message = f"required: the Omniglot folder; {DOWNLOAD_HINT}"
                else:
                    message = item["msg"]
                details.append(
                    InitErrorDetails(
                        type=PydanticCustomError(item["type"], "{message}", {"message": message}),
                        loc=tuple(item["loc"]),
                        input=item["input"],
                    )
                )
            raise ValidationError.from_exception_data(error.title, details) from None

    @field_validator("root")
    @classmethod
    def _is_a_folder(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"empty path; {DOWNLOAD_HINT}")
        root = Path(value).expanduser()
        problem = _root_problem(root)
        if problem:
            raise ValueError(problem)
        return os.path.abspath(root)  # recorded absolute, so a resumed run finds the same folder from anywhere

    @model_validator(mode="after")
    def _fits(self) -> OmniglotConfig:
        if self.train_fraction + self.validation_fraction >= 1.0:
            raise ValueError(
                f"train_fraction + validation_fraction = {self.train_fraction} + {self.validation_fraction} leaves no "
                "test "
                "characters: their sum must be below 1 (the rest are the test characters)"
            )
        return self


def _root_problem(root: Path) -> str | None:
    if not root.exists():
        return f"no such folder {str(root)!r}; {DOWNLOAD_HINT}"
    if not root.is_dir():
        return f"{str(root)!r} is not a folder; {DOWNLOAD_HINT}"
    return None


# -- the folder ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Character:
    """One character folder: its path relative to the root (``images_background/Alphabet/character01``) and its
    drawings."""

    name: str
    alphabet: str
    files: tuple[str, ...]  # absolute paths, sorted
    signature: tuple[tuple[str, int, int], ...]  # (file name, size, mtime_ns): whether a cached decoding still holds


def _subfolders(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as entries:
        folders = [e for e in entries if not e.name.startswith(".") and e.name != "__MACOSX" and e.is_dir()]
    return sorted(folders, key=lambda e: e.name)


def scan(root: Path) -> tuple[Character, ...]:
    """Every character folder of the standard layout under ``root``, sorted by path (the class numbering)."""
    problem = _root_problem(root)
    if problem:
        raise OmniglotDataError("root", problem)
    subsets = [name for name in SUBSETS if (root / name).is_dir()]
    if not subsets:
        raise OmniglotDataError(
            "root",
            (
                f"no character folders found under {str(root)!r}: it holds neither images_background/ nor "
                "images_evaluation/ "
                "(the layout is ROOT/images_background/ALPHABET/CHARACTER/*.png; if you named one of those two "
                "folders, pass "
                f"its parent); {DOWNLOAD_HINT}"
            ),
        )
    characters = []
    try:
        for subset in subsets:
            for alphabet in _subfolders(root / subset):
                for character in _subfolders(Path(alphabet.path)):
                    with os.scandir(character.path) as entries:
                        files = sorted(
                            (
                                e
                                for e in entries
                                if e.name.lower().endswith(".png") and not e.name.startswith(".") and e.is_file()
                            ),
                            key=lambda e: e.name,
                        )
                        signature = tuple((e.name, (s := e.stat()).st_size, s.st_mtime_ns) for e in files)
                    characters.append(
                        Character(
                            f"{subset}/{alphabet.name}/{character.name}",
                            f"{subset}/{alphabet.name}",
                            tuple(e.path for e in files),
                            signature,
                        )
                    )
    except OSError as error:
        raise OmniglotDataError("root", f"cannot list {error.filename or root}: {error.strerror or error}") from None
    if not characters:
        raise OmniglotDataError(
            "root",
            (
                f"no character folders found under {str(root)!r} (in {' and '.join(f'{s}/' for s in subsets)}: the "
                "layout is "
                f"ROOT/images_background/ALPHABET/CHARACTER/*.png); {DOWNLOAD_HINT}"
            ),
        )
    return tuple(characters)


def decode(path: str, size: int) -> np.ndarray:
    """One drawing, resized to ``size`` x ``size`` and inverted (strokes 255, background 0), uint8."""
    from PIL import Image  # noqa: PLC0415 - lazy: start-up time: PIL, for image files only

    try:
        with Image.open(path) as image:
            grey = image.convert("L").resize((size, size), Image.Resampling.LANCZOS)
            return 255 - np.asarray(grey, dtype=np.uint8)
    except Exception as error:  # unidentified, truncated, a decompression bomb, ...
        raise OmniglotDataError("root", f"cannot read image {path}: {type(error).__name__}: {error}") from None


#: Decoded images shared by samplers of the same folder and size: (root, size, signatures) -> [n, size, size] uint8.
_DECODED: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
_DECODED_KEEP = 2


def _decoded(root: Path, characters: tuple[Character, ...], size: int) -> np.ndarray:
    key = (str(root), size, tuple((c.name, c.signature) for c in characters))
    if key in _DECODED:
        _DECODED.move_to_end(key)
        return _DECODED[key]
    total = sum(len(c.files) for c in characters)
    images = np.empty((total, size, size), dtype=np.uint8)
    index = 0
    for character in characters:
        for path in character.files:
            images[index] = decode(path, size)
            index += 1
    images.setflags(write=False)
    _DECODED[key] = images
    while len(_DECODED) > _DECODED_KEEP:
        _DECODED.popitem(last=False)
    return images


# -- the sampler -------------------------------------------------------------------------------------


class OmniglotTaskSampler(ImageTaskSampler):
    """Seeded N-way K-shot Omniglot tasks from disjoint class splits."""

    def __init__(self, config: OmniglotConfig) -> None:
        self.config = config
        self.root = Path(config.root).expanduser().resolve()
        self.characters = scan(self.root)
        counts = np.array([len(c.files) for c in self.characters], dtype=np.int64)
        self.drawing_counts = counts
        self.offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)  # first image of each character
        per_class = config.train_per_class + config.support_shots + config.query_per_class
        smallest = int(np.argmin(counts))
        if per_class > counts[smallest]:
            raise OmniglotDataError(
                None,
                (
                    f"a task needs train_per_class + support_shots + query_per_class = {config.train_per_class} + "
                    f"{config.support_shots} + {config.query_per_class} = {per_class} distinct drawings per class, but "
                    "character "
                    f"folder {self.characters[smallest].name} under {self.root} holds only {counts[smallest]} PNG files"
                ),
            )
        n_characters = len(self.characters)
        self.n_characters = n_characters
        self.turns = ROTATIONS if config.rotations else 1
        self.n_classes = n_characters * self.turns
        size = config.image_size
        self.input_shape = (1, size, size)
        self.input_size = size * size
        ways = config.ways
        self.ways = ways
        self.output_size = ways
        self.max_shots = config.support_shots
        self.train_points = config.train_per_class * ways
        self.descriptor_names = tuple(f"class_{i + 1}" for i in range(ways))
        self.descriptor_low = (0.0,) * ways
        self.descriptor_high = (float(self.n_classes - 1),) * ways

        # Split the characters, then give each split every rotation of its own characters.
        n_train = round(n_characters * config.train_fraction)
        n_validation = round(n_characters * config.validation_fraction)
        n_test = n_characters - n_train - n_validation
        if min(n_train, n_validation, n_test) < 1:
            raise OmniglotDataError(
                "train_fraction",
                (
                    f"the {n_characters} characters under {self.root} split {n_train}/{n_validation}/{n_test} "
                    f"(train_fraction {config.train_fraction}, validation_fraction {config.validation_fraction}, the "
                    "rest test): "
                    "every split needs at least one character"
                ),
            )
        order = stream_generator(config.split_seed, "split").permutation(n_characters)
        parts = {
            "train": order[:n_train],
            "validation": order[n_train : n_train + n_validation],
            "test": order[n_train + n_validation :],
        }
        self.split_characters: dict[str, tuple[int, ...]] = {
            split: tuple(sorted(int(c) for c in chosen)) for split, chosen in parts.items()
        }
        self.classes: dict[str, tuple[int, ...]] = {
            split: tuple(sorted(c + n_characters * turn for c in chosen for turn in range(self.turns)))
            for split, chosen in self.split_characters.items()
        }
        sizes = {split: len(classes) for split, classes in self.classes.items()}
        if ways > min(sizes.values()):
            raise OmniglotDataError(
                "ways",
                (
                    f"ways = {ways} does not fit the class split "
                    f"{sizes['train']}/{sizes['validation']}/{sizes['test']} "
                    f"(meta-train/validation/test classes of the {n_characters} characters under {self.root}"
                    f"{', rotations off' if not config.rotations else ''}): at most {min(sizes.values())} ways"
                ),
            )
        self._images: np.ndarray | None = None  # decoded on the first task, once

    # -- data -----------------------------------------------------------------------------------------

    @property
    def images(self) -> np.ndarray:
        """Every drawing, ``[total, size, size]`` uint8, strokes 255: character ``c``'s are ``offsets[c]`` onwards."""
        if self._images is None:
            self._images = _decoded(self.root, self.characters, self.config.image_size)
        return self._images

    def data_fingerprint(self) -> dict[str, str]:
        """What the folder holds (:class:`reml_core.interfaces.FingerprintsData`): the character folders,
        which number the classes and decide the split, and their drawings (file names and sizes)."""
        names = hashlib.sha256("\n".join(c.name for c in self.characters).encode()).hexdigest()[:12]
        drawings = hashlib.sha256()
        for character in self.characters:
            for name, size, _ in character.signature:
                drawings.update(f"{character.name}/{name}:{size}\n".encode())
        total = sum(len(c.files) for c in self.characters)
        return {
            "characters": f"{len(self.characters)} character folders, sha256 {names}",
            "drawings": f"{total} PNG files, sha256 {drawings.hexdigest()[:12]}",
        }

    def class_name(self, cls: int) -> str:
        """``images_background/Alphabet/character01 @ 90deg`` for a global class id."""
        character, turn = cls % self.n_characters, cls // self.n_characters
        return f"{self.characters[character].name} @ {90 * turn}deg"

    def describe(self) -> str:
        c = self.config
        train, validation, test = (len(self.classes[s]) for s in ("train", "validation", "test"))
        alphabets = len({ch.alphabet for ch in self.characters})
        subsets = sorted({ch.name.split("/", 1)[0] for ch in self.characters})
        kind = (
            f"{self.n_classes} classes ({self.n_characters} characters x rotations by 0/90/180/270 degrees)"
            if c.rotations
            else f"{self.n_classes} classes (the characters, no rotations)"
        )
        return (
            f"{c.ways}-way few-shot classification of Omniglot ({self.n_characters} characters of {alphabets} "
            "alphabets "
            f"in {' and '.join(subsets)} under {self.root}), {kind} split {train}/{validation}/{test} into disjoint "
            f"meta-train/validation/test classes by character; drawings resized to {c.image_size}x{c.image_size}, "
            "strokes 1; "
            f"each task has {c.train_per_class} training, up to {c.support_shots} support (K-shot: K per class) and "
            f"{c.query_per_class} query images per class; loss: cross-entropy (metric: accuracy)."
        )

    # -- tasks ----------------------------------------------------------------------------------------

    def _draw_images(self, rng: np.random.Generator, classes: np.ndarray, per_class: int) -> np.ndarray:
        images = self.images
        characters = classes % self.n_characters
        chosen = np.stack(
            [self.offsets[ch] + rng.choice(self.drawing_counts[ch], size=per_class, replace=False) for ch in characters]
        )
        picked = np.stack(
            [  # [ways, per_class, size, size], each class at its own rotation
                np.rot90(images[rows], int(cls) // self.n_characters, axes=(1, 2)) for rows, cls in zip(chosen, classes)
            ]
        )
        return picked[:, :, None].astype(np.float32) / np.float32(255.0)  # [ways, per_class, 1, size, size]
