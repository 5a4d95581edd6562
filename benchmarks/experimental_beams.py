"""Does the experimental SrTiO3 fit need more simulated beams than the 121 recorded?

Usage::

    python benchmarks/experimental_beams.py [--data ../shared/data/experimental/sto120kv]
        [--out bench-sto120kv] [--n-beams 193] [--max-iter 60] [--prior-min-g G]
        [--json benchmarks/results/experimental_beams.json]

Starts from the refinement of ``benchmarks/experimental_sto120kv.py`` (121 beams simulated and
recorded; same settings and checkpoint in ``--out``) and refines on with ``--n-beams`` simulated
beams, the 121 recorded ones fitted (``Geometry.from_csv(..., n_beams=N)``): the U_g of the fit
where it has them, the independent-atom values (Lobato, B of SPEC §9) for the reflections only the
larger beam set has, the fit's measurement model as the start, the same 10 % hold-out, U_g real
and tied by m-3m. ``--prior-min-g G`` adds :func:`larbed.iam_prior` (10 %, at least 10⁻³ 1/Å²)
on the reflections with |g| ≥ G [1/Å] (the weak couplings the recorded beams hardly see).
Reported: R after the first iteration and at the end, R_free, t, the iterations, the time and the strong
shells. The data are read from ``--data`` (not part of the repository); exits 2 when missing.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

import larbed

sys.path.insert(0, str(Path(__file__).parent))
from _machine import cpu_model, report  # noqa: E402
from experimental_sto120kv import _shells, fitted_values, parser, start  # noqa: E402


def start_ug(crystal, geometry, fitted_geometry, fitted_ug):
    """U_g of ``geometry``: the fit's values where it has the reflection, else independent-atom."""
    ug = larbed.compute_ug(crystal, geometry)
    known = {tuple(h): v for h, v in zip(fitted_geometry.reflection_hkl.tolist(), fitted_ug.values,
                                         strict=True)}
    vals = np.array([known.get(tuple(h), u) for h, u in zip(geometry.reflection_hkl.tolist(),
                                                            ug.values, strict=True)])
    return ug.copy(data=vals), sum(tuple(h) in known for h in geometry.reflection_hkl.tolist())


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--base-iter", type=int, default=60, help="iterations of the 121-beam fit")
    ap.add_argument("--n-beams", type=int, default=193)
    ap.add_argument("--max-iter", type=int, default=60)
    ap.add_argument("--prior-min-g", type=float, help="IAM prior on |g| ≥ this [1/Å]")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    st = start(args, max_iter=args.base_iter)
    if st is None:
        return 2
    crystal, geometry, meas, res, csv = st.crystal, st.geometry, st.measurement, st.result, st.csv
    geo = larbed.Geometry.from_csv(csv, crystal, voltage_kv=120, zone_axis=(0, 0, 1),
                                   n_beams=args.n_beams)
    pat = larbed.read_csv(csv, geo)
    ug, n_known = start_ug(crystal, geo, geometry, res.ug)
    m = dataclasses.replace(meas, values=fitted_values(res.measurement))
    prior = (None if args.prior_min_g is None
             else larbed.iam_prior(crystal, geo, min_g=args.prior_min_g))
    kw = dict(measurement=m, prior=prior, real=True, symmetry="crystal", weights="none",
              poisson_passes=1, holdout=0.1, seed=0, progress=False)
    t1 = time.perf_counter()
    tag = "" if args.prior_min_g is None else f"_prior{args.prior_min_g:g}"
    out = larbed.refine(pat, geo, ug, res.thickness_nm, max_iter=args.max_iter,
                        checkpoint=args.out / f"beams_{args.n_beams}{tag}.json", **kw)
    result = {
        "machine": cpu_model(), "data": str(csv), "n_beams": args.n_beams,
        "n_recorded": geo.n_recorded, "n_reflections": geo.n_reflections,
        "reflections_from_the_fit": n_known, "prior_min_g": args.prior_min_g,
        "r_121": res.r_factor, "r_free_121": res.r_free, "thickness_121_nm": res.thickness_nm,
        "r_after_first_iteration": float(out.history.r_factor.values[0]), "r": out.r_factor, "r_free": out.r_free,
        "thickness_nm": out.thickness_nm, "thickness_error_nm": out.thickness_error_nm,
        "iterations": out.n_iterations, "message": out.message,
        "warnings": [[w.kind, str(w)] for w in out.warnings],
        "shells": _shells(out, larbed.compute_ug(crystal, geo), geo),
        "refine_s": time.perf_counter() - t1, "total_s": time.perf_counter() - t0,
        "command": "python benchmarks/experimental_beams.py " + " ".join(argv or sys.argv[1:]),
    }
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
