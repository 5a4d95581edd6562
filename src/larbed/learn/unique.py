"""Moved: makeUniqueUgVector now lives in :mod:`larbed.origin` (with every origin operation).

``larbed.learn.make_unique_ug_vector`` stays; names imported from this module keep working for
one release, with a ``DeprecationWarning``.
"""

from .._deprecation import moved_names

__all__: list[str] = []

__getattr__ = moved_names(__name__, {name: "larbed.origin" for name in (
    "make_unique_ug_vector", "choose_reference_reflections", "REFERENCE_REL_THRESHOLD")})
