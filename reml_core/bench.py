"""``reml-bench``: REML, MAML and scratch trained (or loaded) and evaluated on the same held-out tasks.

Output layout::

    OUT/config.json             the base configuration (first seed, first encoder)
    OUT/results.json            every method, averaged over seeds (schema reml.results/2)
    OUT/report.md, few_shot.png, convergence.png
    OUT/seed-<s>/reml-<encoder>/  a complete reml-run directory (config, checkpoints, logs)
    OUT/seed-<s>/<baseline>/    the baseline's saved state (e.g. MAML's initialisation)
    OUT/seed-<s>/results.json   that seed's numbers

``--from DIR`` reads the same layout (or a single reml-run directory) instead of training.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reml_core.choices import merge as merge_choices
from reml_core.config import RunConfig, deep_merge, load_resolved, resolve_config
from reml_core.errors import UserError
from reml_core.experiment import (
    baseline_labels,
    build_components,
    build_one,
    check_policy_builds,
    component_facts,
    loss_name,
)
from reml_core.folders import check_path
from reml_core.jobs import (
    BASELINE_RECORD,
    JOB_LOG,
    BenchJob,
    JobFailure,
    JobResult,
    LocalExecutor,
    RayExecutor,
    disabled_names,
    finished,
    interrupted_reml,
    load_baseline,
    summary_line,
)
from reml_core.logs import log
from reml_core.pipeline import load_reml, own_rate_key
from reml_core.plots import plot_convergence, plot_few_shot
from reml_core.registry import PluginRegistry
from reml_core.reports import render_bench_report
from reml_core.results import (
    OWN_RATE_SUFFIX,
    EncoderInfo,
    ResultsDocument,
    aggregate_curves,
    aggregate_tables,
    finite_or_none,
    table_of,
)
from reml_core.settings import resolve_workers
from reml_core.storage import atomic_write_json, atomic_write_text, read_json_file


@dataclass(frozen=True)
class ComponentFacts:
    """What a report says of an encoder's components, found once while planning."""

    components: dict[str, str]  # what each component says of itself (describe())
    loss_name: str
    privileged: bool  # the encoder sees privileged task information


@dataclass(frozen=True)
class BenchPlan:
    """What to compare: methods, REML's encoders, seeds; and the validated config of every REML run."""

    methods: list[str]
    encoders: list[str]
    seeds: list[int]
    configs: dict[tuple[int, str], RunConfig]  # (seed, encoder) -> config
    from_dir: Path | None
    #: Where ``--from`` holds each (seed, method key) it provides, checked while planning.
    sources: dict[tuple[int, str], Path] = field(default_factory=dict)
    #: The user's settings each config was resolved from: a job resolves them again where it runs.
    #: (Not the resolved config's dict: a component may treat a value it was given differently
    #: from its default, e.g. MAML's K on an image family, and a resolved dict gives every value.)
    inputs: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    #: Each encoder's components, as built for the first seed while planning.
    facts: dict[str, ComponentFacts] = field(default_factory=dict)

    @property
    def baselines(self) -> list[str]:
        return [m for m in self.methods if m != "reml"]

    def reml_key(self, encoder: str) -> str:
        return "reml" if len(self.encoders) == 1 else f"reml:{encoder}"

    def base(self, seed: int) -> RunConfig:
        return self.configs[(seed, self.encoders[0])]

    @property
    def encoder_infos(self) -> dict[str, EncoderInfo]:
        """REML's method keys and their encoders (none when REML is not compared)."""
        if "reml" not in self.methods:
            return {}
        return {
            self.reml_key(encoder): EncoderInfo(encoder, self.facts[encoder].privileged) for encoder in self.encoders
        }


#: More seeds than anyone trains; a larger --seeds is a typo, refused at once.
MAX_SEEDS = 1000
SEED_LIMIT = 2**32


def plan_bench(
    registry: PluginRegistry,
    user: Mapping[str, Any],
    *,
    methods: Sequence[str],
    encoders: Sequence[str] | None,
    seeds: int,
    from_dir: Path | None,
    trust_checkpoint: bool = False,
) -> BenchPlan:
    """Validate everything before anything runs: methods, encoders, seeds, every seed's config, --from.

    Everything ``--from`` provides is read and loaded here, so a damaged source is refused before
    the output folder exists.
    """
    available = ["reml", *registry.names("baseline")]
    unknown = [m for m in methods if m not in available]
    if unknown:
        raise UserError(f"--methods: unknown method {unknown[0]!r} (available: {', '.join(available)})")
    base_seed = int(user.get("seed", 0)) if isinstance(user.get("seed", 0), int) else 0
    if seeds < 1:
        raise UserError(f"--seeds: {seeds}; a benchmark needs at least 1 seed")
    if seeds > MAX_SEEDS:
        raise UserError(f"--seeds: {seeds} seeds; the limit is {MAX_SEEDS}")
    if base_seed + seeds > SEED_LIMIT:
        raise UserError(
            f"--seeds: seeds {base_seed}..{base_seed + seeds - 1} go past the largest seed, {SEED_LIMIT - 1}; lower "
            "--seed or --seeds"
        )
    if from_dir is not None:
        from_dir = check_path(from_dir, "--from")
        if not from_dir.is_dir():
            raise UserError(f"--from {from_dir}: no such directory")
    encoder_names = list(encoders) if encoders else [None]
    configs: dict[tuple[int, str], RunConfig] = {}
    inputs: dict[tuple[int, str], dict[str, Any]] = {}
    facts: dict[str, ComponentFacts] = {}
    baselines = [m for m in methods if m != "reml"]
    for seed in range(base_seed, base_seed + seeds):
        for encoder in encoder_names:
            data = deep_merge(user, {"seed": seed, **({"encoder": {"name": encoder}} if encoder else {})})
            config = resolve_config(registry, data, baselines=baselines)
            configs[(seed, config.encoder.name)] = config
            inputs[(seed, config.encoder.name)] = data
            if config.encoder.name in facts:
                continue  # another seed of a checked config: the seed changes no cross-component check
            components = build_components(config)  # cross-component checks
            if "reml" in methods:
                check_policy_builds(components)
            # the baselines train with the first encoder's components (a baseline that cannot be built fails now)
            if not facts:
                for name in baselines:
                    build_one(config.baselines[name], components.context)
            facts[config.encoder.name] = ComponentFacts(
                component_facts(components), loss_name(components.task_sampler), bool(components.encoder.privileged)
            )
    names = list(dict.fromkeys(encoder for _, encoder in configs))
    plan = BenchPlan(
        list(methods), names, list(range(base_seed, base_seed + seeds)), configs, from_dir, inputs=inputs, facts=facts
    )
    if from_dir is not None:
        plan.sources.update(_check_sources(plan, registry, trust_checkpoint))
    return plan


def _check_sources(plan: BenchPlan, registry: PluginRegistry, trust: bool) -> dict[tuple[int, str], Path]:
    """Find and load everything ``--from`` holds for this plan; refuse seeds it holds nothing for."""
    assert plan.from_dir is not None
    sources: dict[tuple[int, str], Path] = {}
    for seed in plan.seeds:
        found_any = False
        if "reml" in plan.methods:
            for encoder in plan.encoders:
                source = _reml_source(plan.from_dir, seed, encoder)
                if source is None:
                    raise UserError(
                        f"--from {plan.from_dir} holds no REML run for seed {seed} with encoder {encoder!r} "
                        f"(it holds: {_describe_sources(plan.from_dir)}); match --seed/--seeds/--encoder to it, or "
                        "drop --from to train"
                    )
                config = load_resolved(source / "config.json", registry)
                load_reml(config, build_components(config), source, trust_checkpoint=trust)
                sources[(seed, plan.reml_key(encoder))] = source
                found_any = True
        for name in plan.baselines:
            directory = plan.from_dir / f"seed-{seed}" / name
            if not directory.is_dir():
                continue  # trained, and the report says so
            if not (directory / BASELINE_RECORD).is_file():  # written last: without it, training never finished
                raise UserError(
                    f"--from {plan.from_dir}: {name} for seed {seed} in {directory} is unfinished (no "
                    f"{BASELINE_RECORD}: its "
                    f"training was interrupted); finish it with reml-bench --resume {plan.from_dir}, or drop --from to "
                    "train it"
                )
            read_json_file(directory / BASELINE_RECORD, f"{name}'s training record", error=UserError)
            config = plan.base(seed)
            chosen = config.baselines[name]
            baseline = chosen.spec.factory(chosen.config, build_components(config).context)
            load_baseline(baseline, name, directory)
            sources[(seed, name)] = directory
            found_any = True
        if not found_any:
            raise UserError(
                f"--from {plan.from_dir} holds nothing for seed {seed} (it holds: {_describe_sources(plan.from_dir)}); "
                "match --seed/--seeds to it, or drop --from to train"
            )
    return sources


def _describe_sources(from_dir: Path) -> str:
    """What a --from folder holds, for error messages: ``seed 0 (reml-oracle, maml)`` or a single run."""
    parts = []
    for seed_dir in sorted(from_dir.glob("seed-*")):
        if seed_dir.is_dir():
            held = sorted(child.name for child in seed_dir.iterdir() if child.is_dir())
            parts.append(f"{seed_dir.name.replace('-', ' ')} ({', '.join(held) or 'nothing'})")
    single = _single_run(from_dir)
    if single is not None:
        parts.append(f"one reml-run run, seed {single[0]}, encoder {single[1]!r}")
    return "; ".join(parts) or "no REML runs or baselines"


def _single_run(directory: Path) -> tuple[Any, Any] | None:
    """(seed, encoder) of a single reml-run folder, or None if ``directory`` is not one."""
    if not ((directory / "config.json").is_file() and (directory / "checkpoints").is_dir()):
        return None
    data = read_json_file(directory / "config.json", "a run's config (a JSON object)", error=UserError)
    encoder = data.get("encoder")
    return data.get("seed"), encoder.get("name") if isinstance(encoder, dict) else encoder


def _reml_source(from_dir: Path, seed: int, encoder: str) -> Path | None:
    """Where --from holds this seed's REML for this encoder, if anywhere."""
    nested = from_dir / f"seed-{seed}" / f"reml-{encoder}"
    if (nested / "config.json").is_file():
        return nested
    single = _single_run(from_dir)
    if single is not None and single == (seed, encoder):
        return from_dir
    return None


def bench_jobs(plan: BenchPlan, out: Path, *, trust_checkpoint: bool = False, resuming: bool = False) -> list[BenchJob]:
    """One job per (seed, method, encoder), in report order. On ``resuming``, a job whose folder in
    ``out`` holds a finished method loads it, and an interrupted REML job continues from its checkpoints."""
    jobs = []
    disabled = disabled_names()
    for seed in plan.seeds:
        wanted: list[tuple[str, str, str | None, dict[str, Any], str]] = []
        if "reml" in plan.methods:
            wanted += [
                (plan.reml_key(e), "reml", e, plan.inputs[(seed, e)], f"seed-{seed}/reml-{e}") for e in plan.encoders
            ]
        wanted += [
            (name, name, None, plan.inputs[(seed, plan.encoders[0])], f"seed-{seed}/{name}") for name in plan.baselines
        ]
        for key, method, encoder, config, folder in wanted:
            source = plan.sources.get((seed, key))
            resume = False
            if source is None and resuming:
                if finished(out / folder, method):
                    source = out / folder
                elif method == "reml" and interrupted_reml(out / folder):
                    resume = True
            jobs.append(
                BenchJob(
                    seed=seed,
                    key=key,
                    method=method,
                    encoder=encoder,
                    config=config,
                    baselines=tuple(plan.baselines),
                    folder=folder,
                    source=str(source) if source is not None else None,
                    resume=resume,
                    trust_checkpoint=trust_checkpoint,
                    disabled=disabled,
                    threads=plan.configs[(seed, plan.encoders[0])].core.train.threads,
                    workers=_training_processes(plan.configs[(seed, encoder or plan.encoders[0])], method, source),
                )
            )
    return jobs


def _training_processes(config: RunConfig, method: str, source: Path | None) -> int:
    """The processes a job trains with: ``train.workers`` as a run resolves it for a REML job that trains (its
    meta-training runs that many), 1 for a baseline or a method loaded from a folder."""
    if method != "reml" or source is not None:
        return 1
    return resolve_workers(config.core.train.workers, config.core.train.n_envs)


class BenchJobsFailed(UserError):
    """Some jobs failed: the others are kept, and ``--resume`` reruns only what is missing."""

    exit_code = 1


def run_bench(
    plan: BenchPlan,
    registry: PluginRegistry,
    out: Path,
    *,
    executor: LocalExecutor | RayExecutor | None = None,
    trust_checkpoint: bool = False,
    command: str = "",
    resuming: bool = False,
) -> ResultsDocument:
    """Train or load every method for every seed (one job each, on ``executor``), evaluate all on
    the same tasks, write the files. Only this process (the driver) writes into ``out``."""
    started = time.perf_counter()
    executor = executor or LocalExecutor()
    jobs = bench_jobs(plan, out, trust_checkpoint=trust_checkpoint, resuming=resuming)
    per_seed_jobs = {seed: [job for job in jobs if job.seed == seed] for seed in plan.seeds}
    done: dict[tuple[int, str], JobResult] = {}
    documents: dict[int, ResultsDocument] = {}
    failures: list[JobFailure] = []
    for count, outcome in enumerate(executor.run(jobs, out), 1):
        job = outcome.job
        if isinstance(outcome, JobFailure):
            failures.append(outcome)
            log(f"[{count}/{len(jobs)}] {job.label} FAILED: {outcome.error}")
            continue
        done[(job.seed, job.key)] = outcome
        logs = out / job.folder / JOB_LOG
        where = (
            f"; its log: {logs}"
            if job.source is None and logs.is_file()
            else f" (loaded from {job.source})"
            if job.source
            else ""
        )
        log(
            f"[{count}/{len(jobs)}] {job.label} finished in {outcome.wall_seconds:.1f} s, "
            f"{summary_line(outcome)}{where}"
        )
        seed_jobs = per_seed_jobs[job.seed]
        if all((j.seed, j.key) in done for j in seed_jobs):
            documents[job.seed] = _seed_document(plan, job.seed, [done[(j.seed, j.key)] for j in seed_jobs], command)
            (out / f"seed-{job.seed}").mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / f"seed-{job.seed}" / "results.json", documents[job.seed].to_json())
    if failures:
        lines = [
            f"{len(failures)} of {len(jobs)} jobs failed; the {len(jobs) - len(failures)} that finished are kept in "
            f"{out}:"
        ]
        lines += [f"  {failure.job.label}: {failure.error}" for failure in failures]
        lines.append(f"rerun only what is missing with: reml-bench --resume {out}")
        raise BenchJobsFailed("\n".join(lines))

    results = _aggregate(plan, documents, time.perf_counter() - started, command, executor.name)
    atomic_write_json(out / "results.json", results.to_json())
    labels = results.method_labels()
    title = f"{results.plugin}: " + ", ".join(labels.values())
    plot_few_shot(results.tables, out / "few_shot.png", title, labels, results.loss_name)
    plot_convergence(results.curves, out / "convergence.png", title, labels, results.loss_name)
    atomic_write_text(out / "report.md", render_bench_report(results))
    return results


def _seed_document(plan: BenchPlan, seed: int, results: list[JobResult], command: str) -> ResultsDocument:
    """One seed's numbers, every method's: what ``seed-<s>/results.json`` holds."""
    base = plan.base(seed)
    facts = plan.facts[plan.encoders[0]]
    tables, timing, own_words = {}, {}, {}
    for r in results:  # a method's own-rate rows (AdaptsItsOwnWay) right after its fixed-rate rows
        tables[r.job.key] = table_of(r.table)
        timing[f"training_{r.job.key}"] = r.training_seconds
        timing[f"evaluation_{r.job.key}"] = r.evaluation_seconds
        timing[f"choosing_{r.job.key}"] = r.choosing_seconds
        if r.own_table is not None:
            own = own_rate_key(r.job.key)
            tables[own] = table_of(r.own_table)
            timing[f"evaluation_{own}"] = r.own_evaluation_seconds
            own_words[own] = r.own_words or "own rate"
    return ResultsDocument(
        kind="seed",
        plugin=base.core.plugin,
        policy=base.policy.name,
        encoder=base.encoder.name,
        encoder_privileged=any(info.privileged for info in plan.encoder_infos.values()),
        seed=seed,
        test_tasks=base.core.eval.test_tasks,
        tables=tables,
        curves={r.job.key: [finite_or_none(v) for v in r.curve] for r in results},
        timing=timing,
        config=base.to_dict(),
        command=command,
        loss_name=results[0].loss_name,
        labels={**baseline_labels(base), **own_words},
        components=facts.components,
        training={r.job.key: r.training for r in results if r.training is not None},
        encoders=dict(plan.encoder_infos),
        budgets={r.job.key: r.budget for r in results},
        sources={seed: {r.job.key: r.source for r in results}},
        references={name: table_of(table) for name, table in results[0].references.items()},
        choices={r.job.key: r.choices for r in results if r.choices},
    )


def seed_budgets(budgets: Mapping[int, str]) -> str:
    """One method's budget over seeds: the budget when every seed had the same, else each seed's own
    (``seed 0: 2048 env steps ...; seed 1: 640 env steps ...``), so no seed's budget hides behind another's."""
    distinct = list(dict.fromkeys(budgets.values()))
    if len(distinct) == 1:
        return distinct[0]
    return "; ".join(f"seed {seed}: {budget}" for seed, budget in budgets.items())


def _aggregate(
    plan: BenchPlan, documents: dict[int, ResultsDocument], seconds: float, command: str, executor: str
) -> ResultsDocument:
    """Every seed's numbers and the mean over seeds of each cell, with the spread between seeds
    (standard deviation of the seed means)."""
    base = plan.base(plan.seeds[0])
    first = documents[plan.seeds[0]]
    keys = first.methods  # with any own-rate keys, which have no training or curve of their own
    timing = {}
    for key in keys:
        for phase in ("training", "evaluation", "choosing"):
            if f"{phase}_{key}" in first.timing:
                timing[f"{phase}_{key}"] = float(sum(documents[s].timing[f"{phase}_{key}"] for s in plan.seeds))
    timing["total_this_invocation"] = seconds
    facts = plan.facts[plan.encoders[0]]
    return ResultsDocument(
        kind="bench",
        plugin=base.core.plugin,
        policy=base.policy.name,
        encoder=",".join(plan.encoders),
        encoder_privileged=first.encoder_privileged,
        seed=base.seed,
        test_tasks=base.core.eval.test_tasks,
        tables={key: aggregate_tables([documents[s].tables[key] for s in plan.seeds]) for key in keys},
        curves={key: aggregate_curves([documents[s].curves[key] for s in plan.seeds]) for key in first.curves},
        timing=timing,
        config=base.to_dict(),
        command=command,
        loss_name=facts.loss_name,
        labels={
            **baseline_labels(base),
            **{key: words for key, words in (first.labels or {}).items() if key.endswith(OWN_RATE_SUFFIX)},
        },
        components=facts.components,
        training=first.training,
        encoders=dict(plan.encoder_infos),
        budgets={
            key: seed_budgets({s: documents[s].budgets.get(key, "") for s in plan.seeds}) for key in first.budgets
        },
        sources={s: documents[s].sources[s] for s in plan.seeds},
        seeds=list(plan.seeds),
        per_seed={s: documents[s].tables for s in plan.seeds},
        preset=base.core.preset,
        executor=executor,
        references={
            name: aggregate_tables([documents[s].references[name] for s in plan.seeds])
            for name in first.references
            if all(name in documents[s].references for s in plan.seeds)
        },
        choices={  # what each REML's policy chose, over every seed's test tasks
            key: merge_choices([documents[s].choices[key] for s in plan.seeds if key in documents[s].choices])
            for key in dict.fromkeys(key for s in plan.seeds for key in documents[s].choices)
        },
    )
