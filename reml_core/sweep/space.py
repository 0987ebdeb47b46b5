"""A sweep's search space: ``--grid`` and ``--random`` flags, a config file's ``[sweep]`` table, and
every configuration they describe (a grid's points times the random draws), in a fixed order."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reml_core.errors import UserError

RANDOM_KINDS = ("uniform", "loguniform", "randint", "choice")


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
        raise UserError(
            f"{origin} seed: sweep seeds with --seeds N (seeds --seed .. --seed+N-1), not as a config value"
        )
    return key


def parse_values(text: str, origin: str, key: str) -> tuple[Any, ...]:
    """``0.001,0.003`` -> (0.001, 0.003); each value read as a YAML scalar or list, like ``--set``.

    ``[5,10],[5]`` gives two lists. Repeated values are kept once.
    """
    if not text.strip():
        raise UserError(f"{origin} {key}: no values; give them comma-separated, e.g. {origin} {key}=0.001,0.003")
    from reml_core.config import assignment_value  # noqa: PLC0415 - lazy: start-up time: reml_core.config imports torch

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
        raise UserError(
            f"--random: expected KEY=DISTRIBUTION (e.g. env.inner_adam_lr=loguniform:1e-4:1e-2), got {text!r} (no '=')"
        )
    key = _check_key(key, "--random")
    return Dimension(key, "--random", spec=check_random_spec(raw.strip(), "--random", key))


def check_random_spec(spec: str, origin: str, key: str) -> str:
    """A distribution: ``uniform:A:B``, ``loguniform:A:B`` (0 < A < B), ``randint:A:B`` (A..B inclusive),
    ``choice:V1,V2``."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    where = f"{origin} {key}={spec}"
    if kind not in RANDOM_KINDS:
        raise UserError(
            f"{where}: unknown distribution {kind!r}; use one of {', '.join(k + ':...' for k in RANDOM_KINDS)}"
        )
    if kind == "choice":
        parse_values(rest, origin, key)
        return f"choice:{rest}"
    bounds = rest.split(":")
    try:
        low, high = (int(b) for b in bounds) if kind == "randint" else (float(b) for b in bounds)
    except ValueError:
        example = "randint:1:8" if kind == "randint" else f"{kind}:1e-4:1e-2"
        raise UserError(
            f"{where}: expected {kind}:LOW:HIGH with {'integer' if kind == 'randint' else 'number'} bounds, e.g. "
            f"{example}"
        ) from None
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
    """``{"env": {"inner_adam_lr": [...]}}`` and ``{"env.inner_adam_lr": [...]}`` both give ``{"env.inner_adam_lr":
    [...]}``."""
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
    return parse_sweep_table(table, f"[sweep] in {source}")


def parse_sweep_table(table: Any, origin: str) -> FileSweep:
    """A sweep given as data (a config file's ``[sweep]`` table, :func:`reml_core.sweep`'s arguments), each
    problem named after ``origin``."""
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
                if not isinstance(value, (list, tuple)):
                    raise UserError(
                        f"{origin}: grid {key} must be a list of values, e.g. [0.001, 0.003] (got {value!r})"
                    )
                if not value:
                    raise UserError(f"{origin}: grid {key} is empty; give at least one value")
                unique = []
                for item in value:
                    if item not in unique:
                        unique.append(item)
                found.grid.append(Dimension(key, origin, values=tuple(unique)))
            else:
                if not isinstance(value, str):
                    raise UserError(
                        f'{origin}: random {key} must be a string like "loguniform:1e-4:1e-2" (got {value!r})'
                    )
                found.random.append(Dimension(key, origin, spec=check_random_spec(value.strip(), origin, key)))
    return found


def combine_space(
    file: FileSweep,
    grid: Sequence[Dimension],
    random: Sequence[Dimension],
    samples: int | None,
    renames: Mapping[str, str] | None = None,
) -> SearchSpace:
    """Flags on top of the file: a key given by a flag replaces the file's entry for it (under either name of a
    renamed setting: ``renames`` from :func:`reml_core.config.renamed_settings`)."""
    from reml_core.config import same_setting  # noqa: PLC0415 - lazy: start-up time: reml_core.config imports torch

    flagged: dict[str, Dimension] = {}
    for dimension in (*grid, *random):
        twin = next((key for key in flagged if same_setting(key, dimension.key, renames)), None)
        if twin is not None:
            also = "" if twin == dimension.key else f" (the same setting as {twin}, under its former name)"
            raise UserError(f"{dimension.origin} {dimension.key}: given twice{also}; sweep each key once")
        flagged[dimension.key] = dimension
    chosen = {
        d.key: d for d in (*file.grid, *file.random) if not any(same_setting(d.key, key, renames) for key in flagged)
    }
    chosen.update(flagged)
    grid_dims = tuple(d for d in chosen.values() if not d.random)
    random_dims = tuple(d for d in chosen.values() if d.random)
    samples = samples if samples is not None else file.samples
    if random_dims and samples is None:
        raise UserError("--random needs --samples N: how many configurations to draw")
    if samples is not None and not random_dims:
        raise UserError(
            "--samples N draws random configurations; give --random KEY=DISTRIBUTION too (a grid's points run once "
            "each)"
        )
    if not grid_dims and not random_dims:
        raise UserError(
            "nothing to sweep: give --grid KEY=V1,V2 (repeatable), --random KEY=DIST with --samples N, "
            "or a [sweep] table in the --config file"
        )
    return SearchSpace(grid=grid_dims, random=random_dims, samples=samples or 1)


def configurations(space: SearchSpace, seed: int) -> list[dict[str, Any]]:
    """Every configuration of the space, in a fixed order: each random draw times every grid point.

    Random draws come from a generator seeded with ``seed``, so a sweep's plan is reproducible.
    """
    import numpy as np  # noqa: PLC0415 - lazy: start-up time: numpy

    grid_points = [
        dict(zip([d.key for d in space.grid], combo)) for combo in itertools.product(*(d.values for d in space.grid))
    ]
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
