"""Ray for REML: one place that checks Ray is there, starts or joins an instance, and stops it.

``reml-bench --executor ray`` and ``reml-sweep`` use it. Without an address Ray starts a local
instance with this machine's CPUs (or ``num_cpus``); ``address`` joins a running cluster
(``ray start --head`` on one node, then ``--ray-address HOST:6379`` from the driver). Ray is the
``reml[ray]`` extra: without it both commands exit 2 with the command that installs it.
"""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reml_core.errors import UserError

#: The one command that installs what ``--executor ray`` and ``reml-sweep`` need.
INSTALL_HINT = "pip install 'reml[ray]'"


def require_ray(what: str) -> Any:
    """The ``ray`` module, or a UserError naming ``what`` needed it and how to install it."""
    if importlib.util.find_spec("ray") is None:
        raise UserError(f"{what} needs Ray, which is not installed; install it with: {INSTALL_HINT}")
    import ray  # noqa: PLC0415 - lazy: optional dependency ray (reml[ray])

    return ray


#: How long the check that something listens at ``--ray-address`` waits (Ray itself retries for ~40 s).
PROBE_SECONDS = 5.0


def unreachable(address: str, timeout: float = PROBE_SECONDS) -> str | None:
    """Why nothing answers at a ``HOST:PORT`` (or ``ray://HOST:PORT``) address, or None when something
    does or the address is not of that form (``auto``): a typo fails in seconds, not after Ray's retries."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as error:
        return error.strerror or type(error).__name__


def check_address(address: str) -> None:
    """A UserError at once when nothing answers at ``--ray-address`` (see :func:`unreachable`)."""
    why = unreachable(address)
    if why is not None:
        raise UserError(
            f"--ray-address {address}: nothing answers there ({why}); start the cluster's head with "
            "'ray start --head' on that machine, or check the host and port"
        )


@contextmanager
def ray_session(what: str, *, address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray, initialised for the length of the block: a fresh local instance, or the cluster at ``address``.

    A Ray that was already initialised in this process (a notebook's, a test's) is used as it is
    and left running.
    """
    ray = require_ray(what)
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        check_address(address)
        options["address"] = address
    else:
        if num_cpus is not None:
            options["num_cpus"] = num_cpus
        # A private local instance needs no access token (Ray would otherwise write one under ~/.ray);
        # a cluster brings its own settings. Workers of a local instance inherit this environment
        # (PYTHONPATH, REML_DISABLE_PLUGINS), so they see the driver's plugins.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    watchdog = None if address else start_watchdog()
    try:
        try:
            ray.init(**options)
        except ConnectionError as error:
            raise UserError(f"--ray-address {address}: cannot connect to a Ray cluster there ({error})") from None
        except Exception as error:  # Ray's own start-up failures (ports, /tmp) are the user's environment
            raise UserError(f"{what}: Ray could not start ({type(error).__name__}: {error})") from None
        try:
            yield ray
        finally:
            ray.shutdown()
    finally:
        if watchdog is not None:
            watchdog.stop()


# -- the local instance dies with the driver ----------------------------------------------------

#: Set in the environment of a local Ray instance's every process (GCS, raylet, agents, workers and
#: what they start): the watchdog finds them by it and by descent from them (see :func:`session_family`),
#: so no other Ray is touched.
SESSION_ENV_VAR = "REML_RAY_SESSION"
#: How long the watchdog lets Ray's processes end on SIGTERM before it SIGKILLs them.
GRACE_S = 1.0
#: How long the watchdog keeps looking for stragglers (a worker the raylet was starting).
SWEEP_S = 10.0


class Watchdog:
    """A small process that ends a local Ray instance's processes once the driver is gone.

    Ray ties only the processes it starts itself to the driver; its workers and agents notice a
    SIGKILLed driver late (minutes, on a busy machine). The watchdog waits on a pipe from the driver:
    when it reads end-of-file (the driver ended, however it ended, even SIGKILLed) it ends every
    process carrying this instance's :data:`SESSION_ENV_VAR` and every descendant of one it saw. A
    sweep trial's ``reml-run`` is left to its guard (which stops it with one SIGTERM, so it
    checkpoints first; see reml_core.sweep.guard_main).
    """

    def __init__(self, marker: str, process: subprocess.Popen[bytes], previous: str | None) -> None:
        self.marker = marker
        self.process = process
        self.previous = previous

    def stop(self) -> None:
        """The driver is done with Ray: restore its environment; the watchdog cleans up what is left."""
        if self.previous is None:
            os.environ.pop(SESSION_ENV_VAR, None)
        else:
            os.environ[SESSION_ENV_VAR] = self.previous
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()  # end-of-file: the watchdog ends what Ray left behind, then exits
        except OSError:
            pass


def start_watchdog() -> Watchdog | None:
    """Mark this process's environment for a new local Ray instance and start its :class:`Watchdog`
    (Linux, where /proc shows each process's environment; elsewhere Ray's own clean-up is all)."""
    if not Path("/proc/self/environ").is_file():
        return None
    marker = f"{os.getpid()}-{uuid.uuid4().hex}"
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "reml_core.distributed", "watchdog", marker],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except OSError:
        return None
    previous = os.environ.get(SESSION_ENV_VAR)
    os.environ[SESSION_ENV_VAR] = marker
    return Watchdog(marker, process, previous)


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name: state, ppid, pgrp, session, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def session_processes(marker: str) -> list[int]:
    """PIDs of this user's processes whose environment carries ``marker`` (see :data:`SESSION_ENV_VAR`)."""
    wanted = f"{SESSION_ENV_VAR}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or another user's
            continue
    return found


def _started(pid: int) -> str | None:
    """A process's start time (/proc/PID/stat field 22): with the PID, names one process even if the PID is reused."""
    try:
        return _stat(pid)[19]
    except (OSError, IndexError):
        return None


def session_family(marker: str, known: dict[int, str]) -> list[int]:
    """The processes carrying ``marker`` and every descendant of them, adding each to ``known`` (PID -> start time).

    A process found by its environment alone is not enough: Ray's agents (``ray::DashboardAgent``,
    ``ray::RuntimeEnvAgent``) retitle themselves over the memory /proc shows as their environment, so
    the marker is gone from it. They are the raylet's children, so they are found through it, while
    the raylet is alive; ``known`` remembers them for when it is not. Returns the PIDs of ``known``
    still running (same start time), found now or before."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    todo, seen = session_processes(marker), set()
    while todo:
        pid = todo.pop()
        started = _started(pid)
        if pid == os.getpid() or pid in seen or started is None:
            continue
        seen.add(pid)
        known[pid] = started
        todo.extend(children.get(pid, []))
    return [pid for pid, started in known.items() if _started(pid) == started and _stat_state(pid) != "Z"]


def _stat_state(pid: int) -> str:
    try:
        return _stat(pid)[0]
    except (OSError, IndexError):
        return "gone"


def _trial_sessions(pids: list[int]) -> set[int]:
    """The sessions led by a sweep trial's guard (``python -m reml_core.sweep guard``)."""
    sessions = set()
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"reml_core.sweep" in command and b"guard" in command and int(_stat(pid)[3]) == pid:
                sessions.add(pid)
        except (OSError, ValueError, IndexError):
            continue
    return sessions


def _to_end(marker: str, known: dict[int, str]) -> list[int]:
    pids = session_family(marker, known)
    trials = _trial_sessions(pids)
    ending = []
    for pid in pids:
        try:
            if int(_stat(pid)[3]) not in trials:
                ending.append(pid)
        except (OSError, ValueError, IndexError):
            continue
    return ending


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


#: How often the watchdog looks for the instance's processes while the driver lives (see :func:`session_family`).
LOOK_EVERY_S = 2.0


def watchdog_main(marker: str) -> int:
    """The watchdog's process: note the instance's processes while the driver lives; once its pipe
    closes, end them."""
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):  # only the driver's end matters
        signal.signal(signum, signal.SIG_IGN)
    known: dict[int, str] = {}
    try:
        while True:
            ready, _, _ = select.select([sys.stdin.buffer], [], [], LOOK_EVERY_S)
            if ready:
                if not os.read(sys.stdin.buffer.fileno(), 4096):
                    break
            else:
                session_family(marker, known)
    except OSError:
        pass
    _signal_all(_to_end(marker, known), signal.SIGTERM)
    deadline = time.monotonic() + SWEEP_S
    grace = time.monotonic() + GRACE_S
    quiet = 0
    while time.monotonic() < deadline:
        time.sleep(0.2)
        left = _to_end(marker, known)
        quiet = 0 if left else quiet + 1
        if quiet >= 5:  # nothing left for a second
            break
        if time.monotonic() >= grace:
            _signal_all(left, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "watchdog":
        raise SystemExit(watchdog_main(sys.argv[2]))
    raise SystemExit(f"usage: {sys.executable} -m reml_core.distributed watchdog MARKER")


def cluster_cpus(ray: Any) -> int:
    """The CPUs the Ray instance offers in total."""
    return int(ray.cluster_resources().get("CPU", 0))


def largest_node_cpus(ray: Any) -> int:
    """The most CPUs one live node of the Ray instance has: more than that, a task can never be placed."""
    return max((int(node.get("Resources", {}).get("CPU", 0)) for node in ray.nodes() if node.get("Alive")), default=0)
