"""The typed records plugins return from their hooks: one per component they provide.

Every record carries a name (unique within its kind), a factory, the pydantic model that
validates the component's config section, and a one-line description. Records are checked
when they are created, so a malformed one fails inside the plugin that made it and the
registry can report that plugin by name.

Each record type also declares, once, what the rest of REML needs to know about its kind of
component (its hook, how messages name it, its config section, the flag that picks one), and every
table of kinds at the end of this module is derived from those declarations. Only the standard
library is imported here, so the command-line tools can build their flags from these tables before
anything heavy is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

if TYPE_CHECKING:
    from pydantic import BaseModel

#: Every kind of component, for type checkers; a test checks it against :data:`KINDS`.
Kind = Literal["task_sampler", "state_encoder", "layer_pool", "reward", "policy", "baseline"]

Preset = Literal["smoke", "default", "full"]
PRESETS: tuple[Preset, ...] = ("smoke", "default", "full")

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


#: Hyperparameters the core itself knows how to apply when the policy chooses them (``env.choose``);
#: a plugin's :class:`HyperparameterChoice` may not take one of these names.
BUILTIN_CHOICES: tuple[str, ...] = ("finetune_sgd_lr", "finetune_steps", "inner_adam_lr", "inner_steps")


@dataclass(frozen=True, kw_only=True)
class HyperparameterChoice:
    """A hyperparameter a component lets the policy choose per episode (issue 23), declared on its record.

    ``values`` are the candidates a config may offer (numbers or strings); a run offers them when
    its config names the choice: ``env.choose.NAME = [...]`` (a subset of ``values``, in any order).
    ``apply(network, value)`` changes a freshly built network in place for the chosen value, before
    it is fine-tuned, trained or measured (during meta-training and at evaluation alike); it must
    keep the parameters the pool put there, since the pool's update reads them. Networks with a
    plugin's choice are trained one at a time (a stacked network is the core's, not the plugin's).
    """

    name: str
    values: tuple[Any, ...]
    description: str
    apply: Callable[[Any, Any], None]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"HyperparameterChoice: name {self.name!r} must be lowercase letters, digits, '-' or '_'")
        if self.name in BUILTIN_CHOICES or self.name == "stop":
            raise ValueError(f"HyperparameterChoice {self.name!r}: the name is the core's own")
        values = tuple(self.values) if not isinstance(self.values, (str, bytes)) else ()
        if not values or not all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in values):
            raise ValueError(
                f"HyperparameterChoice {self.name!r}: values must be a non-empty tuple of numbers or strings"
            )
        if len(set(values)) != len(values):
            raise ValueError(f"HyperparameterChoice {self.name!r}: values must be distinct")
        object.__setattr__(self, "values", values)
        if not isinstance(self.description, str) or not self.description.strip() or "\n" in self.description:
            raise ValueError(f"HyperparameterChoice {self.name!r}: description must be one non-empty line")
        if not callable(self.apply):
            raise TypeError(f"HyperparameterChoice {self.name!r}: apply is not callable")


@dataclass(frozen=True, kw_only=True)
class ComponentSpec:
    """What every record has in common.

    ``factory(config, context)`` builds the component from its validated config (an instance of
    ``config_model``) and a :class:`reml_core.interfaces.BuildContext`. ``presets`` maps a preset
    name (``smoke``, ``default``, ``full``) to overrides of this component's own config section.
    """

    #: What each record type declares about its kind of component, once; every table of kinds
    #: (:data:`KINDS`, :data:`KIND_LABELS`, :data:`HOOKS`, :data:`SECTIONS`,
    #: :data:`NAMED_SECTIONS`, :data:`CHOICE_FLAGS`) is derived from them.
    kind: ClassVar[Kind]
    hook: ClassVar[str]  # the hook (reml_core.hookspecs) whose records are of this type
    kind_label: ClassVar[str]  # how messages name one component of the kind
    section: ClassVar[str]  # the config section that configures it
    chosen_by_name: ClassVar[bool] = True  # the section picks one by ``name`` (encoder = "oracle")
    table_each: ClassVar[bool] = False  # the section holds one table per component ([baselines.NAME])
    #: For the command-line flag that picks one component of the kind (see :data:`CHOICE_FLAGS`):
    #: what it picks, as its help text says it, and built-in names the help gives as examples.
    flag_help: ClassVar[str] = ""
    flag_examples: ClassVar[tuple[str, ...]] = ()
    #: The :mod:`reml_core.interfaces` context type its factory receives (named, so this module
    #: stays free of torch): the stage whose fields the component may rely on being set.
    context: ClassVar[str] = "TaskContext"

    name: str
    factory: Callable[..., Any]
    config_model: type[BaseModel]
    description: str
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Hyperparameters this component lets the policy choose when a config asks (``env.choose.NAME``).
    choices: tuple[HyperparameterChoice, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.choices, HyperparameterChoice) or not all(
            isinstance(c, HyperparameterChoice) for c in self.choices
        ):
            raise TypeError(
                f"{type(self).__name__} {self.name!r}: choices must be a tuple of HyperparameterChoice records"
            )
        object.__setattr__(self, "choices", tuple(self.choices))
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"{type(self).__name__}: name {self.name!r} must be lowercase letters, digits, '-' or '_'")
        if not callable(self.factory):
            raise TypeError(f"{type(self).__name__} {self.name!r}: factory is not callable")
        from pydantic import BaseModel  # noqa: PLC0415 - lazy: start-up time: pydantic (the command-line tools import this module early)

        if not (isinstance(self.config_model, type) and issubclass(self.config_model, BaseModel)):
            raise TypeError(f"{type(self).__name__} {self.name!r}: config_model must be a pydantic model class")
        if not isinstance(self.description, str) or not self.description.strip() or "\n" in self.description:
            raise ValueError(f"{type(self).__name__} {self.name!r}: description must be one non-empty line")
        unknown = set(self.presets) - set(PRESETS)
        if unknown:
            raise ValueError(f"{type(self).__name__} {self.name!r}: unknown presets {sorted(unknown)}")


@dataclass(frozen=True, kw_only=True)
class Recommendation:
    """The components a task plugin suggests; each can be overridden by flag or config file.

    ``baselines`` are the methods ``reml-bench`` compares REML with by default and
    ``run_baselines`` the ones ``reml-run`` evaluates beside REML; None (the default) means every
    installed baseline that offers itself for that command (``BaselineSpec.compare_in``). The user
    overrides both (``reml-bench --methods``, ``reml-run --baselines``). A recommended baseline
    that is not installed is skipped with a note; one the user names must exist.

    Its component fields are the config sections chosen by name (:data:`NAMED_SECTIONS`, a test
    keeps them equal): the core reads them by section, ``getattr(recommendation, section)``.
    """

    encoder: str
    pool: str
    reward: str
    policy: str
    baselines: tuple[str, ...] | None = None
    run_baselines: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for field_name in ("baselines", "run_baselines"):
            value = getattr(self, field_name)
            if value is None:
                continue
            if isinstance(value, str) or not all(isinstance(name, str) for name in value):
                raise TypeError(f"Recommendation.{field_name} must be a tuple of baseline names")
            object.__setattr__(self, field_name, tuple(value))


@dataclass(frozen=True, kw_only=True)
class TaskSamplerSpec(ComponentSpec):
    """A task family. Factory returns a :class:`reml_core.interfaces.TaskSampler`.

    ``recommended`` names the components ``reml-run --plugin NAME`` uses unless told otherwise;
    ``experiment_presets`` maps a preset to overrides of the experiment's own sections
    (``env``, ``train``, ``eval``): the budgets that make ``smoke`` quick and ``full`` thorough;
    its ``baselines`` table may also set baselines' options on this family (``{"maml":
    {"iterations": 10_000}}``), over each baseline's own preset and under the user's options.
    """

    kind: ClassVar[Kind] = "task_sampler"
    hook: ClassVar[str] = "reml_task_samplers"
    kind_label: ClassVar[str] = "task plugin"
    section: ClassVar[str] = "task"
    chosen_by_name: ClassVar[bool] = False  # chosen by the top-level ``plugin`` key (--plugin)
    flag_help: ClassVar[str] = "task plugin (task family; reml-plugins lists them)"
    flag_examples: ClassVar[tuple[str, ...]] = ("sine", "digits")
    context: ClassVar[str] = "BuildContext"
    recommended: Recommendation
    experiment_presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.recommended, Recommendation):
            raise TypeError(f"TaskSamplerSpec {self.name!r}: recommended must be a Recommendation")
        unknown = set(self.experiment_presets) - set(PRESETS)
        if unknown:
            raise ValueError(f"TaskSamplerSpec {self.name!r}: unknown experiment presets {sorted(unknown)}")
        for preset, sections in self.experiment_presets.items():
            extra = set(sections) - {"env", "train", "eval", "baselines"}
            if extra:
                raise ValueError(
                    f"TaskSamplerSpec {self.name!r}: experiment preset {preset!r} sets {sorted(extra)}; "
                    "it may set env, train, eval and baselines"
                )


@dataclass(frozen=True, kw_only=True)
class StateEncoderSpec(ComponentSpec):
    """Turns a task into the task part of the observation. Factory returns a ``StateEncoder``."""

    kind: ClassVar[Kind] = "state_encoder"
    hook: ClassVar[str] = "reml_state_encoders"
    kind_label: ClassVar[str] = "state encoder"
    section: ClassVar[str] = "encoder"
    flag_help: ClassVar[str] = "state encoder"
    flag_examples: ClassVar[tuple[str, ...]] = ("oracle", "support-set")


@dataclass(frozen=True, kw_only=True)
class LayerPoolSpec(ComponentSpec):
    """A kind of global layer pool (dense, conv, ...). Factory returns a ``LayerPool``."""

    kind: ClassVar[Kind] = "layer_pool"
    hook: ClassVar[str] = "reml_layer_pools"
    kind_label: ClassVar[str] = "layer pool"
    section: ClassVar[str] = "pool"
    flag_help: ClassVar[str] = "layer-pool kind"
    flag_examples: ClassVar[tuple[str, ...]] = ("dense", "conv")


@dataclass(frozen=True, kw_only=True)
class RewardSpec(ComponentSpec):
    """Maps the losses of a composed network to a reward. Factory returns a ``RewardFunction``."""

    kind: ClassVar[Kind] = "reward"
    hook: ClassVar[str] = "reml_rewards"
    kind_label: ClassVar[str] = "reward function"
    section: ClassVar[str] = "reward"
    flag_help: ClassVar[str] = "reward function"
    flag_examples: ClassVar[tuple[str, ...]] = ("neg-mse",)


@dataclass(frozen=True, kw_only=True)
class PolicySpec(ComponentSpec):
    """An RL algorithm and policy network. Factory returns a ``PolicyBackend``."""

    kind: ClassVar[Kind] = "policy"
    hook: ClassVar[str] = "reml_policies"
    kind_label: ClassVar[str] = "policy backend"
    section: ClassVar[str] = "policy"
    flag_help: ClassVar[str] = "policy backend"
    flag_examples: ClassVar[tuple[str, ...]] = ("ppo-mlp", "ppo-lstm")
    context: ClassVar[str] = "PolicyContext"


@dataclass(frozen=True, kw_only=True)
class BaselineSpec(ComponentSpec):
    """A method REML is compared with (MAML, scratch). Factory returns a ``Baseline``.

    ``label`` is its name in tables and plots (default: ``name``). ``compare_in`` names the
    commands that compare with it unless told otherwise: ``"bench"`` (``reml-bench``) and, for a
    baseline quick enough to add to every run, ``"run"`` (``reml-run``).
    """

    kind: ClassVar[Kind] = "baseline"
    hook: ClassVar[str] = "reml_baselines"
    context: ClassVar[str] = "BaselineContext"
    kind_label: ClassVar[str] = "baseline"
    section: ClassVar[str] = "baselines"
    chosen_by_name: ClassVar[bool] = False
    table_each: ClassVar[bool] = True  # several at once, each configured in its own [baselines.NAME]
    label: str = ""
    compare_in: tuple[str, ...] = ("bench",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.label, str) or "\n" in self.label:
            raise ValueError(f"BaselineSpec {self.name!r}: label must be one line of text")
        if not self.label.strip():
            object.__setattr__(self, "label", self.name)
        if isinstance(self.compare_in, str) or not set(self.compare_in) <= {"run", "bench"}:
            raise ValueError(f"BaselineSpec {self.name!r}: compare_in must be a tuple of 'run' and/or 'bench'")


#: The one list of component kinds: everything below is derived from it.
SPEC_TYPES: dict[str, type[ComponentSpec]] = {
    spec.kind: spec for spec in (TaskSamplerSpec, StateEncoderSpec, LayerPoolSpec, RewardSpec, PolicySpec, BaselineSpec)
}
KINDS = cast("tuple[Kind, ...]", tuple(SPEC_TYPES))  # each key is a spec's kind, a Kind
#: How messages name each kind ("layer pool").
KIND_LABELS: dict[str, str] = {kind: spec.kind_label for kind, spec in SPEC_TYPES.items()}
#: The hook each kind's records come from.
HOOKS: dict[str, str] = {kind: spec.hook for kind, spec in SPEC_TYPES.items()}
#: The config section of each kind.
SECTIONS: dict[str, str] = {kind: spec.section for kind, spec in SPEC_TYPES.items()}
#: Config sections that choose one component by ``name``, and the kind each holds.
NAMED_SECTIONS: dict[str, str] = {spec.section: kind for kind, spec in SPEC_TYPES.items() if spec.chosen_by_name}
#: Kinds whose section holds one table per component (``[baselines.NAME]``), several at once.
TABLE_EACH_KINDS: frozenset[str] = frozenset(kind for kind, spec in SPEC_TYPES.items() if spec.table_each)
#: The flags of ``reml-run``, ``reml-bench`` and ``reml-sweep`` that pick a component by name
#: (without ``--``), and the kind each picks: ``--plugin`` the task family (the config's top-level
#: ``plugin`` key), then ``--SECTION NAME`` for every section chosen by name (it sets ``SECTION.name``).
CHOICE_FLAGS: dict[str, str] = {"plugin": TaskSamplerSpec.kind, **NAMED_SECTIONS}
