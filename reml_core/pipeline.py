"""One ``reml-run``: meta-train (or resume), pick the best checkpoint, evaluate against baselines, write files."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reml_core.config import RunConfig, load_resolved
from reml_core.errors import CheckpointError, PluginError, UserError, describe_error
from reml_core.evaluation import OWN_RATE_SUFFIX, FewShotEvaluator, FewShotTable, NetworkProvider, trivial_references
from reml_core.experiment import Components, baseline_labels, build_components, build_one, component_facts, loss_name
from reml_core.interfaces import (
    AdaptsItsOwnWay,
    Baseline,
    ChoosesForMany,
    ChoosesInProcesses,
    FingerprintsData,
    MeasuresMetrics,
    ReportsStats,
)
from reml_core.interrupts import raise_if_interrupted
from reml_core.logs import log
from reml_core.memory import keep_freed_memory
from reml_core.methods import SEARCH_KEY, PoolSearchMethod, ReMLMethod
from reml_core.plots import plot_convergence, plot_few_shot
from reml_core.registry import PluginRegistry
from reml_core.reports import render_run_report
from reml_core.results import ResultsDocument, SelectedCheckpoint, TrainingRecord, finite_or_none, table_of
from reml_core.storage import (
    atomic_write_json,
    atomic_write_text,
    latest_checkpoint,
    new_checkpoint,
    read_json_file,
    verify_checkpoint,
)
from reml_core.training import MetaTrainer, evaluation_processes, read_trainer_state, resume_state

#: Settings a resumed run may change after its last checkpoint: they affect neither what was
#: trained nor how checkpoints are scored. ``train.env_steps`` may only grow.
RESUME_MAY_CHANGE = frozenset(
    {
        "train.env_steps",
        "train.progress",
        "train.threads",
        "train.device",
        "train.checkpoint_every",
        "eval.test_tasks",
        "eval.curve_steps",
        "eval.curve_adam_lr",
        "eval.curve_tasks",
    }
)
#: A run folder's record of the data its task sampler read when the run started (see :func:`record_data`).
DATA_FILE = "data.json"
DATA_FORMAT = "reml.data/1"


def seed_everything(seed: int, threads: int) -> None:
    """Global torch settings for reproducible numbers (see docs/reliability.md), and the heap's for speed
    (:func:`reml_core.memory.keep_freed_memory`, which changes no number)."""
    keep_freed_memory()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def build_baselines(components: Components, names: list[str]) -> dict[str, Baseline]:
    config = components.config
    return {name: build_one(config.baselines[name], components.context) for name in names}


#: What :func:`evaluate_methods` evaluates: a method object with ``network_for`` (a baseline, REML's
#: :class:`ReMLMethod`), or a bare ``(task, K) -> network`` provider.
Method = Any


def provider_of(method: Method) -> NetworkProvider:
    """``method.network_for`` of a method object, or the provider itself."""
    network_for = getattr(method, "network_for", None)
    return network_for if callable(network_for) else method


def own_rate_key(name: str) -> str:
    """The results key of a method's own-rate rows (``"meta-sgd@own-rate"``)."""
    return name + OWN_RATE_SUFFIX


def own_rate_labels(methods: Mapping[str, Method]) -> dict[str, str]:
    """For each method that adapts its own way, the words its own-rate rows are labelled with
    (its ``own_rate_words``, e.g. Meta-SGD's "learned rates"; else "own rate"), keyed by its own-rate key.

    They are recorded under ``labels`` in ``results.json``; reports show them after the method's
    name (``Meta-SGD (learned rates)``), see :meth:`reml_core.results.ResultsDocument.method_labels`.
    """
    return {
        own_rate_key(name): str(getattr(method, "own_rate_words", "") or "own rate")
        for name, method in methods.items()
        if isinstance(method, AdaptsItsOwnWay)
    }


def evaluate_methods(
    config: RunConfig, components: Components, providers: Mapping[str, Method]
) -> tuple[dict[str, FewShotTable], dict[str, list[float]], dict[str, float]]:
    """Every method on the same held-out test tasks, support and query points, and fine-tuning.

    ``providers`` maps a method's key to the method (anything with ``network_for``) or to a bare
    provider. A method that adapts its own way (:class:`reml_core.interfaces.AdaptsItsOwnWay`) is
    measured twice on the same tasks: under its key at the protocol's fixed rate, and under
    ``key + OWN_RATE_SUFFIX`` at its own rate(s) (a chosen number of steps in that column only).
    The convergence curve (Adam on the training data) is the fixed-rate key's only. A method that
    chooses for many tasks at once (:class:`reml_core.interfaces.ChoosesForMany`) is asked for a chunk
    of tasks at a time. The seconds: ``evaluation_<key>`` per key, and ``choosing_<key>``, the part of
    the fixed-rate evaluation spent handing out the networks (the method's own test-time cost, apart
    from the protocol's fine-tuning).
    """
    evaluation = config.core.eval
    tasks = components.task_sampler.test_tasks(evaluation.test_tasks)
    evaluator = FewShotEvaluator(
        tasks,
        components.task_sampler.loss,
        shots=evaluation.shots,
        steps=evaluation.steps,
        lr=evaluation.sgd_lr,
        curve_steps=evaluation.curve_steps,
        curve_lr=evaluation.curve_adam_lr,
        curve_tasks=evaluation.curve_tasks,
        progress=config.core.train.progress,
        metrics_fn=components.task_sampler.metrics if isinstance(components.task_sampler, MeasuresMetrics) else None,
    )
    tables, curves, seconds = {}, {}, {}
    processes = evaluation_processes(config)
    for name, method in providers.items():
        raise_if_interrupted()  # swallowed during the last method (a fork hook of its evaluation processes)
        provider = provider_of(method)
        log(f"evaluating {name} on {len(tasks)} held-out test tasks")
        start = time.perf_counter()
        many = method.networks_for if isinstance(method, ChoosesForMany) else None
        forkable = method if isinstance(method, ChoosesInProcesses) else None
        tables[name] = evaluator.few_shot(provider, name, many=many, processes=processes, forkable=forkable)
        curves[name] = evaluator.curve(provider, name, processes=processes)
        seconds[f"evaluation_{name}"] = time.perf_counter() - start
        seconds[f"choosing_{name}"] = evaluator.choosing_seconds[name]
        if isinstance(method, AdaptsItsOwnWay):
            key = own_rate_key(name)
            log(f"evaluating {name} at its own adaptation rate on the same {len(tasks)} tasks")
            start = time.perf_counter()
            tables[key] = evaluator.few_shot(method.adapted_network_for, key, own=True, processes=processes)
            seconds[f"evaluation_{key}"] = time.perf_counter() - start
    raise_if_interrupted()  # swallowed during the last one: the run stops before its results, resumable
    return tables, curves, seconds


def evaluate_references(config: RunConfig, components: Components) -> dict[str, FewShotTable]:
    """What predictors that learn nothing (predicting 0, the support mean) score on the run's test tasks,
    for the reports (:func:`reml_core.evaluation.trivial_references`); draws no random numbers."""
    sampler = components.task_sampler
    return trivial_references(
        sampler.test_tasks(config.core.eval.test_tasks),
        sampler.loss,
        config.core.eval.shots,
        sampler.output_size,
        sampler.metrics if isinstance(sampler, MeasuresMetrics) else None,
    )


def pool_search_providers(config: RunConfig, components: Components) -> dict[str, Method]:
    """REML's trained pool without the policy (``eval.pool_search`` candidates per task; none when 0), keyed
    ``reml-search``."""
    candidates = config.core.eval.pool_search
    if not candidates:
        return {}
    search = PoolSearchMethod(
        components.pool,
        components.task_sampler.loss,
        depth=config.core.env.depth,
        candidates=candidates,
        lr=config.core.eval.sgd_lr,
        seed=config.seed,
    )
    return {SEARCH_KEY: search}


@dataclass
class TrainedReML:
    """A trained (or loaded) REML: its trainer, with the checkpoint chosen on validation tasks loaded."""

    trainer: MetaTrainer
    trained_steps: int
    selected: dict[str, Any]

    def method(self) -> ReMLMethod:
        return ReMLMethod.for_run(self.trainer.policy, self.trainer.eval_env, self.trainer.config)

    def training_record(self) -> TrainingRecord:
        policy = self.trainer.policy
        selected = SelectedCheckpoint(
            str(self.selected["name"]), int(self.selected["timesteps"]), finite_or_none(self.selected["score"])
        )
        return TrainingRecord(
            env_steps=self.trained_steps,
            resumes=self.trainer.state.resumes,
            selected_checkpoint=selected,
            history=list(self.trainer.state.history),
            policy_stats=dict(policy.stats()) if isinstance(policy, ReportsStats) else {},
        )


def train_reml(
    config: RunConfig, components: Components, out: Path, *, resume: bool = False, trust_checkpoint: bool = False
) -> TrainedReML:
    """Calibrate, meta-train (or continue) and load the best validation checkpoint; raises StopRequested on Ctrl-C.

    A new run records the fingerprint of its data (:data:`DATA_FILE`); a resumed one is refused if
    its data changed since (a new class split could put test classes into training).
    """
    trainer = _trainer(config, components, out, resume=resume, trust_checkpoint=trust_checkpoint)
    trainer.calibrate()
    trainer.train()
    with new_checkpoint(out / "checkpoints", "final", latest=False) as staging:
        trainer.write_into(staging)
    return _select_best(trainer, out)


def load_reml(config: RunConfig, components: Components, out: Path, *, trust_checkpoint: bool = False) -> TrainedReML:
    """A finished run's REML, from its ``best`` (or ``final``) checkpoint, without training.

    Reads only: nothing in ``out`` is created, changed or removed. A run whose training did not
    finish (stopped part-way, or continued past its final checkpoint and stopped) is refused, and
    so is one whose task data changed since it was trained.
    """
    latest = latest_checkpoint(out / "checkpoints")
    if latest is None:
        raise CheckpointError(
            f"{out} holds no checkpoint to load: its training stopped before the first one "
            f"(finish it with {_resume_command(out)}, or train it anew)"
        )
    verify_checkpoint(latest)
    unfinished = unfinished_training(out, config.core.train.env_steps)
    if unfinished is not None:
        raise CheckpointError(
            f"{out} holds an unfinished REML run: {unfinished}; finish it with {_resume_command(out)}, "
            "or train it anew (a half-trained REML is not loaded as trained)"
        )
    check_data(out, components, f"REML in {out}")
    state = read_trainer_state(latest / "trainer.json")
    trainer = MetaTrainer(config, components, out, state=state, read_only=True)
    trainer.load(latest, trust_pickle=trust_checkpoint)
    return _select_best(trainer, out)


def _select_best(trainer: MetaTrainer, out: Path) -> TrainedReML:
    trained_steps = trainer.state.timesteps
    selected = trainer.state.best or {"name": "final", "timesteps": trained_steps, "score": None}
    chosen = out / "checkpoints" / ("best" if trainer.state.best is not None else "final")
    if chosen.is_dir():
        log(f"using the checkpoint chosen on validation tasks ({selected['name']}, step {selected['timesteps']})")
        trainer.load(chosen)
    return TrainedReML(trainer, trained_steps, selected)


def run_experiment(
    config: RunConfig, out: Path, *, resume: bool = False, trust_checkpoint: bool = False, command: str = ""
) -> ResultsDocument:
    """Train, select, evaluate and report one run in ``out``; raises StopRequested on Ctrl-C."""
    started = time.perf_counter()
    seed_everything(config.seed, config.core.train.threads)
    components = build_components(config)
    baselines = build_baselines(components, list(config.baselines))  # before training: fail fast
    reml = train_reml(config, components, out, resume=resume, trust_checkpoint=trust_checkpoint)

    timing: dict[str, float] = {}
    for name, baseline in baselines.items():
        start = time.perf_counter()
        baseline.meta_train(components.task_sampler.train_stream(config.seed), progress=config.core.train.progress)
        timing[f"training_{name}"] = time.perf_counter() - start
    method = reml.method()
    providers: dict[str, Method] = {"reml": method}
    providers.update(pool_search_providers(config, components))
    providers.update(baselines)
    tables, curves, evaluation_seconds = evaluate_methods(config, components, providers)
    timing.update({f"{key}_reml": value for key, value in reml.trainer.state.seconds.items()})
    timing.update(evaluation_seconds)
    timing["total_this_invocation"] = time.perf_counter() - started

    results = ResultsDocument(
        kind="run",
        plugin=config.core.plugin,
        policy=config.policy.name,
        encoder=config.encoder.name,
        encoder_privileged=bool(components.encoder.privileged),
        seed=config.seed,
        test_tasks=config.core.eval.test_tasks,
        tables={name: table_of(table) for name, table in tables.items()},
        curves={name: [finite_or_none(v) for v in curve] for name, curve in curves.items()},
        timing=timing,
        config=config.to_dict(),
        command=command,
        loss_name=loss_name(components.task_sampler),
        labels={**baseline_labels(config), **own_rate_labels(providers)},
        components=component_facts(components),
        training={"reml": reml.training_record()},
    )
    summary = method.choices_summary(getattr(components.task_sampler, "descriptor_names", ()))
    if summary is not None:
        results.choices["reml"] = summary  # what the policy chose per test task (env.choose)
    results.references = {name: table_of(table) for name, table in evaluate_references(config, components).items()}
    write_outputs(out, results)
    return results


def _trainer(
    config: RunConfig, components: Components, out: Path, *, resume: bool, trust_checkpoint: bool
) -> MetaTrainer:
    if resume:
        found = resume_state(out)
        if found is not None:
            latest, state = found
            check_data(out, components, f"--resume {out}")
            state.resumes += 1
            log(f"resuming from {latest.name} ({state.timesteps} env steps done)")
            trainer = MetaTrainer(config, components, out, state=state)
            trainer.load(latest, trust_pickle=trust_checkpoint)
            return trainer
        log("no checkpoint yet: starting the run from the beginning")
    record_data(out, components)
    return MetaTrainer(config, components, out)


# -- finished or not ---------------------------------------------------------------------------


def unfinished_training(out: Path, budget: int) -> str | None:
    """Why the REML run in ``out`` has not finished training to ``budget`` env steps, or None if it has.

    Finished means: a ``final`` checkpoint (written only once training returned), no step
    checkpoint newer than it (a finished run continued with a larger budget and stopped again),
    and at least ``budget`` env steps in it (the budget of the folder's ``config.json``).
    """
    checkpoints = out / "checkpoints"
    latest = latest_checkpoint(checkpoints)
    latest_steps = read_trainer_state(latest / "trainer.json").timesteps if latest is not None else 0
    final = checkpoints / "final"
    if not final.is_dir():
        return f"its training stopped at {latest_steps} of {budget} env steps (it has no final checkpoint)"
    final_steps = read_trainer_state(final / "trainer.json").timesteps
    if latest_steps > final_steps:
        return (
            f"it was continued past its final checkpoint ({final_steps} env steps) and stopped at "
            f"{latest_steps} of {budget} env steps"
        )
    if final_steps < budget:
        return f"its final checkpoint holds {final_steps} of the {budget} env steps its config.json asks for"
    return None


def folder_budget(out: Path) -> int | None:
    """``train.env_steps`` of a run folder's ``config.json`` (None when it has none that says)."""
    data = read_json_file(out / "config.json", "a run's config (a JSON object)", error=UserError)
    train = data.get("train")
    steps = train.get("env_steps") if isinstance(train, dict) else None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


def _resume_command(out: Path) -> str:
    bench = out.parent.parent
    if out.parent.name.startswith("seed-") and (bench / "bench-plan.json").is_file():
        return f"reml-bench --resume {bench}"
    return f"reml-run --resume {out}"


# -- the data a run was trained on -------------------------------------------------------------


def data_fingerprint(components: Components) -> dict[str, str] | None:
    """The task sampler's fingerprint of its data (:class:`reml_core.interfaces.FingerprintsData`), or
    None when it gives none (its tasks depend on its config alone)."""
    sampler = components.task_sampler
    if not isinstance(sampler, FingerprintsData):
        return None
    name = components.config.task.name
    try:
        found = sampler.data_fingerprint()
    except UserError:
        raise
    except Exception as error:  # a plugin's bug, named as its own
        raise PluginError(f"task plugin {name!r} failed to fingerprint its data: {describe_error(error)}") from error
    if (
        not isinstance(found, Mapping)
        or not found
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in found.items())
    ):
        raise PluginError(
            f"task plugin {name!r}: data_fingerprint() must return a non-empty mapping of names to strings, "
            f"not {type(found).__name__}"
        )
    return dict(found)


def record_data(out: Path, components: Components) -> None:
    """Write the fingerprint of the data this run starts on into ``out`` (nothing when the sampler gives none)."""
    fingerprint = data_fingerprint(components)
    path = out / DATA_FILE
    if fingerprint is None:
        path.unlink(missing_ok=True)  # a stale record of an earlier start is no record of this one
        return
    out.mkdir(
        parents=True, exist_ok=True
    )  # a run's folder may not exist yet when it is called directly (run_experiment)
    atomic_write_json(path, {"format": DATA_FORMAT, "task": components.config.task.name, "fingerprint": fingerprint})


def check_data(out: Path, components: Components, what: str) -> None:
    """Refuse to go on with the run in ``out`` when its task data changed since it started.

    Runs that recorded nothing (their sampler gives no fingerprint, or they predate the record)
    are not checked.
    """
    path = out / DATA_FILE
    if not path.is_file():
        return
    record = read_json_file(path, "the fingerprint of the run's data (a JSON object)", error=UserError)
    recorded = record.get("fingerprint")
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        raise UserError(f"{path} is damaged: 'fingerprint' should map names to strings")
    current = data_fingerprint(components) or {}
    changed = [key for key in sorted(set(recorded) | set(current)) if recorded.get(key) != current.get(key)]
    if changed:
        shown = "; ".join(
            f"{key}: {recorded.get(key, '(none)')} when it started, {current.get(key, '(none)')} now" for key in changed
        )
        raise UserError(
            f"{what}: the data of task {components.config.task.name!r} changed since the run started ({shown}); going "
            "on "
            "would train or evaluate on another class split, which can put test classes into training. Restore the "
            "data "
            "the run started on, or start a new run"
        )


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable(
    config: RunConfig, out: Path, registry: PluginRegistry, components: Components | None = None
) -> None:
    """Refuse to resume when the folder's config no longer matches what its checkpoint was trained with.

    Seed, plugin, every component and every setting that shaped training must be the same;
    ``train.env_steps`` may grow but not fall below the steps already trained; and (given the
    run's ``components``) the task's data must be what the run started on.
    """
    found = resume_state(out)
    if found is None:
        return  # nothing trained yet: the run starts from the beginning with this config
    latest, state = found
    if components is not None:
        check_data(out, components, f"--resume {out}")
    read_json_file(latest / "reward.json", "the reward's calibration")  # every file is readable before anything runs
    recorded_config = load_resolved(latest / "config.json", registry)
    recorded = _flatten(recorded_config.to_dict())
    current = _flatten(config.to_dict())
    differing = [
        key
        for key in sorted(set(recorded) | set(current))
        if key not in RESUME_MAY_CHANGE and recorded.get(key, "(absent)") != current.get(key, "(absent)")
    ]
    if differing:
        shown = ", ".join(
            f"{key} ({recorded.get(key, '(absent)')!r} in the checkpoint, {current.get(key, '(absent)')!r} now)"
            for key in differing[:5]
        )
        more = f" and {len(differing) - 5} more" if len(differing) > 5 else ""
        raise UserError(
            f"--resume {out}: config.json no longer matches checkpoint {latest.name}: {shown}{more}; "
            "restore those settings, or start a new run with --out"
        )
    budget = config.core.train.env_steps
    # SB3 trains whole rollouts, so a finished run may have trained a little past its budget:
    # only a budget lowered below both the recorded one and the steps done goes back on training.
    if budget < state.timesteps and budget < recorded_config.core.train.env_steps:
        raise UserError(
            f"--resume {out}: train.env_steps is {config.core.train.env_steps} but checkpoint {latest.name} has "
            "already "
            f"trained {state.timesteps} env steps; a resumed run can only train longer"
        )


def write_outputs(out: Path, results: ResultsDocument) -> None:
    """results.json, report.md, few_shot.png and convergence.png, each written atomically."""
    atomic_write_json(out / "results.json", results.to_json())
    title = f"{results.plugin}: {results.policy}, encoder {results.encoder}"
    labels = results.method_labels()
    plot_few_shot(results.tables, out / "few_shot.png", title, labels, results.loss_name)
    plot_convergence(results.curves, out / "convergence.png", title, labels, results.loss_name)
    atomic_write_text(out / "report.md", render_run_report(results))


def command_line() -> str:
    return " ".join(shlex.quote(part) for part in [Path(sys.argv[0]).name, *sys.argv[1:]])
