"""MAML meta-iterations per second: backends and task-drawing paths side by side, before and after.

Standard configuration (Finn et al.): 1-40-40-1 ReLU, 25 tasks per meta-batch, K = 10, one
second-order inner step, Adam. A meta-iteration is what ``meta_train`` does once: draw a
meta-batch, compute the meta-gradient, take the Adam step. Each backend runs on both task paths:
``per-task`` (25 tasks one by one from ``train_stream``, as before) and ``batched`` (one
``train_batches`` draw, what MAML uses now with the sine sampler); torch-func eager also runs as
it was before (the outer derivative through ``torch.func.grad_and_value``; now plain autograd,
the same numbers). Every variant starts from the same initial parameters and variants on the same
path see the same meta-batches, in interleaved rounds so that a noisy machine slows them alike.
Prints iterations/s with and without the drawing, the ratios, whether the backends agree (the
first meta-loss and meta-gradient within 1e-4; the mean meta-loss of the last 100 iterations
within 1%: trajectories that start equal can part after a few hundred Adam steps, when a
rounding-level difference puts a ReLU pre-activation on the other side of zero), and
as its last line ``ratio=<torch-func it/s / learn2learn it/s>``: whole meta-iterations on the
batched path, torch-func compiled when a C++ compiler is available and --no-compile is not given.
Usage: python benchmarks/maml_speed.py [--iterations N] [--rounds R] [--threads T] [--no-compile]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.func import grad_and_value

from reml_core.interfaces import TaskContext
from reml_plugins.maml.baseline import MAMLBaseline
from reml_plugins.maml.batches import MetaBatch, draw_batch, from_task_batch
from reml_plugins.maml.config import MAMLConfig
from reml_plugins.maml.torch_func import cxx_compiler_available
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler

WARMUP = 10  # untimed meta-iterations per variant, on a throwaway copy (torch.compile compiles here)
REFERENCE = "learn2learn"
PATHS = ("per-task", "batched")


@dataclass
class Variant:
    """One backend on one task path, timed."""

    backend: str
    path: str
    options: dict
    before: bool = False  # torch-func eager as it was: the outer derivative through grad_and_value
    baseline: MAMLBaseline | None = None
    batches: Iterator[MetaBatch] | None = None
    draw_s: float = 0.0
    step_s: float = 0.0
    warmup_s: float = 0.0
    losses: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.backend}{' (before)' if self.before else ''}, {self.path}"


def build(variant: Variant, context: TaskContext, seed: int) -> tuple[MAMLBaseline, Iterator[MetaBatch]]:
    config = MAMLConfig(**variant.options, task_batches=variant.path == "batched")
    baseline = MAMLBaseline(config, context)
    if variant.before:
        baseline.backend._gradient = grad_and_value(baseline.backend.meta_loss)  # the eager path before this change
    return baseline, baseline.meta_batches(context.task_sampler.train_stream(seed))


def run(variant: Variant, count: int) -> None:
    baseline, batches = variant.baseline, variant.batches
    for _ in range(count):
        start = time.perf_counter()
        batch = next(batches)
        drawn = time.perf_counter()
        variant.losses.append(baseline.meta_step(batch))
        variant.step_s += time.perf_counter() - drawn
        variant.draw_s += drawn - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500, help="timed meta-iterations per variant (default 500)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=(
            "also time torch-func under torch.compile and use it for the ratio (default: yes, if a C++ compiler is "
            "found)"
        ),
    )
    args = parser.parse_args()
    if args.iterations < args.rounds or args.rounds < 1:
        parser.error("--iterations must be at least --rounds, and --rounds at least 1")

    torch.set_num_threads(args.threads)
    sampler = SineTaskSampler(SineConfig())
    context = TaskContext(seed=args.seed, task_sampler=sampler)
    standard = MAMLConfig()
    compiled = args.compile and cxx_compiler_available()
    variants = [Variant("learn2learn", path, {"backend": "learn2learn"}) for path in PATHS]
    variants += [Variant("torch-func eager", "per-task", {"backend": "torch-func"}, before=True)]
    variants += [Variant("torch-func eager", path, {"backend": "torch-func"}) for path in PATHS]
    if compiled:
        variants += [Variant("torch-func compiled", path, {"backend": "torch-func", "compile": True}) for path in PATHS]

    print(
        f"torch {torch.__version__}, python {platform.python_version()}, {torch.get_num_threads()} thread(s), "
        f"deterministic={torch.are_deterministic_algorithms_enabled()}"
    )
    print(
        f"network 1-{'-'.join(map(str, standard.hidden))}-1 {standard.activation}, meta-batch {standard.meta_batch} "
        "tasks, "
        f"K = {standard.shots}, {standard.inner_steps} inner step(s) (lr {standard.inner_sgd_lr}), "
        f"{'first' if standard.first_order else 'second'}-order, Adam lr {standard.meta_adam_lr}; seed {args.seed}"
    )
    print(
        f"{args.iterations} timed meta-iterations per variant in {args.rounds} interleaved rounds, after {WARMUP} "
        "untimed; "
        "a meta-iteration = draw the meta-batch + meta-gradient + Adam step"
    )
    print("tasks: per-task = 25 tasks one by one from train_stream (before); batched = one train_batches draw (after)")
    print(
        "torch-func eager (before): outer derivative through torch.func.grad_and_value; now plain autograd (same "
        "numbers)"
    )

    for variant in variants:
        throwaway, batches = build(variant, context, args.seed)
        start = time.perf_counter()
        for _ in range(WARMUP):
            throwaway.meta_step(next(batches))
        variant.warmup_s = time.perf_counter() - start
        variant.baseline, variant.batches = build(variant, context, args.seed)  # same seed: same initial parameters

    reference_params = list(variants[0].baseline.network.parameters())
    same_init = all(
        all(torch.equal(a, b) for a, b in zip(reference_params, v.baseline.network.parameters())) for v in variants
    )
    first_batch = {  # what each path's fresh stream yields first
        "per-task": draw_batch(sampler.train_stream(args.seed), standard.meta_batch, standard.shots),
        "batched": from_task_batch(next(sampler.train_batches(args.seed, standard.meta_batch)), standard.shots),
    }
    start_gradients = {}
    for variant in variants:  # untimed; also the first (compiling) call of the timed compiled variants
        loss = float(variant.baseline.backend.meta_gradient(first_batch[variant.path]))
        start_gradients[variant.label] = (loss, [p.grad.clone() for p in variant.baseline.network.parameters()])

    bounds = [round(i * args.iterations / args.rounds) for i in range(args.rounds + 1)]
    round_seconds: list[dict[str, float]] = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        before = {v.label: v.draw_s + v.step_s for v in variants}
        for variant in variants:
            run(variant, hi - lo)
        round_seconds.append({v.label: v.draw_s + v.step_s - before[v.label] for v in variants})

    by = {(v.backend + (" (before)" if v.before else ""), v.path): v for v in variants}
    whole = {v.label: args.iterations / (v.draw_s + v.step_s) for v in variants}
    step_only = {v.label: args.iterations / v.step_s for v in variants}
    print(f"same initial parameters: {same_init}")
    print()
    print(
        f"{'backend, tasks':34s} {'it/s':>7s} {'x l2l':>6s} {'rounds (x l2l)':>25s} {'step-only it/s':>15s} "
        f"{'x l2l':>6s} "
        f"{'draw ms':>8s} {'warm-up':>8s}"
    )
    for variant in variants:
        reference = by[(REFERENCE, variant.path)].label
        spread = (
            ""
            if variant.backend == REFERENCE
            else " ".join(f"{r[reference] / r[variant.label]:.1f}" for r in round_seconds)
        )
        print(
            f"{variant.label:34s} {whole[variant.label]:7.1f} {whole[variant.label] / whole[reference]:6.1f} "
            f"{spread:>25s} "
            f"{step_only[variant.label]:15.1f} {step_only[variant.label] / step_only[reference]:6.1f} "
            f"{variant.draw_s / args.iterations * 1e3:8.3f} {variant.warmup_s:7.1f}s"
        )
    print("(x l2l: against learn2learn on the same task path; step-only: without drawing the meta-batch)")

    print()
    print("before -> after (whole meta-iterations, it/s):")
    pairs = [
        ("learn2learn", ("learn2learn", "per-task"), ("learn2learn", "batched")),
        ("torch-func eager", ("torch-func eager (before)", "per-task"), ("torch-func eager", "batched")),
    ]
    if compiled:
        pairs.append(("torch-func compiled", ("torch-func compiled", "per-task"), ("torch-func compiled", "batched")))
    for name, old, new in pairs:
        old_its, new_its = whole[by[old].label], whole[by[new].label]
        old_l2l, new_l2l = whole[by[("learn2learn", "per-task")].label], whole[by[("learn2learn", "batched")].label]
        print(
            f"  {name:20s} {old_its:7.1f} -> {new_its:7.1f} ({new_its / old_its:.2f}x); "
            f"vs learn2learn {old_its / old_l2l:.1f}x -> {new_its / new_l2l:.1f}x"
        )
    old_eager, new_eager = by[("torch-func eager (before)", "per-task")], by[("torch-func eager", "per-task")]
    print(
        f"  torch-func eager meta-step alone (same per-task batches): {step_only[old_eager.label]:.1f} -> "
        f"{step_only[new_eager.label]:.1f} it/s ({step_only[new_eager.label] / step_only[old_eager.label]:.2f}x), "
        f"vs learn2learn {step_only[old_eager.label] / step_only[by[('learn2learn', 'per-task')].label]:.1f}x -> "
        f"{step_only[new_eager.label] / step_only[by[('learn2learn', 'per-task')].label]:.1f}x"
    )
    draw = {
        path: sum(v.draw_s for v in variants if v.path == path) / sum(1 for v in variants if v.path == path)
        for path in PATHS
    }
    print(
        f"  drawing a {standard.meta_batch}-task meta-batch: per-task {draw['per-task'] / args.iterations * 1e3:.3f} "
        "ms -> "
        f"batched {draw['batched'] / args.iterations * 1e3:.3f} ms ({draw['per-task'] / draw['batched']:.1f}x less)"
    )

    print()
    agree = same_init
    for variant in variants:
        if variant.backend == REFERENCE:
            continue
        reference = by[(REFERENCE, variant.path)]
        ref_loss, ref_grads = start_gradients[reference.label]
        loss, grads = start_gradients[variant.label]
        loss_error = abs(loss - ref_loss) / abs(ref_loss)
        grad_error = max(float((a - b).norm() / b.norm()) for a, b in zip(grads, ref_grads))
        differences = [abs(a - b) / abs(b) for a, b in zip(variant.losses, reference.losses)]
        parted = next((i for i, d in enumerate(differences) if d > 1e-5), None)
        window = min(100, args.iterations)
        last = sum(variant.losses[-window:]) / window
        reference_last = sum(reference.losses[-window:]) / window
        last_error = abs(last - reference_last) / reference_last
        ok = loss_error <= 1e-4 and grad_error <= 1e-4 and last_error <= 1e-2
        agree = agree and ok
        print(
            f"{variant.label} vs learn2learn: first meta-loss rel. error {loss_error:.1e}, meta-gradient rel. error "
            f"{grad_error:.1e}; over {args.iterations} iterations largest meta-loss difference {max(differences):.1e}"
            f"{'' if parted is None else f' (above 1e-5 from iteration {parted + 1})'}, mean of the last {window} "
            f"{last_error:.1e}: {'agree' if ok else 'DISAGREE'}"
        )
    print("final meta-loss: " + ", ".join(f"{v.label} {v.losses[-1]:.5f}" for v in variants))
    print(f"losses agree: {agree}")
    fastest = by[("torch-func compiled" if compiled else "torch-func eager", "batched")]
    print(f"ratio below: {fastest.label} / learn2learn, batched (whole meta-iterations)")
    print(f"ratio={whole[fastest.label] / whole[by[(REFERENCE, 'batched')].label]:.2f}")


if __name__ == "__main__":
    main()
