"""Running a sweep's plan on Ray Tune: each trial a function trainable that runs one reml-run
(:func:`reml_core.sweep.supervise.run_trial_process`), one progress line per finished or failed
trial, the experiment's state under ``OUT/tune`` (restored by ``--resume``), and Ctrl-C or SIGTERM
stopping Tune the way its own SIGUSR1 does (the running trials checkpoint first)."""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from reml_core.distributed import INSTALL_HINT
from reml_core.errors import UserError
from reml_core.logs import log
from reml_core.reports import describe_values as describe
from reml_core.sweep.plan import TUNE_NAME, SweepPlan
from reml_core.sweep.supervise import run_trial_process
from reml_core.sweep.trials import last_lines, read_record


def tune_trainable(config: dict[str, Any], root: str) -> None:
    """The Ray Tune function trainable: one trial, reported once to Tune."""
    from ray import tune  # noqa: PLC0415 - lazy: optional dependency ray (reml[ray])

    tune.report(run_trial_process(Path(root), config["trial"]))


def trial_name(trial: Any) -> str:
    return str(trial.config["trial"]["id"])


# -- running the sweep on Ray Tune ---------------------------------------------------------------


def _progress_callback(root: Path, total: int) -> Any:
    """A Tune callback printing one line per finished or failed trial (on the driver's stderr)."""
    from ray import tune  # noqa: PLC0415 - lazy: optional dependency ray (reml[ray])

    class SweepProgress(tune.Callback):
        def __init__(self) -> None:
            self.root, self.total = str(root), total

        @staticmethod
        def _done(trials: list[Any], trial: Any) -> int:
            """Trials finished so far, this one included (those a restored experiment had finished too)."""
            return 1 + sum(other.status == "TERMINATED" for other in trials if other is not trial)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            spec, result = trial.config["trial"], trial.last_result or {}
            score = result.get("score")
            shown = (
                f"{score:.4f}"
                if isinstance(score, float) and math.isfinite(score)
                else "none (no finite validation score)"
            )
            how = "already finished, not rerun" if result.get("reused") else f"{result.get('seconds', 0.0):.1f} s"
            log(
                f"trial {self._done(trials, trial)}/{self.total} {spec['id']} ({describe(spec['values'])}, seed "
                f"{spec['seed']}): "
                f"validation score {shown}, {how}; run {Path(self.root) / spec['folder']}, log "
                f"{Path(self.root) / spec['log']}"
            )

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            spec = trial.config["trial"]
            log_path = Path(self.root) / spec["log"]
            invocations = read_record(Path(self.root) / spec["log"].replace(".log", ".json"))["invocations"]
            code = invocations[-1].get("exit") if invocations else None
            why = (
                f"reml-run exited with code {code}: {last_lines(log_path, 1)}"
                if code not in (None, 0)
                else "its worker died"
            )
            log(
                f"trial {spec['id']} ({describe(spec['values'])}, seed {spec['seed']}) failed ({why}); "
                f"run {Path(self.root) / spec['folder']}, log {log_path}"
            )

    return SweepProgress()


def run_tune(out: Path, plan: SweepPlan, *, restore: bool) -> int | None:
    """Run every unfinished trial of the plan on Tune; ``restore`` continues the experiment in ``out/tune``.

    Returns None when Tune finished, or the signal (SIGINT, SIGTERM) that stopped it: Tune then
    saved its experiment state and stopped the running trials (each reml-run checkpoints on the
    SIGTERM it gets when its worker ends), which ``--resume`` continues.
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own status tables off (verbose=0 then prints nothing)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C and SIGTERM both go through _graceful_stop below
    # Tune's own messages say what reml-sweep's lines say better: the trials' scores and failures, and
    # that a restored trial has no result file of its own (the sweep reads the trial folders)
    for name in ("ray.tune.analysis.experiment_analysis", "ray.tune.tune"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    controller = logging.getLogger(
        "ray.tune.execution.tune_controller"
    )  # a failed trial: our line names it and its log
    if not any(isinstance(f, _DropTrialTracebacks) for f in controller.filters):
        controller.addFilter(_DropTrialTracebacks())
    try:
        from ray import tune  # noqa: PLC0415 - lazy: optional dependency ray (reml[ray])
    except ImportError as error:
        raise UserError(
            f"reml-sweep needs Ray Tune, which cannot be imported ({error}); install it with: {INSTALL_HINT}"
        ) from None

    trainable = tune.with_resources(tune.with_parameters(tune_trainable, root=str(out)), {"cpu": plan.cpus_per_trial})
    tune_path = out / TUNE_NAME
    if restore and tune.Tuner.can_restore(str(tune_path)):
        tuner = tune.Tuner.restore(str(tune_path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        if tune_path.exists():
            shutil.rmtree(
                tune_path
            )  # an experiment killed before Tune saved its state: start it again (finished trials are read, not rerun)
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([t.to_dict() for t in plan.trials])},
            tune_config=tune.TuneConfig(
                num_samples=1, reuse_actors=False, trial_name_creator=trial_name, trial_dirname_creator=trial_name
            ),
            run_config=tune.RunConfig(
                name=TUNE_NAME,
                storage_path=str(out),
                verbose=0,
                log_to_file=False,
                callbacks=[_progress_callback(out, len(plan.trials))],
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
    stopped: list[int] = []
    handler = _graceful_stop(stopped)
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        tuner.fit()
    except (KeyboardInterrupt, SystemExit):
        # a second signal, raised inside Ray's wait (which turns it into SystemExit): stop now, reported as the first
        if not stopped:
            raise
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
    return stopped[0] if stopped else None


class _DropTrialTracebacks(logging.Filter):
    """Drops Tune's traceback of a failed trial (the trainable's RuntimeError says only what the trial's log says)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Trial task failed for trial")


def _graceful_stop(stopped: list[int]) -> Any:
    """A SIGINT/SIGTERM handler for the length of ``Tuner.fit``: the first signal asks Tune to stop as
    its own SIGUSR1 does (save the experiment, stop the trials); a second one stops at once.

    Raising from a handler while Ray waits inside its C++ core turns into ``SystemExit(1)``, so the
    first signal only sets Tune's flag and the caller reports the signal after ``fit`` returns.
    """

    def handle(signum: int, frame: Any) -> None:
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if stopped or not callable(tune_stop):
            raise KeyboardInterrupt
        stopped.append(signum)
        log(
            f"{'interrupt' if signum == signal.SIGINT else 'SIGTERM'} received: stopping the sweep; running trials "
            "checkpoint before they end (Ctrl-C again to stop at once)"
        )
        tune_stop(signum, frame)

    return handle
