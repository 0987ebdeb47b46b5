"""docs/architecture.md's module map and the modules on disk agree.

The map is the first fenced block of docs/architecture.md that starts with ``reml_core/``: a tree
in which every module (``name.py``) and package (``name/``) sits on its own line, indented under its
package, followed by what it is for; a description may run on over further lines indented at least
to where it starts. Every module and package under ``reml_core/`` must be listed (``__init__.py``
may be), and so must every plugin package and module directly under ``plugins/``; every entry the
map lists must exist. A new module therefore fails here until it has its line in the map.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAP = ROOT / "docs" / "architecture.md"
ENTRY = re.compile(r"[A-Za-z_]\w*(?:\.py|/)")


def module_map(markdown: str) -> list[str]:
    """The paths the map lists (``reml_core/api.py``, ``reml_core/cli/``), in order."""
    block = None
    for match in re.finditer(r"^```[^\n]*\n(.*?)^```", markdown, re.DOTALL | re.MULTILINE):
        if match.group(1).startswith("reml_core/"):
            block = match.group(1)
            break
    assert block is not None, "docs/architecture.md has no fenced block starting with 'reml_core/' (the module map)"
    entries: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, path) of the packages enclosing the current line
    description_column = None  # where the last entry's description starts: deeper lines continue it
    for number, line in enumerate(block.splitlines(), start=1):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        if description_column is not None and indent >= description_column:
            continue
        token = line.split()[0]
        assert ENTRY.fullmatch(token), (
            f"module map line {number} starts with {token!r}, not a module (name.py) or a package (name/), "
            f"and is not indented as the previous entry's description: {line!r}"
        )
        while stack and stack[-1][0] >= indent:
            stack.pop()
        assert stack or indent == 0, f"module map line {number} is indented but under no package: {line!r}"
        parent = stack[-1][1] if stack else ""
        path = parent + token
        entries.append(path)
        if token.endswith("/"):
            stack.append((indent, path))
        rest = line[indent + len(token) :]
        description_column = indent + len(token) + len(rest) - len(rest.lstrip()) if rest.strip() else None
    return entries


def modules_on_disk(root: Path) -> set[str]:
    """Every module and package the map must list, as paths relative to ``root``: all of
    ``reml_core`` (``__init__.py`` excepted), and what sits directly in ``plugins``."""
    found: set[str] = set()
    for path in (root / "reml_core").rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        relative = path.relative_to(root)
        if path.name != "__init__.py":
            found.add(relative.as_posix())
        for package in relative.parents:
            if package != Path(".") and package != Path("reml_core"):
                found.add(package.as_posix() + "/")
    plugins = root / "plugins"
    for child in plugins.iterdir():
        if child.is_dir() and (child / "__init__.py").is_file():
            found.add(f"plugins/{child.name}/")
        elif child.suffix == ".py" and child.name != "__init__.py":
            found.add(f"plugins/{child.name}")
    return found


def disagreements(root: Path, entries: list[str]) -> tuple[list[str], list[str]]:
    """(modules missing from the map, entries that do not exist on disk)."""
    listed = set(entries)
    missing = sorted(modules_on_disk(root) - listed)
    stale = []
    for entry in entries:
        if entry in ("reml_core/", "plugins/"):
            continue
        target = root / entry
        exists = (target / "__init__.py").is_file() if entry.endswith("/") else target.is_file()
        if not exists:
            stale.append(entry)
    return missing, stale


def test_every_module_is_in_the_architecture_map_and_every_entry_exists():
    entries = module_map(MAP.read_text())
    assert entries[0] == "reml_core/" and "plugins/" in entries
    assert "reml_core/api.py" in entries and "reml_core/cli/run.py" in entries
    missing, stale = disagreements(ROOT, entries)
    assert not missing, (
        "docs/architecture.md's module map does not list these (add one line each, indented under its "
        "package, saying what it is for): " + ", ".join(missing)
    )
    assert not stale, "docs/architecture.md's module map lists what does not exist: " + ", ".join(stale)
    assert len(entries) == len(set(entries)), "the module map lists an entry twice"


SAMPLE = """\
Text before.

```
flags ──► something else (another block: not the map)
```

```
reml_core/       the framework
  api.py           the Python API,
                   described over two lines
  sweep/           a package
    plan.py          what to run
                     config.py would be a continuation here, not an entry
    supervise.py
  cli/
    run.py           reml-run
  env.py           the MDP
plugins/         built-in
  sine/            task sampler
```
"""


def test_the_map_reader_follows_packages_and_skips_continued_descriptions():
    assert module_map(SAMPLE) == [
        "reml_core/",
        "reml_core/api.py",
        "reml_core/sweep/",
        "reml_core/sweep/plan.py",
        "reml_core/sweep/supervise.py",
        "reml_core/cli/",
        "reml_core/cli/run.py",
        "reml_core/env.py",
        "plugins/",
        "plugins/sine/",
    ]


def test_a_module_added_or_removed_on_disk_is_reported(tmp_path):
    for path in (
        "reml_core/__init__.py",
        "reml_core/api.py",
        "reml_core/env.py",
        "reml_core/sweep/__init__.py",
        "reml_core/sweep/plan.py",
        "reml_core/sweep/supervise.py",
        "reml_core/cli/__init__.py",
        "reml_core/cli/run.py",
        "plugins/__init__.py",
        "plugins/sine/__init__.py",
        "plugins/sine/sampler.py",
    ):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    entries = module_map(SAMPLE)
    assert disagreements(tmp_path, entries) == ([], [])  # a plugin's own modules need no line
    (tmp_path / "reml_core" / "vec_env.py").write_text("")
    (tmp_path / "plugins" / "meta_sgd").mkdir()
    (tmp_path / "plugins" / "meta_sgd" / "__init__.py").write_text("")
    (tmp_path / "reml_core" / "env.py").unlink()
    assert disagreements(tmp_path, entries) == (["plugins/meta_sgd/", "reml_core/vec_env.py"], ["reml_core/env.py"])
