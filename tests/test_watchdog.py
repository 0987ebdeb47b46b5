"""The local Ray instance's watchdog (reml_core.distributed): once the driver is gone it ends every
process of the instance, including the ones whose environment no longer shows the instance's marker
(Ray's agents retitle themselves over it), and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from reml_core import distributed

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="the watchdog reads /proc (Linux)")

# A marked process (as Ray's raylet is) that starts a child without the marker in its environment
# (as a retitled agent looks in /proc), prints the child's PID, then lives until killed.
FAMILY = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], env={"PATH": os.environ["PATH"]})
print(child.pid, flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _family(marker: str) -> tuple[subprocess.Popen[str], int]:
    parent = subprocess.Popen(
        [sys.executable, "-c", FAMILY],
        env={**os.environ, distributed.SESSION_ENV_VAR: marker},
        stdout=subprocess.PIPE,
        text=True,
    )
    return parent, int(parent.stdout.readline())


def _end(pid: int, *processes: subprocess.Popen) -> None:
    """End what a test started, whatever the test left running."""
    for process in processes:
        process.kill()
        process.wait()
    try:
        os.kill(pid, 9)
    except OSError:
        pass


def _wait_gone(pids: list[int], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def test_the_family_of_a_marked_process_is_remembered_after_its_parent_dies():
    marker = uuid.uuid4().hex
    parent, child = _family(marker)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        known: dict[int, str] = {}
        assert set(distributed.session_family(marker, known)) == {parent.pid, child}
        parent.kill()
        parent.wait()
        # the child has lost its marked parent and never had the marker: only the record finds it
        assert distributed.session_family(marker, known) == [child]
        assert bystander.pid not in known
    finally:
        _end(child, parent, bystander)


def test_the_watchdog_ends_the_instance_and_its_unmarked_children_when_the_driver_goes():
    marker = uuid.uuid4().hex
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "reml_core.distributed", "watchdog", marker],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    parent, child = _family(marker)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        time.sleep(distributed.LOOK_EVERY_S * 2 + 1)  # the watchdog has looked at least once while the driver lived
        watchdog.stdin.close()  # what the driver's end, however it ends, does to the pipe
        assert _wait_gone([parent.pid, child]), "the instance's processes outlived the driver"
        assert bystander.poll() is None, "the watchdog ended a process that was not the instance's"
        assert watchdog.wait(timeout=30) == 0
    finally:
        _end(child, parent, bystander, watchdog)
