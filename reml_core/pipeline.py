"""One ``reml-run``: meta-train (or resume), pick the best checkpoint, evaluate against baselines, write files."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reml_core.config import RunConfig
from reml_core.errors import CheckpointError
from reml_core.evaluation import FewShotEvaluator, FewShotTable, NetworkProvider
from reml_core.experiment import Components, build_components
from reml_core.interfaces import Baseline
from reml_core.methods import ReMLMethod
from reml_core.plots import plot_convergence, plot_few_shot
from reml_core.results import build_results, curve_table, encoder_note, few_shot_tables
from reml_core.storage import atomic_write_json, atomic_write_text, new_checkpoint
from reml_core.training import MetaTrainer, log, resume_state


def seed_everything(seed: int, threads: int) -> None:
    """Global torch settings for reproducible numbers (see docs/reliability.md)."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def build_baselines(components: Components, names: list[str]) -> dict[str, Baseline]:
    config = components.config
    return {name: config.baselines[name].spec.factory(config.baselines[name].config, components.context) for name in names}


def evaluate_methods(
    config: RunConfig, components: Components, providers: Mapping[str, NetworkProvider]
) -> tuple[dict[str, FewShotTable], dict[str, list[float]], dict[str, float]]:
    """Every method on the same held-out test tasks, support and query points, and fine-tuning."""
    evaluation = config.core.eval
    tasks = components.task_sampler.test_tasks(evaluation.test_tasks)
    evaluator = FewShotEvaluator(
        tasks, components.task_sampler.loss,
        shots=evaluation.shots, steps=evaluation.steps, lr=evaluation.sgd_lr,
        curve_steps=evaluation.curve_steps, curve_lr=evaluation.curve_lr, curve_tasks=evaluation.curve_tasks,
        progress=config.core.train.progress,
    )
    tables, curves, seconds = {}, {}, {}
    for name, provider in providers.items():
        log(f"evaluating {name} on {len(tasks)} held-out test tasks")
        start = time.perf_counter()
        tables[name] = evaluator.few_shot(provider, name)
        curves[name] = evaluator.curve(provider, name)
        seconds[f"evaluation_{name}"] = time.perf_counter() - start
    return tables, curves, seconds


@dataclass
class TrainedReML:
    """A trained (or loaded) REML: its trainer, with the checkpoint chosen on validation tasks loaded."""

    trainer: MetaTrainer
    trained_steps: int
    selected: dict[str, Any]

    def method(self) -> ReMLMethod:
        return ReMLMethod(self.trainer.policy, self.trainer.eval_env)

    def training_record(self) -> dict[str, Any]:
        policy = self.trainer.policy
        return {
            "env_steps": self.trained_steps,
            "resumes": self.trainer.state.resumes,
            "selected_checkpoint": self.selected,
            "history": self.trainer.state.history,
            "invalid_argmax_rate": getattr(policy, "invalid_argmax", 0) / max(getattr(policy, "decisions", 0), 1),
        }


def train_reml(config: RunConfig, components: Components, out: Path, *, resume: bool = False, trust_checkpoint: bool = False) -> TrainedReML:
    """Calibrate, meta-train (or continue) and load the best validation checkpoint; raises StopRequested on Ctrl-C."""
    trainer = _trainer(config, components, out, resume=resume, trust_checkpoint=trust_checkpoint)
    trainer.calibrate()
    trainer.train()
    with new_checkpoint(out / "checkpoints", "final", latest=False) as staging:
        trainer.write_into(staging)
    return _select_best(trainer, out)


def load_reml(config: RunConfig, components: Components, out: Path, *, trust_checkpoint: bool = False) -> TrainedReML:
    """A finished run's REML, from its ``best`` (or ``final``) checkpoint, without training."""
    found = resume_state(out)
    if found is None:
        raise CheckpointError(f"{out} holds no checkpoint to load")
    latest, state = found
    trainer = MetaTrainer(config, components, out, state=state)
    trainer.load(latest, trust_pickle=trust_checkpoint)
    return _select_best(trainer, out)


def _select_best(trainer: MetaTrainer, out: Path) -> TrainedReML:
    trained_steps = trainer.state.timesteps
    selected = trainer.state.best or {"name": "final", "timesteps": trained_steps, "score": None}
    chosen = out / "checkpoints" / ("best" if trainer.state.best is not None else "final")
    if chosen.is_dir():
        log(f"using the checkpoint chosen on validation tasks ({selected['name']}, step {selected['timesteps']})")
        trainer.load(chosen)
    return TrainedReML(trainer, trained_steps, selected)


def run_experiment(config: RunConfig, out: Path, *, resume: bool = False, trust_checkpoint: bool = False, command: str = "") -> dict[str, Any]:
    """Train, select, evaluate and report one run in ``out``; raises StopRequested on Ctrl-C."""
    started = time.perf_counter()
    seed_everything(config.seed, config.core.train.threads)
    components = build_components(config)
    baselines = build_baselines(components, list(config.baselines))  # before training: fail fast
    reml = train_reml(config, components, out, resume=resume, trust_checkpoint=trust_checkpoint)

    timing: dict[str, float] = {}
    for name, baseline in baselines.items():
        start = time.perf_counter()
        baseline.meta_train(components.task_sampler.train_stream(config.seed), progress=config.core.train.progress)
        timing[f"training_{name}"] = time.perf_counter() - start
    providers: dict[str, NetworkProvider] = {"reml": reml.method().network_for}
    providers.update({name: baseline.network_for for name, baseline in baselines.items()})
    tables, curves, evaluation_seconds = evaluate_methods(config, components, providers)
    timing.update({f"{key}_reml": value for key, value in reml.trainer.state.seconds.items()})
    timing.update(evaluation_seconds)
    timing["total_this_invocation"] = time.perf_counter() - started

    results = build_results(
        config=config.to_dict(),
        encoder_privileged=bool(components.encoder.privileged),
        test_tasks=config.core.eval.test_tasks,
        methods=tables,
        curves=curves,
        timing_s=timing,
        extra={"command": command, "training": reml.training_record()},
    )
    write_outputs(out, results)
    return results


def _trainer(config: RunConfig, components: Components, out: Path, *, resume: bool, trust_checkpoint: bool) -> MetaTrainer:
    if resume:
        found = resume_state(out)
        if found is not None:
            latest, state = found
            state.resumes += 1
            log(f"resuming from {latest.name} ({state.timesteps} env steps done)")
            trainer = MetaTrainer(config, components, out, state=state)
            trainer.load(latest, trust_pickle=trust_checkpoint)
            return trainer
        log("no checkpoint yet: starting the run from the beginning")
    return MetaTrainer(config, components, out)


def write_outputs(out: Path, results: dict[str, Any]) -> None:
    """results.json, report.md, few_shot.png and convergence.png, each written atomically."""
    atomic_write_json(out / "results.json", results)
    title = f"{results['plugin']}: {results['policy']}, encoder {results['encoder']}"
    plot_few_shot(results["methods"], out / "few_shot.png", title)
    plot_convergence(results["curves"], out / "convergence.png", title)
    atomic_write_text(out / "report.md", render_run_report(results))


def render_run_report(results: Mapping[str, Any]) -> str:
    config = results["config"]
    training = results.get("training", {})
    timing = results["timing_s"]
    evaluation = config["eval"]
    lines = [
        f"# REML run: {results['plugin']}, {results['policy']}, encoder {results['encoder']}",
        "",
        f"Command: `{results.get('command') or 'reml-run'}`  ",
        f"Seed {results['seed']}, preset `{config['preset']}`, {results['test_tasks']} held-out test tasks. "
        + encoder_note(results),
        "",
        "## Few-shot regression (Finn et al. 2017 protocol)",
        "",
        f"Each method hands out a starting network per test task; it is fine-tuned with plain SGD "
        f"(lr {evaluation['sgd_lr']}) on the same K support points, and the error is measured on "
        f"{config['task'].get('query_points', 'the')} separate query points. REML's network comes from "
        f"a deterministic rollout of the policy over the trained pool (checkpoint "
        f"`{training.get('selected_checkpoint', {}).get('name', '?')}`, chosen on validation tasks).",
        "",
        few_shot_tables(results["methods"]),
        "![few-shot](few_shot.png)",
        "",
        f"## Convergence ({evaluation['curve_steps']} Adam steps, lr {evaluation['curve_lr']}, on each task's training data)",
        "",
        f"Mean query MSE over {evaluation['curve_tasks']} test tasks after n steps:",
        "",
        curve_table(results["curves"]),
        "![convergence](convergence.png)",
        "",
        "## Training",
        "",
        f"{training.get('env_steps', '?')} env steps with `{results['policy']}`, reward `{config['reward']['name']}` "
        f"(loss measured: {config['reward'].get('loss_at', '?')}), pool `{config['pool']['name']}`; "
        f"resumed {training.get('resumes', 0)} time(s). At evaluation, the unmasked most probable action "
        f"would have been invalid in {training.get('invalid_argmax_rate', 0):.1%} of decisions.",
        "",
    ]
    history = training.get("history", [])
    if history:
        longest = max(evaluation["steps"])
        lines += [
            "| env steps | validation MSE after " + f"{longest} steps | fine-tuning gain | dead input units | dead hidden units | output weight norm |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for record in history:
            score = record.get("validation/score")
            gain = record.get("validation/finetune_gain")
            lines.append(
                f"| {record['timesteps']} | {_number(score)} | {_number(gain)} "
                f"| {record.get('pool/dead_input_units', 0):.0%} | {record.get('pool/dead_hidden_units', 0):.0%} "
                f"| {record.get('pool/weight_norm_output', 0):.2f} |"
            )
        lines.append("")
    lines += ["## Wall time (seconds)", "", "| phase | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in timing.items()]
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in results["versions"].items()), ""]
    lines += ["The fully resolved configuration is in `config.json`; machine-readable results in `results.json`.", ""]
    return "\n".join(lines)


def _number(value: float | None) -> str:
    """A validation number for the report; NaN (a diverged fine-tuning) is shown, not hidden."""
    return "NaN" if value is None or value != value else f"{value:.3f}"


def command_line() -> str:
    return " ".join(shlex.quote(part) for part in [Path(sys.argv[0]).name, *sys.argv[1:]])
