"""``reml-sweep``: a grid or random search over config values on Ray Tune; every trial is a reml-run folder.

A thin wrapper over :func:`reml_core.api.prepare_sweep` (the flags become its arguments) that
prints the table at the end and names the trials that did not finish.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from reml_core.cli.common import (
    ArgumentParser,
    add_experiment_flags,
    discover_plugins,
    path_arg,
    positive_int,
    run_main,
    user_config,
)
from reml_core.errors import UserError
from reml_core.specs import CHOICE_FLAGS

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
        description=(
            "Search config values on Ray Tune: every configuration of a grid (--grid) or random draws (--random), "
            "once per seed, each trial an ordinary reml-run folder. Trials are ranked by the validation score the "
            "trainer "
            "computes (never by test tasks). Writes sweep.json, sweep.md (a table of every configuration), sweep.png "
            "and "
            "best.toml (the best configuration, for reml-run --config) into the sweep directory. See docs/sweep.md."
        ),
    )
    add_experiment_flags(parser)
    search = parser.add_argument_group("search")
    search.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help=(
            "values of one config key, comma-separated, each read like a --set value (e.g. --grid "
            "env.inner_adam_lr=0.001,0.003, "
            "--grid env.shots=[5],[5,10]); repeatable: the sweep runs every combination"
        ),
    )
    search.add_argument(
        "--random",
        action="append",
        default=[],
        metavar="KEY=DIST",
        help="draw a key's value: uniform:LOW:HIGH, loguniform:LOW:HIGH, randint:LOW:HIGH or choice:V1,V2 "
        "(repeatable; needs --samples)",
    )
    search.add_argument(
        "--samples",
        type=positive_int,
        metavar="N",
        help="random configurations to draw (each combined with every grid point)",
    )
    search.add_argument(
        "--seeds",
        type=positive_int,
        metavar="N",
        help="seeds per configuration: --seed .. --seed+N-1 (default 1); each configuration x seed is one trial",
    )
    ray_group = parser.add_argument_group("ray")
    ray_group.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join the Ray cluster at ADDR (e.g. HOST:6379) instead of starting one on this machine",
    )
    ray_group.add_argument(
        "--cpus-per-trial",
        type=positive_number,
        metavar="N",
        help="CPUs Ray reserves for each trial (default: train.threads)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out", type=path_arg, metavar="DIR", help="sweep directory (default: runs/<plugin>-sweep-s<seed>-<time>)"
    )
    output.add_argument("--force", action="store_true", help="replace the sweep already in --out")
    output.add_argument(
        "--resume",
        type=path_arg,
        metavar="DIR",
        help="continue the interrupted sweep in DIR: finished trials are kept, "
        "interrupted ones continue from their checkpoints (its sweep.json fixes every setting)",
    )
    return parser


def _body(argv: Sequence[str] | None) -> int:
    from reml_core.api import prepare_sweep  # noqa: PLC0415 - lazy: start-up time: reml_core.api imports numpy; Ctrl-C at start-up, see cli/common.NativeImportGuard
    from reml_core.pipeline import command_line  # noqa: PLC0415 - lazy: start-up time: reml_core.pipeline imports torch; Ctrl-C at start-up, see cli/common.NativeImportGuard
    from reml_core.sweep.space import parse_grid_flag, parse_random_flag  # noqa: PLC0415 - lazy: start-up time: reml_core.sweep.space imports numpy; Ctrl-C at start-up, see cli/common.NativeImportGuard

    args = build_parser().parse_args(argv)
    if args.resume is not None:
        given = [f"--{name}" for name in PLAN_FLAGS if getattr(args, name) is not None]
        given += [
            flag
            for flag, value in (
                ("--set", args.assignments),
                ("--grid", args.grid),
                ("--random", args.random),
                ("--force", args.force),
            )
            if value
        ]
        if given:
            raise UserError(f"--resume takes every setting from {args.resume}/sweep.json; drop {', '.join(given)}")
    grid = [parse_grid_flag(text) for text in args.grid]
    random = [parse_random_flag(text) for text in args.random]
    registry = discover_plugins()
    user = None if args.resume is not None else user_config(args)
    prepared = prepare_sweep(
        user,
        grid=grid,
        random=random,
        samples=args.samples,
        seeds=args.seeds,
        cpus_per_trial=args.cpus_per_trial,
        out=args.out,
        force=args.force,
        resume=args.resume,
        ray_address=args.ray_address,
        source=str(args.config) if args.config is not None else "--set",
        registry=registry,
    )
    result = prepared.execute(command_line())
    print(result.summary())
    unfinished = result.unfinished
    if unfinished:
        for trial in unfinished:
            print(f"{PROG}: trial {trial['id']} {trial['status']}; log {result.folder / trial['log']}", file=sys.stderr)
        print(
            f"{PROG}: {len(unfinished)} of {len(result.trials)} trials did not finish; the table shows the others. "
            f"Retry them with: reml-sweep --resume {result.folder}",
            file=sys.stderr,
        )
        return EXIT_TRIALS_FAILED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
