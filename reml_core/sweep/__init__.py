"""``reml-sweep``: a grid or random search over config values, each trial an ordinary ``reml-run``.

Output layout::

    OUT/.reml.json                the folder's marker, kind "sweep" (reml_core.folders: one kind of marker
                                  for runs, benchmarks, sweeps)
    OUT/sweep.json                the plan (search space, every trial), then every score (schema reml.sweep/1)
    OUT/sweep.md, sweep.png       a table and a plot of every configuration: mean and spread over seeds
    OUT/best.toml                 the best configuration, complete: ``reml-run --config OUT/best.toml``
    OUT/configs/<trial>.toml      the exact config each trial runs (``reml-run --config`` takes it)
    OUT/trials/<config>-s<seed>/  an ordinary reml-run folder (``reml-run --resume`` continues it)
    OUT/logs/<trial>.log, .json   what the trial's reml-run printed; each invocation's command, time, exit code
    OUT/tune/                     Ray Tune's experiment (what ``--resume`` restores)

Every configuration (one point of the grid, or one random draw) runs once per seed. The whole
plan is drawn and checked before anything is written: every configuration of every seed is
resolved like ``reml-run`` resolves its flags, so an unknown key or a bad value stops the sweep
at once. Ray Tune schedules the trials (``{"cpu": cpus_per_trial}`` each), keeps the experiment's
state under ``OUT/tune`` and restores it after a kill.

A trial is ``reml-run`` itself, started by the Tune trainable as a child process: Tune calls a
function trainable on a thread, where the trainer cannot install its Ctrl-C/SIGTERM handlers
(Python allows signal handlers only on the main thread), and a process of its own gives each
trial the torch state (seed, threads, deterministic algorithms) a ``reml-run`` starts with, so a
trial is bit-for-bit the ``reml-run`` its config file describes. A trial that was killed is
continued with ``reml-run --resume``; a finished one (``report.md`` written) is never run again.

The objective is the validation score the trainer records at each checkpoint (``validation/score``,
the mean query loss on validation tasks; lower is better) of the checkpoint it selected, read
from the trial's ``results.json`` (``training.selected_checkpoint``). Test tasks never enter it.

From Python, :func:`reml_core.sweep` (in :mod:`reml_core.api`) runs one; ``reml-sweep`` wraps it.
The package, one job per module:

- :mod:`~reml_core.sweep.space`: the search space (``--grid``, ``--random``, ``[sweep]``) and its configurations
- :mod:`~reml_core.sweep.toml_writer`: configs written as TOML that ``reml-run --config`` reads back
- :mod:`~reml_core.sweep.plan`: every trial, checked before anything is written; ``sweep.json``'s plan; the folder
- :mod:`~reml_core.sweep.trials`: what a trial leaves behind (finished?, its objective, its record and log)
- :mod:`~reml_core.sweep.supervise`: one trial's reml-run, under a guard that passes it one SIGTERM
- :mod:`~reml_core.sweep.tune`: the plan run on Ray Tune, with progress lines and a graceful stop
- :mod:`~reml_core.sweep.collect`: the scores collected and ``sweep.json``, ``sweep.md``, ``sweep.png``, ``best.toml``
written
"""

from reml_core.sweep.collect import OBJECTIVE, collect, summary, write_outputs
from reml_core.sweep.plan import (
    MAX_TRIALS,
    SCHEMA,
    TUNE_NAME,
    SweepPlan,
    Trial,
    check_sweep_out,
    claim_sweep_folder,
    claim_sweep_to_resume,
    default_out,
    plan_from_sweep_json,
    plan_sweep,
    plan_to_dict,
    write_plan,
)
from reml_core.sweep.space import (
    Dimension,
    FileSweep,
    SearchSpace,
    combine_space,
    config_id,
    configurations,
    parse_file_sweep,
    parse_grid_flag,
    parse_random_flag,
)
from reml_core.sweep.toml_writer import to_toml

__all__ = [
    "MAX_TRIALS",
    "OBJECTIVE",
    "SCHEMA",
    "TUNE_NAME",
    "Dimension",
    "FileSweep",
    "SearchSpace",
    "SweepPlan",
    "Trial",
    "check_sweep_out",
    "claim_sweep_folder",
    "claim_sweep_to_resume",
    "collect",
    "combine_space",
    "config_id",
    "configurations",
    "default_out",
    "parse_file_sweep",
    "parse_grid_flag",
    "parse_random_flag",
    "plan_from_sweep_json",
    "plan_sweep",
    "plan_to_dict",
    "summary",
    "to_toml",
    "write_outputs",
    "write_plan",
]
