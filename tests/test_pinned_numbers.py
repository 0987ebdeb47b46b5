"""One small smoke run's numbers, pinned: a restructuring of the core must not change what a seed
gives. If a deliberate change of behaviour moves them, regenerate the pin and say why in the commit:

    .venv/bin/python tests/test_pinned_numbers.py

Integers (timesteps, the chosen checkpoint, NaN counts) are pinned exactly. Each float is a mean of
float32 losses whose sums another CPU dispatch rounds differently (torch's vector or scalar kernels,
MKL's Intel or AMD paths), so floats are pinned to PIN_REL_TOL = 16 u (float32's unit roundoff
u = 2**-24, relative): measured, they move by at most 2.7e-7 under the emulated dispatches of
`make test-dispatch`, ATEN_CPU_CAPABILITY=default and MKL_CBWR=COMPATIBLE (docs/reliability.md,
"Determinism"). In a run this small no dispatch measured had a last bit amplified (by an Adam sign
step or a changed sampled action); on a CPU where one was, the numbers would move far more than
that, and the pin would have to say which dispatch it was made on.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PIN = HERE / "data" / "pinned_smoke_run.json"
PIN_REL_TOL = 16 * 2.0**-24  # relative: 16 units of float32 roundoff, about 4x the spread measured across dispatches
pytestmark = pytest.mark.numerics


def _numbers(folder: Path) -> dict:
    results = json.loads((folder / "results.json").read_text())
    history = results["training"]["history"]
    return {
        "methods": results["methods"],
        "curves": results["curves"],
        "validation": [
            {k: v for k, v in record.items() if k.startswith("validation/") or k == "timesteps"} for record in history
        ],
        "selected_checkpoint": results["training"]["selected_checkpoint"],
    }


def _close(a, b, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}: keys {sorted(a)} != {sorted(b)}"]
        return [p for key in a for p in _close(a[key], b[key], f"{where}.{key}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)}"]
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in _close(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=PIN_REL_TOL, abs_tol=1e-9) else [f"{where}: {a!r} != {b!r}"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


#: Each pinned run names its train.workers, so the pins hold on a machine of any number of CPUs (the
#: default is the CPUs): one process, and two, where the policy's update runs beside the next rollout
#: (train.overlap_update; a step of this small run never ends enough episodes to split them).
PINS = {
    "one process": (PIN, ["--set", "train.workers=1"]),
    "update overlapped": (HERE / "data" / "pinned_smoke_run_overlap.json", ["--set", "train.workers=2"]),
}


@pytest.mark.parametrize("name", sorted(PINS))
def test_a_seed_gives_the_pinned_numbers(tmp_path, name):
    from helpers.runs import tiny_run

    pin, extra = PINS[name]
    numbers = _numbers(tiny_run(tmp_path / "run", *extra))
    problems = _close(numbers, json.loads(pin.read_text()))
    assert not problems, f"the pinned smoke run ({name}) changed:\n" + "\n".join(problems[:20])


def test_the_two_pinned_runs_differ():
    """The overlapped run acts one update behind: were its pin equal to the other, it would pin nothing new."""
    one, overlapped = (json.loads(pin.read_text()) for pin, _ in PINS.values())
    assert one["methods"] != overlapped["methods"]


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(HERE))
    from helpers.runs import tiny_run

    for pin, extra in PINS.values():
        with tempfile.TemporaryDirectory() as folder:
            pin.write_text(
                json.dumps(_numbers(tiny_run(Path(folder) / "run", *extra)), indent=1, sort_keys=True) + "\n"
            )
        print(f"wrote {pin}")
