"""A broken install must fail loudly here rather than deep inside a run."""

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["torch", "learn2learn", "gymnasium", "stable_baselines3", "sb3_contrib", "pluggy", "pydantic"])
def test_the_stack_imports(module):
    imported = importlib.import_module(module)
    assert imported.__name__ == module


def test_plugins_import_only_under_their_prefix(tmp_path):
    # Outside the source tree, the built-in plugins exist as reml_plugins and there is no bare `plugins`.
    probe = "import importlib.util as u, reml_plugins; print(u.find_spec('plugins') is None)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"
