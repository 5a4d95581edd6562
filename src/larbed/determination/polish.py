"""Local moves near a solution: weak reflections, pseudo-symmetry origins, the Poisson polish.

Weak reflections have local minima near the solution, and pseudo-translations (weak reflections
near zero make a structure look like one with a smaller cell) create false symmetry centres. The
moves here try the weak U_g at zero and with flipped signs, and the origin at the other centres,
refining each briefly; the best is kept. With a dose the moves are repeated in the Poisson
likelihood (:func:`polish_poisson`), which separates what unweighted R hardly sees.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Sequence

import numpy as np

from .._checkpoint import read_json, write_json
from ..geometry import Geometry
from ..metrics import poisson_deviance
from ..origin import phase_factors
from ..refinement import RefinementResult, refine
from ..structure_factors import input_ug
from ..symmetry import SymmetryGroup, symmetrize
from .starts import START_ITERATIONS, WEAK_FRACTION, StartRun, start_values

__all__ = ["EXACT_FIT_R", "MAX_SIGN_GROUPS", "POISSON_DEVIANCE_GAIN", "POLISH_MAX_FACTOR",
           "PSEUDO_ORIGIN_RTOL", "WEAK_IMPROVEMENT", "polish", "polish_poisson",
           "pseudo_origin_moves", "weak_groups", "weak_moves"]

logger = logging.getLogger(__name__)

#: An origin is a pseudo-symmetry centre when the strong U_g break the constraints there by less
#: than this fraction of their norm.
PSEUDO_ORIGIN_RTOL = 0.02
#: Every sign pattern of at most this many of the weakest groups is tried (2^n − 1 refinements).
MAX_SIGN_GROUPS = 4
#: R below this is an exact fit of noise-free data: nothing left to polish.
EXACT_FIT_R = 1e-9
#: Polishing is tried only when R is within this factor of the success threshold.
POLISH_MAX_FACTOR = 10.0
#: A weak-reflection move is kept when it lowers R by at least this factor.
WEAK_IMPROVEMENT = 0.999
#: … and, in the Poisson polish, when it lowers the deviance by more than this (Δχ² = 9: 3σ).
POISSON_DEVIANCE_GAIN = 9.0


def pseudo_origin_moves(geometry: Geometry, vals: np.ndarray, groups: Sequence[SymmetryGroup],
                         strong: np.ndarray) -> list:
    """Origins where the strong U_g obey the constraints but the weak ones do not.

    With weak reflections near zero a structure looks like one with a smaller cell (a
    pseudo-translation, e.g. (½, ½) in SrTiO3 [001] where only h + k even are strong), and the
    symmetry constraints then also hold for the strong U_g around false symmetry centres. A solution
    refined around such a centre fits the weak reflections badly; moving the origin to the true
    centre (weak U_g averaged by the constraints) and refining again reaches the right one.
    """
    if all(len(g.members) == 1 and not g.real for g in groups):
        return []
    inv = np.linalg.inv(geometry.reflection_basis)
    norm = max(float(np.linalg.norm(vals[strong])), 1e-300)
    moves, seen = [], []
    for f1 in (0, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4):
        for f2 in (0, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4):
            if f1 == f2 == 0:
                continue
            shifted = vals * phase_factors(geometry, inv @ np.array([f1, f2]))
            sym = symmetrize(shifted, groups)
            if np.linalg.norm((shifted - sym)[strong]) > PSEUDO_ORIGIN_RTOL * norm:
                continue  # the strong U_g break the constraints here: not a candidate centre
            if np.linalg.norm(sym - vals) <= 1e-6 * norm or any(
                    np.linalg.norm(sym - m) <= 1e-6 * norm for m in seen):
                continue  # an equivalent centre (true symmetry) or a duplicate
            seen.append(sym)
            moves.append((f"origin_{f1:.3f}_{f2:.3f}", sym))
    return moves


def weak_groups(vals: np.ndarray, groups: Sequence[SymmetryGroup], weak_fraction: float):
    """Indices of the weak groups (weakest first) and the mask of strong reflections."""
    size = np.array([np.abs(vals[g.members[0][0]]) for g in groups])
    weak = [int(i) for i in np.argsort(size) if size[i] < weak_fraction * size.max()]
    strong = np.ones(len(vals), bool)
    for i in weak:
        strong[[q for q, _ in groups[i].members]] = False
    return weak, strong


def weak_moves(values: np.ndarray, groups: Sequence[SymmetryGroup], weak_fraction: float):
    """Trial starts for the weak groups (weak reflections have local minima nearby): all weak at
    zero, every sign pattern of the weakest :data:`MAX_SIGN_GROUPS` (one flip at a time for the
    others), and each weak group at zero."""
    vals = np.asarray(values, complex)
    weak, _ = weak_groups(vals, groups, weak_fraction)
    idx = {i: [q for q, _ in groups[i].members] for i in weak}
    moves = []
    if len(weak) > 1:
        v = vals.copy()
        for i in weak:
            v[idx[i]] = 0.0
        moves.append(("weak_all_zero", v))
    head = weak[:MAX_SIGN_GROUPS]
    subsets = [c for k in range(1, len(head) + 1) for c in itertools.combinations(head, k)]
    subsets += [(i,) for i in weak[MAX_SIGN_GROUPS:]]
    for sub in subsets:
        v = vals.copy()
        for i in sub:
            v[idx[i]] *= -1.0
        moves.append(("weak_negate_" + "_".join(map(str, sub)), v))
    for i in weak:
        v = vals.copy()
        v[idx[i]] = 0.0
        moves.append((f"weak_zero_{i}", v))
    return moves


def polish(run: StartRun, b: dict, prefix: str, time_s: float) -> dict:
    """Weak-reflection and pseudo-symmetry-origin moves from the best start (two rounds)."""
    geometry, groups = run.geometry, run.groups
    t_polish = time.perf_counter()
    for round_ in range(2):
        start_r = b["r_factor"]
        if start_r <= EXACT_FIT_R or start_r > POLISH_MAX_FACTOR * run.success_r:
            return b  # exact already, or a wrong basin that weak moves cannot leave
        vals = start_values(b)
        _, strong = weak_groups(vals, groups, WEAK_FRACTION)
        bases = [b] + [run.try_from(f"{prefix}polish{round_}_{name}", v, b["thickness_nm"])
                       for name, v in pseudo_origin_moves(geometry, vals, groups, strong)]
        best_out = min(bases, key=lambda r: r["r_factor"])
        target = 1e-3 * min(start_r, run.success_r)
        for base_i, base in enumerate(sorted(bases, key=lambda r: r["r_factor"])):
            moves = weak_moves(start_values(base), groups, WEAK_FRACTION)
            from tqdm.auto import tqdm

            for name, v in tqdm(moves, desc=f"polish {round_ + 1}", unit="move", leave=False,
                                disable=not run.progress):
                if time.perf_counter() - t_polish > time_s:
                    logger.info("determine: polish time budget %g s used up", time_s)
                    break
                out = run.try_from(f"{prefix}polish{round_}_{base_i}_{name}", v,
                                    base["thickness_nm"])
                if out["r_factor"] < best_out["r_factor"]:
                    best_out = out
                if best_out["r_factor"] <= target:
                    break
            if best_out["r_factor"] <= target:
                break
        if best_out["r_factor"] >= WEAK_IMPROVEMENT * start_r:
            return b
        logger.info("determine: %s lowers R from %.3g to %.3g", best_out["source"], start_r,
                    best_out["r_factor"])
        b = best_out
    return b


def polish_poisson(pattern, intensity: np.ndarray, geometry: Geometry, final: RefinementResult,
                    groups: Sequence[SymmetryGroup], dose, max_iter: int, time_s: float,
                    ckpt: str | None, progress: bool, suffix: str = "",
                    refine_kwargs: dict | None = None) -> RefinementResult:
    """Pseudo-origin and weak-reflection moves again, now in the Poisson likelihood of the fit.

    The starts are compared by unweighted R, which hardly sees the weak beams: with noise the
    best of them can lie around a false symmetry centre whose R is within 0.2 % of the right one
    (SrTiO3-7, dose 1e5, seed 1: origin (½, 0), weak U_g 300σ off, reduced χ² 2.09 instead of
    1.03). The Poisson deviance separates them clearly, so each move is refined with Poisson
    weights and the fit of lowest deviance is kept.
    """
    t0 = time.perf_counter()
    best, best_dev = final, poisson_deviance(intensity, final.fit.intensity.values, dose)
    vals0 = final.ug.values
    _, strong = weak_groups(vals0, groups, WEAK_FRACTION)
    moves = pseudo_origin_moves(geometry, vals0, groups, strong) + weak_moves(vals0, groups, WEAK_FRACTION)
    from tqdm.auto import tqdm

    for name, vals in tqdm(moves, desc="Poisson polish", unit="move", disable=not progress,
                           leave=False):
        if time.perf_counter() - t0 > time_s:
            logger.info("determine: Poisson polish time budget %g s used up", time_s)
            break
        path = os.path.join(ckpt, f"poisson{suffix}_{name}.json") if ckpt else None
        saved = read_json(path) if path else None
        if saved is None:
            res = refine(pattern, geometry, input_ug(geometry, vals), final.thickness_nm,
                         symmetry=list(groups), weights="poisson", dose=dose, max_iter=START_ITERATIONS,
                         poisson_passes=1, progress=False, log_warnings=False)
            saved = {"ug_real": res.ug.values.real.tolist(), "ug_imag": res.ug.values.imag.tolist(),
                     "thickness_nm": res.thickness_nm,
                     "deviance": poisson_deviance(intensity, res.fit.intensity.values, dose)}
            if path:
                write_json(path, saved)
        if saved["deviance"] < best_dev - POISSON_DEVIANCE_GAIN:
            logger.info("determine: %s lowers the Poisson deviance from %.6g to %.6g", name, best_dev,
                        saved["deviance"])
            best, best_dev = saved, saved["deviance"]
    if best is final:
        return final
    start = input_ug(geometry, np.asarray(best["ug_real"]) + 1j * np.asarray(best["ug_imag"]))
    return refine(pattern, geometry, start, best["thickness_nm"], symmetry=list(groups), weights="poisson",
                  dose=dose, max_iter=max_iter, progress=progress, **(refine_kwargs or {}),
                  checkpoint=None if ckpt is None else
                  os.path.join(ckpt, f"final_refine{suffix}_polished.json"))
