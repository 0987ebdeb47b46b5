"""``results.json`` (schema ``reml.results/2``, see docs/results.md) and every Markdown report made from it:
:func:`render_run_report` (``reml-run``) and :func:`render_bench_report` (``reml-bench``)."""

from __future__ import annotations

import importlib.metadata
import math
import platform
from collections.abc import Mapping, Sequence
from typing import Any

from reml_core.evaluation import Cell, FewShotTable

SCHEMA = "reml.results/2"
#: ``reml.results/1`` files (the layout before this one) are still read by reports, plots and the
#: README tool: they kept the policy's invalid-argmax rate as ``training.invalid_argmax_rate`` and
#: recorded no ``labels`` or ``components``; this is how they showed the built-in baselines.
_V1_LABELS = {"maml": "MAML"}
#: Display names of methods a results file does not label itself (REML's own; baselines name
#: themselves through ``BaselineSpec.label``, recorded under ``labels``).
METHOD_LABELS = {"reml": "REML"}

#: Suffixes of diagnostic and statistic names whose values are fractions, shown as percentages.
FRACTION_SUFFIXES = ("_units", "_rate", "_fraction")


def stat_label(key: str) -> str:
    """``pool/dead_hidden_units`` -> ``dead hidden units``: a component's number named for people."""
    return key.rpartition("/")[2].replace("_", " ")


def format_stat(key: str, value: Any) -> str:
    """A component's number for a log or report: fractions (by their name's suffix) as percentages."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return "NaN"
    if key.endswith(FRACTION_SUFFIXES):
        return f"{value:.0%}"
    return f"{value:.3g}"


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a non-finite number is written as null (and reported as "NaN")."""
    return float(value) if value is not None and math.isfinite(value) else None


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, recursively (JSON has no NaN)."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def cell_to_json(cell: Cell) -> dict[str, Any]:
    data: dict[str, Any] = {
        "mse_mean": finite_or_none(cell.mse_mean),
        "mse_ci95": finite_or_none(cell.mse_ci95),
        "nan_tasks": cell.nan_tasks,
    }
    for name, (mean, ci) in cell.metrics.items():
        data[f"{name}_mean"], data[f"{name}_ci95"] = finite_or_none(mean), finite_or_none(ci)
    return data


def cell_metrics(cell: Mapping[str, Any]) -> list[str]:
    """The family metrics a JSON cell holds (``accuracy`` for ``accuracy_mean``), in order."""
    return [key[: -len("_mean")] for key in cell if key.endswith("_mean") and key != "mse_mean"]


def table_to_json(table: FewShotTable) -> dict[str, dict[str, dict[str, Any]]]:
    return {str(k): {str(s): cell_to_json(cell) for s, cell in row.items()} for k, row in table.items()}


def versions() -> dict[str, str]:
    """Versions of Python and of every package that shapes the numbers."""
    found = {"python": platform.python_version()}
    for package in ("reml", "torch", "numpy", "gymnasium", "stable-baselines3", "sb3-contrib", "learn2learn", "pydantic", "pluggy"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def build_results(
    *,
    config: Mapping[str, Any],
    encoder_privileged: bool,
    test_tasks: int,
    methods: Mapping[str, FewShotTable],
    curves: Mapping[str, Sequence[float]],
    timing_s: Mapping[str, float],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a ``reml.results/2`` document."""
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "plugin": config["plugin"],
        "policy": config["policy"]["name"],
        "encoder": config["encoder"]["name"],
        "encoder_privileged": encoder_privileged,
        "seed": config["seed"],
        "test_tasks": test_tasks,
        "methods": {name: table_to_json(table) for name, table in methods.items()},
        "curves": {name: [finite_or_none(v) for v in curve] for name, curve in curves.items()},
        "timing_s": {name: round(seconds, 3) for name, seconds in timing_s.items()},
        "versions": versions(),
        "config": dict(config),
    }
    results.update(jsonable(dict(extra or {})))
    return results


# -- Markdown ----------------------------------------------------------------------------------


def _spread_key(measure: str) -> str:
    return "seed_spread" if measure == "mse" else f"{measure}_seed_spread"


def _format_cell(cell: Mapping[str, Any], best: bool, measure: str = "mse") -> str:
    mean, ci = cell.get(f"{measure}_mean"), cell.get(f"{measure}_ci95")
    if mean is None:
        text = f"NaN ({cell.get('nan_tasks', '?')} tasks diverged)"
    else:
        text = f"{mean:.3f} ± {ci:.3f}" if ci is not None else f"{mean:.3f}"
        if cell.get(_spread_key(measure)) is not None:
            text += f" (seeds ±{cell[_spread_key(measure)]:.3f})"
    return f"**{text}**" if best else text


def table_measures(methods: Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]]) -> list[str]:
    """``mse`` (the loss) and every family metric the cells hold, in order of first appearance."""
    found = ["mse"]
    for table in methods.values():
        for row in table.values():
            for cell in row.values():
                found += [name for name in cell_metrics(cell) if name not in found]
    return found


def few_shot_tables(methods: Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]], loss_name: str = "MSE") -> str:
    """Markdown tables per K (rows: methods, columns: SGD steps), first of the query loss (lowest
    bold), then of each family metric such as accuracy (highest bold)."""
    shots = sorted({int(k) for table in methods.values() for k in table})
    lines: list[str] = []
    for measure in table_measures(methods):
        label = f"query {loss_name}" if measure == "mse" else f"query {measure.replace('_', ' ')}"
        pick = min if measure == "mse" else max
        for k in shots:
            steps = sorted({int(s) for table in methods.values() for s in table.get(str(k), {})})
            lines += [f"**K = {k}** ({label}, mean ± 95% CI over test tasks)", ""]
            lines.append("| method | " + " | ".join(f"{s} step{'s' if s != 1 else ''}" for s in steps) + " |")
            lines.append("|---|" + "---:|" * len(steps))
            best = {}
            for s in steps:
                means = [t[str(k)][str(s)].get(f"{measure}_mean") for t in methods.values() if str(s) in t.get(str(k), {})]
                means = [m for m in means if m is not None]
                best[s] = pick(means) if means else None
            for name, table in methods.items():
                row = table.get(str(k), {})
                cells = []
                for s in steps:
                    cell = row.get(str(s))
                    mean = cell.get(f"{measure}_mean") if cell else None
                    cells.append(_format_cell(cell, mean is not None and mean == best[s], measure) if cell else "-")
                lines.append(f"| {METHOD_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def curve_table(curves: Mapping[str, Sequence[float | None]], points: Sequence[int] = (0, 1, 5, 10, 30, 100)) -> str:
    if not curves or not any(curves.values()):
        return "(no convergence curve)\n"
    length = max(len(c) for c in curves.values())
    points = [p for p in points if p < length]
    lines = ["| method | " + " | ".join(f"{p} steps" for p in points) + " |", "|---|" + "---:|" * len(points)]
    for name, curve in curves.items():
        cells = [("NaN" if curve[p] is None else f"{curve[p]:.3f}") if p < len(curve) else "-" for p in points]
        lines.append(f"| {METHOD_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def reml_label(encoder: str, privileged: bool) -> str:
    """How tables and plots name REML: with its encoder, and a warning when that encoder is privileged."""
    return f"REML ({encoder}, privileged)" if privileged else f"REML ({encoder})"


def method_labels(results: Mapping[str, Any]) -> dict[str, str]:
    """Display names of a run's or benchmark's methods; REML's say which encoder, and whether it is privileged."""
    encoders = results.get("encoders") or {"reml": {"name": results["encoder"], "privileged": bool(results.get("encoder_privileged"))}}
    labels = {key: reml_label(info["name"], bool(info["privileged"])) for key, info in encoders.items()}
    named = {**METHOD_LABELS, **(results["labels"] if "labels" in results else _V1_LABELS)}
    return {key: labels.get(key, named.get(key, key)) for key in results["methods"]}


def labelled(results: Mapping[str, Any], table: Mapping[str, Any]) -> dict[str, Any]:
    """``table`` (keyed by method) keyed by display name instead."""
    labels = method_labels(results)
    return {labels.get(key, key): value for key, value in table.items()}


def component_lines(results: Mapping[str, Any]) -> list[str]:
    """The facts the run's components stated about themselves (``describe()``), as report lines."""
    facts = results.get("components") or {}
    if not facts:
        return []
    return ["## Components", "", *[f"- {section}: {text}" for section, text in facts.items()], ""]


def encoder_note(results: Mapping[str, Any]) -> str:
    if results.get("encoder_privileged"):
        return (f"State encoder: `{results['encoder']}`, which hands the policy privileged task information "
                "(the task's true parameters). No baseline sees it: this is not a fair comparison.")
    return f"State encoder: `{results['encoder']}`, which sees only the K support points (no privileged information)."


# -- the reports -------------------------------------------------------------------------------


def render_run_report(results: Mapping[str, Any]) -> str:
    config = results["config"]
    training = results.get("training", {})
    timing = results["timing_s"]
    evaluation = config["eval"]
    lines = [
        f"# REML run: {results['plugin']}, {results['policy']}, encoder {results['encoder']}",
        "",
        f"Command: `{results.get('command') or 'reml-run'}`  ",
        f"Seed {results['seed']}, preset `{config['preset']}`, {results['test_tasks']} held-out test tasks. "
        + encoder_note(results),
        "",
        *component_lines(results),
        "## Few-shot learning (Finn et al. 2017 protocol)",
        "",
        f"Each method hands out a starting network per test task; it is fine-tuned with plain SGD "
        f"(lr {evaluation['sgd_lr']}) on the same K support points, and the error is measured on "
        f"the task's separate query points. REML's network comes from "
        f"a deterministic rollout of the policy over the trained pool (checkpoint "
        f"`{training.get('selected_checkpoint', {}).get('name', '?')}`, chosen on validation tasks).",
        "",
        few_shot_tables(labelled(results, results["methods"]), results.get("loss_name", "MSE")),
        "![few-shot](few_shot.png)",
        "",
        f"## Convergence ({evaluation['curve_steps']} Adam steps, lr {evaluation['curve_lr']}, on each task's training data)",
        "",
        f"Mean query loss over {evaluation['curve_tasks']} test tasks after n steps:",
        "",
        curve_table(labelled(results, results["curves"])),
        "![convergence](convergence.png)",
        "",
        "## Training",
        "",
        f"{training.get('env_steps', '?')} env steps with `{results['policy']}`, reward `{config['reward']['name']}`, "
        f"pool `{config['pool']['name']}`; resumed {training.get('resumes', 0)} time(s)."
        + (" The policy backend reports: " + ", ".join(f"{stat_label(key)} {format_stat(key, value)}" for key, value in training["policy_stats"].items()) + "."
           if training.get("policy_stats") else ""),
        "",
    ]
    history = training.get("history", [])
    if history:
        longest = max(evaluation["steps"])
        # every number the pool reported about itself (pool/...), in the order it first appeared
        pool_keys = list(dict.fromkeys(key for record in history for key in record if key.startswith("pool/")))
        lines += [
            f"| env steps | validation loss after {longest} steps | fine-tuning gain | "
            + " | ".join(f"pool: {stat_label(key)}" for key in pool_keys) + " |",
            "|---:|---:|---:|" + "---:|" * len(pool_keys),
        ]
        for record in history:
            cells = [format_stat(key, record[key]) if key in record else "" for key in pool_keys]
            lines.append(
                f"| {record['timesteps']} | {_number(record.get('validation/score'))} | {_number(record.get('validation/finetune_gain'))} | "
                + " | ".join(cells) + " |"
            )
        lines.append("")
    lines += ["## Wall time (seconds)", "", "| phase | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in timing.items()]
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in results["versions"].items()), ""]
    lines += ["The fully resolved configuration is in `config.json`; machine-readable results in `results.json`.", ""]
    return "\n".join(lines)


def _number(value: float | None) -> str:
    """A validation number for the report; NaN (a diverged fine-tuning) is shown, not hidden."""
    return "NaN" if value is None or value != value else f"{value:.3f}"


def render_bench_report(results: Mapping[str, Any]) -> str:
    config = results["config"]
    evaluation = config["eval"]
    seeds = results.get("seed_list", [results["seed"]])
    labels = method_labels(results)
    renamed = labelled(results, results["methods"])
    lines = [
        f"# REML benchmark: {results['plugin']}",
        "",
        f"Command: `{results.get('command') or 'reml-bench'}`  ",
        f"Preset `{results.get('preset', config['preset'])}`; seeds {', '.join(map(str, seeds))}; "
        f"{results['test_tasks']} held-out test tasks, the same tasks, support points and query points for every method. "
        f"Every method's starting network is fine-tuned with plain SGD (lr {evaluation['sgd_lr']}) on the K support points "
        "and measured on the task's separate query points.",
        "",
        *component_lines(results),
    ]
    for key, info in results.get("encoders", {}).items():
        note = ("sees the true task parameters (privileged information no baseline gets)"
                if info["privileged"] else "sees only the K support points, as the baselines do")
        lines.append(f"- {labels[key]}: state encoder `{info['name']}`, which {note}.")
    lines += ["", "## Few-shot learning", ""]
    if len(seeds) > 1:
        lines += [f"Cells: mean over {len(seeds)} seeds of the per-seed mean ± the mean 95% CI over tasks; "
                  "\"seeds ±\" is the standard deviation between the seeds' means.", ""]
    lines += [few_shot_tables(renamed, results.get("loss_name", "MSE")), "![few-shot](few_shot.png)", ""]
    curves = labelled(results, results["curves"])
    lines += [f"## Convergence ({evaluation['curve_steps']} Adam steps, lr {evaluation['curve_lr']}, on each task's training data)", "",
              curve_table(curves), "![convergence](convergence.png)", ""]
    lines += ["## Budgets and training time", "", "| method | budget | training wall time (s, all seeds) | source (first seed) |", "|---|---|---:|---|"]
    sources = results.get("sources", {}).get(str(seeds[0]), {})
    for key in results["methods"]:
        label = labels[key]
        seconds = results["timing_s"].get(f"training_{key}")
        lines.append(f"| {label} | {results.get('budgets', {}).get(key, '')} | {'-' if seconds is None else f'{seconds:.1f}'} | {sources.get(key, '')} |")
    lines += ["", f"Total wall time of this invocation: {results['timing_s']['total_this_invocation']:.0f} s.", ""]
    lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in results["versions"].items()), ""]
    return "\n".join(lines)
