"""Interrupted runs: SIGKILL at any moment and Ctrl-C lose nothing complete, and --resume finishes them."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reml_core.interrupts import Terminated
from reml_core.storage import latest_checkpoint, verify_checkpoint

BIN = Path(sys.executable).parent
# A smoke run with frequent checkpoints, long enough to be interrupted while training: a few envs
# and short rollouts, so steps (and checkpoints) come in small chunks and the kill-and-resume cycles
# below cannot use up the whole budget before their last kill.
BUDGET = 6000
RUN = [
    "--plugin",
    "sine",
    "--preset",
    "smoke",
    "--set",
    f"train.env_steps={BUDGET}",
    "--set",
    "train.checkpoint_every=250",
    "--set",
    "train.n_envs=8",
    "--set",
    "policy.n_steps=128",
    "--set",
    "train.progress=false",
]


def _start(out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "reml-run"), *RUN, "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_checkpoint(out: Path, process: subprocess.Popen[str], minimum_step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pointer = out / "checkpoints" / "latest"
        if pointer.exists() and int(pointer.read_text().strip().split("-")[1]) >= minimum_step:
            return
        if process.poll() is not None:
            raise AssertionError(f"run ended early: {process.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared in time")


def _resume(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "reml-run"), "--resume", str(out)], capture_output=True, text=True, timeout=300)


def _assert_complete(out: Path, resumes: int) -> None:
    results = json.loads((out / "results.json").read_text())
    assert results["training"]["env_steps"] >= BUDGET
    assert results["training"]["resumes"] == resumes
    assert all(
        math.isfinite(c["mse_mean"]) for t in results["methods"].values() for r in t.values() for c in r.values()
    )
    steps = [record["timesteps"] for record in results["training"]["history"]]
    assert steps == sorted(steps) and steps[-1] >= BUDGET


def test_sigkill_at_any_moment_then_resume_finishes_the_run(tmp_path):
    out = tmp_path / "run"
    process = _start(out)
    _wait_for_checkpoint(out, process, 250)
    cycles = 0
    for delay in (0.0, 0.37, 0.81, 1.3):  # kill at assorted moments: mid-step, mid-checkpoint, mid-validation
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        cycles += 1
        latest = latest_checkpoint(out / "checkpoints")
        assert latest is not None
        verify_checkpoint(latest)  # the checkpoint `latest` names is always complete
        before = int(latest.name.split("-")[1])
        process = subprocess.Popen(
            [str(BIN / "reml-run"), "--resume", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        _wait_for_checkpoint(out, process, before + 250)
    process.send_signal(signal.SIGKILL)
    process.wait()
    cycles += 1
    result = _resume(out)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_complete(out, resumes=cycles)
    assert not list((out / "checkpoints").glob(".*")), "half-written checkpoints were left behind"


def test_ctrl_c_checkpoints_exits_130_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    process = _start(out)
    _wait_for_checkpoint(out, process, 500)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert f"reml-run --resume {out}" in stderr and "--resume" not in stdout  # the hint is a message, not output
    assert "Traceback" not in stderr
    latest = latest_checkpoint(out / "checkpoints")
    verify_checkpoint(latest)
    assert not (out / "results.json").exists()
    result = _resume(out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from step-" in result.stderr
    _assert_complete(out, resumes=1)


def test_resume_refuses_new_settings(tmp_path):
    result = subprocess.run(
        [str(BIN / "reml-run"), "--resume", str(tmp_path), "--seed", "3"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"reml-run: error: --resume takes every setting from {tmp_path}/config.json; drop --seed"
    )
    result = subprocess.run([str(BIN / "reml-run"), "--resume", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "not a REML run directory (no .reml.json marker" in result.stderr
    assert os.listdir(tmp_path) == []


def test_sigterm_checkpoints_exits_143_and_says_how_to_resume(tmp_path):
    """What a cluster scheduler sends: handled like Ctrl-C, so a preempted job loses nothing."""
    out = tmp_path / "run"
    process = _start(out)
    _wait_for_checkpoint(out, process, 500)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    assert f"reml-run --resume {out}" in stderr and "Traceback" not in stderr
    latest = latest_checkpoint(out / "checkpoints")
    verify_checkpoint(latest)
    assert int(latest.name.split("-")[1]) >= 500
    result = _resume(out)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_complete(out, resumes=1)


def _interrupt_when(process: subprocess.Popen[str], marker: str, signum: int, timeout: float = 120) -> tuple[str, str]:
    """Send ``signum`` once ``marker`` appears on the process's stderr; return (stdout, all of stderr)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            time.sleep(0.3)  # well inside the phase
            process.send_signal(signum)
            break
    else:
        process.kill()
    stdout, rest = process.communicate(timeout=120)
    return stdout, "".join(seen) + rest


@pytest.mark.parametrize(
    ("phase", "marker", "extra"),
    [
        (
            "calibration",
            "calibrating the reward",
            ["--reward", "neg-mse-minmax", "--set", "train.calibration_episodes=20000"],
        ),
        ("evaluation", "evaluating reml", ["--set", "eval.test_tasks=4000", "--set", "eval.curve_tasks=2"]),
    ],
)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_outside_training_leaves_a_resumable_folder_and_the_hint(tmp_path, phase, marker, extra, signum):
    from helpers.runs import TINY, start

    out = tmp_path / "run"
    process = start("reml-run", *TINY, *extra, "--out", str(out))
    _, stderr = _interrupt_when(process, marker, signum)
    assert process.returncode == (130 if signum == signal.SIGINT else 143), stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].endswith(f"the run can be continued with: reml-run --resume {out}")
    assert not (out / "results.json").exists()
    assert (
        not list(out.glob(".*.tmp")) and not list((out / "checkpoints").glob(".*"))
        if (out / "checkpoints").is_dir()
        else True
    )
    # The folder is resumable: --resume accepts it and carries on from where it was.
    resumed = start("reml-run", "--resume", str(out))
    _, stderr = _interrupt_when(resumed, marker, signal.SIGINT)
    assert resumed.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    if phase == "evaluation":
        assert "resuming from " in stderr


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (its /proc status's SigCgt mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next((int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:")), 0)
    return bool(mask >> (signum - 1) & 1)


def _wait_for_handlers(process: subprocess.Popen[str], timeout: float = 60) -> float:
    """Wait until the command has put its handlers in place (it catches SIGTERM: run_main has begun;
    before that only the interpreter and the standard library's start run, where any Python program
    dies of the signal); return the moment it did."""
    deadline = time.monotonic() + timeout
    while not _catches(process.pid, signal.SIGTERM):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the command never installed its signal handlers"
        time.sleep(0.001)
    return time.monotonic()


def _start_up_seconds(tool: str, args: list[str]) -> float:
    """From the handlers being in place to the command's first line on stderr: its start-up (imports,
    plugin discovery, config resolution, claiming the folder, building the components)."""
    from helpers.runs import start

    process = start(tool, *args)
    try:
        installed = _wait_for_handlers(process)
        first = process.stderr.readline()  # reml-plugins writes nothing there: then its whole run is start-up
        seconds = time.monotonic() - installed
        assert first or process.wait(timeout=60) == 0, process.communicate()[1][-2000:]
    finally:
        process.kill()
        process.communicate(timeout=60)
    return seconds


EXIT_FOR = {signal.SIGINT: 130, signal.SIGTERM: 143}
WORD_FOR = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)"}


def _signal_at(tool: str, args: list[str], delay: float, signum: int) -> tuple[float, int, int, str]:
    from helpers.runs import start

    process = start(tool, *args)
    try:
        _wait_for_handlers(process)
        time.sleep(delay)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return delay, signum, process.returncode, stderr


def _signals_across_start_up(tool: str, make_args, count: int, rounds: int = 2) -> list[tuple[float, int, int, str]]:
    """Send SIGINT and SIGTERM at ``count`` moments spread evenly over the command's whole start-up
    (and a little past it), each moment with each signal; each further round repeats that with the
    moments shifted (so rounds=2 gives 2 x count moments), two commands at a time."""
    from concurrent.futures import ThreadPoolExecutor

    start_up = _start_up_seconds(tool, make_args(0))
    step = start_up * 1.1 / (count - 1)
    delays = [step * (i + r / rounds) for r in range(rounds) for i in range(count)]
    jobs = [(delay, signum) for delay in delays for signum in (signal.SIGINT, signal.SIGTERM)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda job: _signal_at(tool, make_args(jobs.index(job) + 1), *job), jobs))


def _assert_ended_cleanly(tool: str, results: list[tuple[float, int, int, str]]) -> None:
    for delay, signum, code, stderr in results:
        where = f"{signal.Signals(signum).name} {delay:.3f} s into the start-up: exit {code}\n{stderr[-2500:]}"
        assert code >= 0, (
            where
        )  # never killed by a signal: no SIGABRT from a C++ extension, no default SIGINT/SIGTERM death
        for text in ("Traceback", "Fatal Python error", "terminate called", "KeyboardInterrupt", "Exception ignored"):
            assert text not in stderr, where
        assert code in (0, EXIT_FOR[signum]), where
        if code == EXIT_FOR[signum]:
            assert stderr.strip().splitlines()[-1].startswith(f"{tool}: {WORD_FOR[signum]}"), where
    interrupted = sum(code != 0 for _, _, code, _ in results)
    assert interrupted >= len(results) // 2, "most signals should land before the command finished"


def test_a_signal_at_any_moment_of_reml_runs_start_up_ends_it_cleanly(tmp_path):
    """Ctrl-C or SIGTERM while torch's (or any native) extension initialises must not abort the
    process (a KeyboardInterrupt cannot unwind through C++: std::terminate, SIGABRT): run_main holds
    the signals while native modules import and takes them right after. 20 moments spread over the
    whole start-up, measured here, each with both signals."""
    from helpers.runs import TINY

    results = _signals_across_start_up(
        "reml-run", lambda i: [*TINY, "--out", str(tmp_path / f"run-{i}")], count=10, rounds=2
    )
    _assert_ended_cleanly("reml-run", results)
    for index, (_, signum, code, stderr) in enumerate(results, start=1):
        out = tmp_path / f"run-{index}"
        # the folder holds a run: say how to continue it
        if code == EXIT_FOR[signum] and (out / "config.json").is_file():
            # before training "the run can be continued with: ...", during it "checkpoint ... saved. Continue with: ..."
            # and once the run has finished (a signal during its summary) where its results are
            hints = (
                f"continued with: reml-run --resume {out}",
                f"Continue with: reml-run --resume {out}",
                f"its results are in {out}",
            )
            assert stderr.strip().splitlines()[-1].endswith(hints), stderr[-2000:]
    # and the command still answers Ctrl-C once started: the signals were released, not left blocked
    assert any(code == 130 and delay > 0 for delay, signum, code, _ in results if signum == signal.SIGINT)


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("reml-plugins", []),
        ("reml-bench", ["--plugin", "sine", "--preset", "smoke", "--methods", "reml"]),
    ],
)
def test_a_signal_during_the_other_commands_start_up_ends_it_cleanly(tmp_path, tool, args):
    """The same for the other console scripts, at fewer moments."""
    with_out = tool != "reml-plugins"
    results = _signals_across_start_up(
        tool, lambda i: [*args, *(["--out", str(tmp_path / f"out-{i}")] if with_out else [])], count=4
    )
    _assert_ended_cleanly(tool, results)


@pytest.mark.parametrize("n_envs", [1, 4])
def test_sigkill_then_resume_finishes_a_run_of_one_env_or_a_vector_of_them(tmp_path, n_envs):
    """The checkpoint holds each env's place in its task stream (one count per env; a plain int for one env)."""
    out = tmp_path / "run"
    process = _start(out, "--set", f"train.n_envs={n_envs}")
    _wait_for_checkpoint(out, process, 500)
    time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    latest = latest_checkpoint(out / "checkpoints")
    verify_checkpoint(latest)
    episodes = json.loads((latest / "trainer.json").read_text())["episodes"]
    if n_envs == 1:
        assert isinstance(episodes, int) and episodes > 0
    else:
        assert isinstance(episodes, list) and len(episodes) == n_envs and min(episodes) > 0
    result = _resume(out)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_complete(out, resumes=1)
    final = json.loads((out / "checkpoints" / "final" / "trainer.json").read_text())["episodes"]
    assert (final > episodes) if n_envs == 1 else all(after > before for after, before in zip(final, episodes))


def _swallowed(exception: type[BaseException]) -> None:
    """Raise ``exception`` where Python can only report it as "Exception ignored": in a weakref callback,
    as a signal handler's exception is when the signal fires while such a callback runs."""
    import weakref

    class Thing:
        pass

    thing = Thing()

    def callback(_):
        raise exception  # what the command's handler does when its signal fires in here

    ref = weakref.ref(thing, callback)
    del thing  # the callback runs now; its exception goes to sys.unraisablehook
    assert ref() is None


SWALLOWED = [(KeyboardInterrupt, 130, "interrupted"), (Terminated, 143, "terminated (SIGTERM)")]


@pytest.mark.parametrize(("exception", "code", "word"), SWALLOWED, ids=["SIGINT", "SIGTERM"])
def test_a_signal_that_python_swallows_in_a_callback_still_ends_the_command(
    tmp_path, monkeypatch, capsys, exception, code, word
):
    """SIGINT or SIGTERM landing inside a weakref or GC callback (importlib's module-lock callback,
    during an import) raises an exception that Python can only report as "Exception ignored": the
    command must still stop with the signal's exit code and no traceback, not run on to the end."""
    from reml_core.cli import run as run_cli

    real = run_cli.discover_plugins

    def discover():
        registry = real()
        _swallowed(exception)
        return registry

    monkeypatch.setattr(run_cli, "discover_plugins", discover)
    out = tmp_path / "run"
    assert run_cli.main([*RUN, "--out", str(out)]) == code
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith(f"reml-run: {word}")
    assert not out.exists()


@pytest.mark.parametrize(("exception", "code", "word"), SWALLOWED, ids=["SIGINT", "SIGTERM"])
def test_a_signal_swallowed_after_the_last_phase_boundary_still_ends_the_command(
    tmp_path, monkeypatch, capsys, exception, code, word
):
    """The same signal swallowed once nothing is left to check it (here while the summary is printed):
    the run's files are complete, and the command still ends with the signal's code, not 0 as if
    nothing had been asked."""
    from helpers.runs import TINY

    from reml_core.cli import common
    from reml_core.cli import run as run_cli

    real = common.print_summary

    def print_summary(*args, **kwargs):
        real(*args, **kwargs)
        _swallowed(exception)

    monkeypatch.setattr(common, "print_summary", print_summary)
    out = tmp_path / "run"
    assert run_cli.main([*TINY, "--out", str(out)]) == code
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == f"reml-run: {word}; it had finished: its results are in {out}"
    assert (out / "results.json").is_file()


def test_a_ctrl_c_that_python_swallows_during_an_api_call_is_raised_by_it(tmp_path, monkeypatch):
    """The API (``reml_core.api.run``, a program's own Python) raises a Ctrl-C that Python swallowed in a callback
    during the call, before anything is written, and gives the program its own ``sys.unraisablehook`` back."""
    from reml_core import api

    real = api._registry

    def registry():
        found = real()
        _swallowed(KeyboardInterrupt)
        return found

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)  # the program's own hook
    monkeypatch.setattr(api, "_registry", registry)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        api.run(plugin="sine", preset="smoke", out=out)
    assert not out.exists()
    assert sys.unraisablehook == seen.append and seen == []
    # anything else Python cannot raise still reaches the program's hook, during a call and after it
    monkeypatch.setattr(api, "_registry", real)
    _swallowed(ValueError)
    assert [type(unraisable.exc_value) for unraisable in seen] == [ValueError]


FORK_HOOK = """
import os, sys
from reml_core.cli.common import run_main
from reml_core.interrupts import Terminated

def body(argv):
    def hook():
        raise {exception}  # SIGTERM's handler firing inside logging's after-fork hook, as a fresh-clone run saw
    os.register_at_fork(after_in_parent=hook)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    print("after the fork")
    return 0

sys.exit(run_main("reml-test", body, []))
"""


@pytest.mark.parametrize(("exception", "code", "word"), SWALLOWED, ids=["SIGINT", "SIGTERM"])
def test_a_signal_swallowed_in_a_fork_hook_ends_the_command(exception, code, word):
    """A signal that fires right after the command forks (a worker, an evaluation process) runs its handler
    inside an ``os.register_at_fork`` hook (logging has one), where Python reports the handler's exception
    as "Exception ignored" and goes on: the command must end with the signal's code and one line."""
    script = FORK_HOOK.format(exception=exception.__name__)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"reml-test: {word}", result.stderr
    assert result.stdout == "after the fork\n"


FORK_MAP_HOOK = """
import os, sys, time
from reml_core.cli.common import run_main
from reml_core.interrupts import Terminated
from reml_core.workers import fork_map

def slow(part):
    if part:
        print(os.getpid(), flush=True)  # a forked part: say who it is
    time.sleep(120)
    return part

def body(argv):
    def hook():
        raise Terminated  # SIGTERM's handler firing inside the after-fork hook
    os.register_at_fork(after_in_parent=hook)
    fork_map(slow, [0, 1, 2], what="evaluation")
    return 0

sys.exit(run_main("reml-test", body, []))
"""


def test_a_signal_swallowed_while_evaluation_processes_are_forked_stops_them_at_once():
    """The forks of the evaluation processes are where a swallowed signal happens: the command does not wait for
    the evaluation to finish (two minutes here) before stopping, and leaves none of its forked processes behind."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", FORK_MAP_HOOK], capture_output=True, text=True, timeout=110)
    assert time.monotonic() - started < 60, "the command ran on after the signal"
    assert result.returncode == 143, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "reml-test: terminated (SIGTERM)", result.stderr
    for pid in [int(line) for line in result.stdout.split()]:  # the children that got to print
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], pid


def test_an_error_that_follows_a_swallowed_ctrl_c_ends_the_command_as_interrupted(capsys):
    """A Ctrl-C that cuts an import short can be swallowed by library code and leave a module
    half-initialised; the error that follows (the fresh-clone suite saw "module 'numpy' has no
    attribute 'logical_or'") is the interrupt's consequence: exit 130 and no traceback. The same
    error without an interrupt is a bug and is not hidden."""
    from reml_core.cli.common import run_main

    def swallowing(argv):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler raises KeyboardInterrupt here
        except BaseException:  # library code that swallows it
            pass
        raise AttributeError("module 'numpy' has no attribute 'logical_or'")

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert run_main("reml-test", swallowing, []) == 130
    assert "reml-test: interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored

    def buggy(argv):
        raise AttributeError("a real bug")

    with pytest.raises(AttributeError, match="a real bug"):
        run_main("reml-test", buggy, [])


@pytest.mark.parametrize(
    ("signum", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_that_library_code_caught_and_went_on_still_ends_the_command(capsys, signum, code, word):
    """Library code that catches the signal's exception and carries on as if nothing happened (``except
    BaseException: pass`` around a wait) must not turn a Ctrl-C or a scheduler's SIGTERM into exit 0."""
    from reml_core.cli.common import run_main

    def swallowing(argv):
        try:
            os.kill(os.getpid(), signum)
            time.sleep(1)  # the handler raises here
        except BaseException:  # library code that swallows it
            pass
        print("carried on")
        return 0

    assert run_main("reml-test", swallowing, []) == code
    captured = capsys.readouterr()
    assert captured.out == "carried on\n"
    assert captured.err.strip().splitlines()[-1] == f"reml-test: {word}"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_worker_lost_during_a_stop_ends_the_run_as_the_stop_at_its_last_checkpoint(
    tmp_path, monkeypatch, capsys, signum
):
    """Ctrl-C or SIGTERM, then a worker ends before the step in flight finishes (the scheduler that sent SIGTERM
    kills the whole job, the OOM killer): the run stops as asked, with the signal's exit code (so reml-bench stops
    too, not going on to its next job), its last checkpoint intact, and --resume finishes it."""
    from reml_core import training
    from reml_core.cli import run as run_cli
    from reml_core.workers import WorkerLost

    real = training.MetaTrainer.on_step

    def on_step(self, timesteps):
        if timesteps >= 500 and latest_checkpoint(self.checkpoints) is not None:
            self._request_stop(signum, None)  # what the handler does on the signal
            raise WorkerLost("training worker 2 of 2 (pid 12345) was killed by SIGKILL")  # while stepping
        return real(self, timesteps)

    monkeypatch.setattr(training.MetaTrainer, "on_step", on_step)
    out = tmp_path / "run"
    code = run_cli.main([*RUN, "--out", str(out)])
    stderr = capsys.readouterr().err
    assert code == (130 if signum == signal.SIGINT else 143), stderr[-2000:]
    assert "training worker 2 of 2 (pid 12345) was killed by SIGKILL, during the stop" in stderr
    latest = latest_checkpoint(out / "checkpoints")
    verify_checkpoint(latest)
    assert (
        stderr.strip()
        .splitlines()[-1]
        .endswith(f"checkpoint {latest.name} saved. Continue with: reml-run --resume {out}")
    )
    assert "Traceback" not in stderr and not (out / "results.json").exists()
    monkeypatch.setattr(training.MetaTrainer, "on_step", real)
    result = _resume(out)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_complete(out, resumes=1)


def test_a_worker_lost_without_a_stop_is_still_an_error_naming_it(tmp_path, monkeypatch, capsys):
    from reml_core import training
    from reml_core.cli import run as run_cli
    from reml_core.workers import WorkerLost

    real = training.MetaTrainer.on_step

    def on_step(self, timesteps):
        if timesteps >= 500 and latest_checkpoint(self.checkpoints) is not None:
            raise WorkerLost("training worker 2 of 2 (pid 12345) was killed by SIGKILL")
        return real(self, timesteps)

    monkeypatch.setattr(training.MetaTrainer, "on_step", on_step)
    out = tmp_path / "run"
    code = run_cli.main([*RUN, "--out", str(out)])
    stderr = capsys.readouterr().err
    assert code == 1, stderr[-2000:]
    latest = latest_checkpoint(out / "checkpoints")
    assert f"the last checkpoint ({latest.name}) is intact: continue with reml-run --resume {out}" in stderr
    assert "during the stop" not in stderr and "Traceback" not in stderr
