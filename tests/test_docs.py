"""The documentation site builds with no warning: a broken link, a page missing from the nav or an
API reference that no longer resolves fails here, as it fails `make docs`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_the_docs_site_builds_strictly_with_every_page_and_the_api_reference(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "WARNING" not in result.stderr, result.stderr[-3000:]
    pages = {path.parent.name for path in site.rglob("index.html")}
    for page in (path.stem for path in (ROOT / "docs").glob("*.md") if path.stem != "index"):
        assert page in pages, f"docs/{page}.md is not in the built site"
    api = (site / "api" / "interfaces" / "index.html").read_text()
    assert "LayerPool" in api and "BuildContext" in api  # generated from the docstrings
