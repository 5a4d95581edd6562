"""Moved: the ``determine`` and ``refine`` commands now live in :mod:`larbed.cli.determine`.

Names imported from here keep working for one release, with a ``DeprecationWarning``.
"""

from ._deprecation import moved_names

__all__: list[str] = []

__getattr__ = moved_names(__name__, {name: "larbed.cli.determine" for name in (
    "register", "format_ug_table", "run", "run_refine", "EXIT_UNTRUSTWORTHY")})
