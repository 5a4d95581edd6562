"""``determine`` beyond the twelve presets: other zone axes, an off-centre tilt disc, ZnO.

Usage::

    NUMBA_NUM_THREADS=2 python benchmarks/determine_geometries.py

Noise-free pseudo-experimental patterns (Lobato U_g, B = 0) of the built-in crystals; each is
determined from the pattern alone with default settings (search budget 60 s) and the found
symmetry, number of independent U_g groups, R, |Δt|, the largest relative error of the strong
U_g (|U| > 0.01 1/Å²) and the wall time are printed as a Markdown table.
"""

from __future__ import annotations

import time

import numpy as np

import larbed

#: name, crystal, zone axis, beams, tilts, tilt range [mrad], tilt-disc centre [mrad], kV, t [nm]
CASES = (
    ("SrTiO3 [110]", "SrTiO3", (1, 1, 0), 15, 113, 60.0, (0.0, 0.0), 120.0, 25.0),
    ("SrTiO3 [111]", "SrTiO3", (1, 1, 1), 13, 113, 50.0, (0.0, 0.0), 120.0, 20.0),
    ("SrTiO3 [001], disc centred at (12, 5) mrad", "SrTiO3", (0, 0, 1), 13, 113, 40.0, (12.0, 5.0),
     120.0, 20.0),
    ("ZnO [001]", "ZnO", (0, 0, 1), 13, 113, 40.0, (0.0, 0.0), 120.0, 30.0),
    ("ZnO [001]", "ZnO", (0, 0, 1), 19, 197, 30.0, (0.0, 0.0), 100.0, 50.0),
    ("ZnO [001]", "ZnO", (0, 0, 1), 37, 197, 30.0, (0.0, 0.0), 100.0, 50.0),
)


def main() -> int:
    print("| case | beams × tilts | symmetry found | groups | R | \\|Δt\\| [nm] | strong U_g max rel. err. "
          "| time [s] |")
    print("|---|---|---|---|---|---|---|---|")
    for name, xtal, za, nb, nt, tr, tc, kv, t in CASES:
        crystal = larbed.Crystal.builtin(xtal)
        geo = larbed.Geometry(crystal, kv, za, nb, nt, tr, tc)
        truth = larbed.compute_ug(crystal, geo)
        data = larbed.simulate(geo, truth, t)
        t0 = time.perf_counter()
        res = larbed.determine(data, geo, progress=False, search_time_s=60)
        elapsed = time.perf_counter() - t0
        cmp = res.compare(truth, t)
        strong = np.abs(cmp.true.values) > 0.01
        rel = float(np.max(cmp.relative.values[strong])) if strong.any() else float("nan")
        print(f"| {name}, {kv:g} kV, {t:g} nm | {nb} × {nt} | {' '.join(res.symmetry)} | {len(res.groups)} "
              f"| {res.r_factor:.2g} | {abs(res.thickness_nm - t):.2g} | {rel:.2g} | {elapsed:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
