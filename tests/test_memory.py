"""The heap keeps freed memory for reuse (reml_core.memory): fewer page faults, the same numbers, the user's
choice wins."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from reml_core import memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A stacked conv block's training step (the digits pool's shapes: 5 networks of 32 channels, 100 images of 8x8),
# repeated; prints the page faults per step after warm-up and a checksum of what it computed.
STEP = """
import json, resource, sys, torch, torch.nn.functional as F
from reml_core.memory import keep_freed_memory
applied = keep_freed_memory()
torch.manual_seed(0); torch.set_num_threads(1)
x = torch.randn(100, 160, 8, 8)
w = torch.randn(160, 32, 3, 3, requires_grad=True)
def step():
    h = F.conv2d(x, w, padding=1, groups=5)
    h = F.max_pool2d(torch.relu(F.group_norm(h, 5)), 2)
    h.square().sum().backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"applied": applied, "faults": faults, "grad": w.grad.double().sum().item()}))
"""


def _run_step(**environ: str) -> dict[str, float]:
    env = {key: value for key, value in os.environ.items() if key not in memory.USER_SETTINGS and key != memory.OPT_OUT}
    env.pop("GLIBC_TUNABLES", None)
    env.update(environ)
    done = subprocess.run(
        [sys.executable, "-c", STEP], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not GLIBC, reason="the heap's thresholds are glibc's (elsewhere keep_freed_memory does nothing)")
def test_a_repeated_step_reuses_its_memory_and_computes_the_same_numbers() -> None:
    kept = _run_step()
    system = _run_step(**{memory.OPT_OUT: "0"})
    assert kept["applied"] and not system["applied"]
    # measured here: about 25 page faults a step kept, about 2 700 (11 MB of fresh pages) with glibc's defaults
    assert kept["faults"] < 600, kept
    assert kept["grad"] == system["grad"]  # where memory comes from changes no number


@pytest.mark.parametrize(
    "environ",
    [
        {memory.OPT_OUT: "0"},
        {memory.OPT_OUT: "off"},
        {"MALLOC_TRIM_THRESHOLD_": "1000000"},
        {"MALLOC_MMAP_THRESHOLD_": "65536"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"},
    ],
)
def test_the_user_s_allocator_settings_win(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]) -> None:
    monkeypatch.setattr(memory, "_applied", None)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    assert memory.keep_freed_memory() is False


def test_settings_that_do_not_touch_the_thresholds_leave_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_applied", None)
    for key in (*memory.USER_SETTINGS, memory.OPT_OUT):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    monkeypatch.setenv(memory.OPT_OUT, "1")
    assert memory.keep_freed_memory() is GLIBC


def test_a_run_keeps_freed_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run sets it up (reml-run, reml-bench's and reml-sweep's jobs, the Python API): in seed_everything."""
    from reml_core.pipeline import seed_everything

    calls: list[bool] = []
    monkeypatch.setattr("reml_core.pipeline.keep_freed_memory", lambda: calls.append(True) or True)
    seed_everything(0, 1)
    assert calls == [True]
