"""No cell is just "NaN" (issue 21, item 3): a cell with diverged tasks reports the mean over the others,
how many diverged, and never wins its column, in the evaluator, results.json, the reports and the plots."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reml_core.evaluation import Cell
from reml_core.reports import few_shot_tables
from reml_core.results import CellResult, ResultsDocument, aggregate_cells, table_of


def test_a_cell_averages_the_tasks_that_did_not_diverge_and_counts_the_others():
    cell = Cell.from_losses([1.0, 2.0, math.nan, 3.0, math.inf], {"accuracy": [0.5, 0.7, 0.0, 0.9, 0.0]})
    assert (cell.mse_mean, cell.nan_tasks, cell.tasks) == (2.0, 2, 5)
    assert cell.mse_ci95 == pytest.approx(1.96 * np.std([1, 2, 3], ddof=1) / math.sqrt(3))
    assert cell.metrics["accuracy"][0] == pytest.approx(0.7)  # over the same three tasks
    every = Cell.from_losses([math.nan, math.nan])
    assert math.isnan(every.mse_mean) and every.nan_tasks == 2


def _tables(diverged_mean: float, nan_tasks: int) -> dict:
    steady = {5: {10: CellResult(0.5, 0.05, None, 0)}}
    shaky = {5: {10: CellResult(diverged_mean, 0.04, None, nan_tasks)}}
    return {"maml": shaky, "reml": steady}


def test_a_method_with_diverged_tasks_never_wins_its_column_but_its_mean_and_count_are_shown():
    markdown = few_shot_tables(_tables(0.3, 2))
    row = {
        line.split("|")[1].strip(): line
        for line in markdown.splitlines()
        if line.startswith("| ") and "step" not in line
    }
    assert "0.300 ± 0.040 (2 diverged)" in row["maml"] and "**" not in row["maml"]
    assert "**0.500 ± 0.050**" in row["REML"]
    # without divergence the lower mean wins as always
    assert "**0.300 ± 0.040**" in few_shot_tables(_tables(0.3, 0))


def test_results_json_keeps_the_mean_over_the_others_and_the_count():
    document = ResultsDocument(
        kind="run",
        plugin="sine",
        policy="ppo-mlp",
        encoder="support-set",
        encoder_privileged=False,
        seed=0,
        test_tasks=600,
        tables=_tables(0.3, 2),
        curves={},
        timing={},
        config={},
    )
    again = ResultsDocument.from_json(document.to_json())
    cell = again.tables["maml"][5][10]
    assert (cell.mean, cell.nan_tasks) == (0.3, 2)
    assert document.to_json()["methods"]["maml"]["5"]["10"]["nan_tasks"] == 2


def test_seeds_aggregate_the_means_over_the_others_and_add_the_counts():
    cells = [CellResult(0.3, 0.04, None, 2), CellResult(0.5, 0.06, None, 0)]
    total = aggregate_cells(cells)
    assert total.mean == pytest.approx(0.4) and total.nan_tasks == 2


def test_the_evaluator_s_table_keeps_the_count(tmp_path):
    table = table_of({5: {10: Cell.from_losses([1.0, math.nan, 3.0])}})
    assert (table[5][10].mean, table[5][10].nan_tasks) == (2.0, 1)


def test_the_plot_marks_a_mean_over_the_others(tmp_path):
    from reml_core.plots import plot_few_shot

    path = tmp_path / "few_shot.png"
    plot_few_shot(_tables(0.3, 2), path, "title")
    assert path.stat().st_size > 0


def test_a_convergence_plot_with_nothing_finite_says_so_instead_of_warning(tmp_path):
    """Every method's curve diverged (or none was measured): the figure is still written, without
    matplotlib's 'no artists with labels' warning on the run's stderr."""
    import warnings

    from reml_core.plots import plot_convergence

    path = tmp_path / "convergence.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_convergence({"reml": [None, None], "scratch": []}, path, "title")
    assert path.stat().st_size > 0


def test_a_method_that_blew_up_is_marked_off_scale_and_the_others_stay_readable():
    """One method's mean at 1e32 (finite: not counted as diverged) must not flatten every other line to 0."""
    from reml_core.plots import few_shot_figure

    steps = {0: 3.0, 1: 0.6, 10: 0.3}
    tables = {
        f"method-{i}": {5: {s: CellResult(v * (1 + i / 10), 0.05, None, 0) for s, v in steps.items()}} for i in range(6)
    }
    tables["blown"] = {
        5: {0: CellResult(3.0, 0.1, None, 0), 1: CellResult(0.4, 0.1, None, 0), 10: CellResult(1e32, 1e32, None, 0)}
    }
    figure = few_shot_figure(tables, "title")
    axis = figure.axes[0]
    low, high = axis.get_ylim()
    assert axis.get_yscale() == "log" and high <= 1000 and low < 0.3  # every ordinary mean is inside the axis
    notes = [text.get_text() for text in axis.texts]
    assert notes == ["off scale: 1e+32"]
    figure.canvas.draw()
    box, legend = figure.bbox, figure.legends[0].get_window_extent()
    assert box.x0 <= legend.x0 and legend.x1 <= box.x1  # seven methods: the legend wraps inside the figure
    assert all(not legend.overlaps(a.get_window_extent()) for a in figure.axes)
