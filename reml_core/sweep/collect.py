"""The end of a sweep: every trial's outcome read from its folder, each configuration's mean and spread
over seeds, the best one, and the files the driver writes (``sweep.json``, ``sweep.md``,
``sweep.png``, ``best.toml``).

The objective is the validation score the trainer records at each checkpoint (``validation/score``,
the mean query loss on validation tasks; lower is better) of the checkpoint it selected, read
from the trial's ``results.json`` (``training.selected_checkpoint``). Test tasks never enter it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reml_core.plots import plot_sweep
from reml_core.reports import describe_values as describe
from reml_core.reports import render_sweep_report
from reml_core.results import versions
from reml_core.storage import atomic_write_json, atomic_write_text
from reml_core.sweep.plan import SCHEMA, SweepPlan, check_round_trip, plan_to_dict
from reml_core.sweep.toml_writer import to_toml
from reml_core.sweep.trials import read_record, record_seconds, run_finished, trial_objective

OBJECTIVE = "validation/score"


def collect(out: Path, plan: SweepPlan) -> dict[str, Any]:
    """sweep.json's content from the trial folders: every trial, every configuration, the best one."""
    trials: list[dict[str, Any]] = []
    for trial in plan.trials:
        folder = out / trial.folder
        record = read_record(out / trial.record)
        entry: dict[str, Any] = {
            **trial.to_dict(),
            "status": "pending",
            "score": None,
            "seconds": round(record_seconds(record), 3),
            "invocations": len(record["invocations"]),
        }
        if run_finished(folder):
            objective = trial_objective(folder)
            entry.update(
                status="finished",
                score=objective["score"],
                checkpoint=objective["checkpoint"],
                checkpoint_timesteps=objective["timesteps"],
                env_steps=objective["env_steps"],
            )
        elif any(i.get("exit") not in (None, 0) for i in record["invocations"][-1:]):
            entry["status"] = "failed"
        elif (folder / "config.json").is_file():
            entry["status"] = "interrupted"
        trials.append(entry)
    configurations = []
    for configuration in plan.configurations:
        mine = [t for t in trials if t["configuration"] == configuration["id"]]
        scores = [t["score"] for t in mine if t["score"] is not None]
        times = [t["seconds"] for t in mine if t["status"] == "finished" and t["seconds"]]
        mean = float(sum(scores) / len(scores)) if scores else None
        std = (
            float(math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)))
            if len(scores) > 1 and mean is not None
            else None
        )
        configurations.append(
            {
                "id": configuration["id"],
                "values": configuration["values"],
                "trials": [t["id"] for t in mine],
                "seeds_finished": sum(t["status"] == "finished" for t in mine),
                "seeds_scored": len(scores),
                "seeds": len(mine),
                "mean": mean,
                "std": std,
                "min": min(scores) if scores else None,
                "max": max(scores) if scores else None,
                "mean_seconds": float(sum(times) / len(times)) if times else None,
                "config": configuration["config"],
            }
        )
    complete = [c for c in configurations if c["mean"] is not None and c["seeds_scored"] == c["seeds"]]
    best = min(complete or [c for c in configurations if c["mean"] is not None], key=lambda c: c["mean"], default=None)
    for configuration in configurations:
        configuration["best"] = best is not None and configuration["id"] == best["id"]
    return {"trials": trials, "configurations": configurations, "best": best}


def write_outputs(out: Path, plan: SweepPlan, registry: Any, *, command: str, started: str) -> dict[str, Any]:
    """sweep.json, sweep.md, sweep.png and best.toml, each written atomically; returns sweep.json's content."""
    collected = collect(out, plan)
    best = collected["best"]
    unfinished = [t for t in collected["trials"] if t["status"] != "finished"]
    found_versions = versions()
    try:
        import ray  # noqa: PLC0415 - lazy: optional dependency ray (reml[ray])

        found_versions["ray"] = ray.__version__
    except ImportError:
        pass
    document = {
        "schema": SCHEMA,
        "status": "finished" if not unfinished else "incomplete",
        "command": plan.command,
        "last_command": command,
        "started": started,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "plugin": (plan.configurations[0]["config"] or {}).get("plugin"),
        "objective": {
            "metric": OBJECTIVE,
            "mode": "min",
            "source": "results.json training.selected_checkpoint.score: the validation score of the checkpoint the "
            "trainer selected (mean query loss on validation tasks, never test tasks)",
        },
        **plan_to_dict(plan),
        "configurations": collected["configurations"],
        "trials": collected["trials"],
        "best": None
        if best is None
        else {
            "configuration": best["id"],
            "values": best["values"],
            "mean": best["mean"],
            "std": best["std"],
            "seeds_scored": best["seeds_scored"],
            "config_file": "best.toml",
        },
        "versions": found_versions,
    }
    if best is not None:
        header = [
            f"reml-sweep best configuration {best['id']}: {describe(best['values'])}",
            f"mean validation score {best['mean']:.6g} over {best['seeds_scored']} seed(s); sweep {out}",
            "Run it with: reml-run --config best.toml",
        ]
        text = to_toml(best["config"], header=header)
        check_round_trip(registry, text, best["config"], f"best configuration {describe(best['values'])}")
        atomic_write_text(out / "best.toml", text)
    atomic_write_json(out / "sweep.json", document)
    atomic_write_text(out / "sweep.md", render_sweep_report(document))
    plot_sweep(document, out / "sweep.png")
    return document


def summary(document: Mapping[str, Any], out: Path) -> str:
    """What the command prints on stdout at the end: the table's rows and where the files are."""
    table = render_sweep_report(document)
    body = table.split("## Trials")[0].split("\n")
    rows = [line for line in body if line.startswith("|")]
    return "\n".join(
        [
            *rows,
            "",
            f"sweep:  {out / 'sweep.json'}",
            f"table:  {out / 'sweep.md'}",
            f"plot:   {out / 'sweep.png'}",
            *(
                [f"best:   {out / 'best.toml'}  (reml-run --config {out / 'best.toml'})"]
                if document.get("best")
                else []
            ),
        ]
    )
