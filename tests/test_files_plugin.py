"""The ``files`` plugin (issue 22): your own regression tasks from CSV/NPZ files and classification from image
folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reml_core.config import resolve_config
from reml_core.errors import ConfigError, UserError
from reml_core.experiment import build_components
from reml_core.registry import PluginRegistry
from reml_plugins.files import FilesConfig, FileTaskSampler
from reml_plugins.files.encoder import SupportPointsEncoder


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry.discover()


def _csv(path: Path, rows: int, rng: np.random.Generator, scale: float = 1.0) -> None:
    """Columns t, a (inputs), y1, y2 (outputs) and an unused column between them."""
    t, a = rng.uniform(0, 5, rows) * scale, rng.uniform(-1, 1, rows)
    table = np.column_stack([t, rng.normal(size=rows), a, np.sin(t) + a, np.cos(t) * a])
    np.savetxt(path, table, delimiter=",", header="t,unused,a,y1,y2", comments="")


def _npz(path: Path, rows: int, rng: np.random.Generator) -> None:
    t, a = rng.uniform(0, 5, rows), rng.uniform(-1, 1, rows)
    np.savez(path, t=t, a=a, y1=np.sin(t) + a, y2=np.cos(t) * a)


@pytest.fixture()
def folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("validation", 2), ("test", 2)):
        (tmp_path / split).mkdir()
        for i in range(count):
            rows = 30 + 7 * i  # tasks of different lengths
            if i % 2:
                _npz(tmp_path / split / f"task-{i}.npz", rows, rng)
            else:
                _csv(tmp_path / split / f"task-{i}.csv", rows, rng, scale=100.0 if split == "test" else 1.0)
    return tmp_path


def _settings(root: Path, **task) -> dict:
    return {
        "plugin": "files",
        "preset": "smoke",
        "task": {
            "root": str(root),
            "inputs": ["t", "a"],
            "outputs": ["y1", "y2"],
            "support_points": 5,
            "query_points": 8,
            **task,
        },
        "env": {"shots": [2, 5]},
        "eval": {"shots": [2, 5]},
    }


def test_tasks_come_from_the_files_with_their_columns_lengths_and_splits(folder, registry):
    components = build_components(resolve_config(registry, _settings(folder)))
    sampler = components.task_sampler
    assert (sampler.input_size, sampler.output_size, sampler.max_shots) == (2, 2, 5)
    assert components.config.encoder.name == "support-points" and not components.encoder.privileged
    tests = sampler.test_tasks(4)
    assert [task.task_id for task in tests] == [
        "test-0-task-0.csv",
        "test-1-task-1.npz",
        "test-2-task-0.csv",
        "test-3-task-1.npz",
    ]
    assert (
        tests[0].x_support.shape == (5, 2) and tests[0].y_support.shape == (5, 2) and tests[0].x_query.shape == (8, 2)
    )
    assert len(tests[0].x_train) == 30 - 5 - 8 and len(tests[1].x_train) == 37 - 5 - 8  # the rest of each file
    # a held-out task's rows are the file's rows, split three ways without overlap
    rows = {
        tuple(r)
        for r in np.loadtxt(folder / "test" / "task-0.csv", delimiter=",", skiprows=1)[:, [0, 2]].astype(np.float32)
    }
    seen = [tuple(r) for part in (tests[0].x_train, tests[0].x_support, tests[0].x_query) for r in part.numpy()]
    assert len(seen) == len(set(seen)) == len(rows) and set(seen) == rows
    again = sampler.test_tasks(4)
    assert all(torch.equal(a.x_support, b.x_support) for a, b in zip(tests, again))  # fixed held-out sets
    assert not torch.equal(tests[0].x_support, tests[2].x_support)  # the same file again, shuffled otherwise
    names = {task.task_id.rsplit("-", 1)[-1] for _, task in zip(range(50), sampler.train_stream(0))}
    assert names == {f"{i}.csv" for i in (0, 2, 4)} | {f"{i}.npz" for i in (1, 3, 5)}  # only meta-training files
    # scales and ranges from the meta-training files: the test files' 100x larger inputs change nothing
    assert sampler.input_scales[0] <= 5.0 and sampler.input_range[1] <= 5.0
    encoded = components.encoder.encode(tests[0], 5)
    assert encoded.shape == (components.encoder.observation_size,) == ((2 + 2 + 1) * 5 + 2 * 2 + 1,)


def test_the_support_points_encoder_sees_only_the_support_set_in_any_order(folder, registry):
    sampler = build_components(resolve_config(registry, _settings(folder))).task_sampler
    encoder = SupportPointsEncoder(sampler)
    task = sampler.validation_tasks(1)[0]
    shuffled = type(task)(
        task.task_id,
        task.split,
        (),
        task.x_train[:1],
        task.y_train[:1],
        task.x_support[[4, 2, 0, 1, 3]],
        task.y_support[[4, 2, 0, 1, 3]],
        task.x_query[:1],
        task.y_query[:1],
    )
    np.testing.assert_array_equal(encoder.encode(task, 5), encoder.encode(shuffled, 5))
    three = encoder.encode(task, 3)
    assert three[2 * 5 * 2 : 2 * 5 * 2 + 5].tolist() == [1, 1, 1, 0, 0]  # the mask after x and y channels
    assert three[-1] == pytest.approx(3 / 5)


def test_a_seeded_split_of_one_folder_is_disjoint_deterministic_and_complete(tmp_path, registry):
    rng = np.random.default_rng(1)
    for i in range(10):
        _csv(tmp_path / f"f{i}.csv", 25, rng)
    splits = [
        build_components(resolve_config(registry, _settings(tmp_path, split_seed=seed))).task_sampler._paths
        for seed in (0, 0, 1)
    ]
    names = {split: [p.name for p in paths] for split, paths in splits[0].items()}
    assert (len(names["train"]), len(names["validation"]), len(names["test"])) == (6, 2, 2)
    assert sorted(sum(names.values(), [])) == sorted(f"f{i}.csv" for i in range(10))
    assert splits[0] == splits[1] and splits[0] != splits[2]


def test_arrays_and_torch_datasets_make_the_same_family():
    rng = np.random.default_rng(2)
    tasks = {
        split: [(rng.normal(size=(20, 3)), rng.normal(size=(20, 1))) for _ in range(3)]
        for split in ("train", "validation", "test")
    }
    config = FilesConfig(support_points=4, query_points=6)
    from_arrays = FileTaskSampler.from_arrays(config, tasks)
    datasets = {
        split: [torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y)) for x, y in pairs]
        for split, pairs in tasks.items()
    }
    from_datasets = FileTaskSampler.from_dataset(config, datasets)
    assert (from_arrays.input_size, from_arrays.output_size) == (3, 1)
    for a, b in zip(from_arrays.test_tasks(3), from_datasets.test_tasks(3)):
        assert torch.equal(a.x_support, b.x_support) and torch.equal(a.y_query, b.y_query)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda root: None, "task.root: name the folder"),
        (lambda root: root / "nowhere", "is not a folder"),
        (
            lambda root: (root / "train" / "task-0.csv").write_text("t,a,y1\n" + "1,2,3\n" * 30) and root,
            "no output column 'y2'",
        ),
        (
            lambda root: (root / "train" / "task-0.csv").write_text("t,unused,a,y1,y2\n" + "1,2,3,4,5\n" * 6) and root,
            "holds 6 rows; each needs at least 7",
        ),
        (
            lambda root: (
                np.savez(root / "test" / "task-1.npz", t=[np.nan] * 30, a=[0.0] * 30, y1=[0.0] * 30, y2=[0.0] * 30)
                or root
            ),
            "NaN or infinite",
        ),
        (
            lambda root: (root / "validation" / "task-0.csv").write_text("t,unused,a,y1,y2\n1,2,x,4,5\n") and root,
            "'x' is not a number",
        ),
        (lambda root: [p.unlink() for p in (root / "test").iterdir()] and root, "no test tasks"),
    ],
)
def test_bad_task_files_are_one_config_error_naming_the_file(folder, registry, change, message):
    root = change(folder)
    settings = _settings(folder)
    settings["task"]["root"] = None if root is None else str(root)
    with pytest.raises(ConfigError) as caught:
        build_components(resolve_config(registry, settings))
    assert len(caught.value.problems) == 1 and message in caught.value.problems[0], caught.value.problems


def test_an_image_folder_is_an_n_way_k_shot_family_on_the_conv_pool(tmp_path, registry):
    from PIL import Image

    rng = np.random.default_rng(3)
    for c in range(9):
        (tmp_path / f"class-{c}").mkdir()
        for i in range(6):
            pixels = (rng.random((10, 10)) * 60 + 25 * c).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / f"class-{c}" / f"{i}.png")
    settings = {
        "plugin": "image-folder",
        "preset": "smoke",
        "task": {
            "root": str(tmp_path),
            "ways": 3,
            "train_per_class": 1,
            "support_shots": 2,
            "query_per_class": 3,
            "image_size": 8,
        },
        "env": {"shots": [1, 2]},
        "eval": {"shots": [1, 2]},
    }
    components = build_components(resolve_config(registry, settings))
    sampler = components.task_sampler
    assert (components.config.pool.name, components.config.encoder.name) == ("conv", "prototypes")
    assert {split: len(ids) for split, ids in sampler.classes.items()} == {"train": 3, "validation": 3, "test": 3}
    assert set(sampler.classes["train"]).isdisjoint(sampler.classes["test"])
    task = sampler.test_tasks(1)[0]
    assert task.x_support.shape == (6, 1, 8, 8) and task.y_support.tolist() == [0, 1, 2, 0, 1, 2] and task.ways == 3
    network = components.pool.build([0, components.pool.size - 1])
    assert network(task.x_query).shape == (9, 3)
    assert components.encoder.encode(task, 2).shape == (components.encoder.observation_size,)
    (tmp_path / "class-0" / "0.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match="cannot read image"):
        build_components(resolve_config(registry, settings))


def test_save_tasks_writes_arrays_and_datasets_as_a_folder_the_family_reads(tmp_path, registry):
    rng = np.random.default_rng(4)
    pairs = {
        split: [(rng.normal(size=(20 + i, 2)), rng.normal(size=20 + i)) for i in range(3)]
        for split in ("train", "validation", "test")
    }
    pairs["test"][1] = torch.utils.data.TensorDataset(
        torch.tensor(pairs["test"][1][0]), torch.tensor(pairs["test"][1][1])
    )
    from reml_plugins.files import save_tasks

    task = save_tasks(tmp_path / "tasks", pairs)
    sampler = build_components(
        resolve_config(
            registry,
            {
                "plugin": "files",
                "preset": "smoke",
                "task": {**task, "support_points": 5},
                "env": {"shots": [5]},
                "eval": {"shots": [5]},
            },
        )
    ).task_sampler
    assert (sampler.input_size, sampler.output_size) == (2, 1) and [len(t.x) for t in sampler.splits["test"]] == [
        20,
        21,
        22,
    ]
    np.testing.assert_allclose(
        sampler.splits["test"][1].y.numpy().reshape(-1), pairs["test"][1].tensors[1].numpy(), rtol=1e-6
    )
    with pytest.raises(UserError, match="already holds task files"):
        save_tasks(tmp_path / "tasks", pairs)
    with pytest.raises(UserError, match="give at least one test task"):
        save_tasks(tmp_path / "other", {"train": pairs["train"], "validation": pairs["validation"]})
    with pytest.raises(UserError, match="NaN"):
        save_tasks(tmp_path / "nan", {**pairs, "train": [(np.full((5, 2), np.nan), np.zeros(5))]})
