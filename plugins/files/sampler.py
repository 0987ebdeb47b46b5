"""Regression tasks from files: one task per CSV or NPZ file, inputs and outputs named in the config.

A task's rows are shuffled (seeded), then cut into its K-shot support set (the first
``support_points``), its query set (the next ``query_points``, at most) and its inner-training data
(the rest). Files may differ in length. Which files are meta-training, validation and test tasks is
decided by subfolders (``train/``, ``validation/``, ``test/`` under ``root``) or by a seeded split
of the files in ``root``; input and target scales come from the meta-training files alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from reml_core.errors import ComponentBuildError, UserError
from reml_core.inner_loop import mean_squared_error, mean_squared_error_rows, row_wise
from reml_core.interfaces import Task
from reml_core.learner import DataFileError, read_csv

SPLITS = ("train", "validation", "test")
_STREAM_KEYS = {"train": 0, "validation": 1, "test": 2, "split": 3}
SUFFIXES = (".csv", ".npz")
#: More files than this in one family is not what a few-shot task folder holds.
MAX_FILES = 100_000


class FilesConfig(BaseModel):
    """Where the task files are, which columns are inputs and targets, and how each task is cut."""

    model_config = ConfigDict(extra="forbid")

    root: str | None = Field(
        None, description="the folder of task files (CSV or NPZ), or of train/ validation/ test/ subfolders of them"
    )
    inputs: list[str] = Field(
        default_factory=lambda: ["x"],
        min_length=1,
        description="input columns (CSV header names, or NPZ array names; an [n, d] array is d columns)",
    )
    outputs: list[str] = Field(default_factory=lambda: ["y"], min_length=1, description="target columns, as inputs")
    support_points: int = Field(
        10, gt=0, le=10_000, description="support points per task; the K-shot set is their first K"
    )
    query_points: int = Field(20, gt=0, le=100_000, description="query points per task (fewer if a file is short)")
    min_train_points: int = Field(1, ge=1, description="a file must leave at least this many rows for inner training")
    split: Literal["auto", "folders", "seeded"] = Field(
        "auto",
        description="folders: root/train, root/validation, root/test; seeded: a seeded split of the files in root; "
        "auto: folders if root/train exists",
    )
    validation_fraction: float = Field(0.2, ge=0, lt=1, description="share of the files for validation (seeded split)")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="share of the files for testing (seeded split)")
    split_seed: int = Field(0, ge=0, description="seed of the seeded split of the files")
    test_seed: int = Field(
        2017, ge=0, description="seed of the held-out tasks' row shuffles (independent of the run seed)"
    )

    @model_validator(mode="after")
    def _fractions(self) -> FilesConfig:
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError(
                "validation_fraction + test_fraction must leave files for meta-training (their sum is at least 1)"
            )
        if set(self.inputs) & set(self.outputs):
            raise ValueError(f"columns {sorted(set(self.inputs) & set(self.outputs))} are both inputs and outputs")
        return self


@dataclass(frozen=True)
class TaskData:
    """One file's rows: inputs ``[n, input_size]`` and targets ``[n, output_size]`` (float32)."""

    name: str
    x: torch.Tensor
    y: torch.Tensor


def read_columns(path: Path, names: Sequence[str], what: str) -> np.ndarray:
    """The named columns of a CSV (by header) or an NPZ file (by array name), as float64 ``[n, columns]``."""
    if path.suffix.lower() == ".csv":
        header, values = read_csv(path, "task file")
        if header is None:
            raise DataFileError(
                f"task file {path} has no header line; its first line must name the columns ({', '.join(names)})"
            )
        missing = [name for name in names if name not in header]
        if missing:
            raise DataFileError(
                f"task file {path} has no {what} column {missing[0]!r} (its columns: {', '.join(header)})"
            )
        return values[:, [header.index(name) for name in names]]
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in names if name not in archive.files]
            if missing:
                raise DataFileError(
                    f"task file {path} has no {what} array {missing[0]!r} (its arrays: {', '.join(archive.files)})"
                )
            arrays = [np.asarray(archive[name]) for name in names]
    except DataFileError:
        raise
    except (OSError, ValueError) as error:
        raise DataFileError(
            f"task file {path} is not a readable NPZ file: {' '.join(str(error).split())[:200]}"
        ) from None
    columns = []
    for name, array in zip(names, arrays):
        if array.dtype.kind not in "iuf" or array.ndim not in (1, 2):
            raise DataFileError(
                f"task file {path}: array {name!r} must be numbers of shape [n] or [n, d], not {array.dtype} "
                f"{list(array.shape)}"
            )
        columns.append(array.reshape(len(array), -1).astype(np.float64))
    if len({len(c) for c in columns}) > 1:
        raise DataFileError(
            f"task file {path}: arrays {', '.join(names)} have different lengths "
            f"({', '.join(str(len(c)) for c in columns)})"
        )
    values = np.concatenate(columns, axis=1)
    if not np.isfinite(values).all():
        raise DataFileError(f"task file {path}: {what} arrays hold NaN or infinite values")
    return values


def task_files(folder: Path) -> list[Path]:
    """The CSV and NPZ files directly in ``folder``, sorted by name."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
    )


def _generator(entropy: int, key: str, *more: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy, spawn_key=(_STREAM_KEYS[key], *more))))


class FileTaskSampler:
    """Tasks from a folder of files (see the module docstring); also built from arrays (:meth:`from_arrays`)."""

    loss_name = "MSE"
    descriptor_names: tuple[str, ...] = ()
    descriptor_low: tuple[float, ...] = ()
    descriptor_high: tuple[float, ...] = ()
    _paths: dict[str, list[Path]]  # each split's files, when read from a folder (tests check the split)

    def __init__(self, config: FilesConfig, splits: dict[str, list[TaskData]], source: str = "") -> None:
        self.config = config
        self.splits = splits
        self.source = source
        for split in SPLITS:
            if not splits.get(split):
                raise ComponentBuildError(
                    f"task.root: no {split} tasks"
                    + (f" in {source}" if source else "")
                    + (" (put files in train/, validation/ and test/, or use split = 'seeded' with more files)")
                )
        need = config.support_points + 1 + config.min_train_points
        for tasks in splits.values():
            for task in tasks:
                if len(task.x) < need:
                    raise ComponentBuildError(
                        f"task.root: task {task.name} holds {len(task.x)} rows; each needs at least {need} "
                        f"({config.support_points} support, 1 query, {config.min_train_points} training)"
                    )
        first = splits["train"][0]
        self.input_size = int(first.x.shape[1])
        self.output_size = int(first.y.shape[1])
        self.max_shots = config.support_points
        lengths = [len(t.x) for t in splits["train"]]
        self.train_points = int(np.median(lengths)) - config.support_points - min(config.query_points, 1)
        # what the family's meta-training data spans: for encoders that scale, and for warnings on a user's data
        x = torch.cat([t.x for t in splits["train"]])
        y = torch.cat([t.y for t in splits["train"]])
        self.input_scales = tuple(max(float(v), 1e-12) for v in x.abs().amax(0))
        self.target_scales = tuple(max(float(v), 1e-12) for v in y.abs().amax(0))
        self.input_scale = max(self.input_scales)
        self.target_scale = max(self.target_scales)
        self.input_range = (float(x.min()), float(x.max()))
        self.target_range = (float(y.min()), float(y.max()))

    # -- building ----------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, config: FilesConfig) -> FileTaskSampler:
        if config.root is None:
            raise ComponentBuildError("task.root: name the folder of task files (--set task.root=DIR)")
        root = Path(config.root).expanduser()
        if not root.is_dir():
            raise ComponentBuildError(f"task.root: {root} is not a folder")
        by_folders = config.split == "folders" or (config.split == "auto" and (root / "train").is_dir())
        if by_folders:
            paths = {split: task_files(root / split) if (root / split).is_dir() else [] for split in SPLITS}
        else:
            files = task_files(root)
            if len(files) < 3:
                raise ComponentBuildError(
                    f"task.root: {root} holds {len(files)} CSV/NPZ files; a seeded split needs at least 3"
                )
            order = _generator(config.split_seed, "split").permutation(len(files))
            n_validation = max(1, round(config.validation_fraction * len(files)))
            n_test = max(1, round(config.test_fraction * len(files)))
            chosen = [files[i] for i in order]
            paths = {
                "validation": sorted(chosen[:n_validation]),
                "test": sorted(chosen[n_validation : n_validation + n_test]),
                "train": sorted(chosen[n_validation + n_test :]),
            }
        if sum(len(p) for p in paths.values()) > MAX_FILES:
            raise ComponentBuildError(f"task.root: more than {MAX_FILES:,} task files")
        splits = {split: [cls._read(path, config) for path in files] for split, files in paths.items()}
        sampler = cls(config, splits, str(root))
        sampler._paths = paths
        return sampler

    @classmethod
    def from_arrays(
        cls, config: FilesConfig, tasks: dict[str, Sequence[tuple[np.ndarray, np.ndarray]]]
    ) -> FileTaskSampler:
        """From arrays: ``{"train": [(x, y), ...], "validation": [...], "test": [...]}``, ``x`` ``[n, d]`` and ``y``
        ``[n, m]``."""
        splits: dict[str, list[TaskData]] = {}
        for split in SPLITS:
            splits[split] = []
            for index, (x, y) in enumerate(tasks.get(split, [])):
                x = np.asarray(x, dtype=np.float32)
                y = np.asarray(y, dtype=np.float32)
                x = x.reshape(len(x), -1)
                y = y.reshape(len(y), -1)
                splits[split].append(TaskData(f"{split}-{index}", torch.from_numpy(x), torch.from_numpy(y)))
        return cls(config, splits)

    @classmethod
    def from_dataset(
        cls, config: FilesConfig, datasets: dict[str, Sequence[torch.utils.data.Dataset]]
    ) -> FileTaskSampler:
        """From torch Datasets, one per task, each item an ``(x, y)`` pair: ``{"train": [dataset, ...], ...}``."""
        return cls.from_arrays(
            config,
            {
                split: [_pair(d, f"{split} dataset {i}") for i, d in enumerate(datasets.get(split, []))]
                for split in SPLITS
            },
        )

    @staticmethod
    def _read(path: Path, config: FilesConfig) -> TaskData:
        x = read_columns(path, config.inputs, "input")
        y = read_columns(path, config.outputs, "output")
        return TaskData(path.name, torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32)))

    # -- the protocol ------------------------------------------------------------------------

    def describe(self) -> str:
        counts = ", ".join(f"{len(self.splits[s])} {s}" for s in SPLITS)
        return (
            f"regression tasks from files ({counts}){' in ' + self.source if self.source else ''}: {self.input_size} "
            "input and "
            f"{self.output_size} target columns; each task's rows shuffled, then up to {self.config.support_points} "
            "support, "
            f"up to {self.config.query_points} query and the rest for inner training; loss: mean squared error."
        )

    def data_fingerprint(self) -> dict[str, str]:
        found = {}
        for split in SPLITS:
            digest = hashlib.sha256()
            for task in self.splits[split]:
                digest.update(task.name.encode())
                digest.update(task.x.numpy().tobytes())
                digest.update(task.y.numpy().tobytes())
            found[f"{split} files"] = f"{len(self.splits[split])} tasks, sha256 {digest.hexdigest()[:12]}"
        return found

    def _task(self, data: TaskData, rng: np.random.Generator, task_id: str, split: str) -> Task:
        c = self.config
        order = torch.from_numpy(rng.permutation(len(data.x)))
        x, y = data.x[order], data.y[order]
        support = c.support_points
        query = min(c.query_points, max(1, (len(x) - support) // 2))
        query_end = support + query
        return Task(
            task_id,
            split,
            (),
            x[query_end:],
            y[query_end:],
            x[:support],
            y[:support],
            x[support:query_end],
            y[support:query_end],
        )

    def train_stream(self, seed: int) -> Iterator[Task]:
        rng = _generator(seed, "train")
        tasks = self.splits["train"]
        index = 0
        while True:
            data = tasks[int(rng.integers(len(tasks)))]
            yield self._task(data, rng, f"train-s{seed}-{index}-{data.name}", "train")
            index += 1

    def _held_out(self, split: str, count: int) -> list[Task]:
        """Task i is file ``i % files`` (in name order), its rows shuffled by (test_seed, split, i): more tasks than
        files reuse each file with another shuffle."""
        files = self.splits[split]
        return [
            self._task(
                files[i % len(files)],
                _generator(self.config.test_seed, split, i),
                f"{split}-{i}-{files[i % len(files)].name}",
                split,
            )
            for i in range(count)
        ]

    def validation_tasks(self, count: int) -> list[Task]:
        return self._held_out("validation", count)

    def test_tasks(self, count: int) -> list[Task]:
        return self._held_out("test", count)

    @row_wise(mean_squared_error_rows)
    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mean_squared_error(prediction, target)


def _pair(item: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` arrays of one task given as an ``(x, y)`` pair of arrays or a torch Dataset of ``(x, y)`` items."""
    if isinstance(item, torch.utils.data.Dataset):
        pairs = [item[i] for i in range(len(item))]  # type: ignore[arg-type]
        x = np.stack([np.asarray(a, dtype=np.float64).reshape(-1) for a, _ in pairs]) if pairs else np.zeros((0, 1))
        y = np.stack([np.asarray(b, dtype=np.float64).reshape(-1) for _, b in pairs]) if pairs else np.zeros((0, 1))
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        x, y = (
            np.asarray(part.detach().cpu() if isinstance(part, torch.Tensor) else part, dtype=np.float64)
            for part in item
        )
        x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    else:
        raise UserError(
            f"{where}: a task is an (x, y) pair of arrays or a torch Dataset of (x, y) items, not {type(item).__name__}"
        )
    if len(x) != len(y) or not len(x):
        raise UserError(f"{where}: {len(x)} inputs and {len(y)} targets; a task needs as many of each, at least one")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise UserError(f"{where}: holds NaN or infinite values")
    return x, y


def save_tasks(root: str | Path, tasks: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """Write tasks held in memory as a folder the ``files`` family reads, and return its ``task`` settings.

    ``tasks`` maps ``"train"``, ``"validation"`` and ``"test"`` to lists of tasks, each an ``(x, y)``
    pair of arrays (``[n, d]`` and ``[n, m]``, or ``[n]``) or a torch ``Dataset`` of ``(x, y)`` items.
    One NPZ file per task (arrays ``x`` and ``y``) goes into ``root/<split>/``, so a run on them can be
    resumed and loaded like any other::

        task = save_tasks("my-tasks", {"train": train_pairs, "validation": validation_pairs, "test": test_pairs})
        reml_core.run(plugin="files", task=task)
    """
    root = Path(root)
    for split in SPLITS:
        if not tasks.get(split):
            raise UserError(f"save_tasks: give at least one {split} task")
        if (root / split).is_dir() and task_files(root / split):
            raise UserError(f"save_tasks: {root / split} already holds task files; write into a new folder")
    unknown = set(tasks) - set(SPLITS)
    if unknown:
        raise UserError(f"save_tasks: unknown splits {sorted(unknown)} (use train, validation, test)")
    arrays = {
        split: [_pair(item, f"save_tasks: {split} task {i}") for i, item in enumerate(tasks[split])] for split in SPLITS
    }
    for split, pairs in arrays.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for i, (x, y) in enumerate(pairs):
            np.savez(root / split / f"task-{i:05d}.npz", x=x, y=y)
    return {"root": str(root), "inputs": ["x"], "outputs": ["y"], "split": "folders"}


def read_or_refuse(config: FilesConfig) -> FileTaskSampler:
    """The sampler of ``config.root``; an unreadable file is a ComponentBuildError naming it (one line, exit 2)."""
    try:
        return FileTaskSampler.from_folder(config)
    except DataFileError as error:
        raise ComponentBuildError(f"task.root: {error}") from None


__all__ = ["FilesConfig", "FileTaskSampler", "TaskData", "read_columns", "task_files", "read_or_refuse", "save_tasks"]
