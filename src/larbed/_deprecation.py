"""Names that moved keep working for one release, with a ``DeprecationWarning`` naming the new place.

A module whose names moved calls :func:`moved_names` and assigns the result to its ``__getattr__``
(PEP 562), so the old import path still resolves, lazily, to the object at its new home.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping

__all__ = ["moved_names"]


def moved_names(module: str, moved: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` that forwards ``moved`` names: ``name -> 'package.module'`` (same
    name there) or ``'package.module:new_name'``."""

    def __getattr__(name: str):
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target, _, new = moved[name].partition(":")
        new = new or name
        warnings.warn(
            f"{module}.{name} has moved to {target}.{new}; the old name works until the next "
            "release (see CHANGELOG.md)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(target), new)

    __getattr__.moved = dict(moved)  # type: ignore[attr-defined]  (what moved where: for tests, docs)
    return __getattr__
