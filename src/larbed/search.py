"""Moved: the global search and the kinematic starts now live in :mod:`larbed.determination`.

Names imported from here keep working for one release, with a ``DeprecationWarning``.
"""

from ._deprecation import moved_names

__all__: list[str] = []

__getattr__ = moved_names(__name__, {
    "global_search": "larbed.determination.search",
    "UG_BOUND": "larbed.determination.search",
    "SEARCH_STEP_NM": "larbed.determination.search",
    "MAX_POPULATION": "larbed.determination.search",
    "kinematic_starts": "larbed.determination.starts",
    "WEAK_FRACTION": "larbed.determination.starts",
    "PSEUDO_ORIGIN_RTOL": "larbed.determination.polish",
    "MAX_SIGN_GROUPS": "larbed.determination.polish",
})
