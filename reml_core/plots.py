"""Every figure REML draws: a run's few-shot error against fine-tuning steps and its convergence curve,
and a sweep's scores per configuration."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reml_core.reports import LOSS, measure_label, table_measures
from reml_core.reports import describe_values as describe
from reml_core.results import METHOD_LABELS, OWN_RATE_SUFFIX, Table
from reml_core.storage import atomic_write_with


def _config_dir_writable() -> bool:
    """Whether matplotlib's usual config/cache folder can be created and written."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    folder = Path(base) / "matplotlib"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        return True
    except OSError:
        return False


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, imported on first use.

    Imported lazily, so a command that fails early never loads it; and pointed at a private
    folder when HOME is not writable, instead of warning about it on every command.
    """
    if "MPLCONFIGDIR" not in os.environ and not _config_dir_writable():
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="reml-matplotlib-")
    import matplotlib  # noqa: PLC0415 - lazy: start-up time: matplotlib, for plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - lazy: start-up time: matplotlib, for plots only

    return plt


def plot_few_shot(
    methods: Mapping[str, Table],
    path: Path,
    title: str,
    labels: Mapping[str, str] | None = None,
    loss_name: str = "MSE",
) -> None:
    """Query loss against SGD steps, one panel per K, one line per method, 95% CI error bars; a
    second row of panels per family metric (e.g. accuracy) when the cells hold one.

    Results averaged over several seeds (cells with a seed spread) also get a shaded band of
    +- the standard deviation between the seeds' means, so both kinds of uncertainty are visible.
    Rows adapted at a method's own rate (keys ending in ``OWN_RATE_SUFFIX``) are dashed, so they
    are not read as the protocol's fixed-rate lines; a row without some step count (a method that
    chose its steps) is drawn at the step counts it has, each at its own place on the axis.
    A loss panel whose means span more than a factor :data:`LOG_SPAN` is drawn on a log scale, and
    one whose largest mean exceeds :data:`OFF_SCALE` times its median is cut there: a mean above
    the cut (a method that blew up) is drawn as a triangle at the top edge, labelled with its value,
    so the other methods stay readable.
    """
    _save(few_shot_figure(methods, title, labels, loss_name), path)


#: A loss panel whose means span more than this factor is drawn on a log scale.
LOG_SPAN = 10.0
#: A loss panel's y axis ends at this many times the median of its means when a mean lies beyond.
OFF_SCALE = 100.0


def few_shot_figure(
    methods: Mapping[str, Table],
    title: str,
    labels: Mapping[str, str] | None = None,
    loss_name: str = "MSE",
) -> Any:
    """The figure :func:`plot_few_shot` saves (a matplotlib Figure)."""
    labels = {**METHOD_LABELS, **(labels or {})}
    shots = sorted({k for table in methods.values() for k in table})
    measures = table_measures(methods)
    plt = _pyplot()
    figure, axes = plt.subplots(len(measures), len(shots), figsize=(5 * len(shots), 4 * len(measures)), squeeze=False)
    any_spread = any_diverged = False
    for axes_row, measure in zip(axes, measures):
        for axis, k in zip(axes_row, shots):
            columns = sorted({s for table in methods.values() for s in table.get(k, {})})
            data_lines = []  # each method's line of means (not its error bars' caps)
            place = {s: i for i, s in enumerate(columns)}
            for name, table in methods.items():
                row = table.get(k, {})
                steps = sorted(row)
                measured = [(place[s], *row[s].measure(measure)) for s in steps]
                points = [(i, mean, ci or 0.0, spread) for i, mean, ci, spread in measured if mean is not None]
                if points:
                    xs, ys, es, spreads = zip(*points)
                    style = "--" if name.endswith(OWN_RATE_SUFFIX) else "-"
                    line = axis.errorbar(
                        xs, ys, yerr=es, marker="o", capsize=4, linestyle=style, label=labels.get(name, name)
                    )
                    data_lines.append(line.lines[0])
                    for s in steps:  # a mean over the tasks that did not diverge is marked, with the count
                        i = place[s]
                        mean = row[s].measure(measure)[0]
                        if row[s].nan_tasks and mean is not None:
                            any_diverged = True
                            axis.plot([i], [mean], marker="x", markersize=12, color=line.lines[0].get_color())
                            axis.annotate(
                                f"{row[s].nan_tasks} diverged",
                                (i, mean),
                                textcoords="offset points",
                                xytext=(6, 6),
                                fontsize=8,
                            )
                    if all(spread is not None for spread in spreads):
                        any_spread = True
                        color = line.lines[0].get_color()
                        axis.fill_between(
                            xs,
                            [y - d for y, d in zip(ys, spreads)],
                            [y + d for y, d in zip(ys, spreads)],
                            color=color,
                            alpha=0.18,
                            linewidth=0,
                        )
            if measure == LOSS:
                _loss_scale(axis, data_lines)
            axis.set_xticks(range(len(columns)), [str(s) for s in columns])
            axis.set_title(f"K = {k}")
            axis.set_xlabel("SGD steps on the K support points")
            axis.set_ylabel(measure_label(measure, loss_name))
            axis.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    per_row = max(1, min(len(names), LEGEND_COLUMNS))
    figure.legend(handles, names, loc="lower center", ncol=per_row, frameon=False)
    caption = (
        "bars: 95% CI over test tasks"
        + ("; bands: ± std between seeds" if any_spread else "")
        + ("; x: mean over the tasks whose fine-tuning did not diverge" if any_diverged else "")
    )
    figure.suptitle(f"{title}\n{caption}", fontsize=10)
    legend_rows = -(-len(names) // per_row)  # ceiling
    figure.tight_layout(rect=(0, (0.15 + 0.3 * legend_rows) / figure.get_figheight(), 1, 1))
    return figure


#: Methods per row of a few-shot figure's legend (more would run off a two-panel figure).
LEGEND_COLUMNS = 4


def _loss_scale(axis: Any, data_lines: Sequence[Any]) -> None:
    """Log scale for a loss panel whose means span more than LOG_SPAN; cut at OFF_SCALE x their median, the means
    beyond marked at the top edge with their values (``data_lines``: each method's line of means)."""
    points = [(x, y) for line in data_lines for x, y in zip(line.get_xdata(), line.get_ydata())]
    values = sorted(float(y) for _, y in points if math.isfinite(y) and y > 0)
    if not values:
        return
    if values[-1] / values[0] > LOG_SPAN:
        axis.set_yscale("log", nonpositive="clip")
    ceiling = OFF_SCALE * values[len(values) // 2]
    if values[-1] <= ceiling:
        return
    shown = [y for y in values if y <= ceiling]
    axis.set_ylim(top=ceiling, bottom=min(shown) / 2 if axis.get_yscale() == "log" else 0.0)
    for line in data_lines:
        for x, y in zip(line.get_xdata(), line.get_ydata()):
            if y > ceiling:
                axis.plot([x], [ceiling], marker="^", markersize=10, color=line.get_color(), clip_on=False)
                axis.annotate(
                    f"off scale: {y:.3g}", (x, ceiling), textcoords="offset points", xytext=(-70, -14), fontsize=8
                )


def plot_convergence(
    curves: Mapping[str, Sequence[float | None]],
    path: Path,
    title: str,
    labels: Mapping[str, str] | None = None,
    loss_name: str = "MSE",
) -> None:
    """Mean query loss after each Adam step on the task's training data, per method."""
    labels = {**METHOD_LABELS, **(labels or {})}
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    plotted = False
    for name, curve in curves.items():
        points = [(i, v) for i, v in enumerate(curve) if v is not None]
        if points:
            xs, ys = zip(*points)
            axis.plot(xs, ys, label=labels.get(name, name))
            plotted = True
    axis.set_xlabel("Adam steps on the task's training data")
    axis.set_ylabel(f"query {loss_name} (mean over test tasks)")
    if plotted:
        axis.set_yscale("log")
        axis.grid(alpha=0.3, which="both")
        axis.legend()
    else:  # eval.curve_steps = 0, or no method had a finite value: say so rather than draw empty axes
        axis.text(0.5, 0.5, "no convergence curve to show", ha="center", va="center", transform=axis.transAxes)
    axis.set_title(title)
    figure.tight_layout()
    _save(figure, path)


def plot_sweep(document: Mapping[str, Any], path: Path) -> None:
    """sweep.png: each configuration's mean score, with bars from its lowest to highest seed and every seed as a dot."""
    configurations = document["configurations"]
    plt = _pyplot()
    height = max(3.0, 0.45 * len(configurations) + 1.6)
    figure, axis = plt.subplots(figsize=(8, height))
    for row, c in enumerate(configurations):
        scores = [t["score"] for t in document["trials"] if t["configuration"] == c["id"] and t["score"] is not None]
        color = "tab:red" if c["best"] else "tab:blue"
        if c["mean"] is not None:
            axis.errorbar(
                [c["mean"]],
                [row],
                xerr=[[c["mean"] - c["min"]], [c["max"] - c["mean"]]],
                fmt="o",
                color=color,
                capsize=4,
                markersize=7,
            )
        axis.scatter(scores, [row] * len(scores), color=color, alpha=0.45, s=16, zorder=3)
    axis.set_yticks(
        range(len(configurations)),
        [f"{c['id']}: {describe(c['values'])}" + (" (best)" if c["best"] else "") for c in configurations],
        fontsize=8,
    )
    axis.invert_yaxis()
    axis.set_xlabel("validation score (mean query loss on validation tasks; lower is better)")
    axis.grid(alpha=0.3, axis="x")
    axis.set_title(
        f"reml-sweep: {document.get('plugin')}, {len(document['seeds'])} seed(s) per configuration\n"
        "dot: mean over seeds; bar: lowest to highest seed; faint dots: each seed",
        fontsize=10,
    )
    figure.tight_layout()
    _save(figure, path)


def _save(figure: Any, path: Path) -> None:
    atomic_write_with(path, lambda temporary: figure.savefig(temporary, dpi=110, format="png"))
    _pyplot().close(figure)
