"""What a trial leaves behind, read by the process that runs it, by Tune's progress lines and by the
sweep's end: whether its reml-run finished, the objective it scored, its invocation record
(``logs/<trial>.json``) and the last lines of its log."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reml_core.results import read_results


def run_finished(folder: Path) -> bool:
    """A reml-run folder that finished: report.md is the last file a run writes."""
    return (folder / "results.json").is_file() and (folder / "report.md").is_file()


def trial_objective(folder: Path) -> dict[str, Any]:
    """The trial's objective from its results.json: the validation score of the checkpoint the trainer selected.

    ``score`` is None when no validation was finite (every checkpoint diverged).
    """
    training = read_results(folder / "results.json").reml_training
    selected = training.selected_checkpoint if training is not None else None
    if training is None or selected is None:
        return {
            "score": None,
            "checkpoint": None,
            "timesteps": None,
            "env_steps": training.env_steps if training is not None else None,
        }
    return {
        "score": selected.score,
        "checkpoint": selected.name,
        "timesteps": selected.timesteps,
        "env_steps": training.env_steps,
    }


def read_record(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and isinstance(data.get("invocations"), list) else {"invocations": []}
    except (OSError, ValueError):
        return {"invocations": []}


def record_seconds(record: Mapping[str, Any]) -> float:
    return float(sum(i.get("seconds") or 0.0 for i in record.get("invocations", [])))


def last_lines(path: Path, count: int = 3) -> str:
    try:
        lines = [
            line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()
        ]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-count:])[-600:]
