"""What people read: every Markdown report (``report.md`` of a run and of a benchmark, ``sweep.md``),
the few-shot and curve tables the terminal also prints, and the wording of counts and statistics.

Reports are rendered from the typed documents of :mod:`reml_core.results` and from nothing else, so
a report of a folder written earlier reads exactly as it did then.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from reml_core.choices import report_section as choices_report_section
from reml_core.results import (
    FRACTION_SUFFIXES,
    LOSS,
    METHOD_LABELS,
    OWN_RATE_SUFFIX,
    CellResult,
    ResultsDocument,
    Table,
    TrainingRecord,
)


def plural(count: int, noun: str) -> str:
    """``1 step``, ``2 steps``, ``2,048 env steps``: a count and its noun, pluralised (nouns here take an s)."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def stat_label(key: str) -> str:
    """``pool/dead_hidden_units`` -> ``dead hidden units``: a component's number named for people."""
    return key.rpartition("/")[2].replace("_", " ")


#: What a number a component reports means, in plain words, for the reports that show it.
STAT_MEANINGS = {
    "invalid_argmax_rate": (
        "the share of the policy's decisions on test tasks where the choice it rated most likely was "
        "not allowed (masked) and the best allowed one was taken instead"
    ),
}


def stat_meanings(keys: Iterable[str]) -> str:
    """A sentence explaining the reported numbers that need it (empty when none does)."""
    known = [
        f"{stat_label(key).capitalize()}: {STAT_MEANINGS[key.rpartition('/')[2]]}."
        for key in keys
        if key.rpartition("/")[2] in STAT_MEANINGS
    ]
    return (" " + " ".join(known)) if known else ""


def format_stat(key: str, value: Any) -> str:
    """A component's number for a log or report: fractions (by their name's suffix) as percentages."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return "NaN"
    if key.endswith(FRACTION_SUFFIXES):
        return f"{value:.0%}"
    return f"{value:.3g}"


def _figure(value: float) -> str:
    """Three decimals; a number too large for them (an adaptation that blew up) in scientific notation."""
    return f"{value:.3f}" if abs(value) < 1e6 else f"{value:.3g}"


def _format_cell(cell: CellResult, best: bool, measure: str = LOSS) -> str:
    """``mean ± CI``; with diverged tasks the mean is over the others and the count follows (``, 3 diverged``)."""
    mean, ci, spread = cell.measure(measure)
    if mean is None:
        text = f"NaN ({plural(cell.nan_tasks, 'task')} diverged)" if cell.nan_tasks else "NaN"
    else:
        text = f"{_figure(mean)} ± {_figure(ci)}" if ci is not None else _figure(mean)
        if spread is not None:
            text += f" (seeds ±{_figure(spread)})"
        if cell.nan_tasks:
            text += f" ({cell.nan_tasks} diverged)"
    return f"**{text}**" if best else text


def column_best(cells: Sequence[CellResult | None], measure: str = LOSS) -> float | None:
    """The best mean of a column (lowest loss, highest metric) among the cells in which no task diverged:
    a method whose fine-tuning diverged on some tasks never wins its column, whatever its mean over the rest."""
    pick = min if measure == LOSS else max
    means = [cell.measure(measure)[0] for cell in cells if cell is not None and not cell.nan_tasks]
    known = [mean for mean in means if mean is not None]
    return pick(known) if known else None


def is_column_best(cell: CellResult | None, best: float | None, measure: str = LOSS) -> bool:
    return cell is not None and not cell.nan_tasks and best is not None and cell.measure(measure)[0] == best


def table_measures(tables: Mapping[str, Table]) -> list[str]:
    """``mse`` (the loss) and every family metric the cells hold, in order of first appearance."""
    found = [LOSS]
    for table in tables.values():
        for row in table.values():
            for cell in row.values():
                found += [name for name in cell.metrics if name not in found]
    return found


def measure_label(measure: str, loss_name: str = "MSE") -> str:
    """``query MSE``, ``query accuracy``: how tables and figures name a measure."""
    return f"query {loss_name}" if measure == LOSS else f"query {measure.replace('_', ' ')}"


def few_shot_tables(tables: Mapping[str, Table], loss_name: str = "MSE", unranked: Collection[str] = ()) -> str:
    """Markdown tables per K (rows: methods, by the names ``tables`` is keyed by; columns: SGD
    steps), first of the query loss (lowest bold), then of each family metric such as accuracy
    (highest bold). Rows named in ``unranked`` (own-rate rows) are shown but never bold, and do not
    take the bold from the others."""
    shots = sorted({k for table in tables.values() for k in table})
    lines: list[str] = []
    for measure in table_measures(tables):
        for k in shots:
            steps = sorted({s for table in tables.values() for s in table.get(k, {})})
            lines += [f"**K = {k}** ({measure_label(measure, loss_name)}, mean ± 95% CI over test tasks)", ""]
            lines.append("| method | " + " | ".join(f"{s} step{'s' if s != 1 else ''}" for s in steps) + " |")
            lines.append("|---|" + "---:|" * len(steps))
            ranked = [table for name, table in tables.items() if name not in unranked]
            best = {s: column_best([table.get(k, {}).get(s) for table in ranked], measure) for s in steps}
            for name, table in tables.items():
                row = table.get(k, {})
                cells = []
                for s in steps:
                    cell = row.get(s)
                    cells.append(
                        _format_cell(cell, name not in unranked and is_column_best(cell, best[s], measure), measure)
                        if cell
                        else "-"
                    )
                lines.append(f"| {METHOD_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def document_tables(results: ResultsDocument) -> str:
    """A results document's few-shot tables, labelled, its own-rate rows never ranked (reports, terminal, README)."""
    return few_shot_tables(results.labelled(results.tables), results.loss_name, results.own_rate_labels())


def curve_table(curves: Mapping[str, Sequence[float | None]], points: Sequence[int] = (0, 1, 5, 10, 30, 100)) -> str:
    if not curves or not any(curves.values()):
        return "(no convergence curve)\n"
    length = max(len(c) for c in curves.values())
    points = [p for p in points if p < length]
    lines = ["| method | " + " | ".join(plural(p, "step") for p in points) + " |", "|---|" + "---:|" * len(points)]
    for name, curve in curves.items():
        cells = [("NaN" if curve[p] is None else f"{curve[p]:.3f}") if p < len(curve) else "-" for p in points]
        lines.append(f"| {METHOD_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def own_rate_note(results: ResultsDocument) -> list[str]:
    """The report's sentence on own-rate rows (none when there are none)."""
    own = results.own_rate_methods
    if not own:
        return []
    labels = results.method_labels()
    rate = results.protocol_rate()
    named = ", ".join(labels[key] for key in own)
    return [
        f"Own-rate rows ({named}) adapt at the method's own rate (rates it learned, or a rate it chose per task), "
        f"not at the protocol's fixed lr {rate}: the same test tasks, support points, query points and step counts, "
        "but they "
        f'are not the protocol\'s fixed-rate comparison, which the rows marked "protocol rate {rate}" and every other '
        "row give, "
        "and they are not ranked (never bold). A method that chooses its number of steps for a task is counted in that "
        "step "
        "column only (and every task at 0 steps).",
        "",
    ]


#: How a report names each trivial reference (:data:`ResultsDocument.references`).
REFERENCE_WORDS = {
    "predict zero": (
        "predicting 0 for every query point (for classification: the same score for every class, i.e. chance)"
    ),
    "support mean": "predicting the mean of the K support targets for every query point",
}


def reference_lines(results: ResultsDocument) -> list[str]:
    """The report's trivial references: what predictors that learn nothing score on the same test
    tasks, per K, so that no number reads as good on its own (none when the file has none)."""
    if not results.references:
        return []
    loss = measure_label(LOSS, results.loss_name)
    lines = [
        f"Trivial references on the same {results.test_tasks} test tasks (no learning, no fine-tuning); "
        "a method is useful only where it beats them:",
        "",
    ]
    for name, table in results.references.items():
        parts = []
        for k, row in sorted(table.items()):
            cell = row.get(0)
            if cell is None:
                continue
            measures = [f"{loss} {_plain(cell.mean)}"] + [
                f"{metric} {_plain(mean)}" for metric, (mean, _) in cell.metrics.items()
            ]
            parts.append(f"K={k}: {', '.join(measures)}")
        if parts:
            lines.append(f"- {REFERENCE_WORDS.get(name, name)}: {'; '.join(parts)}")
    return [*lines, ""] if len(lines) > 2 else []


def _plain(value: float | None) -> str:
    return "NaN" if value is None else f"{value:.3f}"


def smoke_note(preset: str | None) -> list[str]:
    """The report's warning that a smoke run's numbers mean nothing (none for other presets)."""
    if preset != "smoke":
        return []
    return [f"**{SMOKE_WARNING}**", ""]


#: What a report and the terminal say about a smoke run's numbers.
SMOKE_WARNING = (
    "Preset `smoke` is a plumbing check (a short training on a handful of tasks): its numbers say "
    "nothing about how well any method learns. Use the default or full preset for results."
)


def component_lines(results: ResultsDocument) -> list[str]:
    """The facts the run's components stated about themselves (``describe()``), as report lines."""
    if not results.components:
        return []
    return ["## Components", "", *[f"- {section}: {text}" for section, text in results.components.items()], ""]


def encoder_note(results: ResultsDocument) -> str:
    if results.encoder_privileged:
        return (
            f"State encoder: `{results.encoder}`, which hands the policy privileged task information "
            "(the task's true parameters). No baseline sees it: this is not a fair comparison."
        )
    return f"State encoder: `{results.encoder}`, which sees only the K support points (no privileged information)."


def _versions_lines(found: Mapping[str, str]) -> list[str]:
    return ["## Versions", "", ", ".join(f"{k} {v}" for k, v in found.items()), ""]


# -- the reports -------------------------------------------------------------------------------


def render_run_report(results: ResultsDocument) -> str:
    """``report.md`` of a ``reml-run``."""
    config = results.config
    training = results.reml_training or TrainingRecord(env_steps=0)
    evaluation = config["eval"]
    selected = training.selected_checkpoint
    lines = [
        f"# REML run: {results.plugin}, {results.policy}, encoder {results.encoder}",
        "",
        f"Command: `{results.command or 'reml-run'}`  ",
        f"Seed {results.seed}, preset `{config['preset']}`, {results.test_tasks} held-out test tasks. "
        + encoder_note(results),
        "",
        *smoke_note(config.get("preset")),
        *component_lines(results),
        "## Few-shot learning (Finn et al. 2017 protocol)",
        "",
        f"Each method hands out a starting network per test task; it is fine-tuned with plain SGD "
        f"(lr {evaluation['sgd_lr']}) on the same K support points, and the error is measured on "
        f"the task's separate query points. REML's network comes from {_rollouts_words(evaluation)} over the "
        f"trained pool (checkpoint `{selected.name if selected else 'none recorded'}`, chosen on validation tasks).",
        "",
        document_tables(results),
        *reference_lines(results),
        *own_rate_note(results),
        "![few-shot](few_shot.png)",
        "",
        *choices_report_section(results.choices.get("reml")),
        f"## Convergence ({evaluation['curve_steps']} Adam steps, lr {_curve_lr(evaluation)}, on each task's training "
        "data)",
        "",
        f"Mean query loss over {evaluation['curve_tasks']} test tasks after n steps:",
        "",
        curve_table(results.labelled(results.curves)),
        "![convergence](convergence.png)",
        "",
        "## Training",
        "",
        f"{training.env_steps} env steps with `{results.policy}`, reward `{config['reward']['name']}`, "
        f"pool `{config['pool']['name']}`; resumed {plural(training.resumes, 'time')}."
        + (
            " The policy backend reports: "
            + ", ".join(f"{stat_label(key)} {format_stat(key, value)}" for key, value in training.policy_stats.items())
            + "."
            + stat_meanings(training.policy_stats)
            if training.policy_stats
            else ""
        ),
        "",
    ]
    history = training.history
    if history:
        longest = max(evaluation["steps"])
        # every number the pool reported about itself (pool/...), in the order it first appeared
        pool_keys = list(dict.fromkeys(key for record in history for key in record if key.startswith("pool/")))
        validation_tasks = config.get("train", {}).get("validation_tasks")
        on = f"the {validation_tasks} validation tasks" if validation_tasks else "the validation tasks"
        lines += [
            f"Validation, at each checkpoint, on {on} that choose the checkpoint (not the test tasks above: a few "
            'different tasks give a different number, so compare these only with each other). "Gain from fine-tuning" '
            "is the "
            f"validation loss before fine-tuning minus the loss after {longest} SGD steps: how much the K support "
            "points helped.",
            "",
            f"| env steps | validation loss after {plural(longest, 'step')} | gain from fine-tuning | "
            + " | ".join(f"pool: {stat_label(key)}" for key in pool_keys)
            + " |",
            "|---:|---:|---:|" + "---:|" * len(pool_keys),
        ]
        for record in history:
            cells = [format_stat(key, record[key]) if key in record else "" for key in pool_keys]
            lines.append(
                f"| {record['timesteps']} | {_validation(record.get('validation/score'))} | "
                f"{_validation(record.get('validation/finetune_gain'))} | " + " | ".join(cells) + " |"
            )
        lines.append("")
    lines += ["## Wall time (seconds)", "", "| phase | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in results.timing.items()]
    lines += ["", *_versions_lines(results.versions)]
    lines += ["The fully resolved configuration is in `config.json`; machine-readable results in `results.json`.", ""]
    return "\n".join(lines)


def _curve_lr(evaluation: Mapping[str, Any]) -> Any:
    """The convergence curve's Adam rate, under its name or (in files written before the rename) its former one."""
    return evaluation.get("curve_adam_lr", evaluation.get("curve_lr"))


def _validation(value: float | None) -> str:
    """A validation number for the report; NaN (a diverged fine-tuning) is shown, not hidden."""
    return "NaN" if value is None or value != value else f"{value:.3f}"


def render_bench_report(results: ResultsDocument) -> str:
    """``report.md`` of a ``reml-bench``."""
    evaluation = results.config["eval"]
    seeds = results.seed_list
    labels = results.method_labels()
    lines = [
        f"# REML benchmark: {results.plugin}",
        "",
        f"Command: `{results.command or 'reml-bench'}`  ",
        f"Preset `{results.preset or results.config['preset']}`; seeds {', '.join(map(str, seeds))}; "
        f"{results.test_tasks} held-out test tasks, the same tasks, support points and query points for every method. "
        f"Every method's starting network is fine-tuned with plain SGD (lr {evaluation['sgd_lr']}) on the K support "
        "points "
        "and measured on the task's separate query points.",
        "",
        *smoke_note(results.preset or results.config.get("preset")),
        *component_lines(results),
    ]
    for key, info in results.encoders.items():
        note = (
            "sees the true task parameters (privileged information no baseline gets)"
            if info.privileged
            else "sees only the K support points, as the baselines do"
        )
        lines.append(f"- {labels[key]}: state encoder `{info.name}`, which {note}.")
    lines += ["", "## Few-shot learning", ""]
    if len(seeds) > 1:
        lines += [
            f"Cells: mean over {len(seeds)} seeds of the per-seed mean ± the mean 95% CI over tasks; "
            '"seeds ±" is the standard deviation between the seeds\' means.',
            "",
        ]
    lines += [
        document_tables(results),
        *reference_lines(results),
        *own_rate_note(results),
        "![few-shot](few_shot.png)",
        "",
    ]
    for key, choices in results.choices.items():  # what each REML's policy chose (env.choose), over the seeds
        lines += choices_report_section(choices, results.method_name(key))
    lines += [
        f"## Convergence ({evaluation['curve_steps']} Adam steps, lr {_curve_lr(evaluation)}, on each task's training "
        "data)",
        "",
        curve_table(results.labelled(results.curves)),
        "![convergence](convergence.png)",
        "",
    ]
    lines += [
        "## Budgets, training time and test-time cost",
        "",
        "| method | budget | training wall time (s, all seeds) | choosing the test networks (s, all seeds) | "
        "source (first seed) |",
        "|---|---|---:|---:|---|",
    ]
    sources = results.sources.get(seeds[0], {})
    for key in results.tables:
        if key.endswith(OWN_RATE_SUFFIX):
            continue  # the same trained method as its fixed-rate row
        seconds = results.timing.get(f"training_{key}")
        choosing = results.timing.get(f"choosing_{key}")
        lines.append(
            f"| {labels[key]} | {results.budgets.get(key, '')} | {'-' if seconds is None else f'{seconds:.1f}'} | "
            f"{'-' if choosing is None else f'{choosing:.1f}'} | {sources.get(key, '')} |"
        )
    lines += [
        "",
        "Choosing the test networks: the part of a method's evaluation spent handing out each test task's starting "
        "network (a policy's rollouts, a search, a copy of an initialisation), apart from the protocol's fine-tuning, "
        "which every method gets alike: its test-time cost.",
    ]
    total = results.timing.get("total_this_invocation")
    if total is not None:
        lines += ["", f"Total wall time of this invocation: {total:.0f} s."]
    lines += ["", *_versions_lines(results.versions)]
    return "\n".join(lines)


def _rollouts_words(evaluation: Mapping[str, Any]) -> str:
    """How a run's REML chose each test task's network (``eval.reml_rollouts``; 1 in configs recorded before it)."""
    rollouts = int(evaluation.get("reml_rollouts", 1))
    if rollouts == 1:
        return "a deterministic rollout of the policy"
    return (
        f"the best of {rollouts} rollouts of the policy (its most probable composition and {rollouts - 1} sampled "
        f"ones), by support loss after one SGD step at lr {evaluation['sgd_lr']}"
    )


def describe_values(values: Mapping[str, Any]) -> str:
    """``env.depth=4, env.inner_steps=30``: a sweep configuration for people."""
    return ", ".join(f"{key}={show_value(value)}" for key, value in values.items())


def show_value(value: Any) -> str:
    """A swept value for people: floats to 4 significant digits, lists and tables as JSON."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def render_sweep_report(document: Mapping[str, Any]) -> str:
    """``sweep.md`` of a ``reml-sweep`` (its ``sweep.json`` document): one row per configuration,
    best first marked, then the trials' folders."""
    keys = list(dict.fromkeys(key for c in document["configurations"] for key in c["values"]))
    rows = sorted(
        document["configurations"], key=lambda c: (c["mean"] is None, c["mean"] if c["mean"] is not None else 0.0)
    )
    lines = [
        f"# REML sweep: {document.get('plugin')}",
        "",
        f"Command: `{document.get('command') or 'reml-sweep'}`  ",
        f"{len(document['configurations'])} configurations x {len(document['seeds'])} seed(s) "
        f"({', '.join(str(s) for s in document['seeds'])}) = {len(document['trials'])} trials; status: "
        f"{document['status']}.",
        "",
        "Objective: the validation score (mean query loss on the validation tasks after fine-tuning; lower is better) "
        "of the checkpoint each trial's trainer selected. Test tasks are not used. Spread: standard deviation "
        "between seeds, and the lowest and highest seed.",
        "",
        "| | configuration | "
        + " | ".join(f"`{k}`" for k in keys)
        + " | mean validation score | std | min – max | seeds | mean time (s) |",
        "|---|---|" + "---:|" * len(keys) + "---:|---:|---:|---:|---:|",
    ]
    for c in rows:
        spread = f"{_score(c['min'])} – {_score(c['max'])}" if c["min"] is not None else "—"
        seconds = f"{c['mean_seconds']:.1f}" if c["mean_seconds"] is not None else "—"
        lines.append(
            f"| {'**best**' if c['best'] else ''} | {c['id']} | "
            + " | ".join(show_value(c["values"].get(k, "")) for k in keys)
            + f" | {_score(c['mean'])} | {_score(c['std'])} | {spread} | {c['seeds_scored']}/{c['seeds']} | {seconds} |"
        )
    lines += ["", "![sweep](sweep.png)", ""]
    best = document.get("best")
    if best:
        lines += [
            f"Best: `{best['configuration']}` ({describe_values(best['values'])}); its complete config is `best.toml` "
            "(`reml-run --config best.toml`).",
            "",
        ]
    lines += [
        "## Trials",
        "",
        "| trial | seed | validation score | status | time (s) | run folder |",
        "|---|---:|---:|---|---:|---|",
    ]
    for t in document["trials"]:
        lines.append(
            f"| {t['id']} | {t['seed']} | {_score(t['score'])} | {t['status']} | {t['seconds']:.1f} | `{t['folder']}` |"
        )
    lines += ["", *_versions_lines(document["versions"])]
    return "\n".join(lines)
