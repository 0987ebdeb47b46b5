"""Sphinx roles in REML's docstrings become cross-references on the API pages.

The docstrings are written for Sphinx (``:class:`~reml_core.interfaces.Task```, ``:func:`run```);
mkdocstrings renders Markdown, where such a role would show raw. This griffe extension (listed under
the python handler's ``extensions`` in mkdocs.yml) rewrites each role when the package is loaded:

- ``:class:`a.b.C``` becomes ``[`a.b.C`][a.b.C]`` and ``:class:`~a.b.C``` becomes ``[`C`][a.b.C]``
  (``:role:`title <a.b.C>``` keeps its title); a relative name (``Task``, ``Results.learner``,
  ``.stream_seed``) is resolved against the object the docstring belongs to, as Sphinx would;
- a target inside a module the API pages render (a ``::: module`` line in docs/api/*.md) becomes an
  autorefs link that must resolve: a misspelt reference fails ``mkdocs build --strict``;
- any other target (a private helper, a module with no API page, ``logging``) becomes an optional
  reference: a link if some page defines it, code otherwise.

A Sphinx literal-block marker (a paragraph ending in ``::``) becomes a plain colon. The docstrings
themselves are not changed.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?P<role>class|func|meth|attr|data|mod|exc|obj|const|type):`(?P<text>[^`]+)`")
EXPLICIT_TITLE = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$")
LITERAL_MARKER = re.compile(r"(?<=\S)::(?=\n\s*\n)")
OWN_PACKAGES = ("reml_core", "reml_plugins")


def rendered_modules(api_dir: Path) -> set[str]:
    """The modules the API pages render, from their ``::: module`` lines."""
    found = set()
    for page in api_dir.glob("*.md"):
        found.update(re.findall(r"^:::\s+([\w.]+)\s*$", page.read_text(), re.MULTILINE))
    return found


def is_public_in(path: str, modules: set[str]) -> bool:
    """True when ``path`` is a module the pages render, or a public member of one."""
    for module in modules:
        if path == module:
            return True
        if path.startswith(module + "."):
            rest = path[len(module) + 1 :].split(".")
            return not any(part.startswith("_") for part in rest)
    return False


def lookup(collection: Any, path: str) -> Any | None:
    """The object at ``path`` in the loaded packages, or None."""
    try:
        return collection.get_member(path)
    except (KeyError, ValueError, AttributeError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def canonical(found: Any, fallback: str) -> str:
    """Where an object is defined (an import's target), so the link goes to its documentation."""
    try:
        return found.final_target.path if found.is_alias else found.path
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return fallback


def resolve(owner: Any, name: str, collection: Any) -> str:
    """The full path ``name`` means in ``owner``'s docstring (``name`` itself when unknown)."""
    name = name.lstrip(".")
    if name.startswith(OWN_PACKAGES):
        found = lookup(collection, name)
        if found is None:
            # reml_core exports run, bench, load ... lazily (module __getattr__): find the submodule
            # that defines the name, when exactly one does.
            package, _, member = name.partition(".")
            root = lookup(collection, package)
            if root is not None and "." not in member:
                definers = [
                    module
                    for module in root.modules.values()
                    if member in module.members
                    and not module.members[member].is_alias
                    and not module.members[member].is_module
                ]
                if len(definers) == 1:
                    return definers[0].members[member].path
            return name
        return canonical(found, name)
    head, _, tail = name.partition(".")
    scope = owner
    while scope is not None:
        try:
            base = scope.resolve(head)
        except (griffe.NameResolutionError, AttributeError, KeyError, ValueError):
            base = None
        if base is not None:
            path = f"{base}.{tail}" if tail else base
            found = lookup(collection, path)
            return canonical(found, path) if found is not None else path
        scope = scope.parent
    return name


def reference(title: str, identifier: str, strict: bool) -> str:
    if strict:
        return f"[`{title}`][{identifier}]"
    return f'<autoref identifier="{html.escape(identifier)}" optional><code>{html.escape(title)}</code></autoref>'


def convert(text: str, owner: Any, collection: Any, modules: set[str]) -> str:
    """``text`` (a docstring) with its Sphinx roles as cross-references."""

    def replace(match: re.Match) -> str:
        target = match["text"].strip()
        title = None
        if explicit := EXPLICIT_TITLE.match(target):
            title, target = explicit["title"], explicit["target"].strip()
        short = target.startswith("~")
        target = target.lstrip("~")
        if title is None:
            title = target.lstrip(".").rsplit(".", 1)[-1] if short else target.lstrip(".")
        path = resolve(owner, target, collection)
        strict = path.startswith(OWN_PACKAGES) and is_public_in(path, modules) and lookup(collection, path) is not None
        return reference(title, path, strict)

    text = ROLE.sub(replace, text)
    return LITERAL_MARKER.sub(":", text)


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of REML's packages once they are loaded."""

    def __init__(self, api_dir: str | None = None) -> None:
        super().__init__()
        self.modules = rendered_modules(Path(api_dir) if api_dir else Path(__file__).resolve().parent.parent / "api")

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.path not in OWN_PACKAGES:
            return
        seen: set[int] = set()
        pending = [pkg]
        while pending:
            obj = pending.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = convert(obj.docstring.value, obj, loader.modules_collection, self.modules)
            pending.extend(member for member in obj.members.values() if not member.is_alias)
