"""Sphinx configuration for the pytest-nozombies documentation."""

from __future__ import annotations

import re
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
# Read the version from the source rather than importing the package, so the
# docs build in any environment, installed or not.
_INIT = (_ROOT / "pytest_nozombies" / "__init__.py").read_text()
_match = re.search(r'^__version__ = "([^"]+)"', _INIT, re.MULTILINE)

project = "pytest-nozombies"
author = "pytest-nozombies developers"
copyright = "pytest-nozombies developers"
release = _match.group(1) if _match else "unknown"
version = release

extensions = ["myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# examples/ holds test files and their output, shown with literalinclude.
exclude_patterns = ["_build", "examples"]

# CHANGELOG.md's headings are linkable within the changelog page.
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"pytest-nozombies {release}"
