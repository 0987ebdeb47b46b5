"""The MAML baseline: backend equality, meta-training, the handed-out networks, config and checkpoints."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save as save_tensors
from torch.func import grad_and_value

import reml_plugins.maml
from reml_core.errors import CheckpointError, UserError
from reml_core.evaluation import FewShotEvaluator
from reml_core.inner_loop import finetune_sgd
from reml_core.interfaces import Baseline, BatchedTaskSampler, BuildContext, TaskContext, TaskSampler
from reml_core.registry import PluginRegistry
from reml_plugins.maml.baseline import MAMLBaseline
from reml_plugins.maml.batches import MetaBatch, draw_batch, from_task_batch, stack_tasks
from reml_plugins.maml.checkpoint import METADATA, TENSORS
from reml_plugins.maml.config import MAMLConfig
from reml_plugins.maml.torch_func import CompileFallbackWarning, _meta_loss, _task_loss
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler

needs_learn2learn = pytest.mark.skipif(
    importlib.util.find_spec("learn2learn") is None, reason="learn2learn (optional) is not installed"
)


@pytest.fixture(scope="module")
def sampler() -> SineTaskSampler:
    return SineTaskSampler(SineConfig())


@pytest.fixture(scope="module")
def batch(sampler) -> MetaBatch:
    return draw_batch(sampler.train_stream(0), 25, 10)


@pytest.fixture(scope="module")
def batches(sampler, batch) -> dict[str, MetaBatch]:
    """A meta-batch of each origin: 25 tasks drawn one by one, and one batched draw (``train_batches``)."""
    return {"per-task": batch, "batched": from_task_batch(next(sampler.train_batches(0, 25)), 10)}


class OneByOneSampler:
    """The sine family without the optional ``train_batches``: a sampler as a third party may write it."""

    def __init__(self, sampler: SineTaskSampler) -> None:
        self._sampler = sampler
        for name in (
            "descriptor_names",
            "descriptor_low",
            "descriptor_high",
            "input_size",
            "output_size",
            "max_shots",
            "train_points",
        ):
            setattr(self, name, getattr(sampler, name))

    def train_stream(self, seed):
        return self._sampler.train_stream(seed)

    def validation_tasks(self, count):
        return self._sampler.validation_tasks(count)

    def test_tasks(self, count):
        return self._sampler.test_tasks(count)

    def loss(self, prediction, target):
        return self._sampler.loss(prediction, target)


def make(sampler: SineTaskSampler, seed: int = 0, **config) -> MAMLBaseline:
    return MAMLBaseline(MAMLConfig(**config), TaskContext(seed=seed, task_sampler=sampler))


def meta_gradient(baseline: MAMLBaseline, batch: MetaBatch) -> tuple[float, list[torch.Tensor]]:
    loss = baseline.backend.meta_gradient(batch)
    return float(loss), [p.grad.clone() for p in baseline.network.parameters()]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- the two backends compute the same thing -------------------------------------------------


@pytest.mark.numerics
@needs_learn2learn
@pytest.mark.parametrize("origin", ["per-task", "batched"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_backends_give_the_same_meta_loss_and_meta_gradient(sampler, batches, origin, first_order, inner_steps):
    batch = batches[origin]
    options = {"first_order": first_order, "inner_steps": inner_steps}
    func = make(sampler, seed=3, backend="torch-func", **options)
    reference = make(sampler, seed=3, backend="learn2learn", **options)
    for a, b in zip(func.network.parameters(), reference.network.parameters()):
        assert torch.equal(a, b)  # same initial parameters
    func_loss, func_grads = meta_gradient(func, batch)
    ref_loss, ref_grads = meta_gradient(reference, batch)
    assert abs(func_loss - ref_loss) <= 1e-4 * abs(ref_loss)
    names = [name for name, _ in func.network.named_parameters()]
    for name, a, b in zip(names, func_grads, ref_grads, strict=True):
        assert relative_error(a, b) <= 1e-4, name


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_first_order_drops_terms_second_order_keeps(sampler, batch, inner_steps):
    """Guards the equality test: the two orders differ, so matching learn2learn in each means something."""
    _, second = meta_gradient(make(sampler, inner_steps=inner_steps), batch)
    _, first = meta_gradient(make(sampler, inner_steps=inner_steps, first_order=True), batch)
    assert max(relative_error(a, b) for a, b in zip(first, second)) > 0.05


@pytest.mark.numerics
@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_eager_outer_autograd_is_exactly_grad_and_value(sampler, batches, first_order, inner_steps):
    """The eager backend takes the outer derivative with plain autograd (faster); torch.func's own transform gives the
    same bits."""
    baseline = make(sampler, first_order=first_order, inner_steps=inner_steps)
    task_loss = partial(
        _task_loss,
        loss_fn=sampler.loss,
        activation="relu",
        inner_lr=0.01,
        inner_steps=inner_steps,
        first_order=first_order,
    )
    transform = grad_and_value(partial(_meta_loss, task_loss=task_loss))
    for batch in batches.values():
        loss, grads = meta_gradient(baseline, batch)
        reference_grads, reference_loss = transform(
            tuple(p.detach() for p in baseline.network.parameters()), batch.as_tuple()
        )
        assert loss == float(reference_loss)
        assert all(torch.equal(a, b) for a, b in zip(grads, reference_grads, strict=True))


def test_meta_gradient_matches_plain_autograd_on_one_task(sampler, batch):
    """The vmapped batch equals a hand-rolled second-order MAML step, task by task."""
    baseline = make(sampler)
    _, grads = meta_gradient(baseline, batch)
    network = baseline.network_for(None, 10)
    params = list(network.parameters())
    total = [torch.zeros_like(p) for p in params]
    for x_in, y_in, x_out, y_out in zip(*batch.as_tuple()):
        inner = torch.autograd.grad(torch.mean((network(x_in) - y_in) ** 2), params, create_graph=True)
        adapted = [p - 0.01 * g for p, g in zip(params, inner)]
        h = x_out
        for i in range(0, len(adapted) - 2, 2):
            h = torch.relu(torch.nn.functional.linear(h, adapted[i], adapted[i + 1]))
        outer = torch.mean((torch.nn.functional.linear(h, adapted[-2], adapted[-1]) - y_out) ** 2)
        for t, g in zip(total, torch.autograd.grad(outer, params)):
            t += g / batch.tasks
    for a, b in zip(grads, total):
        assert relative_error(a, b) <= 1e-4


# -- meta-training ----------------------------------------------------------------------------


class CountingStream:
    """A training stream that counts the tasks taken and remembers them."""

    def __init__(self, stream):
        self.stream, self.taken = stream, []

    def __iter__(self):
        return self

    def __next__(self):
        task = next(self.stream)
        self.taken.append(task)
        return task


@pytest.mark.parametrize("origin", ["batched", "per-task (no train_batches)", "per-task (task_batches=false)"])
def test_meta_training_lowers_the_meta_loss_and_reports(sampler, origin):
    """With a batched sampler MAML draws its meta-batches itself; otherwise it reads the stream it is given."""
    task_sampler = OneByOneSampler(sampler) if origin == "per-task (no train_batches)" else sampler
    assert isinstance(task_sampler, TaskSampler) and isinstance(task_sampler, BatchedTaskSampler) == (
        task_sampler is sampler
    )
    baseline = make(task_sampler, seed=1, iterations=300, task_batches=origin != "per-task (task_batches=false)")
    held_out = stack_tasks(sampler.validation_tasks(50), 10)
    before = float(baseline.backend.meta_gradient(held_out))
    stream = CountingStream(task_sampler.train_stream(1))
    summary = baseline.meta_train(stream, progress=False)
    after = float(baseline.backend.meta_gradient(held_out))
    if origin == "batched":
        assert summary["task_batches"] == 1.0 and stream.taken == []  # the stream handed in is not read
    else:
        assert summary["task_batches"] == 0.0
        assert len(stream.taken) == 300 * 25 and all(task.split == "train" for task in stream.taken)
    assert summary["iterations"] == 300 and baseline.iterations_done == 300
    assert after < 0.7 * before and summary["final_meta_loss"] < 0.8 * summary["initial_meta_loss"]
    assert summary["seconds"] > summary["task_seconds"] > 0 and summary["iterations_per_s"] > 0


def test_batched_meta_batches_are_the_samplers_batches_with_the_run_seed(sampler):
    baseline = make(sampler, seed=7, meta_batch=5, shots=3)
    drawn = baseline.meta_batches(iter(()))  # the stream is not read: an empty one does
    expected = sampler.train_batches(7, 5)
    for _ in range(3):
        tasks = next(expected)
        got, want = next(drawn), stack_tasks(tasks.tasks(), 3)
        assert all(torch.equal(a, b) and a.is_contiguous() for a, b in zip(got.as_tuple(), want.as_tuple()))
        assert got.x_inner.shape == (5, 3, 1) and torch.equal(got.x_outer[0], tasks.x_train[0, 3:6])
    fallback = make(OneByOneSampler(sampler), seed=7, meta_batch=5, shots=3).meta_batches(sampler.train_stream(7))
    assert torch.equal(next(fallback).x_inner, draw_batch(sampler.train_stream(7), 5, 3).x_inner)


def test_batched_path_refuses_too_few_training_points():
    small = SineTaskSampler(SineConfig(train_points=15))
    with pytest.raises(
        UserError, match="K = 10 needs 20 training points per task .* but a task of this sampler has 15"
    ):
        make(small, iterations=1).meta_train(small.train_stream(0), progress=False)


@pytest.mark.parametrize("task_batches", [True, False], ids=["batched", "per-task"])
def test_meta_training_is_seeded(sampler, task_batches):
    runs = []
    for _ in range(2):
        baseline = make(sampler, seed=5, iterations=20, task_batches=task_batches)
        runs.append((baseline.meta_train(sampler.train_stream(5), progress=False)["final_meta_loss"], baseline))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1].network.parameters(), runs[1][1].network.parameters()))
    other = make(sampler, seed=6)
    assert not torch.equal(next(other.network.parameters()), next(runs[0][1].network.parameters()))


def test_inner_and_outer_points_are_different_training_points(sampler):
    tasks = [next(sampler.train_stream(2)) for _ in range(1)] + [sampler.validation_tasks(1)[0]]
    batch = stack_tasks(tasks, 10)
    assert batch.x_inner.shape == batch.x_outer.shape == (2, 10, 1)
    for i, task in enumerate(tasks):
        assert torch.equal(batch.x_inner[i], task.x_train[:10]) and torch.equal(batch.y_outer[i], task.y_train[10:20])
        assert not torch.equal(batch.x_inner[i], batch.x_outer[i])
    with pytest.raises(UserError, match="K = 60 needs 120 training points per task"):
        stack_tasks(tasks, 60)


def test_divergence_is_reported_not_hidden(sampler):
    baseline = make(sampler, inner_lr=1e4, meta_lr=10.0, iterations=50)
    with pytest.raises(UserError, match="meta-training diverged at iteration"):
        baseline.meta_train(sampler.train_stream(0), progress=False)


# -- the networks handed to the evaluator -----------------------------------------------------


def test_network_for_hands_out_independent_copies(sampler):
    baseline = make(sampler, iterations=5)
    baseline.meta_train(sampler.train_stream(0), progress=False)
    assert isinstance(baseline, Baseline)
    task = sampler.test_tasks(1)[0]
    before = [p.detach().clone() for p in baseline.network.parameters()]
    first, second = baseline.network_for(task, 10), baseline.network_for(task, 5)
    x = torch.linspace(-5, 5, 9).unsqueeze(1)
    assert first(x).shape == (9, 1) and torch.equal(first(x), baseline.network(x)) and torch.equal(first(x), second(x))
    own = {id(p) for p in baseline.network.parameters()}
    assert not own & {id(p) for p in first.parameters()}
    finetune_sgd(first, *task.support(10), sampler.loss, steps=10, lr=0.5)
    assert not torch.equal(first(x), second(x))
    assert all(torch.equal(a, b) for a, b in zip(before, baseline.network.parameters()))
    table = FewShotEvaluator([task], sampler.loss, shots=[10], steps=[0, 1], lr=0.01).few_shot(baseline.network_for)
    assert table[10][1].mse_mean < table[10][0].mse_mean
    assert all(torch.equal(a, b) for a, b in zip(before, baseline.network.parameters()))


def test_network_follows_the_config_and_task_sizes(sampler):
    baseline = make(sampler, hidden=[7, 5, 3], activation="tanh")
    shapes = [tuple(p.shape) for p in baseline.network_for(None, 10).parameters()]
    assert shapes == [(7, 1), (7,), (5, 7), (5,), (3, 5), (3,), (1, 3), (1,)]
    batch = draw_batch(sampler.train_stream(0), 3, 5)
    assert torch.isfinite(baseline.backend.meta_gradient(batch))


# -- configuration and registration ----------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"backend": "jax"},
        {"inner_lr": 0.0},
        {"meta_lr": -1e-3},
        {"inner_steps": 0},
        {"meta_batch": 0},
        {"shots": 0},
        {"iterations": 0},
        {"hidden": []},
        {"hidden": [40, 0]},
        {"activation": "gelu"},
        {"seed": 1},  # the seed is the run's (BuildContext.seed), not a config value
        {"inner_lr_typo": 0.1},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        MAMLConfig(**bad)


def test_config_defaults_are_finn_et_al():
    config = MAMLConfig()
    assert (config.backend, config.hidden, config.activation, config.inner_lr, config.inner_steps) == (
        "torch-func",
        [40, 40],
        "relu",
        0.01,
        1,
    )
    assert (config.first_order, config.meta_lr, config.meta_batch, config.shots) == (False, 0.001, 25, 10)


def test_plugin_registers_maml_with_valid_presets(sampler):
    registry = PluginRegistry()
    registry.register(reml_plugins.maml, name="maml", distribution="reml")
    spec = registry.get("baseline", "maml").spec
    budgets = {preset: spec.config_model(**spec.presets[preset]).iterations for preset in ("smoke", "default", "full")}
    assert budgets == {"smoke": 300, "default": 70_000, "full": 70_000}  # Finn et al.'s budget by default (issue 21)
    baseline = spec.factory(
        spec.config_model(**spec.presets["smoke"]), TaskContext(seed=0, preset="smoke", task_sampler=sampler)
    )
    assert isinstance(baseline, Baseline)


def test_compile_without_a_compiler_warns_and_runs_eagerly(sampler, batch, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.warns(CompileFallbackWarning, match="no C\\+\\+ compiler"):
        baseline = make(sampler, compile=True)
    assert not baseline.backend.compiled
    assert meta_gradient(baseline, batch)[0] == meta_gradient(make(sampler), batch)[0]


@pytest.mark.slow
def test_compiled_meta_gradient_equals_eager(sampler, batch):
    """torch.compile changes the speed, not the computation (slow on a cold compile cache: ~25 s)."""
    compiled = make(sampler, compile=True)
    if not compiled.backend.compiled:
        pytest.skip("no C++ compiler for torch.compile")
    loss, grads = meta_gradient(compiled, batch)
    assert compiled.backend.compiled  # it did not fall back
    eager_loss, eager_grads = meta_gradient(make(sampler), batch)
    assert abs(loss - eager_loss) <= 1e-5 * eager_loss
    assert max(relative_error(a, b) for a, b in zip(grads, eager_grads)) <= 1e-5


def test_missing_learn2learn_says_how_to_install(sampler, monkeypatch):
    monkeypatch.setitem(sys.modules, "learn2learn", None)  # makes `import learn2learn` raise ImportError
    with pytest.raises(UserError, match="needs the optional package learn2learn"):
        make(sampler, backend="learn2learn")


@needs_learn2learn
def test_learn2learn_import_is_quiet():
    code = "from reml_plugins.maml.l2l import import_learn2learn; import_learn2learn()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Gym has been unmaintained" not in result.stderr, result.stderr


# -- checkpoints ------------------------------------------------------------------------------


@pytest.fixture
def trained(sampler) -> MAMLBaseline:
    baseline = make(sampler, seed=1, iterations=10)
    baseline.meta_train(sampler.train_stream(1), progress=False)
    return baseline


def test_save_load_round_trip(trained, sampler, tmp_path):
    trained.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [METADATA, TENSORS]  # no temporary files left
    metadata = json.loads((tmp_path / METADATA).read_text())
    assert metadata["architecture"] == {"sizes": [1, 40, 40, 1], "activation": "relu"} and metadata["iterations"] == 10
    assert metadata["config"]["inner_sgd_lr"] == 0.01
    restored = make(sampler, seed=99)
    restored.load(tmp_path)
    assert restored.iterations_done == 10
    for a, b in zip(trained.network.parameters(), restored.network.parameters()):
        assert torch.equal(a, b)
    task = sampler.test_tasks(1)[0]
    assert torch.equal(trained.network_for(task, 10)(task.x_query), restored.network_for(task, 10)(task.x_query))


def _rewrite_tensors(directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the tensor file and re-sign it in the JSON: a well-formed but wrong checkpoint."""
    data = save_tensors(tensors)
    (directory / TENSORS).write_bytes(data)
    metadata = json.loads((directory / METADATA).read_text())
    metadata["sha256"] = hashlib.sha256(data).hexdigest()
    (directory / METADATA).write_text(json.dumps(metadata))


def _truncate(directory: Path) -> None:
    data = (directory / TENSORS).read_bytes()
    (directory / TENSORS).write_bytes(data[: len(data) // 2])


def _flip_a_byte(directory: Path) -> None:
    data = bytearray((directory / TENSORS).read_bytes())
    data[-5] ^= 0x40
    (directory / TENSORS).write_bytes(bytes(data))


def _wrong_shape(directory: Path) -> None:
    state = dict(MAMLBaseline(MAMLConfig(), BuildContext(seed=0)).network.named_parameters())
    tensors = {name: t.detach().clone() for name, t in state.items()}
    tensors["layers.1.weight"] = tensors["layers.1.weight"][:20].contiguous()
    _rewrite_tensors(directory, tensors)


def _not_finite(directory: Path) -> None:
    state = dict(MAMLBaseline(MAMLConfig(), BuildContext(seed=0)).network.named_parameters())
    tensors = {name: t.detach().clone() for name, t in state.items()}
    tensors["layers.2.bias"][0] = float("nan")
    _rewrite_tensors(directory, tensors)


def _missing_json(directory: Path) -> None:
    (directory / METADATA).unlink()


def _garbled_json(directory: Path) -> None:
    (directory / METADATA).write_text("{not json")


def _bad_iterations(directory: Path) -> None:
    metadata = json.loads((directory / METADATA).read_text())
    metadata["iterations"] = "many"
    (directory / METADATA).write_text(json.dumps(metadata))


@pytest.mark.parametrize(
    ("damage", "file", "problem"),
    [
        (_truncate, TENSORS, "do not match the SHA-256"),
        (_flip_a_byte, TENSORS, "do not match the SHA-256"),
        (_wrong_shape, TENSORS, "tensor layers.1.weight is float32 \\(20, 40\\), expected float32 \\(40, 40\\)"),
        (_not_finite, TENSORS, "tensor layers.2.bias holds non-finite values"),
        (_missing_json, METADATA, "missing"),
        (_garbled_json, METADATA, "not readable JSON"),
        (_bad_iterations, METADATA, "iterations is missing or not a non-negative integer"),
    ],
)
def test_damaged_checkpoints_are_refused_with_one_line(trained, sampler, tmp_path, damage, file, problem):
    trained.save(tmp_path)
    damage(tmp_path)
    restored = make(sampler, seed=99)
    before = [p.detach().clone() for p in restored.network.parameters()]
    with pytest.raises(CheckpointError, match=problem) as caught:
        restored.load(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / file) in message
    assert all(torch.equal(a, b) for a, b in zip(before, restored.network.parameters()))


def test_a_checkpoint_of_another_architecture_is_refused(trained, sampler, tmp_path):
    trained.save(tmp_path)
    with pytest.raises(
        CheckpointError, match="holds a 1-40-40-1 relu network but this baseline is configured for 1-20-1 relu"
    ):
        make(sampler, hidden=[20]).load(tmp_path)


def test_a_family_sets_maml_s_budget_on_its_tasks_under_the_user_s_options():
    """Sine's default MAML is Finn et al.'s 70 000 iterations; an image family keeps 10 000 (each iteration
    costs far more there) through its presets' baselines table; the user's own setting still wins."""
    from reml_core.config import resolve_config
    from reml_core.registry import PluginRegistry as Registry

    registry = Registry.discover()
    sine = resolve_config(registry, {"plugin": "sine"}, baselines=["maml"])
    digits = resolve_config(registry, {"plugin": "digits"}, baselines=["maml"])
    mine = resolve_config(registry, {"plugin": "digits", "baselines": {"maml": {"iterations": 123}}})
    assert sine.baselines["maml"].config.iterations == 70_000
    assert digits.baselines["maml"].config.iterations == 10_000
    assert mine.baselines["maml"].config.iterations == 123
    assert "maml" not in resolve_config(registry, {"plugin": "digits"}).baselines  # a family's budget adds no baseline
