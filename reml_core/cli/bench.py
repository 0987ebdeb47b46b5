"""``reml-bench``: REML against MAML and scratch on the same held-out tasks, under Finn et al.'s protocol."""

from __future__ import annotations

from collections.abc import Sequence

from reml_core.cli.common import (
    ArgumentParser,
    add_experiment_flags,
    announce_loading,
    discover_plugins,
    execute_prepared,
    int_list,
    name_list,
    path_arg,
    positive_int,
    raise_if_interrupted,
    run_main,
    user_config,
)
from reml_core.folders import check_path
from reml_core.specs import CHOICE_FLAGS

PROG = "reml-bench"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description=(
            "Train REML and its baselines (or load them with --from) and evaluate all of them on the same held-out "
            "tasks."
        ),
    )
    add_experiment_flags(parser, several_encoders=True)
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument(
        "--methods",
        type=name_list,
        metavar="A,B",
        help=(
            "methods to compare: 'reml' and baseline names (default: reml and the baselines the task family "
            "recommends, else every installed baseline that offers itself for benchmarks: maml,scratch with the "
            "built-in plugins)"
        ),
    )
    protocol.add_argument("--shots", type=int_list, metavar="K,K", help="support-set sizes (default: 5,10)")
    protocol.add_argument(
        "--steps", type=int_list, metavar="S,S", help="SGD fine-tuning steps reported (default: 0,1,10)"
    )
    protocol.add_argument(
        "--test-tasks", type=positive_int, metavar="N", help="held-out test tasks (default: the preset's; 600 in full)"
    )
    protocol.add_argument(
        "--seeds",
        type=positive_int,
        default=1,
        metavar="N",
        help="train every method with N seeds (seed, seed+1, ...) and report the spread (default 1)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--from",
        dest="from_dir",
        type=path_arg,
        metavar="DIR",
        help="load trained methods from an earlier reml-run / reml-bench directory instead of training",
    )
    output.add_argument(
        "--out",
        type=path_arg,
        metavar="DIR",
        help="output directory (default: runs/<plugin>-bench-<encoder>-s<seed>-<time>)",
    )
    output.add_argument("--force", action="store_true", help="overwrite results already in --out")
    output.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow loading stable-baselines3 policy.zip files from --from (their loader can run code)",
    )
    output.add_argument(
        "--resume",
        type=path_arg,
        metavar="DIR",
        help=(
            "continue the benchmark in DIR: keep every finished job, continue interrupted REML runs from their "
            "checkpoints, rerun the rest (its bench-plan.json fixes every setting)"
        ),
    )
    execution = parser.add_argument_group("execution")
    execution.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help=(
            "local: every job one after another in this process (default); ray: each (method, encoder, seed) job as "
            "one Ray task, on a local Ray instance or the cluster at --ray-address (needs reml[ray])"
        ),
    )
    execution.add_argument(
        "--ray-address",
        metavar="ADDR",
        help=(
            "the Ray cluster to run on (e.g. 10.0.0.1:6379 after 'ray start --head' there); default: start a local "
            "instance with this machine's CPUs"
        ),
    )
    return parser


#: The flags that define a benchmark: --resume takes them from the folder's bench-plan.json instead.
PLAN_FLAGS = (*CHOICE_FLAGS, "preset", "config", "seed", "methods", "shots", "steps", "test_tasks", "from_dir", "out")


def _body(argv: Sequence[str] | None) -> int:
    # prepare_bench checks --executor and --ray-address
    from reml_core.api import PLAN_FILE, prepare_bench, refuse_with_resume  # noqa: PLC0415 - lazy: start-up time: reml_core.api imports numpy; Ctrl-C at start-up, see cli/common.NativeImportGuard

    args = build_parser().parse_args(argv)
    if args.resume is not None:
        given = [f"--{name.replace('_', '-')}" for name in PLAN_FLAGS if getattr(args, name, None) is not None]
        given += ["--set"] if args.assignments else []
        given += ["--seeds"] if args.seeds != 1 else []
        given += ["--force"] if args.force else []
        refuse_with_resume(args.resume, given, PLAN_FILE, flag="--resume")
        announce_loading(PROG)
        registry = discover_plugins()
        raise_if_interrupted()
        prepared = prepare_bench(
            resume=args.resume,
            executor=args.executor,
            ray_address=args.ray_address,
            trust_checkpoint=args.trust_checkpoint,
            registry=registry,
        )
        return _run(prepared)
    if args.out is not None:
        check_path(args.out, "--out")
    announce_loading(PROG)
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
    prepared = prepare_bench(
        user_config(args, extra),
        methods=args.methods,
        encoders=encoders,
        seeds=args.seeds,
        from_dir=args.from_dir,
        out=args.out,
        force=args.force,
        executor=args.executor,
        ray_address=args.ray_address,
        trust_checkpoint=args.trust_checkpoint,
        registry=registry,
    )
    return _run(prepared)


def _run(prepared) -> int:
    out = prepared.out
    return execute_prepared(
        PROG,
        prepared,
        f"what finished is in {out}; continue with: reml-bench --resume {out}",
        lambda stop: (
            f"the REML run being trained was checkpointed at {stop.checkpoint}; "
            f"continue with: reml-bench --resume {out}"
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
