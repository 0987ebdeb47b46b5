"""``reml-adapt``: a finished run's (or benchmark's) network for your own task, fine-tuned on your support set.

Reads ``--support`` (a CSV whose columns are the family's inputs, then its targets; for
classification, the flattened image, then the class label) and ``--query`` (the inputs only, or
inputs and targets, whose targets are ignored), and writes the predictions for the query points
(``--out``, CSV: the query inputs and the predicted targets; for classification the predicted
class and its logits). ``--export`` also writes the adapted network, which loads with torch alone.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import reml_core
from reml_core.cli.common import ArgumentParser, non_negative_int, path_arg, raise_if_interrupted, run_main
from reml_core.errors import UserError
from reml_core.storage import atomic_write_text

PROG = "reml-adapt"


def _positive_float(text: str) -> float:

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Get the network a finished REML run (or benchmark) starts from for your own task, fine-tune it on "
        "your support set as the benchmark protocol does (plain SGD on the K points) and write its predictions "
        "for your query points.",
    )
    parser.add_argument("folder", type=path_arg, metavar="RUN", help="a finished reml-run or reml-bench folder")
    data = parser.add_argument_group("data")
    data.add_argument(
        "--support",
        type=path_arg,
        required=True,
        metavar="CSV",
        help="the support set: one row per point, the family's input columns then its target columns "
        "(classification: the flattened image, then the class label); an optional header line",
    )
    data.add_argument(
        "--query",
        type=path_arg,
        required=True,
        metavar="CSV",
        help="the query points: the input columns (target columns after them are ignored)",
    )
    method = parser.add_argument_group("method")
    method.add_argument(
        "--method",
        default="reml",
        metavar="NAME",
        help="reml (default) or a baseline the folder trained (maml, scratch)",
    )
    method.add_argument(
        "--seed",
        type=non_negative_int,
        metavar="S",
        help="the benchmark seed whose method to use (needed with several)",
    )
    method.add_argument("--encoder", metavar="NAME", help="the REML encoder to use in a benchmark of several")
    method.add_argument(
        "--steps",
        type=non_negative_int,
        metavar="N",
        help="SGD steps on the support set (default: the run's largest eval.steps)",
    )
    method.add_argument("--lr", type=_positive_float, metavar="LR", help="SGD rate (default: the run's eval.sgd_lr)")
    method.add_argument(
        "--trust-checkpoint", action="store_true", help="allow loading a stable-baselines3 policy.zip (it can run code)"
    )
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=path_arg, required=True, metavar="CSV", help="where to write the predictions")
    output.add_argument(
        "--export",
        type=path_arg,
        metavar="PT",
        help="also write the adapted network (torch.load(..., weights_only=True))",
    )
    output.add_argument("--force", action="store_true", help="replace --out and --export if they exist")
    return parser


def _check_output(path: Path, flag: str, force: bool) -> None:
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; name a file")
    if path.exists() and not force:
        raise UserError(f"{flag} {path} exists; use --force to replace it")
    if not path.parent.is_dir():
        raise UserError(f"{flag} {path}: folder {path.parent} does not exist")


def _split(values: Any, inputs: int, outputs: int, path: Path, what: str, *, targets_optional: bool) -> tuple[Any, Any]:
    """The input and target columns of a table read from ``path`` (the targets empty when the file has none)."""
    from reml_core.learner import DataFileError  # noqa: PLC0415 - lazy: start-up time: reml_core.learner imports torch; Ctrl-C at start-up, see cli/common.NativeImportGuard

    columns = values.shape[1]
    allowed = [inputs, inputs + outputs] if targets_optional else [inputs + outputs]
    if columns not in allowed:
        want = " or ".join(str(n) for n in allowed)
        raise DataFileError(
            f"{what} {path} has {columns} columns; this run's family needs {want} "
            f"({inputs} input{'s' if inputs != 1 else ''}"
            + (f", then {outputs} target{'s' if outputs != 1 else ''})" if outputs else ")")
        )
    return values[:, :inputs], values[:, inputs : inputs + outputs]


def _body(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)

    for flag, path in (("--out", args.out), ("--export", args.export)):
        if path is not None:
            _check_output(path, flag, args.force)
    if args.export is not None and args.export.resolve() == args.out.resolve():
        raise UserError("--export and --out name the same file")

    from reml_core.learner import read_csv  # noqa: PLC0415 - lazy: start-up time: reml_core.learner imports torch; Ctrl-C at start-up, see cli/common.NativeImportGuard

    support_header, support = read_csv(args.support, "--support")
    query_header, query = read_csv(args.query, "--query")
    raise_if_interrupted()

    import numpy as np  # noqa: PLC0415 - lazy: start-up time: numpy; Ctrl-C at start-up, see cli/common.NativeImportGuard

    from reml_core.learner import save_network  # noqa: PLC0415 - lazy: start-up time: reml_core.learner imports torch; Ctrl-C at start-up, see cli/common.NativeImportGuard

    learner = reml_core.load(args.folder).learner(
        args.method, seed=args.seed, encoder=args.encoder, trust_checkpoint=args.trust_checkpoint
    )
    inputs = math.prod(learner.input_shape)
    outputs = 1 if learner.classification else int(learner.task_sampler.output_size)
    x_support, y_support = _split(support, inputs, outputs, args.support, "--support", targets_optional=False)
    x_query, _ = _split(query, inputs, outputs, args.query, "--query", targets_optional=True)
    raise_if_interrupted()
    import torch  # noqa: PLC0415 - lazy: start-up time: torch; Ctrl-C at start-up, see cli/common.NativeImportGuard

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        network = learner.network_for(x_support, y_support)
        network = learner.adapt(network, x_support, y_support, steps=args.steps, lr=args.lr)
        learner.check_query(x_query)
        with torch.no_grad():
            prediction = network(learner._inputs("x_query", x_query)).numpy().astype(np.float64)
    for message in dict.fromkeys(str(warning.message) for warning in caught):  # each once, one line
        print(f"{PROG}: warning: {message}", file=sys.stderr)
    if learner.classification:
        names = ["class", *(f"logit_{i}" for i in range(prediction.shape[1]))]
        rows = np.concatenate([prediction.argmax(axis=1, keepdims=True), prediction], axis=1)
        lines = [",".join(names)] + [",".join([str(int(row[0])), *(_number(v) for v in row[1:])]) for row in rows]
    else:
        input_names = (
            query_header[:inputs]
            if query_header
            else (support_header[:inputs] if support_header else [f"x{i}" for i in range(inputs)])
        )
        target_names = support_header[inputs:] if support_header else [f"y{i}" for i in range(outputs)]
        names = [*input_names, *(f"predicted_{name}" for name in target_names)]
        rows = np.concatenate([x_query, prediction], axis=1)
        lines = [",".join(names)] + [",".join(_number(value) for value in row) for row in rows]
    if args.export is not None:
        save_network(network, args.export)
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(
        f"{PROG}: wrote {len(rows)} predictions to {args.out}"
        + (f" and the network to {args.export}" if args.export else ""),
        file=sys.stderr,
    )
    return 0


def _number(value: float) -> str:
    return repr(float(value))


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
