"""Measure the accuracy targets of issue 11 (the table in docs/structure.rst).

Usage::

    python benchmarks/structure_targets.py [--seeds 5]

1. Hybrid SrTiO3: B = (0.41, 0.32, 0.63) Å², U_110 and U_200 +1 % from the independent-atom
   model, 13 beams × 441 tilts over 70 mrad, 30 nm, 120 kV, dose 1e5 per tilt; start B = 0,
   t = 29.5 nm; free B, U_110, U_200, t. Reports, per noise seed, max |z| = |found − true| / σ
   and σ(U)/U.
2. Coordinates: rutile TiO2 (P4₂/mnm) [001], O on (x, x, 0) moved by 0.05 Å along [110], 21
   beams × 49 tilts, 200 kV, 25 nm; noise-free (|Δx|) and dose 1e5 (max |z| over x, B, t).
3. Identifiability: ZnO [001] (P6₃mc), free='xyz': the z parameters along c are reported and fixed.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

import larbed
from larbed import Crystal, Geometry, compute_ug, refine_structure, simulate
from larbed.spacegroup import ug_ties

RUTILE_CELL = (4.594, 4.594, 2.959, 90, 90, 90)


def rutile(x=0.305):
    return Crystal(RUTILE_CELL, [("Ti", (0, 0, 0), 1.0, 0.4), ("O", (x, x, 0), 1.0, 0.5)],
                   space_group="P 42/m n m", name="rutile")


def hybrid(seeds: int) -> None:
    truth = Crystal.builtin("SrTiO3", debye_waller=True)
    geo = Geometry(truth, 120, (0, 0, 1), 13, 441, 70)
    ug = compute_ug(truth, geo)
    vals = ug.values.copy()
    for tie in ug_ties(truth.space_group, geo.reflection_hkl):
        if tuple(geo.reflection_hkl[tie.members[0]]) in {(1, 1, 0), (2, 0, 0)}:
            vals[list(tie.members)] *= 1.01
    ug_true = ug.copy(data=vals)
    print("1. hybrid SrTiO3, 13 beams × 441 tilts, dose 1e5")
    for seed in range(seeds):
        t0 = time.perf_counter()
        res = refine_structure(simulate(geo, ug_true, 30.0, dose=1e5, seed=seed), geo,
                               Crystal.builtin("SrTiO3"), 29.5, free_ug=[(1, 1, 0), (2, 0, 0)],
                               progress=False)
        cmp = res.compare(truth, ug_true, 30.0)
        rel = res.free_ug.error.values.real / np.abs(res.free_ug.value.values)
        z = {str(k): round(float(v), 2) for k, v in zip(cmp.parameter.values, cmp.z.values,
                                                       strict=True)}
        print(f"   seed {seed}: max|z| = {float(cmp.z.max()):.2f} {z}; σ(U)/U = "
              f"{', '.join(f'{100 * r:.4f} %' for r in rel)}; χ²/dof = {res.chi2:.3f}; "
              f"{time.perf_counter() - t0:.1f} s")


def coordinates(seeds: int) -> None:
    truth = rutile()
    start = rutile(0.305 + 0.05 / (RUTILE_CELL[0] * np.sqrt(2)))
    geo = Geometry(truth, 200, (0, 0, 1), 21, 49, 50)
    ug = compute_ug(truth, geo)
    res = refine_structure(simulate(geo, ug, 25.0), geo, start, 24.0, progress=False)
    dx = abs(res.value("x(O1)")[0] - 0.305) * RUTILE_CELL[0] * np.sqrt(2)
    print(f"2. rutile [001], x(O1) +0.05 Å: noise-free R = {res.r_factor:.2e}, |Δr| = {dx:.2e} Å")
    for seed in range(seeds):
        res = refine_structure(simulate(geo, ug, 25.0, dose=1e5, seed=seed), geo, start, 24.0,
                               progress=False)
        cmp = res.compare(truth, None, 25.0)
        sx = res.value("x(O1)")[1] * RUTILE_CELL[0] * np.sqrt(2)
        print(f"   dose 1e5 seed {seed}: max|z| = {float(cmp.z.max()):.2f}, σ(r_O) = {sx:.2e} Å")


def identifiability() -> None:
    truth = Crystal.builtin("ZnO", debye_waller=True)
    geo = Geometry(truth, 100, (0, 0, 1), 19, 29, 30)
    res = refine_structure(simulate(geo, compute_ug(truth, geo), 50.0), geo,
                           Crystal.builtin("ZnO"), 49.0, free=["xyz", "b_iso"], progress=False,
                           log_warnings=False)
    print(f"3. ZnO [001] free=['xyz', 'b_iso']: refined {res.labels}; fixed {res.fixed}; "
          f"warnings {[w.kind for w in res.warnings]}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args(argv)
    logging.getLogger("larbed").setLevel(logging.ERROR)
    print(f"larbed {larbed.__version__}")
    hybrid(args.seeds)
    coordinates(args.seeds)
    identifiability()


if __name__ == "__main__":
    main()
