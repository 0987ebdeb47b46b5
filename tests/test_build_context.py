"""Build contexts in stages, and one error for a component that cannot be built.

(a) Every factory, of every installed component of the sine and digits families, is called by the
core with the context of its stage, whose fields are all set. (b) Every built-in refusal of a
combination is a ComponentBuildError naming the component. (c) From the command line such a
refusal is one line on stderr, exit 2, no traceback, nothing written.
"""

from __future__ import annotations

import dataclasses
import warnings
from types import SimpleNamespace

import pytest
from helpers.runs import TINY, cli

from reml_core import hookimpl
from reml_core.config import RunConfig, Selected, resolve_config
from reml_core.errors import ComponentBuildError, ConfigError, PluginError, UserError
from reml_core.experiment import STAGE_CONTEXTS, build_components, build_one, check_policy_builds
from reml_core.interfaces import BaselineContext, BuildContext, PolicyContext, TaskContext
from reml_core.registry import PluginRegistry
from reml_core.specs import SECTIONS, StateEncoderSpec
from reml_core.training import MetaTrainer

FAMILIES = ("sine", "digits")
SELECTED_BY_NAME = {"state_encoder": "encoder", "layer_pool": "pool", "reward": "reward", "policy": "policy"}


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry.discover(disabled=())


# -- (a) each stage gets a context whose fields are set ------------------------------------------


class Spy:
    """Wraps a factory and records the context the core called it with."""

    def __init__(self, kind: str, factory) -> None:
        self.kind, self.factory, self.contexts = kind, factory, []

    def __call__(self, config, context):
        self.contexts.append(context)
        return self.factory(config, context)


def _spied(selected: Selected, spies: list[Spy]) -> Selected:
    spy = Spy(selected.spec.kind, selected.spec.factory)
    spies.append(spy)
    return dataclasses.replace(selected, spec=dataclasses.replace(selected.spec, factory=spy))


def _with_spies(config: RunConfig, spies: list[Spy]) -> RunConfig:
    chosen = {
        section: _spied(getattr(config, section), spies) for section in ("task", "encoder", "pool", "reward", "policy")
    }
    baselines = {name: _spied(selected, spies) for name, selected in config.baselines.items()}
    return dataclasses.replace(config, **chosen, baselines=baselines)


def _combinations(registry: PluginRegistry) -> list[tuple[str, str, str]]:
    """Every installed encoder, pool, reward and policy, each in turn in a family's recommended setup."""
    return [(family, kind, name) for family in FAMILIES for kind in SELECTED_BY_NAME for name in registry.names(kind)]


def _builds(registry: PluginRegistry, family: str, section: str, name: str) -> bool:
    config = resolve_config(registry, {"plugin": family, "preset": "smoke", section: {"name": name}})
    try:
        check_policy_builds(build_components(config))
    except ComponentBuildError:
        return False
    return True


def _assert_stage(kind: str, context: BuildContext, components) -> None:
    stage = STAGE_CONTEXTS[kind]
    assert type(context) is stage, f"{kind} got a {type(context).__name__}, not a {stage.__name__}"
    for field in dataclasses.fields(context):
        if field.name != "log_dir":  # None on purpose: a build that writes no training log
            assert getattr(context, field.name) is not None, f"{kind} got {field.name} = None"
    assert context.seed == components.config.seed and context.depth == components.config.core.env.depth
    if isinstance(context, TaskContext):
        assert context.task_sampler is components.task_sampler
    if isinstance(context, BaselineContext):
        assert context.pool is components.pool and context.encoder is components.encoder


@pytest.mark.parametrize("family", FAMILIES)
def test_every_stage_gets_a_context_whose_fields_are_set(registry, family):
    """Every component that builds for the family, baselines and policies included, sees its stage's context."""
    seen: set[str] = set()
    for fam, kind, name in _combinations(registry):
        if fam != family or not _builds(registry, family, SELECTED_BY_NAME[kind], name):
            continue
        spies: list[Spy] = []
        config = resolve_config(
            registry,
            {"plugin": family, "preset": "smoke", SELECTED_BY_NAME[kind]: {"name": name}},
            baselines=registry.names("baseline"),
        )
        config = _with_spies(config, spies)
        components = build_components(config)
        check_policy_builds(components)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for selected in config.baselines.values():
                try:
                    build_one(selected, components.context)
                # a baseline that refuses this family (maml-select on images) says so cleanly
                except ComponentBuildError:
                    continue
        for spy in spies:
            for context in spy.contexts:
                _assert_stage(spy.kind, context, components)
                seen.add(spy.kind)
    assert seen == set(STAGE_CONTEXTS)  # every kind was built and checked


def test_the_trainer_builds_the_policy_with_its_environment_and_log_folder(registry, tmp_path):
    spies: list[Spy] = []
    config = _with_spies(resolve_config(registry, {"plugin": "sine", "preset": "smoke"}), spies)
    components = build_components(config)
    trainer = MetaTrainer(config, components, tmp_path)
    [policy_spy] = [spy for spy in spies if spy.kind == "policy"]
    [context] = policy_spy.contexts
    _assert_stage("policy", context, components)
    assert context.env is trainer.env and context.log_dir == tmp_path / "logs"
    trainer.env.close()
    trainer.eval_env.close()


def test_stages_extend_one_another_and_an_earlier_stage_answers_none_for_later_fields():
    base = BuildContext(seed=3, preset="smoke", depth=4, device="cpu")
    task = base.with_task_sampler("sampler")
    baseline = task.with_pool_and_encoder("pool", "encoder")
    policy = baseline.with_env("env")
    assert isinstance(policy, BaselineContext) and isinstance(baseline, TaskContext) and isinstance(task, BuildContext)
    assert (policy.seed, policy.preset, policy.depth, policy.task_sampler, policy.pool, policy.env, policy.log_dir) == (
        3,
        "smoke",
        4,
        "sampler",
        "pool",
        "env",
        None,
    )
    assert type(policy) is PolicyContext
    # A plugin written for the single context of old reads a later stage's field as None.
    assert base.task_sampler is None and task.pool is None and task.encoder is None and baseline.env is None
    with pytest.raises(AttributeError):
        base.no_such_field  # noqa: B018
    with pytest.raises(TypeError, match="task_sampler"):
        TaskContext(seed=0)  # a stage's fields are required


# -- (b) every built-in refusal is a ComponentBuildError naming the component ---------------------


REFUSALS = [
    # (family, user settings, kind label, component name, what the reason says)
    ("sine", {"encoder": "prototypes"}, "state encoder", "prototypes", "needs image inputs"),
    ("digits", {"encoder": "support-set"}, "state encoder", "support-set", "reads 1-D inputs and targets"),
    ("sine", {"pool": "conv"}, "layer pool", "conv", "the conv pool needs a task sampler with input_shape"),
    ("digits", {"pool": "dense"}, "layer pool", "dense", "take flat inputs"),
    ("digits", {"reward": "neg-mse-minmax"}, "reward function", "neg-mse-minmax", "class labels"),
    (
        "digits",
        {"encoder": {"name": "prototypes", "grid": 9}},
        "state encoder",
        "prototypes",
        "grid = 9 is larger than the 8x8 images",
    ),
]


@pytest.mark.parametrize(
    ("family", "user", "kind", "name", "reason"), REFUSALS, ids=[f"{r[0]}-{r[3]}" for r in REFUSALS]
)
def test_a_built_in_refusal_is_a_component_build_error_naming_the_component(registry, family, user, kind, name, reason):
    config = resolve_config(registry, {"plugin": family, "preset": "smoke", **user})
    with pytest.raises(ComponentBuildError) as caught:
        build_components(config)
    error = caught.value
    assert (error.kind, error.name) == (kind, name) and reason in error.reason
    section = next(iter(user))
    assert error.problems == [f"{section}: {kind} {name!r} cannot be used in this run: {error.reason}"] == [str(error)]
    assert isinstance(error, UserError) and isinstance(error, ConfigError) and error.exit_code == 2


def test_a_baseline_refusal_is_one_too(registry):
    config = resolve_config(
        registry, {"plugin": "digits", "preset": "smoke", "baselines": {"maml": {"shots": 10}}}, baselines=["maml"]
    )
    components = build_components(config)
    with pytest.raises(ComponentBuildError) as caught:
        build_one(config.baselines["maml"], components.context)
    assert (caught.value.kind, caught.value.name) == ("baseline", "maml")
    assert str(caught.value).startswith("baselines.maml: baseline 'maml' cannot be used in this run: K = 10 per class")
    # The same refusal without a layer pool, from the factory itself: the reason alone.
    context = dataclasses.replace(components.context, pool=None)
    with pytest.raises(ComponentBuildError, match="^the maml baseline meta-learns the layer pool's architecture"):
        config.baselines["maml"].spec.factory(config.baselines["maml"].spec.config_model(), context)


def test_a_policy_refusal_leads_with_the_setting_and_names_the_backend(registry):
    config = resolve_config(
        registry,
        {
            "plugin": "sine",
            "preset": "smoke",
            "encoder": "oracle",
            "policy": {"name": "ppo-mlp", "features": "point-set"},
        },
    )
    with pytest.raises(ComponentBuildError) as caught:
        check_policy_builds(build_components(config))
    assert (caught.value.kind, caught.value.name) == ("policy backend", "ppo-mlp")
    assert str(caught.value) == (f"policy: {caught.value.reason}; policy backend 'ppo-mlp' cannot be used in this run")
    assert caught.value.reason.startswith(
        "policy.features = 'point-set' needs a state encoder that declares a point set"
    )


def test_a_family_whose_data_does_not_fit_is_one_too(registry, tmp_path):
    config = resolve_config(registry, {"plugin": "omniglot", "preset": "smoke", "task": {"root": str(tmp_path)}})
    with pytest.raises(ComponentBuildError) as caught:
        build_components(config)
    assert (caught.value.kind, caught.value.name) == ("task plugin", "omniglot")
    assert str(caught.value).startswith("task.root: no character folders found")
    assert str(caught.value).endswith("; task plugin 'omniglot' cannot be used in this run")


def test_a_reward_that_cannot_calibrate_on_what_the_run_gives_it_is_one_too(registry, tmp_path):
    config = resolve_config(
        registry,
        {
            "plugin": "sine",
            "preset": "smoke",
            "reward": "neg-mse-minmax",
            "train": {"calibration_episodes": 1, "progress": False},
        },
    )
    trainer = MetaTrainer(config, build_components(config), tmp_path, read_only=True)
    with pytest.raises(ComponentBuildError) as caught:
        trainer.calibrate()
    assert (caught.value.kind, caught.value.name) == ("reward function", "neg-mse-minmax")
    assert "at least two finite losses, but only 1 of 1 calibration episodes" in str(caught.value)
    assert "train.calibration_episodes" in str(caught.value)


def test_the_core_names_a_refusal_after_the_record_whatever_the_class_calls_itself(registry):
    """A plugin that registers a built-in class under its own name is named by that name."""
    from reml_plugins.encoders.prototypes import PrototypesConfig, build_prototypes

    spec = StateEncoderSpec(name="my-protos", factory=build_prototypes, config_model=PrototypesConfig, description="d")

    def reml_state_encoders():
        return [spec]

    registry = PluginRegistry.discover(disabled=())
    registry.register(SimpleNamespace(reml_state_encoders=hookimpl(reml_state_encoders)), name="mine")
    config = resolve_config(registry, {"plugin": "sine", "preset": "smoke", "encoder": "my-protos"})
    with pytest.raises(
        ComponentBuildError, match=r"^encoder: state encoder 'my-protos' cannot be used in this run: the prototypes"
    ):
        build_components(config)


def test_plain_value_errors_and_bugs_keep_their_handling(registry):
    """A ValueError from a plugin written before ComponentBuildError is still a config error naming it;
    any other exception is still the plugin's own failure."""

    def refuses(config, context):
        raise ValueError("not with\n this family")

    def breaks(config, context):
        raise KeyError("width")

    for name, factory, expected, line in (
        (
            "old-style",
            refuses,
            ConfigError,
            "encoder: state encoder 'old-style' cannot be used in this run: not with this family",
        ),
        ("buggy", breaks, PluginError, "state encoder 'buggy' failed to build: KeyError: 'width'"),
    ):
        spec = StateEncoderSpec(name=name, factory=factory, config_model=_empty_model(), description="d")
        selected = Selected(name=name, spec=spec, config=spec.config_model())
        with pytest.raises(expected) as caught:
            build_one(selected, TaskContext(seed=0, task_sampler=object()))
        assert str(caught.value).startswith(line) and not isinstance(caught.value, ComponentBuildError)


def test_the_core_never_hands_a_factory_the_wrong_stage(registry):
    config = resolve_config(registry, {"plugin": "sine", "preset": "smoke"})
    with pytest.raises(TypeError, match="built with a TaskContext, not a BuildContext"):
        build_one(config.encoder, BuildContext(seed=0))


def test_every_kind_has_a_stage():
    assert set(STAGE_CONTEXTS) == set(SECTIONS)


def _empty_model():
    from pydantic import BaseModel, ConfigDict

    class Empty(BaseModel):
        model_config = ConfigDict(extra="forbid")

    return Empty


# -- (c) from the command line: one line, exit 2, no traceback ---------------------------------


CLI_REFUSALS = [
    (
        ["--plugin", "digits", "--pool", "dense"],
        "pool: layer pool 'dense' cannot be used in this run: the dense pool's networks take flat inputs",
    ),
    (
        ["--plugin", "digits", "--reward", "neg-mse-minmax"],
        "reward: reward function 'neg-mse-minmax' cannot be used in this run: it scales",
    ),
    (
        ["--plugin", "sine", "--encoder", "prototypes"],
        "encoder: state encoder 'prototypes' cannot be used in this run: the prototypes encoder needs image inputs",
    ),
    (
        ["--plugin", "digits", "--baselines", "maml", "--set", "baselines.maml.shots=10"],
        "baselines.maml: baseline 'maml' cannot be used in this run: K = 10 per class",
    ),
]


@pytest.mark.parametrize(("argv", "expected"), CLI_REFUSALS, ids=["-".join(a[1:4:2]) for a, _ in CLI_REFUSALS])
def test_a_refusal_is_one_line_and_exit_2_from_the_command_line(argv, expected, tmp_path):
    out = tmp_path / "out"
    result = cli("reml-run", *argv, "--preset", "smoke", "--set", "train.progress=false", "--out", str(out))
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith(expected)
    assert "Traceback" not in result.stderr
    if "--baselines" not in argv:  # reml-run builds its baselines only once --out is claimed (reml_core/api.py)
        assert not out.exists()


def test_a_calibration_refusal_ends_the_run_with_one_line_and_exit_2(tmp_path):
    out = tmp_path / "out"
    result = cli(
        "reml-run", *TINY, "--reward", "neg-mse-minmax", "--set", "train.calibration_episodes=1", "--out", str(out)
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "reward: reward function 'neg-mse-minmax' cannot be used in this run: reward calibration needs at least two"
    )
