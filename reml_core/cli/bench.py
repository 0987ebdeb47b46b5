"""``reml-bench``: REML against MAML and scratch on the same held-out tasks, under Finn et al.'s protocol."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reml_core.cli.common import (
    EXIT_INTERRUPTED,
    ArgumentParser,
    add_experiment_flags,
    discover_plugins,
    print_summary,
    int_list,
    name_list,
    positive_int,
    run_main,
    user_config,
)
from reml_core.cli.run import default_out
from reml_core.storage import atomic_write_json, open_run_directory
from reml_core.training import StopRequested

PROG = "reml-bench"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Train REML and its baselines (or load them with --from) and evaluate all of them on the same held-out tasks.",
    )
    add_experiment_flags(parser, several_encoders=True)
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--methods", type=name_list, default=["reml", "maml", "scratch"], metavar="A,B", help="methods to compare: 'reml' and baseline names (default: reml,maml,scratch)")
    protocol.add_argument("--shots", type=int_list, metavar="K,K", help="support-set sizes (default: 5,10)")
    protocol.add_argument("--steps", type=int_list, metavar="S,S", help="SGD fine-tuning steps reported (default: 0,1,10)")
    protocol.add_argument("--test-tasks", type=positive_int, metavar="N", help="held-out test tasks (default: the preset's; 600 in full)")
    protocol.add_argument("--seeds", type=positive_int, default=1, metavar="N", help="train every method with N seeds (seed, seed+1, ...) and report the spread (default 1)")
    output = parser.add_argument_group("output")
    output.add_argument("--from", dest="from_dir", type=Path, metavar="DIR", help="load trained methods from an earlier reml-run / reml-bench directory instead of training")
    output.add_argument("--out", type=Path, metavar="DIR", help="output directory (default: runs/<plugin>-bench-<encoder>-s<seed>-<time>)")
    output.add_argument("--force", action="store_true", help="overwrite results already in --out")
    output.add_argument("--trust-checkpoint", action="store_true", help="allow loading stable-baselines3 policy.zip files from --from (their loader can run code)")
    return parser


def _body(argv: Sequence[str] | None) -> int:
    from reml_core.bench import plan_bench, run_bench
    from reml_core.pipeline import command_line

    args = build_parser().parse_args(argv)
    registry = discover_plugins()
    encoders = name_list(args.encoder) if args.encoder else None
    args.encoder = None  # several encoders are planned one by one below
    extra: dict = {"eval": {}}
    if args.shots is not None:
        extra["eval"]["shots"] = args.shots
    if args.steps is not None:
        extra["eval"]["steps"] = args.steps
    if args.test_tasks is not None:
        extra["eval"]["test_tasks"] = args.test_tasks
    plan = plan_bench(registry, user_config(args, extra), methods=args.methods, encoders=encoders, seeds=args.seeds, from_dir=args.from_dir)
    base = plan.base(plan.seeds[0])
    out = open_run_directory(args.out or default_out(base, "bench"), force=args.force)
    atomic_write_json(out / "config.json", base.to_dict())
    try:
        results = run_bench(plan, registry, out, trust_checkpoint=args.trust_checkpoint, command=command_line())
    except StopRequested as stop:
        print(f"{PROG}: interrupted; the REML run being trained was checkpointed at {stop.checkpoint}", flush=True)
        return EXIT_INTERRUPTED
    print_summary(results, out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
