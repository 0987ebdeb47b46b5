"""``reml-run``: meta-train REML on one task family, evaluate it on held-out tasks, write a report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from reml_core.cli.common import (
    ArgumentParser,
    add_experiment_flags,
    announce_loading,
    discover_plugins,
    execute_prepared,
    name_list,
    path_arg,
    raise_if_interrupted,
    run_main,
    user_config,
)
from reml_core.errors import UserError
from reml_core.folders import check_path
from reml_core.specs import CHOICE_FLAGS

if TYPE_CHECKING:
    from reml_core.config import RunConfig

PROG = "reml-run"
#: The flags that define a run: --resume takes them from the folder's config.json instead.
EXPERIMENT_FLAGS = (*CHOICE_FLAGS, "preset", "config", "seed", "out", "baselines")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Meta-train REML's policy and layer pool on a task family, then evaluate it and a "
        "baselines (by default the task family's quick ones, e.g. from-scratch training) on held-out tasks. Writes "
        "results.json, report.md, few_shot.png, "
        "convergence.png, logs/ and checkpoints/ into the run directory.",
    )
    add_experiment_flags(parser)
    parser.add_argument(
        "--baselines",
        type=_baseline_list,
        metavar="A,B",
        help="baselines evaluated beside REML, or 'none' (default: those the task family recommends "
        "for a run, else every installed baseline quick enough for one, e.g. scratch; see reml-plugins)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out",
        type=path_arg,
        metavar="DIR",
        help="run directory (default: runs/<plugin>-<policy>-<encoder>-s<seed>-<time>)",
    )
    output.add_argument("--force", action="store_true", help="replace the run already in --out")
    output.add_argument(
        "--resume",
        type=path_arg,
        metavar="DIR",
        help="continue the interrupted run in DIR from its last checkpoint (its config.json fixes every setting)",
    )
    execution = parser.add_argument_group("execution")
    execution.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where train.workers run: local (default): processes forked on this machine; ray: Ray actors, on a "
        "local Ray instance or the cluster at --ray-address, so one run can use several machines' cores (needs "
        "reml[ray])",
    )
    execution.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="with --executor ray: the cluster to join (e.g. 10.0.0.1:6379); default: a local instance",
    )
    output.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help=(
            "allow loading a stable-baselines3 policy.zip, whose loader can run code it carries; REML's own "
            "checkpoints never need this"
        ),
    )
    return parser


def _baseline_list(text: str) -> list[str]:
    return [] if text.strip().lower() == "none" else name_list(text)


def default_out(config: RunConfig, kind: str | None = None) -> Path:
    """A fresh directory under runs/ (see :func:`reml_core.api.default_out`)."""
    from reml_core.api import default_out as fresh  # noqa: PLC0415 - lazy: start-up time: reml_core.api imports numpy; Ctrl-C at start-up, see cli/common.NativeImportGuard

    return fresh(config, kind)


def _body(argv: Sequence[str] | None) -> int:
    from reml_core.api import prepare_run, refuse_with_resume  # noqa: PLC0415 - lazy: start-up time: reml_core.api imports numpy; Ctrl-C at start-up, see cli/common.NativeImportGuard

    args = build_parser().parse_args(argv)
    announce_loading(PROG)
    registry = discover_plugins()
    raise_if_interrupted()  # a Ctrl-C swallowed during the imports above
    if args.resume is not None:
        given = [f"--{name}" for name in EXPERIMENT_FLAGS if getattr(args, name) is not None] + (
            ["--set"] if args.assignments else []
        )
        refuse_with_resume(args.resume, given + (["--force"] if args.force else []), "config.json", flag="--resume")
        prepared = prepare_run(resume=args.resume, trust_checkpoint=args.trust_checkpoint, registry=registry)
    else:
        if args.out is not None:
            check_path(args.out, "--out")
        prepared = prepare_run(
            user_config(args),
            out=args.out,
            force=args.force,
            baselines=args.baselines,
            trust_checkpoint=args.trust_checkpoint,
            registry=registry,
        )
    out = prepared.out
    if args.ray_address and args.executor != "ray":
        raise UserError("--ray-address needs --executor ray")
    if args.executor == "ray":  # train.workers as Ray actors (docs/scaling.md)
        from reml_core.experiment import build_components  # noqa: PLC0415 - lazy: start-up time: reml_core.experiment imports torch; Ctrl-C at start-up, see cli/common.NativeImportGuard
        from reml_core.workers import ray_workers  # noqa: PLC0415 - lazy: start-up time: reml_core.workers imports torch; Ctrl-C at start-up, see cli/common.NativeImportGuard

        with ray_workers(prepared.config, args.ray_address, build=build_components):
            return execute_prepared(
                PROG,
                prepared,
                f"the run can be continued with: reml-run --resume {out}",
                lambda stop: f"checkpoint {stop.checkpoint.name} saved. Continue with: reml-run --resume {out}",
            )
    return execute_prepared(
        PROG,
        prepared,
        f"the run can be continued with: reml-run --resume {out}",
        lambda stop: f"checkpoint {stop.checkpoint.name} saved. Continue with: reml-run --resume {out}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
