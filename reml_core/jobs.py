"""The jobs of a benchmark and the executors that run them.

One job is one (method, encoder, seed): train the method (or load it from ``--from``), then
evaluate it on the seed's held-out test tasks. A job depends only on its :class:`BenchJob` (the
resolved config travels as a dict and the worker discovers its own plugins), so it gives the
same numbers wherever it runs:

- :class:`LocalExecutor` runs the jobs one after another in this process, training into their
  final folders (a killed REML job leaves checkpoints that ``reml-bench --resume`` continues);
- :class:`RayExecutor` runs each job as one Ray task that declares the CPUs it uses
  (``train.threads``); the worker trains into a temporary folder and returns it packed, and only
  the driver writes into the benchmark folder, unpacking each job's folder whole (a new folder,
  then a rename).

A job that fails, or whose worker dies, becomes a :class:`JobFailure` naming its method and seed;
the others carry on.
"""

from __future__ import annotations

import contextlib
import glob
import io
import math
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reml_core.config import RunConfig, load_resolved, resolve_config
from reml_core.distributed import cluster_cpus, largest_node_cpus, ray_session
from reml_core.errors import CheckpointError, UserError, describe_error
from reml_core.evaluation import FewShotTable
from reml_core.experiment import Components, build_components, build_one, loss_name
from reml_core.interfaces import Describable
from reml_core.logs import configure, log
from reml_core.methods import ReMLMethod
from reml_core.pipeline import (
    evaluate_methods,
    evaluate_references,
    folder_budget,
    load_reml,
    own_rate_key,
    own_rate_labels,
    seed_everything,
    train_reml,
    unfinished_training,
)
from reml_core.registry import PluginRegistry, disabled_plugins
from reml_core.results import TrainingRecord, jsonable
from reml_core.storage import (
    atomic_write_json,
    follow_umask,
    latest_checkpoint,
    link_error,
    open_for_append,
    read_json_file,
    record_written,
)
from reml_core.training import StopRequested

#: The file in each job's folder that holds what the job printed.
JOB_LOG = "job.log"
#: A finished baseline folder holds this (written last); a finished REML folder a ``final`` checkpoint.
BASELINE_RECORD = "bench.json"


@dataclass(frozen=True)
class BenchJob:
    """One method, one seed: everything a worker needs, and nothing it must share with the driver."""

    seed: int
    key: str  # the method's key in results.json: "reml", "reml:<encoder>" or a baseline's name
    method: str  # "reml" or the baseline's name
    encoder: str | None  # REML's state encoder
    config: dict[str, Any]  # the user's settings for this seed (and encoder); the eval section is every method's
    baselines: tuple[str, ...]  # the baselines the config is resolved with (as the driver resolved it)
    folder: str  # where the job's files live, relative to the benchmark folder: "seed-0/maml"
    source: str | None = None  # a folder to load the trained method from (--from, or a finished job on --resume)
    resume: bool = False  # a REML folder with checkpoints of an interrupted job: continue it
    trust_checkpoint: bool = False
    disabled: tuple[str, ...] = ()  # REML_DISABLE_PLUGINS of the driver, for workers elsewhere
    threads: int = 1  # train.threads: each process's torch threads
    workers: int = 1  # the processes the job trains with (train.workers as the driver resolves it)

    @property
    def label(self) -> str:
        name = f"REML ({self.encoder})" if self.method == "reml" else self.method
        return f"{name}, seed {self.seed}"


@dataclass
class JobResult:
    """What a finished job hands back to the driver."""

    job: BenchJob
    table: FewShotTable
    curve: list[float]
    evaluation_seconds: float
    training_seconds: float
    budget: str
    source: str
    training: TrainingRecord | None = None  # REML's; a baseline records none
    wall_seconds: float = 0.0
    artifacts: bytes = b""  # the job's folder, packed (Ray); empty when it was written in place
    loss_name: str = "MSE"
    #: A method that adapts its own way (AdaptsItsOwnWay): its own-rate rows on the same tasks
    #: (results key ``job.key + OWN_RATE_SUFFIX``), their evaluation time and the words that label them.
    own_table: FewShotTable | None = None
    own_evaluation_seconds: float = 0.0
    #: The part of ``evaluation_seconds`` spent handing out the networks (the method's test-time choosing cost).
    choosing_seconds: float = 0.0
    own_words: str = ""
    #: What predictors that learn nothing score on the same test tasks (:func:`reml_core.pipeline.evaluate_references`).
    references: dict[str, FewShotTable] = field(default_factory=dict)
    #: What REML's policy chose on the test tasks (``env.choose``; :func:`reml_core.choices.summarise`), else None.
    choices: dict[str, Any] | None = None


@dataclass
class JobFailure:
    job: BenchJob
    error: str


def run_job(job: BenchJob, workdir: Path, *, echo: bool = True) -> JobResult:
    """Train (or load) and evaluate one method for one seed; a trained method's files go into ``workdir``.

    What a training job prints goes to ``workdir/job.log`` (and to stderr too when ``echo``). A
    job that loads its method (``job.source``) writes nothing at all.
    """
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if job.source is None:
            workdir.mkdir(parents=True, exist_ok=True)
            log_file = stack.enter_context(open(open_for_append(workdir / JOB_LOG), "a", encoding="utf-8"))
            stack.enter_context(_tee_stderr(log_file, echo))
            follow_umask(workdir / JOB_LOG)
        registry = PluginRegistry.discover(disabled=job.disabled)
        config = resolve_config(registry, job.config, baselines=job.baselines)
        seed_everything(job.seed, config.core.train.threads)
        if job.method == "reml":
            components, provider, outcome = _reml(job, config, registry, workdir)
        else:
            components, provider, outcome = _baseline(job, config, workdir)
        tables, curves, seconds = evaluate_methods(config, components, {job.key: provider})
        references = evaluate_references(config, components)
        summarise_choices = getattr(provider, "choices_summary", None)  # REML's, when its policy chose hyperparameters
        names = getattr(components.task_sampler, "descriptor_names", ())
        choices = summarise_choices(names) if summarise_choices else None

    own = own_rate_key(job.key)
    return JobResult(
        job=job,
        table=tables[job.key],
        curve=curves[job.key],
        evaluation_seconds=seconds[f"evaluation_{job.key}"],
        choosing_seconds=seconds.get(f"choosing_{job.key}", 0.0),
        wall_seconds=time.perf_counter() - start,
        loss_name=loss_name(components.task_sampler),
        own_table=tables.get(own),
        own_evaluation_seconds=seconds.get(f"evaluation_{own}", 0.0),
        own_words=own_rate_labels({job.key: provider}).get(own, ""),
        references=references,
        choices=choices,
        **outcome,
    )


def _reml(
    job: BenchJob, config: RunConfig, registry: PluginRegistry, workdir: Path
) -> tuple[Components, Any, dict[str, Any]]:
    evaluation = config  # how its test tasks' networks are chosen (eval.reml_rollouts) is the benchmark's setting
    if job.source is not None:
        source = Path(job.source)
        log(f"loading REML ({job.encoder} encoder, seed {job.seed}) from {source}")
        config = load_resolved(source / "config.json", registry)
        components = build_components(config)
        trained = load_reml(config, components, source, trust_checkpoint=job.trust_checkpoint)
        origin = f"loaded from {source}"
    else:
        components = build_components(config)
        atomic_write_json(workdir / "config.json", config.to_dict())
        if job.resume:
            log(f"continuing REML ({job.encoder} encoder, seed {job.seed}) from its last checkpoint in {job.folder}")
        trained = train_reml(config, components, workdir, resume=job.resume, trust_checkpoint=job.trust_checkpoint)
        origin = f"trained in {job.folder}"
    seconds = sum(trained.trainer.state.seconds.values())
    method = ReMLMethod.for_run(trained.trainer.policy, trained.trainer.eval_env, evaluation)
    budget = (
        f"{trained.trained_steps} env steps of {config.policy.name}, reward {config.reward.name}, "
        f"pool {config.pool.name} ({components.pool.size} layers), depth {config.core.env.depth}, "
        f"pool update {config.core.env.pool_update}"
        + (
            f", candidate scores by {config.core.env.candidate_loss} support loss"
            if config.core.env.candidate_loss != "none"
            else ""
        )
        + (f"; each test task's network the {method.describe()}" if method.rollouts > 1 else "")
    )
    return (
        components,
        method,
        {
            "training_seconds": seconds,
            "budget": budget,
            "source": origin,
            "training": trained.training_record(),
        },
    )


def _baseline(job: BenchJob, config: RunConfig, workdir: Path) -> tuple[Components, Any, dict[str, Any]]:
    components = build_components(config)
    chosen = config.baselines[job.method]
    baseline = build_one(chosen, components.context)
    # what the report shows of its budget: its own words when it states them, else its options
    if isinstance(baseline, Describable):
        options = " ".join(str(baseline.describe()).split())
    else:
        options = ", ".join(f"{k}={v}" for k, v in chosen.config.model_dump(mode="json").items())
    if job.source is not None:
        source = Path(job.source)
        log(f"loading {job.method} (seed {job.seed}) from {source}")
        load_baseline(baseline, job.method, source)
        record = source / BASELINE_RECORD
        meta = read_json_file(record, f"{job.method}'s training record", error=UserError) if record.is_file() else {}
        seconds = meta.get("training_seconds")
        seconds = float(seconds) if isinstance(seconds, (int, float)) else math.nan
        origin = f"loaded from {source}"
    else:
        log(f"meta-training {job.method} (seed {job.seed})")
        start = time.perf_counter()
        summary = baseline.meta_train(
            components.task_sampler.train_stream(job.seed), progress=config.core.train.progress
        )
        seconds = time.perf_counter() - start
        baseline.save(workdir)
        for path in workdir.iterdir():
            if path.is_file():
                record_written(path)  # a baseline's own files (MAML's are listed as it writes them)
                follow_umask(path)
        trained_record = {
            "training_seconds": seconds,
            "summary": summary,
            "config": chosen.config.model_dump(mode="json"),
        }

        atomic_write_json(workdir / BASELINE_RECORD, jsonable(trained_record))
        origin = f"trained in {job.folder}"
    return components, baseline, {"training_seconds": seconds, "budget": options, "source": origin}


def load_baseline(baseline: Any, name: str, directory: Path) -> None:
    """A saved baseline, loaded; whatever goes wrong is one CheckpointError naming the folder."""
    try:
        baseline.load(directory)
    except UserError:
        raise
    except Exception as error:  # a plugin's loader on a damaged file: name it, no traceback
        raise CheckpointError(
            f"cannot load {name} from {directory}: {type(error).__name__}: {' '.join(str(error).split())[:200]}"
        ) from None


def finished(job_dir: Path, method: str) -> bool:
    """Whether a job's folder holds a finished method (so ``--resume`` loads instead of rerunning it).

    A REML folder is finished when its training reached its budget
    (:func:`reml_core.pipeline.unfinished_training`); a baseline's when its record, written last, exists.
    """
    if method == "reml":
        if not ((job_dir / "config.json").is_file() and (job_dir / "checkpoints" / "final").is_dir()):
            return False

        budget = folder_budget(job_dir)
        return budget is not None and unfinished_training(job_dir, budget) is None
    return (job_dir / BASELINE_RECORD).is_file()


def interrupted_reml(job_dir: Path) -> bool:
    """A REML job folder with checkpoints but no final one: training stopped part-way."""
    return (job_dir / "config.json").is_file() and latest_checkpoint(job_dir / "checkpoints") is not None


class _Tee(io.TextIOBase):
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def _tee_stderr(log_file: Any, echo: bool) -> Iterator[None]:
    streams = (sys.stderr, log_file) if echo else (log_file,)
    with contextlib.redirect_stderr(_Tee(*streams)):
        yield


# -- executors -------------------------------------------------------------------------------


def summary_line(result: JobResult) -> str:
    """The job's headline number: the loss (and the family's metrics) at the largest K and step count."""
    table = result.table
    shots = max(table)
    steps = max(table[shots])
    cell = table[shots][steps]
    parts = [f"{result.loss_name} {cell.mse_mean:.4g}"]
    parts += [f"{name} {mean:.3f}" for name, (mean, _) in sorted(cell.metrics.items())]
    return f"K={shots}, {steps} step{'' if steps == 1 else 's'}: " + ", ".join(parts)


class LocalExecutor:
    """Every job in this process, one after another, writing straight into its final folder."""

    name = "local"

    def run(self, jobs: Sequence[BenchJob], out: Path) -> Iterator[JobResult | JobFailure]:
        for job in jobs:
            try:
                yield run_job(job, out / job.folder)
            except (StopRequested, KeyboardInterrupt, SystemExit):
                raise
            except UserError as error:
                yield JobFailure(job, str(error))
            except Exception as error:  # a plugin's bug in one job must not take the others down
                yield JobFailure(job, describe_error(error))


def _ray_job(job: BenchJob, started: bytes = b"") -> JobResult:
    """A job on a Ray worker: trained in a temporary folder, returned packed for the driver to write.

    ``started`` is the packed folder of an interrupted REML job, which the worker continues.
    """
    configure()  # a worker process: its messages go to the job's log
    with tempfile.TemporaryDirectory(prefix="reml-job-") as temporary:
        workdir = Path(temporary) / "job"
        if started:
            unpack_folder(started, workdir)
        result = run_job(job, workdir, echo=False)
        if workdir.is_dir():
            result.artifacts = pack_folder(workdir)
        return result


class RayExecutor:
    """Every job as one Ray task, on a local instance or a cluster.

    A task asks Ray for the CPUs its job keeps busy: ``train.threads``, or its training processes
    (``train.workers``) when more, at most the CPUs of the cluster's largest node. Asking for one CPU
    while a run's workers use every core of the node would let Ray start as many such jobs there as
    it has cores, each with all its workers (2 jobs x 2 processes on 2 cores).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        self.address = address
        self.num_cpus = num_cpus

    def run(self, jobs: Sequence[BenchJob], out: Path) -> Iterator[JobResult | JobFailure]:
        with ray_session("--executor ray", address=self.address, num_cpus=self.num_cpus) as ray:
            remote = ray.remote(_ray_job)
            pending: dict[Any, BenchJob] = {}
            offered = max(largest_node_cpus(ray), 1)  # a job needing more could never start
            for job in jobs:
                cpus = max(int(job.threads), min(int(job.workers), offered))
                started = pack_folder(out / job.folder) if job.resume else b""  # the worker continues its checkpoints
                pending[remote.options(num_cpus=cpus, max_retries=0).remote(job, started)] = job
            log(
                f"{len(jobs)} jobs submitted to Ray ({cluster_cpus(ray)} "
                f"CPUs{', at ' + self.address if self.address else ', local'})"
            )
            try:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    for ref in done:
                        job = pending.pop(ref)
                        try:
                            result = ray.get(ref)
                        except ray.exceptions.RayTaskError as error:
                            cause = error.cause if getattr(error, "cause", None) is not None else error
                            text = (
                                str(cause)
                                if isinstance(cause, UserError)
                                else f"{type(cause).__name__}: {' '.join(str(cause).split())[:500]}"
                            )
                            yield JobFailure(job, text)
                            continue
                        except ray.exceptions.RayError as error:  # the worker died, the node was lost, ...
                            yield JobFailure(job, f"{type(error).__name__}: {' '.join(str(error).split())[:300]}")
                            continue
                        if result.artifacts:
                            unpack_folder(result.artifacts, out / job.folder)
                            result.artifacts = b""
                        yield result
            finally:
                for ref in pending:
                    ray.cancel(ref, force=True)


def pack_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buffer.getvalue()


def unpack_folder(data: bytes, target: Path) -> None:
    """Write a packed job folder at ``target`` whole: into a new sibling, then renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    record_written(target.parent, pattern=f".{glob.escape(target.name)}.*.tmp/**")
    incoming = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
            archive.extractall(incoming, filter="data")
        for path in [incoming, *incoming.rglob("*")]:
            if path.is_symlink():
                raise UserError(
                    f"the packed job folder for {target} holds a link ({path.relative_to(incoming)}); REML never makes "
                    "links"
                )
            follow_umask(path, directory=path.is_dir())
            if path.is_file():
                record_written(target / path.relative_to(incoming))
        if os.path.islink(target):
            raise link_error(target)
        if target.exists():
            shutil.rmtree(target)
        os.replace(incoming, target)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise


def disabled_names() -> tuple[str, ...]:
    return tuple(sorted(disabled_plugins()))
