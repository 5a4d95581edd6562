"""The ``larbed`` command line.

Subcommands are added by registration functions listed in :data:`SUBCOMMANDS`. Each entry is a
callable ``register(subparsers)`` or a ``"module:function"`` string imported when the parser is
built (so a module that needs TensorFlow must import it inside its command function, not at module
level). A registration function adds one parser and sets its command with
``parser.set_defaults(func=run)``; ``run(args)`` returns an exit code (0 or None for success).
To add a subcommand, append one entry, e.g. ``"larbed.cli.learn:register"``. The commands live
in :mod:`larbed.cli.simulate` (presets, simulate), :mod:`larbed.cli.determine` (determine,
refine) and :mod:`larbed.cli.learn` (task1, task2).

Errors the user can fix (unknown preset, bad values, unreadable files) are printed to stderr as
one line ``larbed: error: ...`` with exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["EXIT_USAGE", "SUBCOMMANDS", "build_parser", "main"]

logger = logging.getLogger(__name__)

#: Exit code for errors in the command's input (argparse uses the same).
EXIT_USAGE = 2


# ----------------------------------------------------------------------------- registry
#: Registration functions (or "module:function" strings) of the subcommands, in help order.
SUBCOMMANDS: list[Callable | str] = [
    "larbed.cli.simulate:register_presets",
    "larbed.cli.simulate:register_simulate",
    "larbed.cli.learn:register",
    "larbed.cli.determine:register",
]


def _resolve(entry: Callable | str) -> Callable:
    if callable(entry):
        return entry
    module_name, _, func_name = str(entry).partition(":")
    if not module_name or not func_name:
        raise ValueError(f"subcommand entry {entry!r} must be a callable or 'module:function'")
    return getattr(importlib.import_module(module_name), func_name)


def build_parser(subcommands: Sequence[Callable | str] | None = None) -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand.

    An entry whose module cannot be imported (e.g. an optional extra that is not installed) is
    left out with a warning in the log; the other subcommands still work.
    """
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="larbed",
        description="Bloch-wave simulation and structure-factor determination for LARBED.",
    )
    parser.add_argument("--version", action="version", version=f"larbed {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for entry in SUBCOMMANDS if subcommands is None else subcommands:
        try:
            register = _resolve(entry)
        except ImportError as exc:
            logger.warning("subcommand %r unavailable: %s", entry, exc)
            continue
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose > 1 else logging.INFO,
            format="%(name)s: %(message)s",
        )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        code = func(args)
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit either
        return 1
    except (ValueError, TypeError, OSError) as exc:  # OSError: permissions, full disk, …
        print(f"larbed: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("larbed: interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)
