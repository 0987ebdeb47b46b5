"""REML from Python: run an experiment, run a benchmark, sweep config values, load a run or benchmark back.

The same config model as the command-line tools (which are thin wrappers over these functions):
a config given as a dict, or a TOML/YAML file path, with keyword settings on top::

    import reml_core

    run = reml_core.run(plugin="sine", preset="smoke", out="runs/mine")
    bench = reml_core.bench("bench.toml", seeds=3, methods=["reml", "maml"], executor="ray")
    sweep = reml_core.sweep(plugin="sine", grid={"env.inner_adam_lr": [0.001, 0.003]}, seeds=2)
    sweep.best["values"]          # the configuration with the lowest mean validation score
    again = reml_core.load("runs/mine")
    again.cell("reml", shots=5, steps=10).mean
    again.to_dataframe()          # needs pandas
    again.plot("few_shot.png")

Keyword settings are top-level config keys (``plugin``, ``preset``, ``seed``, and the component
sections ``policy``, ``encoder``, ``pool``, ``reward`` as a name or a dict), nested sections as
dicts (``env={"inner_adam_lr": 0.003}``), and ``overrides`` takes dotted keys as ``--set`` does
(``overrides={"train.env_steps": 400}``). Invalid settings raise
:class:`reml_core.errors.ConfigError` (one line per problem) before anything is written.

Every public function checks its arguments first: one of the wrong type (``seeds="3"``,
``methods="scratch"`` where a list belongs, ``out=3``) raises :class:`ArgumentError` (a
:class:`~reml_core.errors.UserError` and a ``TypeError``) naming the argument, before anything is
written. ``resume`` takes every setting from the folder it continues, so it refuses any other
setting given with it, as the command-line tools do. Nothing is printed on standard output: messages
go to the ``reml`` logger (:mod:`reml_core.logs`) and progress bars to standard error. The functions
work from any thread; only in the main thread does Ctrl-C stop training at a checkpoint
(:class:`reml_core.training.StopRequested`, a ``BaseException`` like ``KeyboardInterrupt``).

Example (a complete smoke run and benchmark on tiny budgets; the doctest of this module)::

    >>> import tempfile, reml_core
    >>> tiny = {"train.env_steps": 400, "train.checkpoint_every": 200, "train.validation_tasks": 3,
    ...         "train.calibration_episodes": 5, "train.progress": False, "eval.test_tasks": 5,
    ...         "eval.curve_steps": 3, "eval.curve_tasks": 2, "policy.n_steps": 256, "policy.batch_size": 128}
    >>> folder = tempfile.mkdtemp()
    >>> run = reml_core.run(plugin="sine", preset="smoke", overrides=tiny, out=f"{folder}/run")
    >>> run.kind, run.methods
    ('run', ['reml', 'scratch'])
    >>> sorted(run.table("reml"))          # K -> steps -> cell
    [5, 10]
    >>> run.cell("reml", shots=5, steps=10).mean > 0
    True
    >>> reml_core.load(f"{folder}/run").cell("reml", 5, 10) == run.cell("reml", 5, 10)
    True
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from reml_core.arguments import (
    ArgumentError,
    at_least_one_seed,
    check_arguments,
    nonempty_names,
    refuse_with_resume,
)
from reml_core.distributed import check_address, cluster_cpus, ray_session, require_ray
from reml_core.errors import ConfigError, UserError
from reml_core.folders import check_path, claim_bench_to_resume, claim_new_folder, claim_run_to_resume, release_all
from reml_core.interrupts import Terminated, raise_if_interrupted, set_interrupt_hint, swallowed_interrupts_raised
from reml_core.logs import log
from reml_core.results import CellResult, ResultsDocument, Table, read_results
from reml_core.specs import NAMED_SECTIONS
from reml_core.storage import atomic_write_json, read_json_file

if TYPE_CHECKING:
    from reml_core.bench import BenchPlan
    from reml_core.config import RunConfig
    from reml_core.registry import PluginRegistry
    from reml_core.sweep.plan import SweepPlan
    from reml_core.sweep.space import Dimension

ConfigSource = Mapping[str, Any] | str | Path | None


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Results:
    """A finished run or benchmark: its folder and its typed ``results.json``
    (:class:`reml_core.results.ResultsDocument`), with accessors for tables, curves and figures."""

    folder: Path
    document: ResultsDocument

    @property
    def data(self) -> dict[str, Any]:
        """``results.json``'s content (schema ``reml.results/2``, docs/results.md)."""
        return self.document.to_json()

    @property
    def kind(self) -> str:
        """``"bench"`` for a ``reml-bench`` folder, ``"run"`` for a ``reml-run`` one (``"seed"`` for one
        seed's folder inside a benchmark)."""
        return self.document.kind

    @property
    def methods(self) -> list[str]:
        """Method keys, in report order (``"reml"``, ``"reml:<encoder>"``, baseline names)."""
        return self.document.methods

    @property
    def labels(self) -> dict[str, str]:
        """Display names of the methods (REML's name its encoder and say when it is privileged)."""
        return self.document.method_labels()

    @property
    def loss_name(self) -> str:
        return self.document.loss_name

    @property
    def seeds(self) -> list[int]:
        """The seeds the numbers come from (one for a run)."""
        return self.document.seed_list

    @property
    def config(self) -> dict[str, Any]:
        """The fully resolved configuration (of the first seed, for a benchmark)."""
        return dict(self.document.config)

    @property
    def curves(self) -> dict[str, list[float | None]]:
        """Mean query loss after each Adam step of the convergence curve, per method."""
        return {name: list(curve) for name, curve in self.document.curves.items()}

    @check_arguments
    def table(self, method: str) -> Table:
        """``{K: {steps: cell}}`` of one method (a ``KeyError`` naming the methods there are, for one that is not)."""
        if method not in self.document.tables:
            raise KeyError(f"no method {method!r} in {self.folder} (it holds {', '.join(self.methods)})")
        return {k: dict(row) for k, row in self.document.tables[method].items()}

    @check_arguments
    def cell(self, method: str, shots: int, steps: int) -> CellResult:
        """One method's cell at K = ``shots`` after ``steps`` SGD steps (a ``KeyError`` naming what there is,
        otherwise)."""
        table = self.table(method)
        if shots not in table:
            raise KeyError(f"no K = {shots} in {method}'s results (K: {', '.join(map(str, sorted(table)))})")
        if steps not in table[shots]:
            raise KeyError(
                f"no {steps} steps in {method}'s results at K = {shots} (steps: "
                f"{', '.join(map(str, sorted(table[shots])))})"
            )
        return table[shots][steps]

    def rows(self) -> list[dict[str, Any]]:
        """One flat record per (method, K, steps): the loss and every metric, for a table of your own."""
        records = []
        labels = self.labels
        for method in self.methods:
            for shots, row in self.table(method).items():
                for steps, cell in row.items():
                    record = {
                        "method": method,
                        "label": labels.get(method, method),
                        "shots": shots,
                        "steps": steps,
                        "loss": cell.mean,
                        "loss_ci95": cell.ci95,
                        "seed_spread": cell.seed_spread,
                        "nan_tasks": cell.nan_tasks,
                    }
                    for name, (mean, ci) in cell.metrics.items():
                        record[name], record[f"{name}_ci95"] = mean, ci
                    records.append(record)
        return records

    def to_dataframe(self) -> Any:
        """:meth:`rows` as a pandas DataFrame (pandas is not a dependency of REML: install it to use this)."""
        try:
            import pandas  # noqa: PLC0415 - lazy: optional dependency pandas, for to_dataframe only
        except ImportError:
            raise ImportError("Results.to_dataframe needs pandas: pip install pandas") from None
        return pandas.DataFrame(self.rows())

    @check_arguments
    def plot(self, path: str | Path, *, curves: bool = False) -> Path:
        """Draw the few-shot figure (or, with ``curves``, the convergence figure) into the PNG ``path``."""
        from reml_core.plots import plot_convergence, plot_few_shot  # noqa: PLC0415 - lazy: start-up time: reml_core.plots imports pydantic

        path = Path(path)
        title = f"{self.document.plugin}: " + ", ".join(self.labels.values())
        if curves:
            plot_convergence(self.document.curves, path, title, self.labels, self.loss_name)
        else:
            plot_few_shot(self.document.tables, path, title, self.labels, self.loss_name)
        return path

    @check_arguments
    def learner(
        self,
        method: str = "reml",
        *,
        seed: int | None = None,
        encoder: str | None = None,
        trust_checkpoint: bool = False,
    ) -> Any:
        """A :class:`reml_core.learner.Learner`: ``method``'s networks for your own tasks (``"reml"``, or a
        baseline the folder trained, e.g. ``"maml"``, ``"scratch"``). In a benchmark, ``seed`` and
        ``encoder`` pick one REML (needed when there are several); a method, seed or encoder the folder
        does not hold is a :class:`reml_core.learner.UnavailableMethodError` naming what it holds."""
        from reml_core.learner import open_learner  # noqa: PLC0415 - lazy: start-up time: reml_core.learner imports torch

        return open_learner(
            self.folder, self.document, method, seed=seed, encoder=encoder, trust_checkpoint=trust_checkpoint
        )


@check_arguments
def load(folder: str | Path) -> Results:
    """A finished ``reml-run`` or ``reml-bench`` folder's results (a damaged ``results.json``, or one of
    a schema this REML cannot read, is a :class:`~reml_core.errors.UserError` naming it)."""
    folder = Path(folder)
    return Results(folder, read_results(folder / "results.json"))


# -- the user's config ------------------------------------------------------------------------


@check_arguments
def user_settings(
    config: ConfigSource = None, overrides: Mapping[str, Any] | None = None, **settings: Any
) -> dict[str, Any]:
    """One nested dict from a config (dict or file), keyword settings and dotted ``overrides``, in that order
    (a later one's setting replaces an earlier one's under either name of a renamed setting)."""
    from reml_core.config import deep_merge, load_config_file, parse_assignment, renamed_settings  # noqa: PLC0415 - lazy: start-up time: reml_core.config imports torch

    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        data = load_config_file(check_path(Path(config), "config"))

    for section in NAMED_SECTIONS:
        for source in (data, settings):
            if isinstance(source.get(section), str):  # shorthand: policy = "ppo-lstm"
                source[section] = {"name": source[section]}
    renames = renamed_settings(_registry())
    merged = deep_merge(data, {key: value for key, value in settings.items() if value is not None}, renames)
    for key, value in (overrides or {}).items():
        merged = deep_merge(merged, parse_assignment(f"{key}={_yaml(value)}"), renames)
    return merged


def _yaml(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _registry() -> PluginRegistry:
    from reml_core.registry import PluginRegistry  # noqa: PLC0415 - lazy: start-up time: reml_core.registry imports pluggy

    return PluginRegistry.discover()


def default_out(config: RunConfig, kind: str | None = None) -> Path:
    """A fresh directory under runs/, named after what runs there, never one that exists."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = (
        Path("runs") / f"{config.task.name}-{kind or config.policy.name}-{config.encoder.name}-s{config.seed}-{stamp}"
    )
    candidate, suffix = base, 2
    while candidate.exists():
        candidate, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
    return candidate


# -- runs --------------------------------------------------------------------------------------


@dataclass
class PreparedRun:
    """A run checked and its folder claimed, ready to :meth:`execute`."""

    config: RunConfig
    out: Path
    resume: bool
    trust_checkpoint: bool = False

    @check_arguments
    def execute(self, command: str = "") -> Results:
        """Train, evaluate and write the run; ``command`` is what the report says started it."""
        from reml_core.pipeline import run_experiment  # noqa: PLC0415 - lazy: start-up time: reml_core.pipeline imports torch

        document = run_experiment(
            self.config, self.out, resume=self.resume, trust_checkpoint=self.trust_checkpoint, command=command
        )
        return Results(self.out, document)


@check_arguments
def prepare_run(
    user: Mapping[str, Any] | None = None,
    *,
    out: str | Path | None = None,
    force: bool = False,
    baselines: Sequence[str] | None = None,
    resume: str | Path | None = None,
    trust_checkpoint: bool = False,
    registry: PluginRegistry | None = None,
) -> PreparedRun:
    """Validate everything and claim the run folder (writing its ``config.json``); nothing trains yet.

    With ``resume``, everything comes from the folder: ``user``, ``out``, ``force`` and ``baselines`` are refused.
    """
    from reml_core.config import default_baselines, load_resolved, only_chosen_baselines, resolve_config  # noqa: PLC0415 - lazy: start-up time: reml_core.config imports torch
    from reml_core.experiment import build_components, build_one, check_policy_builds  # noqa: PLC0415 - lazy: start-up time: reml_core.experiment imports torch
    from reml_core.pipeline import check_resumable  # noqa: PLC0415 - lazy: start-up time: reml_core.pipeline imports torch

    given = [name for name, value in (("user", user), ("out", out), ("baselines", baselines)) if value is not None]
    refuse_with_resume(resume, given + (["force"] if force else []), "config.json")
    registry = registry or _registry()
    if resume is not None:
        folder = claim_run_to_resume(Path(resume))
        config = load_resolved(folder / "config.json", registry)
        check_resumable(config, folder, registry, build_components(config))
        return PreparedRun(config, Path(resume), True, trust_checkpoint)
    if out is not None:
        check_path(Path(out), "--out")
    user = dict(user or {})
    chosen = list(baselines) if baselines is not None else default_baselines(registry, user.get("plugin"), "run")
    config = resolve_config(registry, user, baselines=chosen)
    config = only_chosen_baselines(config, chosen, "reml-run", "--baselines")
    components = build_components(config)
    check_policy_builds(components)  # cross-component checks, before anything is written
    for name in config.baselines:  # a baseline that cannot be built for this run is refused now, too
        build_one(config.baselines[name], components.context)

    raise_if_interrupted()
    claimed = claim_new_folder(Path(out) if out is not None else default_out(config), kind="run", force=force)
    folder = Path(out) if out is not None else claimed
    atomic_write_json(folder / "config.json", config.to_dict())
    return PreparedRun(config, folder, False, trust_checkpoint)


@check_arguments
def run(
    config: ConfigSource = None,
    *,
    out: str | Path | None = None,
    force: bool = False,
    baselines: Sequence[str] | None = None,
    resume: str | Path | None = None,
    trust_checkpoint: bool = False,
    overrides: Mapping[str, Any] | None = None,
    **settings: Any,
) -> Results:
    """Meta-train REML, pick the checkpoint best on validation tasks, evaluate it and the baselines
    on held-out test tasks; write the run folder (``out``, default ``runs/<...>``) and return its results.

    ``resume`` continues the interrupted run in that folder instead (its config fixes every setting,
    so ``config``, ``out``, ``force``, ``baselines``, ``overrides`` and keyword settings are refused with it).
    ``baselines``: those evaluated beside REML (default: the task family's choice for a run).
    """
    given = [
        name
        for name, value in (("config", config), ("out", out), ("baselines", baselines), ("overrides", overrides))
        if value is not None
    ]
    refuse_with_resume(resume, given + (["force"] if force else []) + list(settings), "config.json")
    try:
        with swallowed_interrupts_raised():  # a Ctrl-C Python swallows is not lost
            prepared = prepare_run(
                None if resume is not None else user_settings(config, overrides, **settings),
                out=out,
                force=force,
                baselines=baselines,
                resume=resume,
                trust_checkpoint=trust_checkpoint,
            )
            return prepared.execute()
    finally:
        release_all()


# -- benchmarks --------------------------------------------------------------------------------

PLAN_FILE = "bench-plan.json"


@dataclass
class PreparedBench:
    """A benchmark planned (every config checked, ``--from`` loaded) and its folder claimed."""

    plan: BenchPlan
    registry: PluginRegistry
    out: Path
    resuming: bool
    trust_checkpoint: bool = False
    executor: str = "local"
    ray_address: str | None = None

    @check_arguments
    def execute(self, command: str = "") -> Results:
        """Run (or load) every job, evaluate, write the benchmark; ``command`` is what the report says started it."""
        from reml_core.bench import run_bench  # noqa: PLC0415 - lazy: start-up time: reml_core.bench imports torch
        from reml_core.jobs import LocalExecutor, RayExecutor  # noqa: PLC0415 - lazy: start-up time: reml_core.jobs imports torch

        executor = RayExecutor(self.ray_address) if self.executor == "ray" else LocalExecutor()
        document = run_bench(
            self.plan,
            self.registry,
            self.out,
            executor=executor,
            trust_checkpoint=self.trust_checkpoint,
            command=command,
            resuming=self.resuming,
        )
        return Results(self.out, document)


@check_arguments
def prepare_bench(
    user: Mapping[str, Any] | None = None,
    *,
    methods: Sequence[str] | None = None,
    encoders: Sequence[str] | None = None,
    seeds: int | None = None,
    from_dir: str | Path | None = None,
    out: str | Path | None = None,
    force: bool = False,
    resume: str | Path | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    trust_checkpoint: bool = False,
    registry: PluginRegistry | None = None,
) -> PreparedBench:
    """Validate every seed's config (and load what ``from_dir`` provides), then claim the folder.

    With ``resume``, the plan comes from the folder's ``bench-plan.json``: ``user``, ``methods``,
    ``encoders``, ``seeds``, ``from_dir``, ``out`` and ``force`` are refused.
    """
    from reml_core.bench import plan_bench  # noqa: PLC0415 - lazy: start-up time: reml_core.bench imports torch
    from reml_core.config import default_baselines  # noqa: PLC0415 - lazy: start-up time: reml_core.config imports torch

    label = "reml_core.api.prepare_bench"
    methods, encoders = nonempty_names("methods", methods, label), nonempty_names("encoders", encoders, label)
    at_least_one_seed(seeds, label)
    given = [
        name
        for name, value in (
            ("user", user),
            ("methods", methods),
            ("encoders", encoders),
            ("seeds", seeds),
            ("from_dir", from_dir),
            ("out", out),
        )
        if value is not None
    ]
    refuse_with_resume(resume, given + (["force"] if force else []), PLAN_FILE)
    if executor not in ("local", "ray"):
        raise UserError(f"executor: {executor!r} is not an executor (use 'local' or 'ray')")
    if ray_address is not None and executor != "ray":
        raise UserError("--ray-address needs --executor ray")
    if executor == "ray":
        require_ray("--executor ray")
        if ray_address is not None:
            check_address(ray_address)  # before the folder is claimed
    registry = registry or _registry()
    if resume is not None:
        folder = claim_bench_to_resume(Path(resume))
        saved = read_plan(folder)
        source = Path(saved.from_dir) if saved.from_dir else None
        try:
            plan = plan_bench(
                registry,
                saved.user,
                methods=saved.methods,
                encoders=saved.encoders,
                seeds=saved.seeds,
                from_dir=source,
                trust_checkpoint=saved.trust_checkpoint,
            )
        except ConfigError as error:  # the saved settings no longer resolve (a plugin changed, data moved, ...)
            raise ConfigError([f"{folder / PLAN_FILE}: {problem}" for problem in error.problems]) from None
        return PreparedBench(
            plan, registry, folder, True, saved.trust_checkpoint or trust_checkpoint, executor, ray_address
        )
    if out is not None:
        check_path(Path(out), "--out")
    user = dict(user or {})
    seeds = 1 if seeds is None else seeds
    chosen = methods if methods is not None else ["reml", *default_baselines(registry, user.get("plugin"), "bench")]
    source = Path(from_dir) if from_dir is not None else None
    plan = plan_bench(
        registry,
        user,
        methods=chosen,
        encoders=encoders,
        seeds=seeds,
        from_dir=source,
        trust_checkpoint=trust_checkpoint,
    )
    base = plan.base(plan.seeds[0])
    target = Path(out) if out is not None else default_out(base, "bench")
    if plan.from_dir is not None and _inside(target, plan.from_dir):
        raise UserError(f"--out {target} is --from {plan.from_dir} or inside it; write the benchmark somewhere else")
    folder = claim_new_folder(
        target, kind="bench", force=force, entries=(PLAN_FILE, *(f"seed-{seed}" for seed in plan.seeds))
    )
    atomic_write_json(folder / "config.json", base.to_dict())
    atomic_write_json(
        folder / PLAN_FILE,
        {
            "format": PLAN_FORMAT,
            "user": user,
            "methods": plan.methods,
            "encoders": encoders,
            "seeds": seeds,
            "from_dir": str(plan.from_dir) if plan.from_dir is not None else None,
            "trust_checkpoint": trust_checkpoint,
        },
    )
    return PreparedBench(plan, registry, folder, False, trust_checkpoint, executor, ray_address)


PLAN_FORMAT = "reml.bench-plan/1"


def read_plan(folder: Path) -> Any:
    """A benchmark folder's ``bench-plan.json``, every field checked against its type (a damaged one is
    one :class:`~reml_core.errors.UserError` naming the file and the field)."""
    from pydantic import BaseModel, ConfigDict, Field, ValidationError  # noqa: PLC0415 - lazy: start-up time: pydantic

    class SavedPlan(BaseModel):
        """What ``bench-plan.json`` holds (written by :func:`prepare_bench`)."""

        model_config = ConfigDict(extra="forbid", strict=True)
        format: Literal["reml.bench-plan/1"] = "reml.bench-plan/1"  # PLAN_FORMAT
        user: dict[str, Any]
        methods: list[str] = Field(min_length=1)
        encoders: list[str] | None = Field(None, min_length=1)
        seeds: int = Field(ge=1)
        from_dir: str | None = None
        trust_checkpoint: bool = False

    path = folder / PLAN_FILE
    data = read_json_file(path, "a benchmark's plan (a JSON object)", error=UserError)
    try:
        return SavedPlan.model_validate(data)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "plan"
        value = f" (it holds {first['input']!r:.80})" if first["type"] != "missing" else ""
        raise UserError(f"--resume {folder}: {path} is damaged: {where}: {first['msg']}{value}") from None


@check_arguments
def bench(
    config: ConfigSource = None,
    *,
    methods: Sequence[str] | None = None,
    encoders: Sequence[str] | None = None,
    seeds: int | None = None,
    from_dir: str | Path | None = None,
    out: str | Path | None = None,
    force: bool = False,
    resume: str | Path | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    trust_checkpoint: bool = False,
    overrides: Mapping[str, Any] | None = None,
    **settings: Any,
) -> Results:
    """REML (once per encoder in ``encoders``) and the baselines in ``methods`` on the same held-out
    tasks, for ``seeds`` seeds (default 1), on ``executor`` ("local" or "ray"); write the benchmark folder and return
    its results.

    ``from_dir`` loads trained methods from an earlier run or benchmark (a method whose training did
    not finish is refused); ``resume`` continues the benchmark in that folder, rerunning only what is
    missing (its ``bench-plan.json`` fixes every setting: only ``executor``, ``ray_address`` and
    ``trust_checkpoint`` may be given with it).
    """
    methods, encoders = (
        nonempty_names("methods", methods, "reml_core.bench"),
        nonempty_names("encoders", encoders, "reml_core.bench"),
    )
    at_least_one_seed(seeds, "reml_core.bench")
    given = [
        name
        for name, value in (
            ("config", config),
            ("methods", methods),
            ("encoders", encoders),
            ("seeds", seeds),
            ("from_dir", from_dir),
            ("out", out),
            ("overrides", overrides),
        )
        if value is not None
    ]
    refuse_with_resume(resume, given + (["force"] if force else []) + list(settings), PLAN_FILE)
    try:
        with swallowed_interrupts_raised():  # a Ctrl-C Python swallows is not lost
            prepared = prepare_bench(
                None if resume is not None else user_settings(config, overrides, **settings),
                methods=methods,
                encoders=encoders,
                seeds=seeds,
                from_dir=from_dir,
                out=out,
                force=force,
                resume=resume,
                executor=executor,
                ray_address=ray_address,
                trust_checkpoint=trust_checkpoint,
            )
            return prepared.execute()
    finally:
        release_all()


# -- sweeps ------------------------------------------------------------------------------------

#: Where a sweep given from Python names its swept keys in a message (the CLI's say --grid, --random).
SWEEP_ORIGIN = "reml_core.sweep()"


@dataclass(frozen=True)
class SweepResults:
    """A finished (or partly finished) sweep: its folder and its ``sweep.json`` (schema ``reml.sweep/1``,
    docs/sweep.md)."""

    folder: Path
    document: Mapping[str, Any]

    @property
    def status(self) -> str:
        """``"finished"`` when every trial finished, else ``"incomplete"`` (``resume`` retries the rest)."""
        return str(self.document["status"])

    @property
    def configurations(self) -> list[dict[str, Any]]:
        """Every configuration: its id, swept ``values``, ``mean``/``std``/``min``/``max`` validation score over seeds,
        ..."""
        return [dict(c) for c in self.document["configurations"]]

    @property
    def trials(self) -> list[dict[str, Any]]:
        """Every trial (a configuration with a seed): its status, score, folder and log."""
        return [dict(t) for t in self.document["trials"]]

    @property
    def unfinished(self) -> list[dict[str, Any]]:
        """The trials that did not finish (failed, interrupted or never started)."""
        return [t for t in self.trials if t["status"] != "finished"]

    @property
    def best(self) -> dict[str, Any] | None:
        """The best configuration (lowest mean validation score; ``values``, ``mean``, ``std``, ...), or None if none
        scored."""
        best = self.document.get("best")
        return dict(best) if best is not None else None

    @property
    def best_config(self) -> Path | None:
        """``best.toml``: the best configuration, complete (``reml_core.run(sweep.best_config)`` runs it)."""
        return self.folder / "best.toml" if self.document.get("best") is not None else None

    def summary(self) -> str:
        """The table's rows and where the files are (what ``reml-sweep`` prints at the end)."""
        from reml_core.sweep.collect import summary  # noqa: PLC0415 - lazy: start-up time: reml_core.sweep.collect imports pydantic

        return summary(self.document, self.folder)


@dataclass
class PreparedSweep:
    """A sweep planned (every configuration of every seed checked), its ``out`` checked; nothing written yet."""

    plan: SweepPlan
    registry: PluginRegistry
    out: Path
    resuming: bool
    started: str
    force: bool = False
    ray_address: str | None = None
    #: The folder resolved, once claimed (a resumed sweep's is claimed while planning, a new one's by :meth:`execute`).
    folder: Path | None = None

    @check_arguments
    def execute(self, command: str = "") -> SweepResults:
        """Start (or join) Ray, claim the folder, run every unfinished trial on Ray Tune and write the sweep's
        files; ``command`` is what ``sweep.json`` says started it. Ctrl-C or SIGTERM stops Tune, which saves
        its experiment and lets the running trials checkpoint, and then raises ``KeyboardInterrupt`` or
        :class:`reml_core.interrupts.Terminated` (``resume`` continues the sweep)."""

        from reml_core.sweep.collect import write_outputs  # noqa: PLC0415 - lazy: start-up time: reml_core.sweep.collect imports pydantic
        from reml_core.sweep.plan import claim_sweep_folder, write_plan  # noqa: PLC0415 - lazy: start-up time: reml_core.sweep.plan imports pydantic
        from reml_core.sweep.tune import run_tune  # noqa: PLC0415 - lazy: start-up time: reml_core.sweep.tune imports pydantic

        plan = self.plan
        if not self.resuming and command:
            plan.command = command
        # A local Ray would SIGKILL a trial's reml-run when its worker ends; left alone, reml-run gets SIGTERM
        # instead (the trainable asks for it) and checkpoints first, like a reml-run stopped by a scheduler
        os.environ.setdefault("RAY_kill_child_processes_on_worker_exit", "0")
        with ray_session("reml-sweep", address=self.ray_address) as ray:
            # Ray's start-up puts a crash handler of its own on SIGTERM (it aborts the process); restore
            # the caller's, so SIGTERM ends a sweep the way it ends reml-run (exit 143 with the resume hint)
            try:
                signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGTERM))
            except ValueError:  # not the main thread: its signals are not ours to touch
                pass
            cpus = cluster_cpus(ray)
            if plan.cpus_per_trial > cpus:
                raise UserError(
                    f"--cpus-per-trial {plan.cpus_per_trial:g}: the Ray cluster has only {cpus} CPUs, so no trial "
                    "could start"
                )
            if self.folder is None:
                self.folder = claim_sweep_folder(self.out, force=self.force)
                write_plan(self.folder, plan)
            folder = self.folder
            set_interrupt_hint(f"the sweep can be continued with: reml-sweep --resume {self.out}")
            raise_if_interrupted()
            configurations, seeds, trials = len(plan.configurations), len(plan.seeds), len(plan.trials)
            log(
                f"sweep of {configurations} configuration{'s' * (configurations != 1)} x {seeds} "
                f"seed{'s' * (seeds != 1)} "
                f"= {trials} trial{'s' * (trials != 1)} on Ray ({cpus} CPUs, {plan.cpus_per_trial:g} per trial, up to "
                f"{int(cpus // plan.cpus_per_trial)} at a time){', resumed' if self.resuming else ''}; folder "
                f"{self.out}"
            )
            stopped = run_tune(folder, plan, restore=self.resuming)
        if stopped is not None:  # Tune saved the experiment and stopped the trials; end as reml-run does on a signal
            raise KeyboardInterrupt if stopped == signal.SIGINT else Terminated
        document = write_outputs(folder, plan, self.registry, command=command, started=self.started)
        set_interrupt_hint(None)
        return SweepResults(self.out, document)


@check_arguments
def prepare_sweep(
    user: Mapping[str, Any] | None = None,
    *,
    grid: Sequence[Dimension] = (),
    random: Sequence[Dimension] = (),
    samples: int | None = None,
    seeds: int | None = None,
    cpus_per_trial: float | None = None,
    out: str | Path | None = None,
    force: bool = False,
    resume: str | Path | None = None,
    ray_address: str | None = None,
    source: str = "config",
    registry: PluginRegistry | None = None,
) -> PreparedSweep:
    """Plan the sweep and check every configuration of every seed (and ``out``) before anything starts or is written.

    ``grid`` and ``random`` are the swept keys (:class:`reml_core.sweep.space.Dimension`); a ``sweep``
    table in ``user`` (a config file's ``[sweep]``, named ``source`` in messages) adds to them, and a key
    given in both is the argument's. With ``resume``, the plan comes from the folder's ``sweep.json``:
    only ``cpus_per_trial`` and ``ray_address`` may be given with it.
    """
    from reml_core.config import renamed_settings  # noqa: PLC0415 - lazy: start-up time: reml_core.config imports torch
    from reml_core.sweep.plan import (  # noqa: PLC0415 - lazy: start-up time: reml_core.sweep.plan imports pydantic
        check_sweep_out,
        claim_sweep_to_resume,
        default_out,
        plan_from_sweep_json,
        plan_sweep,
    )
    from reml_core.sweep.space import combine_space, parse_file_sweep  # noqa: PLC0415 - lazy: start-up time: reml_core.sweep.space imports pydantic

    label = "reml_core.api.prepare_sweep"
    at_least_one_seed(seeds, label)
    if samples is not None and samples < 1:
        raise ArgumentError(f"{label}(): argument 'samples' must be at least 1, not {samples}")
    if cpus_per_trial is not None and not (0 < cpus_per_trial < float("inf")):
        raise ArgumentError(f"{label}(): argument 'cpus_per_trial' must be > 0, not {cpus_per_trial}")
    given = [
        name
        for name, value in (("user", user), ("samples", samples), ("seeds", seeds), ("out", out))
        if value is not None
    ]
    given += [name for name, value in (("grid", grid), ("random", random), ("force", force)) if value]
    refuse_with_resume(resume, given, "sweep.json")
    require_ray("reml-sweep")
    if ray_address is not None:
        check_address(ray_address)  # before the folder is claimed
    registry = registry or _registry()
    raise_if_interrupted()  # a Ctrl-C swallowed during the imports above
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if resume is not None:
        folder, data = claim_sweep_to_resume(Path(resume))
        plan = plan_from_sweep_json(data, folder)
        started = str(data.get("started", started))
        if cpus_per_trial is not None:
            plan.cpus_per_trial = float(cpus_per_trial)
        return PreparedSweep(plan, registry, Path(resume), True, started, ray_address=ray_address, folder=folder)
    if out is not None:
        check_path(Path(out), "--out")
    user = dict(user or {})
    file_sweep = parse_file_sweep(user.pop("sweep", None), source)
    space = combine_space(file_sweep, grid, random, samples, renamed_settings(registry))
    plan = plan_sweep(registry, user, space, seeds or file_sweep.seeds or 1, cpus_per_trial)
    target = Path(out) if out is not None else default_out(plan)
    check_sweep_out(target, force=force)
    raise_if_interrupted()
    return PreparedSweep(plan, registry, target, False, started, force, ray_address)


@check_arguments
def sweep(
    config: ConfigSource = None,
    *,
    grid: Mapping[str, Sequence[Any]] | None = None,
    random: Mapping[str, str] | None = None,
    samples: int | None = None,
    seeds: int | None = None,
    cpus_per_trial: float | None = None,
    out: str | Path | None = None,
    force: bool = False,
    resume: str | Path | None = None,
    ray_address: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    **settings: Any,
) -> SweepResults:
    """Search config values on Ray Tune, every trial an ordinary run folder; write the sweep folder (``out``,
    default ``runs/<plugin>-sweep-...``) and return its results, ranked by validation score (never test tasks).

    ``grid`` maps dotted keys to the values to try (every combination runs); ``random`` maps keys to a
    distribution (``"uniform:A:B"``, ``"loguniform:A:B"``, ``"randint:A:B"``, ``"choice:V1,V2"``), drawn
    ``samples`` times; a ``[sweep]`` table in the config file adds to both. Each configuration runs once
    per seed (``seeds``, default 1). ``resume`` continues the sweep in that folder (its ``sweep.json`` fixes
    every setting: only ``cpus_per_trial`` and ``ray_address`` may be given with it). Needs Ray
    (``pip install 'reml[ray]'``). Trials that did not finish are in :attr:`SweepResults.unfinished`.
    """
    from reml_core.sweep.space import parse_sweep_table  # noqa: PLC0415 - lazy: start-up time: reml_core.sweep.space imports pydantic

    at_least_one_seed(seeds, "reml_core.sweep")
    given = [
        name
        for name, value in (
            ("config", config),
            ("grid", grid),
            ("random", random),
            ("samples", samples),
            ("seeds", seeds),
            ("out", out),
            ("overrides", overrides),
        )
        if value is not None
    ]
    refuse_with_resume(resume, given + (["force"] if force else []) + list(settings), "sweep.json")
    swept = parse_sweep_table({"grid": dict(grid or {}), "random": dict(random or {})}, SWEEP_ORIGIN)
    source = str(config) if isinstance(config, (str, Path)) else SWEEP_ORIGIN
    try:
        with swallowed_interrupts_raised():  # a Ctrl-C Python swallows is not lost
            prepared = prepare_sweep(
                None if resume is not None else user_settings(config, overrides, **settings),
                grid=swept.grid,
                random=swept.random,
                samples=samples,
                seeds=seeds,
                cpus_per_trial=cpus_per_trial,
                out=out,
                force=force,
                resume=resume,
                ray_address=ray_address,
                source=source,
            )
            return prepared.execute()
    finally:
        release_all()


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies inside it (after resolving links)."""
    path, folder = path.expanduser().resolve(), folder.expanduser().resolve()
    return path == folder or folder in path.parents


__all__ = [
    "run",
    "bench",
    "sweep",
    "load",
    "Results",
    "SweepResults",
    "CellResult",
    "ArgumentError",
    "prepare_run",
    "prepare_bench",
    "prepare_sweep",
    "user_settings",
]
