"""``reml-sweep``: a grid or random search over config values on Ray Tune; every trial is a reml-run folder."""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reml_core.cli.common import (
    ArgumentParser,
    Terminated,
    add_experiment_flags,
    discover_plugins,
    path_arg,
    positive_int,
    raise_if_interrupted,
    run_main,
    set_interrupt_hint,
    user_config,
)
from reml_core.errors import UserError
from reml_core.specs import CHOICE_FLAGS

if TYPE_CHECKING:
    from reml_core.sweep import SweepPlan

PROG = "reml-sweep"
#: Flags that shape a new sweep; ``--resume`` takes all of them from the sweep's sweep.json.
PLAN_FLAGS = (*CHOICE_FLAGS, "preset", "config", "seed", "out", "samples", "seeds")
#: A sweep that ends with trials unfinished (failed) exits with this; the finished ones are still reported.
EXIT_TRIALS_FAILED = 1


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return int(value) if value.is_integer() else value


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Search config values on Ray Tune: every configuration of a grid (--grid) or random draws (--random), "
        "once per seed, each trial an ordinary reml-run folder. Trials are ranked by the validation score the trainer "
        "computes (never by test tasks). Writes sweep.json, sweep.md (a table of every configuration), sweep.png and "
        "best.toml (the best configuration, for reml-run --config) into the sweep directory. See docs/sweep.md.",
    )
    add_experiment_flags(parser)
    search = parser.add_argument_group("search")
    search.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="values of one config key, comma-separated, each read like a --set value (e.g. --grid env.inner_adam_lr=0.001,0.003, "
                        "--grid env.shots=[5],[5,10]); repeatable: the sweep runs every combination")
    search.add_argument("--random", action="append", default=[], metavar="KEY=DIST",
                        help="draw a key's value: uniform:LOW:HIGH, loguniform:LOW:HIGH, randint:LOW:HIGH or choice:V1,V2 "
                        "(repeatable; needs --samples)")
    search.add_argument("--samples", type=positive_int, metavar="N", help="random configurations to draw (each combined with every grid point)")
    search.add_argument("--seeds", type=positive_int, metavar="N", help="seeds per configuration: --seed .. --seed+N-1 (default 1); each configuration x seed is one trial")
    ray_group = parser.add_argument_group("ray")
    ray_group.add_argument("--ray-address", metavar="ADDR", help="join the Ray cluster at ADDR (e.g. HOST:6379) instead of starting one on this machine")
    ray_group.add_argument("--cpus-per-trial", type=positive_number, metavar="N", help="CPUs Ray reserves for each trial (default: train.threads)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=path_arg, metavar="DIR", help="sweep directory (default: runs/<plugin>-sweep-s<seed>-<time>)")
    output.add_argument("--force", action="store_true", help="replace the sweep already in --out")
    output.add_argument("--resume", type=path_arg, metavar="DIR", help="continue the interrupted sweep in DIR: finished trials are kept, "
                        "interrupted ones continue from their checkpoints (its sweep.json fixes every setting)")
    return parser


def default_out(plan: SweepPlan) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    plugin = plan.configurations[0]["config"]["plugin"]
    base = Path("runs") / f"{plugin}-sweep-s{plan.seeds[0]}-{stamp}"
    candidate, suffix = base, 2
    while candidate.exists():
        candidate, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
    return candidate


def _new_plan(args: argparse.Namespace, registry: Any) -> SweepPlan:
    from reml_core.pipeline import command_line
    from reml_core.sweep import combine_space, parse_file_sweep, parse_grid_flag, parse_random_flag, plan_sweep

    grid = [parse_grid_flag(text) for text in args.grid]
    random = [parse_random_flag(text) for text in args.random]
    user = user_config(args)
    table = user.pop("sweep", None)
    file_sweep = parse_file_sweep(table, str(args.config) if args.config is not None else "--set")
    space = combine_space(file_sweep, grid, random, args.samples)
    seeds = args.seeds or file_sweep.seeds or 1
    return plan_sweep(registry, user, space, seeds, args.cpus_per_trial, command=command_line())


def _body(argv: Sequence[str] | None) -> int:
    import sys

    from reml_core.distributed import check_address, cluster_cpus, ray_session, require_ray
    from reml_core.folders import check_path
    from reml_core.pipeline import command_line
    from reml_core.sweep import (
        check_sweep_out,
        claim_sweep_folder,
        claim_sweep_to_resume,
        plan_from_sweep_json,
        run_tune,
        summary,
        write_outputs,
        write_plan,
    )
    from reml_core.logs import log

    args = build_parser().parse_args(argv)
    if args.resume is not None:
        given = [f"--{name}" for name in PLAN_FLAGS if getattr(args, name) is not None]
        given += [flag for flag, value in (("--set", args.assignments), ("--grid", args.grid), ("--random", args.random), ("--force", args.force)) if value]
        if given:
            raise UserError(f"--resume takes every setting from {args.resume}/sweep.json; drop {', '.join(given)}")
    require_ray(PROG)
    if args.ray_address is not None:
        check_address(args.ray_address)  # before the folder is claimed
    registry = discover_plugins()
    raise_if_interrupted()  # a Ctrl-C swallowed during the imports above
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if args.resume is not None:
        shown = args.resume
        out, data = claim_sweep_to_resume(args.resume)
        plan = plan_from_sweep_json(data, out)
        started = str(data.get("started", started))
        if args.cpus_per_trial is not None:
            plan.cpus_per_trial = float(args.cpus_per_trial)
    else:
        if args.out is not None:
            check_path(args.out, "--out")
        plan = _new_plan(args, registry)
        shown = args.out if args.out is not None else default_out(plan)
        check_sweep_out(shown, force=args.force)
    raise_if_interrupted()
    # A local Ray would SIGKILL a trial's reml-run when its worker ends; left alone, reml-run gets SIGTERM
    # instead (the trainable asks for it) and checkpoints first, like a reml-run stopped by a scheduler
    os.environ.setdefault("RAY_kill_child_processes_on_worker_exit", "0")
    with ray_session(PROG, address=args.ray_address) as ray:
        # Ray's start-up puts a crash handler of its own on SIGTERM (it aborts the process); restore
        # the command's, so SIGTERM ends a sweep the way it ends reml-run (exit 143 with the resume hint)
        signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGTERM))
        cpus = cluster_cpus(ray)
        if plan.cpus_per_trial > cpus:
            raise UserError(f"--cpus-per-trial {plan.cpus_per_trial:g}: the Ray cluster has only {cpus} CPUs, so no trial could start")
        if args.resume is None:
            out = claim_sweep_folder(shown, force=args.force)
            write_plan(out, plan)
        set_interrupt_hint(f"the sweep can be continued with: reml-sweep --resume {shown}")
        raise_if_interrupted()
        configurations = len(plan.configurations)
        log(f"sweep of {configurations} configuration{'s' * (configurations != 1)} x {len(plan.seeds)} seed{'s' * (len(plan.seeds) != 1)} "
            f"= {len(plan.trials)} trial{'s' * (len(plan.trials) != 1)} on Ray ({cpus} CPUs, {plan.cpus_per_trial:g} per trial, up to {int(cpus // plan.cpus_per_trial)} at a time)"
            f"{', resumed' if args.resume is not None else ''}; folder {shown}")
        stopped = run_tune(out, plan, restore=args.resume is not None)
    if stopped is not None:  # Tune saved the experiment and stopped the trials; end as reml-run does on a signal
        raise KeyboardInterrupt if stopped == signal.SIGINT else Terminated
    document = write_outputs(out, plan, registry, command=command_line(), started=started)
    set_interrupt_hint(None)
    print(summary(document, Path(shown)))
    unfinished = [t for t in document["trials"] if t["status"] != "finished"]
    if unfinished:
        for trial in unfinished:
            print(f"{PROG}: trial {trial['id']} {trial['status']}; log {Path(shown) / trial['log']}", file=sys.stderr)
        print(f"{PROG}: {len(unfinished)} of {len(document['trials'])} trials did not finish; the table shows the others. "
              f"Retry them with: reml-sweep --resume {shown}", file=sys.stderr)
        return EXIT_TRIALS_FAILED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
