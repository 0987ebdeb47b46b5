"""Meta-training throughput: PPO learning on the composition env, one env against the vector env.

Times ``policy.learn`` (environment steps, policy forward passes and PPO updates: everything of
meta-training but calibration, validation and checkpoints) on the ``default`` preset's sine setup,
for ppo-mlp and ppo-lstm at ``n_envs`` 1 and at the default ``train.n_envs``, and splits the time
into the environment, the PPO updates, and the rest (policy forward passes, SB3's bookkeeping).
One rollout is run untimed first. The last line is ``train_steps_per_s=<ppo-mlp at the default n_envs>``.
With ``--pool-updates thesis,protocol`` every variant is measured under each pool-update rule (the
preset's own otherwise), and the last line is the second rule's rate over the first's,
``pool_update_speedup=<ratio>`` (ppo-mlp at the default n_envs).
With ``--workers 1,2`` every policy is measured at the default n_envs (or each ``--n-envs``) once per
``train.workers`` count, each figure and each policy's ratio (last count over first) printed, and the
last line is the smallest of those ratios, ``train_speedup=<ratio>``. Without it the runs use
``train.workers`` as a run resolves it (printed). Under ``train.overlap_update`` (the default) one
of 2 or more workers runs PPO's update beside the next rollout; each line says whether it did, and
the time it splits is then the rollouts' wait for the update (``--set train.overlap_update=false``:
every worker shares episode ends).
Usage: python benchmarks/train_throughput.py [--steps N] [--policies ppo-mlp,ppo-lstm] [--n-envs 1,16]
       [--pool-updates thesis,protocol] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from reml_core.config import TrainConfig, deep_merge, parse_assignment, resolve_config
from reml_core.experiment import build_components
from reml_core.memory import keep_freed_memory
from reml_core.registry import PluginRegistry
from reml_core.settings import overlaps_update, resolve_workers


def measure(
    registry: PluginRegistry,
    user: dict,
    policy: str,
    n_envs: int,
    steps: int,
    log_dir: Path,
    workers: int | None = None,
) -> tuple[float, int, dict[str, float], bool]:
    """Env steps per second of ``learn`` for ``steps`` steps (after one untimed rollout), the rollout size,
    and the share of the time spent in the environment, in PPO updates, and in the rest (policy
    forward passes while collecting, SB3's buffers and callbacks)."""
    user = deep_merge(
        user, {"policy": {"name": policy}, "train": {"n_envs": n_envs, **({"workers": workers} if workers else {})}}
    )
    config = resolve_config(registry, user)
    torch.manual_seed(config.seed)
    components = build_components(config)
    train = config.core.train
    overlapped = overlaps_update(resolve_workers(train.workers, n_envs), train.overlap_update)
    env = components.make_train_env()
    context = components.context.with_env(
        env, log_dir=log_dir / f"{policy}-{n_envs}-{workers}", overlap_update=overlapped
    )
    backend = config.policy.spec.factory(config.policy.config, context)
    model = backend.model
    rollout = model.n_steps * model.n_envs
    spent = {"env": 0.0, "update": 0.0}
    vector = model.get_env()
    timed = {"env": (vector, "step_wait"), "update": (model, "train")}
    for key, (owner, name) in timed.items():
        original = getattr(owner, name)

        def wrapper(*args, _original=original, _key=key, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[_key] += time.perf_counter() - start

        setattr(owner, name, wrapper)
    backend.learn(rollout)
    spent.update(env=0.0, update=0.0)
    start_steps = backend.num_timesteps
    start = time.perf_counter()
    backend.learn(steps)
    elapsed = time.perf_counter() - start
    shares = {"env": spent["env"] / elapsed, "update": spent["update"] / elapsed}
    shares["policy and SB3"] = 1.0 - shares["env"] - shares["update"]
    env.close()
    if overlapped:  # the update runs in its own process: what the rollouts spend is the wait for it
        shares = {("waiting for the update" if key == "update" else key): share for key, share in shares.items()}
    return (backend.num_timesteps - start_steps) / elapsed, rollout, shares, overlapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8192, help="env steps to time per variant (default 8192)")
    parser.add_argument("--policies", default="ppo-mlp,ppo-lstm", help="comma-separated policy backends")
    parser.add_argument("--n-envs", default=None, help="comma-separated env counts (default: 1 and train.n_envs)")
    parser.add_argument(
        "--pool-updates", default=None, help="comma-separated env.pool_update rules to compare (default: the preset's)"
    )
    parser.add_argument("--workers", default=None, help="comma-separated train.workers counts to compare, e.g. 1,2")
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set env.depth=6",
    )
    args = parser.parse_args()

    heap = "freed memory kept" if keep_freed_memory() else "the C library's allocator settings"
    torch.set_num_threads(1)
    default_n = TrainConfig().n_envs
    counts = (
        [int(n) for n in args.n_envs.split(",")]
        if args.n_envs
        else ([default_n] if args.workers else sorted({1, default_n}))
    )
    worker_counts = [int(w) for w in args.workers.split(",")] if args.workers else [None]
    user: dict = {"plugin": "sine", "preset": "default", "train": {"progress": False}}
    for assignment in args.assignments:
        user = deep_merge(user, parse_assignment(assignment))
    registry = PluginRegistry.discover()
    config = resolve_config(registry, user)
    env_config = config.core.env
    print(f"torch {torch.__version__}, python {platform.python_version()}, 1 thread, {heap}")
    print(
        f"pool {config.pool.name} {build_components(config).pool.size} layers, depth {env_config.depth}, "
        f"inner Adam {env_config.inner_steps} steps, reward {config.reward.name} at {config.reward.config.loss_at}, "
        f"encoder {config.encoder.name}; {args.steps} timed env steps per variant"
    )
    print(
        f"train.workers {args.workers or resolve_workers(config.core.train.workers, default_n)} at n_envs={default_n}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    rules = args.pool_updates.split(",") if args.pool_updates else [env_config.pool_update]
    results: dict[tuple[str, str, int], float] = {}
    by_workers: dict[tuple[str, str, int, int], float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for rule in rules:
            ruled = deep_merge(user, {"env": {"pool_update": rule}})
            for policy in args.policies.split(","):
                for n_envs in counts:
                    for workers in worker_counts:
                        rate, rollout, shares, overlapped = measure(
                            registry, ruled, policy, n_envs, args.steps, Path(scratch), workers
                        )
                        if workers is None:
                            results[(rule, policy, n_envs)] = rate
                            speedup = (
                                f", {rate / results[(rule, policy, counts[0])]:.1f}x n_envs={counts[0]}"
                                if n_envs != counts[0]
                                else ""
                            )
                        else:
                            by_workers[(rule, policy, n_envs, workers)] = rate
                            results.setdefault((rule, policy, n_envs), rate)
                            speedup = f", workers={workers}, overlap_update {'on' if overlapped else 'off'}"
                        split = ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
                        print(
                            f"pool update {rule}: {policy} n_envs={n_envs} (rollout {rollout} steps): {rate:.1f} env "
                            f"steps/s{speedup}; time: {split}"
                        )
    if args.workers:
        ratios = []
        first, last = worker_counts[0], worker_counts[-1]
        for (rule, policy, n_envs, workers), rate in by_workers.items():
            if workers == last:
                ratio = rate / by_workers[(rule, policy, n_envs, first)]
                ratios.append(ratio)
                print(
                    f"pool update {rule}: {policy} n_envs={n_envs}: workers={last} {rate:.1f}, workers={first} "
                    f"{by_workers[(rule, policy, n_envs, first)]:.1f} env steps/s: {ratio:.2f}x"
                )
        print(f"train_speedup={min(ratios):.2f}")
        return
    main_key = (
        ("ppo-mlp", default_n) if ("ppo-mlp", default_n) in {key[1:] for key in results} else next(iter(results))[1:]
    )
    if len(rules) > 1:
        first, second = (results[(rule, *main_key)] for rule in rules[:2])
        print(f"train_steps_per_s={second:.1f} ({rules[1]}), {first:.1f} ({rules[0]})")
        print(f"pool_update_speedup={second / first:.2f}")
    else:
        print(f"train_steps_per_s={results[(rules[0], *main_key)]:.1f}")


if __name__ == "__main__":
    main()
