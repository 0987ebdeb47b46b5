"""A broken install must fail loudly here rather than deep inside a run."""

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module", ["torch", "learn2learn", "gymnasium", "stable_baselines3", "sb3_contrib", "pluggy", "pydantic"]
)
def test_the_stack_imports(module):
    imported = importlib.import_module(module)
    assert imported.__name__ == module


def test_plugins_import_only_under_their_prefix(tmp_path):
    # Outside the source tree, the built-in plugins exist as reml_plugins and there is no bare `plugins`.
    probe = "import importlib.util as u, reml_plugins; print(u.find_spec('plugins') is None)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"


def test_every_package_on_disk_is_in_the_distribution():
    # pyproject.toml names its packages one by one: a new subpackage left out of the list works in the
    # editable checkout and is missing from a wheel or a non-editable install.
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(project["packages"])
    on_disk = set()
    for name, directory in project["package-dir"].items():
        for init in (root / directory).rglob("__init__.py"):
            relative = init.parent.relative_to(root / directory).parts
            if "__pycache__" not in relative:
                on_disk.add(".".join((name, *relative)))
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - on_disk == set(), "pyproject.toml lists packages that do not exist"
