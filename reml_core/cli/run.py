"""``reml-run``: meta-train REML on one task family, evaluate it on held-out tasks, write a report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from reml_core.cli.common import ArgumentParser, add_experiment_flags, discover_plugins, run_main, user_config
from reml_core.config import resolve_config

PROG = "reml-run"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Meta-train REML's policy and layer pool on a task family, then evaluate on held-out tasks.",
    )
    add_experiment_flags(parser)
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, metavar="DIR", help="run directory (default: runs/<plugin>/<time>-<policy>-<encoder>-s<seed>)")
    output.add_argument("--force", action="store_true", help="overwrite a run already in --out")
    output.add_argument("--resume", type=Path, metavar="DIR", help="continue the interrupted run in DIR from its last checkpoint")
    return parser


def _body(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    registry = discover_plugins()
    config = resolve_config(registry, user_config(args), baselines=["scratch"])
    print(json.dumps(config.to_dict(), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
