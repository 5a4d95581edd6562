"""One structure-refinement iteration vs one free-U_g iteration (issue 11 target: ratio ≤ 1.2).

Usage::

    python benchmarks/structure_speed.py [--beams 69] [--tilts 441] [--repeat 3]

An iteration of either refinement is dominated by one evaluation of the normal equations
(:meth:`larbed.refinement.jacobian.WeightedProblem.normal_equations`: the Jacobian of every
intensity with respect to every Re U_g, Im U_g and t, contracted with ∂x/∂q). The free-U_g map is
the one :func:`larbed.refine` builds without symmetry (every Re U_g and Im U_g, and t); the
structure map is the one :func:`larbed.refine_structure` builds for SrTiO3 in hybrid mode (B of
the three sites, U_110 and U_200 free, t), so its iteration adds the U_g of the atoms and
∂U_g/∂p. Both are timed round-robin on the same pattern (after one untimed call each, which
compiles the kernels), and the medians are compared.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import larbed
from larbed.refinement.jacobian import ForwardModel, WeightedProblem
from larbed.refinement.parameters import build_map
from larbed.structure.api import _build  # noqa: PLC2701 (the benchmark times the internals)
from larbed.symmetry import SymmetryGroup
from larbed.threads import kernel_threads


def problems(n_beams: int, n_tilts: int):
    truth = larbed.Crystal.builtin("SrTiO3", debye_waller=True)
    geo = larbed.Geometry(truth, 120, (0, 0, 1), n_beams, n_tilts, 70)
    ug = larbed.compute_ug(truth, geo)
    data = larbed.simulate(geo, ug, 30.0).intensity.values
    p = geo.n_reflections
    x0 = np.concatenate([ug.values.real, ug.values.imag, [29.0]])
    groups = [SymmetryGroup(((i, 1),), False) for i in range(p)]
    pmap = build_map(geo, x0, groups=groups, real=False, refine_thickness=True, absorbing=False,
                     refine_absorption=False)
    model = ForwardModel(geo, float(ug.attrs["u0"]), False, False)
    free = WeightedProblem(model, pmap, data, np.ones_like(data))
    su = _build(data, geo, larbed.Crystal.builtin("SrTiO3"), 29.0, free=None,
                free_ug=[(1, 1, 0), (2, 0, 0)], fix=None, tie=None, refine_thickness=True,
                weights="none", dose=None, absorption=None, refine_absorption=False,
                parameterization="lobato", max_iter=10)
    structure = WeightedProblem(su.model, su.smap, data, np.ones_like(data))
    return geo, {"free U_g": (free, pmap.q(x0)), "structure": (structure, su.smap.q0)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beams", type=int, default=69)
    ap.add_argument("--tilts", type=int, default=441)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    geo, probs = problems(args.beams, args.tilts)
    times: dict[str, list[float]] = {k: [] for k in probs}
    n_q = {k: prob.pmap.n_q for k, (prob, _) in probs.items()}
    with kernel_threads():
        for prob, q in probs.values():
            prob.normal_equations(q)  # compile, warm caches
        for _ in range(args.repeat):
            for name, (prob, q) in probs.items():
                t0 = time.perf_counter()
                prob.normal_equations(q)
                times[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"SrTiO3 [001], {geo.n_beams} beams × {geo.n_tilts} tilts, {geo.n_reflections} U_g, "
          f"{larbed.get_num_threads()} kernel threads, median of {args.repeat}")
    for name in probs:
        print(f"  {name:10s} {n_q[name]:4d} parameters  {med[name]:.3f} s per iteration")
    print(f"  ratio structure / free U_g = {med['structure'] / med['free U_g']:.3f}")


if __name__ == "__main__":
    main()
