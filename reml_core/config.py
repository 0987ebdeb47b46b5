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
import difflib
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, Field, ValidationError, create_model, model_validator

from reml_core.errors import ConfigError, UnknownComponentError, UserError
from reml_core.registry import PluginRegistry
from reml_core.settings import (  # re-exported: the settings models lived here before reml_core.settings
    CORE_PRESETS,
    MAX_CONFIG_BYTES,
    MAX_CONFIG_SETTINGS,
    MAX_ITERATIONS,
    MAX_STEPS,
    MAX_TASKS,
    EnvConfig,
    EvalConfig,
    ExperimentConfig,
    StrictModel,
    TrainConfig,
    renames_of,
    resolve_workers,
)
from reml_core.storage import read_json_file

__all__ = [  # the settings models, importable from here as before
    "CORE_PRESETS",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_SETTINGS",
    "MAX_ITERATIONS",
    "MAX_STEPS",
    "MAX_TASKS",
    "EnvConfig",
    "EvalConfig",
    "ExperimentConfig",
    "StrictModel",
    "TrainConfig",
    "RunConfig",
    "Selected",
    "resolve_config",
    "load_resolved",
    "load_config_file",
    "parse_config_text",
    "parse_assignment",
    "deep_merge",
    "default_baselines",
    "renamed_settings",
    "same_setting",
]
from reml_core.specs import (
    NAMED_SECTIONS,
    SECTIONS,
    SPEC_TYPES,
    TABLE_EACH_KINDS,
    ComponentSpec,
    Preset,
    TaskSamplerSpec,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


class _RawCore(StrictModel):
    """The shape of a user's config before component sections are resolved: the core's keys."""

    plugin: str | None = None
    preset: Preset = "default"
    seed: Any = 0
    env: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _name_shorthand(cls, data: Any) -> Any:
        """``policy = "ppo-lstm"`` is short for ``[policy] name = "ppo-lstm"`` (every section chosen by name)."""
        if isinstance(data, Mapping):
            data = {
                key: {"name": value} if key in NAMED_SECTIONS and isinstance(value, str) else value
                for key, value in data.items()
            }
        return data


def _raw_section(kind: str) -> Any:
    """A component section as the user wrote it: one table, or one per component for baselines ([baselines.NAME])."""
    shape: Any = dict[str, dict[str, Any]] if kind in TABLE_EACH_KINDS else dict[str, Any]
    return (shape, Field(default_factory=dict))


#: The core's keys and every component kind's section (:data:`reml_core.specs.SECTIONS`), unresolved.
_RawConfig: type[_RawCore] = create_model(
    "_RawConfig",
    __base__=_RawCore,
    __module__=__name__,
    **{section: _raw_section(kind) for kind, section in SECTIONS.items()},
)


#: Config sections that choose a component by ``name``, and the kind of component each holds.
COMPONENT_SECTIONS: dict[str, str] = dict(NAMED_SECTIONS)


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
    """A fully resolved experiment: the core's config and every chosen component's config.

    One field per component kind, named after its config section (:data:`reml_core.specs.SECTIONS`;
    a test keeps them equal): the task family, one :class:`Selected` per section chosen by name,
    and the baselines by name.
    """

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
        for section in SECTIONS.values():
            chosen = getattr(self, section)
            if isinstance(chosen, Mapping):  # one table per component: [baselines.NAME]
                data[section] = {name: one.config.model_dump(mode="json") for name, one in chosen.items()}
            elif section in NAMED_SECTIONS:  # [encoder] name = "oracle", options...
                data[section] = chosen.to_dict()
            else:  # the task family, named by the top-level plugin key: its options only
                data[section] = chosen.config.model_dump(mode="json")
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
            raise ConfigError(
                [f"--config: {path} is {size:,} bytes; a REML config is a few KB (the limit is {MAX_CONFIG_BYTES:,})"]
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"--config: file not found: {path}"]) from None
    except IsADirectoryError:
        raise ConfigError([f"--config: {path} is a directory, not a config file"]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"--config: cannot read {path}: {error}"]) from None
    return parse_config_text(text, "toml" if suffix == ".toml" else "yaml", source=str(path))


class _DuplicateKey(yaml.YAMLError):
    pass


class _StrictYamlLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (as in TOML)
    rather than the last one silently replacing the first."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # <<: *base, which the keys beside it override
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: construct_mapping reports it
                    continue
                if duplicate:
                    raise _DuplicateKey(
                        f"the key {key!r} is given twice (line {key_node.start_mark.line + 1}); "
                        "YAML would keep only the last one"
                    )
        return super().construct_mapping(node, deep=deep)


def parse_config_text(text: str, fmt: str, source: str = "<config>") -> dict[str, Any]:
    """Parse config text (``toml`` or ``yaml``) into a mapping, or raise a one-line ConfigError."""
    try:
        if fmt == "toml":
            data: Any = tomllib.loads(text)
        else:
            data = yaml.load(text, Loader=_StrictYamlLoader)  # noqa: S506 (a SafeLoader)
    except Exception as error:  # every parser failure (incl. recursion on absurd nesting) is the user's input
        detail = " ".join(str(error).split())
        raise ConfigError([f"--config: {source}: invalid {fmt.upper()}: {detail}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"--config: {source}: the top level must be a table of settings, not a {type(data).__name__}"]
        )
    return data


def renamed_settings(registry: PluginRegistry) -> dict[str, str]:
    """Every renamed setting of a config: its former dotted key -> its dotted key now.

    Read from the models' aliases (:func:`reml_core.settings.renamed`): the core's sections and every
    registered plugin's config model, under its section (``encoder.``, ``baselines.NAME.``, ...), so a
    plugin renames a setting of its own without the core naming it. Both names in one layer are the
    model's error; :func:`deep_merge` uses this to let a later layer under either name replace an
    earlier one.
    """
    table: dict[str, str] = {}
    _add_renames(ExperimentConfig, "", table)
    for kind, spec_type in SPEC_TYPES.items():
        for name in registry.names(kind):
            prefix = f"{spec_type.section}.{name}." if spec_type.table_each else f"{spec_type.section}."
            _add_renames(registry.get(kind, name).spec.config_model, prefix, table)
    return table


def _add_renames(model: type[BaseModel], prefix: str, table: dict[str, str]) -> None:
    for new, former in renames_of(model).items():
        for old in former:
            table[prefix + old] = prefix + new
    for name, info in model.model_fields.items():  # nested sections (the core's env, train, eval)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            _add_renames(info.annotation, f"{prefix}{name}.", table)


def same_setting(a: str, b: str, renames: Mapping[str, str] | None = None) -> bool:
    """Whether two dotted keys name the same setting: equal, or one under a renamed setting's former
    name (``env.inner_lr`` and ``env.inner_adam_lr``; ``renames`` from :func:`renamed_settings`)."""
    renames = renames or {}
    return a == b or renames.get(a, a) == renames.get(b, b)


def _other_names(renames: Mapping[str, str], at: str, key: str) -> set[str]:
    """The other names (keys in the same table) of the setting ``key`` in the table at dotted path ``at``."""
    if not renames:
        return set()
    prefix = f"{at}." if at else ""
    full = prefix + key
    now = renames.get(full, full)
    names = {now, *(old for old, new in renames.items() if new == now)}
    return {
        name[len(prefix) :]
        for name in names
        if name != full and name.startswith(prefix) and "." not in name[len(prefix) :]
    }


def deep_merge(
    base: Mapping[str, Any], override: Mapping[str, Any], renames: Mapping[str, str] | None = None, *, at: str = ""
) -> dict[str, Any]:
    """``override`` on top of ``base``; nested mappings merge, anything else is replaced.

    With ``renames`` (:func:`renamed_settings`: dotted keys from the config's top; ``at`` is where
    ``base`` and ``override`` sit in it), a renamed setting in ``override`` replaces ``base``'s under
    either name.
    """
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        for other in _other_names(renames or {}, at, str(key)):
            if other not in override:
                merged.pop(other, None)
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value, renames, at=f"{at}.{key}" if at else str(key))
        else:
            merged[key] = copy.deepcopy(value)
    return merged


#: Tokens that make YAML read a one-line value as something other than what it says: an anchor
#: (``&a x`` is ``x``), an alias, a tag (``!!str 5``), a directive or document marker, and a block
#: mapping or list (``note: hi`` would be ``{note: hi}``).
_REINTERPRETING_TOKENS = (
    yaml.AnchorToken,
    yaml.AliasToken,
    yaml.TagToken,
    yaml.DirectiveToken,
    yaml.DocumentStartToken,
    yaml.DocumentEndToken,
    yaml.BlockMappingStartToken,
    yaml.BlockSequenceStartToken,
    yaml.BlockEntryToken,
)
#: YAML 1.1's other words for booleans; kept as text (pydantic reads them for a bool setting, and a
#: string setting keeps the word, e.g. a name ``no`` or ``on``).
_YAML11_BOOLEANS = frozenset({"yes", "no", "on", "off", "y", "n"})


def assignment_value(raw: str) -> Any:
    """The value of ``--set KEY=VALUE``: VALUE read as YAML (a number, ``true``, ``null``, ``[5, 10]``,
    ``{a: 1}``, a quoted string) only where YAML reads all of it as written; otherwise the text itself.

    YAML would silently change some text: drop a comment (``/data/omni #2`` would be ``/data/omni``,
    ``#2`` would be null), drop an anchor or tag (``&x``, ``!!str``), turn ``a: b`` into a mapping,
    fold lines, read ``1:30`` as 90 or ``2024-01-01`` as a date. A value is never truncated or changed:
    such text is taken literally (surrounding spaces removed).
    """
    text = raw.strip()
    if not text:
        return ""
    if "\n" in text or "\r" in text:
        return text
    try:
        tokens = list(yaml.scan(text))
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    content = [token for token in tokens if not isinstance(token, (yaml.StreamStartToken, yaml.StreamEndToken))]
    if not content or any(isinstance(token, _REINTERPRETING_TOKENS) for token in content):
        return text
    flows: list[bool] = []  # the open flow collections, True for a mapping
    for token in content:
        if isinstance(token, (yaml.FlowMappingStartToken, yaml.FlowSequenceStartToken)):
            flows.append(isinstance(token, yaml.FlowMappingStartToken))
        elif isinstance(token, (yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)) and flows:
            flows.pop()
        elif isinstance(token, (yaml.KeyToken, yaml.ValueToken)) and not (flows and flows[-1]):
            return text  # "a: b" in a list would be a one-key mapping
    if content[-1].end_mark.index < len(text):  # a comment after the value: YAML would drop it
        return text
    if len(content) == 1 and isinstance(content[0], yaml.ScalarToken) and content[0].plain:
        if isinstance(value, bool) and text.lower() in _YAML11_BOOLEANS:
            return text
        if isinstance(value, (int, float)) and not isinstance(value, bool) and ":" in text:  # sexagesimal
            return text
        if not isinstance(value, (str, int, float, bool, type(None))):  # a date or timestamp
            return text
    return value


def parse_assignment(text: str) -> dict[str, Any]:
    """``a.b.c=VALUE`` as a nested dict, for ``--set`` (VALUE as :func:`assignment_value` reads it)."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(part.strip() for part in path):
        raise ConfigError([f"--set: expected KEY.PATH=VALUE, got {text!r}"])
    value = assignment_value(raw)
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


#: Top-level tables a config file may hold for another tool, and what to say when one reaches a tool
#: that takes a single configuration.
_OTHER_TOOLS_KEYS: dict[tuple[int | str, ...], str] = {
    ("sweep",): "the [sweep] table is reml-sweep's search space; this command runs one configuration: "
    "run the sweep with reml-sweep --config FILE, or drop the table (reml-sweep writes each "
    "configuration it tried, and best.toml, for reml-run)",
}


def _format_errors(
    error: ValidationError, prefix: Sequence[str | int] = (), model: type[BaseModel] | None = None
) -> list[str]:
    lines = []
    for item in error.errors(include_url=False):
        location = _location((*prefix, *item["loc"]))
        message = " ".join(str(item["msg"]).split())
        if item["type"] not in ("missing", "extra_forbidden") and not isinstance(item.get("input"), (dict, list)):
            message += f" (got {_short(item.get('input'))})"
        if item["type"] == "extra_forbidden" and tuple(item["loc"]) in _OTHER_TOOLS_KEYS and not prefix:
            message = _OTHER_TOOLS_KEYS[tuple(item["loc"])]
        elif item["type"] == "extra_forbidden" and model is not None:
            message = _unknown_setting(model, tuple(item["loc"]), message)
        lines.append(f"{location}: {message}")
    return lines


def _setting_names(model: type[BaseModel]) -> list[str]:
    """The names a model accepts: each field's name and, for a renamed setting, its former name."""
    names: list[str] = []
    for name, info in model.model_fields.items():
        names.append(info.alias or name)
        alias = info.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        names += [choice for choice in choices if isinstance(choice, str)]
    return list(dict.fromkeys(names))


def _model_at(model: type[BaseModel], path: Sequence[Any]) -> type[BaseModel] | None:
    """The model that validates the mapping at ``path`` inside ``model`` (None if not a model there)."""
    for part in path:
        info = model.model_fields.get(str(part))
        annotation = getattr(info, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _unknown_setting(model: type[BaseModel], loc: tuple[Any, ...], message: str) -> str:
    """Pydantic's message for a key the model does not take, with the closest valid names
    (``did you mean 'env_steps'?``) when some are close."""
    owner = _model_at(model, loc[:-1])
    if owner is None or not isinstance(loc[-1], str):
        return message
    close = difflib.get_close_matches(loc[-1], _setting_names(owner), n=3, cutoff=0.6)
    return f"{message}; did you mean {' or '.join(repr(name) for name in close)}?" if close else message


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
        problems.extend(_format_errors(error, prefix, model))
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
        raise ConfigError(
            [f"config: {settings:,} settings; a REML config has a few dozen (the limit is {MAX_CONFIG_SETTINGS:,})"]
        )
    raw_model = _validate(_RawConfig, dict(user), (), problems)
    if raw_model is None:
        raise ConfigError(problems)
    raw: Any = raw_model  # a _RawConfig: the core's keys, then one attribute per section

    if raw.plugin is None:
        available = ", ".join(registry.names("task_sampler")) or "none installed"
        raise ConfigError([f"plugin: no task plugin given; use --plugin NAME (available: {available})"])
    try:
        task_spec = registry.get("task_sampler", raw.plugin).spec
    except UnknownComponentError as error:
        raise ConfigError([f"plugin: {error}"]) from None
    assert isinstance(task_spec, TaskSamplerSpec)
    preset = raw.preset

    family_preset = dict(task_spec.experiment_presets.get(preset, {}))
    # A family may set the budgets of baselines on its tasks (e.g. fewer MAML iterations on images,
    # where each costs far more): between the baseline's own preset and the user's options, and only
    # for baselines the run evaluates anyway.
    family_baselines = family_preset.pop("baselines", {})
    renames = renamed_settings(registry)
    core_data = deep_merge(
        deep_merge(CORE_PRESETS[preset], family_preset, renames),
        {"env": raw.env, "train": raw.train, "eval": raw.eval},
        renames,
    )
    core_data.update(plugin=raw.plugin, preset=preset, seed=raw.seed)
    core = _validate(ExperimentConfig, core_data, (), problems)

    task_config = _validate(
        task_spec.config_model,
        deep_merge(task_spec.presets.get(preset, {}), raw.task, renames, at="task"),
        ("task",),
        problems,
    )
    chosen: dict[str, Selected | None] = {}
    for section, kind in COMPONENT_SECTIONS.items():
        options = dict(getattr(raw, section))
        name = _section_name(options, section, problems) or getattr(task_spec.recommended, section)
        spec = _lookup(registry, kind, name, f"{section}.name", problems)
        chosen[section] = None
        if spec is not None:
            config = _validate(
                spec.config_model,
                deep_merge(spec.presets.get(preset, {}), options, renames, at=section),
                (section,),
                problems,
            )
            if config is not None:
                chosen[section] = Selected(name, spec, config)

    selected_baselines: dict[str, Selected] = {}
    for name in dict.fromkeys([*baselines, *raw.baselines]):
        spec = _lookup(registry, "baseline", name, _location(("baselines", name)), problems)
        if spec is None:
            continue
        options = raw.baselines.get(name, {})
        at = f"baselines.{name}"
        budget = deep_merge(spec.presets.get(preset, {}), family_baselines.get(name, {}), renames, at=at)
        config = _validate(
            spec.config_model, deep_merge(budget, options, renames, at=at), ("baselines", name), problems
        )
        if config is not None:
            selected_baselines[name] = Selected(name, spec, config)

    if problems:
        raise ConfigError(problems)
    assert isinstance(core, ExperimentConfig) and task_config is not None
    if core.train.workers is None:  # recorded as a number, so config.json (--resume, --from) repeats the run's split
        core.train.workers = resolve_workers(None, core.train.n_envs)
    return RunConfig(
        core=core,
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
            # A note for the person at the terminal (stderr, like the CLIs' warnings), not a log record.
            print(
                f"reml-{command}: note: baseline {name!r}, recommended by {plugin!r}, is not installed (or disabled); "
                "comparing without it",
                file=sys.stderr,
            )
    return [name for name in recommended if name in installed]


def only_chosen_baselines(config: RunConfig, chosen: Sequence[str], prog: str, flag: str) -> RunConfig:
    """``config`` evaluating only the ``chosen`` baselines.

    A baseline's options (``[baselines.maml]``, ``--set baselines.maml.iterations=5``) configure it;
    they never add it to a command, which evaluates the baselines it is told to (``--baselines``)
    or its default ones. Options given for a baseline not evaluated are validated, then left out
    with a note on stderr saying how to add it.
    """
    unused = [name for name in config.baselines if name not in chosen]
    if not unused:
        return config
    names = ", ".join(f"baselines.{name}" for name in unused)
    add = ",".join(dict.fromkeys([*chosen, *unused]))
    print(
        f"{prog}: note: {names} {'configures a baseline' if len(unused) == 1 else 'configure baselines'} this run does "
        "not "
        f"evaluate; options never add a baseline (add it with {flag} {add})",
        file=sys.stderr,
    )
    return replace(config, baselines={name: one for name, one in config.baselines.items() if name in chosen})


def load_resolved(path: Path, registry: PluginRegistry) -> RunConfig:
    """Re-resolve a run's ``config.json`` (for ``--resume`` and ``--from``)."""
    data = read_json_file(Path(path), "a run's config (a JSON object)", error=UserError)
    for (section, key), value in RECORDED_BEFORE.items():
        part = data.get(section) if isinstance(data, dict) else None
        if isinstance(part, dict) and key not in part:
            part[key] = value
    return resolve_config(registry, data)


#: What a run recorded before a setting existed did, where a preset's default is now something else.
RECORDED_BEFORE: dict[tuple[str, str], Any] = {
    ("train", "workers"): 1,  # the run was made in one process
    ("train", "overlap_update"): False,  # each policy update was waited for
    ("train", "split"): "ends",  # its workers shared each step's finished networks only
    ("env", "candidate_loss"): "none",  # the policy saw no candidate scores
    ("eval", "reml_rollouts"): 1,  # one deterministic rollout per test task
}
