"""The no-training reference (nearest class mean / support mean) and the image families' evaluation protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reml_core.config import default_baselines, resolve_config
from reml_core.evaluation import FewShotEvaluator
from reml_core.interfaces import Baseline, BaselineContext, Task
from reml_core.registry import PluginRegistry
from reml_plugins.classification import EXPERIMENT_PRESETS, IMAGE_SGD_LR, IMAGE_STEPS
from reml_plugins.digits.sampler import DigitsConfig, DigitsTaskSampler
from reml_plugins.reference import ReferenceBaseline, ReferenceConfig, nearest_class_mean, reml_baselines
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler


def _baseline() -> ReferenceBaseline:
    return ReferenceBaseline(ReferenceConfig(), BaselineContext(seed=0, task_sampler=None, pool=None, encoder=None))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def digits() -> DigitsTaskSampler:
    return DigitsTaskSampler(DigitsConfig())


def test_the_plugin_record():
    (spec,) = list(reml_baselines())
    assert spec.name == "reference" and spec.config_model is ReferenceConfig and "\n" not in spec.description
    assert (
        spec.compare_in == ()
    )  # offered where a family recommends it (or the user names it): sine's tables are unchanged
    assert isinstance(_baseline(), Baseline)


@pytest.mark.parametrize("shots", [1, 5])
def test_logits_rank_classes_by_distance_to_the_support_class_means(digits, shots):
    for task in digits.test_tasks(5):
        network = _baseline().network_for(task, shots)
        x, y = task.support(shots)
        means = torch.stack([x[y == c].flatten(1).mean(0) for c in range(task.ways)])
        queries = task.x_query.flatten(1)
        distances = torch.cdist(queries, means) ** 2
        logits = network(task.x_query)
        assert logits.shape == (len(task.x_query), task.ways)
        # 2 x.mu - ||mu||^2 = ||x||^2 - ||x - mu||^2: the logits are the negative squared distances, shifted per image.
        torch.testing.assert_close(logits, (queries * queries).sum(1, keepdim=True) - distances, rtol=1e-5, atol=1e-4)
        assert torch.equal(logits.argmax(1), distances.argmin(1))


def test_a_nearest_class_mean_is_nearest_on_a_hand_made_set():
    x = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 2.0], [10.0, 2.0]])
    y = torch.tensor([0, 1, 0, 1])
    network = nearest_class_mean(x, y, 2)  # means (0, 1) and (10, 1)
    assert network(torch.tensor([[1.0, 1.0], [9.0, 5.0], [4.9, 0.0], [5.1, 0.0]])).argmax(1).tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="no image of class"):
        nearest_class_mean(x[:2], y[:2], 3)


def test_it_is_far_above_chance_on_digits_and_the_evaluator_fine_tunes_it(digits):
    """Nearest class mean is a strong no-training classifier on 8x8 digits; the evaluator treats it as any method."""
    tasks = digits.test_tasks(20)
    evaluator = FewShotEvaluator(
        tasks, digits.loss, shots=[1, 5], steps=[0, 1, 3], lr=IMAGE_SGD_LR, metrics_fn=digits.metrics
    )
    table = evaluator.few_shot(_baseline().network_for)
    for shots, chance in ((1, 0.2), (5, 0.2)):
        accuracy = table[shots][0].metrics["accuracy"][0]
        assert accuracy > chance + 0.3, (shots, accuracy)
        assert all(table[shots][step].nan_tasks == 0 and np.isfinite(table[shots][step].mse_mean) for step in (0, 1, 3))
    assert table[5][0].metrics["accuracy"][0] >= table[1][0].metrics["accuracy"][0]


def test_for_regression_it_is_the_constant_support_mean():
    sampler = SineTaskSampler(SineConfig())
    task = next(sampler.train_stream(3))
    network = _baseline().network_for(task, 5)
    _, y = task.support(5)
    prediction = network(task.x_query)
    assert prediction.shape == task.y_query.shape
    torch.testing.assert_close(prediction, y.mean(0).expand_as(prediction))
    # A plain network: fine-tuning moves it like any other.
    before = F.mse_loss(prediction, task.y_query).item()
    loss = F.mse_loss(network(task.x_support[:5]), task.y_support[:5])
    loss.backward()
    assert all(p.grad is not None for p in network.parameters()) and np.isfinite(before)


def test_it_needs_no_training_and_saves_nothing(tmp_path):
    baseline = _baseline()
    assert baseline.meta_train(iter(()), progress=False) == {}
    baseline.save(tmp_path)
    assert list(tmp_path.iterdir()) == []
    baseline.load(tmp_path)
    assert "no training" in baseline.describe()


# -- the image families' protocol --------------------------------------------------------------


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry.discover(disabled=())


@pytest.mark.parametrize("preset", ["smoke", "default", "full"])
def test_image_presets_declare_their_protocol_and_everything_follows_it(registry, preset):
    config = resolve_config(registry, {"plugin": "digits", "preset": preset}, baselines=["maml", "reference"])
    core = config.core
    assert core.eval.sgd_lr == IMAGE_SGD_LR == 0.4 and core.eval.steps == IMAGE_STEPS == [0, 1, 3, 10]
    assert core.env.finetune_sgd_lr == 0.4 and core.env.finetune_steps == 10  # the reward's fine-tuning follows eval
    assert config.baselines["maml"].config.inner_sgd_lr == 0.4  # MAML's inner step follows the family's protocol
    assert "reference" in config.baselines
    if preset == "default":
        assert config.baselines["maml"].config.iterations == 10_000  # the family's MAML budget stays
    # The user still decides: an explicit rate wins for the evaluation, the reward's fine-tuning and MAML.
    mine = resolve_config(
        registry,
        {"plugin": "digits", "preset": preset, "eval": {"sgd_lr": 0.1}, "baselines": {"maml": {"inner_sgd_lr": 0.2}}},
        baselines=["maml"],
    )
    assert mine.core.eval.sgd_lr == 0.1 and mine.core.env.finetune_sgd_lr == 0.1
    assert mine.baselines["maml"].config.inner_sgd_lr == 0.2
    # The sine family keeps the sine protocol.
    sine = resolve_config(registry, {"plugin": "sine", "preset": preset}, baselines=["maml"])
    assert sine.core.eval.sgd_lr == 0.01 and sine.baselines["maml"].config.inner_sgd_lr == 0.01
    assert EXPERIMENT_PRESETS[preset]["baselines"]["maml"]["inner_sgd_lr"] == 0.4


@pytest.mark.parametrize("plugin", ["digits", "omniglot"])
def test_image_families_recommend_the_reference(registry, plugin):
    if plugin not in registry.names("task_sampler"):
        pytest.fail(f"the {plugin} plugin is not installed")
    assert "reference" in default_baselines(registry, plugin, "bench")
    assert "reference" in default_baselines(registry, plugin, "run")
    assert "reference" not in default_baselines(registry, "sine", "bench")


def test_a_classification_task_with_float_labels_is_not_taken_for_one(digits):
    """A regression task with several outputs (ways 1) gets the support mean, whatever its shape."""
    x = torch.randn(6, 3)
    y = torch.randn(6, 2)
    task = Task("r", "test", (0.0,), x, y, x, y, x, y)
    network = _baseline().network_for(task, 6)
    torch.testing.assert_close(network(x), y.mean(0).expand(6, 2))
