"""Experiment configuration: pydantic models, config files, flags and presets, resolved into one object.

Layers, later ones winning: each model's defaults < the core's own budget for the preset
(:data:`CORE_PRESETS`) < the preset (``smoke``/``default``/``full``) of the task plugin and of
each component < the ``--config`` file < flags. Every section is
validated by the model that owns it (the core's for ``env``/``train``/``eval``, the plugin's for
``task``/``encoder``/``pool``/``reward``/``policy``/``baselines.NAME``), and every problem is
reported as one ``path.to.field: message`` line.
"""

from __future__ import annotations

import copy
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reml_core.device import check_device_name
from reml_core.errors import ConfigError, UnknownComponentError, UserError
from reml_core.logs import LOGGER
from reml_core.registry import PluginRegistry
from reml_core.specs import ComponentSpec, Preset, TaskSamplerSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, numbers are finite, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


#: Upper bounds on sizes and counts. Each is far beyond any sensible experiment and far below what
#: would exhaust memory or run for days, so an absurd value fails at once with the limit named.
MAX_STEPS = 1_000_000_000
MAX_TASKS = 100_000
MAX_ITERATIONS = 1_000_000
#: A config file larger than this, or with more settings than this, is not a REML config.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_CONFIG_SETTINGS = 10_000


#: The core's budgets of its own sections for each preset, used under a task plugin's
#: ``experiment_presets`` (which override them key by key): a family that declares no presets still
#: gets a quick ``smoke`` and a thorough ``full``. ``default`` is the models' own defaults.
CORE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "train": {"env_steps": 2_000, "checkpoint_every": 1_000, "validation_tasks": 10, "calibration_episodes": 20},
        "eval": {"test_tasks": 50, "curve_steps": 100, "curve_tasks": 20},
    },
    "default": {},
    "full": {
        "train": {"env_steps": 1_000_000, "checkpoint_every": 100_000, "validation_tasks": 200, "calibration_episodes": 500},
        "eval": {"test_tasks": 600, "curve_tasks": 600},
    },
}


def _distinct_sorted(values: list[int]) -> list[int]:
    if len(set(values)) != len(values):
        raise ValueError("values must be distinct")
    return sorted(values)


class EnvConfig(StrictModel):
    """The composition MDP: network depth, inner training, and the K-shot fine-tuning it can measure."""

    depth: int = Field(5, ge=2, le=64, description="layers per network: input + (depth - 2) hidden + output")
    inner_steps: int = Field(30, ge=0, le=MAX_ITERATIONS, description="Adam steps on the task's training data at the end of an episode")
    inner_lr: float = Field(0.005, gt=0, description="Adam learning rate of the inner training")
    inner_batch: int = Field(100, gt=0, le=MAX_ITERATIONS, description="minibatch size of the inner training")
    shots: list[int] = Field([5, 10], min_length=1, description="K values an episode draws from for its support set")
    finetune_steps: int = Field(10, ge=0, le=MAX_ITERATIONS, description="SGD steps on the K support points for the 'finetuned' loss")
    finetune_lr: float = Field(0.01, gt=0, description="SGD learning rate for the 'finetuned' loss")
    max_invalid_actions: int = Field(10, ge=0, le=MAX_ITERATIONS, description="invalid actions after which an episode is truncated")
    write_back_rate: float = Field(
        0.1, gt=0, le=1,
        description="pool += rate * (trained - pool); 1 replaces the layers as the thesis did (the pool collapses, "
        "docs/pool-health.md), below 1 is a Reptile step",
    )
    write_back_schedule: Literal["constant", "linear"] = Field(
        "linear", description="'linear' anneals the write-back rate to 0 over train.env_steps (Reptile's schedule); 'constant' keeps it"
    )

    @field_validator("shots")
    @classmethod
    def _shots_positive(cls, value: list[int]) -> list[int]:
        if any(k <= 0 for k in value):
            raise ValueError("every K must be positive")
        return _distinct_sorted(value)


class TrainConfig(StrictModel):
    """Meta-training budget and bookkeeping."""

    env_steps: int = Field(100_000, gt=0, le=MAX_STEPS, description="policy (environment) steps of meta-training")
    checkpoint_every: int = Field(10_000, gt=0, le=MAX_STEPS, description="env steps between checkpoints")
    validation_tasks: int = Field(50, ge=0, le=MAX_TASKS, description="held-out validation tasks scored at each checkpoint (0: off)")
    calibration_episodes: int = Field(200, gt=0, le=MAX_ITERATIONS, description="random episodes of the reward calibration pass")
    progress: bool = Field(True, description="show progress bars")
    threads: int = Field(1, gt=0, le=1024, description="torch intra-op threads (tiny networks run fastest on one)")
    device: str = Field(
        "cpu",
        description="where the layer pool, the networks it builds and the baselines' networks train: 'cpu', 'cuda' or "
        "'cuda:N' (refused when this machine has no such device); the policy always runs on the CPU",
    )
    n_envs: int = Field(
        128, ge=1, le=1024,
        description="composition episodes run side by side (a vector env; 1: the single env). Networks finishing on "
        "the same step train as one stacked computation, so the more envs, the larger those batches (a policy that "
        "makes invalid actions spreads the finishes out): for ppo-mlp meta-training on 2 CPU cores 64 envs measured "
        "~1400 env steps/s, 128 ~1800, 256 ~1900, one env ~490; 128 keeps 8 steps per env in a 1024-step rollout "
        "(docs/performance.md). Results depend on (seed, n_envs)",
    )


    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        return check_device_name(value)


class EvalConfig(StrictModel):
    """The few-shot protocol of Finn et al. (2017) on held-out tasks."""

    test_tasks: int = Field(600, gt=0, le=MAX_TASKS, description="held-out meta-test tasks")
    shots: list[int] = Field([5, 10], min_length=1, description="K support points per task")
    steps: list[int] = Field([0, 1, 10], min_length=1, description="SGD fine-tuning steps reported")
    sgd_lr: float = Field(0.01, gt=0, description="plain SGD learning rate of the fine-tuning")
    curve_steps: int = Field(100, ge=0, le=MAX_ITERATIONS, description="Adam steps of the convergence curve (0: no curve)")
    curve_lr: float = Field(0.005, gt=0, description="Adam learning rate of the convergence curve")
    curve_tasks: int = Field(100, gt=0, le=MAX_TASKS, description="test tasks averaged in the convergence curve")

    @field_validator("shots", "steps")
    @classmethod
    def _non_negative(cls, value: list[int], info: Any) -> list[int]:
        if any(v < (1 if info.field_name == "shots" else 0) for v in value):
            raise ValueError("every K must be positive" if info.field_name == "shots" else "steps must be >= 0")
        if info.field_name == "steps" and any(v > MAX_ITERATIONS for v in value):
            raise ValueError(f"fine-tuning steps must be at most {MAX_ITERATIONS}")
        return _distinct_sorted(value)


class ExperimentConfig(StrictModel):
    """The core's own part of an experiment config."""

    plugin: str
    preset: Preset = "default"
    seed: int = Field(0, ge=0, lt=2**32)
    env: EnvConfig = Field(default_factory=EnvConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


class _RawConfig(StrictModel):
    """The shape of a user's config before component sections are resolved."""

    plugin: str | None = None
    preset: Preset = "default"
    seed: Any = 0
    env: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    task: dict[str, Any] = Field(default_factory=dict)
    encoder: dict[str, Any] = Field(default_factory=dict)
    pool: dict[str, Any] = Field(default_factory=dict)
    reward: dict[str, Any] = Field(default_factory=dict)
    policy: dict[str, Any] = Field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("encoder", "pool", "reward", "policy", mode="before")
    @classmethod
    def _name_shorthand(cls, value: Any) -> Any:
        """``policy = "ppo-lstm"`` is short for ``[policy] name = "ppo-lstm"``."""
        return {"name": value} if isinstance(value, str) else value


#: Config sections that choose a component by ``name``, and the kind of component each holds.
COMPONENT_SECTIONS: dict[str, str] = {
    "encoder": "state_encoder",
    "pool": "layer_pool",
    "reward": "reward",
    "policy": "policy",
}


@dataclass(frozen=True)
class Selected:
    """A chosen component: its record and its validated config."""

    name: str
    spec: ComponentSpec
    config: BaseModel

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.config.model_dump(mode="json")}


@dataclass(frozen=True)
class RunConfig:
    """A fully resolved experiment: the core's config and every chosen component's config."""

    core: ExperimentConfig
    task: Selected
    encoder: Selected
    pool: Selected
    reward: Selected
    policy: Selected
    baselines: dict[str, Selected] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.core.seed

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data; feeding it back to :func:`resolve_config` gives the same run."""
        data = self.core.model_dump(mode="json")
        data["task"] = self.task.config.model_dump(mode="json")
        for section in COMPONENT_SECTIONS:
            data[section] = getattr(self, section).to_dict()
        data["baselines"] = {name: chosen.config.model_dump(mode="json") for name, chosen in self.baselines.items()}
        return data


# -- reading files and flags -------------------------------------------------------------------


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML or YAML config file into a dict; every failure is a one-line ConfigError."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError([f"--config: {path}: unsupported file type {suffix or '(none)'!r}; use .toml, .yaml or .yml"])
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES and path.is_file():
            raise ConfigError([f"--config: {path} is {size:,} bytes; a REML config is a few KB (the limit is {MAX_CONFIG_BYTES:,})"])
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"--config: file not found: {path}"]) from None
    except IsADirectoryError:
        raise ConfigError([f"--config: {path} is a directory, not a config file"]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"--config: cannot read {path}: {error}"]) from None
    return parse_config_text(text, "toml" if suffix == ".toml" else "yaml", source=str(path))


def parse_config_text(text: str, fmt: str, source: str = "<config>") -> dict[str, Any]:
    """Parse config text (``toml`` or ``yaml``) into a mapping, or raise a one-line ConfigError."""
    try:
        if fmt == "toml":
            data: Any = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except Exception as error:  # every parser failure (incl. recursion on absurd nesting) is the user's input
        detail = " ".join(str(error).split())
        raise ConfigError([f"--config: {source}: invalid {fmt.upper()}: {detail}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"--config: {source}: the top level must be a table of settings, not a {type(data).__name__}"])
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; nested mappings merge, anything else is replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_assignment(text: str) -> dict[str, Any]:
    """``a.b.c=VALUE`` (VALUE read as a YAML scalar or list) as a nested dict, for ``--set``."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(part.strip() for part in path):
        raise ConfigError([f"--set: expected KEY.PATH=VALUE, got {text!r}"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested: dict[str, Any] = {}
    cursor = nested
    for part in path[:-1]:
        cursor = cursor.setdefault(part.strip(), {})
    cursor[path[-1].strip()] = value
    return nested


# -- resolution --------------------------------------------------------------------------------


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")


def _location(parts: Sequence[Any]) -> str:
    """``env.depth``; a key that is not plain text (spaces, newlines, ...) is quoted so a message stays one line."""
    return ".".join(str(p) if _PLAIN_KEY.fullmatch(str(p)) else repr(p) for p in parts) or "config"


def _format_errors(error: ValidationError, prefix: Sequence[str | int] = ()) -> list[str]:
    lines = []
    for item in error.errors(include_url=False):
        location = _location((*prefix, *item["loc"]))
        message = " ".join(str(item["msg"]).split())
        if item["type"] not in ("missing", "extra_forbidden") and not isinstance(item.get("input"), (dict, list)):
            message += f" (got {_short(item.get('input'))})"
        lines.append(f"{location}: {message}")
    return lines


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _non_finite(value: Any, path: tuple[Any, ...]) -> list[str]:
    """Every NaN or infinite number inside a validated section, as a problem line."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{_location(path)}: Input should be a finite number (got {value})"]
    if isinstance(value, Mapping):
        return [line for key, item in value.items() for line in _non_finite(item, (*path, key))]
    if isinstance(value, (list, tuple)):
        return [line for index, item in enumerate(value) for line in _non_finite(item, (*path, index))]
    return []


def count_settings(value: Any) -> int:
    """How many keys and list items a parsed config holds (nested), to refuse absurd ones early."""
    if isinstance(value, Mapping):
        return len(value) + sum(count_settings(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return len(value) + sum(count_settings(item) for item in value)
    return 0


def _validate(model: type[BaseModel], data: Any, prefix: Sequence[str], problems: list[str]) -> BaseModel | None:
    """Validate one section; no plugin's model can let a NaN or infinity through (they break JSON and training)."""
    try:
        validated = model.model_validate(data)
    except ValidationError as error:
        problems.extend(_format_errors(error, prefix))
        return None
    except (TypeError, ValueError, RecursionError) as error:  # a plugin validator that raised oddly
        problems.append(f"{_location(prefix)}: {' '.join(str(error).split())}")
        return None
    infinite = _non_finite(validated.model_dump(), tuple(prefix))
    if infinite:
        problems.extend(infinite)
        return None
    return validated


def _section_name(section: dict[str, Any], where: str, problems: list[str]) -> str | None:
    name = section.pop("name", None)
    if name is not None and not isinstance(name, str):
        problems.append(f"{where}.name: Input should be a valid string (got {_short(name)})")
        return None
    return name


def _lookup(registry: PluginRegistry, kind: str, name: str, where: str, problems: list[str]) -> ComponentSpec | None:
    try:
        return registry.get(kind, name).spec
    except UnknownComponentError as error:
        problems.append(f"{where}: {' '.join(str(error).split())}")
        return None


def resolve_config(
    registry: PluginRegistry,
    user: Mapping[str, Any],
    *,
    baselines: Iterable[str] = (),
) -> RunConfig:
    """Validate a user's config (file and flags already merged) into a :class:`RunConfig`.

    ``baselines`` names baseline components the command needs besides those the config mentions.
    """
    problems: list[str] = []
    settings = count_settings(user)
    if settings > MAX_CONFIG_SETTINGS:
        raise ConfigError([f"config: {settings:,} settings; a REML config has a few dozen (the limit is {MAX_CONFIG_SETTINGS:,})"])
    raw_model = _validate(_RawConfig, dict(user), (), problems)
    if raw_model is None:
        raise ConfigError(problems)
    raw: _RawConfig = raw_model  # type: ignore[assignment]

    if raw.plugin is None:
        available = ", ".join(registry.names("task_sampler")) or "none installed"
        raise ConfigError([f"plugin: no task plugin given; use --plugin NAME (available: {available})"])
    try:
        task_spec = registry.get("task_sampler", raw.plugin).spec
    except UnknownComponentError as error:
        raise ConfigError([f"plugin: {error}"]) from None
    assert isinstance(task_spec, TaskSamplerSpec)
    preset = raw.preset

    core_data = deep_merge(
        deep_merge(CORE_PRESETS[preset], task_spec.experiment_presets.get(preset, {})),
        {"env": raw.env, "train": raw.train, "eval": raw.eval},
    )
    core_data.update(plugin=raw.plugin, preset=preset, seed=raw.seed)
    core = _validate(ExperimentConfig, core_data, (), problems)

    task_config = _validate(task_spec.config_model, deep_merge(task_spec.presets.get(preset, {}), raw.task), ("task",), problems)
    chosen: dict[str, Selected | None] = {}
    for section, kind in COMPONENT_SECTIONS.items():
        options = dict(getattr(raw, section))
        name = _section_name(options, section, problems) or getattr(task_spec.recommended, section)
        spec = _lookup(registry, kind, name, f"{section}.name", problems)
        chosen[section] = None
        if spec is not None:
            config = _validate(spec.config_model, deep_merge(spec.presets.get(preset, {}), options), (section,), problems)
            if config is not None:
                chosen[section] = Selected(name, spec, config)

    selected_baselines: dict[str, Selected] = {}
    for name in dict.fromkeys([*baselines, *raw.baselines]):
        spec = _lookup(registry, "baseline", name, _location(("baselines", name)), problems)
        if spec is None:
            continue
        options = raw.baselines.get(name, {})
        config = _validate(spec.config_model, deep_merge(spec.presets.get(preset, {}), options), ("baselines", name), problems)
        if config is not None:
            selected_baselines[name] = Selected(name, spec, config)

    if problems:
        raise ConfigError(problems)
    assert core is not None and task_config is not None
    return RunConfig(
        core=core,  # type: ignore[arg-type]
        task=Selected(raw.plugin, task_spec, task_config),
        baselines=selected_baselines,
        **chosen,  # type: ignore[arg-type]
    )


def default_baselines(registry: PluginRegistry, plugin: Any, command: Literal["run", "bench"]) -> list[str]:
    """The baselines ``command`` compares REML with when the user names none.

    The task family's recommendation (``Recommendation.run_baselines`` / ``baselines``) if it gives
    one, else every installed baseline that offers itself for the command (``BaselineSpec.compare_in``).
    A recommended baseline that is not installed (or disabled) is left out with a note on stderr.
    """
    try:
        task_spec = registry.get("task_sampler", plugin).spec if isinstance(plugin, str) else None
    except UnknownComponentError:
        task_spec = None  # resolve_config reports it
    installed = registry.names("baseline")
    recommended = None
    if isinstance(task_spec, TaskSamplerSpec):
        recommended = task_spec.recommended.run_baselines if command == "run" else task_spec.recommended.baselines
    if recommended is None:
        return [name for name in installed if command in getattr(registry.get("baseline", name).spec, "compare_in", ())]
    for name in recommended:
        if name not in installed:
            LOGGER.warning(f"reml-{command}: note: baseline {name!r}, recommended by {plugin!r}, is not installed (or disabled); "
                           "comparing without it")
    return [name for name in recommended if name in installed]


def load_resolved(path: Path, registry: PluginRegistry) -> RunConfig:
    """Re-resolve a run's ``config.json`` (for ``--resume`` and ``--from``)."""
    from reml_core.storage import read_json_file  # storage imports nothing of the config

    data = read_json_file(Path(path), "a run's config (a JSON object)", error=UserError)
    return resolve_config(registry, data)
