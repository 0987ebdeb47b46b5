"""Environment throughput: random-policy episodes on the thesis-scale sine setup.

Runs a fixed number of environment steps, choosing uniformly among the valid actions (so every
episode composes and trains a network), and prints steps per second. The last line is
``env_steps_per_s=<number>``. Usage: python benchmarks/env_throughput.py [--steps N] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from reml_core.config import deep_merge, parse_assignment, resolve_config
from reml_core.experiment import build_components
from reml_core.registry import PluginRegistry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000, help="environment steps to time (default 5000)")
    parser.add_argument("--warmup", type=int, default=250, help="untimed steps first (default 250)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set reward.loss_at=finetuned")
    args = parser.parse_args()

    torch.set_num_threads(1)
    user = {"plugin": "sine", "preset": "default", "policy": {"name": "ppo-mlp"}}
    for assignment in args.assignments:
        user = deep_merge(user, parse_assignment(assignment))
    config = resolve_config(PluginRegistry.discover(), user)
    components = build_components(config)
    env = components.make_env()
    rng = np.random.default_rng(0)
    env.reset(seed=0)

    def run(steps: int) -> int:
        episodes = 0
        for _ in range(steps):
            action = rng.choice(np.flatnonzero(env.action_masks()))
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
                episodes += 1
        return episodes

    run(args.warmup)
    start = time.perf_counter()
    episodes = run(args.steps)
    elapsed = time.perf_counter() - start
    env_config = config.core.env
    print(f"torch {torch.__version__}, python {platform.python_version()}, 1 thread")
    print(f"pool {config.pool.name} {components.pool.size} layers, depth {env_config.depth}, "
          f"inner Adam {env_config.inner_steps} steps, reward {config.reward.name} at {config.reward.config.loss_at}, "
          f"encoder {config.encoder.name}")
    print(f"{args.steps} steps, {episodes} episodes in {elapsed:.2f} s: {episodes / elapsed:.1f} episodes/s")
    print(f"env_steps_per_s={args.steps / elapsed:.1f}")


if __name__ == "__main__":
    main()
