"""Sphinx configuration for the larbed documentation (``nox -s docs``: warnings are errors)."""

from __future__ import annotations

import importlib.metadata
import os
import re

# Numba caches compiled kernels beside the sources unless told otherwise; docs builds stay clean.
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(__file__), "_build", "numba"))

project = "larbed"
author = "larbed developers"
copyright = "larbed developers"
release = importlib.metadata.version("larbed")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
]

exclude_patterns = ["_build", "dev", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
html_static_path = ["_static"]
html_theme = "alabaster"
html_title = f"larbed {release}"

# autodoc / numpydoc
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"  # numpydoc's Parameters sections carry types and units
autosummary_generate = False
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()

# No network at build time: cross-references to other projects' docs stay unresolved, not fetched.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

nitpicky = False


# Physics docstrings write absolute values as |g| or |U_g|, which reStructuredText would read as
# substitution references. Escape bars in prose (never inside ``literals``, `roles`, doctest lines
# or grid-table rows) after numpydoc has turned the sections into reST.
_BACKTICKED = re.compile(r"(``.+?``|`[^`]*`)")


def _escape_bars(line: str) -> str:
    stripped = line.strip()
    if stripped.startswith((">>>", "...")) or (
        stripped.startswith("|") and stripped.endswith("|") and stripped.count("|") >= 3
    ):
        return line
    parts = _BACKTICKED.split(line)
    for i in range(0, len(parts), 2):  # even parts are outside backticks
        parts[i] = re.sub(r"(?<!\\)\|", r"\\|", parts[i])
    return "".join(parts)


def _escape_absolute_values(app, what, name, obj, options, lines):
    in_doctest = False
    for i, line in enumerate(lines):
        if line.strip().startswith(">>>"):
            in_doctest = True
        elif not line.strip():
            in_doctest = False
        if not in_doctest:
            lines[i] = _escape_bars(line)


def setup(app):
    app.connect("autodoc-process-docstring", _escape_absolute_values, priority=600)
