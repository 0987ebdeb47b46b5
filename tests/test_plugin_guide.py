"""docs/plugins.md: the complete minimal plugin it lists installs as its own distribution and runs end to end,
and its table of a task sampler's attributes names every member of the TaskSampler protocol."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.runs import TINY_SETTINGS
from test_external_plugin import _run

from reml_core.interfaces import TaskSampler

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


def _section(title: str) -> str:
    text = GUIDE.read_text()
    start = text.index(title)
    end = re.compile(r"^##+ ", flags=re.M).search(text, start + len(title)).start()
    return text[start:end]


def test_the_guide_lists_every_member_of_the_task_sampler_protocol_with_a_type():
    table = _section("### The task sampler, attribute by attribute")
    rows = re.findall(r"^\| `([^|]+)` \| `([^|]+)` \|", table, flags=re.M)
    listed = {name.split("(")[0] for names, _ in rows for name in re.split(r"`, `", names)}
    members = {name for name in dir(TaskSampler) if not name.startswith("_")} | set(TaskSampler.__annotations__)
    assert members <= listed, members - listed


@pytest.fixture(scope="module")
def guide_plugin_site(tmp_path_factory) -> Path:
    """The guide's two files, written out and pip-installed into a temporary folder."""
    section = _section("### A complete minimal plugin")
    source = tmp_path_factory.mktemp("guide-plugin")
    files = 0
    for block in re.findall(r"^```(?:toml|python)\n(.*?)^```", section, flags=re.S | re.M):
        first = block.splitlines()[0]
        assert first.startswith("# "), first
        path = source / first[2:].strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block)
        files += 1
    assert files == 2
    target = tmp_path_factory.mktemp("guide-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


@pytest.mark.slow
def test_the_guides_minimal_plugin_installs_and_runs(guide_plugin_site, tmp_path):
    listing = _run("reml-plugins", "--json", site=guide_plugin_site, REML_DISABLE_PLUGINS="")
    assert listing.returncode == 0, listing.stderr
    decay = [item for item in json.loads(listing.stdout)["task_sampler"] if item["name"] == "decay"]
    assert decay and decay[0]["plugin"] == "reml-decay"
    result = _run(
        "reml-run",
        "--plugin",
        "decay",
        "--preset",
        "smoke",
        "--out",
        str(tmp_path / "run"),
        *TINY_SETTINGS,
        site=guide_plugin_site,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["plugin"] == "decay" and results["methods"]["reml"]["10"]["10"]["mse_mean"] is not None
