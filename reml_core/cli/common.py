"""What the three command-line tools share: one-line errors, plugin warnings, config flags."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from reml_core.config import deep_merge, load_config_file, parse_assignment
from reml_core.errors import ConfigError, UserError
from reml_core.registry import PluginRegistry, PluginWarning

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (and exit 2), not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_list(text: str) -> list[int]:
    """``5,10`` -> [5, 10], for flags such as ``--shots``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def name_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one name")
    return list(dict.fromkeys(values))


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0, got 0")
    return value


def add_experiment_flags(parser: argparse.ArgumentParser, *, several_encoders: bool = False) -> None:
    """Flags that choose components and budgets; each overrides the same key of ``--config``."""
    group = parser.add_argument_group("experiment")
    group.add_argument("--plugin", metavar="NAME", help="task plugin (task family), e.g. 'sine'; see reml-plugins")
    group.add_argument("--policy", metavar="NAME", help="policy backend (default: the task plugin's choice), e.g. ppo-mlp, ppo-lstm")
    if several_encoders:
        group.add_argument("--encoder", metavar="A,B", help="REML's state encoder(s), comma-separated: REML is trained once per encoder (default: the task plugin's choice), e.g. oracle,support-set")
    else:
        group.add_argument("--encoder", metavar="NAME", help="state encoder (default: the task plugin's choice), e.g. oracle, support-set")
    group.add_argument("--pool", metavar="NAME", help="layer-pool kind (default: the task plugin's choice), e.g. dense")
    group.add_argument("--reward", metavar="NAME", help="reward function (default: the task plugin's choice), e.g. neg-mse")
    group.add_argument("--preset", choices=("smoke", "default", "full"), help="budget preset: smoke (about a minute), default, full (the thesis' scale); default: default")
    group.add_argument("--config", metavar="FILE", type=Path, help="TOML or YAML config file; flags override it")
    group.add_argument("--seed", type=non_negative_int, metavar="N", help="seed fixing every random number (default 0)")
    group.add_argument(
        "--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value, e.g. --set env.inner_lr=0.001 or --set policy.n_steps=512 (repeatable)",
    )


def user_config(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config file (if any) with flags on top, as one nested dict."""
    data: dict[str, Any] = load_config_file(args.config) if args.config is not None else {}
    flags: dict[str, Any] = {}
    for key in ("plugin", "preset", "seed"):
        if getattr(args, key) is not None:
            flags[key] = getattr(args, key)
    for section in ("policy", "encoder", "pool", "reward"):
        if getattr(args, section) is not None:
            flags[section] = {"name": getattr(args, section)}
    for section in ("policy", "encoder", "pool", "reward"):
        if isinstance(data.get(section), str):  # shorthand in the file: policy = "ppo-lstm"
            data[section] = {"name": data[section]}
    merged = deep_merge(data, deep_merge(flags, extra or {}))
    for assignment in args.assignments:
        merged = deep_merge(merged, parse_assignment(assignment))
    return merged


def print_summary(results: dict[str, Any], out: Path) -> None:
    """The few-shot tables and where the files are, once a run or benchmark has finished."""
    from reml_core.results import few_shot_tables

    print(few_shot_tables(results["methods"]))
    print(f"results: {out / 'results.json'}\nreport:  {out / 'report.md'}")


def discover_plugins() -> PluginRegistry:
    return PluginRegistry.discover()


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    stream = file or sys.stderr
    if issubclass(category, PluginWarning):
        stream.write(f"reml: warning: {message}\n")
    else:
        stream.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_main(prog: str, body: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    """Run a CLI body: a user's mistake is printed without a traceback and exits 2; Ctrl-C exits 130."""
    warnings.showwarning = _show_warning
    try:
        return body(argv)
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return EXIT_USER_ERROR
    except UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
