"""``reml-bench``: REML against MAML and scratch on the same held-out tasks, under Finn et al.'s protocol."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reml_core.cli.common import (
    EXIT_FOR_SIGNAL,
    ArgumentParser,
    add_experiment_flags,
    discover_plugins,
    int_list,
    name_list,
    path_arg,
    positive_int,
    print_summary,
    raise_if_interrupted,
    run_main,
    set_interrupt_hint,
    user_config,
)
from reml_core.errors import UserError

PROG = "reml-bench"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Train REML and its baselines (or load them with --from) and evaluate all of them on the same held-out tasks.",
    )
    add_experiment_flags(parser, several_encoders=True)
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--methods", type=name_list, metavar="A,B", help="methods to compare: 'reml' and baseline names (default: reml and the baselines the task family recommends, else every installed baseline that offers itself for benchmarks: maml,scratch with the built-in plugins)")
    protocol.add_argument("--shots", type=int_list, metavar="K,K", help="support-set sizes (default: 5,10)")
    protocol.add_argument("--steps", type=int_list, metavar="S,S", help="SGD fine-tuning steps reported (default: 0,1,10)")
    protocol.add_argument("--test-tasks", type=positive_int, metavar="N", help="held-out test tasks (default: the preset's; 600 in full)")
    protocol.add_argument("--seeds", type=positive_int, default=1, metavar="N", help="train every method with N seeds (seed, seed+1, ...) and report the spread (default 1)")
    output = parser.add_argument_group("output")
    output.add_argument("--from", dest="from_dir", type=path_arg, metavar="DIR", help="load trained methods from an earlier reml-run / reml-bench directory instead of training")
    output.add_argument("--out", type=path_arg, metavar="DIR", help="output directory (default: runs/<plugin>-bench-<encoder>-s<seed>-<time>)")
    output.add_argument("--force", action="store_true", help="overwrite results already in --out")
    output.add_argument("--trust-checkpoint", action="store_true", help="allow loading stable-baselines3 policy.zip files from --from (their loader can run code)")
    return parser


def _body(argv: Sequence[str] | None) -> int:
    import sys

    from reml_core.bench import plan_bench, run_bench
    from reml_core.config import default_baselines
    from reml_core.cli.run import default_out
    from reml_core.folders import check_path, claim_new_folder
    from reml_core.pipeline import command_line
    from reml_core.storage import atomic_write_json
    from reml_core.training import StopRequested

    args = build_parser().parse_args(argv)
    if args.out is not None:
        check_path(args.out, "--out")
    registry = discover_plugins()
    raise_if_interrupted()  # a Ctrl-C swallowed during the imports above
    encoders = name_list(args.encoder) if args.encoder else None
    args.encoder = None  # several encoders are planned one by one below
    extra: dict = {"eval": {}}
    if args.shots is not None:
        extra["eval"]["shots"] = args.shots
    if args.steps is not None:
        extra["eval"]["steps"] = args.steps
    if args.test_tasks is not None:
        extra["eval"]["test_tasks"] = args.test_tasks
    user = user_config(args, extra)
    methods = args.methods if args.methods is not None else ["reml", *default_baselines(registry, user.get("plugin"), "bench")]
    plan = plan_bench(registry, user, methods=methods, encoders=encoders, seeds=args.seeds,
                      from_dir=args.from_dir, trust_checkpoint=args.trust_checkpoint)
    base = plan.base(plan.seeds[0])
    target = args.out or default_out(base, "bench")
    if plan.from_dir is not None and _inside(Path(target), plan.from_dir):
        raise UserError(f"--out {target} is --from {plan.from_dir} or inside it; write the benchmark somewhere else")
    out = claim_new_folder(target, kind="bench", force=args.force, entries=tuple(f"seed-{seed}" for seed in plan.seeds))
    atomic_write_json(out / "config.json", base.to_dict())
    set_interrupt_hint(f"what finished is in {out}; the REML runs there keep their checkpoints")
    raise_if_interrupted()
    try:
        results = run_bench(plan, registry, out, trust_checkpoint=args.trust_checkpoint, command=command_line())
    except StopRequested as stop:
        set_interrupt_hint(None)
        print(f"{PROG}: interrupted; the REML run being trained was checkpointed at {stop.checkpoint}", file=sys.stderr, flush=True)
        return EXIT_FOR_SIGNAL.get(stop.signum, 130)
    set_interrupt_hint(None)
    print_summary(results, out)
    return 0


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies inside it (after resolving links)."""
    path, folder = path.expanduser().resolve(), folder.expanduser().resolve()
    return path == folder or folder in path.parents


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
