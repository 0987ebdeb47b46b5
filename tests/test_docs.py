"""The documentation site builds with no warning: a broken link, a page missing from the nav or an
API reference that no longer resolves fails here, as it fails `make docs`. The API pages read as
documentation: cross-references instead of raw Sphinx roles, signatures one parameter per line,
every member of every protocol listed; no page links to a file outside the site."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DOCS = ROOT / "docs"
RAW_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const|type):(?:`|<code>)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp("docs") / "site"
    result = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "WARNING" not in result.stderr, result.stderr[-3000:]
    return site


def test_the_docs_site_builds_strictly_with_every_page_and_the_api_reference(site):
    pages = {path.parent.name for path in site.rglob("index.html")}
    for page in (path.stem for path in DOCS.glob("*.md") if path.stem != "index"):
        assert page in pages, f"docs/{page}.md is not in the built site"
    api = (site / "api" / "interfaces" / "index.html").read_text()
    assert "LayerPool" in api and "BuildContext" in api  # generated from the docstrings


def test_the_api_pages_show_no_raw_sphinx_role_and_link_the_names_they_mention(site):
    pages = sorted((site / "api").rglob("index.html"))
    assert len(pages) >= 7
    for page in pages:
        html = page.read_text()
        raw = RAW_ROLE.findall(html)
        assert not raw, f"{page.relative_to(site)} shows {len(raw)} raw Sphinx roles, e.g. {raw[0]}"
    interfaces = (site / "api" / "interfaces" / "index.html").read_text()
    # TaskSampler's docstring says :class:`Describable`: a link to that protocol on the same page.
    assert re.search(
        r'<a class="autorefs autorefs-internal"[^>]*href="#reml_core\.interfaces\.Describable"', interfaces
    )
    python = (site / "api" / "python" / "index.html").read_text()
    # reml_core.api's docstrings name reml_core.errors.UserError (rendered on the same page).
    assert re.search(r'href="#reml_core\.errors\.UserError"', python)


def test_every_member_of_every_public_protocol_is_listed(site):
    from reml_core import interfaces

    html = (site / "api" / "interfaces" / "index.html").read_text()
    protocols = {
        name: cls
        for name, cls in vars(interfaces).items()
        if inspect.isclass(cls)
        and cls.__module__ == interfaces.__name__
        and getattr(cls, "_is_protocol", False)
        and not name.startswith("_")
    }
    assert {"TaskSampler", "StateEncoder", "LayerPool", "RewardFunction", "PolicyBackend", "Baseline"} <= set(protocols)
    for name, cls in protocols.items():
        members = [
            *cls.__dict__.get("__annotations__", {}),
            *(key for key, value in cls.__dict__.items() if inspect.isfunction(value) or isinstance(value, property)),
        ]
        members = [member for member in members if not member.startswith("_") or member == "__call__"]
        assert members, name
        missing = [member for member in members if f'id="reml_core.interfaces.{name}.{member}"' not in html]
        assert not missing, f"the API page does not list {name}'s {', '.join(missing)}"
    # The attributes a task family must have are described, not only named.
    start = html.index('id="reml_core.interfaces.TaskSampler.max_shots"')
    assert "the largest K a run may use" in html[start : start + 3000]


def test_a_long_signature_is_shown_one_parameter_per_line(site):
    html = (site / "api" / "python" / "index.html").read_text()
    start = html.index('id="reml_core.api.run"')
    signature = html[html.index("doc-signature", start) :]
    text = re.sub(r"<[^>]+>", "", signature[: signature.index("</code>")])
    assert text.startswith('doc-signature highlight">run(\n') or "run(\n" in text, text[:300]
    assert "\n    out: str | Path | None = None,\n" in text.replace("&gt;", ">"), text[:600]


def markdown_links(text: str) -> list[str]:
    """The targets of a page's Markdown links and images, and of its HTML ``href``/``src``."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # code blocks link nothing
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = re.findall(r"\]\(\s*<?([^)\s>]+)", text)
    targets += re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", text, flags=re.MULTILINE)
    targets += re.findall(r"""(?:href|src)=["']([^"']+)""", text)
    return targets


def outside_links(docs: Path) -> list[str]:
    """Every relative link of a page under ``docs`` whose target lies outside ``docs``."""
    found = []
    for page in sorted(docs.rglob("*.md")):
        for target in markdown_links(page.read_text()):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
                continue  # another site, or an anchor on the page: not a file path
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(docs.resolve()):
                found.append(f"{page.relative_to(docs)} -> {target}")
    return found


def test_no_docs_page_links_to_a_file_outside_the_site():
    assert outside_links(DOCS) == []


def test_an_outside_link_is_found(tmp_path):
    (tmp_path / "api").mkdir()
    (tmp_path / "a.md").write_text("[ok](b.md) [up](../README.md) `[not a link](../x.md)` [web](https://example.org)\n")
    (tmp_path / "api" / "c.md").write_text("[ok](../a.md#x) ![img](../../tools/x.png)\n\n[ref]: ../../pyproject.toml\n")
    assert outside_links(tmp_path) == [
        "a.md -> ../README.md",
        "api/c.md -> ../../tools/x.png",
        "api/c.md -> ../../pyproject.toml",
    ]


def load_hook():
    spec = importlib.util.spec_from_file_location("sphinx_roles", DOCS / "hooks" / "sphinx_roles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sphinx_roles_become_cross_references_resolved_where_the_docstring_lives():
    import griffe

    hook = load_hook()
    package = griffe.load(
        "reml_core", search_paths=[str(ROOT)], extensions=griffe.load_extensions(hook.SphinxRoles(str(DOCS / "api")))
    )
    collection = package.modules_collection
    modules = hook.rendered_modules(DOCS / "api")
    assert {"reml_core.api", "reml_core.interfaces", "reml_core.specs"} <= modules
    owner = collection.get_member("reml_core.interfaces.TaskSampler")

    def convert(text, at=owner):
        return hook.convert(text, at, collection, modules)

    assert convert(":class:`Describable`") == "[`Describable`][reml_core.interfaces.Describable]"
    assert convert(":class:`~reml_core.interfaces.Task`") == "[`Task`][reml_core.interfaces.Task]"
    assert convert(":class:`reml_core.interfaces.Task`") == "[`reml_core.interfaces.Task`][reml_core.interfaces.Task]"
    assert convert(":meth:`the stream <TaskSampler.train_stream>`") == (
        "[`the stream`][reml_core.interfaces.TaskSampler.train_stream]"
    )
    assert convert(":mod:`reml_core.specs`") == "[`reml_core.specs`][reml_core.specs]"
    # reml_core.run is exported lazily; the link goes to where it is defined.
    assert convert(":func:`reml_core.run`") == "[`reml_core.run`][reml_core.api.run]"
    # An import is followed to its definition: reml_core.api imports UserError from reml_core.errors.
    assert convert(":class:`UserError`", collection.get_member("reml_core.api")) == (
        "[`UserError`][reml_core.errors.UserError]"
    )
    # No API page renders reml_core.env, and logging is not ours: code, linked only if some page defines it.
    assert convert(":class:`~reml_core.env.CompositionEnv`") == (
        '<autoref identifier="reml_core.env.CompositionEnv" optional><code>CompositionEnv</code></autoref>'
    )
    assert convert(":mod:`logging`") == '<autoref identifier="logging" optional><code>logging</code></autoref>'
    assert convert("An example::\n\n    x = 1\n") == "An example:\n\n    x = 1\n"
    # Loading the package with the extension rewrote the docstrings themselves.
    docstring = collection.get_member("reml_core.interfaces.TaskSampler").docstring.value
    assert ":class:" not in docstring and "[`Describable`][reml_core.interfaces.Describable]" in docstring
