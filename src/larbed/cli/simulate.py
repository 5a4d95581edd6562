"""``larbed presets`` and ``larbed simulate``."""

from __future__ import annotations

import os
import time

import numpy as np

__all__ = ["register_presets", "register_simulate"]


def register_presets(subparsers) -> None:
    p = subparsers.add_parser(
        "presets",
        help="list the twelve thesis presets",
        description="List the twelve presets (the thesis's parameter files): beams, tilts, thickness, tilt range, voltage.",
    )
    p.set_defaults(func=_run_presets)


def _run_presets(args) -> int:
    from .. import presets

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


def register_simulate(subparsers) -> None:
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
    from .. import presets
    from ..io import save_pattern

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
        from ..plotting import plot_pattern, plot_thickness_series

        fig = plot_thickness_series(ds, log=args.log) if series else plot_pattern(ds, log=args.log)
        fig.savefig(args.png, dpi=120)
        print(f"wrote {args.png}")
    return 0


