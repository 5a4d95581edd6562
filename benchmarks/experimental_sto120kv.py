"""The experimental SrTiO3 [001] pattern at 120 kV (1009 tilts × 121 beams): the targets of the
real-data issue, measured.

Usage::

    python benchmarks/experimental_sto120kv.py [--data ../shared/data/experimental/sto120kv]
        [--out bench-sto120kv] [--max-iter 30] [--tilt-spread RHO0 [--spread-iter 30]]
        [--json benchmarks/results/experimental_sto120kv.json]

The data are read from ``--data`` (default ``../shared/data/experimental/sto120kv/`` beside the
checkout; they are not part of the repository — their redistribution terms are not stated); the
script says so and exits 2 when they are missing. Steps (all through the public API):

1. ``Geometry.from_csv`` and ``read_csv``; computed U_g (Lobato, B of SPEC §9) as the start and
   the independent-atom reference; a thickness scan with a per-tilt scale and flat background.
2. ``refine`` with ``Measurement(scale='per_tilt', background=..., tilt_map='affine')`` (the
   background smooth in |g| and tilt, or per beam),
   U_g real and tied by the crystal's symmetry, 10 % of the tilts held out.
3. The noise floor (:func:`larbed.noise.noise_floor` on the residual of the fit: an upper bound)
   and, as a check of the method, the same estimate on a pattern simulated from the fit with
   Poisson noise of the fitted variance.
   With ``--tilt-spread RHO0`` the fit continues with a tilt spread in the model (a disc of
   incident directions of fitted radius ρ at each tilt, started at RHO0 mrad); steps 3–4 then
   use that fit.
4. The thickness from two disjoint random halves of the tilts; the four strongest U_g shells
   against the independent-atom values; figures (data/fit/residual, background against |g|,
   nominal vs refined tilts) in ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np

import larbed
from larbed import Measurement
from larbed.noise import noise_floor

sys.path.insert(0, str(Path(__file__).parent))
from _machine import cpu_model, report  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "experimental" / "sto120kv"
#: The background forms compared (``--background``): smooth in |g| and tilt (default) or per beam.
BACKGROUNDS = ("smooth", "per_beam")


def data_csv(data: Path) -> Path | None:
    """The pattern file in ``data``, with INFO logging set up; None (said on stderr) when missing."""
    csv = data / "sto120kv.csv"
    if not csv.exists():
        print(f"the experimental data are not at {csv}: give --data (see its PROVENANCE.md)",
              file=sys.stderr)
        return None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("numba").setLevel(logging.WARNING)
    return csv


def load(csv: Path):
    """(crystal with the B of SPEC §9, geometry from the file, pattern, independent-atom U_g)."""
    crystal = larbed.Crystal.builtin("SrTiO3", debye_waller=True)
    geometry = larbed.Geometry.from_csv(csv, crystal, voltage_kv=120, zone_axis=(0, 0, 1))
    pattern = larbed.read_csv(csv, geometry)
    return crystal, geometry, pattern, larbed.compute_ug(crystal, geometry)


def scan_start(pattern, geometry, ug_iam):
    """The thickness scan 5–30 nm with a per-tilt scale and a flat background (the start)."""
    return larbed.thickness_scan(pattern, geometry, ug_iam, np.arange(5.0, 30.0 + 1e-9, 0.25),
                                 measurement=Measurement(scale="per_tilt", background="flat"))


def measurement_for(background: str) -> Measurement:
    return Measurement(scale="per_tilt", background=background, tilt_map="affine")


def base_fit(pattern, geometry, ug_iam, thickness_nm, out: Path, *, max_iter: int = 60,
             weights: str = "none", background: str = "smooth"):
    """(measurement, result): the experimental fit every benchmark here starts from — U_g real and
    tied by m-3m, 10 % of the tilts held out (seed 0), checkpointed in ``out``."""
    meas = measurement_for(background)
    res = larbed.refine(pattern, geometry, ug_iam, thickness_nm, measurement=meas, real=True,
                        symmetry="crystal", weights=weights, poisson_passes=1, holdout=0.1,
                        seed=0, max_iter=max_iter, progress=False,
                        checkpoint=out / "refine_checkpoint.json")
    return meas, res


@dataclasses.dataclass
class Start:
    """What every experimental benchmark starts from: the data and the base fit."""

    csv: Path
    crystal: larbed.Crystal
    geometry: larbed.Geometry
    pattern: object
    ug_iam: object
    measurement: Measurement
    result: object


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with the options every experimental benchmark has."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=Path("bench-sto120kv"))
    ap.add_argument("--json", type=Path)
    return ap


def start(args, *, max_iter: int = 60) -> Start | None:
    """Load the data of ``args.data`` and run (or reuse from ``args.out``) the base fit; None (said
    on stderr) when the data are missing."""
    csv = data_csv(args.data)
    if csv is None:
        return None
    args.out.mkdir(parents=True, exist_ok=True)
    crystal, geometry, pattern, ug_iam = load(csv)
    scan = scan_start(pattern, geometry, ug_iam)
    meas, res = base_fit(pattern, geometry, ug_iam, scan.attrs["best_thickness_nm"], args.out,
                         max_iter=max_iter)
    return Start(csv, crystal, geometry, pattern, ug_iam, meas, res)


def fitted_values(measurement_ds):
    """The fitted measurement values of a result's ``.measurement`` (no errors, no per-tilt
    scale): the ``values`` of a Measurement that starts from them."""
    return measurement_ds[[v for v in measurement_ds.data_vars
                           if not v.endswith("_error") and v != "scale"]]


def _shells(res, ug_iam, geometry, n=4):
    """The n strongest |U| shells (IAM): refined mean ± error against the IAM value."""
    g = np.round(np.linalg.norm(geometry.reflection_xy, axis=1), 6)
    iam = ug_iam.values.real
    out = []
    for gv in sorted(set(g.tolist()), key=lambda v: -np.max(np.abs(iam[g == v])))[:n]:
        idx = np.flatnonzero(g == gv)
        i0 = idx[np.argmax(np.abs(iam[idx]))]
        lab = geometry.reflection_labels()[i0]
        found, err = float(res.ug.values.real[i0]), float(res.ug_error.values.real[i0])
        out.append({"shell": lab, "g_inv_A": float(gv), "iam": float(iam[i0]), "refined": found,
                    "error": err, "relative_deviation": (found - iam[i0]) / iam[i0]})
    return out


def _half(pattern, geometry, res, rows, max_iter, out, measurement):
    geo = larbed.Geometry(geometry.crystal, geometry.voltage_kv, geometry.zone_axis, geometry.n_beams,
                          tilts_mrad=geometry.tilt_mrad[rows])
    data = pattern.intensity.values[rows]
    sub = larbed.refine(data, geo, res.ug, res.thickness_nm, measurement=measurement, real=True,
                        symmetry="crystal", weights="none", max_iter=max_iter, progress=False,
                        checkpoint=out / f"half_{rows[0]}_{len(rows)}.json")
    return sub.thickness_nm, sub.thickness_error_nm, sub.r_factor


def _with_spread(pattern, geometry, res, meas, args):
    """(measurement, result) of a refinement with a tilt spread started from ``res``."""
    values = fitted_values(res.measurement)
    values["tilt_spread_mrad"] = ((), args.tilt_spread)
    spread = dataclasses.replace(meas, tilt_spread="disc", values=values)
    out = larbed.refine(pattern, geometry, res.ug, res.thickness_nm, measurement=spread, real=True,
                        symmetry="crystal", weights=args.weights, poisson_passes=1, holdout=0.1,
                        seed=0, max_iter=args.spread_iter, progress=False,
                        checkpoint=args.out / f"refine_spread_{args.tilt_spread:g}.json")
    return dataclasses.replace(spread, values=fitted_values(out.measurement)), out  # the halves start from this fit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=Path("bench-sto120kv"))
    ap.add_argument("--max-iter", type=int, default=60)
    ap.add_argument("--weights", choices=("none", "variance"), default="none",
                    help="least-squares weights (variance: a second pass with σ² = a + b·I)")
    ap.add_argument("--background", choices=BACKGROUNDS, default="smooth")
    ap.add_argument("--half-iter", type=int, default=15)
    ap.add_argument("--tilt-spread", type=float, metavar="RHO0",
                    help="then refine on with a tilt spread (a disc of incident directions per "
                         "tilt, Measurement(tilt_spread='disc')) from radius RHO0 [mrad]")
    ap.add_argument("--spread-iter", type=int, default=30)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    csv = data_csv(args.data)
    if csv is None:
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    crystal, geometry, pattern, ug_iam = load(csv)
    scan = scan_start(pattern, geometry, ug_iam)
    t_scan = scan.attrs["best_thickness_nm"]
    t1 = time.perf_counter()
    meas, res = base_fit(pattern, geometry, ug_iam, t_scan, args.out, max_iter=args.max_iter,
                         weights=args.weights, background=args.background)
    before = None
    if args.tilt_spread is not None:  # continue from that fit with a tilt spread in the model
        before = {"r_factor": res.r_factor, "r_free": res.r_free, "thickness_nm": res.thickness_nm}
        meas, res = _with_spread(pattern, geometry, res, meas, args)
    t_refine = time.perf_counter() - t1
    fit = res.fit.intensity.values
    floor_fit = noise_floor(pattern, geometry, fit)
    # the method's check: Gaussian noise of the fitted variance model on the fit, estimated back
    from larbed.refinement.realdata import fit_variance_model

    a, b = res.variance_model or fit_variance_model(pattern.intensity.values, fit)
    rng = np.random.default_rng(1)
    synthetic = fit + rng.normal(size=fit.shape) * np.sqrt(a + b * np.clip(fit, 0, None))
    synthetic = np.where(np.isfinite(pattern.intensity.values), synthetic, np.nan)
    true_floor = float(np.nansum(np.abs(synthetic - fit)) / np.nansum(synthetic))
    check = noise_floor(np.clip(synthetic, 0, None), geometry, fit)
    rng = np.random.default_rng(2)
    order = rng.permutation(geometry.n_tilts)
    halves = [np.sort(order[: geometry.n_tilts // 2]), np.sort(order[geometry.n_tilts // 2:])]
    half_t = [_half(pattern, geometry, res, h, args.half_iter, args.out, meas) for h in halves]
    shells = _shells(res, ug_iam, geometry)
    paths = _figures(res, pattern, geometry, args.out)
    m = res.measurement
    result = {
        "machine": cpu_model(), "data": str(csv), "n_tilts": geometry.n_tilts,
        "n_beams": geometry.n_beams, "measurement": meas.describe(),
        "thickness_scan_nm": t_scan, "scan_r": scan.attrs["best_value"],
        "r_factor": res.r_factor, "r_free": res.r_free, "n_holdout": int(res.holdout_tilts.size),
        "thickness_nm": res.thickness_nm, "thickness_error_nm": res.thickness_error_nm,
        "iterations": res.n_iterations, "refine_s": t_refine, "before_spread": before,
        "message": res.message, "warnings": [[w.kind, str(w)] for w in res.warnings],
        "tilt_spread_mrad": None if before is None else float(res.measurement.tilt_spread_mrad),
        "tilt_spread_error_mrad": None if before is None
        else float(res.measurement.tilt_spread_mrad_error),
        "residual_correlation": res.residual_correlation, "error_inflation": res.error_inflation,
        "variance_model": [a, b], "weights_used": res.weights,
        "noise_floor_upper_bound": floor_fit.r_floor, "noise_floor_by_shell": floor_fit.r_by_shell,
        "floor_check": {"true": true_floor, "estimated": check.r_floor},
        "halves_thickness_nm": [h[0] for h in half_t], "halves_error_nm": [h[1] for h in half_t],
        "halves_r": [h[2] for h in half_t], "shells": shells,
        "tilt_matrix": m.tilt_matrix.values.tolist(), "tilt_matrix_error": m.tilt_matrix_error.values.tolist(),
        "tilt_offset_mrad": m.tilt_offset_mrad.values.tolist(),
        "tilt_offset_error_mrad": m.tilt_offset_mrad_error.values.tolist(),
        "background": np.atleast_1d(m.background.values).tolist()
        if args.background == "smooth" else float(m.background.values[0]),
        "background_error": np.atleast_1d(m.background_error.values).tolist()
        if args.background == "smooth" else float(m.background_error.values[0]),
        "total_s": time.perf_counter() - t0,
        "figures": paths,
        "command": "python benchmarks/experimental_sto120kv.py " + " ".join(argv or sys.argv[1:]),
    }
    report(result, args.json)
    return 0


def _figures(res, pattern, geometry, out: Path) -> list[str]:
    from larbed.plotting import plot_background, plot_fit_images, plot_tilt_map

    paths = []
    for name, fig in (("fit_images.png", plot_fit_images(res, beams=8)),
                      ("background.png", plot_background(res)),
                      ("tilt_map.png", plot_tilt_map(res))):
        fig.savefig(out / name, dpi=100)
        paths.append(str(out / name))
    return paths


if __name__ == "__main__":
    raise SystemExit(main())
