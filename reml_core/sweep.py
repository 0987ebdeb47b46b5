"""``reml-sweep``: a grid or random search over config values, each trial an ordinary ``reml-run``.

Output layout::

    OUT/.reml-sweep.json          the folder's marker (what reml-sweep writes here)
    OUT/sweep.json                the plan (search space, every trial), then every score (schema reml.sweep/1)
    OUT/sweep.md, sweep.png       a table and a plot of every configuration: mean and spread over seeds
    OUT/best.toml                 the best configuration, complete: ``reml-run --config OUT/best.toml``
    OUT/configs/<trial>.toml      the exact config each trial runs (``reml-run --config`` takes it)
    OUT/trials/<config>-s<seed>/  an ordinary reml-run folder (``reml-run --resume`` continues it)
    OUT/logs/<trial>.log, .json   what the trial's reml-run printed; each invocation's command, time, exit code
    OUT/tune/                     Ray Tune's experiment (what ``--resume`` restores)

Every configuration (one point of the grid, or one random draw) runs once per seed. The whole
plan is drawn and checked before anything is written: every configuration of every seed is
resolved like ``reml-run`` resolves its flags, so an unknown key or a bad value stops the sweep
at once. Ray Tune schedules the trials (``{"cpu": cpus_per_trial}`` each), keeps the experiment's
state under ``OUT/tune`` and restores it after a kill.

A trial is ``reml-run`` itself, started by the Tune trainable as a child process: Tune calls a
function trainable on a thread, where the trainer cannot install its Ctrl-C/SIGTERM handlers
(Python allows signal handlers only on the main thread), and a process of its own gives each
trial the torch state (seed, threads, deterministic algorithms) a ``reml-run`` starts with, so a
trial is bit-for-bit the ``reml-run`` its config file describes. A trial that was killed is
continued with ``reml-run --resume``; a finished one (``report.md`` written) is never run again.

The objective is the validation score the trainer records at each checkpoint (``validation/score``,
the mean query loss on validation tasks; lower is better) of the checkpoint it selected, read
from the trial's ``results.json`` (``training.selected_checkpoint``). Test tasks never enter it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reml_core.errors import UserError
from reml_core.folders import LOCK, MARKER, SWEEP_MARKER, check_path, clear_for_force, lock_folder, refuse_links
from reml_core.logs import log
from reml_core.results import describe_values as describe
from reml_core.results import read_results, render_sweep_report
from reml_core.results import show_value as show
from reml_core.storage import (
    LEDGER,
    atomic_write_json,
    atomic_write_text,
    link_error,
    open_for_append,
    read_json_file,
    record_written,
    start_ledger,
)

SCHEMA = "reml.sweep/1"
MARKER_FORMAT = "reml.sweep-folder/1"
#: What reml-sweep writes at the top of its folder (named in its marker); ``--force`` removes exactly the files
#: the folder's ledger lists, at every depth (see :mod:`reml_core.folders`).
SWEEP_ENTRIES = ("sweep.json", "sweep.md", "sweep.png", "best.toml", "configs", "trials", "logs", "tune")
TUNE_NAME = "tune"
OBJECTIVE = "validation/score"
#: A sweep larger than this is a typo (a grid's product exploding), not an experiment.
MAX_TRIALS = 10_000
#: How long a restarted trial waits for a killed predecessor's reml-run to checkpoint and let go of its folder.
LOCK_WAIT_S = 120.0
RANDOM_KINDS = ("uniform", "loguniform", "randint", "choice")


# -- the search space -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Dimension:
    """One swept key: a list of values (grid), or a distribution to draw from (random)."""

    key: str
    origin: str  # where it was given: "--grid", "--random" or "[sweep] in FILE"
    values: tuple[Any, ...] = ()  # grid
    spec: str = ""  # random: "loguniform:1e-4:1e-2"

    @property
    def random(self) -> bool:
        return bool(self.spec)


@dataclass(frozen=True)
class SearchSpace:
    grid: tuple[Dimension, ...] = ()
    random: tuple[Dimension, ...] = ()
    samples: int = 1

    def keys(self) -> list[str]:
        return [d.key for d in (*self.grid, *self.random)]

    def origin(self, key: str) -> str:
        return next(d.origin for d in (*self.grid, *self.random) if d.key == key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "grid": {d.key: list(d.values) for d in self.grid},
            "random": {d.key: d.spec for d in self.random},
            "samples": self.samples if self.random else None,
        }


def _check_key(key: str, origin: str) -> str:
    key = key.strip()
    parts = key.split(".")
    if not key or not all(part.strip() for part in parts):
        raise UserError(f"{origin}: expected KEY.PATH=..., got an empty or malformed key {key!r}")
    if key == "seed":
        raise UserError(f"{origin} seed: sweep seeds with --seeds N (seeds --seed .. --seed+N-1), not as a config value")
    return key


def parse_values(text: str, origin: str, key: str) -> tuple[Any, ...]:
    """``0.001,0.003`` -> (0.001, 0.003); each value read as a YAML scalar or list, like ``--set``.

    ``[5,10],[5]`` gives two lists. Repeated values are kept once.
    """
    if not text.strip():
        raise UserError(f"{origin} {key}: no values; give them comma-separated, e.g. {origin} {key}=0.001,0.003")
    from reml_core.config import assignment_value

    # Read as one YAML list where YAML reads all of it as written; else value by value, each taken
    # literally where YAML would drop or change part of it (a comment: /data/a #1, an anchor, ...).
    parsed = assignment_value(f"[{text}]")
    values: list[Any] = parsed if isinstance(parsed, list) else [assignment_value(part) for part in text.split(",")]
    unique: list[Any] = []
    for value in values:
        if value not in unique:
            unique.append(value)
    return tuple(unique)


def parse_grid_flag(text: str) -> Dimension:
    """``--grid env.inner_adam_lr=0.001,0.003``."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise UserError(f"--grid: expected KEY=V1,V2,..., got {text!r} (no '=')")
    key = _check_key(key, "--grid")
    return Dimension(key, "--grid", values=parse_values(raw, "--grid", key))


def parse_random_flag(text: str) -> Dimension:
    """``--random env.inner_adam_lr=loguniform:1e-4:1e-2``."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise UserError(f"--random: expected KEY=DISTRIBUTION (e.g. env.inner_adam_lr=loguniform:1e-4:1e-2), got {text!r} (no '=')")
    key = _check_key(key, "--random")
    return Dimension(key, "--random", spec=check_random_spec(raw.strip(), "--random", key))


def check_random_spec(spec: str, origin: str, key: str) -> str:
    """A distribution: ``uniform:A:B``, ``loguniform:A:B`` (0 < A < B), ``randint:A:B`` (A..B inclusive), ``choice:V1,V2``."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    where = f"{origin} {key}={spec}"
    if kind not in RANDOM_KINDS:
        raise UserError(f"{where}: unknown distribution {kind!r}; use one of {', '.join(k + ':...' for k in RANDOM_KINDS)}")
    if kind == "choice":
        parse_values(rest, origin, key)
        return f"choice:{rest}"
    bounds = rest.split(":")
    try:
        low, high = (int(b) for b in bounds) if kind == "randint" else (float(b) for b in bounds)
    except ValueError:
        example = "randint:1:8" if kind == "randint" else f"{kind}:1e-4:1e-2"
        raise UserError(f"{where}: expected {kind}:LOW:HIGH with {'integer' if kind == 'randint' else 'number'} bounds, e.g. {example}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high or (kind != "randint" and low == high):
        raise UserError(f"{where}: LOW must be below HIGH (got {low} and {high})")
    if kind == "loguniform" and low <= 0:
        raise UserError(f"{where}: loguniform needs LOW > 0 (got {low})")
    return f"{kind}:{rest}"


def draw(spec: str, rng: Any) -> Any:
    """One value from a checked distribution, with ``rng`` (a numpy Generator)."""
    kind, _, rest = spec.partition(":")
    if kind == "choice":
        values = parse_values(rest, "--random", "choice")
        return values[int(rng.integers(len(values)))]
    bounds = rest.split(":")
    if kind == "randint":
        return int(rng.integers(int(bounds[0]), int(bounds[1]) + 1))
    low, high = float(bounds[0]), float(bounds[1])
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return float(rng.uniform(low, high))


def _flatten_keys(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"env": {"inner_adam_lr": [...]}}`` and ``{"env.inner_adam_lr": [...]}`` both give ``{"env.inner_adam_lr": [...]}``."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            flat.update(_flatten_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass
class FileSweep:
    """What a config file's ``[sweep]`` table asks for."""

    grid: list[Dimension] = field(default_factory=list)
    random: list[Dimension] = field(default_factory=list)
    samples: int | None = None
    seeds: int | None = None


def parse_file_sweep(table: Any, source: str) -> FileSweep:
    """The ``[sweep]`` table: ``grid`` (key -> list), ``random`` (key -> "kind:..."), ``samples``, ``seeds``."""
    origin = f"[sweep] in {source}"
    if table is None:
        return FileSweep()
    if not isinstance(table, Mapping):
        raise UserError(f"{origin}: must be a table (grid, random, samples, seeds), not a {type(table).__name__}")
    unknown = sorted(set(table) - {"grid", "random", "samples", "seeds"})
    if unknown:
        raise UserError(f"{origin}: unknown key {unknown[0]!r}; it may hold grid, random, samples and seeds")
    found = FileSweep()
    for name in ("samples", "seeds"):
        value = table.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{origin}: {name} must be a positive integer (got {value!r})")
            setattr(found, name, value)
    for section in ("grid", "random"):
        entries = table.get(section, {})
        if not isinstance(entries, Mapping):
            example = "[V1, V2]" if section == "grid" else '"kind:..."'
            raise UserError(f"{origin}: {section} must be a table of KEY = {example}")
        for key, value in _flatten_keys(entries).items():
            key = _check_key(key, f"{origin} {section}")
            if section == "grid":
                if not isinstance(value, list):
                    raise UserError(f"{origin}: grid {key} must be a list of values, e.g. [0.001, 0.003] (got {value!r})")
                if not value:
                    raise UserError(f"{origin}: grid {key} is empty; give at least one value")
                unique = []
                for item in value:
                    if item not in unique:
                        unique.append(item)
                found.grid.append(Dimension(key, origin, values=tuple(unique)))
            else:
                if not isinstance(value, str):
                    raise UserError(f"{origin}: random {key} must be a string like \"loguniform:1e-4:1e-2\" (got {value!r})")
                found.random.append(Dimension(key, origin, spec=check_random_spec(value.strip(), origin, key)))
    return found


def combine_space(file: FileSweep, grid: Sequence[Dimension], random: Sequence[Dimension], samples: int | None) -> SearchSpace:
    """Flags on top of the file: a key given by a flag replaces the file's entry for it."""
    from reml_core.config import same_setting

    flagged: dict[str, Dimension] = {}
    for dimension in (*grid, *random):
        twin = next((key for key in flagged if same_setting(key, dimension.key)), None)
        if twin is not None:
            also = "" if twin == dimension.key else f" (the same setting as {twin}, under its former name)"
            raise UserError(f"{dimension.origin} {dimension.key}: given twice{also}; sweep each key once")
        flagged[dimension.key] = dimension
    chosen = {d.key: d for d in (*file.grid, *file.random) if not any(same_setting(d.key, key) for key in flagged)}
    chosen.update(flagged)
    grid_dims = tuple(d for d in chosen.values() if not d.random)
    random_dims = tuple(d for d in chosen.values() if d.random)
    samples = samples if samples is not None else file.samples
    if random_dims and samples is None:
        raise UserError("--random needs --samples N: how many configurations to draw")
    if samples is not None and not random_dims:
        raise UserError("--samples N draws random configurations; give --random KEY=DISTRIBUTION too (a grid's points run once each)")
    if not grid_dims and not random_dims:
        raise UserError("nothing to sweep: give --grid KEY=V1,V2 (repeatable), --random KEY=DIST with --samples N, "
                        "or a [sweep] table in the --config file")
    return SearchSpace(grid=grid_dims, random=random_dims, samples=samples or 1)


def configurations(space: SearchSpace, seed: int) -> list[dict[str, Any]]:
    """Every configuration of the space, in a fixed order: each random draw times every grid point.

    Random draws come from a generator seeded with ``seed``, so a sweep's plan is reproducible.
    """
    import numpy as np

    grid_points = [dict(zip([d.key for d in space.grid], combo)) for combo in itertools.product(*(d.values for d in space.grid))]
    rng = np.random.default_rng([seed, 0x5EE9])
    draws = [{d.key: draw(d.spec, rng) for d in space.random} for _ in range(space.samples)] if space.random else [{}]
    found: dict[str, dict[str, Any]] = {}
    for drawn in draws:
        for point in grid_points:
            values = {**point, **drawn}
            found.setdefault(config_id(values), values)
    return list(found.values())


def config_id(values: Mapping[str, Any]) -> str:
    """A short, stable name for a configuration: 8 hex digits of a hash of its values."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def nested(key: str, value: Any) -> dict[str, Any]:
    """``env.inner_adam_lr``, 0.001 -> ``{"env": {"inner_adam_lr": 0.001}}``."""
    result: dict[str, Any] = {}
    cursor = result
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return result


# -- TOML ----------------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")
_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UserError(f"{where}: {value} cannot be written to TOML")
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item, where) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v, where)}" for k, v in value.items() if v is not None) + "}"
    raise UserError(f"{where}: a {type(value).__name__} value cannot be written to TOML")


def to_toml(data: Mapping[str, Any], header: Sequence[str] = ()) -> str:
    """A config as TOML that ``reml-run --config`` reads back to the same dict.

    TOML has no null: a key whose value is None is left out (it then takes its default, which
    :func:`plan_sweep` checks is the same None) and named in a comment.
    """
    lines = [f"# {line}" if line else "#" for line in header]
    unset: list[str] = []

    def table(prefix: tuple[str, ...], items: Mapping[str, Any]) -> None:
        scalars = [(k, v) for k, v in items.items() if not isinstance(v, Mapping)]
        tables = [(k, v) for k, v in items.items() if isinstance(v, Mapping)]
        if prefix and (scalars or not tables):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_toml_key(str(p)) for p in prefix) + "]")
        for key, value in scalars:
            where = ".".join((*prefix, str(key)))
            if value is None:
                unset.append(where)
                continue
            lines.append(f"{_toml_key(str(key))} = {_toml_value(value, where)}")
        for key, value in tables:
            table((*prefix, str(key)), value)

    table((), data)
    if unset:
        lines.append("")
        lines.append("# not set (null, their default): " + ", ".join(unset))
    return "\n".join(lines) + "\n"


def read_toml_config(text: str, source: str) -> dict[str, Any]:
    from reml_core.config import parse_config_text

    return parse_config_text(text, "toml", source=source)


# -- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One configuration with one seed: one reml-run folder."""

    id: str  # "<config id>-s<seed>"
    configuration: str  # the config id
    values: dict[str, Any]
    seed: int

    @property
    def folder(self) -> str:
        return f"trials/{self.id}"

    @property
    def config_file(self) -> str:
        return f"configs/{self.id}.toml"

    @property
    def log(self) -> str:
        return f"logs/{self.id}.log"

    @property
    def record(self) -> str:
        return f"logs/{self.id}.json"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "configuration": self.configuration, "values": self.values, "seed": self.seed,
                "folder": self.folder, "config_file": self.config_file, "log": self.log}


@dataclass
class SweepPlan:
    """Everything a sweep runs, fixed before the first trial starts (and stored in sweep.json)."""

    user_config: dict[str, Any]  # the --config file and flags, without [sweep]
    space: dict[str, Any]  # SearchSpace.to_dict()
    seeds: list[int]
    cpus_per_trial: float
    configurations: list[dict[str, Any]]  # {"id", "values", "config": the resolved config of its first seed}
    trials: list[Trial]
    trial_configs: dict[str, str]  # trial id -> the TOML text of its config
    command: str = ""


def plan_sweep(registry: Any, user: Mapping[str, Any], space: SearchSpace, seeds: int, cpus_per_trial: float | None,
               *, command: str = "") -> SweepPlan:
    """Draw every configuration and check each, for each seed, the way ``reml-run`` checks its flags.

    A problem with a swept value is one UserError naming the flag, key and value; any other
    config problem is the ConfigError ``reml-run`` would give. Nothing is written.
    """
    from reml_core.config import deep_merge, default_baselines, resolve_config
    from reml_core.errors import ConfigError
    from reml_core.experiment import build_components, check_policy_builds

    base_seed = user.get("seed", 0)
    if isinstance(base_seed, bool) or not isinstance(base_seed, int) or base_seed < 0:
        resolve_config(registry, dict(user))  # the config's own error for a bad seed
        raise UserError(f"seed: expected a non-negative integer, got {base_seed!r}")
    seed_list = list(range(base_seed, base_seed + seeds))
    points = configurations(space, base_seed)
    if len(points) * seeds > MAX_TRIALS:
        raise UserError(f"the sweep has {len(points)} configurations x {seeds} seeds = {len(points) * seeds:,} trials; the limit is {MAX_TRIALS:,}")
    keys = space.keys()
    plan_configurations: list[dict[str, Any]] = []
    trials: list[Trial] = []
    trial_configs: dict[str, str] = {}
    threads = 1
    for values in points:
        cid = config_id(values)
        label = describe(values)
        point_user = dict(user)
        for key, value in values.items():
            point_user = deep_merge(point_user, nested(key, value))
        resolved_first = None
        for seed in seed_list:
            seeded = {**point_user, "seed": seed}
            try:
                config = resolve_config(registry, seeded, baselines=default_baselines(registry, seeded.get("plugin"), "run"))
            except ConfigError as error:
                raise _sweep_problem(error, keys, values, space) from None
            resolved = config.to_dict()
            if resolved_first is None:
                resolved_first = resolved
                core = config.core
                if core.train.validation_tasks == 0:
                    raise UserError(f"configuration {label}: train.validation_tasks is 0, so the trainer computes no validation score, "
                                    "which is what the sweep minimises; set it above 0")
                if core.train.device != "cpu":
                    raise UserError(f"configuration {label}: train.device is {core.train.device!r}; reml-sweep asks Ray for CPUs only, "
                                    "so its trials run on the CPU (set train.device=cpu, or use reml-run for GPU runs)")
                threads = max(threads, core.train.threads)
                try:
                    check_policy_builds(build_components(config))  # cross-component checks, as reml-run makes them
                except ConfigError as error:
                    raise UserError(f"configuration {label}: {error.problems[0] if error.problems else error}") from None
                except UserError as error:
                    raise UserError(f"configuration {label}: {' '.join(str(error).split())}") from None
            trial = Trial(id=f"{cid}-s{seed}", configuration=cid, values=values, seed=seed)
            trial_user = deep_merge(resolved, {"train": {"progress": False}})  # nobody watches a trial's terminal
            text = to_toml(trial_user, header=[f"reml-sweep trial {trial.id}: {label}, seed {seed}",
                                               "reml-run --config takes this file; it is the trial's complete config."])
            _check_round_trip(registry, text, trial_user, f"configuration {label}")
            trials.append(trial)
            trial_configs[trial.id] = text
        plan_configurations.append({"id": cid, "values": values, "config": resolved_first})
    return SweepPlan(user_config=dict(user), space=space.to_dict(), seeds=seed_list,
                     cpus_per_trial=float(cpus_per_trial if cpus_per_trial is not None else threads),
                     configurations=plan_configurations, trials=trials, trial_configs=trial_configs, command=command)


def _sweep_problem(error: Any, keys: Sequence[str], values: Mapping[str, Any], space: SearchSpace) -> UserError:
    """A config problem of one configuration: one line naming the swept key and value when it is theirs."""
    problems = list(error.problems)
    for problem in problems:
        location = problem.split(": ", 1)[0]
        for key in keys:
            if location == key or location.startswith(key + ".") or key.startswith(location + "."):
                more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
                return UserError(f"{space.origin(key)} {key}={show(values[key])}: {problem}{more}")
    return error


def _check_round_trip(registry: Any, text: str, expected: Mapping[str, Any], where: str) -> None:
    from reml_core.config import default_baselines, resolve_config
    from reml_core.errors import ConfigError

    data = read_toml_config(text, where)
    try:
        again = resolve_config(registry, data, baselines=default_baselines(registry, data.get("plugin"), "run")).to_dict()
    except ConfigError as error:
        raise UserError(f"{where}: its config does not survive being written as TOML: {error.problems[0]}") from None
    if again != dict(expected):
        raise UserError(f"{where}: its config does not survive being written as TOML (a setting set to null whose default is not null?)")


def plan_to_dict(plan: SweepPlan) -> dict[str, Any]:
    return {
        "user_config": plan.user_config,
        "search_space": plan.space,
        "seeds": plan.seeds,
        "cpus_per_trial": plan.cpus_per_trial,
        "configurations": plan.configurations,
        "trials": [t.to_dict() for t in plan.trials],
    }


def plan_from_sweep_json(data: Mapping[str, Any], out: Path) -> SweepPlan:
    """The plan a sweep folder's sweep.json recorded, for ``--resume``."""
    try:
        trials = [Trial(id=t["id"], configuration=t["configuration"], values=dict(t["values"]), seed=int(t["seed"])) for t in data["trials"]]
        plan = SweepPlan(
            user_config=dict(data["user_config"]), space=dict(data["search_space"]), seeds=[int(s) for s in data["seeds"]],
            cpus_per_trial=float(data["cpus_per_trial"]), configurations=[dict(c) for c in data["configurations"]],
            trials=trials, trial_configs={}, command=str(data.get("command", "")),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"--resume {out}: sweep.json is damaged ({type(error).__name__}: {error}); it is not a plan reml-sweep wrote") from None
    for trial in plan.trials:
        if not re.fullmatch(r"[0-9a-f]{8}-s[0-9]+", trial.id):
            raise UserError(f"--resume {out}: sweep.json names a trial {trial.id[:40]!r} reml-sweep would not name")
    return plan


# -- the sweep folder ----------------------------------------------------------------------------


def read_sweep_marker(folder: Path) -> dict[str, Any] | None:
    path = folder / SWEEP_MARKER
    if not (path.exists() or path.is_symlink()):
        return None
    if path.is_symlink():
        raise link_error(path, folder)
    data = read_json_file(path, "reml-sweep's folder marker", error=UserError)
    if data.get("format") != MARKER_FORMAT or not isinstance(data.get("entries"), list):
        raise UserError(f"{path} is not a marker reml-sweep wrote (expected format {MARKER_FORMAT!r}); leave the folder alone or remove it yourself")
    return data


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(child.name for child in folder.iterdir() if child.name not in (LOCK, LEDGER))
    except OSError as error:
        raise UserError(f"cannot read {folder}: {error.strerror or error}") from None


def check_sweep_out(out: Path, *, force: bool, flag: str = "--out") -> Path:
    """Refuse an ``--out`` reml-sweep may not write into, before anything is started or written."""
    out = check_path(out, flag)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} exists and is not a directory")
    if out.is_dir():
        present = _entries(out)
        if present:
            marker = read_sweep_marker(out)
            if marker is None:
                if (out / MARKER).exists():
                    raise UserError(f"{flag} {out} holds a reml-run or reml-bench folder, not a sweep; choose another directory")
                raise UserError(f"{flag} {out} already holds files that are not a REML sweep (e.g. {present[0]!r}); choose an empty or new directory")
            if not force:
                raise UserError(f"{flag} {out} already holds a sweep; continue it with reml-sweep --resume {out}, or pass --force to overwrite it")
    return out


def claim_sweep_folder(out: Path, *, force: bool, flag: str = "--out") -> Path:
    """Make ``out`` a new sweep's folder (locked for this process); with ``force`` replace the sweep in it."""
    out = check_sweep_out(out, force=force, flag=flag)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{flag} {out} is not writable: {error.strerror or error}") from None
    lock_folder(out, flag)
    check_sweep_out(out, force=force, flag=flag)  # again, now that no other reml-sweep can write here
    if _entries(out):  # --force: what reml-sweep wrote, at every depth, and nothing else (see reml_core.folders)
        clear_for_force(out, flag, keep=(SWEEP_MARKER, LOCK, LEDGER))
    start_ledger(out)
    atomic_write_json(out / SWEEP_MARKER, {"format": MARKER_FORMAT, "tool": "reml-sweep", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                           "entries": list(SWEEP_ENTRIES)})
    return out.resolve()


def claim_sweep_to_resume(folder: Path, *, flag: str = "--resume") -> tuple[Path, dict[str, Any]]:
    """An existing sweep folder and its sweep.json, locked for this process; anything else is refused."""
    folder = check_path(folder, flag)
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: no such directory")
    if read_sweep_marker(folder) is None:
        hint = "; continue a reml-run folder with reml-run --resume" if (folder / MARKER).exists() else ""
        raise UserError(f"{flag} {folder}: not a reml-sweep folder (no {SWEEP_MARKER} marker){hint}")
    data = read_json_file(folder / "sweep.json", "a sweep's plan (sweep.json)", error=UserError)
    if data.get("schema") != SCHEMA:
        raise UserError(f"{flag} {folder}: sweep.json is not a {SCHEMA} file")
    lock_folder(folder, flag)
    refuse_links(folder, flag)
    return folder.resolve(), data


def write_plan(out: Path, plan: SweepPlan) -> None:
    """The trial configs and a first sweep.json (status "running"), before any trial starts."""
    # the folder's ledger lists each file before it is written (see reml_core.folders), so --force removes
    # exactly these: each trial's config, log and record, its reml-run folder (which lists its own files)
    # and Ray Tune's experiment folder, which is wholly Tune's
    record_written(out / TUNE_NAME, pattern="**")
    for trial in plan.trials:
        record_written(out / trial.folder, folder=True)
        for name in (trial.config_file, trial.log, trial.record):
            record_written(out / name)
    (out / "configs").mkdir(exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    for trial_id, text in plan.trial_configs.items():
        atomic_write_text(out / "configs" / f"{trial_id}.toml", text)
    atomic_write_json(out / "sweep.json", {"schema": SCHEMA, "status": "running", "command": plan.command,
                                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **plan_to_dict(plan)})


# -- one trial (runs in a Ray worker) --------------------------------------------------------------


def run_finished(folder: Path) -> bool:
    """A reml-run folder that finished: report.md is the last file a run writes."""
    return (folder / "results.json").is_file() and (folder / "report.md").is_file()


def trial_objective(folder: Path) -> dict[str, Any]:
    """The trial's objective from its results.json: the validation score of the checkpoint the trainer selected.

    ``score`` is None when no validation was finite (every checkpoint diverged).
    """
    training = read_results(folder / "results.json").reml_training
    selected = training.selected_checkpoint if training is not None else None
    if selected is None:
        return {"score": None, "checkpoint": None, "timesteps": None, "env_steps": training.env_steps if training is not None else None}
    return {"score": selected.score, "checkpoint": selected.name, "timesteps": selected.timesteps, "env_steps": training.env_steps}


def _read_record(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and isinstance(data.get("invocations"), list) else {"invocations": []}
    except (OSError, ValueError):
        return {"invocations": []}


def record_seconds(record: Mapping[str, Any]) -> float:
    return float(sum(i.get("seconds") or 0.0 for i in record.get("invocations", [])))


def reml_run_command() -> list[str]:
    script = Path(sys.executable).parent / "reml-run"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "reml_core.cli.run"]


_LIBC: Any = None


def _prepare_death_signal() -> Any:
    """libc's prctl, looked up before forking (a child should not load libraries)."""
    global _LIBC
    if _LIBC is None and sys.platform.startswith("linux"):
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            _LIBC = False
    return _LIBC


def _die_with_parent(parent: int) -> Any:
    """A ``preexec_fn``: the child gets SIGTERM when the thread that started it ends (Linux's parent-death signal)."""
    libc = _prepare_death_signal()

    def apply() -> None:
        if libc:
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the worker died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)

    return apply


def _wait_until_unlocked(folder: Path, timeout: float) -> None:
    """Wait for a killed trial's reml-run (still checkpointing after its worker died) to let go of its folder."""
    path = folder / LOCK
    if not path.is_file():
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            if time.monotonic() > deadline:
                return  # reml-run will name the holder
        finally:
            os.close(descriptor)
        time.sleep(0.5)


def run_trial_process(root: Path, trial: Mapping[str, Any]) -> dict[str, Any]:
    """Run (or continue, or just read) one trial's reml-run; return its objective, seconds and whether it ran now."""
    folder = root / trial["folder"]
    log_path, record_path = root / trial["log"], root / trial["log"].replace(".log", ".json")
    record = _read_record(record_path)
    if folder.is_dir():
        _wait_until_unlocked(folder, LOCK_WAIT_S)
    reused = run_finished(folder)
    if not reused:
        if (folder / "config.json").is_file():
            command = [*reml_run_command(), "--resume", str(folder)]
        else:
            force = ["--force"] if folder.is_dir() and any(folder.iterdir()) else []  # killed between claiming and config.json
            command = [*reml_run_command(), "--config", str(root / trial["config_file"]), "--out", str(folder), *force]
        for earlier in record["invocations"]:  # killed with the sweep: it ran until its log was last written
            if earlier.get("seconds") is None and isinstance(earlier.get("started_at"), (int, float)) and log_path.is_file():
                earlier.update(seconds=round(max(log_path.stat().st_mtime - earlier["started_at"], 0.0), 3), estimated=True)
        invocation = {"command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "started_at": time.time(),
                      "seconds": None, "exit": None}
        record["invocations"].append(invocation)
        atomic_write_json(record_path, record)
        start = time.perf_counter()
        with open(open_for_append(log_path), "ab") as log:
            log.write(f"\n[reml-sweep] {time.strftime('%H:%M:%S')} $ {' '.join(command)}\n".encode())
            log.flush()
            # reml-run runs under a guard (see guard_main) in a session of its own, so that when the worker
            # ends it gets one SIGTERM and checkpoints before it exits, instead of running on as an orphan
            process = subprocess.Popen([sys.executable, "-m", "reml_core.sweep", "guard", *command], stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=_die_with_parent(os.getpid()))
            code = process.wait()
        invocation.update(seconds=round(time.perf_counter() - start, 3), exit=code)
        atomic_write_json(record_path, record)
        if code != 0:
            raise RuntimeError(f"reml-run exited with code {code}: {_last_lines(log_path)} (log: {log_path})")
    objective = trial_objective(folder)
    return {"score": math.nan if objective["score"] is None else objective["score"], "seconds": record_seconds(record),
            "reused": reused, "invocations": len(record["invocations"]), "checkpoint": objective["checkpoint"] or ""}


def guard_main(command: Sequence[str]) -> int:
    """Run ``command`` and pass it exactly one SIGTERM when this guard is told to stop; return its exit code.

    The Tune trainable starts the guard, which starts reml-run. The parent-death signal (SIGTERM
    when the worker that started the guard goes) can arrive twice: once when the worker's thread
    ends and once when its process does. reml-run reads a second SIGTERM as "stop now, without a
    checkpoint", so the guard, a single-threaded process, forwards only the first; reml-run's own
    death signal fires only if the guard itself is killed.
    """
    child = subprocess.Popen(list(command), preexec_fn=_die_with_parent(os.getpid()))
    forwarded: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        if not forwarded:
            forwarded.append(signum)
            child.send_signal(signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    code = child.wait()
    return 128 - code if code < 0 else code


def _last_lines(path: Path, count: int = 3) -> str:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-count:])[-600:]


def tune_trainable(config: dict[str, Any], root: str) -> None:
    """The Ray Tune function trainable: one trial, reported once to Tune."""
    from ray import tune

    tune.report(run_trial_process(Path(root), config["trial"]))


def trial_name(trial: Any) -> str:
    return str(trial.config["trial"]["id"])


# -- running the sweep on Ray Tune ---------------------------------------------------------------


def _progress_callback(root: Path, total: int) -> Any:
    """A Tune callback printing one line per finished or failed trial (on the driver's stderr)."""
    from ray import tune

    class SweepProgress(tune.Callback):
        def __init__(self) -> None:
            self.root, self.total = str(root), total

        @staticmethod
        def _done(trials: list[Any], trial: Any) -> int:
            """Trials finished so far, this one included (those a restored experiment had finished too)."""
            return 1 + sum(other.status == "TERMINATED" for other in trials if other is not trial)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            spec, result = trial.config["trial"], trial.last_result or {}
            score = result.get("score")
            shown = f"{score:.4f}" if isinstance(score, float) and math.isfinite(score) else "none (no finite validation score)"
            how = "already finished, not rerun" if result.get("reused") else f"{result.get('seconds', 0.0):.1f} s"
            log(f"trial {self._done(trials, trial)}/{self.total} {spec['id']} ({describe(spec['values'])}, seed {spec['seed']}): "
                f"validation score {shown}, {how}; run {Path(self.root) / spec['folder']}, log {Path(self.root) / spec['log']}")

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            spec = trial.config["trial"]
            log_path = Path(self.root) / spec["log"]
            invocations = _read_record(Path(self.root) / spec["log"].replace(".log", ".json"))["invocations"]
            code = invocations[-1].get("exit") if invocations else None
            why = f"reml-run exited with code {code}: {_last_lines(log_path, 1)}" if code not in (None, 0) else "its worker died"
            log(f"trial {spec['id']} ({describe(spec['values'])}, seed {spec['seed']}) failed ({why}); "
                f"run {Path(self.root) / spec['folder']}, log {log_path}")

    return SweepProgress()


def run_tune(out: Path, plan: SweepPlan, *, restore: bool) -> int | None:
    """Run every unfinished trial of the plan on Tune; ``restore`` continues the experiment in ``out/tune``.

    Returns None when Tune finished, or the signal (SIGINT, SIGTERM) that stopped it: Tune then
    saved its experiment state and stopped the running trials (each reml-run checkpoints on the
    SIGTERM it gets when its worker ends), which ``--resume`` continues.
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own status tables off (verbose=0 then prints nothing)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C and SIGTERM both go through _graceful_stop below
    # Tune's own messages say what reml-sweep's lines say better: the trials' scores and failures, and
    # that a restored trial has no result file of its own (the sweep reads the trial folders)
    for name in ("ray.tune.analysis.experiment_analysis", "ray.tune.tune"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    controller = logging.getLogger("ray.tune.execution.tune_controller")  # a failed trial: our line names it and its log
    if not any(isinstance(f, _DropTrialTracebacks) for f in controller.filters):
        controller.addFilter(_DropTrialTracebacks())
    try:
        from ray import tune
    except ImportError as error:
        from reml_core.distributed import INSTALL_HINT

        raise UserError(f"reml-sweep needs Ray Tune, which cannot be imported ({error}); install it with: {INSTALL_HINT}") from None

    trainable = tune.with_resources(tune.with_parameters(tune_trainable, root=str(out)), {"cpu": plan.cpus_per_trial})
    tune_path = out / TUNE_NAME
    if restore and tune.Tuner.can_restore(str(tune_path)):
        tuner = tune.Tuner.restore(str(tune_path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        if tune_path.exists():
            shutil.rmtree(tune_path)  # an experiment killed before Tune saved its state: start it again (finished trials are read, not rerun)
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([t.to_dict() for t in plan.trials])},
            tune_config=tune.TuneConfig(num_samples=1, reuse_actors=False, trial_name_creator=trial_name, trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(
                name=TUNE_NAME, storage_path=str(out), verbose=0, log_to_file=False,
                callbacks=[_progress_callback(out, len(plan.trials))],
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    stopped: list[int] = []
    handler = _graceful_stop(stopped)
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        tuner.fit()
    except (KeyboardInterrupt, SystemExit):
        # a second signal, raised inside Ray's wait (which turns it into SystemExit): stop now, reported as the first
        if not stopped:
            raise
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
    return stopped[0] if stopped else None


class _DropTrialTracebacks(logging.Filter):
    """Drops Tune's traceback of a failed trial (the trainable's RuntimeError says only what the trial's log says)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Trial task failed for trial")


def _graceful_stop(stopped: list[int]) -> Any:
    """A SIGINT/SIGTERM handler for the length of ``Tuner.fit``: the first signal asks Tune to stop as
    its own SIGUSR1 does (save the experiment, stop the trials); a second one stops at once.

    Raising from a handler while Ray waits inside its C++ core turns into ``SystemExit(1)``, so the
    first signal only sets Tune's flag and the caller reports the signal after ``fit`` returns.
    """
    def handle(signum: int, frame: Any) -> None:
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if stopped or not callable(tune_stop):
            raise KeyboardInterrupt
        stopped.append(signum)
        log(f"{'interrupt' if signum == signal.SIGINT else 'SIGTERM'} received: stopping the sweep; running trials "
            "checkpoint before they end (Ctrl-C again to stop at once)")
        tune_stop(signum, frame)

    return handle


# -- what the driver writes at the end -----------------------------------------------------------


def collect(out: Path, plan: SweepPlan) -> dict[str, Any]:
    """sweep.json's content from the trial folders: every trial, every configuration, the best one."""
    trials: list[dict[str, Any]] = []
    for trial in plan.trials:
        folder = out / trial.folder
        record = _read_record(out / trial.record)
        entry: dict[str, Any] = {**trial.to_dict(), "status": "pending", "score": None, "seconds": round(record_seconds(record), 3),
                                 "invocations": len(record["invocations"])}
        if run_finished(folder):
            objective = trial_objective(folder)
            entry.update(status="finished", score=objective["score"], checkpoint=objective["checkpoint"],
                         checkpoint_timesteps=objective["timesteps"], env_steps=objective["env_steps"])
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
        std = float(math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1))) if len(scores) > 1 and mean is not None else None
        configurations.append({
            "id": configuration["id"], "values": configuration["values"], "trials": [t["id"] for t in mine],
            "seeds_finished": sum(t["status"] == "finished" for t in mine), "seeds_scored": len(scores), "seeds": len(mine),
            "mean": mean, "std": std, "min": min(scores) if scores else None, "max": max(scores) if scores else None,
            "mean_seconds": float(sum(times) / len(times)) if times else None, "config": configuration["config"],
        })
    complete = [c for c in configurations if c["mean"] is not None and c["seeds_scored"] == c["seeds"]]
    best = min(complete or [c for c in configurations if c["mean"] is not None], key=lambda c: c["mean"], default=None)
    for configuration in configurations:
        configuration["best"] = best is not None and configuration["id"] == best["id"]
    return {"trials": trials, "configurations": configurations, "best": best}


def write_outputs(out: Path, plan: SweepPlan, registry: Any, *, command: str, started: str) -> dict[str, Any]:
    """sweep.json, sweep.md, sweep.png and best.toml, each written atomically; returns sweep.json's content."""
    from reml_core.results import versions

    collected = collect(out, plan)
    best = collected["best"]
    unfinished = [t for t in collected["trials"] if t["status"] != "finished"]
    found_versions = versions()
    try:
        import ray

        found_versions["ray"] = ray.__version__
    except ImportError:
        pass
    document = {
        "schema": SCHEMA,
        "status": "finished" if not unfinished else "incomplete",
        "command": plan.command, "last_command": command, "started": started, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "plugin": (plan.configurations[0]["config"] or {}).get("plugin"),
        "objective": {"metric": OBJECTIVE, "mode": "min",
                      "source": "results.json training.selected_checkpoint.score: the validation score of the checkpoint the "
                                "trainer selected (mean query loss on validation tasks, never test tasks)"},
        **plan_to_dict(plan),
        "configurations": collected["configurations"],
        "trials": collected["trials"],
        "best": None if best is None else {"configuration": best["id"], "values": best["values"], "mean": best["mean"],
                                           "std": best["std"], "seeds_scored": best["seeds_scored"], "config_file": "best.toml"},
        "versions": found_versions,
    }
    if best is not None:
        header = [f"reml-sweep best configuration {best['id']}: {describe(best['values'])}",
                  f"mean validation score {best['mean']:.6g} over {best['seeds_scored']} seed(s); sweep {out}",
                  "Run it with: reml-run --config best.toml"]
        text = to_toml(best["config"], header=header)
        _check_round_trip(registry, text, best["config"], f"best configuration {describe(best['values'])}")
        atomic_write_text(out / "best.toml", text)
    atomic_write_json(out / "sweep.json", document)
    atomic_write_text(out / "sweep.md", render_sweep_report(document))
    plot_sweep(document, out / "sweep.png")
    return document


def plot_sweep(document: Mapping[str, Any], path: Path) -> None:
    """sweep.png: each configuration's mean score, with bars from its lowest to highest seed and every seed as a dot."""
    from reml_core.plots import _pyplot, _save

    configurations = document["configurations"]
    plt = _pyplot()
    height = max(3.0, 0.45 * len(configurations) + 1.6)
    figure, axis = plt.subplots(figsize=(8, height))
    for row, c in enumerate(configurations):
        scores = [t["score"] for t in document["trials"] if t["configuration"] == c["id"] and t["score"] is not None]
        color = "tab:red" if c["best"] else "tab:blue"
        if c["mean"] is not None:
            axis.errorbar([c["mean"]], [row], xerr=[[c["mean"] - c["min"]], [c["max"] - c["mean"]]], fmt="o", color=color, capsize=4, markersize=7)
        axis.scatter(scores, [row] * len(scores), color=color, alpha=0.45, s=16, zorder=3)
    axis.set_yticks(range(len(configurations)), [f"{c['id']}: {describe(c['values'])}" + (" (best)" if c["best"] else "") for c in configurations],
                    fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("validation score (mean query loss on validation tasks; lower is better)")
    axis.grid(alpha=0.3, axis="x")
    axis.set_title(f"reml-sweep: {document.get('plugin')}, {len(document['seeds'])} seed(s) per configuration\n"
                   "dot: mean over seeds; bar: lowest to highest seed; faint dots: each seed", fontsize=10)
    figure.tight_layout()
    _save(figure, path)


def summary(document: Mapping[str, Any], out: Path) -> str:
    """What the command prints on stdout at the end: the table's rows and where the files are."""
    table = render_sweep_report(document)
    body = table.split("## Trials")[0].split("\n")
    rows = [line for line in body if line.startswith("|")]
    return "\n".join([*rows, "", f"sweep:  {out / 'sweep.json'}", f"table:  {out / 'sweep.md'}", f"plot:   {out / 'sweep.png'}",
                      *([f"best:   {out / 'best.toml'}  (reml-run --config {out / 'best.toml'})"] if document.get("best") else [])])



if __name__ == "__main__":  # python -m reml_core.sweep guard COMMAND...: see guard_main
    if len(sys.argv) < 3 or sys.argv[1] != "guard":
        raise SystemExit("usage: python -m reml_core.sweep guard COMMAND [ARGS...] (reml-sweep starts this itself)")
    raise SystemExit(guard_main(sys.argv[2:]))
