"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s docs``, ``nox -s benchmarks``.

Each session builds its own virtual environment under ``.nox/`` with the Python that runs nox.
``nox -s typecheck`` runs mypy with the lenient configuration in ``pyproject.toml``.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "tests", "docs"]
nox.options.reuse_existing_virtualenvs = True

def _numba_cache(session: nox.Session) -> None:
    """Keep Numba's on-disk kernel cache inside the session's (writable) environment."""
    session.env["NUMBA_CACHE_DIR"] = os.path.join(session.virtualenv.location, "numba-cache")


@nox.session
def tests(session: nox.Session) -> None:
    """The full test suite (slow tests and doctests included), deterministic hypothesis profile."""
    session.install("-e", ".[learn,test]")
    _numba_cache(session)
    session.env["HYPOTHESIS_PROFILE"] = "ci"
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on the package, tests, benchmarks, docs scripts and this file."""
    session.install("ruff")
    session.run("ruff", "check", ".", *session.posargs)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the public modules (configuration in pyproject.toml)."""
    session.install("-e", ".", "mypy")
    session.run("mypy", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML docs; any Sphinx warning (numpydoc included) is an error."""
    session.install("-e", ".[docs]")
    _numba_cache(session)
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html",
        *session.posargs,
    )


@nox.session
def benchmarks(session: nox.Session) -> None:
    """Speed benchmarks (pytest-benchmark): larbed against the NumPy reference in one run."""
    session.install("-e", ".[test]")
    _numba_cache(session)
    session.run("python", "-m", "pytest", "benchmarks", "--benchmark-only", *session.posargs)
