"""Environment throughput: random-policy episodes on the thesis-scale sine setup, one env and N side by side.

Runs a fixed number of environment steps, choosing uniformly among the valid actions (so every
episode composes and trains a network), first in the single ``CompositionEnv``, then in the
vector env of ``--n-envs`` environments whose finished networks train as one stacked computation
(``--per-network`` also times the vector env without stacking). Prints steps per second for
each; the last line is ``env_steps_per_s=<batched vector env>`` (with ``train.workers`` as a run resolves it).
With ``--workers 1,2`` the batched vector env is timed once per worker count instead (the single env
is skipped), each figure printed, and the last line is the last count's rate over the first's,
``env_speedup=<ratio>``.
Usage: python benchmarks/env_throughput.py [--steps N] [--n-envs N] [--workers 1,2] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from reml_core.config import deep_merge, parse_assignment, resolve_config
from reml_core.experiment import build_components
from reml_core.memory import keep_freed_memory
from reml_core.registry import PluginRegistry
from reml_core.settings import resolve_workers


def time_single(components, steps: int, warmup: int) -> tuple[float, int]:
    """Seconds and episodes for ``steps`` steps of one environment."""
    env = components.make_env()
    rng = np.random.default_rng(0)
    env.reset(seed=0)

    def run(count: int) -> int:
        episodes = 0
        for _ in range(count):
            _, _, terminated, truncated, _ = env.step(rng.choice(np.flatnonzero(env.action_masks())))
            if terminated or truncated:
                env.reset()
                episodes += 1
        return episodes

    run(warmup)
    start = time.perf_counter()
    episodes = run(steps)
    return time.perf_counter() - start, episodes


def time_vector(
    components, n_envs: int, steps: int, warmup: int, *, batched: bool, workers: int | None = None
) -> tuple[float, int, int]:
    """Seconds, episodes and env steps for about ``steps`` steps of ``n_envs`` environments.

    With valid actions only, every episode lasts ``depth`` steps and all envs finish together, so
    whole rounds of ``depth`` vector steps are timed (each round ends ``n_envs`` episodes at once).
    """
    env = components.make_vec_env(n_envs, batched=batched, workers=workers)
    depth = components.config.core.env.depth
    rng = np.random.default_rng(0)
    env.seed(0)
    env.reset()

    def run(count: int) -> tuple[int, int]:
        episodes = vector_steps = 0
        for _ in range(max(round(count / (n_envs * depth)), 1) * depth):
            masks = env.env_method("action_masks")
            _, _, dones, _ = env.step(np.array([rng.choice(np.flatnonzero(mask)) for mask in masks]))
            episodes += int(dones.sum())
            vector_steps += 1
        return episodes, vector_steps * n_envs

    try:
        run(warmup)
        start = time.perf_counter()
        episodes, steps_done = run(steps)
        return time.perf_counter() - start, episodes, steps_done
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000, help="environment steps to time per variant (default 5000)")
    parser.add_argument("--warmup", type=int, default=250, help="untimed steps first (default 250)")
    parser.add_argument(
        "--n-envs", type=int, default=None, help="environments of the vector env (default: train.n_envs)"
    )
    parser.add_argument(
        "--per-network", action="store_true", help="also time the vector env ending networks one by one"
    )
    parser.add_argument("--workers", default=None, help="comma-separated train.workers counts to compare, e.g. 1,2")
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set reward.loss_at=finetuned",
    )
    args = parser.parse_args()

    heap = "freed memory kept" if keep_freed_memory() else "the C library's allocator settings"
    torch.set_num_threads(1)
    user = {"plugin": "sine", "preset": "default", "policy": {"name": "ppo-mlp"}}
    for assignment in args.assignments:
        user = deep_merge(user, parse_assignment(assignment))
    config = resolve_config(PluginRegistry.discover(), user)
    n_envs = args.n_envs or config.core.train.n_envs
    env_config = config.core.env
    print(f"torch {torch.__version__}, python {platform.python_version()}, 1 thread, {heap}")
    print(
        f"pool {config.pool.name} {build_components(config).pool.size} layers, depth {env_config.depth}, "
        f"inner Adam {env_config.inner_steps} steps, reward {config.reward.name} at {config.reward.config.loss_at}, "
        f"encoder {config.encoder.name}; random valid actions"
    )

    print(f"env.pool_update {env_config.pool_update}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    default_workers = resolve_workers(config.core.train.workers, n_envs)
    if args.workers:
        counts = [int(w) for w in args.workers.split(",")]
        variants = [(f"vector env, {n_envs} envs, batched, workers={w}", n_envs, True, w) for w in counts]
    else:
        variants = [("single env", None, True, 1)]
        if args.per_network:
            variants.append(
                (f"vector env, {n_envs} envs, per-network, workers={default_workers}", n_envs, False, default_workers)
            )
        variants.append(
            (f"vector env, {n_envs} envs, batched, workers={default_workers}", n_envs, True, default_workers)
        )
    rates = []
    for label, count, batched, workers in variants:
        components = build_components(config)  # a fresh pool for every variant
        if count is None:
            elapsed, episodes = time_single(components, args.steps, args.warmup)
            steps = args.steps
        else:
            elapsed, episodes, steps = time_vector(
                components, count, args.steps, args.warmup, batched=batched, workers=workers
            )
        rates.append(steps / elapsed)
        print(
            f"{label}: {steps} steps, {episodes} episodes in {elapsed:.2f} s: {rates[-1]:.1f} env steps/s, "
            f"{episodes / elapsed:.1f} episodes/s"
        )
    if args.workers:
        print(f"env_steps_per_s={rates[-1]:.1f} (workers={counts[-1]}), {rates[0]:.1f} (workers={counts[0]})")
        print(f"env_speedup={rates[-1] / rates[0]:.2f}")
    else:
        print(f"env_steps_per_s={rates[-1]:.1f}")


if __name__ == "__main__":
    main()
