"""Moved: the ``task1`` and ``task2`` commands now live in :mod:`larbed.cli.learn`.

Names imported from here keep working for one release, with a ``DeprecationWarning``.
"""

from .._deprecation import moved_names

__all__: list[str] = []

__getattr__ = moved_names(__name__, {name: "larbed.cli.learn" for name in (
    "register", "parse_weights", "format_table")})
