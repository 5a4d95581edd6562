"""The ``larbed determine`` command: U_g and thickness from a pattern (see :mod:`larbed.determine`).

Usage::

    larbed determine SrTiO3-2 [--dose 1e5] [--seed 0] [--out DIR]
    larbed determine --pattern measured.nc [--geometry-from SrTiO3-2] [--out DIR]
    larbed determine --pattern measured.csv --geometry-from SrTiO3-2 [--out DIR]

With a preset the pattern is the preset's pseudo-experimental one (noise-free, or Poisson noise with
``--dose`` electrons per tilt) and the true U_g are known, so the table compares them (after aligning
the origin). The output folder receives ``determine_result.nc`` (fit, U_g with errors, histories),
``ug.nc`` and PNG figures, and keeps the checkpoints: rerunning the same command resumes.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from .determine import EXACT_FIT_R

__all__ = ["register", "format_ug_table"]

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add the ``determine`` subcommand."""
    p = subparsers.add_parser(
        "determine",
        help="determine U_g and thickness from a pattern (refinement against the intensities)",
        description=(
            "Determine structure factors U_g and the thickness from a LARBED pattern: symmetry "
            "from the pattern, global search (or a network start), multi-start least squares with "
            "exact gradients, standard errors. Give a PRESET (pseudo-experimental data) or --pattern."
        ),
    )
    p.add_argument("preset", nargs="?", help="preset name (see 'larbed presets')")
    p.add_argument("--pattern", metavar="FILE", help="measured pattern: netCDF (.nc) or CSV table (.csv)")
    p.add_argument("--geometry-from", metavar="PRESET",
                   help="take the geometry from this preset (default: from the netCDF file's attributes)")
    p.add_argument("--dose", type=float, help="electrons per tilt (preset: add Poisson noise)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and of the search (default 0)")
    p.add_argument("--start", choices=("search", "task2"), default="search",
                   help="start from the global search (default) or a Task 2 network prediction")
    p.add_argument("--model", choices=("ann", "cnn"), default="ann", help="network for --start task2")
    p.add_argument("--symmetry", choices=("auto", "crystal", "none"), default="auto",
                   help="tie U_g by the pattern's symmetry (auto), the crystal's, or not at all")
    p.add_argument("--search-time", type=float, default=90.0, metavar="S",
                   help="time budget of the global search [s] (default 90)")
    p.add_argument("--n-starts", type=int, default=4, help="search members refined as starts (default 4)")
    p.add_argument("--out", metavar="DIR", help="output and checkpoint folder (default determine-NAME)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def format_ug_table(result, ug_true=None) -> str:
    """Text table: reflection, U_g found ± error, true U_g (origin aligned) and the deviation."""
    labels = result.geometry.reflection_labels()
    found, err = result.ug.values, result.ug_error.values
    scale = max(float(np.max(np.abs(found))), 1e-300)
    complex_ = bool(np.max(np.abs(found.imag)) > 1e-12 * scale or np.any(err.imag != 0))
    cmp = result.compare(ug_true) if ug_true is not None else None
    exact = result.r_factor <= EXACT_FIT_R  # noise-free data fitted to round-off
    head = f"{'hkl':>10}  {'Re U found':>11} {'± σ':>9}"
    if complex_:
        head += f"  {'Im U found':>11} {'± σ':>9}"
    if cmp is not None:
        head += f"  {'Re U true':>11}" + (f" {'Im U true':>11}" if complex_ else "") + f"  {'|Δ|/|U|':>8} {'|Δ|/σ':>6}"
    lines = [head, "-" * len(head)]
    for i, lab in enumerate(labels):
        row = f"{lab:>10}  {found[i].real:11.6f} {err[i].real:9.2e}"
        if complex_:
            row += f"  {found[i].imag:11.6f} {err[i].imag:9.2e}"
        if cmp is not None:
            true = cmp.true.values[i]
            row += f"  {true.real:11.6f}" + (f" {true.imag:11.6f}" if complex_ else "")
            z = f"{cmp.z.values[i]:6.2f}" if not exact else f"{'–':>6}"
            row += f"  {cmp.relative.values[i]:8.2e} {z}"
        lines.append(row)
    if cmp is not None and exact:
        lines.append(f"(exact fit, R = {result.r_factor:.2g}: the errors σ are round-off, so |Δ|/σ is not shown)")
    return "\n".join(lines)


def _load(args):
    from . import presets
    from .geometry import Geometry

    truth = t_true = None
    if args.preset and args.pattern:
        raise ValueError("give either a PRESET or --pattern FILE, not both")
    if args.preset:
        preset = presets.load(args.preset)
        pattern = preset.simulate(dose=args.dose, seed=args.seed)
        return pattern, preset.geometry, preset.ug(), preset.thickness_nm, preset.name, args.dose
    if not args.pattern:
        raise ValueError("give a PRESET (see 'larbed presets') or --pattern FILE (.nc or .csv)")
    path = args.pattern
    if not os.path.exists(path):
        raise FileNotFoundError(f"pattern file {path!r} does not exist")
    geometry = presets.load(args.geometry_from).geometry if args.geometry_from else None
    name = os.path.splitext(os.path.basename(path))[0]
    if path.lower().endswith(".csv"):
        from .io import read_csv

        if geometry is None:
            raise ValueError("a CSV pattern needs --geometry-from PRESET (the lattice and beams)")
        pattern = read_csv(path, geometry)
    else:
        from .io import load_pattern

        pattern = load_pattern(path)
        if geometry is None:
            geometry = Geometry.from_attrs(pattern.attrs)
        if "ug" in pattern:
            from .simulation import extract_ug

            truth = extract_ug(pattern)
            t = pattern.attrs.get("thickness_nm")
            t_true = float(t) if isinstance(t, (int, float)) else None
    if "thickness" in pattern.dims:
        raise ValueError("the file holds a thickness series; determine needs one pattern")
    return pattern, geometry, truth, t_true, name, args.dose


def run(args) -> int:
    from .determine import determine

    pattern, geometry, truth, t_true, name, dose = _load(args)
    out = args.out or f"determine-{name}"
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write {out!r}: its folder {parent!r} does not exist")
    symmetry = None if args.symmetry == "none" else args.symmetry
    if args.n_starts < 0:
        raise ValueError(f"--n-starts must be >= 0, got {args.n_starts}")
    from .refinement import pattern_dose

    d = pattern_dose(pattern, dose)
    print(f"{name}: {geometry.n_beams} beams × {geometry.n_tilts} tilts, {geometry.n_reflections} U_g; "
          f"dose {'none (noise-free)' if d is None else f'{d:g} electrons per tilt'}")
    t0 = time.perf_counter()
    res = determine(pattern, geometry, start=args.start, model=args.model, seed=args.seed,
                    symmetry=symmetry, dose=dose, search_time_s=args.search_time,
                    n_starts=args.n_starts, out_dir=out, progress=not args.no_progress)
    elapsed = time.perf_counter() - t0
    print(f"symmetry: {' '.join(res.symmetry) or 'none'}")
    print(format_ug_table(res, truth))
    t_line = f"thickness: {res.thickness_nm:.3f} ± {res.thickness_error_nm:.3f} nm"
    if t_true is not None:
        t_line += f" (true {t_true:g} nm, Δ = {res.thickness_nm - t_true:+.3f} nm)"
    print(t_line)
    print(f"R = {res.r_factor:.4g}, reduced χ² = {res.chi2:.4g}, {elapsed:.1f} s")
    paths = res.save(out) + res.plot(out, ug_true=truth)
    for p in paths:
        print(f"wrote {p}")
    return 0
