"""Hyperparameters the policy chooses (``env.choose``): their checks, their effect, and their summary.

An episode of the composition MDP may end with choice steps after its layer slots, one per name in
``env.choose`` (see docs/architecture.md, the MDP). Each offers the policy that name's candidate
values. The core applies four names itself (:data:`BUILTIN`): what each drives is listed there.
A plugin may declare more on its records (:class:`reml_core.specs.HyperparameterChoice`); their
``apply(network, value)`` changes the built network in place.

This module holds everything about choices that is not the MDP itself: the config check, the order
of the choice steps, the settings an episode runs with, and the record and summary of what the
policy chose on the test tasks (``results.json``'s ``choices``, the report's section).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from reml_core.errors import ConfigError
from reml_core.specs import BUILTIN_CHOICES, HyperparameterChoice

if TYPE_CHECKING:
    from reml_core.settings import EnvConfig

#: What each of the core's own choosable hyperparameters drives when the policy chooses it.
BUILTIN: dict[str, str] = {
    "finetune_sgd_lr": "the SGD rate of the episode's adaptation: the reward's fine-tuning, the protocol pool update's "
    "inner SGD, and REML's own-rate rows at evaluation",
    "finetune_steps": "the SGD steps of the episode's adaptation: the reward's fine-tuning, the protocol pool update "
    "(the query loss after that many steps), and REML's own-rate rows at evaluation (that column only)",
    "inner_adam_lr": "the Adam rate of the episode's inner training (the thesis rule, the 'trained' loss)",
    "inner_steps": "the Adam steps of the episode's inner training (the thesis rule, the 'trained' loss)",
}
assert tuple(BUILTIN) == BUILTIN_CHOICES
#: Former names of built-in settings, accepted in ``env.choose`` as in the fixed settings.
_FORMER = {"finetune_lr": "finetune_sgd_lr", "inner_lr": "inner_adam_lr"}
#: Names whose chosen values are how the network is adapted at evaluation (REML's own-rate rows).
ADAPTATION = ("finetune_sgd_lr", "finetune_steps")
MAX_CANDIDATES = 64


def _problem(text: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_choice", "{problem}", {"problem": text})


def check_choose(value: Any, fields: Mapping[str, Any]) -> Any:
    """``env.choose`` checked: a mapping of names to non-empty lists of distinct candidates; a built-in
    name's candidates each valid as that fixed setting is (``fields``: EnvConfig's model fields)."""
    if not isinstance(value, Mapping):
        raise _problem(
            "expected a table of hyperparameter names, each with a list of candidate values, "
            "e.g. env.choose.finetune_sgd_lr = [0.003, 0.01, 0.03, 0.1]"
        )
    checked: dict[str, list[Any]] = {}
    for raw_name, candidates in value.items():
        name = _FORMER.get(str(raw_name), str(raw_name))
        where = f"env.choose.{raw_name}"
        if name == "stop":
            raise _problem(
                f"{where}: a stop choice (ending the network before env.depth) is not implemented; "
                f"choosable: {', '.join(BUILTIN_CHOICES)} or a name a plugin declares"
            )
        if name in checked:
            raise _problem(f"{where}: given twice (also under its other name)")
        if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
            raise _problem(f"{where}: expected a list of candidate values, e.g. [0.003, 0.01] (got {candidates!r})")
        candidates = list(candidates)
        if not candidates:
            raise _problem(f"{where}: the list of candidate values is empty; give at least one value")
        if len(candidates) > MAX_CANDIDATES:
            raise _problem(f"{where}: {len(candidates)} candidates; at most {MAX_CANDIDATES}")
        if any(isinstance(c, bool) or not isinstance(c, (int, float, str)) for c in candidates):
            raise _problem(f"{where}: candidates must be numbers or strings (got {candidates!r})")
        if any(isinstance(c, float) and not math.isfinite(c) for c in candidates):
            raise _problem(f"{where}: candidates must be finite numbers")
        if len(set(candidates)) != len(candidates):
            raise _problem(f"{where}: candidate values must be distinct (got {candidates!r})")
        if name in BUILTIN_CHOICES:
            field = fields[name]
            # Annotated[annotation, *metadata], built at run time (the star form needs Python 3.11)
            annotated: Any = operator.getitem(Annotated, (field.annotation, *field.metadata))
            adapter: TypeAdapter[Any] = TypeAdapter(annotated)
            values = []
            for candidate in candidates:
                if isinstance(candidate, str):
                    raise _problem(f"{where}: {candidate!r} is not a number")
                try:
                    values.append(adapter.validate_python(candidate))
                except ValidationError as error:
                    message = " ".join(str(error.errors(include_url=False)[0]["msg"]).split())
                    raise _problem(f"{where}: {candidate!r} is not a valid {name}: {message}") from None
            candidates = values
        checked[name] = candidates
    return checked


@dataclass(frozen=True)
class ChoiceStep:
    """One choice step of an episode: a hyperparameter and the values the policy picks from."""

    name: str
    values: tuple[Any, ...]
    apply: Callable[[Any, Any], None] | None = None  # a plugin's; None for a built-in name

    @property
    def builtin(self) -> bool:
        return self.apply is None


def declared_choices(specs: Iterable[Any]) -> dict[str, HyperparameterChoice]:
    """The hyperparameter choices the given component records declare, by name."""
    declared: dict[str, HyperparameterChoice] = {}
    for spec in specs:
        for choice in getattr(spec, "choices", ()) or ():
            declared.setdefault(choice.name, choice)
    return declared


def run_choices(config: Any) -> dict[str, HyperparameterChoice]:
    """What a run's selected components (a :class:`reml_core.config.RunConfig`) declare."""
    selected = [getattr(config, section, None) for section in ("task", "encoder", "pool", "reward", "policy")]
    return declared_choices(item.spec for item in selected if item is not None)


def choice_steps(
    choose: Mapping[str, Sequence[Any]],
    declared: Mapping[str, HyperparameterChoice] | Iterable[HyperparameterChoice] = (),
) -> list[ChoiceStep]:
    """The episode's choice steps for ``env.choose``: built-in names first in :data:`BUILTIN`'s order,
    then plugin names sorted (an order that no config file's key order can change, so a checkpoint's
    action indices keep their meaning). An unknown name or a value a plugin does not offer is a
    :class:`ConfigError` naming the key."""
    if not isinstance(declared, Mapping):
        declared = {choice.name: choice for choice in declared}
    problems = []
    steps = [ChoiceStep(name, tuple(choose[name])) for name in BUILTIN_CHOICES if name in choose]
    for name in sorted(set(choose) - set(BUILTIN_CHOICES)):
        choice = declared.get(name)
        if choice is None:
            offered = ", ".join([*BUILTIN_CHOICES, *sorted(declared)])
            problems.append(f"env.choose.{name}: no such hyperparameter to choose; choosable in this run: {offered}")
            continue
        foreign = [value for value in choose[name] if value not in choice.values]
        if foreign:
            problems.append(
                f"env.choose.{name}: {foreign[0]!r} is not one of its values {list(choice.values)!r} "
                f"({choice.description})"
            )
            continue
        steps.append(ChoiceStep(name, tuple(choose[name]), choice.apply))
    if problems:
        raise ConfigError(problems)
    return steps


def settings_for(config: EnvConfig, chosen: Sequence[tuple[str, Any]]) -> EnvConfig:
    """The env settings an episode runs with: ``config`` with the built-in values the policy chose."""
    update = {name: value for name, value in chosen if name in BUILTIN}
    if not update:
        return config
    if "finetune_steps" in update:
        update["meta_steps"] = [int(update["finetune_steps"])]  # the protocol update trains for the chosen adaptation
    return config.model_copy(update=update)


def apply_choices(
    network: Any, chosen: Sequence[tuple[str, Any]], appliers: Mapping[str, Callable[[Any, Any], None]]
) -> Any:
    """``network`` with each plugin-declared chosen value applied in place (built-in ones need nothing here)."""
    for name, value in chosen:
        apply = appliers.get(name)
        if apply is not None:
            apply(network, value)
    return network


def has_plugin_choice(chosen: Sequence[tuple[str, Any]]) -> bool:
    return any(name not in BUILTIN for name, _ in chosen)


# -- what the policy chose on the test tasks ------------------------------------------------------


@dataclass(frozen=True)
class ChoiceRecord:
    """What the policy chose for one test task at one K."""

    task_id: str
    shots: int
    descriptor: tuple[float, ...]
    values: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "shots": self.shots,
            "descriptor": list(self.descriptor),
            "values": dict(self.values),
        }


def summarise(records: Sequence[ChoiceRecord], descriptor_names: Sequence[str] = ()) -> dict[str, Any]:
    """For results.json: per K, per hyperparameter, per chosen value: how many test tasks got it and
    the mean of each task descriptor over them (so "which kinds of task" is answerable), plus every record."""
    per_shots: dict[str, dict[str, dict[str, Any]]] = {}
    names = list(descriptor_names)
    for record in records:
        for name, value in record.values.items():
            entry = (
                per_shots.setdefault(str(record.shots), {})
                .setdefault(name, {})
                .setdefault(_value_key(value), {"value": value, "count": 0, "_sums": [0.0] * len(record.descriptor)})
            )
            entry["count"] += 1
            if len(entry["_sums"]) == len(record.descriptor):
                entry["_sums"] = [a + float(b) for a, b in zip(entry["_sums"], record.descriptor)]
    for by_name in per_shots.values():
        for by_value in by_name.values():
            for entry in by_value.values():
                sums = entry.pop("_sums")
                labels = names if len(names) == len(sums) else [f"descriptor_{i}" for i in range(len(sums))]
                entry["mean_descriptor"] = {label: total / entry["count"] for label, total in zip(labels, sums)}
    return {"summary": per_shots, "tasks": [record.to_dict() for record in records]}


def merge(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several runs' :func:`summarise` dicts (a benchmark's seeds) as one: every task record of every
    run, summarised again (a task chosen for by three seeds counts three times)."""
    records = [
        ChoiceRecord(str(t["task_id"]), int(t["shots"]), tuple(float(v) for v in t["descriptor"]), dict(t["values"]))
        for summary in summaries
        for t in summary.get("tasks", ())
    ]
    names: list[str] = []
    for summary in summaries:  # the descriptor's names, as the runs' summaries recorded them
        for by_name in summary.get("summary", {}).values():
            for by_value in by_name.values():
                for entry in by_value.values():
                    names = names or [n for n in entry.get("mean_descriptor", {}) if not n.startswith("descriptor_")]
    return summarise(records, names)


def _value_key(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def report_section(choices: Mapping[str, Any] | None, method: str = "") -> list[str]:
    """Markdown lines of a report's "Hyperparameters the policy chose" section (none without choices);
    ``method`` names whose choices they are when a report holds several (a benchmark's REML rows)."""
    if not choices or not choices.get("summary"):
        return []
    lines = [
        "## Hyperparameters the policy chose" + (f": {method}" if method else ""),
        "",
        "Per test task and K, after composing the network (`env.choose`); mean task descriptor of the tasks that got "
        "each value.",
        "",
    ]
    for shots, by_name in sorted(choices["summary"].items(), key=lambda item: int(item[0])):
        for name, by_value in by_name.items():
            total = sum(entry["count"] for entry in by_value.values())
            lines.append(f"- K = {shots}, `{name}`:")
            for key, entry in sorted(by_value.items(), key=lambda item: _sort_key(item[1]["value"])):
                means = ", ".join(f"{label} {mean:.3g}" for label, mean in entry["mean_descriptor"].items())
                share = 100.0 * entry["count"] / total if total else 0.0
                lines.append(
                    f"  - {key}: {entry['count']} of {total} tasks ({share:.0f}%)"
                    + (f"; mean {means}" if means else "")
                )
    lines.append("")
    return lines


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))
