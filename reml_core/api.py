"""REML from Python: run an experiment, run a benchmark, load either back.

The same config model as the command-line tools (which are thin wrappers over these functions):
a config given as a dict, or a TOML/YAML file path, with keyword settings on top::

    import reml_core

    run = reml_core.run(plugin="sine", preset="smoke", out="runs/mine")
    bench = reml_core.bench("bench.toml", seeds=3, methods=["reml", "maml"], executor="ray")
    again = reml_core.load("runs/mine")
    again.cell("reml", shots=5, steps=10).mean
    again.to_dataframe()          # needs pandas
    again.plot("few_shot.png")

Keyword settings are top-level config keys (``plugin``, ``preset``, ``seed``, and the component
sections ``policy``, ``encoder``, ``pool``, ``reward`` as a name or a dict), nested sections as
dicts (``env={"inner_adam_lr": 0.003}``), and ``overrides`` takes dotted keys as ``--set`` does
(``overrides={"train.env_steps": 400}``). Invalid settings raise
:class:`reml_core.errors.ConfigError` (one line per problem) before anything is written.

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

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reml_core.errors import UserError
from reml_core.results import CellResult, ResultsDocument, Table

if TYPE_CHECKING:
    from reml_core.bench import BenchPlan
    from reml_core.config import RunConfig
    from reml_core.registry import PluginRegistry

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

    def table(self, method: str) -> Table:
        """``{K: {steps: cell}}`` of one method."""
        if method not in self.document.tables:
            raise KeyError(f"no method {method!r} in {self.folder} (it holds {', '.join(self.methods)})")
        return {k: dict(row) for k, row in self.document.tables[method].items()}

    def cell(self, method: str, shots: int, steps: int) -> CellResult:
        return self.table(method)[shots][steps]

    def rows(self) -> list[dict[str, Any]]:
        """One flat record per (method, K, steps): the loss and every metric, for a table of your own."""
        records = []
        labels = self.labels
        for method in self.methods:
            for shots, row in self.table(method).items():
                for steps, cell in row.items():
                    record = {"method": method, "label": labels.get(method, method), "shots": shots, "steps": steps,
                              "loss": cell.mean, "loss_ci95": cell.ci95, "seed_spread": cell.seed_spread, "nan_tasks": cell.nan_tasks}
                    for name, (mean, ci) in cell.metrics.items():
                        record[name], record[f"{name}_ci95"] = mean, ci
                    records.append(record)
        return records

    def to_dataframe(self) -> Any:
        """:meth:`rows` as a pandas DataFrame (pandas is not a dependency of REML: install it to use this)."""
        try:
            import pandas
        except ImportError:
            raise ImportError("Results.to_dataframe needs pandas: pip install pandas") from None
        return pandas.DataFrame(self.rows())

    def plot(self, path: str | Path, *, curves: bool = False) -> Path:
        """Draw the few-shot figure (or, with ``curves``, the convergence figure) into the PNG ``path``."""
        from reml_core.plots import plot_convergence, plot_few_shot

        path = Path(path)
        title = f"{self.document.plugin}: " + ", ".join(self.labels.values())
        if curves:
            plot_convergence(self.document.curves, path, title, self.labels, self.loss_name)
        else:
            plot_few_shot(self.document.tables, path, title, self.labels, self.loss_name)
        return path


def load(folder: str | Path) -> Results:
    """A finished ``reml-run`` or ``reml-bench`` folder's results."""
    from reml_core.results import read_results

    folder = Path(folder)
    return Results(folder, read_results(folder / "results.json"))


# -- the user's config ------------------------------------------------------------------------


def user_settings(config: ConfigSource = None, overrides: Mapping[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
    """One nested dict from a config (dict or file), keyword settings and dotted ``overrides``, in that order."""
    from reml_core.config import deep_merge, load_config_file, parse_assignment
    from reml_core.folders import check_path

    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        data = load_config_file(check_path(Path(config), "config"))
    from reml_core.specs import NAMED_SECTIONS

    for section in NAMED_SECTIONS:
        for source in (data, settings):
            if isinstance(source.get(section), str):  # shorthand: policy = "ppo-lstm"
                source[section] = {"name": source[section]}
    merged = deep_merge(data, {key: value for key, value in settings.items() if value is not None})
    for key, value in (overrides or {}).items():
        merged = deep_merge(merged, parse_assignment(f"{key}={_yaml(value)}"))
    return merged


def _yaml(value: Any) -> str:
    import json

    return json.dumps(value) if not isinstance(value, str) else value


def _registry() -> PluginRegistry:
    from reml_core.registry import PluginRegistry

    return PluginRegistry.discover()


def default_out(config: RunConfig, kind: str | None = None) -> Path:
    """A fresh directory under runs/, named after what runs there, never one that exists."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{config.task.name}-{kind or config.policy.name}-{config.encoder.name}-s{config.seed}-{stamp}"
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

    def execute(self, command: str = "") -> Results:
        from reml_core.pipeline import run_experiment

        document = run_experiment(self.config, self.out, resume=self.resume, trust_checkpoint=self.trust_checkpoint, command=command)
        return Results(self.out, document)


def prepare_run(
    user: Mapping[str, Any] | None = None, *, out: str | Path | None = None, force: bool = False,
    baselines: Sequence[str] | None = None, resume: str | Path | None = None, trust_checkpoint: bool = False,
    registry: PluginRegistry | None = None,
) -> PreparedRun:
    """Validate everything and claim the run folder (writing its ``config.json``); nothing trains yet."""
    from reml_core.config import default_baselines, load_resolved, resolve_config
    from reml_core.experiment import build_components, build_one, check_policy_builds
    from reml_core.folders import check_path, claim_new_folder, claim_run_to_resume
    from reml_core.pipeline import check_resumable
    from reml_core.storage import atomic_write_json

    registry = registry or _registry()
    if resume is not None:
        folder = claim_run_to_resume(Path(resume))
        config = load_resolved(folder / "config.json", registry)
        build_components(config)
        check_resumable(config, folder, registry)
        return PreparedRun(config, Path(resume), True, trust_checkpoint)
    if out is not None:
        check_path(Path(out), "--out")
    user = dict(user or {})
    chosen = list(baselines) if baselines is not None else default_baselines(registry, user.get("plugin"), "run")
    config = resolve_config(registry, user, baselines=chosen)
    components = build_components(config)
    check_policy_builds(components)  # cross-component checks, before anything is written
    for name in config.baselines:  # a baseline that cannot be built for this run is refused now, too
        build_one(config.baselines[name], components.context)
    from reml_core.cli.common import raise_if_interrupted

    raise_if_interrupted()
    claimed = claim_new_folder(Path(out) if out is not None else default_out(config), kind="run", force=force)
    folder = Path(out) if out is not None else claimed
    atomic_write_json(folder / "config.json", config.to_dict())
    return PreparedRun(config, folder, False, trust_checkpoint)


def run(
    config: ConfigSource = None, *, out: str | Path | None = None, force: bool = False, baselines: Sequence[str] | None = None,
    resume: str | Path | None = None, trust_checkpoint: bool = False, overrides: Mapping[str, Any] | None = None,
    **settings: Any,
) -> Results:
    """Meta-train REML, pick the checkpoint best on validation tasks, evaluate it and the baselines
    on held-out test tasks; write the run folder (``out``, default ``runs/<...>``) and return its results.

    ``resume`` continues the interrupted run in that folder instead (its config fixes every setting).
    ``baselines``: those evaluated beside REML (default: the task family's choice for a run).
    """
    from reml_core.folders import release_all

    try:
        prepared = prepare_run(None if resume is not None else user_settings(config, overrides, **settings), out=out, force=force,
                               baselines=baselines, resume=resume, trust_checkpoint=trust_checkpoint)
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

    def execute(self, command: str = "") -> Results:
        from reml_core.bench import run_bench
        from reml_core.jobs import LocalExecutor, RayExecutor

        executor = RayExecutor(self.ray_address) if self.executor == "ray" else LocalExecutor()
        document = run_bench(self.plan, self.registry, self.out, executor=executor, trust_checkpoint=self.trust_checkpoint,
                             command=command, resuming=self.resuming)
        return Results(self.out, document)


def prepare_bench(
    user: Mapping[str, Any] | None = None, *, methods: Sequence[str] | None = None, encoders: Sequence[str] | None = None,
    seeds: int = 1, from_dir: str | Path | None = None, out: str | Path | None = None, force: bool = False,
    resume: str | Path | None = None, executor: str = "local", ray_address: str | None = None,
    trust_checkpoint: bool = False, registry: PluginRegistry | None = None,
) -> PreparedBench:
    """Validate every seed's config (and load what ``from_dir`` provides), then claim the folder."""
    from reml_core.bench import plan_bench
    from reml_core.config import default_baselines
    from reml_core.folders import check_path, claim_bench_to_resume, claim_new_folder
    from reml_core.storage import atomic_write_json, read_json_file

    if executor not in ("local", "ray"):
        raise UserError(f"executor: {executor!r} is not an executor (use 'local' or 'ray')")
    if ray_address is not None and executor != "ray":
        raise UserError("--ray-address needs --executor ray")
    if executor == "ray":
        from reml_core.distributed import check_address, require_ray

        require_ray("--executor ray")
        if ray_address is not None:
            check_address(ray_address)  # before the folder is claimed
    registry = registry or _registry()
    if resume is not None:
        folder = claim_bench_to_resume(Path(resume))
        saved = read_json_file(folder / PLAN_FILE, "a benchmark's plan (a JSON object)", error=UserError)
        try:
            source = Path(saved["from_dir"]) if saved.get("from_dir") else None
            plan = plan_bench(registry, saved["user"], methods=saved["methods"], encoders=saved.get("encoders"), seeds=int(saved["seeds"]),
                              from_dir=source, trust_checkpoint=bool(saved.get("trust_checkpoint")))
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"--resume {resume}: {PLAN_FILE} is damaged ({type(error).__name__}: {error})") from None
        return PreparedBench(plan, registry, folder, True, bool(saved.get("trust_checkpoint")) or trust_checkpoint, executor, ray_address)
    if out is not None:
        check_path(Path(out), "--out")
    user = dict(user or {})
    chosen = list(methods) if methods is not None else ["reml", *default_baselines(registry, user.get("plugin"), "bench")]
    source = Path(from_dir) if from_dir is not None else None
    plan = plan_bench(registry, user, methods=chosen, encoders=list(encoders) if encoders else None, seeds=seeds,
                      from_dir=source, trust_checkpoint=trust_checkpoint)
    base = plan.base(plan.seeds[0])
    target = Path(out) if out is not None else default_out(base, "bench")
    if plan.from_dir is not None and _inside(target, plan.from_dir):
        raise UserError(f"--out {target} is --from {plan.from_dir} or inside it; write the benchmark somewhere else")
    folder = claim_new_folder(target, kind="bench", force=force, entries=(PLAN_FILE, *(f"seed-{seed}" for seed in plan.seeds)))
    atomic_write_json(folder / "config.json", base.to_dict())
    atomic_write_json(folder / PLAN_FILE, {
        "format": "reml.bench-plan/1", "user": user, "methods": plan.methods, "encoders": list(encoders) if encoders else None,
        "seeds": seeds, "from_dir": str(plan.from_dir) if plan.from_dir is not None else None, "trust_checkpoint": trust_checkpoint,
    })
    return PreparedBench(plan, registry, folder, False, trust_checkpoint, executor, ray_address)


def bench(
    config: ConfigSource = None, *, methods: Sequence[str] | None = None, encoders: Sequence[str] | None = None, seeds: int = 1,
    from_dir: str | Path | None = None, out: str | Path | None = None, force: bool = False, resume: str | Path | None = None,
    executor: str = "local", ray_address: str | None = None, trust_checkpoint: bool = False,
    overrides: Mapping[str, Any] | None = None, **settings: Any,
) -> Results:
    """REML (once per encoder in ``encoders``) and the baselines in ``methods`` on the same held-out
    tasks, for ``seeds`` seeds, on ``executor`` ("local" or "ray"); write the benchmark folder and return its results.

    ``from_dir`` loads trained methods from an earlier run or benchmark; ``resume`` continues the
    benchmark in that folder, rerunning only what is missing.
    """
    from reml_core.folders import release_all

    try:
        prepared = prepare_bench(None if resume is not None else user_settings(config, overrides, **settings), methods=methods,
                                 encoders=encoders, seeds=seeds, from_dir=from_dir, out=out, force=force, resume=resume,
                                 executor=executor, ray_address=ray_address, trust_checkpoint=trust_checkpoint)
        return prepared.execute()
    finally:
        release_all()


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies inside it (after resolving links)."""
    path, folder = path.expanduser().resolve(), folder.expanduser().resolve()
    return path == folder or folder in path.parents


__all__ = ["run", "bench", "load", "Results", "CellResult", "prepare_run", "prepare_bench", "user_settings"]
