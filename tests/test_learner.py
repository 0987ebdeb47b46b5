"""The learner (issue 22): a finished run's networks for a user's own data, plain PyTorch, the benchmark's numbers."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.runs import tiny_run

import reml_core
from reml_core.errors import UserError
from reml_core.learner import (
    ClassBalanceError,
    InputDataError,
    LearnerInputError,
    OutOfRangeWarning,
    ShotsError,
    UnavailableMethodError,
    load_network,
    plain_network,
    save_network,
)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("learner") / "run")


@pytest.fixture(scope="module")
def learner(run_folder):
    return reml_core.load(run_folder).learner()


def _support(k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(-4, 4, k)
    return x, 2.0 * np.sin(x + 0.5)


@pytest.mark.slow
def test_predict_reproduces_the_runs_reported_query_loss_on_its_test_tasks(run_folder, learner):
    reported = json.loads((run_folder / "results.json").read_text())["methods"]["reml"]
    tasks = learner.task_sampler.test_tasks(5)
    for shots in (5, 10):
        for steps in (0, 1, 10):
            losses = [
                float(
                    torch.mean((learner.predict(*task.support(shots), task.x_query, steps=steps) - task.y_query) ** 2)
                )
                for task in tasks
            ]
            assert np.mean(losses) == pytest.approx(reported[str(shots)][str(steps)]["mse_mean"], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_the_network_is_plain_pytorch_scripts_exports_and_round_trips_with_weights_only(learner, tmp_path):
    x, y = _support()
    network = learner.network_for(x, y)
    assert type(network) is torch.nn.Sequential
    assert {type(layer) for layer in network} <= {torch.nn.Linear, torch.nn.ReLU}
    probe = torch.linspace(-5, 5, 7).unsqueeze(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        scripted = torch.jit.script(network)
    exported = torch.export.export(network, (probe,))
    loaded = load_network(save_network(network, tmp_path / "net.pt"))
    raw = torch.load(tmp_path / "net.pt", weights_only=True)
    assert raw["format"] == "reml.plain-network/1"
    with torch.no_grad():
        expected = network(probe)
        for other in (scripted(probe), exported.module()(probe), loaded(probe)):
            assert torch.equal(other, expected)


@pytest.mark.slow
def test_adapt_is_the_protocols_sgd_and_predict_is_network_for_then_adapt(learner):
    x, y = _support()
    network = learner.network_for(x, y)
    before = [p.clone() for p in network.parameters()]
    adapted = learner.adapt(network, x, y, steps=3, lr=0.01)
    assert all(torch.equal(a, b) for a, b in zip(network.parameters(), before))  # a copy is adapted
    manual = learner.network_for(x, y)
    xs, ys = torch.tensor(x, dtype=torch.float32).unsqueeze(1), torch.tensor(y, dtype=torch.float32).unsqueeze(1)
    for _ in range(3):
        loss = torch.mean((manual(xs) - ys) ** 2)
        grads = torch.autograd.grad(loss, list(manual.parameters()))
        with torch.no_grad():
            for parameter, grad in zip(manual.parameters(), grads):
                parameter -= 0.01 * grad
    query = torch.linspace(-5, 5, 11).unsqueeze(1)
    with torch.no_grad():
        assert torch.allclose(adapted(query), manual(query), atol=1e-6)
        assert torch.allclose(learner.predict(x, y, query.numpy(), steps=3, lr=0.01), adapted(query), atol=1e-6)
    assert learner.steps == 10 and learner.lr == 0.01  # the run's eval.steps and eval.sgd_lr are the defaults


@pytest.mark.slow
def test_every_bad_input_is_one_typed_error(learner):
    x, y = _support()
    cases = [
        ((x.reshape(-1, 1, 1), y), InputDataError, "shape"),
        ((np.stack([x, x], 1), y), InputDataError, r"inputs are \[n, 1\]"),
        ((x, y[:5]), InputDataError, "holds 5 points but x_support holds 10"),
        ((x.astype(str), y), InputDataError, "give numbers"),
        ((x > 0, y), InputDataError, "give numbers"),
        ((np.where(x > 0, np.nan, x), y), InputDataError, "NaN or infinite"),
        (("abc", y), InputDataError, "must be a numpy array"),
        ((x[:0], y[:0]), InputDataError, "empty"),
        ((np.linspace(-4, 4, 20), np.zeros(20)), ShotsError, "K from 1 to 10"),
    ]
    for (xs, ys), kind, text in cases:
        with pytest.raises(kind, match=text) as caught:
            learner.network_for(xs, ys)
        assert isinstance(caught.value, LearnerInputError) and isinstance(caught.value, UserError)
        assert "\n" not in str(caught.value)
    with pytest.raises(InputDataError, match="steps must be"):
        learner.predict(x, y, x, steps=-1)
    with pytest.raises(InputDataError, match="lr must be"):
        learner.adapt(learner.network_for(x, y), x, y, lr=float("nan"))


@pytest.mark.slow
def test_data_outside_the_families_range_is_a_warning_naming_the_range(learner):
    x, y = _support()
    with pytest.warns(OutOfRangeWarning, match=r"x_support holds values in \[-12, 12\], outside \[-5, 5\]"):
        learner.network_for(x * 3, y)
    with pytest.warns(OutOfRangeWarning, match=r"y_support .* outside \[-5, 5\], the range of the targets"):
        learner.network_for(x, y * 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learner.network_for(x, y)  # inside: no warning


@pytest.mark.slow
def test_methods_seeds_and_encoders_a_folder_lacks_are_named(run_folder):
    results = reml_core.load(run_folder)
    with pytest.raises(UnavailableMethodError, match="holds no method 'maml'"):
        results.learner("maml")
    with pytest.raises(UnavailableMethodError, match="seed 0, not 3"):
        results.learner(seed=3)
    scratch = results.learner("scratch")  # meta-trained again, as the run did (it is instant)
    x, y = _support()
    assert type(scratch.network_for(x, y)) is torch.nn.Sequential
    with pytest.raises(reml_core.ArgumentError):
        results.learner(3)


def test_plain_copies_of_the_pools_and_mamls_networks_compute_the_same():
    from reml_plugins.conv.pool import ConvComposedNetwork
    from reml_plugins.dense.pool import ComposedNetwork
    from reml_plugins.maml.network import Architecture, MetaNetwork

    generator = torch.Generator().manual_seed(0)
    dense = ComposedNetwork(
        [torch.randn(8, 2, generator=generator), torch.randn(3, 8, generator=generator)],
        [torch.randn(8, generator=generator), torch.randn(3, generator=generator)],
        "tanh",
    )
    maml = MetaNetwork(Architecture((2, 8, 3), "relu")).initialise(generator)
    weights = [
        torch.randn(4, 1, 3, 3, generator=generator),
        torch.randn(4, 4, 3, 3, generator=generator),
        torch.randn(5, 4, generator=generator),
    ]
    biases = [
        torch.randn(4, generator=generator),
        torch.randn(4, generator=generator),
        torch.randn(5, generator=generator),
    ]
    conv = ConvComposedNetwork(weights, biases, pools=[True, False], norm=True, input_shape=(1, 8, 8))
    for network, probe in (
        (dense, torch.randn(6, 2, generator=generator)),
        (maml, torch.randn(6, 2, generator=generator)),
        (conv, torch.rand(6, 1, 8, 8, generator=generator)),
    ):
        plain = plain_network(network, probe)
        assert type(plain) is torch.nn.Sequential
        with torch.no_grad():
            assert torch.allclose(plain(probe), network(probe), atol=1e-5)
    with pytest.raises(UserError, match="to_plain"):
        plain_network(torch.nn.Bilinear(2, 2, 1))


def test_a_classification_support_set_needs_k_of_each_class():
    from reml_core.learner import Learner

    class Images:
        loss_name = "cross-entropy"
        input_shape = (1, 4, 4)
        input_size = 16
        output_size = 3
        max_shots = 5
        descriptor_names = ()

    learner = Learner(
        "reml",
        Path("."),
        Images(),
        torch.nn.functional.cross_entropy,
        lambda task, shots: None,
        (1, 5),
        10,
        0.01,
        "images",
    )
    x = np.random.default_rng(0).random((6, 1, 4, 4))
    task, shots = learner.support_task(x, [2, 0, 1, 1, 0, 2])
    assert shots == 2 and task.y_support.tolist() == [0, 1, 2, 0, 1, 2]  # interleaved, as the families lay tasks out
    assert torch.equal(task.x_support[0], torch.tensor(x[1], dtype=torch.float32))
    with pytest.raises(ClassBalanceError, match="class 0: 1, class 1: 2, class 2: 3"):
        learner.support_task(x, [0, 1, 1, 2, 2, 2])
    with pytest.raises(InputDataError, match="labelled 0..2"):
        learner.support_task(x, [0, 1, 2, 3, 0, 1])
    with pytest.raises(InputDataError, match="non-integer"):
        learner.support_task(x, [0, 1, 2, 0.5, 0, 1])
    with pytest.raises(ShotsError, match="K from 1 to 5"):
        learner.support_task(np.zeros((18, 16)), [0, 1, 2] * 6)
    assert learner.support_task(np.zeros((3, 16)), [0, 1, 2])[0].x_support.shape == (3, 1, 4, 4)  # flat images


def test_the_learner_module_imports_nothing_of_training():
    code = (
        "import sys, reml_core.learner; bad = [m for m in ('stable_baselines3', 'reml_core.training', "
        "'reml_core.pipeline') "
        "if m in sys.modules]; print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


@pytest.fixture(scope="module")
def bench_folder(tmp_path_factory) -> Path:
    """A tiny benchmark: REML with a fair and a privileged encoder, and MAML, one seed."""
    tiny = {
        "train.env_steps": 400,
        "train.checkpoint_every": 200,
        "train.validation_tasks": 3,
        "train.calibration_episodes": 5,
        "train.progress": False,
        "eval.test_tasks": 5,
        "eval.curve_steps": 3,
        "eval.curve_tasks": 2,
        "policy.n_steps": 256,
        "policy.batch_size": 128,
        "baselines.maml.iterations": 20,
    }
    out = tmp_path_factory.mktemp("learner-bench") / "bench"
    reml_core.bench(
        plugin="sine",
        preset="smoke",
        methods=["reml", "maml"],
        encoders=["support-set", "oracle"],
        seeds=1,
        overrides=tiny,
        out=out,
    )
    return out


@pytest.mark.slow
def test_a_benchmarks_maml_and_reml_reproduce_its_numbers_and_choices_are_named(bench_folder):
    results = reml_core.load(bench_folder)
    reported = json.loads((bench_folder / "seed-0" / "results.json").read_text())["methods"]
    with pytest.raises(UnavailableMethodError, match="encoders oracle, support-set; pick one with encoder="):
        results.learner()
    with pytest.raises(UnavailableMethodError, match="privileged encoder 'oracle'"):
        results.learner(encoder="oracle")
    with pytest.raises(UnavailableMethodError, match="no seed 4"):
        results.learner("maml", seed=4)
    with pytest.raises(
        UnavailableMethodError, match=r"holds no method 'scratch' \(it holds reml:support-set, reml:oracle, maml\)"
    ):
        results.learner("scratch")
    for key, learner in (
        ("reml:support-set", results.learner(encoder="support-set")),
        ("maml", results.learner("maml")),
        ("maml", reml_core.load(bench_folder / "seed-0").learner("maml")),
    ):
        tasks = learner.task_sampler.test_tasks(5)
        for shots in (5, 10):
            losses = [
                float(torch.mean((learner.predict(*task.support(shots), task.x_query) - task.y_query) ** 2))
                for task in tasks
            ]
            assert np.mean(losses) == pytest.approx(reported[key][str(shots)]["10"]["mse_mean"], rel=1e-5, abs=1e-6), (
                key
            )
    assert [type(layer).__name__ for layer in results.learner("maml").network_for(*_support())] == [
        "Linear",
        "ReLU",
    ] * 2 + ["Linear"]


@pytest.mark.slow
def test_a_classification_runs_learner_reproduces_its_numbers_on_the_conv_pool(tmp_path):
    tiny = {
        "train.env_steps": 300,
        "train.checkpoint_every": 150,
        "train.validation_tasks": 3,
        "train.calibration_episodes": 5,
        "train.progress": False,
        "eval.test_tasks": 4,
        "eval.curve_steps": 2,
        "eval.curve_tasks": 2,
        "policy.n_steps": 128,
        "policy.batch_size": 64,
        "train.n_envs": 4,
    }
    run = reml_core.run(plugin="digits", preset="smoke", overrides=tiny, out=tmp_path / "digits")
    learner = run.learner()
    assert learner.classification and learner.input_shape == (1, 8, 8) and learner.ways == 5
    tasks = learner.task_sampler.test_tasks(4)
    for shots in (1, 5):
        losses = [
            float(torch.nn.functional.cross_entropy(learner.predict(*task.support(shots), task.x_query), task.y_query))
            for task in tasks
        ]
        assert np.mean(losses) == pytest.approx(run.cell("reml", shots, 10).mean, rel=1e-5)
    x, y = tasks[0].support(2)
    order = torch.argsort(y, stable=True)  # the user's order: grouped by class
    network = learner.network_for(x[order], y[order])
    same = learner.network_for(x, y)  # the family's interleaved order: the same support set, the same network
    assert all(torch.equal(a, b) for a, b in zip(network.parameters(), same.parameters()))
    assert {type(layer).__name__ for layer in network} <= {
        "Conv2d",
        "GroupNorm",
        "ReLU",
        "MaxPool2d",
        "AdaptiveAvgPool2d",
        "Flatten",
        "Linear",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(network)
    loaded = load_network(save_network(network, tmp_path / "conv.pt"))
    with torch.no_grad():
        expected = network(tasks[0].x_query)
        assert torch.equal(scripted(tasks[0].x_query), expected) and torch.equal(loaded(tasks[0].x_query), expected)
        assert torch.equal(torch.export.export(network, (tasks[0].x_query,)).module()(tasks[0].x_query), expected)
    with pytest.raises(ClassBalanceError, match="K examples of each class"):
        learner.network_for(x[:-1], y[:-1])
