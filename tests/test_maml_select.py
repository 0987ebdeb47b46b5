"""The maml-select baseline: M MAML initialisations, each task taking the one with the lowest support loss after one SGD
step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.runs import TINY
from pydantic import ValidationError

import reml_plugins.maml
from reml_core.errors import CheckpointError, ComponentBuildError
from reml_core.interfaces import Baseline, Describable, TaskContext
from reml_core.registry import PluginRegistry
from reml_plugins.maml.baseline import MAMLBaseline
from reml_plugins.maml.batches import MetaBatch, from_task_batch
from reml_plugins.maml.checkpoint import METADATA, TENSORS
from reml_plugins.maml.config import MAMLConfig, MAMLSelectConfig
from reml_plugins.maml.select import MAMLSelectBaseline, choose
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def sampler() -> SineTaskSampler:
    return SineTaskSampler(SineConfig())


@pytest.fixture(scope="module")
def batch(sampler) -> MetaBatch:
    return from_task_batch(next(sampler.train_batches(3, 25)), 10)


def make(sampler, seed: int = 0, **config) -> MAMLSelectBaseline:
    return MAMLSelectBaseline(MAMLSelectConfig(**config), TaskContext(seed=seed, task_sampler=sampler))


def rows(baseline: MAMLSelectBaseline, index: int) -> list[torch.Tensor]:
    return [p.detach()[index] for p in baseline.stack.parameters()]


@pytest.fixture(scope="module")
def trained(sampler) -> MAMLSelectBaseline:
    baseline = make(sampler, initialisations=4, iterations=30)
    baseline.meta_train(iter(()), progress=False)
    return baseline


def test_one_initialisation_is_plain_maml(sampler):
    """M = 1, same seed: MAML's initialisation, meta-gradient and, after several Adam steps, parameters (float rounding
    apart)."""
    maml = MAMLBaseline(MAMLConfig(), TaskContext(seed=5, task_sampler=sampler))
    select = make(sampler, seed=5, initialisations=1)
    for mine, theirs in zip(rows(select, 0), maml.network.parameters()):
        assert torch.equal(mine, theirs.detach())
    maml_batches, select_batches = maml.meta_batches(iter(())), select.meta_batches(iter(()))
    for _ in range(6):
        maml_loss, select_loss = maml.meta_step(next(maml_batches)), select.meta_step(next(select_batches))
        assert select_loss == pytest.approx(maml_loss, rel=1e-6)
        for mine, theirs in zip(select.stack.parameters(), maml.network.parameters()):
            assert mine.grad.shape == (1, *theirs.grad.shape)
            torch.testing.assert_close(mine.grad[0], theirs.grad, rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(rows(select, 0), maml.network.parameters()):
        torch.testing.assert_close(mine, theirs.detach(), rtol=1e-6, atol=1e-6)


def test_initialisations_are_seeded_by_run_seed_and_index(sampler):
    four, eight, other = (
        make(sampler, seed=1, initialisations=4),
        make(sampler, seed=1, initialisations=8),
        make(sampler, seed=2, initialisations=4),
    )
    for small, large, different in zip(four.stack.parameters(), eight.stack.parameters(), other.stack.parameters()):
        assert torch.equal(small, large[:4])  # initialisation m does not depend on M
        assert not torch.equal(small, different)
        assert not torch.equal(small[0], small[1])  # and they differ from each other


def brute_force_support_loss(baseline: MAMLSelectBaseline, index: int, x: torch.Tensor, y: torch.Tensor) -> float:
    """Initialisation ``index`` as a plain module: loss on (x, y), one SGD step with autograd, loss on (x, y) again."""
    network = baseline.stack.network(index)
    loss = torch.mean((network(x) - y) ** 2)
    gradients = torch.autograd.grad(loss, list(network.parameters()))
    with torch.no_grad():
        for param, gradient in zip(network.parameters(), gradients):
            param -= baseline.config.inner_sgd_lr * gradient
        return float(torch.mean((network(x) - y) ** 2))


def test_the_choice_is_the_argmin_of_the_support_loss_after_one_step(trained, batch, sampler):
    losses = trained.backend.choice_loss(tuple(trained.stack.parameters()), batch.x_inner, batch.y_inner)
    expected = torch.tensor(
        [
            [brute_force_support_loss(trained, m, batch.x_inner[t], batch.y_inner[t]) for m in range(4)]
            for t in range(batch.tasks)
        ]
    )
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(trained.backend.choose(batch.x_inner, batch.y_inner), torch.argmin(expected, dim=1))
    assert len(set(torch.argmin(expected, dim=1).tolist())) > 1  # a test of a choice, not of a constant
    for task in sampler.test_tasks(6):  # network_for uses the same rule on the task's K-shot support set
        for shots in (5, 10):
            x, y = task.support(shots)
            assert trained.choice_for(task, shots) == min(
                range(4), key=lambda m: brute_force_support_loss(trained, m, x, y)
            )


def test_choose_breaks_ties_low_and_never_picks_nan():
    assert choose(torch.tensor([[1.0, 0.5, 0.5], [float("nan"), 2.0, 3.0]])).tolist() == [1, 1]


def test_gradient_reaches_only_the_chosen_initialisations_and_is_maml_s_per_task(trained, batch, sampler):
    """Each initialisation's gradient is the sum over the tasks that chose it of MAML's meta-gradient from it, /
    tasks."""
    two = MetaBatch(*(t[:2] for t in batch.as_tuple()))
    loss = trained.backend.meta_gradient(two)
    choice = trained.backend.last_choice.tolist()
    grads = [p.grad.clone() for p in trained.stack.parameters()]
    expected = [torch.zeros_like(g) for g in grads]
    losses = []
    for task, index in enumerate(choice):
        maml = MAMLBaseline(MAMLConfig(), TaskContext(seed=0, task_sampler=sampler))
        with torch.no_grad():
            for target, source in zip(maml.network.parameters(), rows(trained, index)):
                target.copy_(source)
        losses.append(float(maml.backend.meta_gradient(MetaBatch(*(t[task : task + 1] for t in two.as_tuple())))))
        for total, param in zip(expected, maml.network.parameters()):
            total[index] += param.grad / two.tasks
    assert float(loss) == pytest.approx(sum(losses) / 2, rel=1e-6)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    for index in set(range(4)) - set(choice):
        assert all(torch.count_nonzero(g[index]) == 0 for g in grads)
    for index in set(choice):
        assert all(torch.count_nonzero(g[index]) > 0 for g in grads)


def test_meta_training_is_seeded_learns_and_reports(sampler, batch):
    first, second = make(sampler, initialisations=3, iterations=40), make(sampler, initialisations=3, iterations=40)
    before = float(first.backend.meta_gradient(batch))
    summary = first.meta_train(iter(()), progress=False)
    second.meta_train(iter(()), progress=False)
    for a, b in zip(first.stack.parameters(), second.stack.parameters()):
        assert torch.equal(a, b)
    assert summary["iterations"] == 40 and summary["initialisations"] == 3
    assert 1 <= summary["initialisations_chosen_last_100"] <= summary["initialisations_chosen"] <= 3
    assert float(first.backend.meta_gradient(batch)) < 0.9 * before  # the meta-loss of a batch it never saw went down
    assert int(first.chosen.sum()) == 40 * 25


def test_network_for_is_a_fresh_copy_of_the_chosen_initialisation(trained, sampler):
    task = sampler.test_tasks(1)[0]
    index = trained.choice_for(task, 5)
    network = trained.network_for(task, 5)
    for mine, source in zip(network.parameters(), rows(trained, index)):
        assert torch.equal(mine.detach(), source)
    with torch.no_grad():
        next(network.parameters()).add_(1.0)
    assert not torch.equal(next(network.parameters()).detach(), rows(trained, index)[0])  # the stack is untouched


def test_save_load_round_trip_reproduces_network_for(trained, sampler, tmp_path):
    trained.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {TENSORS, METADATA}
    loaded = make(sampler, seed=9, initialisations=4)
    loaded.load(tmp_path)
    assert loaded.iterations_done == trained.iterations_done == 30
    assert json.loads((tmp_path / METADATA).read_text())["config"]["initialisations"] == 4
    for task in sampler.test_tasks(5):
        for shots in (5, 10):
            for a, b in zip(
                loaded.network_for(task, shots).parameters(), trained.network_for(task, shots).parameters()
            ):
                assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda d: (d / TENSORS).write_bytes((d / TENSORS).read_bytes()[:-7]), "do not match the SHA-256"),
        (lambda d: (d / METADATA).write_text("{"), "not readable JSON"),
        (lambda d: (d / TENSORS).unlink(), "cannot be read"),
    ],
)
def test_a_damaged_checkpoint_is_one_checkpoint_error(trained, sampler, tmp_path, damage, problem):
    trained.save(tmp_path)
    damage(tmp_path)
    with pytest.raises(CheckpointError, match=problem) as error:
        make(sampler, initialisations=4).load(tmp_path)
    assert "\n" not in str(error.value)


def test_a_mismatched_checkpoint_is_refused(trained, sampler, tmp_path):
    trained.save(tmp_path / "four")
    with pytest.raises(
        CheckpointError, match=r"tensor layers.0.weight is float32 \(4, 40, 1\), expected float32 \(8, 40, 1\)"
    ):
        make(sampler, initialisations=8).load(tmp_path / "four")
    with pytest.raises(CheckpointError, match="holds relu initialisations but this baseline is configured for tanh"):
        make(sampler, initialisations=4, activation="tanh").load(tmp_path / "four")
    MAMLBaseline(MAMLConfig(), TaskContext(seed=0, task_sampler=sampler)).save(tmp_path / "maml")
    with pytest.raises(
        CheckpointError, match="holds a 1-40-40-1 relu network but this baseline is configured for InitialisationStack"
    ):
        make(sampler, initialisations=4).load(tmp_path / "maml")


def test_config_refuses_learn2learn_and_bad_m():
    with pytest.raises(ValidationError, match="maml-select implements the torch-func backend only"):
        MAMLSelectConfig(backend="learn2learn")
    for bad in (0, -1, 1025):
        with pytest.raises(ValidationError, match="initialisations"):
            MAMLSelectConfig(initialisations=bad)
    assert MAMLSelectConfig().initialisations == 8
    assert MAMLSelectConfig(inner_lr=0.02).inner_sgd_lr == 0.02  # MAML's options, old names included


def test_an_image_family_is_refused_at_build():
    class Images:
        input_shape = (1, 28, 28)

    with pytest.raises(
        ComponentBuildError, match="maml-select meta-learns MLP initialisations for flat inputs"
    ) as error:
        MAMLSelectBaseline(MAMLSelectConfig(), TaskContext(seed=0, task_sampler=Images()))
    assert "\n" not in str(error.value)


def test_plugin_registers_maml_select_with_maml_s_presets(sampler):
    registry = PluginRegistry()
    registry.register(reml_plugins.maml, name="maml", distribution="reml")
    spec = registry.get("baseline", "maml-select").spec
    assert spec.label == "MAML-select"
    assert (
        spec.presets == registry.get("baseline", "maml").spec.presets
    )  # MAML's budgets, so the two compare at equal cost
    configs = {preset: spec.config_model(**spec.presets[preset]) for preset in ("smoke", "default", "full")}
    assert (configs["smoke"].iterations, configs["smoke"].compile, configs["default"].compile) == (300, False, True)
    assert {config.initialisations for config in configs.values()} == {8}
    baseline = spec.factory(configs["smoke"], TaskContext(seed=0, preset="smoke", task_sampler=sampler))
    assert isinstance(baseline, Baseline) and isinstance(baseline, Describable)
    assert baseline.describe().startswith("M=8 MAML initialisations") and "iterations=300" in baseline.describe()


def test_learn2learn_from_the_command_line_is_one_line(tmp_path):
    result = subprocess.run(
        [
            str(BIN / "reml-run"),
            "--plugin",
            "sine",
            "--preset",
            "smoke",
            "--baselines",
            "maml-select",
            "--set",
            "baselines.maml-select.backend=learn2learn",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "maml-select implements the torch-func backend only" in lines[0], result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_reml_run_with_maml_select_and_scratch_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [
            str(BIN / "reml-run"),
            *TINY,
            "--baselines",
            "maml-select,scratch",
            "--out",
            str(out),
            "--set",
            "baselines.maml-select.iterations=20",
            "--set",
            "baselines.maml-select.initialisations=3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"reml", "maml-select", "scratch"}
    assert results["labels"]["maml-select"] == "MAML-select" and "training_maml-select" in results["timing_s"]
    assert "| MAML-select |" in (out / "report.md").read_text()


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "reml-bench"), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_reml_bench_saves_maml_select_as_reml_s_files_and_reloads_it(tmp_path):
    """reml-bench trains and saves the baseline (every file in the folder's ledger); --from reloads it to the same
    numbers."""
    common = ("--plugin", "sine", "--preset", "smoke", "--set", "eval.test_tasks=5", "--set", "eval.curve_steps=0")
    out = tmp_path / "bench"
    result = _bench(
        *common,
        "--methods",
        "maml-select",
        "--set",
        "baselines.maml-select.iterations=10",
        "--set",
        "baselines.maml-select.initialisations=3",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = sorted(out.rglob(TENSORS)) + sorted(out.rglob(METADATA))
    assert len(saved) == 2, saved
    ledger = (out / ".reml.files").read_text().splitlines()
    for path in saved:
        assert path.relative_to(out).as_posix() in ledger
    again = tmp_path / "again"
    result = _bench(
        *common,
        "--methods",
        "maml-select",
        "--set",
        "baselines.maml-select.initialisations=3",
        "--from",
        str(out),
        "--out",
        str(again),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (json.loads((folder / "results.json").read_text()) for folder in (out, again))
    assert second["sources"]["0"]["maml-select"].startswith("loaded from")
    assert second["methods"]["maml-select"] == first["methods"]["maml-select"]
    wrong = _bench(
        *common, "--methods", "maml-select", "--from", str(out), "--out", str(tmp_path / "wrong")
    )  # M = 8 here
    assert wrong.returncode == 2
    assert len(wrong.stderr.strip().splitlines()) == 1 and "expected float32 (8, 40, 1)" in wrong.stderr, wrong.stderr


def test_compile_without_a_compiler_warns_and_runs_eagerly(sampler, batch, monkeypatch):
    from reml_plugins.maml.torch_func import CompileFallbackWarning

    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.warns(CompileFallbackWarning, match="maml-select: compile=true but no C\\+\\+ compiler"):
        baseline = make(sampler, initialisations=3, compile=True)
    assert not baseline.backend.compiled
    assert float(baseline.backend.meta_gradient(batch)) == float(
        make(sampler, initialisations=3).backend.meta_gradient(batch)
    )


@pytest.mark.slow
def test_compiled_choice_and_meta_gradient_equal_eager(sampler, batch):
    """About a minute on a cold compile cache (two graphs: the meta-batch's choice and the meta-gradient)."""
    from reml_plugins.maml.torch_func import cxx_compiler_available

    assert cxx_compiler_available(), "this machine has no C++ compiler for torch.compile"
    compiled, eager = make(sampler, initialisations=4, compile=True), make(sampler, initialisations=4)
    compiled_loss, eager_loss = compiled.backend.meta_gradient(batch), eager.backend.meta_gradient(batch)
    assert compiled.backend.compiled
    assert torch.equal(compiled.backend.last_choice, eager.backend.last_choice)
    assert float(compiled_loss) == pytest.approx(float(eager_loss), rel=1e-5)
    for a, b in zip(compiled.stack.parameters(), eager.stack.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_networks_for_many_tasks_take_the_initialisations_each_would_take_alone(trained, sampler):
    tasks = sampler.test_tasks(12)
    for shots in (5, 10):
        networks = trained.networks_for(tasks, shots)
        assert len(networks) == len(tasks)
        for task, network in zip(tasks, networks):
            for mine, source in zip(network.parameters(), rows(trained, trained.choice_for(task, shots))):
                assert torch.equal(mine.detach(), source)
    assert trained.networks_for([], 5) == []
