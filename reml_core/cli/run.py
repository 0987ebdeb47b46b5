"""``reml-run``: meta-train REML on one task family, evaluate it on held-out tasks, write a report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from reml_core.cli.common import (
    EXIT_INTERRUPTED,
    ArgumentParser,
    add_experiment_flags,
    discover_plugins,
    print_summary,
    run_main,
    user_config,
)
from reml_core.config import RunConfig, load_resolved, resolve_config
from reml_core.errors import UserError
from reml_core.experiment import build_components
from reml_core.storage import atomic_write_json, open_run_directory
from reml_core.training import StopRequested

PROG = "reml-run"
EXPERIMENT_FLAGS = ("plugin", "policy", "encoder", "pool", "reward", "preset", "config", "seed", "out")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Meta-train REML's policy and layer pool on a task family, then evaluate it and a "
        "from-scratch baseline on held-out tasks. Writes results.json, report.md, few_shot.png, "
        "convergence.png, logs/ and checkpoints/ into the run directory.",
    )
    add_experiment_flags(parser)
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, metavar="DIR", help="run directory (default: runs/<plugin>-<policy>-<encoder>-s<seed>-<time>)")
    output.add_argument("--force", action="store_true", help="replace the run already in --out")
    output.add_argument("--resume", type=Path, metavar="DIR", help="continue the interrupted run in DIR from its last checkpoint (its config.json fixes every setting)")
    output.add_argument("--trust-checkpoint", action="store_true", help="allow loading a stable-baselines3 policy.zip, whose loader can run code it carries; REML's own checkpoints never need this")
    return parser


def default_out(config: RunConfig, kind: str | None = None) -> Path:
    """A fresh directory under runs/, named after what runs there, never one that exists."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{config.task.name}-{kind or config.policy.name}-{config.encoder.name}-s{config.seed}-{stamp}"
    candidate, suffix = base, 2
    while candidate.exists():
        candidate, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
    return candidate


def _body(argv: Sequence[str] | None) -> int:
    from reml_core.pipeline import command_line, run_experiment

    args = build_parser().parse_args(argv)
    registry = discover_plugins()
    if args.resume is not None:
        given = [f"--{name}" for name in EXPERIMENT_FLAGS if getattr(args, name) is not None] + (["--set"] if args.assignments else [])
        if given or args.force:
            raise UserError(f"--resume takes every setting from {args.resume}/config.json; drop {', '.join(given or ['--force'])}")
        out = args.resume
        if not (out / "config.json").is_file():
            raise UserError(f"--resume {out}: not a REML run directory (no config.json)")
        config = load_resolved(out / "config.json", registry)
        build_components(config)
    else:
        config = resolve_config(registry, user_config(args), baselines=["scratch"])
        build_components(config)  # cross-component checks, before anything is written
        out = open_run_directory(args.out or default_out(config), force=args.force)
        atomic_write_json(out / "config.json", config.to_dict())
    try:
        results = run_experiment(config, out, resume=args.resume is not None, trust_checkpoint=args.trust_checkpoint, command=command_line())
    except StopRequested as stop:
        print(f"{PROG}: interrupted; checkpoint {stop.checkpoint.name} saved. Continue with: reml-run --resume {out}", flush=True)
        return EXIT_INTERRUPTED
    print_summary(results, out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
