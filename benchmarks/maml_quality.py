"""MAML few-shot quality: meta-train with one backend and budget, then Finn et al.'s evaluation.

Meta-trains the ``maml`` baseline on the sine training stream, then fine-tunes its
initialisation with plain SGD (lr 0.01) on the K support points of 600 held-out test tasks
and prints the query MSE (mean +- 95% CI) after 0, 1 and 10 steps, for K = 5 and 10.
Usage: python benchmarks/maml_quality.py [--backend torch-func|learn2learn] [--preset default] [--iterations N]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import reml_plugins.maml
from reml_core.config import deep_merge
from reml_core.evaluation import FewShotEvaluator, FewShotTable
from reml_core.interfaces import TaskContext
from reml_core.registry import PluginRegistry
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["torch-func", "learn2learn"], default="torch-func")
    parser.add_argument(
        "--preset",
        choices=["smoke", "default", "full"],
        default="default",
        help="meta-iteration budget (default: default, 10 000)",
    )
    parser.add_argument("--iterations", type=int, help="override the preset's meta-iterations")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the torch-func meta-gradient (default: the preset's)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: fastest for a network this small)"
    )
    parser.add_argument("--test-tasks", type=int, default=600)
    parser.add_argument("--save", type=Path, metavar="DIR", help="save the meta-learned initialisation here")
    parser.add_argument("--load", type=Path, metavar="DIR", help="load an initialisation instead of meta-training")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    registry = PluginRegistry()
    registry.register(reml_plugins.maml, name="maml", distribution="reml")
    spec = registry.get("baseline", "maml").spec
    overrides: dict = {"backend": args.backend}
    if args.iterations is not None:
        overrides["iterations"] = args.iterations
    if args.compile is not None:
        overrides["compile"] = args.compile
    config = spec.config_model(**deep_merge(spec.presets.get(args.preset, {}), overrides))
    sampler = SineTaskSampler(SineConfig())
    baseline = spec.factory(config, TaskContext(seed=args.seed, preset=args.preset, task_sampler=sampler))
    print(f"torch {torch.__version__}, python {platform.python_version()}, {args.threads} thread(s), seed {args.seed}")
    print("maml config: " + json.dumps(config.model_dump(mode="json")))

    summary: dict[str, float] = {}
    if args.load is not None:
        baseline.load(args.load)
        print(f"loaded {args.load} ({baseline.iterations_done} meta-iterations)")
    else:
        summary = baseline.meta_train(sampler.train_stream(args.seed), progress=sys.stderr.isatty())
        print(
            f"meta-trained {summary['iterations']:.0f} iterations in {summary['seconds']:.1f} s "
            f"({summary['iterations_per_s']:.0f} it/s; drawing tasks {summary['task_seconds']:.1f} s, "
            f"{'batched' if summary['task_batches'] else 'one by one'}); "
            f"meta-loss {summary['initial_meta_loss']:.3f} -> {summary['final_meta_loss']:.3f}"
        )
    if args.save is not None:
        baseline.save(args.save)
        print(f"saved to {args.save}")

    start = time.perf_counter()
    evaluator = FewShotEvaluator(
        sampler.test_tasks(args.test_tasks), sampler.loss, shots=[5, 10], steps=[0, 1, 10], lr=0.01
    )
    table = evaluator.few_shot(baseline.network_for, f"maml-{args.backend}")
    print(f"evaluated on {args.test_tasks} held-out tasks in {time.perf_counter() - start:.1f} s")
    print(format_table(table))
    if args.json is not None:
        cells = {str(k): {str(s): vars(c) for s, c in row.items()} for k, row in table.items()}
        args.json.write_text(
            json.dumps(
                {"config": config.model_dump(mode="json"), "seed": args.seed, "training": summary, "query_mse": cells},
                indent=2,
            )
        )


def format_table(table: FewShotTable) -> str:
    steps = sorted(next(iter(table.values())))
    lines = ["| K | " + " | ".join(f"{s} steps" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for shots, row in sorted(table.items()):
        lines.append(
            f"| {shots} | " + " | ".join(f"{row[s].mse_mean:.3f} ± {row[s].mse_ci95:.3f}" for s in steps) + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
