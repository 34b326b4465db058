"""The documentation site builds with ``mkdocs build --strict`` (every page in the nav, every link and anchor
resolves, the API reference renders from the docstrings). mkdocs comes with the dev and docs extras
(``make install``), so in CI this runs; it is skipped only where mkdocs is not installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = (
    "index",
    "quickstart",
    "deploying",
    "own-model",
    "security",
    "reproducing",
    "evaluation",
    "extending",
    "architecture",
    "api",
    "changelog",
)


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip(
        "mkdocs", reason="mkdocs is not installed (it is in the dev and docs extras: make install)"
    )
    pytest.importorskip("material", reason="mkdocs-material is not installed (dev and docs extras)")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (dev and docs extras)")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for page in PAGES:
        assert (site / ("index.html" if page == "index" else f"{page}/index.html")).is_file(), page
    api = (site / "api" / "index.html").read_text()
    for documented in ("fakegradient.key.Key", "fakegradient.protection.protect", "fakegradient.weights"):
        assert documented in api, documented
    assert "0.2.0" in (site / "changelog" / "index.html").read_text()  # CHANGELOG.md is included, not copied


def test_the_readme_is_a_front_page_under_200_lines():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    for page in PAGES[1:-1]:
        assert f"docs/{page}.md" in readme, page
    assert "pip install 'fakegradient" not in readme  # not on PyPI: installs are from a clone
