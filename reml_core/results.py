"""``results.json`` (schema ``reml.results/2``, see docs/results.md): the typed results every
command builds, their one serialisation, and every Markdown report.

- :class:`CellResult`, :data:`Table`, :class:`EncoderInfo` and :class:`ResultsDocument` are what
  ``reml-run``, ``reml-bench`` (per seed and over seeds) and :func:`reml_core.load` hold; a
  document is written by :meth:`ResultsDocument.to_json` and read by
  :meth:`ResultsDocument.from_json`, nowhere else.
- :func:`render_run_report`, :func:`render_bench_report` and :func:`render_sweep_report` make every
  Markdown report (``report.md``, ``sweep.md``).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from reml_core.choices import report_section as choices_report_section
from reml_core.errors import UserError

if TYPE_CHECKING:  # the evaluator needs torch; reading and reporting results does not
    from reml_core.evaluation import Cell, FewShotTable

SCHEMA = "reml.results/2"
#: The layouts this version reads (a file naming another one was written by another REML).
READABLE_SCHEMAS = ("reml.results/1", SCHEMA)
#: ``reml.results/1`` files (the layout before this one) are still read by reports, plots and the
#: README tool: they kept the policy's invalid-argmax rate as ``training.invalid_argmax_rate`` and
#: recorded no ``labels`` or ``components``; this is how they showed the built-in baselines.
_V1_LABELS = {"maml": "MAML"}
#: Display names of methods a results file does not label itself (REML's own; baselines name
#: themselves through ``BaselineSpec.label``, recorded under ``labels``).
METHOD_LABELS = {"reml": "REML", "reml-search": "REML pool + search (no policy)"}
#: The measure every cell holds: the family's query loss (named ``mse`` in the schema).
LOSS = "mse"
#: The suffix of a method key whose rows were adapted at the method's own rate (Meta-SGD's learned
#: rates, a rate REML's policy chose), beside the key's fixed-rate rows: the same string as
#: :data:`reml_core.evaluation.OWN_RATE_SUFFIX` (kept here so reading results needs no torch). Its
#: ``labels`` entry holds the words that name the own rate ("learned rates"), see :meth:`ResultsDocument.method_labels`.
OWN_RATE_SUFFIX = "@own-rate"

#: Suffixes of diagnostic and statistic names whose values are fractions, shown as percentages.
FRACTION_SUFFIXES = ("_units", "_rate", "_fraction")

Kind = Literal["run", "seed", "bench"]


def plural(count: int, noun: str) -> str:
    """``1 step``, ``2 steps``, ``2,048 env steps``: a count and its noun, pluralised (nouns here take an s)."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def stat_label(key: str) -> str:
    """``pool/dead_hidden_units`` -> ``dead hidden units``: a component's number named for people."""
    return key.rpartition("/")[2].replace("_", " ")


#: What a number a component reports means, in plain words, for the reports that show it.
STAT_MEANINGS = {
    "invalid_argmax_rate": "the share of the policy's decisions on test tasks where the choice it rated most likely was "
                           "not allowed (masked) and the best allowed one was taken instead",
}


def stat_meanings(keys: Iterable[str]) -> str:
    """A sentence explaining the reported numbers that need it (empty when none does)."""
    known = [f"{stat_label(key).capitalize()}: {STAT_MEANINGS[key.rpartition('/')[2]]}." for key in keys if key.rpartition("/")[2] in STAT_MEANINGS]
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


def finite_or_none(value: float | None) -> float | None:
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


def versions() -> dict[str, str]:
    """Versions of Python and of every package that shapes the numbers."""
    found = {"python": platform.python_version()}
    for package in ("reml", "torch", "numpy", "gymnasium", "stable-baselines3", "sb3-contrib", "learn2learn", "pydantic", "pluggy"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


# -- the typed results -------------------------------------------------------------------------


@dataclass(frozen=True)
class CellResult:
    """One (method, K, steps) cell: the query loss over the test tasks, and the family's metrics.

    ``mean``/``ci95``: the loss's mean and 95% CI half-width over tasks (None where a task's
    fine-tuning diverged: ``nan_tasks`` says how many). For a benchmark, the mean over seeds of
    the seeds' means and of their CIs, and ``seed_spread`` the standard deviation of the seeds'
    means (None for one seed). ``metrics`` maps e.g. ``"accuracy"`` to ``(mean, ci95)`` and
    ``metric_spreads`` to its spread between seeds.
    """

    mean: float | None
    ci95: float | None
    seed_spread: float | None = None
    nan_tasks: int = 0
    metrics: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    metric_spreads: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def of(cls, cell: Cell) -> CellResult:
        """The evaluator's cell as recorded (a non-finite number becomes None)."""
        return cls(finite_or_none(cell.mse_mean), finite_or_none(cell.mse_ci95), None, cell.nan_tasks,
                   {name: (finite_or_none(mean), finite_or_none(ci)) for name, (mean, ci) in cell.metrics.items()})

    @property
    def measures(self) -> list[str]:
        """``"mse"`` (the loss) and the family's metrics, in order."""
        return [LOSS, *self.metrics]

    def measure(self, name: str) -> tuple[float | None, float | None, float | None]:
        """(mean, ci95, seed spread) of the loss (``"mse"``) or of a metric."""
        if name == LOSS:
            return self.mean, self.ci95, self.seed_spread
        mean, ci = self.metrics.get(name, (None, None))
        return mean, ci, self.metric_spreads.get(name)

    def to_json(self, *, spreads: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {"mse_mean": finite_or_none(self.mean), "mse_ci95": finite_or_none(self.ci95), "nan_tasks": self.nan_tasks}
        if spreads:
            data["seed_spread"] = finite_or_none(self.seed_spread)
        for name, (mean, ci) in self.metrics.items():
            data[f"{name}_mean"], data[f"{name}_ci95"] = finite_or_none(mean), finite_or_none(ci)
            if spreads:
                data[f"{name}_seed_spread"] = finite_or_none(self.metric_spreads.get(name))
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "cell") -> CellResult:
        data = _mapping(data, where)
        metrics = [key[: -len("_mean")] for key in data if key.endswith("_mean") and key != "mse_mean"]
        return cls(
            _number(data.get("mse_mean"), f"{where}.mse_mean"), _number(data.get("mse_ci95"), f"{where}.mse_ci95"),
            _number(data.get("seed_spread"), f"{where}.seed_spread"), _count(data.get("nan_tasks", 0), f"{where}.nan_tasks"),
            {name: (_number(data.get(f"{name}_mean"), f"{where}.{name}_mean"), _number(data.get(f"{name}_ci95"), f"{where}.{name}_ci95"))
             for name in metrics},
            {name: _number(data[f"{name}_seed_spread"], f"{where}.{name}_seed_spread") for name in metrics if f"{name}_seed_spread" in data},
        )


# -- reading a results file: every field of the type the schema gives it ---------------------------


def _number(value: Any, where: str = "value") -> float | None:
    """A number of a results file: finite, or null (REML writes a NaN as null and never writes an infinity)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {value!r} is not a number")
    if not math.isfinite(value):
        raise ValueError(f"{where}: {value!r} is not a finite number (REML writes null for a number it could not measure)")
    return float(value)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{where}: {value!r} is not a non-negative integer")
    return value


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {value!r} is not an integer")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where}: {value!r} is not a string")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {value!r} is not true or false")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{where}: {type(value).__name__} where a JSON object belongs")
    return value


def _texts(value: Any, where: str) -> dict[str, str]:
    return {str(key): _text(item, f"{where}.{key}") for key, item in _mapping(value, where).items()}


def _numbers(value: Any, where: str) -> list[float | None]:
    if not isinstance(value, list):
        raise TypeError(f"{where}: {type(value).__name__} where a JSON list belongs")
    return [_number(item, f"{where}[{index}]") for index, item in enumerate(value)]


def _key(value: str, where: str) -> int:
    """A table's K or step count, a JSON object key: ``"5"``."""
    if not value.isdigit():
        raise ValueError(f"{where}: {value!r} is not a count")
    return int(value)


#: One method's few-shot results: ``{K: {steps: cell}}``.
Table = dict[int, dict[int, CellResult]]


def table_of(table: FewShotTable) -> Table:
    """The evaluator's table as recorded."""
    return {int(k): {int(s): CellResult.of(cell) for s, cell in row.items()} for k, row in table.items()}


def table_to_json(table: Table, *, spreads: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"K": {"steps": cell}}``, the layout of ``results.json``'s ``methods``."""
    return {str(k): {str(s): cell.to_json(spreads=spreads) for s, cell in row.items()} for k, row in table.items()}


def table_from_json(data: Mapping[str, Mapping[str, Mapping[str, Any]]], where: str = "table") -> Table:
    return {_key(k, f"{where}"): {_key(s, f"{where}.{k}"): CellResult.from_json(cell, f"{where}.{k}.{s}")
                                  for s, cell in _mapping(row, f"{where}.{k}").items()}
            for k, row in _mapping(data, where).items()}


def cell_to_json(cell: Cell) -> dict[str, Any]:
    """An evaluator's cell in the layout of ``results.json``."""
    return CellResult.of(cell).to_json()


def aggregate_cells(cells: Sequence[CellResult]) -> CellResult:
    """One cell over seeds: the mean of the seeds' means and CIs, and the standard deviation of the
    means (None for one seed); a measure any seed could not measure (NaN) stays None."""

    def over(measure: str) -> tuple[float | None, float | None, float | None]:
        means = [cell.measure(measure)[0] for cell in cells]
        cis = [cell.measure(measure)[1] for cell in cells]
        if any(mean is None for mean in means):
            return None, None, None
        ci = float(np.mean(cis)) if all(c is not None for c in cis) else None
        spread = float(np.std(means, ddof=1)) if len(means) > 1 else None
        return float(np.mean(means)), ci, spread

    mean, ci, spread = over(LOSS)
    metrics, spreads = {}, {}
    for name in cells[0].metrics:
        metric_mean, metric_ci, metrics_spread = over(name)
        metrics[name], spreads[name] = (metric_mean, metric_ci), metrics_spread
    return CellResult(mean, ci, spread, sum(cell.nan_tasks for cell in cells), metrics, spreads)


def aggregate_tables(tables: Sequence[Table]) -> Table:
    """Cell by cell over seeds (the tables have the same K and steps: the same protocol).

    A method that chooses its number of steps per task (own-rate rows) may leave a step column
    empty in some seed; such a cell is left out (reports show "-"), never averaged over some seeds only.
    """
    return {k: {s: aggregate_cells([table[k][s] for table in tables]) for s in row if all(s in table.get(k, {}) for table in tables)}
            for k, row in tables[0].items()}


def aggregate_curves(curves: Sequence[Sequence[float | None]]) -> list[float | None]:
    """The mean curve over seeds that have one (a step that diverged in any seed is None)."""
    stacked = [[math.nan if v is None else v for v in curve] for curve in curves if curve]
    if not stacked:
        return []
    return [finite_or_none(float(v)) for v in np.mean(np.asarray(stacked, dtype=np.float64), axis=0)]


@dataclass(frozen=True)
class SelectedCheckpoint:
    """The checkpoint a run evaluated: the best on validation tasks (``final`` when none scored)."""

    name: str
    timesteps: int
    score: float | None  # its validation score (mean query loss on validation tasks); None when none was finite


@dataclass(frozen=True)
class TrainingRecord:
    """REML's meta-training as a results file records it.

    ``history`` holds one record per checkpoint: ``timesteps``, the ``validation/...`` numbers and
    whatever ``pool/<name>`` numbers the pool's ``diagnostics`` returned. ``policy_stats`` holds the
    numbers the policy backend reports about itself through ``stats()``.
    """

    env_steps: int
    resumes: int = 0
    selected_checkpoint: SelectedCheckpoint | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    policy_stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        selected = self.selected_checkpoint
        return jsonable({
            "env_steps": self.env_steps, "resumes": self.resumes,
            "selected_checkpoint": None if selected is None else {"name": selected.name, "timesteps": selected.timesteps, "score": selected.score},
            "history": [dict(record) for record in self.history], "policy_stats": dict(self.policy_stats),
        })

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "training") -> TrainingRecord:
        data = _mapping(data, where)
        selected = data.get("selected_checkpoint")
        stats = dict(_mapping(data.get("policy_stats") or {}, f"{where}.policy_stats"))
        if "invalid_argmax_rate" in data and not stats:  # reml.results/1 kept it beside the other numbers
            stats["invalid_argmax_rate"] = data["invalid_argmax_rate"]
        history = data.get("history") or []
        if not isinstance(history, list):
            raise TypeError(f"{where}.history: {type(history).__name__} where a JSON list belongs")
        if selected:
            selected = _mapping(selected, f"{where}.selected_checkpoint")
            chosen: SelectedCheckpoint | None = SelectedCheckpoint(
                _text(selected["name"], f"{where}.selected_checkpoint.name"),
                _count(selected["timesteps"], f"{where}.selected_checkpoint.timesteps"),
                _number(selected.get("score"), f"{where}.selected_checkpoint.score"))
        else:
            chosen = None
        return cls(
            _count(data["env_steps"], f"{where}.env_steps"), _count(data.get("resumes") or 0, f"{where}.resumes"), chosen,
            [dict(_mapping(record, f"{where}.history[{index}]")) for index, record in enumerate(history)], stats,
        )


@dataclass(frozen=True)
class EncoderInfo:
    """A REML method's state encoder, and whether it sees privileged task information."""

    name: str
    privileged: bool


@dataclass
class ResultsDocument:
    """A ``results.json``: a run's (``kind="run"``), one seed of a benchmark's (``"seed"``, in
    ``seed-<s>/``) or a benchmark's over its seeds (``"bench"``).

    Method keys are ``"reml"`` (``"reml:<encoder>"`` when a benchmark trains REML with several
    encoders) and baseline names. ``training`` holds each REML method's training record (of the
    first seed, for a benchmark); ``sources`` where each method came from, per seed; ``per_seed`` a
    benchmark's tables per seed.
    """

    kind: Kind
    plugin: str
    policy: str
    encoder: str
    encoder_privileged: bool
    seed: int
    test_tasks: int
    tables: dict[str, Table]
    curves: dict[str, list[float | None]]
    timing: dict[str, float]
    config: dict[str, Any]
    versions: dict[str, str] = field(default_factory=versions)
    command: str = ""
    loss_name: str = "MSE"
    labels: dict[str, str] | None = None  # the baselines' display names (None: a reml.results/1 file)
    components: dict[str, str] = field(default_factory=dict)
    training: dict[str, TrainingRecord] = field(default_factory=dict)
    encoders: dict[str, EncoderInfo] = field(default_factory=dict)
    budgets: dict[str, str] = field(default_factory=dict)
    sources: dict[int, dict[str, str]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    per_seed: dict[int, dict[str, Table]] = field(default_factory=dict)
    preset: str | None = None
    executor: str | None = None
    #: What a method's policy chose on the test tasks (env.choose), by method key: reml_core.choices.summarise's dict.
    choices: dict[str, Any] = field(default_factory=dict)
    #: What predictors that learn nothing score on the same test tasks (:func:`reml_core.evaluation.trivial_references`):
    #: ``"predict zero"`` and ``"support mean"``, each a table with one column (0 steps). Not methods: never ranked or plotted.
    references: dict[str, Table] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(self.tables)

    @property
    def seed_list(self) -> list[int]:
        """The seeds the numbers come from."""
        return self.seeds or [self.seed]

    @property
    def reml_training(self) -> TrainingRecord | None:
        """A run's REML training record (None when none was recorded)."""
        return self.training.get("reml")

    def method_labels(self) -> dict[str, str]:
        """Display names of the methods; REML's say which encoder, and whether it is privileged."""
        encoders = self.encoders or {"reml": EncoderInfo(self.encoder, self.encoder_privileged)}
        reml = {key: reml_label(info.name, info.privileged) for key, info in encoders.items()}
        named = {**METHOD_LABELS, **(self.labels if self.labels is not None else _V1_LABELS)}
        labels = {}
        for key in self.tables:
            stem = key.removesuffix(OWN_RATE_SUFFIX)
            name = reml.get(stem, named.get(stem, stem))
            if key != stem:  # own-rate rows: "Meta-SGD (learned rates)"
                name = f"{name} ({named.get(key) or 'own rate'})"
            elif key + OWN_RATE_SUFFIX in self.tables:  # their fixed-rate twin: "Meta-SGD (protocol rate 0.01)"
                name = f"{name} (protocol rate {self.protocol_rate()})"
            labels[key] = name
        return labels

    def protocol_rate(self) -> str:
        """The protocol's fixed SGD rate (``eval.sgd_lr``), as reports show it."""
        rate = (self.config.get("eval") or {}).get("sgd_lr")
        return f"{rate:g}" if isinstance(rate, (int, float)) else str(rate)

    @property
    def own_rate_methods(self) -> list[str]:
        """Keys of the rows adapted at a method's own rate (see :data:`OWN_RATE_SUFFIX`)."""
        return [key for key in self.tables if key.endswith(OWN_RATE_SUFFIX)]

    def own_rate_labels(self) -> set[str]:
        """Display names of the own-rate rows (tables show them unranked)."""
        labels = self.method_labels()
        return {labels[key] for key in self.own_rate_methods}

    def labelled(self, by_method: Mapping[str, Any]) -> dict[str, Any]:
        """``by_method`` keyed by display name instead."""
        labels = self.method_labels()
        return {labels.get(key, key): value for key, value in by_method.items()}

    # -- the one serialisation ------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """This document in the layout of ``reml.results/2`` (non-finite numbers as null)."""
        bench = self.kind == "bench"
        data: dict[str, Any] = {
            "schema": SCHEMA, "plugin": self.plugin, "policy": self.policy, "encoder": self.encoder,
            "encoder_privileged": self.encoder_privileged, "seed": self.seed, "test_tasks": self.test_tasks,
            "methods": {key: table_to_json(table, spreads=bench) for key, table in self.tables.items()},
            "curves": {key: [finite_or_none(v) for v in curve] for key, curve in self.curves.items()},
            "timing_s": {name: finite_or_none(round(seconds, 3)) for name, seconds in self.timing.items()},
            "versions": dict(self.versions), "config": dict(self.config), "command": self.command,
            "loss_name": self.loss_name, "components": dict(self.components),
        }
        if self.labels is not None:
            data["labels"] = dict(self.labels)
        if self.choices:
            data["choices"] = dict(self.choices)
        if self.references:
            data["references"] = {name: table_to_json(table, spreads=bench) for name, table in self.references.items()}
        if self.kind == "run":
            data["training"] = self.reml_training.to_json() if self.reml_training is not None else {}
            return data
        data["training"] = {key: record.to_json() for key, record in self.training.items()}
        data["encoders"] = {key: {"name": info.name, "privileged": info.privileged} for key, info in self.encoders.items()}
        data["budgets"] = dict(self.budgets)
        if not bench:
            data["sources"] = dict(self.sources.get(self.seed, {}))
            return data
        data["sources"] = {str(seed): dict(found) for seed, found in self.sources.items()}
        data["seeds"] = {str(seed): {"methods": {key: table_to_json(table) for key, table in tables.items()}}
                         for seed, tables in self.per_seed.items()}
        data["seed_list"] = list(self.seeds)
        data["preset"] = self.preset
        data["executor"] = self.executor
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "results.json") -> ResultsDocument:
        """Read a ``reml.results/2`` (or ``/1``) document, every field checked against the type the
        schema gives it; a damaged one, or one of a schema this REML does not know, is a
        :class:`UserError` naming ``where`` (and the field)."""
        schema = data.get("schema") if isinstance(data, Mapping) else None
        if schema is not None and schema not in READABLE_SCHEMAS:
            from reml_core import __version__

            raise UserError(f"{where} holds results of schema {schema!r}, which REML {__version__} cannot read (it reads "
                            f"{' and '.join(READABLE_SCHEMAS)}); read it with the REML that wrote it, or a newer one")
        try:
            return cls._read(data)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            problem = f"no {error.args[0]!r}" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
            raise UserError(f"{where} is not a REML results file ({problem})") from None

    @classmethod
    def _read(cls, data: Mapping[str, Any]) -> ResultsDocument:
        data = _mapping(data, "the file")
        kind: Kind = "bench" if "seed_list" in data else "seed" if "budgets" in data else "run"
        config = dict(_mapping(data["config"], "config"))  # with "methods", what every results file holds; the rest has defaults
        tables = {str(key): table_from_json(table, f"methods.{key}") for key, table in _mapping(data["methods"], "methods").items()}
        seed = _integer(data.get("seed", config.get("seed", 0)), "seed")
        training = _mapping(data.get("training") or {}, "training")
        if kind == "run":
            training = {"reml": dict(training)} if training else {}
        sources_data = _mapping(data.get("sources") or {}, "sources")
        if kind == "seed":
            sources = {seed: _texts(sources_data, "sources")}
        else:
            sources = {_key(str(s), "sources"): _texts(found, f"sources.{s}") for s, found in sources_data.items()}
        seed_list = data.get("seed_list") or []
        if not isinstance(seed_list, list):
            raise TypeError(f"seed_list: {type(seed_list).__name__} where a JSON list belongs")
        per_seed = {}
        for s, held in _mapping(data.get("seeds") or {}, "seeds").items():
            methods = _mapping(_mapping(held, f"seeds.{s}")["methods"], f"seeds.{s}.methods")
            per_seed[_key(str(s), "seeds")] = {str(key): table_from_json(table, f"seeds.{s}.methods.{key}") for key, table in methods.items()}
        encoders = {}
        for key, info in _mapping(data.get("encoders") or {}, "encoders").items():
            info = _mapping(info, f"encoders.{key}")
            encoders[str(key)] = EncoderInfo(_text(info["name"], f"encoders.{key}.name"), _flag(info["privileged"], f"encoders.{key}.privileged"))
        labels = data.get("labels")
        optional = {name: data.get(name) for name in ("preset", "executor")}
        for name, value in optional.items():
            if value is not None:
                _text(value, name)
        return cls(
            kind=kind, plugin=_text(data.get("plugin", config.get("plugin", "")), "plugin"), policy=_text(data.get("policy", ""), "policy"),
            encoder=_text(data.get("encoder", ""), "encoder"), encoder_privileged=_flag(data.get("encoder_privileged", False), "encoder_privileged"),
            seed=seed, test_tasks=_count(data.get("test_tasks", 0), "test_tasks"), tables=tables,
            curves={str(key): _numbers(curve, f"curves.{key}") for key, curve in _mapping(data.get("curves") or {}, "curves").items()},
            timing={str(key): seconds for key, value in _mapping(data.get("timing_s") or {}, "timing_s").items()
                    if (seconds := _number(value, f"timing_s.{key}")) is not None},  # null: not measured (a loaded baseline's training)
            config=config, versions=_texts(data.get("versions") or {}, "versions"), command=_text(data.get("command") or "", "command"),
            loss_name=_text(data.get("loss_name") or "MSE", "loss_name"),
            labels=None if labels is None else _texts(labels, "labels"),
            components=_texts(data.get("components") or {}, "components"),
            training={str(key): TrainingRecord.from_json(record, "training" if kind == "run" else f"training.{key}")
                      for key, record in training.items()},
            encoders=encoders, budgets=_texts(data.get("budgets") or {}, "budgets"), sources=sources,
            seeds=[_integer(s, f"seed_list[{index}]") for index, s in enumerate(seed_list)],
            per_seed=per_seed, preset=optional["preset"], executor=optional["executor"],
            choices={str(key): dict(_mapping(value, f"choices.{key}")) for key, value in _mapping(data.get("choices") or {}, "choices").items()},
            references={str(name): table_from_json(table, f"references.{name}")
                        for name, table in _mapping(data.get("references") or {}, "references").items()},
        )


def read_results(path: Any) -> ResultsDocument:
    """The ``results.json`` at ``path``, typed; a missing or damaged file is a :class:`UserError`."""
    from reml_core.storage import read_json_file

    return ResultsDocument.from_json(read_json_file(path, "a REML results file (a JSON object)", error=UserError), str(path))


# -- Markdown ----------------------------------------------------------------------------------


def _format_cell(cell: CellResult, best: bool, measure: str = LOSS) -> str:
    """``mean ± CI``; with diverged tasks the mean is over the others and the count follows (``, 3 diverged``)."""
    mean, ci, spread = cell.measure(measure)
    if mean is None:
        text = f"NaN ({plural(cell.nan_tasks, 'task')} diverged)" if cell.nan_tasks else "NaN"
    else:
        text = f"{mean:.3f} ± {ci:.3f}" if ci is not None else f"{mean:.3f}"
        if spread is not None:
            text += f" (seeds ±{spread:.3f})"
        if cell.nan_tasks:
            text += f" ({cell.nan_tasks} diverged)"
    return f"**{text}**" if best else text


def column_best(cells: Sequence[CellResult | None], measure: str = LOSS) -> float | None:
    """The best mean of a column (lowest loss, highest metric) among the cells in which no task diverged:
    a method whose fine-tuning diverged on some tasks never wins its column, whatever its mean over the rest."""
    pick = min if measure == LOSS else max
    means = [cell.measure(measure)[0] for cell in cells if cell is not None and not cell.nan_tasks]
    means = [mean for mean in means if mean is not None]
    return pick(means) if means else None


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
                    cells.append(_format_cell(cell, name not in unranked and is_column_best(cell, best[s], measure), measure) if cell else "-")
                lines.append(f"| {METHOD_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


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
        f"not at the protocol's fixed lr {rate}: the same test tasks, support points, query points and step counts, but they "
        f"are not the protocol's fixed-rate comparison, which the rows marked \"protocol rate {rate}\" and every other row give, "
        "and they are not ranked (never bold). A method that chooses its number of steps for a task is counted in that step "
        "column only (and every task at 0 steps).",
        "",
    ]


#: How a report names each trivial reference (:data:`ResultsDocument.references`).
REFERENCE_WORDS = {
    "predict zero": "predicting 0 for every query point (for classification: the same score for every class, i.e. chance)",
    "support mean": "predicting the mean of the K support targets for every query point",
}


def reference_lines(results: ResultsDocument) -> list[str]:
    """The report's trivial references: what predictors that learn nothing score on the same test
    tasks, per K, so that no number reads as good on its own (none when the file has none)."""
    if not results.references:
        return []
    loss = measure_label(LOSS, results.loss_name)
    lines = [f"Trivial references on the same {results.test_tasks} test tasks (no learning, no fine-tuning); "
             "a method is useful only where it beats them:", ""]
    for name, table in results.references.items():
        parts = []
        for k, row in sorted(table.items()):
            cell = row.get(0)
            if cell is None:
                continue
            measures = [f"{loss} {_plain(cell.mean)}"] + [f"{metric} {_plain(mean)}" for metric, (mean, _) in cell.metrics.items()]
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
SMOKE_WARNING = ("Preset `smoke` is a plumbing check (a short training on a handful of tasks): its numbers say "
                 "nothing about how well any method learns. Use the default or full preset for results.")


def reml_label(encoder: str, privileged: bool) -> str:
    """How tables and plots name REML: with its encoder, and a warning when that encoder is privileged."""
    return f"REML ({encoder}, privileged)" if privileged else f"REML ({encoder})"


def component_lines(results: ResultsDocument) -> list[str]:
    """The facts the run's components stated about themselves (``describe()``), as report lines."""
    if not results.components:
        return []
    return ["## Components", "", *[f"- {section}: {text}" for section, text in results.components.items()], ""]


def encoder_note(results: ResultsDocument) -> str:
    if results.encoder_privileged:
        return (f"State encoder: `{results.encoder}`, which hands the policy privileged task information "
                "(the task's true parameters). No baseline sees it: this is not a fair comparison.")
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
        f"Seed {results.seed}, preset `{config['preset']}`, {results.test_tasks} held-out test tasks. " + encoder_note(results),
        "",
        *smoke_note(config.get("preset")),
        *component_lines(results),
        "## Few-shot learning (Finn et al. 2017 protocol)",
        "",
        f"Each method hands out a starting network per test task; it is fine-tuned with plain SGD "
        f"(lr {evaluation['sgd_lr']}) on the same K support points, and the error is measured on "
        f"the task's separate query points. REML's network comes from "
        f"a deterministic rollout of the policy over the trained pool (checkpoint "
        f"`{selected.name if selected else 'none recorded'}`, chosen on validation tasks).",
        "",
        few_shot_tables(results.labelled(results.tables), results.loss_name, results.own_rate_labels()),
        *reference_lines(results),
        *own_rate_note(results),
        "![few-shot](few_shot.png)",
        "",
        *choices_report_section(results.choices.get("reml")),
        f"## Convergence ({evaluation['curve_steps']} Adam steps, lr {_curve_lr(evaluation)}, on each task's training data)",
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
        + (" The policy backend reports: " + ", ".join(f"{stat_label(key)} {format_stat(key, value)}" for key, value in training.policy_stats.items()) + "."
           + stat_meanings(training.policy_stats) if training.policy_stats else ""),
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
            "different tasks give a different number, so compare these only with each other). \"Gain from fine-tuning\" is the "
            f"validation loss before fine-tuning minus the loss after {longest} SGD steps: how much the K support points helped.",
            "",
            f"| env steps | validation loss after {plural(longest, 'step')} | gain from fine-tuning | "
            + " | ".join(f"pool: {stat_label(key)}" for key in pool_keys) + " |",
            "|---:|---:|---:|" + "---:|" * len(pool_keys),
        ]
        for record in history:
            cells = [format_stat(key, record[key]) if key in record else "" for key in pool_keys]
            lines.append(
                f"| {record['timesteps']} | {_validation(record.get('validation/score'))} | {_validation(record.get('validation/finetune_gain'))} | "
                + " | ".join(cells) + " |"
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
        f"Every method's starting network is fine-tuned with plain SGD (lr {evaluation['sgd_lr']}) on the K support points "
        "and measured on the task's separate query points.",
        "",
        *smoke_note(results.preset or results.config.get("preset")),
        *component_lines(results),
    ]
    for key, info in results.encoders.items():
        note = ("sees the true task parameters (privileged information no baseline gets)"
                if info.privileged else "sees only the K support points, as the baselines do")
        lines.append(f"- {labels[key]}: state encoder `{info.name}`, which {note}.")
    lines += ["", "## Few-shot learning", ""]
    if len(seeds) > 1:
        lines += [f"Cells: mean over {len(seeds)} seeds of the per-seed mean ± the mean 95% CI over tasks; "
                  "\"seeds ±\" is the standard deviation between the seeds' means.", ""]
    lines += [few_shot_tables(results.labelled(results.tables), results.loss_name, results.own_rate_labels()), *reference_lines(results), *own_rate_note(results),
              "![few-shot](few_shot.png)", ""]
    lines += [f"## Convergence ({evaluation['curve_steps']} Adam steps, lr {_curve_lr(evaluation)}, on each task's training data)", "",
              curve_table(results.labelled(results.curves)), "![convergence](convergence.png)", ""]
    lines += ["## Budgets and training time", "", "| method | budget | training wall time (s, all seeds) | source (first seed) |", "|---|---|---:|---|"]
    sources = results.sources.get(seeds[0], {})
    for key in results.tables:
        if key.endswith(OWN_RATE_SUFFIX):
            continue  # the same trained method as its fixed-rate row
        seconds = results.timing.get(f"training_{key}")
        lines.append(f"| {labels[key]} | {results.budgets.get(key, '')} | {'-' if seconds is None else f'{seconds:.1f}'} | {sources.get(key, '')} |")
    total = results.timing.get("total_this_invocation")
    if total is not None:
        lines += ["", f"Total wall time of this invocation: {total:.0f} s."]
    lines += ["", *_versions_lines(results.versions)]
    return "\n".join(lines)


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
    rows = sorted(document["configurations"], key=lambda c: (c["mean"] is None, c["mean"] if c["mean"] is not None else 0.0))
    lines = [
        f"# REML sweep: {document.get('plugin')}",
        "",
        f"Command: `{document.get('command') or 'reml-sweep'}`  ",
        f"{len(document['configurations'])} configurations x {len(document['seeds'])} seed(s) "
        f"({', '.join(str(s) for s in document['seeds'])}) = {len(document['trials'])} trials; status: {document['status']}.",
        "",
        "Objective: the validation score (mean query loss on the validation tasks after fine-tuning; lower is better) "
        "of the checkpoint each trial's trainer selected. Test tasks are not used. Spread: standard deviation "
        "between seeds, and the lowest and highest seed.",
        "",
        "| | configuration | " + " | ".join(f"`{k}`" for k in keys) + " | mean validation score | std | min – max | seeds | mean time (s) |",
        "|---|---|" + "---:|" * len(keys) + "---:|---:|---:|---:|---:|",
    ]
    for c in rows:
        spread = f"{_score(c['min'])} – {_score(c['max'])}" if c["min"] is not None else "—"
        seconds = f"{c['mean_seconds']:.1f}" if c["mean_seconds"] is not None else "—"
        lines.append(
            f"| {'**best**' if c['best'] else ''} | {c['id']} | " + " | ".join(show_value(c["values"].get(k, "")) for k in keys)
            + f" | {_score(c['mean'])} | {_score(c['std'])} | {spread} | {c['seeds_scored']}/{c['seeds']} | {seconds} |"
        )
    lines += ["", "![sweep](sweep.png)", ""]
    best = document.get("best")
    if best:
        lines += [f"Best: `{best['configuration']}` ({describe_values(best['values'])}); its complete config is `best.toml` "
                  "(`reml-run --config best.toml`).", ""]
    lines += ["## Trials", "", "| trial | seed | validation score | status | time (s) | run folder |", "|---|---:|---:|---|---:|---|"]
    for t in document["trials"]:
        lines.append(f"| {t['id']} | {t['seed']} | {_score(t['score'])} | {t['status']} | {t['seconds']:.1f} | `{t['folder']}` |")
    lines += ["", *_versions_lines(document["versions"])]
    return "\n".join(lines)
