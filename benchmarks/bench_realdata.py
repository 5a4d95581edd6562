"""One Levenberg–Marquardt iteration at the size of real data: 121 recorded beams × 1009 tilts.

Usage::

    python benchmarks/bench_realdata.py [--repeat 2] [--json results.json]

The geometry is that of the experimental SrTiO3 [001] pattern (a rotated lattice of 1009 tilts,
step 3.9 mrad, filling a 73 mrad disc off the zone axis; built here, no data file needed) with
SrTiO3's computed U_g as the pattern. The refinement is the real-data one: U_g real and tied by
the crystal's symmetry, thickness, a per-tilt scale, a per-beam background and an affine tilt map
(195 free parameters). Timed in the same run:

* ``reference``: the normal equations JᵀWJ, JᵀWr from the full Jacobian (every Re U_g column,
  then ∂x/∂q applied in NumPy) — larbed before the reduced kernels;
* ``reduced``: the U-part summed straight into the free parameters inside the kernels (real
  arithmetic on the real path), JᵀWJ by a symmetric rank-k update;
* ``iteration``: one LM iteration (Jacobian and normal equations, a damped step, the trial's
  residual), every decomposition fresh;
* ``iteration_lm``: an accepted LM iteration as :func:`larbed.refine` runs it: the trial's
  residual, then the normal equations at that point, which take the eigensystems of the trial's
  forward pass instead of decomposing again, and the next damped step.

Everything runs as inside :func:`larbed.refine`: kernel threads with one BLAS thread each, held
for the whole run (:func:`larbed.threads.kernel_threads`). Reported: median seconds, the ratio
reference / reduced and the largest difference of the reduced JᵀWJ, JᵀWr from the reference's
(relative to its largest entry), with the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg

import larbed
from larbed import Measurement
from larbed.refinement import api
from larbed.refinement.jacobian import WeightedProblem
from larbed.threads import kernel_threads

sys.path.insert(0, str(Path(__file__).parent))
from _machine import cpu_model, report  # noqa: E402


def real_size_geometry(crystal) -> larbed.Geometry:
    """1009 tilts of a lattice rotated by 17°, step 3.85 mrad, in a 73 mrad disc at (−8.6, −1.5)."""
    rot = np.deg2rad(17.0)
    r = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    i, j = np.meshgrid(np.arange(-25, 26), np.arange(-25, 26))
    pts = np.stack([i.ravel(), j.ravel()], axis=1) * 3.85 @ r.T
    pts = pts[np.argsort(np.linalg.norm(pts, axis=1), kind="stable")][:1009]
    return larbed.Geometry(crystal, 120, (0, 0, 1), 121, tilts_mrad=pts + np.array([-8.6, -1.5]))


def _time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    crystal = larbed.Crystal.builtin("SrTiO3", debye_waller=True)
    geo = real_size_geometry(crystal)
    ug = larbed.compute_ug(crystal, geo)
    pattern = larbed.simulate(geo, ug * 1.01, 12.0, measurement=Measurement.with_values(
        background=0.002), dose=1e5, seed=0)
    meas = Measurement(scale="per_tilt", background="per_beam", tilt_map="affine")
    su = api._setup(pattern, geo, ug, 12.0, refine_thickness=True, weights="none", dose=None,
                    symmetry="crystal", real=True, absorption=None, refine_absorption=False,
                    refine_reflections=None, prior=None, max_iter=1, measurement=meas)
    q = su.pmap.q(su.x0)
    core = su.model.core
    reduced = WeightedProblem(su.model, su.pmap, su.exp, np.ones_like(su.exp))

    def fresh():  # normal equations with every tilt decomposed (nothing kept from a forward pass)
        core._kept = None
        return reduced.normal_equations(q)

    def step(hess, grad):
        return -scipy.linalg.solve(hess + 1e-3 * np.diag(np.diag(hess)), grad, assume_a="pos")

    def one_iteration():  # Jacobian and normal equations, a damped step, the trial's residual
        _, _, hess, grad = fresh()
        reduced.residual(q + step(hess, grad))

    _, _, hess, grad = fresh()  # compile
    q_trial = q + step(hess, grad)

    def lm_iteration():  # the trial's residual, the normal equations there (reused), the next step
        reduced.residual(q_trial)
        step(*reduced.normal_equations(q_trial)[2:])

    with kernel_threads():
        lm_iteration()  # compile
        t_reduced = _time(fresh, args.repeat)
        t_iter = _time(one_iteration, args.repeat)
        t_lm = _time(lm_iteration, args.repeat)
        full = WeightedProblem(su.model, su.pmap, su.exp, np.ones_like(su.exp))
        core.reduction = None
        full.reduced = False
        _, _, hess_full, grad_full = full.normal_equations(q)
        t_full = _time(lambda: full.normal_equations(q), args.repeat)
    su.model.reduce_to(su.pmap)
    # the reduced sums equal the full Jacobian's to round-off
    diff = max(float(np.max(np.abs(hess - hess_full)) / np.max(np.abs(hess_full))),
               float(np.max(np.abs(grad - grad_full)) / np.max(np.abs(grad_full))))
    out = {"machine": cpu_model(), "cores": os.cpu_count(), "load_average": os.getloadavg(),
           "threads": larbed.get_num_threads(), "n_beams": geo.n_beams, "n_tilts": geo.n_tilts,
           "n_free": su.pmap.n_q, "reference_s": t_full, "reduced_s": t_reduced,
           "ratio": t_full / t_reduced, "iteration_s": t_iter, "iteration_lm_s": t_lm,
           "max_rel_diff_vs_reference": diff,
           "command": "python benchmarks/bench_realdata.py " + " ".join(argv or sys.argv[1:])}
    report(out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
