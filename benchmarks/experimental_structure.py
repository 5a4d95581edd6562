"""The experimental SrTiO3 [001] pattern refined as a crystal: B per site (and, in hybrid mode,
the four strongest U_g shells free on top of the independent-atom model) with the measurement
model of ``experimental_sto120kv.py``.

Usage::

    python benchmarks/experimental_structure.py [--mode atoms|hybrid] [--data ...]
        [--max-iter 40] [--json benchmarks/results/experimental_structure_<mode>.json]

``larbed.refine_structure(pattern, geometry, SrTiO3 with the B of SPEC §9, t0, free_ug=...,
measurement=Measurement(scale='per_tilt', background='smooth', tilt_map='affine'),
holdout=0.1, seed=0)`` from the thickness of the scan. Reports R, R_free, t, every refined value
with its error and, in hybrid mode, the free U_g against the independent-atom values at the
refined B. The data are read from ``--data`` (not part of the repository); exit 2 when missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import larbed

sys.path.insert(0, str(Path(__file__).parent))
from _machine import cpu_model, report  # noqa: E402
from experimental_sto120kv import DEFAULT_DATA, data_csv, load, measurement_for, scan_start  # noqa: E402

#: The four strongest shells of SrTiO3 [001] at 120 kV (independent-atom |U_g|).
STRONG_SHELLS = [(1, 1, 0), (2, 0, 0), (2, 2, 0), (4, 0, 0)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--mode", choices=("atoms", "hybrid"), default="hybrid")
    ap.add_argument("--max-iter", type=int, default=40)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    csv = data_csv(args.data)
    if csv is None:
        return 2
    crystal, geometry, pattern, ug_iam = load(csv)
    scan = scan_start(pattern, geometry, ug_iam)
    t0 = time.perf_counter()
    res = larbed.refine_structure(
        pattern, geometry, crystal, scan.attrs["best_thickness_nm"],
        free_ug=STRONG_SHELLS if args.mode == "hybrid" else None,
        measurement=measurement_for("smooth"), max_iter=args.max_iter, holdout=0.1, seed=0,
        progress=False)
    result = {"machine": cpu_model(), "data": str(csv), "mode": args.mode,
              "thickness_scan_nm": scan.attrs["best_thickness_nm"], "r_factor": res.r_factor,
              "r_free": res.r_free, "thickness_nm": res.thickness_nm,
              "thickness_error_nm": res.thickness_error_nm, "iterations": res.n_iterations,
              "error_inflation": res.refinement.error_inflation,
              "refine_s": time.perf_counter() - t0,
              "values": {lab: list(res.value(lab)) for lab in res.labels},
              "warnings": [f"{w.kind}: {w}" for w in res.warnings]}
    if args.mode == "hybrid":
        fu = res.free_ug
        result["free_ug"] = [
            {"hkl": [int(fu.h[i]), int(fu.k[i]), int(fu.l[i])], "refined": float(fu.value[i].real),
             "error": float(fu.error[i].real), "iam": float(fu.iam[i].real),
             "relative_deviation": float(fu.change[i].real)} for i in range(fu.sizes["reflection"])]
    result["command"] = "python benchmarks/experimental_structure.py " + " ".join(argv or sys.argv[1:])
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
