"""MAML meta-iterations per second: the learn2learn and torch-func backends side by side.

Standard configuration (Finn et al.): 1-40-40-1 ReLU, 25 tasks per meta-batch, K = 10, one
second-order inner step, Adam. Every backend starts from the same initial parameters and trains
on the same pre-drawn meta-batches, in interleaved rounds so that a noisy machine slows them
alike. A meta-iteration is the meta-gradient plus the Adam step; drawing the tasks from the
stream is timed separately (it is the same for every backend). Prints iterations/s per backend,
whether their meta-losses agree, and as its last line ``ratio=<torch-func it/s / learn2learn it/s>``
(torch-func compiled when a C++ compiler is available and --no-compile is not given).
Usage: python benchmarks/maml_speed.py [--iterations N] [--rounds R] [--threads T] [--no-compile]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from reml_core.interfaces import BuildContext
from reml_plugins.maml.baseline import MAMLBaseline
from reml_plugins.maml.batches import draw_batch
from reml_plugins.maml.config import MAMLConfig
from reml_plugins.maml.torch_func import cxx_compiler_available
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler

WARMUP = 10  # untimed meta-iterations per backend (torch.compile compiles here)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500, help="timed meta-iterations per backend (default 500)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time torch-func under torch.compile and use it for the ratio (default: yes, if a C++ compiler is found)")
    args = parser.parse_args()
    if args.iterations < args.rounds or args.rounds < 1:
        parser.error("--iterations must be at least --rounds, and --rounds at least 1")

    torch.set_num_threads(args.threads)
    sampler = SineTaskSampler(SineConfig())
    context = BuildContext(seed=args.seed, task_sampler=sampler)
    standard = MAMLConfig()
    stream = sampler.train_stream(args.seed)
    started = time.perf_counter()
    batches = [draw_batch(stream, standard.meta_batch, standard.shots) for _ in range(args.iterations + WARMUP)]
    draw_ms = (time.perf_counter() - started) / len(batches) * 1e3
    warmup, batches = batches[:WARMUP], batches[WARMUP:]

    variants = {"learn2learn": {"backend": "learn2learn"}, "torch-func (eager)": {"backend": "torch-func"}}
    compiled = args.compile and cxx_compiler_available()
    if compiled:
        variants["torch-func (compiled)"] = {"backend": "torch-func", "compile": True}

    print(f"torch {torch.__version__}, python {platform.python_version()}, {torch.get_num_threads()} thread(s), "
          f"deterministic={torch.are_deterministic_algorithms_enabled()}")
    print(f"network 1-{'-'.join(map(str, standard.hidden))}-1 {standard.activation}, meta-batch {standard.meta_batch} tasks, "
          f"K = {standard.shots}, {standard.inner_steps} inner step(s) (lr {standard.inner_lr}), "
          f"{'first' if standard.first_order else 'second'}-order, Adam lr {standard.meta_lr}; seed {args.seed}")
    print(f"{args.iterations} timed meta-iterations per backend in {args.rounds} interleaved rounds, after {WARMUP} untimed")
    print(f"drawing a meta-batch of {standard.meta_batch} tasks from the sine stream: {draw_ms:.2f} ms (not in the timings below)")

    baselines, warmup_s = {}, {}
    for label, options in variants.items():
        throwaway = MAMLBaseline(MAMLConfig(**options), context)
        start = time.perf_counter()
        for batch in warmup:
            throwaway.meta_step(batch)
        warmup_s[label] = time.perf_counter() - start
        baselines[label] = MAMLBaseline(MAMLConfig(**options), context)  # same seed: same initial parameters

    reference = list(next(iter(baselines.values())).network.parameters())
    same_init = all(all(torch.equal(a, b) for a, b in zip(reference, b.network.parameters())) for b in list(baselines.values())[1:])
    first_batch = batches[0]
    start_gradients = {}
    for label, baseline in baselines.items():
        loss = float(baseline.backend.meta_gradient(first_batch))
        start_gradients[label] = (loss, [p.grad.clone() for p in baseline.network.parameters()])

    seconds = {label: 0.0 for label in baselines}
    losses: dict[str, list[float]] = {label: [] for label in baselines}
    round_ratios: list[list[float]] = []
    bounds = [round(i * len(batches) / args.rounds) for i in range(args.rounds + 1)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        this_round = {}
        for label, baseline in baselines.items():
            start = time.perf_counter()
            for batch in batches[lo:hi]:
                losses[label].append(baseline.meta_step(batch))
            this_round[label] = time.perf_counter() - start
            seconds[label] += this_round[label]
        round_ratios.append([this_round["learn2learn"] / this_round[label] for label in list(baselines)[1:]])

    reference_label = "learn2learn"
    reference_loss, reference_grads = start_gradients[reference_label]
    its = {label: args.iterations / seconds[label] for label in baselines}
    print(f"same initial parameters: {same_init}")
    print()
    print(f"{'backend':24s} {'it/s':>8s} {'x l2l':>7s} {'rounds (x l2l)':>24s} {'with task drawing':>18s} {'warm-up':>9s}")
    for i, label in enumerate(baselines):
        spread = "" if i == 0 else " ".join(f"{r[i - 1]:.1f}" for r in round_ratios)
        end_to_end = 1.0 / (1.0 / its[label] + draw_ms / 1e3)
        print(f"{label:24s} {its[label]:8.1f} {its[label] / its[reference_label]:7.1f} {spread:>24s} "
              f"{end_to_end:14.1f} it/s {warmup_s[label]:8.1f}s")
    print()
    agree = same_init
    for label in list(baselines)[1:]:
        loss, grads = start_gradients[label]
        loss_error = abs(loss - reference_loss) / abs(reference_loss)
        grad_error = max(float((a - b).norm() / b.norm()) for a, b in zip(grads, reference_grads))
        drift = max(abs(a - b) / abs(b) for a, b in zip(losses[label], losses[reference_label]))
        ok = loss_error <= 1e-4 and grad_error <= 1e-4 and drift <= 1e-3
        agree = agree and ok
        print(f"{label} vs learn2learn: first meta-loss rel. error {loss_error:.1e}, meta-gradient rel. error {grad_error:.1e}, "
              f"largest meta-loss difference over {args.iterations} iterations {drift:.1e}: {'agree' if ok else 'DISAGREE'}")
    print("final meta-loss: " + ", ".join(f"{label} {losses[label][-1]:.5f}" for label in baselines))
    print(f"losses agree: {agree}")
    fastest = "torch-func (compiled)" if compiled else "torch-func (eager)"
    print(f"ratio below: {fastest} / learn2learn")
    print(f"ratio={its[fastest] / its[reference_label]:.2f}")


if __name__ == "__main__":
    main()
