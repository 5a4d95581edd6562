"""ZnO-1 and ZnO-2 from the pattern plus the composition Zn2O2 (issue 11 targets).

Usage::

    python benchmarks/structure_zno.py [--presets ZnO-1 ZnO-2] [--doses 0 1e5]

For each preset and dose (0 = noise-free) runs ``larbed.determine(pattern, geometry,
composition={'Zn': 2, 'O': 2})`` and prints R, the thickness error, the U_g against the truth
(max |z| and the fraction within 3σ; the relative deviation for noise-free data) and the wall time.
Targets: noise-free R ≤ 1e-3 and |Δt| ≤ 0.5 nm; at dose 1e5 the truth within 3σ.
``--structure-only`` runs only the composition start (the structure refinement) and compares its
parameters (B of both sites, t) with the truth.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

import larbed


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["ZnO-1", "ZnO-2"])
    ap.add_argument("--doses", nargs="+", type=float, default=[0.0, 1e5])
    ap.add_argument("--verbose", action="store_true", help="log the stages (INFO)")
    ap.add_argument("--structure-only", action="store_true",
                    help="only the composition start; compare B and t with the truth")
    args = ap.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("numba").setLevel(logging.WARNING)
    else:
        logging.getLogger("larbed").setLevel(logging.ERROR)
    for name in args.presets:
        preset = larbed.presets.load(name)
        for dose in args.doses:
            pattern = preset.simulate(dose=dose or None, seed=0)
            t0 = time.perf_counter()
            if args.structure_only:
                _structure(name, preset, pattern, dose, t0)
                continue
            res = larbed.determine(pattern, preset.geometry, composition={"Zn": 2, "O": 2},
                                   dose=dose or None, progress=False)
            elapsed = time.perf_counter() - t0
            cmp = res.compare(preset.ug(), preset.thickness_nm)
            z = cmp.z.values[np.isfinite(cmp.z.values)]
            s = res.structure
            print(f"{name} dose {dose or 'none'}: R = {res.r_factor:.3g} (structure R = "
                  f"{s.r_factor:.3g}), Δt = {res.thickness_nm - preset.thickness_nm:+.4f} nm "
                  f"± {res.thickness_error_nm:.2g}, max |ΔU|/|U| = {float(cmp.relative.max()):.2g}, "
                  f"max |z| = {z.max():.2f}, within 3σ {np.mean(z <= 3):.3f}, "
                  f"warnings {[w.kind for w in res.warnings]}, {elapsed:.0f} s")


def _structure(name, preset, pattern, dose, t0) -> None:
    from larbed.structure.composition import composition_start

    res = composition_start(pattern, preset.geometry, {"Zn": 2, "O": 2}, dose=dose or None)
    cmp = res.compare(preset.crystal, None, preset.thickness_nm)
    rows = ", ".join(f"{p} = {f:.4f} ± {e:.4f} (z {z:.2f})" for p, f, e, z in
                     zip(cmp.parameter.values, cmp.found.values, cmp.error.values, cmp.z.values,
                         strict=True))
    print(f"{name} dose {dose or 'none'} structure: R = {res.r_factor:.4g}, χ²/dof = "
          f"{res.chi2:.3f}; {rows}; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
