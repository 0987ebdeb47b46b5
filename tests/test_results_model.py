"""The typed results: one writer and one reader of results.json, aggregation over seeds, damaged files."""

from __future__ import annotations

import json
import math

import pytest

import reml_core
from reml_core.errors import UserError
from reml_core.evaluation import Cell
from reml_core.reports import render_bench_report, render_run_report
from reml_core.results import (
    CellResult,
    EncoderInfo,
    ResultsDocument,
    SelectedCheckpoint,
    TrainingRecord,
    aggregate_cells,
    aggregate_curves,
    aggregate_tables,
    read_results,
    table_of,
)

CONFIG = {
    "plugin": "digits",
    "preset": "smoke",
    "seed": 3,
    "reward": {"name": "neg-mse"},
    "pool": {"name": "conv"},
    "eval": {"sgd_lr": 0.01, "curve_steps": 2, "curve_lr": 0.005, "curve_tasks": 2, "steps": [0, 10]},
}


def _cell(mean, ci=0.1, accuracy=None, nan_tasks=0):
    metrics = {} if accuracy is None else {"accuracy": (accuracy, 0.02)}
    return CellResult(mean, ci, None, nan_tasks, metrics)


def _document(kind: str) -> ResultsDocument:
    tables = {
        "reml:prototypes": {1: {0: _cell(1.5, accuracy=0.4), 10: _cell(None, None, 0.5, nan_tasks=2)}},
        "maml": {1: {0: _cell(1.2, accuracy=0.45), 10: _cell(0.9, accuracy=0.6)}},
    }
    bench = kind == "bench"
    if bench:
        tables = {
            key: {
                k: {
                    s: CellResult(
                        c.mean,
                        c.ci95,
                        0.01 if c.mean is not None else None,
                        c.nan_tasks,
                        c.metrics,
                        {name: 0.002 for name in c.metrics},
                    )
                    for s, c in row.items()
                }
                for k, row in table.items()
            }
            for key, table in tables.items()
        }
    return ResultsDocument(
        kind=kind,
        plugin="digits",
        policy="ppo-mlp",
        encoder="prototypes",
        encoder_privileged=False,
        seed=3,
        test_tasks=7,
        tables=tables,
        curves={"reml:prototypes": [2.0, None, 1.0], "maml": [1.5, 1.2, 1.1]},
        timing={"training_maml": 1.25, "choosing_maml": 0.4, "total_this_invocation": 3.5},
        config=dict(CONFIG),
        versions={"python": "3.11"},
        command="reml-bench --plugin digits",
        loss_name="cross-entropy",
        labels={"maml": "MAML"},
        components={"pool": "conv blocks"},
        training={"reml:prototypes": TrainingRecord(10)}
        if kind != "run"
        else {
            "reml": TrainingRecord(
                10,
                1,
                SelectedCheckpoint("step-10", 10, 0.5),
                [{"timesteps": 10, "validation/score": 0.5}],
                {"entropy": 0.7},
            )
        },
        encoders={"reml:prototypes": EncoderInfo("prototypes", False)} if kind != "run" else {},
        budgets={"maml": "iterations=5", "reml:prototypes": "10 env steps"} if kind != "run" else {},
        sources=(
            {3: {"maml": "trained in seed-3/maml"}}
            if kind == "seed"
            else {3: {"maml": "trained"}, 4: {"maml": "trained"}}
            if bench
            else {}
        ),
        seeds=[3, 4] if bench else [],
        per_seed={3: {"maml": {1: {0: _cell(1.1)}}}, 4: {"maml": {1: {0: _cell(1.3)}}}} if bench else {},
        preset="smoke" if bench else None,
        executor="local" if bench else None,
    )


@pytest.mark.parametrize("kind", ["run", "seed", "bench"])
def test_every_kind_of_results_file_reads_back_as_it_was_written(kind, tmp_path):
    document = _document(kind)
    written = json.loads(json.dumps(document.to_json()))  # through JSON text, as on disk
    again = ResultsDocument.from_json(written)
    assert again.kind == kind
    assert again.to_json() == written
    assert (again.tables, again.curves, again.encoders, again.sources, again.per_seed, again.training) == (
        document.tables,
        document.curves,
        document.encoders,
        document.sources,
        document.per_seed,
        document.training,
    )
    (tmp_path / "results.json").write_text(json.dumps(written))
    loaded = reml_core.load(tmp_path)
    assert loaded.document == again and loaded.cell("maml", 1, 10) == document.tables["maml"][1][10]


def test_the_layout_is_the_schema_s():
    run = _document("run").to_json()
    assert run["schema"] == "reml.results/2" and run["training"]["selected_checkpoint"]["name"] == "step-10"
    assert run["methods"]["maml"]["1"]["10"] == {
        "mse_mean": 0.9,
        "mse_ci95": 0.1,
        "nan_tasks": 0,
        "accuracy_mean": 0.6,
        "accuracy_ci95": 0.02,
    }
    assert run["methods"]["reml:prototypes"]["1"]["10"]["mse_mean"] is None  # a diverged cell is null, never dropped
    bench = _document("bench").to_json()
    cell = bench["methods"]["maml"]["1"]["0"]
    assert cell["seed_spread"] == 0.01 and cell["accuracy_seed_spread"] == 0.002
    assert bench["seed_list"] == [3, 4] and set(bench["seeds"]) == {"3", "4"} and set(bench["sources"]) == {"3", "4"}
    assert "seed_spread" not in bench["seeds"]["3"]["methods"]["maml"]["1"]["0"]  # per-seed cells have no spread
    seed = _document("seed").to_json()
    assert seed["sources"] == {"maml": "trained in seed-3/maml"} and "seed_list" not in seed


def test_the_evaluator_s_cells_are_recorded_with_nan_as_none():
    cell = Cell(float("nan"), float("nan"), 1, 4, {"accuracy": (0.5, float("nan"))})
    recorded = table_of({5: {0: cell}})[5][0]
    assert recorded == CellResult(None, None, None, 1, {"accuracy": (0.5, None)})


def test_cells_over_seeds_are_the_mean_of_means_with_the_spread_between_them():
    cells = [
        CellResult(1.0, 0.2, None, 0, {"accuracy": (0.5, 0.1)}),
        CellResult(3.0, 0.4, None, 0, {"accuracy": (0.7, 0.3)}),
    ]
    merged = aggregate_cells(cells)
    assert (
        merged.mean == 2.0 and merged.ci95 == pytest.approx(0.3) and merged.seed_spread == pytest.approx(math.sqrt(2))
    )
    assert merged.metrics["accuracy"] == pytest.approx((0.6, 0.2)) and merged.metric_spreads[
        "accuracy"
    ] == pytest.approx(math.sqrt(0.02))
    one = aggregate_cells(cells[:1])
    assert one.mean == 1.0 and one.seed_spread is None  # one seed: no spread to speak of
    diverged = aggregate_cells([cells[0], CellResult(None, None, None, 3, {"accuracy": (None, None)})])
    assert (diverged.mean, diverged.ci95, diverged.seed_spread, diverged.nan_tasks) == (None, None, None, 3)
    tables = aggregate_tables([{5: {0: cells[0]}}, {5: {0: cells[1]}}])
    assert tables[5][0] == merged
    assert aggregate_curves([[1.0, 2.0], [3.0, None], []]) == [2.0, None]
    assert aggregate_curves([[], []]) == []


def test_reports_render_from_the_typed_document_without_placeholders():
    run = render_run_report(_document("run"))
    assert "checkpoint `step-10`" in run and "REML (prototypes)" not in run  # a run's REML is keyed "reml"
    assert "?" not in run and "| 10 | 0.500 |" in run and "entropy 0.7" in run
    bench = render_bench_report(_document("bench"))
    assert "REML (prototypes)" in bench and "MAML" in bench and "seeds 3, 4" in bench
    assert "NaN (2 tasks diverged)" in bench and "(seeds ±0.010)" in bench and "query accuracy" in bench
    assert "| MAML | iterations=5 | 1.2 | 0.4 | trained |" in bench  # training, then choosing the test networks
    assert "| REML (prototypes) | 10 env steps | - | - |" in bench  # no seconds recorded: dashes


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("methods"),
        lambda d: d.pop("config"),
        lambda d: d["methods"]["maml"]["1"]["0"].update(mse_mean="fast"),
        lambda d: d["methods"].update(maml=[1, 2]),
        lambda d: d["encoders"]["reml:prototypes"].pop("privileged"),
        lambda d: d.update(seed="zero"),
        lambda d: d.update(seeds={"3": {}}),
    ],
)
def test_a_damaged_results_file_is_one_error_naming_it(damage, tmp_path):
    data = _document("bench").to_json()
    damage(data)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=f"{path} is not a REML results file"):
        read_results(path)
    with pytest.raises(UserError):
        reml_core.load(tmp_path)


def test_a_results_1_file_still_reads_with_its_labels():
    data = _document("run").to_json()
    data["schema"] = "reml.results/1"
    del data["labels"], data["components"]
    data["training"]["invalid_argmax_rate"] = data["training"].pop("policy_stats")["entropy"]
    old = ResultsDocument.from_json(data)
    assert old.labels is None and old.method_labels()["maml"] == "MAML"
    assert old.reml_training.policy_stats == {"invalid_argmax_rate": 0.7}
