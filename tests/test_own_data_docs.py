"""docs/own-data.md works as written: its Python blocks and its reml-adapt line run in order in a fresh folder,
and the exported network, loaded by the page's script in a Python where REML cannot be imported, predicts
what ``learner.predict`` returned."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "own-data.md"
BIN = Path(sys.executable).parent
PLAIN_SCRIPT = "# use_network.py"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", PAGE.read_text(), flags=re.S | re.M)


@pytest.mark.slow
def test_the_own_data_page_runs_as_written_and_its_network_needs_only_torch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    python = blocks("python")
    plain = [block for block in python if block.startswith(PLAIN_SCRIPT)]
    assert len(plain) == 1 and len(python) == 4
    namespace: dict = {}
    for block in python:
        if block is not plain[0]:
            exec(compile(block, f"{PAGE.name} block", "exec"), namespace)
    assert sorted(p.name for p in (tmp_path / "oscillations" / "test").iterdir())[:2] == [
        "task-000.csv",
        "task-001.csv",
    ]
    results = json.loads((tmp_path / "runs" / "oscillations" / "results.json").read_text())
    assert results["plugin"] == "files" and results["encoder"] == "support-points" and not results["encoder_privileged"]

    # the shell line, as written (its files were written by the page's Python)
    (line,) = [text for block in blocks("sh") for text in block.splitlines() if text.startswith("reml-adapt")]
    args = shlex.split(line)
    result = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    written = np.loadtxt(tmp_path / "predictions.csv", delimiter=",", skiprows=1)[:, -1]
    predictions = namespace["predictions"].reshape(-1).numpy()
    np.testing.assert_allclose(written, predictions, rtol=1e-5, atol=1e-6)

    # the page's script in an isolated interpreter: no site processing, so REML's editable install is
    # not on the path; only the folder holding torch (and numpy) is added
    (tmp_path / "use_network.py").write_text(plain[0])
    site = str(Path(torch.__file__).resolve().parent.parent)
    code = (  # noqa: UP031 - a script template, filled with %r
        "import sys; sys.path.append(%r)\n"
        "try:\n    import reml_core\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('reml_core is "
        "importable')\n"
        "exec(compile(open('use_network.py').read(), 'use_network.py', 'exec'))\n"
        "assert not any(name.startswith(('reml_core', 'reml_plugins')) for name in sys.modules)\n"
    ) % site
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(printed, predictions, rtol=1e-6, atol=1e-7)
