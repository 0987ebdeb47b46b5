"""Meta-training: reward calibration, the policy's learning loop, checkpoints and validation.

At every checkpoint the current pool and policy are scored on held-out *validation* tasks (never
the test tasks) with the evaluation protocol, and the pool's health is logged (dead units,
weight norms, fine-tuning gain). The checkpoint that scores best is kept as ``best``, and the
final evaluation uses it: training longer can only add candidates, never make the result worse.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from pydantic import TypeAdapter, ValidationError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from reml_core.config import RunConfig
from reml_core.errors import CheckpointError, ComponentBuildError
from reml_core.evaluation import FewShotEvaluator
from reml_core.experiment import Components
from reml_core.interfaces import MaintainedLayerPool, PolicyBackend, Task
from reml_core.interrupts import Interrupts, raise_if_interrupted
from reml_core.logs import log  # noqa: F401  (re-exported: reml_core.training.log is older than reml_core.logs)
from reml_core.methods import ReMLMethod
from reml_core.pool_update import STATE_FILE as POOL_UPDATE_FILE
from reml_core.reports import format_stat, plural, stat_label
from reml_core.settings import available_cpus, overlaps_update, resolve_workers
from reml_core.specs import KIND_LABELS
from reml_core.storage import (
    discard_partial_writes,
    latest_checkpoint,
    new_checkpoint,
    prune_checkpoints,
    read_json_file,
    verify_checkpoint,
)
from reml_core.workers import WorkerLost

CALIBRATION_STREAM_OFFSET = 1_000_003  # calibration tasks: the training distribution, another stream


@dataclass
class TrainerState:
    """What a checkpoint needs besides the policy, pool and reward to continue a run."""

    timesteps: int = 0
    episodes: int | list[int] = 0  # episodes started: one count per env of a vector env, a plain int for one env
    resumes: int = 0
    calibrated: bool = False
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"calibration": 0.0, "training": 0.0, "validation": 0.0})


class StopRequested(BaseException):
    """Ctrl-C or SIGTERM arrived during training; the run was checkpointed. ``signum`` says which.

    Like :class:`KeyboardInterrupt` it is a ``BaseException``, not an ``Exception``: code that
    catches ``Exception`` (a notebook cell's, a web handler's, a plugin's) does not swallow the
    user's request to stop.
    """

    def __init__(self, checkpoint: Path, signum: int = signal.SIGINT) -> None:
        super().__init__(str(checkpoint))
        self.checkpoint = checkpoint
        self.signum = signum


#: Signals that stop training gracefully: Ctrl-C, and SIGTERM (what a cluster scheduler sends).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


#: The widest a log line is made (``[reml 12:34:56] `` included), so lines do not wrap on a terminal.
LOG_WIDTH = 100


def wrap_items(head: str, items: list[str], width: int = LOG_WIDTH - len("[reml 12:34:56] ")) -> list[str]:
    """``head`` and the comma-separated ``items`` as lines of at most ``width`` characters where the
    items allow it (an item is never split); continuation lines are indented under the first item."""
    if not items:
        return []
    lines, current = [], head + items[0]
    for item in items[1:]:
        if len(current) + 2 + len(item) > width:
            lines.append(current + ",")
            current = " " * len(head) + item
        else:
            current += ", " + item
    return [*lines, current]


def _progress_bar(total: int, show: bool) -> Any:
    """The training progress bar: tqdm's, on stderr (shown only on a terminal or in a notebook), as the
    evaluation's and MAML's bars are; ``show=False`` (``train.progress = false``) draws none."""
    return tqdm(total=total, desc="meta-training", unit="step", disable=None if show else True, leave=False)


def evaluation_processes(config: RunConfig) -> int:
    """The processes that fine-tune the networks of a run's few-shot evaluations, validation included
    (:meth:`FewShotEvaluator.few_shot <reml_core.evaluation.FewShotEvaluator.few_shot>`): its ``train.workers``,
    the cores it trains on, at most the CPUs this process may use (a run recorded elsewhere and evaluated here
    with ``--from``); every number is the same with any count."""
    return max(1, min(config.core.train.workers or 1, available_cpus()))


class MetaTrainer:
    """Trains one run's policy and pool, checkpointing into ``out/checkpoints``."""

    def __init__(
        self,
        config: RunConfig,
        components: Components,
        out: Path,
        *,
        state: TrainerState | None = None,
        read_only: bool = False,
    ) -> None:
        """``read_only``: only load checkpoints from ``out`` (as ``--from`` does); write no logs there."""
        self.config = config
        self.components = components
        self.out = out
        self.checkpoints = out / "checkpoints"
        self.state = state or TrainerState()
        train = config.core.train
        try:
            self.env = components.make_train_env(self.state.episodes)
        except ValueError as error:
            raise CheckpointError(f"cannot continue this run: {error}") from None
        self.env.training_progress = min(self.state.timesteps / train.env_steps, 1.0)
        self.eval_env = components.make_env(mode="evaluate")
        self.overlapped = not read_only and overlaps_update(
            resolve_workers(train.workers, train.n_envs), train.overlap_update
        )
        context = components.context.with_env(
            self.env, log_dir=None if read_only else out / "logs", overlap_update=self.overlapped
        )
        self.policy: PolicyBackend = config.policy.spec.factory(config.policy.config, context)
        self.validation_tasks = (
            components.task_sampler.validation_tasks(train.validation_tasks) if train.validation_tasks else []
        )
        probe_source = (
            self.validation_tasks[0] if self.validation_tasks else components.task_sampler.validation_tasks(1)[0]
        )  # never a test task
        self.probe = probe_source.x_query
        self._stop = False
        self._stop_signal: int = signal.SIGINT
        self._bar: Any = _progress_bar(0, False)
        self._bar_steps = 0

    # -- calibration -------------------------------------------------------------------------

    def calibrate(self) -> None:
        """Score random compositions on training-distribution tasks to calibrate the reward (no write-back)."""
        reward = self.components.reward
        if not reward.needs_calibration or self.state.calibrated:
            return
        episodes = self.config.core.train.calibration_episodes
        log(f"calibrating the reward on {episodes} random compositions")
        start = time.perf_counter()
        env = self.components.make_env(mode="calibrate", seed=self.config.seed + CALIBRATION_STREAM_OFFSET)
        rng = np.random.default_rng(self.config.seed + CALIBRATION_STREAM_OFFSET)
        samples: list[tuple[Task, Mapping[str, float]]] = []
        for _ in range(episodes):
            env.reset()
            terminated, info = False, dict[str, Any]()
            while not terminated:
                _, _, terminated, _, info = env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
            samples.append((cast(Task, env.task), info["losses"]))  # reset() drew the task
        try:
            reward.calibrate(samples)
        except ComponentBuildError as error:  # the reward refusing what this run gave it to calibrate on
            error.identify(KIND_LABELS["reward"], self.config.reward.name, "reward")  # the same error, named
            raise
        self.state.calibrated = True
        self.state.seconds["calibration"] += time.perf_counter() - start

    # -- training ----------------------------------------------------------------------------

    def train(self) -> None:
        """Learn until ``train.env_steps``; checkpoint every ``train.checkpoint_every`` steps.

        Ctrl-C or SIGTERM stops at the next environment step, writes a checkpoint and raises StopRequested.
        """
        total = self.config.core.train.env_steps
        remaining = total - self.policy.num_timesteps
        if remaining > 0:
            workers = getattr(self.env, "workers", None)
            scores = self.config.core.env.candidate_loss
            where = f", candidate layers scored by their {scores} support loss" if scores != "none" else ""
            if workers is not None and workers.count > 1 and getattr(self.env, "shards", None):
                where += f"; the envs stepped in {workers.count} processes, a shard each"
            elif workers is not None and workers.count > 1:
                shared = "episode ends and candidate scores" if scores != "none" else "episode ends"
                where += f"; {shared} in {workers.count} processes"
            if self.overlapped:
                where += "; the policy's update in its own process, beside the next rollout"
            log(
                f"meta-training {self.config.policy.name} for {plural(remaining, 'env step')} "
                f"(encoder {self.config.encoder.name}, reward {self.config.reward.name}{where})"
            )
            # Only the main thread may set signal handlers: from any other thread (a notebook's
            # background job, a web server's worker) training runs without them, and the
            # embedding program keeps its own handling of Ctrl-C.
            main = threading.current_thread() is threading.main_thread()
            raise_if_interrupted()  # swallowed before training (a fork hook, a callback): stop here, resumable
            previous = {signum: signal.signal(signum, self._request_stop) for signum in STOP_SIGNALS} if main else {}
            self._bar = _progress_bar(remaining, self.config.core.train.progress)
            self._bar_steps = self.policy.num_timesteps
            self._bar_end = total  # a backend may overshoot (PPO collects whole rollouts): the bar stops at its total
            start = time.perf_counter()
            lost_while_stopping: StopRequested | None = None
            try:
                # the core draws the progress bar (on stderr, as every REML bar): a library writes nothing on stdout
                self.policy.learn(remaining, callback=self.on_step, progress_bar=False)
            except WorkerLost as error:
                latest = latest_checkpoint(self.checkpoints)
                if not self._stop or latest is None:
                    raise WorkerLost(f"{error}; {self._resume_hint()}") from None
                # A stop was asked and a worker ended before the step in flight finished (the same scheduler's
                # kill, the OOM killer): the run stops as asked, at its last checkpoint (that step is not saved).
                log(f"{error}, during the stop: the run stops at its last checkpoint")
                lost_while_stopping = StopRequested(latest, self._stop_signal)
            finally:
                if hasattr(self.env, "stop_workers"):  # train.workers: stop them (validation and evaluation run here)
                    self.env.stop_workers()
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
                self.state.seconds["training"] += time.perf_counter() - start
                self._bar.close()
            if lost_while_stopping is not None:
                raise lost_while_stopping
            if self._stop:
                raise StopRequested(self.checkpoint(validate=False), self._stop_signal)
        if not self.state.history or self.state.history[-1]["timesteps"] != self.policy.num_timesteps:
            self.checkpoint()

    def _resume_hint(self) -> str:
        latest = latest_checkpoint(self.checkpoints)
        if latest is None:
            return "no checkpoint was written yet: start the run again"
        return f"the last checkpoint ({latest.name}) is intact: continue with reml-run --resume {self.out}"

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._stop:  # a second Ctrl-C or SIGTERM: stop now
            raise KeyboardInterrupt
        self._stop = True
        self._stop_signal = signum
        name = "interrupt" if signum == signal.SIGINT else "SIGTERM"
        log(f"{name} received: checkpointing at the next step (Ctrl-C again to abort without it)")

    def on_step(self, timesteps: int) -> bool:
        """Called by the policy backend after every env step; False stops training."""
        if Interrupts.pending is not None:  # a second Ctrl-C that Python swallowed (see reml_core.interrupts)
            raise_if_interrupted()
        if self._stop:
            return False
        reached = min(timesteps, getattr(self, "_bar_end", timesteps))
        if reached > self._bar_steps:
            self._bar.update(reached - self._bar_steps)
            self._bar_steps = reached
        self.env.training_progress = min(timesteps / self.config.core.train.env_steps, 1.0)
        every = self.config.core.train.checkpoint_every
        if timesteps // every > self.state.timesteps // every and timesteps < self.config.core.train.env_steps:
            self.checkpoint()
        return True

    # -- validation and checkpoints ----------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """The protocol on the validation tasks, plus the pool's health."""
        record: dict[str, float] = {}
        start = time.perf_counter()
        if self.validation_tasks:
            evaluation = self.config.core.eval
            longest = max(evaluation.steps)
            evaluator = FewShotEvaluator(
                self.validation_tasks,
                self.components.task_sampler.loss,
                shots=evaluation.shots,
                steps=sorted({0, longest}),
                lr=evaluation.sgd_lr,
            )
            method = ReMLMethod(self.policy, self.eval_env)
            table = evaluator.few_shot(
                method.network_for,
                many=method.networks_for,
                processes=evaluation_processes(self.config),
                forkable=method,
            )
            scores = []
            for shots, row in table.items():
                record[f"validation/mse_k{shots}_step0"] = row[0].mse_mean
                record[f"validation/mse_k{shots}_step{longest}"] = row[longest].mse_mean
                scores.append(row[longest].mse_mean)
            record["validation/finetune_gain"] = float(
                np.mean([row[0].mse_mean - row[longest].mse_mean for row in table.values()])
            )
            record["validation/score"] = float(np.mean(scores))
        for key, value in self.components.pool.diagnostics(self.probe).items():
            record[f"pool/{key}"] = value
        if isinstance(self.components.pool, MaintainedLayerPool):  # after measuring, so the log shows what it found
            for key, value in self.components.pool.maintain(self.probe).items():
                record[f"pool/{key}"] = value
        self.state.seconds["validation"] += time.perf_counter() - start
        return record

    def checkpoint(self, *, validate: bool = True) -> Path:
        """Save everything needed to resume; keep it as ``best`` if it scores best on validation."""
        self.state.timesteps = self.policy.num_timesteps
        self.state.episodes = self.env.episodes
        name = f"step-{self.state.timesteps:09d}"
        if validate:
            record = self.validate()
            record["timesteps"] = self.state.timesteps
            self.state.history.append(record)
            self._log_record(record)
            score = record.get("validation/score", math.nan)
            best = self.state.best
            if math.isfinite(score) and (best is None or score < best["score"]):
                self.state.best = {"name": name, "score": score, "timesteps": self.state.timesteps}
        path = self._write(name, latest=True)
        if self.state.best is not None and self.state.best["name"] == name:
            self._write("best", latest=False)
        prune_checkpoints(self.checkpoints)
        return path

    def _log_record(self, record: dict[str, float]) -> None:
        self.policy.record({key: value for key, value in record.items() if key != "timesteps"}, self.state.timesteps)
        pool = [
            f"{stat_label(key)} {format_stat(key, value)}" for key, value in record.items() if key.startswith("pool/")
        ]
        if "validation/score" in record:
            longest = max(self.config.core.eval.steps)
            log(
                f"step {record['timesteps']}: validation loss {record['validation/score']:.3f} after "
                f"{plural(longest, 'SGD step')} "
                f"on {plural(len(self.validation_tasks), 'validation task')}"
            )
            log(
                f"step {record['timesteps']}: fine-tuning on the support points lowered the validation loss by "
                f"{record['validation/finetune_gain']:.3f}"
            )
        for line in wrap_items(f"step {record['timesteps']}: pool: ", pool):
            log(line)

    def _write(self, name: str, *, latest: bool) -> Path:
        with new_checkpoint(self.checkpoints, name, latest=latest) as staging:
            self.write_into(staging)
        return self.checkpoints / name

    def write_into(self, directory: Path) -> None:
        """The files of a checkpoint: policy, pool, reward calibration, trainer state, config."""
        self.policy.save(directory)
        save_file(
            {k: v.contiguous() for k, v in self.components.pool.state_dict().items()},
            str(directory / "pool.safetensors"),
        )
        if self.components.pool_update is not None:
            save_file(self.components.pool_update.state_dict(), str(directory / POOL_UPDATE_FILE))
        (directory / "reward.json").write_text(json.dumps(self.components.reward.state_dict()))
        (directory / "trainer.json").write_text(json.dumps(asdict(self.state), allow_nan=True))
        (directory / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))

    # -- loading -----------------------------------------------------------------------------

    def load(self, directory: Path, *, trust_pickle: bool = False) -> None:
        """Restore policy, pool and reward from a checkpoint written by :meth:`checkpoint`."""
        load_components(self.components, directory)
        self.policy.load(directory, trust_pickle=trust_pickle)


def load_components(components: Components, directory: Path) -> TrainerState:
    """Restore the pool and reward of a checkpoint (verified against its manifest); return its trainer state."""
    verify_checkpoint(directory)
    try:
        components.pool.load_state_dict(load_file(str(directory / "pool.safetensors")))
        if components.pool_update is not None:
            if not (directory / POOL_UPDATE_FILE).is_file():
                raise CheckpointError(
                    f"checkpoint {directory} has no {POOL_UPDATE_FILE}: it was not trained with env.pool_update = "
                    "'protocol'"
                )
            components.pool_update.load_state_dict(
                load_file(str(directory / POOL_UPDATE_FILE)), f"{directory / POOL_UPDATE_FILE}"
            )
        components.reward.load_state_dict(read_json_file(directory / "reward.json", "the reward's calibration"))
        return read_trainer_state(directory / "trainer.json")
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise CheckpointError(f"cannot restore checkpoint {directory}: {' '.join(str(error).split())[:300]}") from None


def resume_state(out: Path) -> tuple[Path, TrainerState] | None:
    """The latest checkpoint of a run directory and its trainer state, or None before the first one.

    Whatever a killed process left half-written is discarded first; complete files are kept.
    """
    for path in discard_partial_writes(out):
        log(f"discarded {path.name}, left half-written by an interrupted process")
    latest = latest_checkpoint(out / "checkpoints")
    if latest is None:
        return None
    verify_checkpoint(latest)
    return latest, read_trainer_state(latest / "trainer.json")


def read_trainer_state(path: Path) -> TrainerState:
    """A checkpoint's trainer state, every field checked against its type (a damaged one is a CheckpointError)."""
    data = read_json_file(path, "the trainer's state")
    try:
        return TypeAdapter(TrainerState).validate_python(data, strict=False)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "state"
        raise CheckpointError(f"{path} is damaged: {where}: {first['msg']}") from None
