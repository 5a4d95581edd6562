"""The ``larbed`` command line.

Subcommands are added by registration functions listed in :data:`_SUBCOMMANDS`. Each entry is a
callable ``register(subparsers)`` or a ``"module:function"`` string imported when the parser is
built (so a module that needs TensorFlow must import it inside its command function, not at module
level). A registration function adds one parser and sets its command with
``parser.set_defaults(func=run)``; ``run(args)`` returns an exit code (0 or None for success).
To add a subcommand, append one entry, e.g. ``"larbed.learn.cli:register"``.

Errors the user can fix (unknown preset, bad values, unreadable files) are printed to stderr as
one line ``larbed: error: ...`` with exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["main", "build_parser", "EXIT_USAGE"]

logger = logging.getLogger(__name__)

#: Exit code for errors in the command's input (argparse uses the same).
EXIT_USAGE = 2


# ----------------------------------------------------------------------------- larbed presets
def _register_presets(subparsers) -> None:
    p = subparsers.add_parser(
        "presets",
        help="list the twelve thesis presets",
        description="List the twelve presets (the thesis's parameter files): beams, tilts, thickness, tilt range, voltage.",
    )
    p.set_defaults(func=_run_presets)


def _run_presets(args) -> int:
    from . import presets

    header = f"{'name':<10} {'crystal':<7} {'beams':>5} {'tilts':>5} {'t [nm]':>6} "
    header += f"{'range [mrad]':>12} {'kV':>4}  {'zone axis'}"
    print(header)
    print("-" * len(header))
    for name in presets.names():
        p = presets.load(name)
        g = p.geometry
        zone = "[" + "".join(str(x) for x in g.zone_axis) + "]"
        print(
            f"{p.name:<10} {p.crystal.name:<7} {g.n_beams:>5} {g.n_tilts:>5} {p.thickness_nm:>6g} "
            f"{g.tilt_range_mrad:>12g} {g.voltage_kv:>4g}  {zone}"
        )
    return 0


# ----------------------------------------------------------------------------- larbed simulate
def _register_simulate(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulate the pattern of a preset",
        description=(
            "Simulate a preset's LARBED pattern (ComputeUg + Bloch waves); write it as netCDF "
            "and/or a PNG picture and print a summary."
        ),
    )
    p.add_argument("preset", help="preset name (see 'larbed presets'), case-insensitive")
    p.add_argument("-o", "--output", metavar="OUT.nc", help="write the pattern to this netCDF file")
    p.add_argument("--png", metavar="OUT.png", help="write a picture of the pattern")
    p.add_argument(
        "--thickness",
        type=float,
        nargs="+",
        metavar="NM",
        help="thickness(es) [nm]; several give a thickness series (default: the preset's)",
    )
    p.add_argument("--dose", type=float, help="electrons per tilt: add Poisson noise")
    p.add_argument("--seed", type=int, help="seed of the noise")
    p.add_argument("--absorption", type=float, metavar="KAPPA", help="proportional absorption κ")
    p.add_argument("--log", action="store_true", help="logarithmic colour scale in the picture")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_simulate)


def _run_simulate(args) -> int:
    from . import presets
    from .io import save_pattern

    preset = presets.load(args.preset)
    for path in (args.output, args.png):  # fail before the work, not after it
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise FileNotFoundError(f"cannot write {path!r}: its folder does not exist")
    thickness = preset.thickness_nm if args.thickness is None else args.thickness
    if args.thickness is not None and len(args.thickness) == 1:
        thickness = args.thickness[0]
    series = np.ndim(thickness) > 0
    start = time.perf_counter()
    ds = preset.simulate(
        dose=args.dose,
        seed=args.seed,
        thickness_nm=thickness,
        absorption=args.absorption,
        progress=series and not args.no_progress,
    )
    elapsed = time.perf_counter() - start
    plural = {"thickness": "thicknesses", "tilt": "tilts", "beam": "beams"}
    shape = " × ".join(f"{ds.intensity.sizes[d]} {plural[d]}" for d in ds.intensity.dims)
    print(f"{preset.name}: {shape} ({ds.attrs['eigen_path']} path) in {elapsed:.3f} s")
    total = ds.intensity_noise_free if "intensity_noise_free" in ds else ds.intensity
    sums = total.sum("beam").values
    label = "Σ I over beams (noise-free)" if args.dose else "Σ I over beams"
    expect = "< 1 (absorption)" if args.absorption else "1"
    print(f"{label}: min {sums.min():.12f}, max {sums.max():.12f} (expected {expect})")
    if args.output:
        save_pattern(ds, args.output)
        print(f"wrote {args.output}")
    if args.png:
        from .plotting import plot_pattern, plot_thickness_series

        fig = plot_thickness_series(ds, log=args.log) if series else plot_pattern(ds, log=args.log)
        fig.savefig(args.png, dpi=120)
        print(f"wrote {args.png}")
    return 0


# ----------------------------------------------------------------------------- registry
#: Registration functions (or "module:function" strings) of the subcommands, in help order.
_SUBCOMMANDS: list[Callable | str] = [
    _register_presets,
    _register_simulate,
    "larbed.learn.cli:register",
    "larbed.refinement_cli:register",
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
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="larbed",
        description="Bloch-wave simulation and structure-factor determination for LARBED.",
    )
    parser.add_argument("--version", action="version", version=f"larbed {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for entry in _SUBCOMMANDS if subcommands is None else subcommands:
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
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"larbed: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("larbed: interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
