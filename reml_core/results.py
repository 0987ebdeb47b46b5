"""``results.json`` (schema ``reml.results/2``, see docs/results.md): the typed results every
command builds and their one serialisation.

:class:`CellResult`, :data:`Table`, :class:`EncoderInfo` and :class:`ResultsDocument` are what
``reml-run``, ``reml-bench`` (per seed and over seeds) and :func:`reml_core.load` hold; a document
is written by :meth:`ResultsDocument.to_json` and read by :meth:`ResultsDocument.from_json`, nowhere
else. What people read (the Markdown reports, tables and the wording of statistics) is
:mod:`reml_core.reports`.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from reml_core import __version__
from reml_core.errors import UserError
from reml_core.storage import read_json_file

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
    for package in (
        "reml",
        "torch",
        "numpy",
        "gymnasium",
        "stable-baselines3",
        "sb3-contrib",
        "learn2learn",
        "pydantic",
        "pluggy",
    ):
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
        return cls(
            finite_or_none(cell.mse_mean),
            finite_or_none(cell.mse_ci95),
            None,
            cell.nan_tasks,
            {name: (finite_or_none(mean), finite_or_none(ci)) for name, (mean, ci) in cell.metrics.items()},
        )

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
        data: dict[str, Any] = {
            "mse_mean": finite_or_none(self.mean),
            "mse_ci95": finite_or_none(self.ci95),
            "nan_tasks": self.nan_tasks,
        }
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
            _number(data.get("mse_mean"), f"{where}.mse_mean"),
            _number(data.get("mse_ci95"), f"{where}.mse_ci95"),
            _number(data.get("seed_spread"), f"{where}.seed_spread"),
            _count(data.get("nan_tasks", 0), f"{where}.nan_tasks"),
            {
                name: (
                    _number(data.get(f"{name}_mean"), f"{where}.{name}_mean"),
                    _number(data.get(f"{name}_ci95"), f"{where}.{name}_ci95"),
                )
                for name in metrics
            },
            {
                name: _number(data[f"{name}_seed_spread"], f"{where}.{name}_seed_spread")
                for name in metrics
                if f"{name}_seed_spread" in data
            },
        )


# -- reading a results file: every field of the type the schema gives it ---------------------------


def _number(value: Any, where: str = "value") -> float | None:
    """A number of a results file: finite, or null (REML writes a NaN as null and never writes an infinity)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {value!r} is not a number")
    if not math.isfinite(value):
        raise ValueError(
            f"{where}: {value!r} is not a finite number (REML writes null for a number it could not measure)"
        )
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
    return {
        _key(k, f"{where}"): {
            _key(s, f"{where}.{k}"): CellResult.from_json(cell, f"{where}.{k}.{s}")
            for s, cell in _mapping(row, f"{where}.{k}").items()
        }
        for k, row in _mapping(data, where).items()
    }


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
        known = cast("list[float]", means)  # none is None (above)
        ci = float(np.mean(cast("list[float]", cis))) if all(c is not None for c in cis) else None
        spread = float(np.std(known, ddof=1)) if len(known) > 1 else None
        return float(np.mean(known)), ci, spread

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
    return {
        k: {
            s: aggregate_cells([table[k][s] for table in tables])
            for s in row
            if all(s in table.get(k, {}) for table in tables)
        }
        for k, row in tables[0].items()
    }


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
        return jsonable(
            {
                "env_steps": self.env_steps,
                "resumes": self.resumes,
                "selected_checkpoint": None
                if selected is None
                else {"name": selected.name, "timesteps": selected.timesteps, "score": selected.score},
                "history": [dict(record) for record in self.history],
                "policy_stats": dict(self.policy_stats),
            }
        )

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
                _number(selected.get("score"), f"{where}.selected_checkpoint.score"),
            )
        else:
            chosen = None
        return cls(
            _count(data["env_steps"], f"{where}.env_steps"),
            _count(data.get("resumes") or 0, f"{where}.resumes"),
            chosen,
            [dict(_mapping(record, f"{where}.history[{index}]")) for index, record in enumerate(history)],
            stats,
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
    #: What predictors that learn nothing score on the same test tasks
    #: (:func:`reml_core.evaluation.trivial_references`):
    #: ``"predict zero"`` and ``"support mean"``, each a table with one column (0 steps). Not methods: never ranked or
    #: plotted.
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
        named = {**METHOD_LABELS, **(self.labels if self.labels is not None else _V1_LABELS)}
        labels = {}
        for key in self.tables:
            stem = key.removesuffix(OWN_RATE_SUFFIX)
            name = self.method_name(stem)
            if key != stem:  # own-rate rows: "Meta-SGD (learned rates)"
                name = f"{name} ({named.get(key) or 'own rate'})"
            elif key + OWN_RATE_SUFFIX in self.tables:  # their fixed-rate twin: "Meta-SGD (protocol rate 0.01)"
                name = f"{name} (protocol rate {self.protocol_rate()})"
            labels[key] = name
        return labels

    def method_name(self, key: str) -> str:
        """A method's name without the words telling its fixed-rate and own-rate rows apart ("REML (support-set)")."""
        encoders = self.encoders or {"reml": EncoderInfo(self.encoder, self.encoder_privileged)}
        if key in encoders:
            return reml_label(encoders[key].name, encoders[key].privileged)
        named = {**METHOD_LABELS, **(self.labels if self.labels is not None else _V1_LABELS)}
        return named.get(key, key)

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
            "schema": SCHEMA,
            "plugin": self.plugin,
            "policy": self.policy,
            "encoder": self.encoder,
            "encoder_privileged": self.encoder_privileged,
            "seed": self.seed,
            "test_tasks": self.test_tasks,
            "methods": {key: table_to_json(table, spreads=bench) for key, table in self.tables.items()},
            "curves": {key: [finite_or_none(v) for v in curve] for key, curve in self.curves.items()},
            "timing_s": {name: finite_or_none(round(seconds, 3)) for name, seconds in self.timing.items()},
            "versions": dict(self.versions),
            "config": dict(self.config),
            "command": self.command,
            "loss_name": self.loss_name,
            "components": dict(self.components),
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
        data["encoders"] = {
            key: {"name": info.name, "privileged": info.privileged} for key, info in self.encoders.items()
        }
        data["budgets"] = dict(self.budgets)
        if not bench:
            data["sources"] = dict(self.sources.get(self.seed, {}))
            return data
        data["sources"] = {str(seed): dict(found) for seed, found in self.sources.items()}
        data["seeds"] = {
            str(seed): {"methods": {key: table_to_json(table) for key, table in tables.items()}}
            for seed, tables in self.per_seed.items()
        }
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
            raise UserError(
                f"{where} holds results of schema {schema!r}, which REML {__version__} cannot read (it reads "
                f"{' and '.join(READABLE_SCHEMAS)}); read it with the REML that wrote it, or a newer one"
            )
        try:
            return cls._read(data)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            problem = f"no {error.args[0]!r}" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
            raise UserError(f"{where} is not a REML results file ({problem})") from None

    @classmethod
    def _read(cls, data: Mapping[str, Any]) -> ResultsDocument:
        data = _mapping(data, "the file")
        kind: Kind = "bench" if "seed_list" in data else "seed" if "budgets" in data else "run"
        config = dict(
            _mapping(data["config"], "config")
        )  # with "methods", what every results file holds; the rest has defaults
        tables = {
            str(key): table_from_json(table, f"methods.{key}")
            for key, table in _mapping(data["methods"], "methods").items()
        }
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
            per_seed[_key(str(s), "seeds")] = {
                str(key): table_from_json(table, f"seeds.{s}.methods.{key}") for key, table in methods.items()
            }
        encoders = {}
        for key, info in _mapping(data.get("encoders") or {}, "encoders").items():
            info = _mapping(info, f"encoders.{key}")
            encoders[str(key)] = EncoderInfo(
                _text(info["name"], f"encoders.{key}.name"), _flag(info["privileged"], f"encoders.{key}.privileged")
            )
        labels = data.get("labels")
        optional = {name: data.get(name) for name in ("preset", "executor")}
        for name, value in optional.items():
            if value is not None:
                _text(value, name)
        return cls(
            kind=kind,
            plugin=_text(data.get("plugin", config.get("plugin", "")), "plugin"),
            policy=_text(data.get("policy", ""), "policy"),
            encoder=_text(data.get("encoder", ""), "encoder"),
            encoder_privileged=_flag(data.get("encoder_privileged", False), "encoder_privileged"),
            seed=seed,
            test_tasks=_count(data.get("test_tasks", 0), "test_tasks"),
            tables=tables,
            curves={
                str(key): _numbers(curve, f"curves.{key}")
                for key, curve in _mapping(data.get("curves") or {}, "curves").items()
            },
            timing={
                str(key): seconds
                for key, value in _mapping(data.get("timing_s") or {}, "timing_s").items()
                if (seconds := _number(value, f"timing_s.{key}")) is not None
            },  # null: not measured (a loaded baseline's training)
            config=config,
            versions=_texts(data.get("versions") or {}, "versions"),
            command=_text(data.get("command") or "", "command"),
            loss_name=_text(data.get("loss_name") or "MSE", "loss_name"),
            labels=None if labels is None else _texts(labels, "labels"),
            components=_texts(data.get("components") or {}, "components"),
            training={
                str(key): TrainingRecord.from_json(record, "training" if kind == "run" else f"training.{key}")
                for key, record in training.items()
            },
            encoders=encoders,
            budgets=_texts(data.get("budgets") or {}, "budgets"),
            sources=sources,
            seeds=[_integer(s, f"seed_list[{index}]") for index, s in enumerate(seed_list)],
            per_seed=per_seed,
            preset=optional["preset"],
            executor=optional["executor"],
            choices={
                str(key): dict(_mapping(value, f"choices.{key}"))
                for key, value in _mapping(data.get("choices") or {}, "choices").items()
            },
            references={
                str(name): table_from_json(table, f"references.{name}")
                for name, table in _mapping(data.get("references") or {}, "references").items()
            },
        )


def read_results(path: Any) -> ResultsDocument:
    """The ``results.json`` at ``path``, typed; a missing or damaged file is a :class:`UserError`."""
    return ResultsDocument.from_json(
        read_json_file(path, "a REML results file (a JSON object)", error=UserError), str(path)
    )


def reml_label(encoder: str, privileged: bool) -> str:
    """How tables and plots name REML: with its encoder, and a warning when that encoder is privileged."""
    return f"REML ({encoder}, privileged)" if privileged else f"REML ({encoder})"
