"""The digits task plugin (few-shot classification of scikit-learn's 8x8 digits) and the prototypes encoder."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import reml_plugins.digits as digits_plugin
from reml_core.config import resolve_config
from reml_core.errors import ConfigError
from reml_core.experiment import build_components
from reml_core.interfaces import BuildContext, MeasuresMetrics, StateEncoder, TaskContext, TaskSampler
from reml_core.registry import PluginRegistry
from reml_plugins.digits.sampler import MIN_DIGIT_IMAGES, DigitsConfig, DigitsTaskSampler
from reml_plugins.encoders.prototypes import PrototypesConfig, PrototypesEncoder, build_prototypes
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler


@pytest.fixture(scope="module")
def sampler() -> DigitsTaskSampler:
    return DigitsTaskSampler(DigitsConfig())


def _take(stream, n):
    return [next(stream) for _ in range(n)]


def _images(x: torch.Tensor) -> list[bytes]:
    return [image.numpy().tobytes() for image in x]


# -- class splits ----------------------------------------------------------------------------------


def test_class_splits_are_disjoint_complete_and_fixed_by_split_seed(sampler):
    train, validation, test = (set(sampler.classes[s]) for s in ("train", "validation", "test"))
    assert (len(train), len(validation), len(test)) == (24, 8, 8)
    assert not train & validation and not train & test and not validation & test
    assert train | validation | test == set(range(40))
    assert DigitsTaskSampler(DigitsConfig()).classes == sampler.classes  # fixed: another run, the same split
    other = DigitsTaskSampler(DigitsConfig(split_seed=1)).classes
    assert other != sampler.classes
    assert DigitsTaskSampler(DigitsConfig(test_seed=99)).classes == sampler.classes  # the split ignores test_seed


def test_without_rotations_the_ten_digits_split_6_2_2():
    s = DigitsTaskSampler(DigitsConfig(rotations=False, ways=2))
    sizes = tuple(len(s.classes[split]) for split in ("train", "validation", "test"))
    assert sizes == (6, 2, 2)
    assert set().union(*map(set, s.classes.values())) == set(range(10))
    assert s.descriptor_high == (9.0, 9.0)
    task = s.test_tasks(1)[0]
    assert set(task.descriptor) == set(map(float, s.classes["test"]))


def test_test_classes_never_appear_in_training_or_validation_tasks(sampler):
    test_classes = set(map(float, sampler.classes["test"]))
    validation_classes = set(map(float, sampler.classes["validation"]))
    for seed in (0, 1, 2017):  # 2017 is also the held-out seed: the streams stay apart
        seen = {c for task in _take(sampler.train_stream(seed), 2000) for c in task.descriptor}
        assert seen == set(map(float, sampler.classes["train"]))  # every training class, nothing else
    seen_validation = {c for task in sampler.validation_tasks(300) for c in task.descriptor}
    assert seen_validation == validation_classes
    seen_test = {c for task in sampler.test_tasks(300) for c in task.descriptor}
    assert seen_test == test_classes


def test_held_out_images_are_the_classes_own(sampler):
    """A test task's images really are its classes' digits, rotated: checked against the raw data."""
    from sklearn.datasets import load_digits

    data = load_digits()
    by_digit_rotation = {}
    for image, digit in zip(data.images.astype(np.float32) / 16, data.target):
        for turns in range(4):
            by_digit_rotation[np.ascontiguousarray(np.rot90(image, turns)).tobytes()] = int(digit) + 10 * turns
    for task in sampler.test_tasks(20):
        for x, y in ((task.x_train, task.y_train), (task.x_support, task.y_support), (task.x_query, task.y_query)):
            classes = [by_digit_rotation[image[0].numpy().tobytes()] for image in x]
            assert classes == [int(task.descriptor[label]) for label in y.tolist()]


# -- tasks ------------------------------------------------------------------------------------------


def test_tasks_are_well_formed(sampler):
    assert isinstance(sampler, TaskSampler) and isinstance(sampler, MeasuresMetrics)
    assert sampler.input_size == 64 and sampler.input_shape == (1, 8, 8) and sampler.output_size == 5
    assert sampler.max_shots == 5 and sampler.train_points == 50
    assert sampler.descriptor_names == ("class_1", "class_2", "class_3", "class_4", "class_5")
    assert sampler.descriptor_low == (0.0,) * 5 and sampler.descriptor_high == (39.0,) * 5
    for task in [*_take(sampler.train_stream(3), 20), *sampler.validation_tasks(20), *sampler.test_tasks(20)]:
        assert task.ways == 5 and len(task.descriptor) == 5 and len(set(task.descriptor)) == 5
        for x, y, per_class in (
            (task.x_train, task.y_train, 10),
            (task.x_support, task.y_support, 5),
            (task.x_query, task.y_query, 15),
        ):
            assert x.shape == (5 * per_class, 1, 8, 8) and x.dtype == torch.float32
            assert y.shape == (5 * per_class,) and y.dtype == torch.int64
            assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
            assert torch.equal(y, torch.arange(5 * per_class) % 5)  # interleaved: position i holds label i % ways
        images = [*_images(task.x_train), *_images(task.x_support), *_images(task.x_query)]
        assert len(set(images)) == len(images) == 150  # train, support and query images all distinct


def test_k_shot_support_sets_hold_k_of_each_class_and_are_nested(sampler):
    task = sampler.test_tasks(1)[0]
    for k in range(1, 6):
        x, y = task.support(k)
        assert x.shape == (5 * k, 1, 8, 8)
        assert torch.bincount(y, minlength=5).tolist() == [k] * 5
    x1, _ = task.support(1)
    x5, _ = task.support(5)
    assert torch.equal(x1, x5[:5])
    with pytest.raises(ValueError, match="6-shot support requested"):
        task.support(6)


def test_labels_map_to_classes_at_random_per_task(sampler):
    tasks = _take(sampler.train_stream(0), 300)
    first_label_classes = {task.descriptor[0] for task in tasks}
    assert len(first_label_classes) == 24  # label 0 is any training class
    assert any(list(task.descriptor) != sorted(task.descriptor) for task in tasks)


def test_streams_are_seeded(sampler):
    a, b, c = (_take(sampler.train_stream(s), 5) for s in (4, 4, 5))
    assert [t.descriptor for t in a] == [t.descriptor for t in b] != [t.descriptor for t in c]
    assert all(torch.equal(s.x_query, t.x_query) and torch.equal(s.x_train, t.x_train) for s, t in zip(a, b))
    assert not torch.equal(a[0].x_support, c[0].x_support)
    assert a[0].task_id != c[0].task_id


def test_held_out_sets_are_fixed_and_independent_of_the_run_seed():
    config = DigitsConfig()
    one, two = DigitsTaskSampler(config), DigitsTaskSampler(config)
    _take(one.train_stream(123), 10)  # drawing training tasks changes nothing held out
    for split in ("validation_tasks", "test_tasks"):
        a, b = getattr(one, split)(30), getattr(two, split)(30)
        assert [t.descriptor for t in a] == [t.descriptor for t in b]
        assert all(torch.equal(s.x_support, t.x_support) and torch.equal(s.y_query, t.y_query) for s, t in zip(a, b))
        assert [t.task_id for t in a[:10]] == [t.task_id for t in getattr(one, split)(10)]  # prefixes agree
    # and through the factory, whatever the run seed
    spec = next(iter(digits_plugin.reml_task_samplers()))
    tasks = [spec.factory(config, BuildContext(seed=seed)).test_tasks(5) for seed in (0, 7)]
    assert [t.descriptor for t in tasks[0]] == [t.descriptor for t in tasks[1]]
    assert torch.equal(tasks[0][4].x_query, tasks[1][4].x_query)
    other = DigitsTaskSampler(DigitsConfig(test_seed=1)).test_tasks(30)
    assert [t.descriptor for t in other] != [t.descriptor for t in one.test_tasks(30)]


def test_validation_and_test_tasks_differ(sampler):
    validation, test = sampler.validation_tasks(50), sampler.test_tasks(50)
    assert not {t.descriptor for t in validation} & {t.descriptor for t in test}
    assert {t.split for t in validation} == {"validation"} and {t.split for t in test} == {"test"}


def test_other_sizes():
    s = DigitsTaskSampler(DigitsConfig(ways=8, support_shots=3, train_per_class=4, query_per_class=2))
    task = next(s.train_stream(0))
    assert (
        task.x_train.shape == (32, 1, 8, 8)
        and task.x_support.shape == (24, 1, 8, 8)
        and task.x_query.shape == (16, 1, 8, 8)
    )
    assert s.train_points == 32 and s.max_shots == 3 and s.output_size == 8 and len(s.descriptor_names) == 8
    assert torch.bincount(task.support(2)[1]).tolist() == [2] * 8
    big = DigitsConfig(ways=2, support_shots=24, train_per_class=100, query_per_class=MIN_DIGIT_IMAGES - 124)
    task = DigitsTaskSampler(big).test_tasks(1)[0]  # every image of the rarest digit in one task
    images = [*_images(task.x_train), *_images(task.x_support), *_images(task.x_query)]
    assert len(set(images)) == len(images) == 2 * MIN_DIGIT_IMAGES


# -- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ways": 9}, "ways = 9 does not fit the class split 24/8/8"),
        ({"ways": 3, "rotations": False}, "ways = 3 does not fit the class split 6/2/2"),
        ({"rotations": False}, "at most 2 ways"),
        ({"ways": 1}, "greater than or equal to 2"),
        (
            {"train_per_class": 100, "support_shots": 50, "query_per_class": 25},
            "175 distinct images per class, but the rarest digit has only 174",
        ),
        ({"support_shots": 0}, "greater than or equal to 1"),
        ({"query_per_class": 500}, "less than or equal to 174"),
        ({"split_seed": -1}, "greater than or equal to 0"),
        ({"shots": 5}, "Extra inputs are not permitted"),
    ],
)
def test_config_validation(values, message):
    with pytest.raises(ValidationError, match=message):
        DigitsConfig(**values)


def test_missing_scikit_learn_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"the digits family needs scikit-learn: pip install scikit-learn"):
        DigitsTaskSampler(DigitsConfig())


# -- loss and metrics -------------------------------------------------------------------------------


def test_loss_is_cross_entropy_and_accuracy_the_argmax_hit_rate(sampler):
    task = sampler.test_tasks(1)[0]
    target = task.y_query
    logits = torch.randn(len(target), 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sampler.loss(logits, target), F.cross_entropy(logits, target))
    perfect = F.one_hot(target, 5).float() * 10
    assert sampler.metrics(perfect, target) == {"accuracy": 1.0}
    assert float(sampler.loss(perfect, target)) < 1e-3
    wrong = F.one_hot((target + 1) % 5, 5).float()
    assert sampler.metrics(wrong, target) == {"accuracy": 0.0}
    half = perfect.clone()
    half[:30] = wrong[:30]
    accuracy = sampler.metrics(half, target)["accuracy"]
    assert isinstance(accuracy, float) and accuracy == pytest.approx(45 / 75)
    uniform = torch.zeros(len(target), 5)
    assert float(sampler.loss(uniform, target)) == pytest.approx(np.log(5))


def test_loss_works_row_by_row_as_the_core_batches_it(sampler):
    from reml_core.inner_loop import batched_loss

    tasks = sampler.test_tasks(3)
    logits = torch.randn(3, 75, 5, generator=torch.Generator().manual_seed(1))
    targets = torch.stack([t.y_query for t in tasks])
    rows = batched_loss(sampler.loss)(logits, targets)
    torch.testing.assert_close(rows, torch.stack([sampler.loss(logits[i], targets[i]) for i in range(3)]))


def test_a_small_network_learns_the_training_classes_in_seconds(sampler):
    """The data carry signal: a linear classifier fitted on a task's training images beats chance on its query
    images."""
    accuracies = []
    for task in sampler.test_tasks(10):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))
        optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(50):
            optimiser.zero_grad()
            sampler.loss(model(task.x_train), task.y_train).backward()
            optimiser.step()
        with torch.no_grad():
            accuracies.append(sampler.metrics(model(task.x_query), task.y_query)["accuracy"])
    assert np.mean(accuracies) > 0.6  # chance is 0.2


def test_describe_states_the_facts(sampler):
    text = sampler.describe()
    for fact in ("5-way", "40 classes", "24/8/8", "10 training", "5 support", "15 query", "cross-entropy", "rotations"):
        assert fact in text


# -- the record and a run's configuration -------------------------------------------------------------


@pytest.fixture
def registry() -> PluginRegistry:
    """The installed plugins, plus digits (and the conv pool, if present) registered in-process until their entry points
    exist."""
    registry = PluginRegistry.discover(disabled=())
    if "digits" not in registry.names("task_sampler"):
        registry.register(digits_plugin, name="digits", distribution="reml")
    if "conv" not in registry.names("layer_pool"):
        try:
            import reml_plugins.conv as conv_plugin
        except ImportError:
            pass
        else:
            registry.register(conv_plugin, name="conv", distribution="reml")
    return registry


def test_the_record_recommends_prototypes_and_conv_and_presets_fit_k():
    (spec,) = digits_plugin.reml_task_samplers()
    assert spec.name == "digits" and spec.config_model is DigitsConfig and "\n" not in spec.description
    assert (spec.recommended.encoder, spec.recommended.pool, spec.recommended.reward, spec.recommended.policy) == (
        "prototypes",
        "conv",
        "neg-mse",
        "ppo-mlp",
    )
    assert spec.recommended.baselines == ("maml", "scratch", "reference") and spec.recommended.run_baselines == (
        "scratch",
        "reference",
    )
    for preset in ("smoke", "default", "full"):
        values = spec.experiment_presets[preset]
        assert values["env"]["shots"] == [1, 5] and values["eval"]["shots"] == [1, 5]
    assert spec.experiment_presets["smoke"]["train"]["env_steps"] == 2000
    assert spec.experiment_presets["smoke"]["eval"]["test_tasks"] == 50


def test_config_resolves_with_the_families_presets(registry):
    user = {"plugin": "digits", "preset": "smoke", "pool": "dense", "encoder": "prototypes", "policy": "ppo-mlp"}
    config = resolve_config(registry, user)
    assert config.core.env.shots == [1, 5] and config.core.eval.shots == [1, 5]
    assert config.core.train.env_steps == 2000 and config.core.eval.test_tasks == 50
    default = resolve_config(registry, {**user, "preset": "default"})
    assert default.core.train.env_steps == 100_000 and default.core.eval.test_tasks == 600
    with pytest.raises(ConfigError, match="ways"):
        resolve_config(registry, {**user, "task": {"ways": 20}})


# -- the prototypes encoder ---------------------------------------------------------------------------


def test_prototypes_encoder_shape_and_values(sampler):
    encoder = PrototypesEncoder(sampler, PrototypesConfig())
    assert isinstance(encoder, StateEncoder) and encoder.privileged is False
    assert encoder.observation_size == 5 * 16 + 1
    task = sampler.test_tasks(1)[0]
    for k in (1, 3, 5):
        out = encoder.encode(task, k)
        assert out.shape == (encoder.observation_size,) and out.dtype == np.float32 and np.isfinite(out).all()
        assert out[-1] == pytest.approx(k / 5)
        x, y = task.support(k)
        for label in range(5):
            mean = x[y == label].mean(0)  # [1, 8, 8]
            pooled = mean.reshape(4, 2, 4, 2).mean(dim=(1, 3)).reshape(-1)  # 2x2 blocks of an 8x8 image
            np.testing.assert_allclose(out[16 * label : 16 * (label + 1)], pooled.numpy(), rtol=1e-6, atol=1e-7)
    full = PrototypesEncoder(sampler, PrototypesConfig(grid=8))
    assert full.observation_size == 5 * 64 + 1
    x, y = task.support(1)
    np.testing.assert_allclose(full.encode(task, 1)[:-1], x[torch.argsort(y)].reshape(-1).numpy())  # 1-shot, no pooling
    assert "5 classes" in encoder.describe() and "4x4" in encoder.describe()


def test_prototypes_encoder_reads_only_the_k_shot_support_set(sampler):
    encoder = PrototypesEncoder(sampler, PrototypesConfig())
    task, other = sampler.test_tasks(2)
    k = 2
    ways = task.ways
    x_support = task.x_support.clone()
    x_support[ways * k :] = other.x_support[ways * k :]  # support images beyond the K-shot set
    changed = dataclasses.replace(
        task,
        x_query=other.x_query,
        y_query=other.y_query,
        x_train=other.x_train,
        y_train=other.y_train,
        x_support=x_support,
        descriptor=other.descriptor,
        task_id="changed",
    )
    np.testing.assert_array_equal(encoder.encode(task, k), encoder.encode(changed, k))
    moved = dataclasses.replace(task, x_support=other.x_support)  # the K-shot set itself changed
    assert not np.array_equal(encoder.encode(task, k), encoder.encode(moved, k))


def test_prototypes_encoder_refuses_families_without_images():
    sine = SineTaskSampler(SineConfig())
    with pytest.raises(ValueError, match="no input_shape"):
        build_prototypes(PrototypesConfig(), TaskContext(seed=0, task_sampler=sine))
    with pytest.raises(ValueError, match="grid = 9 is larger than the 8x8 images"):
        PrototypesEncoder(DigitsTaskSampler(DigitsConfig()), PrototypesConfig(grid=9))


def test_prototypes_encoder_is_registered_beside_the_others():
    import reml_plugins.encoders as encoders_plugin

    names = [spec.name for spec in encoders_plugin.reml_state_encoders()]
    assert names == ["oracle", "support-set", "prototypes"]


def test_components_build_with_the_recommended_components(registry):
    """The core's own checks (K fits the support set, the encoder's output at every K) pass for digits'
    recommendation."""
    if "conv" not in registry.names("layer_pool"):
        pytest.skip("the conv pool is not available")
    config = resolve_config(registry, {"plugin": "digits", "preset": "smoke"})
    assert (config.encoder.name, config.pool.name) == ("prototypes", "conv")
    components = build_components(config)
    assert components.encoder.observation_size == 81


def test_a_tiny_run_goes_through_with_the_recommended_components(registry, tmp_path):
    """End to end (a few seconds): meta-train, select, evaluate with cross-entropy and accuracy, report."""
    if "conv" not in registry.names("layer_pool"):
        pytest.skip("the conv pool is not available")
    from reml_core.config import default_baselines
    from reml_core.pipeline import run_experiment

    baselines = default_baselines(registry, "digits", "run")  # what reml-run compares with: the recommendation
    assert baselines == ["scratch", "reference"]
    config = resolve_config(
        registry,
        {
            "plugin": "digits",
            "preset": "smoke",
            "train": {
                "env_steps": 128,
                "checkpoint_every": 128,
                "validation_tasks": 3,
                "calibration_episodes": 4,
                "progress": False,
            },
            "eval": {"test_tasks": 4, "steps": [0, 2], "curve_steps": 2, "curve_tasks": 2},
            "policy": {"n_steps": 64, "batch_size": 32},
        },
        baselines=baselines,
    )
    results = run_experiment(config, tmp_path).to_json()
    assert results["loss_name"] == "cross-entropy"
    for method in ("reml", "scratch", "reference"):
        for k in ("1", "5"):
            for step in ("0", "2"):
                cell = results["methods"][method][k][step]
                assert cell["nan_tasks"] == 0 and 0 < cell["mse_mean"] < 10
                assert 0.0 <= cell["accuracy_mean"] <= 1.0
    assert (tmp_path / "report.md").exists()


@pytest.mark.parametrize("split_seed", [0, 1, 7])
def test_splits_are_by_digit_so_no_held_out_class_is_a_rotated_training_class(split_seed):
    s = DigitsTaskSampler(DigitsConfig(split_seed=split_seed))
    digits = {split: {c % 10 for c in s.classes[split]} for split in ("train", "validation", "test")}
    assert [len(d) for d in digits.values()] == [6, 2, 2]
    assert (
        not (digits["train"] & digits["test"])
        and not (digits["train"] & digits["validation"])
        and not (digits["validation"] & digits["test"])
    )
    for split, chosen in digits.items():  # every rotation of a split's digits belongs to that split
        assert set(s.classes[split]) == {d + 10 * turn for d in chosen for turn in range(4)}
