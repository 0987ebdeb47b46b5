"""The meta-sgd baseline (Li et al. 2017): backend equality, its learned rates at evaluation, checkpoints,
config; and the own-rate rows every report keeps apart from the protocol's fixed-rate rows (issue 23)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from reml_core.errors import CheckpointError, UserError
from reml_core.evaluation import OWN_RATE_SUFFIX, FewShotEvaluator
from reml_core.inner_loop import finetune_sgd
from reml_core.interfaces import AdaptsItsOwnWay, Baseline, Describable, OwnAdaptation, TaskContext
from reml_core.registry import PluginRegistry
from reml_core.reports import render_bench_report, render_run_report
from reml_core.results import OWN_RATE_SUFFIX as RESULTS_OWN_RATE_SUFFIX
from reml_core.results import CellResult, ResultsDocument, aggregate_tables
from reml_plugins.maml.baseline import MAMLBaseline
from reml_plugins.maml.batches import MetaBatch, draw_batch, from_task_batch
from reml_plugins.maml.config import MAMLConfig
from reml_plugins.maml.meta_sgd import MetaSGDBaseline, MetaSGDConfig, TorchFuncMetaSGD
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler

BIN = Path(sys.executable).parent
needs_learn2learn = pytest.mark.skipif(
    importlib.util.find_spec("learn2learn") is None, reason="learn2learn (optional) is not installed"
)


@pytest.fixture(scope="module")
def sampler() -> SineTaskSampler:
    return SineTaskSampler(SineConfig())


@pytest.fixture(scope="module")
def batches(sampler) -> dict[str, MetaBatch]:
    return {
        "per-task": draw_batch(sampler.train_stream(0), 25, 10),
        "batched": from_task_batch(next(sampler.train_batches(0, 25)), 10),
    }


def make(sampler: SineTaskSampler, seed: int = 0, **config) -> MetaSGDBaseline:
    return MetaSGDBaseline(MetaSGDConfig(**config), TaskContext(seed=seed, task_sampler=sampler))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def names(baseline: MetaSGDBaseline) -> list[str]:
    return [name for name, _ in baseline.learned.named_parameters()]


# -- the two backends compute the same thing -------------------------------------------------


@pytest.mark.numerics
@needs_learn2learn
@pytest.mark.parametrize("origin", ["per-task", "batched"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_backends_give_the_same_meta_loss_and_meta_gradient_of_weights_and_rates(
    sampler, batches, origin, first_order, inner_steps
):
    batch = batches[origin]
    options = {"first_order": first_order, "inner_steps": inner_steps}
    func = make(sampler, seed=3, backend="torch-func", **options)
    reference = make(sampler, seed=3, backend="learn2learn", **options)
    for a, b in zip(func.learned.parameters(), reference.learned.parameters(), strict=True):
        assert torch.equal(a, b)  # the same initialisation and starting rates
    func_loss = float(func.backend.meta_gradient(batch))
    ref_loss = float(reference.backend.meta_gradient(batch))
    assert abs(func_loss - ref_loss) <= 1e-4 * abs(ref_loss)
    for name, a, b in zip(names(func), func.learned.parameters(), reference.learned.parameters(), strict=True):
        assert relative_error(a.grad, b.grad) <= 1e-4, name
    rate_grads = [p.grad for name, p in func.learned.named_parameters() if name.startswith("rates.")]
    assert len(rate_grads) == 6 and all(float(g.abs().max()) > 0 for g in rate_grads)  # the rates are learned


@pytest.mark.numerics
@needs_learn2learn
def test_backends_meta_train_to_the_same_initialisation_and_rates(sampler):
    """Same seed, same batches, a few Adam steps: the same weights and rates within float rounding."""
    func = make(sampler, seed=5, backend="torch-func", iterations=5, meta_batch=10)
    reference = make(sampler, seed=5, backend="learn2learn", iterations=5, meta_batch=10)
    first = func.meta_train(sampler.train_stream(5), progress=False)
    second = reference.meta_train(sampler.train_stream(5), progress=False)
    assert first["final_meta_loss"] == pytest.approx(second["final_meta_loss"], rel=1e-4)
    for name, a, b in zip(names(func), func.learned.parameters(), reference.learned.parameters(), strict=True):
        assert relative_error(a.detach(), b.detach()) <= 1e-5, name


def test_torch_func_meta_gradient_matches_plain_autograd_on_one_task(sampler, batches):
    """The torch.func loss, written out by hand for one task: ``theta - alpha * grad``, then the outer loss."""
    batch = batches["per-task"]
    one = MetaBatch(*(t[:1] for t in batch.as_tuple()))
    baseline = make(sampler, seed=2)
    baseline.backend.meta_gradient(one)
    expected_grads = [p.grad.clone() for p in baseline.learned.parameters()]
    params = [p.detach().clone().requires_grad_() for p in baseline.network.parameters()]
    rates = [r.detach().clone().requires_grad_() for r in baseline.learned.rates]
    network = baseline.network_for(sampler.test_tasks(1)[0], 10)

    def apply(values, x):
        return torch.func.functional_call(network, dict(zip([n for n, _ in network.named_parameters()], values)), (x,))

    inner = torch.mean((apply(params, one.x_inner[0]) - one.y_inner[0]) ** 2)
    grads = torch.autograd.grad(inner, params, create_graph=True)
    adapted = [p - r * g for p, r, g in zip(params, rates, grads)]
    outer = torch.mean((apply(adapted, one.x_outer[0]) - one.y_outer[0]) ** 2)
    outer.backward()
    for expected, got in zip(expected_grads, [*(p.grad for p in params), *(r.grad for r in rates)], strict=True):
        assert relative_error(expected, got) <= 1e-5


# -- initialisation, config, plugin -----------------------------------------------------------


def test_the_initialisation_is_maml_s_and_the_rates_start_in_the_configured_range(sampler):
    meta_sgd = make(sampler, seed=7)
    maml = MAMLBaseline(MAMLConfig(), TaskContext(seed=7, task_sampler=sampler))
    for a, b in zip(meta_sgd.network.parameters(), maml.network.parameters(), strict=True):
        assert torch.equal(a, b)
    rates = torch.cat([r.detach().reshape(-1) for r in meta_sgd.learned.rates])
    assert rates.numel() == sum(p.numel() for p in meta_sgd.network.parameters())
    assert float(rates.min()) >= 0.005 and float(rates.max()) <= 0.1 and float(rates.std()) > 0.01
    again = make(sampler, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(meta_sgd.learned.rates, again.learned.rates))  # seeded
    other = make(sampler, seed=8)
    assert not torch.equal(meta_sgd.learned.rates[0], other.learned.rates[0])
    constant = make(sampler, seed=7, inner_sgd_lr_low=0.01, inner_sgd_lr_high=0.01)
    assert all(bool((r == 0.01).all()) for r in constant.learned.rates)


@pytest.mark.parametrize(
    "bad",
    [
        {"inner_sgd_lr_low": 0.2, "inner_sgd_lr_high": 0.1},
        {"inner_sgd_lr_low": 0},
        {"inner_sgd_lr_high": -1.0},
        {"inner_sgd_lr_high": math.inf},
        {"inner_sgd_lr": 0.01},
        {"backend": "jax"},
        {"iterations": 0},
        {"hidden": []},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        MetaSGDConfig(**bad)


def test_a_bad_range_from_the_command_line_is_one_line(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [
            str(BIN / "reml-run"),
            "--plugin",
            "sine",
            "--preset",
            "smoke",
            "--baselines",
            "meta-sgd",
            "--set",
            "baselines.meta-sgd.inner_sgd_lr_low=0.5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "inner_sgd_lr_low (0.5) is above inner_sgd_lr_high (0.1)" in lines[0], result.stderr
    assert "meta-sgd" in lines[0] and not out.exists()


def test_plugin_registers_meta_sgd_with_maml_s_budgets(sampler):
    registry = PluginRegistry.discover()
    spec = registry.get("baseline", "meta-sgd").spec
    assert spec.label == "Meta-SGD" and spec.compare_in == ()
    assert (
        spec.presets == registry.get("baseline", "maml").spec.presets
    )  # MAML's budgets: the two compare at equal cost
    configs = {preset: spec.config_model(**spec.presets[preset]) for preset in ("smoke", "default", "full")}
    assert (configs["smoke"].iterations, configs["default"].iterations, configs["default"].compile) == (
        300,
        70_000,
        True,
    )
    config = configs["default"]
    assert (config.inner_steps, config.shots, config.meta_batch, config.meta_adam_lr) == (1, 10, 25, 0.001)
    baseline = spec.factory(configs["smoke"], TaskContext(seed=0, preset="smoke", task_sampler=sampler))
    assert (
        isinstance(baseline, Baseline) and isinstance(baseline, Describable) and isinstance(baseline, AdaptsItsOwnWay)
    )
    text = baseline.describe()
    assert (
        text.startswith("Meta-SGD:")
        and "uniform in [0.005, 0.1]" in text
        and "iterations=300" in text
        and "MLP 1-40-40-1" in text
    )


def test_divergence_names_meta_sgd_s_settings(sampler):
    baseline = make(sampler, iterations=3, inner_sgd_lr_low=9.0, inner_sgd_lr_high=10.0, meta_adam_lr=50.0)
    with pytest.raises(
        UserError, match="meta-sgd: meta-training diverged at iteration .* baselines.meta-sgd.meta_adam_lr"
    ):
        baseline.meta_train(sampler.train_stream(0), progress=False)


# -- the learned rates at evaluation ----------------------------------------------------------


@pytest.fixture(scope="module")
def trained(sampler) -> MetaSGDBaseline:
    baseline = make(sampler, seed=1, iterations=15)
    summary = baseline.meta_train(sampler.train_stream(1), progress=False)
    assert summary["iterations"] == 15 and summary["rate_min"] <= summary["rate_mean"] <= summary["rate_max"]
    return baseline


def test_own_rate_rows_use_the_learned_rates_and_fixed_rows_the_protocol_s(trained, sampler):
    tasks = sampler.test_tasks(4)
    evaluator = FewShotEvaluator(tasks, sampler.loss, shots=[5], steps=[0, 1, 10], lr=0.01)
    network, adaptation = trained.adapted_network_for(tasks[0], 5)
    assert isinstance(adaptation, OwnAdaptation) and adaptation.steps is None  # every step count of the protocol
    for rate, learned in zip(adaptation.lr, trained.learned.rates, strict=True):
        assert (
            torch.equal(rate, learned.detach()) and rate.data_ptr() != learned.data_ptr()
        )  # a copy of the learned rates
    for a, b in zip(network.parameters(), trained.network.parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()

    own = evaluator.few_shot(trained.adapted_network_for, own=True)
    fixed = evaluator.few_shot(trained.network_for)
    assert own[5][0].mse_mean == fixed[5][0].mse_mean  # the same initialisation
    assert own[5][1].mse_mean != fixed[5][1].mse_mean
    # the own-rate cell is SGD at the learned rates, by hand
    losses = []
    for task in tasks:
        net = trained.network_for(task, 5)
        x, y = task.support(5)
        assert finetune_sgd(net, x, y, sampler.loss, steps=1, lr=trained.rates())
        with torch.no_grad():
            losses.append(float(sampler.loss(net(task.x_query), task.y_query)))
    assert own[5][1].mse_mean == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    # rates all at the protocol's 0.01: the own-rate rows are the fixed-rate rows
    saved = trained.rates()
    with torch.no_grad():
        for rate in trained.learned.rates:
            rate.fill_(0.01)
    try:
        same = evaluator.few_shot(trained.adapted_network_for, own=True)
    finally:
        with torch.no_grad():
            for rate, value in zip(trained.learned.rates, saved):
                rate.copy_(value)
    assert {s: c.mse_mean for s, c in same[5].items()} == pytest.approx(
        {s: c.mse_mean for s, c in fixed[5].items()}, rel=1e-6
    )


# -- checkpoints ------------------------------------------------------------------------------


def test_save_load_round_trip_is_exact(trained, sampler, tmp_path):
    trained.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maml.json", "maml.safetensors"]
    metadata = json.loads((tmp_path / "maml.json").read_text())
    assert metadata["iterations"] == 15 and metadata["config"]["inner_sgd_lr_high"] == 0.1
    assert metadata["architecture"]["module"].endswith("MetaSGDParameters")
    restored = make(sampler, seed=99)
    restored.load(tmp_path)
    assert restored.iterations_done == 15
    for a, b in zip(trained.learned.state_dict().values(), restored.learned.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    task = sampler.test_tasks(1)[0]
    (mine, own), (theirs, their_own) = trained.adapted_network_for(task, 5), restored.adapted_network_for(task, 5)
    assert torch.equal(mine(task.x_query), theirs(task.x_query))
    assert all(torch.equal(a, b) for a, b in zip(own.lr, their_own.lr, strict=True))


def test_maml_and_meta_sgd_refuse_each_other_s_checkpoints(trained, sampler, tmp_path):
    maml = MAMLBaseline(MAMLConfig(iterations=1), TaskContext(seed=0, task_sampler=sampler))
    maml.save(tmp_path / "maml")
    trained.save(tmp_path / "meta-sgd")
    with pytest.raises(CheckpointError, match="MetaSGDParameters"):
        make(sampler).load(tmp_path / "maml")
    with pytest.raises(CheckpointError, match="MetaSGDParameters"):
        maml.load(tmp_path / "meta-sgd")
    with pytest.raises(CheckpointError, match="tensor network.layers.0.weight"):
        make(sampler, hidden=[20, 20]).load(tmp_path / "meta-sgd")
    with pytest.raises(CheckpointError, match="holds a relu network but this baseline is configured for tanh"):
        make(sampler, activation="tanh").load(tmp_path / "meta-sgd")


def test_torch_func_backend_reuses_maml_s_compile_switch(sampler):
    baseline = make(sampler)
    assert isinstance(baseline.backend, TorchFuncMetaSGD) and not baseline.backend.compiled


# -- own-rate rows in results, reports and plots ------------------------------------------------


def test_the_results_suffix_is_the_evaluators():
    assert RESULTS_OWN_RATE_SUFFIX == OWN_RATE_SUFFIX == "@own-rate"


def _table(values: dict[int, float], shots=(5, 10)) -> dict[int, dict[int, CellResult]]:
    return {k: {s: CellResult(v, 0.1) for s, v in values.items()} for k in shots}


def _document(**changes) -> ResultsDocument:
    tables = {
        "reml": _table({0: 3.0, 1: 2.0, 10: 1.0}),
        "meta-sgd": _table({0: 3.0, 1: 1.5, 10: 0.5}),
        "meta-sgd" + OWN_RATE_SUFFIX: _table({0: 3.0, 1: 0.4, 10: 0.2}),
        "scratch": _table({0: 4.0, 1: 3.5, 10: 2.5}),
    }
    base = dict(
        kind="run",
        plugin="sine",
        policy="ppo-mlp",
        encoder="support-set",
        encoder_privileged=False,
        seed=0,
        test_tasks=5,
        tables=tables,
        curves={"reml": [1.0], "meta-sgd": [1.0], "scratch": [2.0]},
        timing={},
        config={
            "eval": {"sgd_lr": 0.01, "curve_steps": 0, "curve_tasks": 1, "curve_adam_lr": 0.005, "steps": [0, 1, 10]},
            "preset": "smoke",
            "reward": {"name": "neg-mse"},
            "pool": {"name": "dense"},
        },
        labels={"meta-sgd": "Meta-SGD", "scratch": "scratch", "meta-sgd" + OWN_RATE_SUFFIX: "learned rates"},
    )
    return ResultsDocument(**{**base, **changes})


def test_reports_label_own_rate_rows_apart_and_never_rank_them():
    document = _document()
    labels = document.method_labels()
    assert (
        labels["meta-sgd"] == "Meta-SGD (protocol rate 0.01)"
        and labels["meta-sgd@own-rate"] == "Meta-SGD (learned rates)"
    )
    assert labels["scratch"] == "scratch" and labels["reml"] == "REML (support-set)"  # no twin: no suffix
    report = render_run_report(document)
    assert "| Meta-SGD (protocol rate 0.01) | **3.000 ± 0.100** | **1.500 ± 0.100** | **0.500 ± 0.100** |" in report
    assert (
        "| Meta-SGD (learned rates) | 3.000 ± 0.100 | 0.400 ± 0.100 | 0.200 ± 0.100 |" in report
    )  # lower, but not bold
    assert "Own-rate rows (Meta-SGD (learned rates)) adapt at the method's own rate" in report
    assert "not the protocol's fixed-rate comparison" in report
    again = ResultsDocument.from_json(json.loads(json.dumps(document.to_json())))
    assert again.method_labels() == labels
    assert "own rate" not in render_run_report(
        _document(tables={k: v for k, v in document.tables.items() if "@" not in k})
    )


def test_the_terminal_summary_never_ranks_own_rate_rows_either(tmp_path, capsys):
    from reml_core.cli.common import print_summary

    print_summary(_document(), tmp_path)
    printed = capsys.readouterr().out
    assert "| Meta-SGD (learned rates) | 3.000 ± 0.100 | 0.400 ± 0.100 | 0.200 ± 0.100 |" in printed
    assert "| Meta-SGD (protocol rate 0.01) | **3.000 ± 0.100** | **1.500 ± 0.100** | **0.500 ± 0.100** |" in printed


def test_bench_report_and_aggregation_of_own_rate_rows_with_chosen_steps():
    chosen = {"reml": _table({0: 3.0, 10: 1.0}), "reml" + OWN_RATE_SUFFIX: _table({0: 3.0, 1: 2.0})}
    other = {"reml": _table({0: 2.0, 10: 2.0}), "reml" + OWN_RATE_SUFFIX: _table({0: 2.0, 10: 0.5})}
    merged = {key: aggregate_tables([chosen[key], other[key]]) for key in chosen}
    assert sorted(merged["reml@own-rate"][5]) == [
        0
    ]  # a step column one seed did not fill is left out, not half-averaged
    assert merged["reml@own-rate"][5][0].mean == 2.5
    document = _document(
        kind="bench",
        tables=merged,
        curves={"reml": [1.0]},
        labels={},
        seeds=[0, 1],
        budgets={"reml": "512 env steps"},
        sources={0: {"reml": "trained"}},
    )
    report = render_bench_report(document)
    assert (
        "| REML (support-set, own rate) |" not in report
        and "| REML (support-set) (own rate) | 2.500 ± 0.100 (seeds ±0.707) | - |" in report
    )
    assert "| REML (support-set) (protocol rate 0.01) |" in report
    assert (
        report.count("| REML (support-set) (protocol rate 0.01) | 512 env steps |") == 1
    )  # one budget row per trained method


def test_plots_draw_own_rate_rows_and_rows_with_missing_step_counts(tmp_path):
    from reml_core.plots import plot_few_shot

    document = _document()
    tables = dict(document.tables)
    tables["reml" + OWN_RATE_SUFFIX] = _table({0: 3.0, 10: 0.9})  # chose 10 steps on every task
    plot_few_shot(tables, tmp_path / "few_shot.png", "t", _document(tables=tables).method_labels())
    assert (tmp_path / "few_shot.png").stat().st_size > 1000


def test_evaluate_methods_adds_own_rate_rows_for_any_method_with_the_capability():
    from reml_core.config import resolve_config
    from reml_core.experiment import build_components
    from reml_core.pipeline import evaluate_methods, own_rate_labels

    config = resolve_config(
        PluginRegistry.discover(),
        {"plugin": "sine", "preset": "smoke", "eval": {"test_tasks": 3, "curve_steps": 2, "curve_tasks": 1}},
        baselines=[],
    )
    components = build_components(config)

    class Fixed:
        def network_for(self, task, shots):
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    class Chooser(Fixed):  # not Meta-SGD: any method that adapts its own way
        own_rate_words = "chosen rate"

        def adapted_network_for(self, task, shots):
            return self.network_for(task, shots), OwnAdaptation(lr=0.05, steps=1)

    methods = {"fixed": Fixed(), "chooser": Chooser(), "bare": Fixed().network_for}
    tables, curves, seconds = evaluate_methods(config, components, methods)
    assert list(tables) == ["fixed", "chooser", "chooser@own-rate", "bare"]
    assert set(curves) == {"fixed", "chooser", "bare"} and "evaluation_chooser@own-rate" in seconds
    assert sorted(tables["chooser@own-rate"][5]) == [0, 1]  # chose 1 step: that column and 0 only
    assert tables["chooser@own-rate"][5][0].mse_mean == tables["chooser"][5][0].mse_mean
    assert tables["chooser@own-rate"][5][1].mse_mean != tables["chooser"][5][1].mse_mean
    assert own_rate_labels(methods) == {"chooser@own-rate": "chosen rate"}


# -- end to end -------------------------------------------------------------------------------

TINY = [
    "--set",
    "train.env_steps=256",
    "--set",
    "train.checkpoint_every=256",
    "--set",
    "train.validation_tasks=3",
    "--set",
    "train.calibration_episodes=5",
    "--set",
    "eval.test_tasks=5",
    "--set",
    "eval.curve_steps=2",
    "--set",
    "eval.curve_tasks=1",
    "--set",
    "policy.n_steps=128",
    "--set",
    "policy.batch_size=64",
    "--set",
    "train.progress=false",
    "--set",
    "baselines.meta-sgd.iterations=10",
]


@pytest.mark.slow
def test_reml_run_reports_meta_sgd_at_both_rates(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [
            str(BIN / "reml-run"),
            "--plugin",
            "sine",
            "--preset",
            "smoke",
            "--baselines",
            "meta-sgd",
            "--out",
            str(out),
            *TINY,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["reml", "meta-sgd", "meta-sgd@own-rate"]
    assert results["labels"]["meta-sgd@own-rate"] == "learned rates" and "meta-sgd@own-rate" not in results["curves"]
    for key in ("meta-sgd", "meta-sgd@own-rate"):
        assert sorted(results["methods"][key]["5"], key=int) == ["0", "1", "10"]
    assert results["methods"]["meta-sgd"]["5"]["0"] == results["methods"]["meta-sgd@own-rate"]["5"]["0"]
    report = (out / "report.md").read_text()
    assert "| Meta-SGD (protocol rate 0.01) |" in report and "| Meta-SGD (learned rates) |" in report
    assert "not the protocol's fixed-rate comparison" in report and (out / "few_shot.png").is_file()


@pytest.mark.slow
def test_reml_bench_compares_reml_maml_meta_sgd_and_scratch_and_reloads_them(tmp_path):
    out = tmp_path / "bench"
    common = [
        "--plugin",
        "sine",
        "--preset",
        "smoke",
        "--methods",
        "reml,maml,meta-sgd,scratch",
        "--seeds",
        "2",
        *TINY,
        "--set",
        "baselines.maml.iterations=10",
    ]
    result = subprocess.run(
        [str(BIN / "reml-bench"), *common, "--out", str(out)], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["reml", "maml", "meta-sgd", "meta-sgd@own-rate", "scratch"]
    assert (
        set(results["budgets"]) == {"reml", "maml", "meta-sgd", "scratch"}
        and "rates start uniform in [0.005, 0.1]" in results["budgets"]["meta-sgd"]
    )
    assert "training_meta-sgd" in results["timing_s"] and "evaluation_meta-sgd@own-rate" in results["timing_s"]
    cell = results["methods"]["meta-sgd@own-rate"]["10"]["1"]
    per_seed = [results["seeds"][s]["methods"]["meta-sgd@own-rate"]["10"]["1"]["mse_mean"] for s in ("0", "1")]
    assert cell["mse_mean"] == pytest.approx(sum(per_seed) / 2) and cell["seed_spread"] is not None
    seed = json.loads((out / "seed-0" / "results.json").read_text())
    assert seed["labels"]["meta-sgd@own-rate"] == "learned rates" and "meta-sgd@own-rate" in seed["methods"]
    report = (out / "report.md").read_text()
    assert (
        "| Meta-SGD (protocol rate 0.01) |" in report
        and "| Meta-SGD (learned rates) |" in report
        and "| MAML |" in report
    )
    assert "not the protocol's fixed-rate comparison" in report
    again = subprocess.run(
        [str(BIN / "reml-bench"), *common, "--from", str(out), "--out", str(tmp_path / "again")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    reloaded = json.loads((tmp_path / "again" / "results.json").read_text())
    assert (
        reloaded["methods"]["meta-sgd@own-rate"] == results["methods"]["meta-sgd@own-rate"]
    )  # the learned rates were saved


@pytest.mark.numerics
@needs_learn2learn
def test_on_an_image_family_both_backends_learn_the_pool_network_s_weights_and_rates_alike():
    from reml_core.config import resolve_config
    from reml_core.experiment import build_components

    config = resolve_config(PluginRegistry.discover(), {"plugin": "digits", "preset": "smoke"}, baselines=["meta-sgd"])
    components = build_components(config)
    chosen = config.baselines["meta-sgd"]
    learned = {}
    for backend in ("torch-func", "learn2learn"):
        baseline = chosen.spec.factory(
            chosen.config.model_copy(update={"backend": backend, "iterations": 2, "meta_batch": 3}), components.context
        )
        assert baseline.images and baseline.shots == 5  # K per class, the largest digits holds
        baseline.meta_train(components.task_sampler.train_stream(0), progress=False)
        learned[backend] = [p.detach().clone() for p in baseline.learned.parameters()]
        network, adaptation = baseline.adapted_network_for(components.task_sampler.test_tasks(1)[0], 5)
        assert [r.shape for r in adaptation.lr] == [p.shape for p in network.parameters()]
    for a, b in zip(learned["torch-func"], learned["learn2learn"], strict=True):
        assert relative_error(a, b) <= 1e-5
