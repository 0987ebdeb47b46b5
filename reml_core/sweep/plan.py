"""A sweep's plan: every trial (a configuration with a seed), checked before anything is written, its
trial configs, and the folder that holds them (a REML folder of kind ``sweep``, see :mod:`reml_core.folders`).

The plan is stored in ``sweep.json`` (schema ``reml.sweep/1``) before the first trial starts, and
read back from it by ``--resume``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reml_core.errors import ConfigError, UserError
from reml_core.folders import check_new_folder, claim_new_folder
from reml_core.folders import claim_sweep_to_resume as _claim_sweep_folder_to_resume
from reml_core.reports import describe_values as describe
from reml_core.reports import show_value as show
from reml_core.storage import atomic_write_json, atomic_write_text, read_json_file, record_written
from reml_core.sweep.space import SearchSpace, config_id, configurations, nested
from reml_core.sweep.toml_writer import read_toml_config, to_toml

SCHEMA = "reml.sweep/1"
#: Ray Tune's experiment folder inside the sweep's (what ``--resume`` restores).
TUNE_NAME = "tune"
#: A sweep larger than this is a typo (a grid's product exploding), not an experiment.
MAX_TRIALS = 10_000


@dataclass(frozen=True)
class Trial:
    """One configuration with one seed: one reml-run folder."""

    id: str  # "<config id>-s<seed>"
    configuration: str  # the config id
    values: dict[str, Any]
    seed: int

    @property
    def folder(self) -> str:
        return f"trials/{self.id}"

    @property
    def config_file(self) -> str:
        return f"configs/{self.id}.toml"

    @property
    def log(self) -> str:
        return f"logs/{self.id}.log"

    @property
    def record(self) -> str:
        return f"logs/{self.id}.json"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "configuration": self.configuration,
            "values": self.values,
            "seed": self.seed,
            "folder": self.folder,
            "config_file": self.config_file,
            "log": self.log,
        }


@dataclass
class SweepPlan:
    """Everything a sweep runs, fixed before the first trial starts (and stored in sweep.json)."""

    user_config: dict[str, Any]  # the --config file and flags, without [sweep]
    space: dict[str, Any]  # SearchSpace.to_dict()
    seeds: list[int]
    cpus_per_trial: float
    configurations: list[dict[str, Any]]  # {"id", "values", "config": the resolved config of its first seed}
    trials: list[Trial]
    trial_configs: dict[str, str]  # trial id -> the TOML text of its config
    command: str = ""


def plan_sweep(
    registry: Any,
    user: Mapping[str, Any],
    space: SearchSpace,
    seeds: int,
    cpus_per_trial: float | None,
    *,
    command: str = "",
) -> SweepPlan:
    """Draw every configuration and check each, for each seed, the way ``reml-run`` checks its flags.

    A problem with a swept value is one UserError naming the flag, key and value; any other
    config problem is the ConfigError ``reml-run`` would give. Nothing is written.
    """
    from reml_core.config import deep_merge, default_baselines, renamed_settings, resolve_config  # noqa: PLC0415 - lazy: start-up time: reml_core.config imports torch
    from reml_core.experiment import build_components, check_policy_builds  # noqa: PLC0415 - lazy: start-up time: reml_core.experiment imports torch

    base_seed = user.get("seed", 0)
    if isinstance(base_seed, bool) or not isinstance(base_seed, int) or base_seed < 0:
        resolve_config(registry, dict(user))  # the config's own error for a bad seed
        raise UserError(f"seed: expected a non-negative integer, got {base_seed!r}")
    seed_list = list(range(base_seed, base_seed + seeds))
    points = configurations(space, base_seed)
    if len(points) * seeds > MAX_TRIALS:
        raise UserError(
            f"the sweep has {len(points)} configurations x {seeds} seeds = {len(points) * seeds:,} trials; the limit "
            f"is {MAX_TRIALS:,}"
        )
    keys = space.keys()
    renames = renamed_settings(registry)
    plan_configurations: list[dict[str, Any]] = []
    trials: list[Trial] = []
    trial_configs: dict[str, str] = {}
    threads = 1
    for values in points:
        cid = config_id(values)
        label = describe(values)
        point_user = dict(user)
        for key, value in values.items():
            point_user = deep_merge(point_user, nested(key, value), renames)
        resolved_first = None
        for seed in seed_list:
            seeded = {**point_user, "seed": seed}
            try:
                config = resolve_config(
                    registry, seeded, baselines=default_baselines(registry, seeded.get("plugin"), "run")
                )
            except ConfigError as error:
                raise _sweep_problem(error, keys, values, space) from None
            resolved = config.to_dict()
            if not isinstance(point_user.get("train"), Mapping) or "workers" not in point_user["train"]:
                # a trial has the CPUs Ray reserves for it, not the driver's: train.workers would fork more processes
                resolved["train"]["workers"] = trial_workers(cpus_per_trial, config.core.train.threads)
            if resolved_first is None:
                resolved_first = resolved
                core = config.core
                if core.train.validation_tasks == 0:
                    raise UserError(
                        f"configuration {label}: train.validation_tasks is 0, so the trainer computes no validation "
                        "score, "
                        "which is what the sweep minimises; set it above 0"
                    )
                if core.train.device != "cpu":
                    raise UserError(
                        f"configuration {label}: train.device is {core.train.device!r}; reml-sweep asks Ray for CPUs "
                        "only, "
                        "so its trials run on the CPU (set train.device=cpu, or use reml-run for GPU runs)"
                    )
                threads = max(threads, core.train.threads)
                try:
                    check_policy_builds(build_components(config))  # cross-component checks, as reml-run makes them
                except ConfigError as error:
                    raise UserError(
                        f"configuration {label}: {error.problems[0] if error.problems else error}"
                    ) from None
                except UserError as error:
                    raise UserError(f"configuration {label}: {' '.join(str(error).split())}") from None
            trial = Trial(id=f"{cid}-s{seed}", configuration=cid, values=values, seed=seed)
            trial_user = deep_merge(resolved, {"train": {"progress": False}})  # nobody watches a trial's terminal
            text = to_toml(
                trial_user,
                header=[
                    f"reml-sweep trial {trial.id}: {label}, seed {seed}",
                    "reml-run --config takes this file; it is the trial's complete config.",
                ],
            )
            check_round_trip(registry, text, trial_user, f"configuration {label}")
            trials.append(trial)
            trial_configs[trial.id] = text
        plan_configurations.append({"id": cid, "values": values, "config": resolved_first})
    return SweepPlan(
        user_config=dict(user),
        space=space.to_dict(),
        seeds=seed_list,
        cpus_per_trial=float(cpus_per_trial if cpus_per_trial is not None else threads),
        configurations=plan_configurations,
        trials=trials,
        trial_configs=trial_configs,
        command=command,
    )


def trial_workers(cpus_per_trial: float | None, threads: int) -> int:
    """A trial's ``train.workers`` when the sweep does not set it: the whole CPUs Ray reserves for the trial
    (``--cpus-per-trial``, else ``train.threads``), at least 1."""
    return max(1, int(cpus_per_trial if cpus_per_trial is not None else threads))


def _sweep_problem(error: Any, keys: Sequence[str], values: Mapping[str, Any], space: SearchSpace) -> UserError:
    """A config problem of one configuration: one line naming the swept key and value when it is theirs."""
    problems = list(error.problems)
    for problem in problems:
        location = problem.split(": ", 1)[0]
        for key in keys:
            if location == key or location.startswith(key + ".") or key.startswith(location + "."):
                more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
                return UserError(f"{space.origin(key)} {key}={show(values[key])}: {problem}{more}")
    return error


def check_round_trip(registry: Any, text: str, expected: Mapping[str, Any], where: str) -> None:
    from reml_core.config import default_baselines, resolve_config  # noqa: PLC0415 - lazy: start-up time: reml_core.config imports torch

    data = read_toml_config(text, where)
    try:
        again = resolve_config(
            registry, data, baselines=default_baselines(registry, data.get("plugin"), "run")
        ).to_dict()
    except ConfigError as error:
        raise UserError(f"{where}: its config does not survive being written as TOML: {error.problems[0]}") from None
    if again != dict(expected):
        raise UserError(
            f"{where}: its config does not survive being written as TOML (a setting set to null whose default is not "
            "null?)"
        )


def plan_to_dict(plan: SweepPlan) -> dict[str, Any]:
    return {
        "user_config": plan.user_config,
        "search_space": plan.space,
        "seeds": plan.seeds,
        "cpus_per_trial": plan.cpus_per_trial,
        "configurations": plan.configurations,
        "trials": [t.to_dict() for t in plan.trials],
    }


def plan_from_sweep_json(data: Mapping[str, Any], out: Path) -> SweepPlan:
    """The plan a sweep folder's sweep.json recorded, for ``--resume``."""
    try:
        trials = [
            Trial(id=t["id"], configuration=t["configuration"], values=dict(t["values"]), seed=int(t["seed"]))
            for t in data["trials"]
        ]
        plan = SweepPlan(
            user_config=dict(data["user_config"]),
            space=dict(data["search_space"]),
            seeds=[int(s) for s in data["seeds"]],
            cpus_per_trial=float(data["cpus_per_trial"]),
            configurations=[dict(c) for c in data["configurations"]],
            trials=trials,
            trial_configs={},
            command=str(data.get("command", "")),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(
            f"--resume {out}: sweep.json is damaged ({type(error).__name__}: {error}); it is not a plan reml-sweep "
            "wrote"
        ) from None
    for trial in plan.trials:
        if not re.fullmatch(r"[0-9a-f]{8}-s[0-9]+", trial.id):
            raise UserError(f"--resume {out}: sweep.json names a trial {trial.id[:40]!r} reml-sweep would not name")
    return plan


def write_plan(out: Path, plan: SweepPlan) -> None:
    """The trial configs and a first sweep.json (status "running"), before any trial starts."""
    # the folder's ledger lists each file before it is written (see reml_core.folders), so --force removes
    # exactly these: each trial's config, log and record, its reml-run folder (which lists its own files)
    # and Ray Tune's experiment folder, which is wholly Tune's
    record_written(out / TUNE_NAME, pattern="**")
    for trial in plan.trials:
        record_written(out / trial.folder, folder=True)
        for name in (trial.config_file, trial.log, trial.record):
            record_written(out / name)
    (out / "configs").mkdir(exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    for trial_id, text in plan.trial_configs.items():
        atomic_write_text(out / "configs" / f"{trial_id}.toml", text)
    atomic_write_json(
        out / "sweep.json",
        {
            "schema": SCHEMA,
            "status": "running",
            "command": plan.command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **plan_to_dict(plan),
        },
    )


# -- the sweep folder ----------------------------------------------------------------------------


def check_sweep_out(out: Path, *, force: bool, flag: str = "--out") -> Path:
    """Refuse an ``--out`` reml-sweep may not write into, before anything is started or written."""
    return check_new_folder(out, force=force, flag=flag)


def claim_sweep_folder(out: Path, *, force: bool, flag: str = "--out") -> Path:
    """Make ``out`` a new sweep's folder (locked for this process); with ``force`` replace what REML wrote in it."""
    return claim_new_folder(out, kind="sweep", force=force, flag=flag)


def claim_sweep_to_resume(folder: Path, *, flag: str = "--resume") -> tuple[Path, dict[str, Any]]:
    """An existing sweep folder and its sweep.json, locked for this process; anything else is refused."""
    folder = _claim_sweep_folder_to_resume(folder, flag=flag)
    data = read_json_file(folder / "sweep.json", "a sweep's plan (sweep.json)", error=UserError)
    if data.get("schema") != SCHEMA:
        raise UserError(f"{flag} {folder}: sweep.json is not a {SCHEMA} file")
    return folder, data


def default_out(plan: SweepPlan) -> Path:
    """A fresh directory under runs/ named after the sweep's task family and first seed, never one that exists."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    plugin = plan.configurations[0]["config"]["plugin"]
    base = Path("runs") / f"{plugin}-sweep-s{plan.seeds[0]}-{stamp}"
    candidate, suffix = base, 2
    while candidate.exists():
        candidate, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
    return candidate
