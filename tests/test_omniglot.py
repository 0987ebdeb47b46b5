"""The omniglot task plugin, on a tiny Omniglot-shaped folder generated here (nothing is downloaded)."""

from __future__ import annotations

import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from pydantic import ValidationError

import reml_plugins.omniglot as omniglot_plugin
import reml_plugins.omniglot.sampler as omniglot_sampler
from reml_core.config import resolve_config
from reml_core.errors import ConfigError, UserError
from reml_core.experiment import build_components
from reml_core.interfaces import BuildContext, MeasuresMetrics, TaskSampler
from reml_core.registry import PluginRegistry
from reml_plugins.omniglot.sampler import DOWNLOAD_HINT, OmniglotConfig, OmniglotDataError, OmniglotTaskSampler

#: 2 alphabets in images_background and 1 in images_evaluation: 12 characters, 48 classes with rotations.
LAYOUT = {"images_background": {"Alpha_(one)": 4, "Beta": 4}, "images_evaluation": {"Gamma": 4}}
DRAWINGS = 20


def make_omniglot(root: Path, layout=LAYOUT, drawings: int = DRAWINGS, seed: int = 0) -> Path:
    """An Omniglot-shaped folder: ROOT/<subset>/<Alphabet>/characterNN/NNNN_MM.png, 105x105 1-bit PNGs,
    black strokes on white; each character is 3 random strokes, each drawing of it a jittered copy."""
    rng = np.random.default_rng(seed)
    number = 0
    for subset, alphabets in layout.items():
        for alphabet, count in alphabets.items():
            for index in range(count):
                number += 1
                folder = root / subset / alphabet / f"character{index + 1:02d}"
                folder.mkdir(parents=True)
                strokes = rng.integers(12, 93, size=(3, 4, 2))
                for drawer in range(drawings):
                    image = Image.new("L", (105, 105), 255)
                    draw = ImageDraw.Draw(image)
                    for stroke in strokes + rng.integers(-5, 6, size=strokes.shape):
                        draw.line([(int(x), int(y)) for x, y in stroke], fill=0, width=4)
                    image.convert("1").save(folder / f"{number:04d}_{drawer + 1:02d}.png")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_omniglot(tmp_path_factory.mktemp("omniglot"))


@pytest.fixture(scope="module")
def sampler(root) -> OmniglotTaskSampler:
    return OmniglotTaskSampler(OmniglotConfig(root=str(root)))


def _take(stream, n):
    return [next(stream) for _ in range(n)]


def _images(x: torch.Tensor) -> list[bytes]:
    return [image.numpy().tobytes() for image in x]


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "copy"))


# -- the folder and the class splits ----------------------------------------------------------------


def test_every_character_folder_is_found_in_both_subsets(sampler, root):
    names = [c.name for c in sampler.characters]
    assert len(names) == 12 and names == sorted(names)
    assert (
        names[0] == "images_background/Alpha_(one)/character01" and names[-1] == "images_evaluation/Gamma/character04"
    )
    assert {c.alphabet for c in sampler.characters} == {
        "images_background/Alpha_(one)",
        "images_background/Beta",
        "images_evaluation/Gamma",
    }
    assert sampler.drawing_counts.tolist() == [20] * 12
    assert sampler.n_classes == 48 and sampler.descriptor_high == (47.0,) * 5
    assert sampler.class_name(13) == "images_background/Alpha_(one)/character02 @ 90deg"


def test_characters_split_disjointly_with_every_rotation_in_its_own_split(sampler, root):
    chars = {split: set(sampler.split_characters[split]) for split in ("train", "validation", "test")}
    assert [len(c) for c in chars.values()] == [7, 2, 3]  # round(12 * 0.6), round(12 * 0.2), the rest
    assert (
        not chars["train"] & chars["validation"]
        and not chars["train"] & chars["test"]
        and not chars["validation"] & chars["test"]
    )
    assert set().union(*chars.values()) == set(range(12))
    for split, chosen in chars.items():
        assert set(sampler.classes[split]) == {c + 12 * turn for c in chosen for turn in range(4)}
    assert OmniglotTaskSampler(OmniglotConfig(root=str(root))).classes == sampler.classes  # fixed by the config
    assert OmniglotTaskSampler(OmniglotConfig(root=str(root), test_seed=5)).classes == sampler.classes
    assert OmniglotTaskSampler(OmniglotConfig(root=str(root), split_seed=1)).classes != sampler.classes
    other = OmniglotTaskSampler(
        OmniglotConfig(root=str(root), train_fraction=0.5, validation_fraction=0.25, ways=2, rotations=False)
    )
    assert [len(other.classes[s]) for s in ("train", "validation", "test")] == [6, 3, 3]
    assert set().union(*map(set, other.classes.values())) == set(range(12))


def test_either_subset_alone_is_enough(root, tmp_path):
    (tmp_path / "images_evaluation").symlink_to(root / "images_evaluation", target_is_directory=True)
    s = OmniglotTaskSampler(OmniglotConfig(root=str(tmp_path), ways=4))
    assert [c.name for c in s.characters] == [f"images_evaluation/Gamma/character0{i}" for i in range(1, 5)]
    assert [len(s.classes[split]) for split in ("train", "validation", "test")] == [8, 4, 4]
    assert next(s.train_stream(0)).x_query.shape == (20, 1, 28, 28)
    with pytest.raises(
        OmniglotDataError, match=r"task.ways: ways = 5 does not fit the class split 8/4/4 .* at most 4 ways"
    ):
        OmniglotTaskSampler(OmniglotConfig(root=str(tmp_path)))


def test_test_classes_never_appear_in_training_or_validation_tasks(sampler):
    for seed in (0, 2017):  # 2017 is also the held-out seed: the streams stay apart
        seen = {c for task in _take(sampler.train_stream(seed), 300) for c in task.descriptor}
        assert seen == set(map(float, sampler.classes["train"]))
    assert {c for t in sampler.validation_tasks(100) for c in t.descriptor} == set(
        map(float, sampler.classes["validation"])
    )
    assert {c for t in sampler.test_tasks(100) for c in t.descriptor} == set(map(float, sampler.classes["test"]))


def test_images_are_their_classes_drawings_rotated_resized_and_inverted(sampler):
    """Checked against the files, decoded here independently: every image of a task is a drawing of its class's
    character at its rotation."""
    by_image = {}
    for index, character in enumerate(sampler.characters):
        for path in character.files:
            with Image.open(path) as image:
                grey = np.asarray(image.convert("L").resize((28, 28), Image.Resampling.LANCZOS), dtype=np.float32)
            strokes = ((255 - grey) / np.float32(255)).astype(np.float32)
            for turn in range(4):
                by_image[np.ascontiguousarray(np.rot90(strokes, turn)).tobytes()] = index + 12 * turn
    assert len(by_image) == 12 * 20 * 4  # random strokes: no two drawings or rotations alike
    for task in [*sampler.test_tasks(5), *_take(sampler.train_stream(1), 5)]:
        for x, y in ((task.x_train, task.y_train), (task.x_support, task.y_support), (task.x_query, task.y_query)):
            classes = [by_image[image[0].numpy().tobytes()] for image in x]
            assert classes == [int(task.descriptor[label]) for label in y.tolist()]


# -- tasks ------------------------------------------------------------------------------------------


def test_tasks_are_well_formed(sampler):
    assert isinstance(sampler, TaskSampler) and isinstance(sampler, MeasuresMetrics)
    assert sampler.input_shape == (1, 28, 28) and sampler.input_size == 784 and sampler.output_size == 5
    assert sampler.max_shots == 5 and sampler.train_points == 25 and sampler.loss_name == "cross-entropy"
    assert sampler.descriptor_names == tuple(f"class_{i}" for i in range(1, 6)) and sampler.descriptor_low == (0.0,) * 5
    for task in [*_take(sampler.train_stream(3), 10), *sampler.validation_tasks(10), *sampler.test_tasks(10)]:
        assert task.ways == 5 and len(set(task.descriptor)) == 5
        for x, y in ((task.x_train, task.y_train), (task.x_support, task.y_support), (task.x_query, task.y_query)):
            assert x.shape == (25, 1, 28, 28) and x.dtype == torch.float32
            assert y.shape == (25,) and y.dtype == torch.int64
            assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
            assert torch.equal(y, torch.arange(25) % 5)  # interleaved: position i holds label i % ways
        images = [*_images(task.x_train), *_images(task.x_support), *_images(task.x_query)]
        assert len(set(images)) == len(images) == 75  # distinct drawings (or rotations) everywhere


def test_strokes_are_one_and_the_background_zero(sampler):
    x = sampler.test_tasks(3)[0].x_query
    assert float(x.amax(dim=(1, 2, 3)).min()) > 0.9  # every image has strokes near 1
    assert float(x[:, :, 0, 0].max()) == 0.0 and float(x[:, :, -1, -1].max()) == 0.0  # corners: background
    assert float((x > 0.5).float().mean()) < 0.35  # mostly background


def test_image_size_20(root):
    s = OmniglotTaskSampler(
        OmniglotConfig(root=str(root), image_size=20, ways=3, support_shots=2, train_per_class=1, query_per_class=17)
    )
    assert s.input_shape == (1, 20, 20) and s.input_size == 400
    task = s.test_tasks(1)[0]
    assert (
        task.x_train.shape == (3, 1, 20, 20)
        and task.x_support.shape == (6, 1, 20, 20)
        and task.x_query.shape == (51, 1, 20, 20)
    )
    assert task.x_query.dtype == torch.float32 and 0.0 <= float(task.x_query.min()) and float(task.x_query.max()) <= 1.0
    images = [*_images(task.x_train), *_images(task.x_support), *_images(task.x_query)]
    assert len(set(images)) == 60  # every drawing of the three classes, once


def test_k_shot_support_sets_hold_k_of_each_class_and_are_nested(sampler):
    task = sampler.test_tasks(1)[0]
    for k in range(1, 6):
        x, y = task.support(k)
        assert x.shape == (5 * k, 1, 28, 28) and torch.bincount(y, minlength=5).tolist() == [k] * 5
    assert torch.equal(task.support(1)[0], task.support(5)[0][:5])
    with pytest.raises(ValueError, match="6-shot support requested"):
        task.support(6)


def test_streams_are_seeded_and_held_out_sets_independent_of_the_run_seed(sampler, root):
    a, b, c = (_take(sampler.train_stream(s), 5) for s in (4, 4, 5))
    assert [t.descriptor for t in a] == [t.descriptor for t in b] != [t.descriptor for t in c]
    assert all(torch.equal(s.x_query, t.x_query) and torch.equal(s.x_train, t.x_train) for s, t in zip(a, b))
    (spec,) = omniglot_plugin.reml_task_samplers()
    config = OmniglotConfig(root=str(root))
    one, two = (spec.factory(config, BuildContext(seed=seed)) for seed in (0, 7))
    _take(one.train_stream(123), 10)  # drawing training tasks changes nothing held out
    for split in ("validation_tasks", "test_tasks"):
        x, y = getattr(one, split)(20), getattr(two, split)(20)
        assert [t.descriptor for t in x] == [t.descriptor for t in y]
        assert all(torch.equal(s.x_support, t.x_support) and torch.equal(s.x_query, t.x_query) for s, t in zip(x, y))
        assert [t.task_id for t in x[:5]] == [t.task_id for t in getattr(one, split)(5)]
    other = OmniglotTaskSampler(OmniglotConfig(root=str(root), test_seed=1)).test_tasks(20)
    assert [t.descriptor for t in other] != [t.descriptor for t in one.test_tasks(20)]
    assert {t.descriptor for t in one.validation_tasks(20)}.isdisjoint({t.descriptor for t in one.test_tasks(20)})


def test_images_are_decoded_lazily_once_and_shared(root, monkeypatch):
    monkeypatch.setattr(omniglot_sampler, "_DECODED", OrderedDict())
    calls = []
    real = omniglot_sampler.decode
    monkeypatch.setattr(omniglot_sampler, "decode", lambda path, size: calls.append(path) or real(path, size))
    s = OmniglotTaskSampler(OmniglotConfig(root=str(root)))
    assert calls == []  # building the sampler reads no image
    next(s.train_stream(0))
    assert len(calls) == 240 and len(set(calls)) == 240
    s.test_tasks(5)
    _take(s.train_stream(1), 20)
    assert len(calls) == 240
    images = s.images
    assert images.dtype == np.uint8 and images.shape == (240, 28, 28) and not images.flags.writeable
    again = OmniglotTaskSampler(OmniglotConfig(root=str(root), ways=3))  # another sampler of the same data: no decoding
    again.test_tasks(1)
    assert len(calls) == 240 and again.images is images
    OmniglotTaskSampler(OmniglotConfig(root=str(root), image_size=14)).test_tasks(1)  # another size decodes its own
    assert len(calls) == 480


# -- errors -----------------------------------------------------------------------------------------


@pytest.fixture
def registry() -> PluginRegistry:
    registry = PluginRegistry.discover(disabled=())
    if "omniglot" not in registry.names("task_sampler"):
        registry.register(omniglot_plugin, name="omniglot", distribution="reml")
    return registry


def test_a_missing_root_says_how_to_get_the_data(registry, tmp_path):
    with pytest.raises(ValidationError, match="required: the Omniglot folder") as caught:
        OmniglotConfig()
    assert DOWNLOAD_HINT in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        resolve_config(registry, {"plugin": "omniglot", "preset": "smoke", "task": {"ways": 1}})
    lines = caught.value.problems
    assert any(line.startswith("task.root: required") and DOWNLOAD_HINT in line for line in lines)
    assert any(line.startswith("task.ways:") for line in lines)  # other problems still reported
    assert "brendenlake/omniglot (python/ folder)" in DOWNLOAD_HINT and "--set task.root=FOLDER" in DOWNLOAD_HINT
    absent = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as caught:
        resolve_config(registry, {"plugin": "omniglot", "task": {"root": str(absent)}})
    (line,) = caught.value.problems
    assert line.startswith("task.root:") and f"no such folder {str(absent)!r}" in line and DOWNLOAD_HINT in line
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValidationError, match="is not a folder; download images_background.zip"):
        OmniglotConfig(root=str(tmp_path / "file"))
    with pytest.raises(ValidationError, match="empty path"):
        OmniglotConfig(root=" ")


def test_root_is_required_in_the_options_listing(registry):
    from reml_core.cli.plugins import show

    (item,) = show(registry, "omniglot")
    rows = {row["key"]: row for row in item["options"]}
    assert rows["root"]["required"] is True and "brendenlake/omniglot" in rows["root"]["description"]
    assert rows["image_size"]["default"] == 28 and rows["ways"]["default"] == 5
    assert [rows[k]["default"] for k in ("support_shots", "train_per_class", "query_per_class")] == [5, 5, 5]
    assert rows["train_fraction"]["default"] == 0.6 and rows["validation_fraction"]["default"] == 0.2


def test_a_folder_without_characters_is_refused(registry, tmp_path):
    with pytest.raises(
        OmniglotDataError,
        match="task.root: no character folders found .* neither images_background/ nor images_evaluation/",
    ) as caught:
        OmniglotTaskSampler(OmniglotConfig(root=str(tmp_path)))
    assert DOWNLOAD_HINT in str(caught.value) and isinstance(caught.value, ValueError)
    (tmp_path / "images_background" / "Alphabet").mkdir(parents=True)
    with pytest.raises(OmniglotDataError, match=r"no character folders found .* \(in images_background/"):
        OmniglotTaskSampler(OmniglotConfig(root=str(tmp_path)))
    config = resolve_config(registry, {"plugin": "omniglot", "preset": "smoke", "task": {"root": str(tmp_path)}})
    # a user error, not a plugin failure
    with pytest.raises(ConfigError, match="task.root: no character folders found"):
        build_components(config)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_an_unreadable_image_is_named(root, tmp_path, damage):
    copy = _copy(root, tmp_path)
    bad = copy / "images_evaluation" / "Gamma" / "character03" / "0011_07.png"
    data = bad.read_bytes()
    bad.write_bytes({"garbage": b"not a png at all", "truncated": data[: len(data) // 2], "empty": b""}[damage])
    s = OmniglotTaskSampler(OmniglotConfig(root=str(copy)))
    with pytest.raises(UserError, match=rf"task.root: cannot read image {bad}: ") as caught:
        s.test_tasks(1)
    assert isinstance(caught.value, ValueError)


def test_too_few_drawings_per_class_is_refused(root, tmp_path):
    with pytest.raises(
        OmniglotDataError,
        match=r"= 8 \+ 5 \+ 8 = 21 distinct drawings per class, but character folder .* holds only 20",
    ):
        OmniglotTaskSampler(OmniglotConfig(root=str(root), train_per_class=8, query_per_class=8))
    copy = _copy(root, tmp_path)
    for path in sorted((copy / "images_background" / "Beta" / "character02").glob("*.png"))[9:]:
        path.unlink()
    with pytest.raises(
        OmniglotDataError, match="character folder images_background/Beta/character02 under .* holds only 9 PNG files"
    ):
        OmniglotTaskSampler(OmniglotConfig(root=str(copy)))
    s = OmniglotTaskSampler(OmniglotConfig(root=str(copy), support_shots=3, train_per_class=3, query_per_class=3))
    assert (
        s.drawing_counts.tolist().count(9) == 1 and len(s.test_tasks(2)) == 2
    )  # 9 drawings are enough for 9 per class


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ways": 9}, r"task.ways: ways = 9 does not fit the class split 28/8/12 .* at most 8 ways"),
        ({"ways": 3, "rotations": False}, "does not fit the class split 7/2/3 .* rotations off.*at most 2 ways"),
        (
            {"train_fraction": 0.9, "validation_fraction": 0.05},
            r"split 11/1/0 .* every split needs at least one character",
        ),
    ],
)
def test_splits_too_small_for_the_task_are_refused(root, values, message):
    with pytest.raises(OmniglotDataError, match=message):
        OmniglotTaskSampler(OmniglotConfig(root=str(root), **values))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ways": 1}, "greater than or equal to 2"),
        ({"image_size": 106}, "less than or equal to 105"),
        ({"image_size": 3}, "greater than or equal to 4"),
        ({"support_shots": 0}, "greater than or equal to 1"),
        ({"train_fraction": 0.8, "validation_fraction": 0.2}, "leaves no test characters"),
        ({"validation_fraction": 0.0}, "greater than 0"),
        ({"shots": 5}, "Extra inputs are not permitted"),
    ],
)
def test_config_validation(root, values, message):
    with pytest.raises(ValidationError, match=message):
        OmniglotConfig(root=str(root), **values)


def test_a_relative_root_is_recorded_absolute(root, monkeypatch):
    monkeypatch.chdir(root.parent)
    config = OmniglotConfig(root=root.name)
    assert config.root == str(root) and Path(config.root).is_absolute()


# -- loss, metrics, description ---------------------------------------------------------------------


def test_loss_is_cross_entropy_and_accuracy_the_argmax_hit_rate(sampler):
    target = sampler.test_tasks(1)[0].y_query
    logits = torch.randn(len(target), 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sampler.loss(logits, target), F.cross_entropy(logits, target))
    perfect = F.one_hot(target, 5).float() * 10
    assert sampler.metrics(perfect, target) == {"accuracy": 1.0}
    assert sampler.metrics(F.one_hot((target + 1) % 5, 5).float(), target) == {"accuracy": 0.0}


def test_describe_states_the_facts(sampler, root):
    text = sampler.describe()
    for fact in (
        "5-way",
        "Omniglot",
        "12 characters of 3 alphabets",
        "48 classes",
        "28/8/12",
        "28x28",
        str(root),
        "5 training",
        "5 support",
        "5 query",
        "cross-entropy",
        "rotations",
    ):
        assert fact in text, fact


# -- the record and a run ---------------------------------------------------------------------------


def test_the_record_recommends_prototypes_and_conv_and_presets_fit_k():
    (spec,) = omniglot_plugin.reml_task_samplers()
    assert spec.name == "omniglot" and spec.config_model is OmniglotConfig and "\n" not in spec.description
    r = spec.recommended
    assert (r.encoder, r.pool, r.reward, r.policy, r.baselines, r.run_baselines) == (
        "prototypes",
        "conv",
        "neg-mse",
        "ppo-mlp",
        ("maml", "scratch", "reference"),
        ("scratch", "reference"),
    )
    for preset in ("smoke", "default", "full"):
        assert (
            spec.experiment_presets[preset]["env"]["shots"]
            == [1, 5]
            == spec.experiment_presets[preset]["eval"]["shots"]
        )
    assert spec.experiment_presets["smoke"]["train"]["env_steps"] == 2000
    assert spec.experiment_presets["smoke"]["eval"]["test_tasks"] == 50


def test_components_build_and_an_environment_steps(registry, root):
    config = resolve_config(registry, {"plugin": "omniglot", "preset": "smoke", "task": {"root": str(root)}})
    assert (config.encoder.name, config.pool.name) == ("prototypes", "conv")
    assert config.core.env.shots == [1, 5] and config.core.train.env_steps == 2000 and config.core.eval.test_tasks == 50
    components = build_components(config)
    assert components.task_sampler.input_shape == (1, 28, 28)
    assert components.encoder.observation_size == 5 * 16 + 1
    env = components.make_env(seed=0)
    try:
        observation, _ = env.reset(seed=0)
        assert observation.shape == env.observation_space.shape and np.isfinite(observation).all()
        rng = np.random.default_rng(0)
        done, steps = False, 0
        while not done and steps < 20:
            mask = env.action_masks() if hasattr(env, "action_masks") else np.ones(env.action_space.n, dtype=bool)
            action = int(rng.choice(np.flatnonzero(mask)))
            observation, reward, terminated, truncated, info = env.step(action)
            assert np.isfinite(observation).all() and np.isfinite(reward)
            done, steps = terminated or truncated, steps + 1
        assert done
    finally:
        env.close()


def test_a_tiny_run_goes_through_with_the_recommended_components(registry, root, tmp_path):
    """End to end (a few seconds): meta-train, select, evaluate with cross-entropy and accuracy, report."""
    from reml_core.config import default_baselines
    from reml_core.pipeline import run_experiment

    baselines = default_baselines(registry, "omniglot", "run")
    assert baselines == ["scratch", "reference"]
    config = resolve_config(
        registry,
        {
            "plugin": "omniglot",
            "preset": "smoke",
            "task": {"root": str(root), "image_size": 14},
            "train": {
                "env_steps": 64,
                "checkpoint_every": 64,
                "validation_tasks": 2,
                "calibration_episodes": 2,
                "progress": False,
            },
            "eval": {"test_tasks": 2, "steps": [0, 2], "curve_steps": 2, "curve_tasks": 1},
            "policy": {"n_steps": 32, "batch_size": 32},
        },
        baselines=baselines,
    )
    results = run_experiment(config, tmp_path / "run").to_json()
    assert results["loss_name"] == "cross-entropy"
    for method in ("reml", "scratch", "reference"):
        for k in ("1", "5"):
            for step in ("0", "2"):
                cell = results["methods"][method][k][step]
                assert cell["nan_tasks"] == 0 and 0 < cell["mse_mean"] < 10 and 0.0 <= cell["accuracy_mean"] <= 1.0
    assert (tmp_path / "run" / "report.md").exists()
