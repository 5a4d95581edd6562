"""The ``larbed determine`` and ``larbed refine`` commands (see :mod:`larbed.determination`).

Usage::

    larbed determine SrTiO3-2 [--dose 1e5] [--seed 0] [--out DIR]
    larbed refine --pattern data.csv --crystal SrTiO3 --voltage 120 --zone-axis 0 0 1 \
        --measurement scale=per_tilt,background=per_beam,tilt_map=affine --holdout 0.1
    larbed determine --pattern measured.nc [--geometry-from SrTiO3-2] [--out DIR]
    larbed determine --pattern counts.csv --counts --geometry-from SrTiO3-2 [--out DIR]
    larbed determine ZnO-1 --composition Zn2O2 [--space-group P63mc]
    larbed refine SrTiO3-2 [--thickness 30] [--out DIR]
    larbed refine SrTiO3-2 --structure [--free-ug 2]   # the crystal: B, coordinates, t

With a preset the pattern is the preset's pseudo-experimental one (noise-free, or Poisson noise with
``--dose`` electrons per tilt) and the true U_g are known, so the table compares them (after aligning
the origin). The output folder receives ``determine_result.nc`` (or ``refine_result.nc``: fit, U_g
with errors, histories, provenance), ``ug.nc`` and PNG figures, and keeps the checkpoints:
rerunning the same command resumes, and a finished run is not repeated.

Exit status: 0 for a trustworthy answer (also when parameter combinations the data do not
determine were fixed), 3 when the fit raised a warning of kind 'bound', 'chi2' or 'r_factor' (see
:mod:`larbed.trust`; the warnings are printed), 2 for bad input.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from ..determination.polish import EXACT_FIT_R

__all__ = ["EXIT_UNTRUSTWORTHY", "format_measurement", "format_ug_table", "parse_measurement",
           "register"]

logger = logging.getLogger(__name__)

#: Exit status of a run whose answer should not be trusted (the warnings say why).
EXIT_UNTRUSTWORTHY = 3


def _common_inputs(p) -> None:
    p.add_argument("preset", nargs="?", help="preset name (see 'larbed presets')")
    p.add_argument("--pattern", metavar="FILE",
                   help="measured pattern: netCDF (.nc) or CSV table (.csv, columns h,k,l,"
                        "tilt_x_mrad,tilt_y_mrad,intensity; see the README)")
    p.add_argument("--geometry-from", metavar="PRESET",
                   help="take the geometry from this preset (default: from the netCDF file's attributes)")
    p.add_argument("--crystal", metavar="NAME|CIF",
                   help="with a CSV pattern: the crystal (built-in SrTiO3 or ZnO, or a CIF file); the "
                        "geometry is built from the file's tilts and beams (with --voltage, --zone-axis)")
    p.add_argument("--voltage", type=float, metavar="KV", help="accelerating voltage [kV] (with --crystal)")
    p.add_argument("--zone-axis", type=int, nargs=3, metavar=("U", "V", "W"),
                   help="zone axis [uvw] (with --crystal)")
    p.add_argument("--n-beams", type=int, metavar="N",
                   help="beams to simulate (default: the fewest that hold the file's beams)")
    p.add_argument("--debye-waller", action="store_true",
                   help="built-in crystal with its Debye-Waller factors (SPEC B values)")
    p.add_argument("--background-subtracted", action="store_true",
                   help="the data had a background subtracted: negative values are allowed")
    p.add_argument("--measurement", metavar="SPEC",
                   help="measurement model refined with U_g, e.g. 'scale=per_tilt,background=per_beam,"
                        "absorption=proportional,tilt_map=affine' (scale: none|global|per_tilt; "
                        "background: none|flat|per_beam|smooth; absorption: none|proportional; "
                        "tilt_map: none|shift|affine; tilt_spread: none|disc, a fitted disc of "
                        "incident directions per tilt, 7x the cost)")
    p.add_argument("--holdout", type=float, default=0.0, metavar="F",
                   help="fraction of the tilts left out of the fit, for R_free (default 0)")
    p.add_argument("--weights", choices=("auto", "poisson", "variance", "none"), default="auto",
                   help="least-squares weights (default auto: Poisson when a dose is known)")
    p.add_argument("--counts", action="store_true",
                   help="the file holds detector counts: normalise each tilt by its total and use "
                        "the totals as the per-tilt dose (Poisson weights)")
    p.add_argument("--dose", type=float,
                   help="electrons per tilt (preset: add Poisson noise; file: Poisson weights)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and of the search (default 0)")
    p.add_argument("--thickness-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="thickness range of the scans [nm] (default: 5-100 nm, widened to 2-250 nm "
                        "when the fit does not reach the solution)")
    p.add_argument("--chi2-max", type=float, default=2.0,
                   help="flag a reduced χ² above this when the dose is known (default 2)")
    p.add_argument("--r-noise-factor", type=float, default=3.0,
                   help="flag R above this multiple of the Poisson noise floor (default 3)")
    p.add_argument("--r-max", type=float, default=1e-3,
                   help="without a dose, flag R above this (default 1e-3: noise-free data)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="kernel threads (default: LARBED_NUM_THREADS, else all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers) -> None:
    """Add the ``determine`` and ``refine`` subcommands."""
    p = subparsers.add_parser(
        "determine",
        help="determine U_g and thickness from a pattern (refinement against the intensities)",
        description=(
            "Determine structure factors U_g and the thickness from a LARBED pattern: symmetry "
            "from the pattern, kinematic starts and a global search (or a network start), "
            "multi-start least squares with exact gradients, standard errors. Give a PRESET "
            "(pseudo-experimental data) or --pattern. Exit status 3 when the answer should not be "
            "trusted (the warnings say why)."
        ),
    )
    _common_inputs(p)
    p.add_argument("--start", choices=("search", "task2"), default="search",
                   help="start from the global search (default) or a Task 2 network prediction")
    p.add_argument("--model", choices=("ann", "cnn"), default="ann", help="network for --start task2")
    p.add_argument("--symmetry", choices=("auto", "crystal", "none"), default="auto",
                   help="tie U_g by the pattern's symmetry (auto), the crystal's, or not at all")
    p.add_argument("--search-time", type=float, default=90.0, metavar="S",
                   help="time budget of the global search [s] (default 90)")
    p.add_argument("--n-starts", type=int, default=4, help="search members refined as starts (default 4)")
    p.add_argument("--ug-bound", type=float, metavar="U",
                   help="search bound ±U of Re/Im U_g [1/Å²] (default 0.1, or 1.4 × the largest "
                        "independent-atom |U_g| of heavy crystals)")
    p.add_argument("--composition", metavar="FORMULA",
                   help="atoms per cell, e.g. Zn2O2: find the structure first (its sites in the "
                        "space group) and start the free U_g from it; writes structure.cif")
    p.add_argument("--space-group", metavar="NAME",
                   help="space group of the --composition search (default: the crystal's)")
    p.add_argument("--out", metavar="DIR", help="output and checkpoint folder (default determine-NAME)")
    p.set_defaults(func=run)

    p = subparsers.add_parser(
        "refine",
        help="refine U_g and thickness from the crystal's computed U_g",
        description=(
            "Least-squares refinement of U_g and the thickness against a pattern, starting from the "
            "U_g computed from the geometry's crystal (independent atoms) and a thickness scan. "
            "Exit status 3 when the answer should not be trusted."
        ),
    )
    _common_inputs(p)
    p.add_argument("--thickness", type=float, metavar="NM",
                   help="starting thickness [nm] (default: the best of a scan over the range)")
    p.add_argument("--symmetry", choices=("crystal", "auto", "none"), default="crystal",
                   help="tie U_g by the crystal's symmetry (default), the pattern's, or not at all")
    p.add_argument("--absorption", type=float, metavar="KAPPA",
                   help="proportional absorption κ (start value with --refine-absorption)")
    p.add_argument("--refine-absorption", action="store_true", help="refine κ too")
    p.add_argument("--max-iter", type=int, default=100, help="iterations per pass (default 100)")
    p.add_argument("--structure", action="store_true",
                   help="refine the crystal (larbed.refine_structure: every coordinate the zone axis "
                        "sees, one B per site, t, the measurement model) instead of free U_g; writes "
                        "structure.cif")
    p.add_argument("--free-ug", metavar="N|HKL;HKL",
                   help="with --structure: U_g free on top of the atoms, the N lowest shells or "
                        "reflections such as '1,1,0;2,0,0'")
    p.add_argument("--holz-check", action="store_true",
                   help="after the fit, how much higher-order Laue zone beams would change the "
                        "pattern at the refined thickness (larbed.holz.holz_effect)")
    p.add_argument("--out", metavar="DIR", help="output and checkpoint folder (default refine-NAME)")
    p.set_defaults(func=run_refine)


def format_ug_table(result, ug_true=None) -> str:
    """Text table: reflection, U_g found ± error, true U_g (origin aligned) and the deviation."""
    labels = result.geometry.reflection_labels()
    found, err = result.ug.values, result.ug_error.values
    scale = max(float(np.max(np.abs(found))), 1e-300)
    complex_ = bool(np.max(np.abs(found.imag)) > 1e-12 * scale or np.any(err.imag != 0))
    cmp = result.compare(ug_true) if ug_true is not None and hasattr(result, "compare") else None
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


def parse_measurement(spec: str | None):
    """A :class:`larbed.Measurement` from ``'scale=per_tilt,background=flat,...'`` (None for None)."""
    from ..measurement import FORM_NAMES, Measurement

    if spec is None:
        return None
    kwargs = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in FORM_NAMES:
            raise ValueError(f"--measurement: {part!r} is not key=value with key "
                             f"{', '.join(FORM_NAMES)}")
        kwargs[key.strip()] = value.strip()
    return Measurement(**kwargs)


def _crystal(spec: str, debye_waller: bool):
    from ..crystal import Crystal

    if os.path.exists(spec):
        return Crystal.from_cif(spec)
    try:
        return Crystal.builtin(spec, debye_waller=debye_waller)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"--crystal {spec!r} is neither a CIF file nor a built-in crystal "
                         f"(SrTiO3, ZnO): {exc}") from exc


def format_measurement(m) -> str:
    """Text lines of a refined measurement model (values ± errors)."""
    lines = ["measurement model: " + ", ".join(f"{k[:-5]}={v}" for k, v in m.attrs.items()
                                               if k.endswith("_form"))]
    for name in ("scale", "background", "absorption", "tilt_matrix", "tilt_offset_mrad",
                 "tilt_spread_mrad"):
        if name not in m:
            continue
        val = np.atleast_1d(m[name].values).ravel()
        err = np.atleast_1d(m[f"{name}_error"].values).ravel() if f"{name}_error" in m else None
        if val.size > 6:
            lines.append(f"  {name}: {val.size} values, mean {np.nanmean(val):.4g} "
                         f"(min {np.nanmin(val):.4g}, max {np.nanmax(val):.4g})")
            continue
        text = ", ".join(f"{v:.5g}" + ("" if err is None else f" ± {e:.2g}")
                         for v, e in zip(val, err if err is not None else val, strict=True))
        lines.append(f"  {name}: {text}")
    return "\n".join(lines)


def _load(args):
    """(pattern, geometry, true U_g or None, true t or None, name, dose) from the arguments."""
    from .. import presets
    from ..geometry import Geometry

    truth = t_true = None
    if args.preset and args.pattern:
        raise ValueError("give either a PRESET or --pattern FILE, not both")
    if args.preset:
        if args.counts:
            raise ValueError("--counts reads a file of counts; a preset's pattern is simulated")
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
    if args.crystal is not None:
        if geometry is not None:
            raise ValueError("give --geometry-from or --crystal, not both")
        if args.voltage is None or args.zone_axis is None:
            raise ValueError("--crystal needs --voltage KV and --zone-axis U V W")
        if not path.lower().endswith(".csv"):
            raise ValueError("--crystal builds the geometry from a CSV table; a netCDF file "
                             "records its own geometry")
        geometry = Geometry.from_csv(path, _crystal(args.crystal, args.debye_waller),
                                     voltage_kv=args.voltage, zone_axis=tuple(args.zone_axis),
                                     n_beams=args.n_beams)
    if path.lower().endswith(".csv"):
        from ..io import read_csv

        if geometry is None:
            raise ValueError("a CSV pattern needs --crystal NAME|CIF --voltage KV --zone-axis U V W "
                             "(or --geometry-from PRESET)")
        pattern = read_csv(path, geometry, counts=args.counts,
                           background_subtracted=args.background_subtracted)
    else:
        from ..io import load_pattern

        pattern = load_pattern(path, counts=args.counts)
        if geometry is None:
            geometry = Geometry.from_attrs(pattern.attrs)
        if "ug" in pattern:
            from ..schema import extract_ug

            truth = extract_ug(pattern)
            t = pattern.attrs.get("thickness_nm")
            t_true = float(t) if isinstance(t, (int, float)) else None
    if "thickness" in pattern.dims:
        raise ValueError("the file holds a thickness series; one pattern is needed")
    return pattern, geometry, truth, t_true, name, args.dose


def _prepare(args, default_prefix: str):
    """Inputs, checked output folder and thread setting shared by both commands."""
    from .._checkpoint import check_writable
    from ..schema import pattern_dose
    from ..threads import set_num_threads

    if args.threads is not None:
        set_num_threads(args.threads)
    pattern, geometry, truth, t_true, name, dose = _load(args)
    out = args.out or f"{default_prefix}-{name}"
    check_writable(out)  # one-line error before any work
    d = pattern_dose(pattern, dose, geometry.n_tilts)
    if d is None:
        dose_text = "none (taken as noise-free)"
    elif np.ndim(d):
        dose_text = f"per tilt, median {np.median(d):g} electrons"
    else:
        dose_text = f"{d:g} electrons per tilt"
    print(f"{name}: {geometry.n_beams} beams × {geometry.n_tilts} tilts, {geometry.n_reflections} U_g; "
          f"dose {dose_text}")
    return pattern, geometry, truth, t_true, name, dose, out


def _report(res, truth, t_true, elapsed: float, out: str, paths: list[str]) -> int:
    print(format_ug_table(res, truth))
    t_line = f"thickness: {res.thickness_nm:.3f} ± {res.thickness_error_nm:.3f} nm"
    if t_true is not None:
        t_line += f" (true {t_true:g} nm, Δ = {res.thickness_nm - t_true:+.3f} nm)"
    print(t_line)
    free = f", R_free = {res.r_free:.4g} ({res.holdout_tilts.size} tilts held out)" \
        if np.isfinite(res.r_free) else ""
    print(f"R = {res.r_factor:.4g}{free}, reduced χ² = {res.chi2:.4g}, {elapsed:.1f} s")
    if res.measurement is not None:
        print(format_measurement(res.measurement))
    for p in paths:
        print(f"wrote {p}")
    for w in res.warnings:
        print(f"warning ({getattr(w, 'kind', '?')}): {w}")
    if not res.trustworthy:
        print("the answer should not be trusted (see the warnings above); exit status "
              f"{EXIT_UNTRUSTWORTHY}")
        return EXIT_UNTRUSTWORTHY
    return 0


def run(args) -> int:
    from .._checkpoint import folder_lock
    from ..determination import determine

    pattern, geometry, truth, t_true, name, dose, out = _prepare(args, "determine")
    symmetry = None if args.symmetry == "none" else args.symmetry
    if args.n_starts < 0:
        raise ValueError(f"--n-starts must be >= 0, got {args.n_starts}")
    composition = None
    if args.composition:
        from ..structure.composition import parse_composition

        composition = parse_composition(args.composition)
    elif args.space_group:
        raise ValueError("--space-group is the space group of the --composition search; give "
                         "--composition too")
    space_group = args.space_group
    if space_group is not None and space_group.isdigit():
        space_group = int(space_group)
    t0 = time.perf_counter()
    with folder_lock(out, "larbed determine"):
        res = determine(pattern, geometry, start=args.start, model=args.model, seed=args.seed,
                        composition=composition, space_group=space_group,
                        symmetry=symmetry, dose=dose, search_time_s=args.search_time,
                        n_starts=args.n_starts, out_dir=out, progress=not args.no_progress,
                        thickness_range_nm=args.thickness_range, chi2_max=args.chi2_max,
                        r_noise_factor=args.r_noise_factor, r_max=args.r_max,
                        measurement=parse_measurement(args.measurement), holdout=args.holdout,
                        weights=args.weights, ug_bound=args.ug_bound)
        elapsed = time.perf_counter() - t0
        print(f"symmetry: {' '.join(res.symmetry) or 'none'}")
        paths = res.save(out) + res.plot(out, ug_true=truth) + _measurement_figures(res, out)
        if res.structure is not None:
            _print_structure(res.structure)
            paths.append(res.structure.to_cif(os.path.join(out, "structure.cif")))
    return _report(res, truth, t_true, elapsed, out, paths)


def _print_structure(structure) -> None:
    """A refined structure (a composition start, ``refine --structure``): sites and parameters."""
    group = structure.crystal.space_group
    print(f"structure ({group.name if group is not None else 'P1'}, R = {structure.r_factor:.4g}):")
    for site in structure.crystal.sites:
        atom = structure.crystal.atoms[site.atoms[0]]
        pos = " ".join(f"{v:.4f}" for v in atom.position)
        print(f"  {site.label:>6} {site.symbol:>2} ×{site.multiplicity}  ({pos})  B = {atom.b_iso:.3f} Å²")
    for label, why in structure.fixed.items():
        print(f"  {label}: not determined ({why})")


def run_refine(args) -> int:
    from .._checkpoint import folder_lock
    from ..refinement import refine, thickness_scan
    from ..structure_factors import compute_ug

    pattern, geometry, truth, t_true, name, dose, out = _prepare(args, "refine")
    symmetry = None if args.symmetry == "none" else args.symmetry
    measurement = parse_measurement(args.measurement)
    ug0 = compute_ug(geometry.crystal, geometry)
    t0 = time.perf_counter()
    with folder_lock(out, "larbed refine"):
        thickness = args.thickness
        if thickness is None:
            lo, hi = args.thickness_range or (5.0, 100.0)
            if not 0 < lo < hi:
                raise ValueError(f"--thickness-range must be LOW HIGH with 0 < LOW < HIGH [nm], "
                                 f"got {lo:g} {hi:g}")
            scan = thickness_scan(pattern, geometry, ug0, np.arange(lo, hi + 1e-9, 0.25),
                                  absorption=args.absorption, dose=dose, measurement=measurement)
            thickness = scan.attrs["best_thickness_nm"]
            print(f"thickness scan {lo:g}-{hi:g} nm with the computed U_g: best {thickness:g} nm "
                  f"(R = {scan.attrs['best_value']:.4g})")
        if args.structure:
            return _run_refine_structure(args, pattern, geometry, thickness, dose, measurement,
                                         truth, t_true, out, t0)
        res = refine(pattern, geometry, ug0, thickness, symmetry=symmetry, dose=dose,
                     absorption=args.absorption, refine_absorption=args.refine_absorption,
                     max_iter=args.max_iter, progress=not args.no_progress,
                     measurement=measurement, holdout=args.holdout, seed=args.seed,
                     weights=args.weights, real=_real_start(ug0),
                     chi2_max=args.chi2_max, r_noise_factor=args.r_noise_factor, r_max=args.r_max,
                     checkpoint=os.path.join(out, "refine_checkpoint.json"))
        elapsed = time.perf_counter() - t0
        paths = _save_refinement(res, out, pattern)
    if args.holz_check:
        _holz_check(res, geometry)
    return _report(res, truth, t_true, elapsed, out, paths)


def _holz_check(res, geometry) -> None:
    """Print how much FOLZ beams would change the refined pattern (at the refined tilts)."""
    from ..holz import holz_effect

    m = res.measurement
    tilts = None if m is None or "tilt_matrix" not in m else (
        geometry.tilt_mrad @ m.tilt_matrix.values.T + m.tilt_offset_mrad.values)
    e = holz_effect(geometry, res.ug, res.thickness_nm, tilts_mrad=tilts)
    verdict = ("negligible beside R" if e.changed_fraction < 0.1 * res.r_factor else
               "not negligible: larbed's model has ZOLZ beams only")
    print(f"HOLZ check: {e.holz_beams} FOLZ beams per tilt change {100 * e.changed_fraction:.2f} % "
          f"of the intensity (the deepest HOLZ line takes 000 to {e.min_ratio_000:.3f} of its "
          f"ZOLZ value) at t = {res.thickness_nm:.2f} nm: {verdict} (R = {res.r_factor:.3g})")


def parse_free_ug(spec: str | None):
    """``--free-ug``: None, a number of shells, or reflections 'h,k,l;h,k,l'."""
    if spec is None:
        return None
    spec = spec.strip()
    if spec.isdigit():
        return int(spec)
    out = []
    for item in spec.split(";"):
        parts = item.replace(" ", "").split(",")
        if len(parts) != 3 or not all(p.lstrip("-").isdigit() for p in parts):
            raise ValueError(f"--free-ug: {item!r} is not a reflection h,k,l (or give a number of "
                             "shells)")
        out.append(tuple(int(p) for p in parts))
    return out


def _run_refine_structure(args, pattern, geometry, thickness, dose, measurement, truth, t_true,
                          out: str, t0: float) -> int:
    """``larbed refine --structure``: refine_structure from the geometry's crystal."""
    import dataclasses

    from ..structure import refine_structure

    if args.weights == "variance":
        raise ValueError("--weights variance is not available with --structure; use auto, "
                         "poisson or none")
    res = refine_structure(pattern, geometry, geometry.crystal, thickness,
                           free_ug=parse_free_ug(args.free_ug), measurement=measurement,
                           weights=args.weights, dose=dose, absorption=args.absorption,
                           refine_absorption=args.refine_absorption, max_iter=args.max_iter,
                           holdout=args.holdout, seed=args.seed, chi2_max=args.chi2_max,
                           r_noise_factor=args.r_noise_factor, r_max=args.r_max,
                           progress=not args.no_progress)
    elapsed = time.perf_counter() - t0
    _print_structure(res)
    for label in res.labels:
        value, error = res.value(label)
        print(f"  {label} = {value:.6g} ± {error:.2g}")
    paths = _save_refinement(res.refinement, out, pattern)
    paths.append(res.to_cif(os.path.join(out, "structure.cif")))
    # the structure's warnings (bounds of B, undetermined parameters) decide the exit status
    return _report(dataclasses.replace(res.refinement, warnings=res.warnings), truth, t_true,
                   elapsed, out, paths)


def _real_start(ug0) -> bool:
    """Refine real U_g when the computed ones are real (a centrosymmetric projection)."""
    vals = ug0.values
    return bool(np.max(np.abs(vals.imag), initial=0.0) <= 1e-12 * max(np.max(np.abs(vals)), 1e-300))


def _save_refinement(res, out: str, pattern) -> list[str]:
    """``refine_result.nc`` and ``ug.nc`` with provenance, plus the figures."""
    import datetime
    import json

    from .. import __version__
    from ..io import save_pattern, save_ug, source_provenance
    from ..plotting import compare_patterns, plot_refinement_history

    prov = {"larbed_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **source_provenance(pattern), "weights_used": res.weights}
    paths = [os.path.join(out, "refine_result.nc"), os.path.join(out, "ug.nc")]
    ds = res.to_dataset()
    ds.attrs.update({"provenance": json.dumps(prov), **prov})
    save_pattern(ds, paths[0])
    ug = res.ug.copy()
    ug.attrs.update({"thickness_nm": res.thickness_nm, "r_factor": res.r_factor, **prov})
    save_ug(ug, paths[1])
    fit = res.fit
    fig = compare_patterns(fit[["observed"]].rename({"observed": "intensity"}), fit,
                           geometry=res.geometry)
    paths.append(os.path.join(out, "pattern_vs_fit.png"))
    fig.savefig(paths[-1], dpi=110)
    fig = plot_refinement_history(res.history)
    paths.append(os.path.join(out, "refinement_history.png"))
    fig.savefig(paths[-1], dpi=110)
    paths += _measurement_figures(res, out)
    return paths


def _measurement_figures(res, out: str) -> list[str]:
    """Data/fit/residual per beam, and — when refined — background against |g| and the tilt map."""
    from ..plotting import plot_background, plot_fit_images, plot_tilt_map

    figs = [("fit_per_beam.png", plot_fit_images(res, beams=6))]
    m = res.measurement
    if m is not None and "background" in m:
        figs.append(("background.png", plot_background(res)))
    if m is not None and "tilt_matrix" in m:
        figs.append(("tilt_map.png", plot_tilt_map(res)))
    paths = []
    for name, fig in figs:
        paths.append(os.path.join(out, name))
        fig.savefig(paths[-1], dpi=110)
    return paths
