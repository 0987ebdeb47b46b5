"""One trial's process: ``reml-run`` (or its ``--resume``) started under a guard that passes it exactly
one SIGTERM when the Ray worker that started it goes, with Linux's parent-death signal (libc's
``prctl``), so a killed sweep's trials checkpoint instead of running on as orphans.

``python -m reml_core.sweep guard COMMAND...`` (``reml_core/sweep/__main__.py``) is the guard
(:func:`guard_main`), a command line the Ray watchdog (:mod:`reml_core.distributed`) recognises;
the Tune trainable calls :func:`run_trial_process`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reml_core.folders import LOCK
from reml_core.storage import atomic_write_json, open_for_append
from reml_core.sweep.trials import last_lines, read_record, record_seconds, run_finished, trial_objective

#: The module ``python -m`` runs as a trial's guard: its command line is how the Ray watchdog tells a trial's session.
GUARD_MODULE = "reml_core.sweep"
#: How long a restarted trial waits for a killed predecessor's reml-run to checkpoint and let go of its folder.
LOCK_WAIT_S = 120.0


def reml_run_command() -> list[str]:
    script = Path(sys.executable).parent / "reml-run"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "reml_core.cli.run"]


_LIBC: Any = None


def _prepare_death_signal() -> Any:
    """libc's prctl, looked up before forking (a child should not load libraries)."""
    global _LIBC
    if _LIBC is None and sys.platform.startswith("linux"):
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            _LIBC = False
    return _LIBC


def _die_with_parent(parent: int) -> Any:
    """A ``preexec_fn``: the child gets SIGTERM when the thread that started it ends (Linux's parent-death signal)."""
    libc = _prepare_death_signal()

    def apply() -> None:
        if libc:
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the worker died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)

    return apply


def _wait_until_unlocked(folder: Path, timeout: float) -> None:
    """Wait for a killed trial's reml-run (still checkpointing after its worker died) to let go of its folder."""
    path = folder / LOCK
    if not path.is_file():
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            if time.monotonic() > deadline:
                return  # reml-run will name the holder
        finally:
            os.close(descriptor)
        time.sleep(0.5)


def run_trial_process(root: Path, trial: Mapping[str, Any]) -> dict[str, Any]:
    """Run (or continue, or just read) one trial's reml-run; return its objective, seconds and whether it ran now."""
    folder = root / trial["folder"]
    log_path, record_path = root / trial["log"], root / trial["log"].replace(".log", ".json")
    record = read_record(record_path)
    if folder.is_dir():
        _wait_until_unlocked(folder, LOCK_WAIT_S)
    reused = run_finished(folder)
    if not reused:
        if (folder / "config.json").is_file():
            command = [*reml_run_command(), "--resume", str(folder)]
        else:
            force = (
                ["--force"] if folder.is_dir() and any(folder.iterdir()) else []
            )  # killed between claiming and config.json
            command = [*reml_run_command(), "--config", str(root / trial["config_file"]), "--out", str(folder), *force]
        for earlier in record["invocations"]:  # killed with the sweep: it ran until its log was last written
            if (
                earlier.get("seconds") is None
                and isinstance(earlier.get("started_at"), (int, float))
                and log_path.is_file()
            ):
                earlier.update(
                    seconds=round(max(log_path.stat().st_mtime - earlier["started_at"], 0.0), 3), estimated=True
                )
        invocation = {
            "command": command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "started_at": time.time(),
            "seconds": None,
            "exit": None,
        }
        record["invocations"].append(invocation)
        atomic_write_json(record_path, record)
        start = time.perf_counter()
        with open(open_for_append(log_path), "ab") as log:
            log.write(f"\n[reml-sweep] {time.strftime('%H:%M:%S')} $ {' '.join(command)}\n".encode())
            log.flush()
            # reml-run runs under a guard (see guard_main) in a session of its own, so that when the worker
            # ends it gets one SIGTERM and checkpoints before it exits, instead of running on as an orphan
            process = subprocess.Popen(
                [sys.executable, "-m", GUARD_MODULE, "guard", *command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
            code = process.wait()
        invocation.update(seconds=round(time.perf_counter() - start, 3), exit=code)
        atomic_write_json(record_path, record)
        if code != 0:
            raise RuntimeError(f"reml-run exited with code {code}: {last_lines(log_path)} (log: {log_path})")
    objective = trial_objective(folder)
    return {
        "score": math.nan if objective["score"] is None else objective["score"],
        "seconds": record_seconds(record),
        "reused": reused,
        "invocations": len(record["invocations"]),
        "checkpoint": objective["checkpoint"] or "",
    }


def guard_main(command: Sequence[str]) -> int:
    """Run ``command`` and pass it exactly one SIGTERM when this guard is told to stop; return its exit code.

    The Tune trainable starts the guard, which starts reml-run. The parent-death signal (SIGTERM
    when the worker that started the guard goes) can arrive twice: once when the worker's thread
    ends and once when its process does. reml-run reads a second SIGTERM as "stop now, without a
    checkpoint", so the guard, a single-threaded process, forwards only the first; reml-run's own
    death signal fires only if the guard itself is killed.
    """
    child = subprocess.Popen(list(command), preexec_fn=_die_with_parent(os.getpid()))
    forwarded: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        if not forwarded:
            forwarded.append(signum)
            child.send_signal(signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    code = child.wait()
    return 128 - code if code < 0 else code
