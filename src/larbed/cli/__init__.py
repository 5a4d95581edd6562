"""The ``larbed`` command line: :func:`main` (entry point), the registry in :mod:`larbed.cli.app`,
the commands in :mod:`~larbed.cli.simulate`, :mod:`~larbed.cli.determine` and :mod:`~larbed.cli.learn`."""

from .app import EXIT_USAGE, SUBCOMMANDS, build_parser, main

__all__ = ["EXIT_USAGE", "SUBCOMMANDS", "build_parser", "main"]
