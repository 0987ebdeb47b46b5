"""Wall time of many runs at once: reml-bench and a sweep, one process vs a local Ray, side by side.

    .venv/bin/python benchmarks/scaling.py                 # seeds 1, 2, 4 and sweeps of 2, 4 trials
    .venv/bin/python benchmarks/scaling.py --seeds 4 --trials 4

For each row the same work runs twice, back to back in this one invocation:

- ``reml-bench --plugin sine --preset smoke --seeds N`` with ``--executor local`` and ``--executor ray``
  (the numbers are checked equal);
- a smoke sweep over ``env.inner_adam_lr`` (T trials = values x seeds) run as T ``reml-run`` commands one
  after another (what one process does without Ray) and as one ``reml-sweep`` on Ray Tune.

Ray's times include starting a local instance (a few seconds), as a user's command does. Prints
a Markdown table and the ratio of each pair. Machine: see the first line it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
SMOKE = ["--plugin", "sine", "--preset", "smoke", "--set", "train.progress=false"]
LEARNING_RATES = ["0.001", "0.003", "0.01", "0.0003"]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds


def bench_pair(seeds: int, work: Path) -> tuple[float, float]:
    local, ray = work / f"bench-local-{seeds}", work / f"bench-ray-{seeds}"
    t_local = timed([str(BIN / "reml-bench"), *SMOKE, "--seeds", str(seeds), "--out", str(local)])
    t_ray = timed([str(BIN / "reml-bench"), *SMOKE, "--seeds", str(seeds), "--executor", "ray", "--out", str(ray)])
    a, b = (json.loads((folder / "results.json").read_text())["methods"] for folder in (local, ray))
    if a != b:
        sys.exit(f"seeds {seeds}: the Ray executor's numbers differ from the local executor's")
    return t_local, t_ray


def sweep_pair(trials: int, work: Path) -> tuple[float, float]:
    values, seeds = LEARNING_RATES[: min(trials, 2)], max(1, trials // 2)
    start = time.perf_counter()
    for lr in values:
        for seed in range(seeds):
            timed(
                [
                    str(BIN / "reml-run"),
                    *SMOKE,
                    "--seed",
                    str(seed),
                    "--set",
                    f"env.inner_adam_lr={lr}",
                    "--out",
                    str(work / f"runs-{trials}" / f"lr{lr}-s{seed}"),
                ]
            )
    t_local = time.perf_counter() - start
    t_ray = timed(
        [
            str(BIN / "reml-sweep"),
            *SMOKE,
            "--grid",
            f"env.inner_adam_lr={','.join(values)}",
            "--seeds",
            str(seeds),
            "--out",
            str(work / f"sweep-{trials}"),
        ]
    )
    return t_local, t_ray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 4], help="seed counts of reml-bench rows")
    parser.add_argument("--trials", type=int, nargs="*", default=[2, 4], help="trial counts of sweep rows (even)")
    args = parser.parse_args()
    import torch

    print(f"{platform.node()}: {os.cpu_count()} CPUs, python {platform.python_version()}, torch {torch.__version__}")
    work = Path(tempfile.mkdtemp(prefix="reml-scaling-"))
    rows = []
    try:
        for seeds in args.seeds:
            local, ray = bench_pair(seeds, work)
            rows.append((f"`reml-bench --preset smoke --seeds {seeds}` ({3 * seeds} jobs)", local, ray))
            print(f"  bench seeds {seeds}: local {local:.1f} s, ray {ray:.1f} s", flush=True)
        for trials in args.trials:
            local, ray = sweep_pair(trials, work)
            rows.append((f"smoke sweep, {trials} trials", local, ray))
            print(
                f"  sweep {trials} trials: one after another {local:.1f} s, reml-sweep on Ray {ray:.1f} s", flush=True
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| work | one process (s) | local Ray (s) | one process / Ray |")
    print("|---|---:|---:|---:|")
    for label, local, ray in rows:
        print(f"| {label} | {local:.1f} | {ray:.1f} | {local / ray:.2f}x |")


if __name__ == "__main__":
    main()
