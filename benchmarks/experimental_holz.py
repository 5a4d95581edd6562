"""How much of the experimental SrTiO3 misfit higher-order Laue zones (HOLZ) explain: a probe.

Usage::

    python benchmarks/experimental_holz.py [--data ../shared/data/experimental/sto120kv]
        [--out bench-sto120kv] [--json benchmarks/results/experimental_holz.json]

larbed's geometry holds zero-order Laue zone (ZOLZ) beams only. Near the edge of the 73 mrad tilt
disc, reflections of the first-order Laue zones (FOLZ, g·z = ±1/c for [001]) come close to the
Bragg condition and couple to the outer ZOLZ beams. This probe starts from the refinement of
``benchmarks/experimental_sto120kv.py`` (same settings and checkpoint in ``--out``) and
recomputes its pattern with :func:`larbed.holz.simulate_holz`: at every (refined) tilt the ZOLZ
beams plus the FOLZ beams with |s_g| ≤ ``--s-max`` (at most ``--max-beams``, nearest first);
ZOLZ couplings are the refined U_g, those of FOLZ beams the independent-atom values (Lobato, B
of SPEC §9). HOLZ line positions move with the wavelength, so the voltage is also scaled by
``--voltage-scales`` (each with its own ZOLZ-only reference).

The refined U_g, t and measurement model stay as they are (the per-tilt scale is re-normalised),
so the gain is a lower bound of what a refinement with HOLZ beams would reach. Reported: R with
ZOLZ beams only (it must reproduce the refined R), R with FOLZ beams at each voltage, R by |g|
shell and by tilt radius, how much HOLZ beams change the outer 150 tilts at 1, 2, 4 and 8 × the
refined thickness, and the run time. The data are read from ``--data`` (not part of the
repository); the script exits 2 when they are missing.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

import larbed
from larbed.holz import holz_effect, simulate_holz

sys.path.insert(0, str(Path(__file__).parent))
from _machine import cpu_model, report  # noqa: E402
from experimental_probes import Probe, _r  # noqa: E402
from experimental_sto120kv import parser, start  # noqa: E402


def _geometry_at(geometry, theta, voltage_kv=None):
    return larbed.Geometry(geometry.crystal, voltage_kv or geometry.voltage_kv, geometry.zone_axis,
                           geometry.n_beams, tilts_mrad=theta)


def _by_radius(data, model, theta, edges=(0, 20, 40, 60, 80)) -> dict:
    rad = np.linalg.norm(theta, axis=1)
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        rows = (rad >= lo) & (rad < hi)
        if rows.any():
            out[f"{lo}-{hi} mrad"] = _r(data[rows], model[rows])
    return out


def _by_shell(data, model, geometry, edges=(0, 0.3, 0.6, 0.9, 1.2, 1.6, 2.5)) -> dict:
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        cols = (geometry.g_abs >= lo) & (geometry.g_abs < hi)
        if cols.any():
            out[f"{lo}-{hi} 1/A"] = float(np.abs(data[:, cols] - model[:, cols]).sum()
                                         / data[:, cols].sum())
    return out


def _effect_by_thickness(geometry, ug, theta, thickness_nm, kw, factors=(1, 2, 4, 8),
                         n_edge=150) -> dict:
    """:func:`larbed.holz.holz_effect` on the ``n_edge`` tilts farthest from the zone axis, at
    multiples of the thickness: HOLZ lines grow with t."""
    geo = _geometry_at(geometry, theta[np.argsort(-np.linalg.norm(theta, axis=1))[:n_edge]])
    out = {}
    for f in factors:
        e = holz_effect(geo, ug, f * thickness_nm, **kw)
        out[f"{f * thickness_nm:.1f} nm"] = {"changed_fraction": e.changed_fraction,
                                             "min_ratio_000": e.min_ratio_000}
    return out


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--max-iter", type=int, default=60)
    ap.add_argument("--s-max", type=float, default=0.03,
                    help="largest FOLZ excitation error kept [1/Å] (outer ZOLZ beams: ~0.15)")
    ap.add_argument("--max-beams", type=int, default=100, help="most FOLZ beams per tilt")
    ap.add_argument("--voltage-scales", type=float, nargs="+", default=[0.97, 0.99, 1.0, 1.01, 1.03],
                    help="the voltage × these (HOLZ line positions move with the wavelength)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    st = start(args, max_iter=args.max_iter)
    if st is None:
        return 2
    crystal, geometry, res, csv = st.crystal, st.geometry, st.result, st.csv
    data = st.pattern.intensity.values
    probe = Probe(res, geometry, data, st.measurement)
    geo = _geometry_at(geometry, probe.theta)  # the refined tilt map's tilts
    kw = {"crystal": crystal, "s_max": args.s_max, "max_beams": args.max_beams}
    t1 = time.perf_counter()
    zolz = simulate_holz(geo, res.ug, res.thickness_nm, max_beams=0).intensity.values
    zolz_m = probe.measured(zolz)
    result = {"machine": cpu_model(), "data": str(csv), "r_refined": res.r_factor,
              "thickness_nm": res.thickness_nm, "s_max_inv_A": args.s_max,
              "max_beams": args.max_beams, "r_zolz_this_code": _r(data, zolz_m),
              "r_zolz_by_radius": _by_radius(data, zolz_m, probe.theta),
              "r_zolz_by_shell": _by_shell(data, zolz_m, geometry),
              "zolz_s": time.perf_counter() - t1, "holz": {}}
    for scale in args.voltage_scales:
        t1 = time.perf_counter()
        geo_v = _geometry_at(geometry, probe.theta, geometry.voltage_kv * scale)
        ref = zolz if scale == 1.0 else simulate_holz(geo_v, res.ug, res.thickness_nm,
                                                      max_beams=0).intensity.values
        ds = simulate_holz(geo_v, res.ug, res.thickness_nm, **kw)
        holz, counts = ds.intensity.values, ds.n_holz.values
        holz_m, ref_m = probe.measured(holz), probe.measured(ref)
        result["holz"][str(scale)] = {
            "r_zolz": _r(data, ref_m), "r": _r(data, holz_m), "r_ratio": _r(data, holz_m) / _r(data, ref_m),
            "holz_beams_per_tilt_5_50_95": np.percentile(counts, [5, 50, 95]).tolist(),
            "max_change_of_intensity": float(np.abs(holz - ref).max()),
            "r_by_radius": _by_radius(data, holz_m, probe.theta),
            "r_by_shell": _by_shell(data, holz_m, geometry), "s": time.perf_counter() - t1}
        logging.info("voltage × %g: R %.4f (ZOLZ only %.4f)", scale, result["holz"][str(scale)]["r"],
                     result["holz"][str(scale)]["r_zolz"])
    result["holz_effect_by_thickness"] = _effect_by_thickness(geometry, res.ug, probe.theta,
                                                              res.thickness_nm, kw)
    result["total_s"] = time.perf_counter() - t0
    result["command"] = "python benchmarks/experimental_holz.py " + " ".join(argv or sys.argv[1:])
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
