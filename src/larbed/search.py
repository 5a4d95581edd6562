"""Global search and local moves of :func:`larbed.determine`.

Least squares converges from U_g within about ±30 % of the solution, not from random ones. The
search here finds such a start without knowledge of the atoms: differential evolution over the
symmetry-reduced U_g, each candidate's thickness optimised by a scan, probed by short refinements.
The moves polish a start near the solution: weak reflections have local minima nearby, and
pseudo-translations create false symmetry centres.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from ._kernels import bloch
from .geometry import Geometry
from .symmetry import SymmetryGroup
from .threads import kernel_threads

__all__ = ["global_search", "kinematic_starts"]

logger = logging.getLogger(__name__)

#: Search bounds of Re U_g and Im U_g [1/Å²] (real crystals stay below ~0.1; the thesis's random
#: range is ±0.2).
UG_BOUND = 0.1
#: Thickness grid step of the global search (the scan over t is most of a candidate's cost) [nm].
SEARCH_STEP_NM = 1.0
#: Largest search population (the initial population is evaluated before the time budget counts).
MAX_POPULATION = 400
#: Groups with |U| below this fraction of the largest are "weak" (tried at zero and negated).
WEAK_FRACTION = 0.1
#: An origin is a pseudo-symmetry centre when the strong U_g break the constraints there by less
#: than this fraction of their norm.
PSEUDO_ORIGIN_RTOL = 0.02
#: Every sign pattern of at most this many of the weakest groups is tried (2^n − 1 refinements).
MAX_SIGN_GROUPS = 4


class _Objective:
    """min over thickness of R(U(z), t) on a subset of tilts; z = symmetry-reduced Re/Im U_g."""

    def __init__(self, geometry: Geometry, intensity: np.ndarray, groups: Sequence[SymmetryGroup],
                 thickness_nm: np.ndarray, tilt_rows: np.ndarray):
        inv2k = 1.0 / (2.0 * geometry.k0)
        self.inv2k = inv2k
        self.diag = np.ascontiguousarray(geometry.excitation_diagonal[tilt_rows] * inv2k)
        self.data = np.ascontiguousarray(intensity[tilt_rows])
        self.norm = float(self.data.sum())
        self.thick_a = np.asarray(thickness_nm, float) * 10.0
        self.thickness_nm = np.asarray(thickness_nm, float)
        self.n_refl = geometry.n_reflections
        cols = []
        for g in groups:
            idx = np.array([q for q, _ in g.members])
            sgn = np.array([s for _, s in g.members], dtype=float)
            cols.append((idx, np.ones_like(sgn), False))
            if not g.real:
                cols.append((idx, sgn, True))
        self.cols = cols
        self.real = all(g.real for g in groups)
        self.index = np.where(geometry.pair_index < 0, 0, geometry.pair_index)
        self.sign = geometry.pair_sign
        self.offdiag_mask = geometry.pair_index >= 0

    @property
    def n_params(self) -> int:
        return len(self.cols)

    def values(self, z) -> np.ndarray:
        vals = np.zeros(self.n_refl, complex)
        for zi, (idx, coef, is_im) in zip(z, self.cols, strict=True):
            if is_im:
                vals[idx] += 1j * coef * zi
            else:
                vals[idx] += coef * zi
        return vals

    def params(self, values) -> np.ndarray:
        """Least-squares inverse of :meth:`values` (group means)."""
        vals = np.asarray(values, complex)
        return np.array([np.mean(coef * (vals[idx].imag if is_im else vals[idx].real))
                         for idx, coef, is_im in self.cols])

    def r_by_thickness(self, z) -> np.ndarray:
        vals = self.values(z)
        mat = np.where(self.sign > 0, vals[self.index], np.conj(vals[self.index]))
        mat = np.where(self.offdiag_mask, mat, 0.0) * self.inv2k
        out = np.empty((len(self.thick_a),) + self.diag.shape)
        if self.real:
            bloch.intensities_real(np.ascontiguousarray(mat.real), self.diag, self.thick_a, out)
        else:
            bloch.intensities_hermitian(np.ascontiguousarray(mat), self.diag, self.thick_a, out)
        return np.abs(out - self.data[None]).sum(axis=(1, 2)) / self.norm

    def __call__(self, z) -> float:
        return float(self.r_by_thickness(z).min())


def _evaluate_chunk(objective: _Objective, zs) -> list[float]:
    with kernel_threads():
        return [objective(z) for z in zs]


def _evaluator(objective: _Objective, client):
    """Function mapping an (n, d) array of candidates to their energies (Dask when given)."""
    if client is None:
        return lambda zs: np.array([objective(z) for z in zs])
    n_workers = max(len(client.scheduler_info().get("workers", {})), 1)
    remote = client.scatter(objective, broadcast=True)

    def evaluate(zs):
        chunks = np.array_split(np.arange(len(zs)), min(2 * n_workers, len(zs)))
        futures = client.map(_evaluate_chunk, [remote] * len(chunks), [zs[c] for c in chunks], pure=False)
        return np.array([v for part in client.gather(futures) for v in part])

    return evaluate


def global_search(intensity: np.ndarray, geometry: Geometry, groups: Sequence[SymmetryGroup], *,
                  thickness_range_nm=(5.0, 100.0), ug_bound: float = UG_BOUND, seed: int = 0,
                  time_budget_s: float = 90.0, popsize: int = 10, max_generations: int = 1000,
                  tilts: int = 100, init: Sequence[np.ndarray] = (), probe=None,
                  probe_every: int = 5, probe_top: int = 3, client=None,
                  progress: bool = False) -> dict:
    """Differential evolution over symmetry-reduced U_g, thickness optimised by scan per candidate.

    DE/rand/1/bin (mutation factor dithered in [0.5, 1), crossover 0.7), which explores more than
    the greedy best/1 variant: the pattern's R has many false minima in U_g.

    Parameters
    ----------
    intensity : ndarray
        (n_tilts, n_beams) pattern.
    geometry : Geometry
    groups : sequence of SymmetryGroup
        Parameter groups (:func:`larbed.symmetry.symmetry_groups`).
    thickness_range_nm : (float, float)
        Thicknesses scanned for every candidate [nm] (step :data:`SEARCH_STEP_NM`).
    ug_bound : float
        Bounds ±ug_bound of every Re/Im parameter [1/Å²].
    seed : int
    time_budget_s : float
        Stop after this wall time [s] (checked every generation).
    popsize : int
        Population size per parameter (at most :data:`MAX_POPULATION` in all).
    max_generations : int
    tilts : int
        Evaluate on about this many tilts (every k-th), 0 for all.
    init : sequence of ndarray
        U_g vectors (n_reflections,) to place in the initial population (e.g. network starts).
    probe : callable, optional
        ``probe(values) -> bool``: every ``probe_every`` generations it is called with the
        ``probe_top`` best distinct members not probed before; True stops the search (the basin of
        the solution has been reached).
    client : dask.distributed.Client, optional
        Evaluate each generation's candidates on this cluster.
    progress : bool

    Returns
    -------
    dict
        ``population`` (n, n_reflections) complex U_g sorted by R, ``energies`` (n,), ``history`` best
        R per generation, ``generations``, ``stopped`` (reason), ``evaluations``.
    """
    inten = np.asarray(intensity, float)
    lo, hi = (float(v) for v in thickness_range_nm)
    thick = np.arange(lo, hi + 1e-9, SEARCH_STEP_NM)
    stride = max(1, -(-geometry.n_tilts // tilts)) if tilts else 1
    rows = np.arange(0, geometry.n_tilts, stride)
    obj = _Objective(geometry, inten, groups, thick, rows)
    n = obj.n_params
    rng = np.random.default_rng(seed)
    n_pop = int(np.clip(popsize * n, 8, MAX_POPULATION))
    pop = rng.uniform(-ug_bound, ug_bound, (n_pop, n))
    for i, u in enumerate(init):
        if i < n_pop:
            pop[i] = np.clip(obj.params(u), -ug_bound, ug_bound)
    evaluate = _evaluator(obj, client)
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=max_generations, desc="search", unit="gen", disable=not progress, leave=False)
    history: list[float] = []
    probed: list[np.ndarray] = []
    stopped = f"max_generations={max_generations}"
    n_eval = 0
    with kernel_threads():
        energy = evaluate(pop)
        n_eval += n_pop
        gen = 0
        for gen in range(1, max_generations + 1):
            f = rng.uniform(0.5, 1.0)
            r = np.array([rng.choice(np.delete(np.arange(n_pop), i), 3, replace=False) for i in range(n_pop)])
            mutant = pop[r[:, 0]] + f * (pop[r[:, 1]] - pop[r[:, 2]])
            cross = rng.random((n_pop, n)) < 0.7
            cross[np.arange(n_pop), rng.integers(0, n, n_pop)] = True
            trial = np.where(cross, mutant, pop)
            # reflect into the bounds
            trial = np.where(trial > ug_bound, 2 * ug_bound - trial, trial)
            trial = np.where(trial < -ug_bound, -2 * ug_bound - trial, trial)
            trial = np.clip(trial, -ug_bound, ug_bound)
            e_trial = evaluate(trial)
            n_eval += n_pop
            better = e_trial <= energy
            pop[better], energy[better] = trial[better], e_trial[better]
            history.append(float(energy.min()))
            bar.update(1)
            bar.set_postfix(R=f"{history[-1]:.3f}")
            if probe is not None and gen % probe_every == 0:
                hit, n_new = False, 0
                for i in np.argsort(energy):
                    if any(np.linalg.norm(pop[i] - q) <= 0.05 * max(np.linalg.norm(q), 1e-12)
                           for q in probed):
                        continue
                    probed.append(pop[i].copy())
                    n_new += 1
                    if probe(obj.values(pop[i])):
                        hit = True
                    if hit or n_new == probe_top:
                        break
                if hit:
                    stopped = "probe reached the solution"
                    break
            if time.perf_counter() - t0 > time_budget_s:
                stopped = f"time budget {time_budget_s:g} s"
                break
            if np.ptp(energy) <= 1e-12 * max(abs(energy.min()), 1e-300):
                stopped = "population converged"
                break
    bar.close()
    order = np.argsort(energy)
    population = np.array([obj.values(z) for z in pop[order]])
    logger.info("search: %d generations, %d evaluations, best R = %.3g (%s)", gen, n_eval,
                energy[order[0]], stopped)
    return {"population": population, "energies": energy[order], "history": np.asarray(history),
            "generations": gen, "stopped": stopped, "evaluations": n_eval, "n_params": n,
            "tilt_stride": stride}


def _pseudo_origin_moves(geometry: Geometry, vals: np.ndarray, groups: Sequence[SymmetryGroup],
                         strong: np.ndarray) -> list:
    """Origins where the strong U_g obey the constraints but the weak ones do not.

    With weak reflections near zero a structure looks like one with a smaller cell (a
    pseudo-translation, e.g. (½, ½) in SrTiO3 [001] where only h + k even are strong), and the
    symmetry constraints then also hold for the strong U_g around false symmetry centres. A solution
    refined around such a centre fits the weak reflections badly; moving the origin to the true
    centre (weak U_g averaged by the constraints) and refining again reaches the right one.
    """
    from .symmetry import _primitive_basis, symmetrize

    if all(len(g.members) == 1 and not g.real for g in groups):
        return []
    inv = np.linalg.inv(_primitive_basis(geometry))
    xy = geometry.reflection_xy
    norm = max(float(np.linalg.norm(vals[strong])), 1e-300)
    moves, seen = [], []
    for f1 in (0, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4):
        for f2 in (0, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4):
            if f1 == f2 == 0:
                continue
            shifted = vals * np.exp(2j * np.pi * (xy @ (inv @ np.array([f1, f2]))))
            sym = symmetrize(shifted, groups)
            if np.linalg.norm((shifted - sym)[strong]) > PSEUDO_ORIGIN_RTOL * norm:
                continue  # the strong U_g break the constraints here: not a candidate centre
            if np.linalg.norm(sym - vals) <= 1e-6 * norm or any(
                    np.linalg.norm(sym - m) <= 1e-6 * norm for m in seen):
                continue  # an equivalent centre (true symmetry) or a duplicate
            seen.append(sym)
            moves.append((f"origin_{f1:.3f}_{f2:.3f}", sym))
    return moves


def _weak_groups(vals: np.ndarray, groups: Sequence[SymmetryGroup], weak_fraction: float):
    """Indices of the weak groups (weakest first) and the mask of strong reflections."""
    size = np.array([np.abs(vals[g.members[0][0]]) for g in groups])
    weak = [int(i) for i in np.argsort(size) if size[i] < weak_fraction * size.max()]
    strong = np.ones(len(vals), bool)
    for i in weak:
        strong[[q for q, _ in groups[i].members]] = False
    return weak, strong


def _weak_moves(values: np.ndarray, groups: Sequence[SymmetryGroup], weak_fraction: float):
    """Trial starts for the weak groups (weak reflections have local minima nearby): all weak at
    zero, every sign pattern of the weakest :data:`MAX_SIGN_GROUPS` (one flip at a time for the
    others), and each weak group at zero."""
    import itertools

    vals = np.asarray(values, complex)
    weak, _ = _weak_groups(vals, groups, weak_fraction)
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


def _distinct(population: np.ndarray, n: int, rtol: float = 0.05) -> list[int]:
    """Indices of up to n population members (best first) that differ by > rtol relatively."""
    chosen: list[int] = []
    for i, u in enumerate(population):
        if all(np.linalg.norm(u - population[j]) > rtol * max(np.linalg.norm(u), 1e-12) for j in chosen):
            chosen.append(i)
        if len(chosen) == n:
            break
    return chosen


def _group_magnitudes(intensity: np.ndarray, geometry: Geometry, groups: Sequence[SymmetryGroup]):
    """Kinematic size of each group's U_g: sqrt of the tilt-averaged intensity of its beams."""
    mean = np.asarray(intensity, float).mean(axis=0)
    beam = {tuple(h): b for b, h in enumerate(geometry.hkl.tolist())}
    out = np.zeros(len(groups))
    for i, g in enumerate(groups):
        vals = []
        for q, _ in g.members:
            h = tuple(int(x) for x in geometry.reflection_hkl[q])
            for hh in (h, tuple(-x for x in h)):
                if hh in beam:
                    vals.append(mean[beam[hh]])
        out[i] = np.sqrt(max(np.mean(vals), 0.0)) if vals else 0.0
    return out


def kinematic_starts(intensity: np.ndarray, geometry: Geometry, groups: Sequence[SymmetryGroup], *,
                     thickness_range_nm=(5.0, 100.0), tilts: int = 100, n_out: int = 2,
                     weak_fraction: float = WEAK_FRACTION, sweeps: int = 2,
                     scales: Sequence[float] = tuple(np.geomspace(0.08, 0.8, 13)),
                     progress: bool = False) -> list[np.ndarray]:
    """Starts from the beams' mean intensities: |U_g| ∝ sqrt(mean_k I_g(k)), signs by descent.

    In the kinematic limit the tilt-averaged intensity of beam g grows as |U_g|², so the mean
    intensities give the sizes of the U_g up to a common factor (dynamical scattering blurs them to
    within a factor of ~2, and weak reflections come out too large: they are set to zero). The
    factor is scanned, then every group's sign is flipped in turn (strongest first, ``sweeps``
    times) and kept when the thickness-optimised R on ``tilts`` tilts decreases. With many beams
    this lands in the basin of least squares where a random search in tens of dimensions does not
    (SrTiO3 [001], 69 beams, 38 real parameters). Imaginary parts start at zero.

    progress : bool
        Show a progress bar over the sign flips.

    Returns
    -------
    list of ndarray
        Up to ``n_out`` U_g vectors (n_reflections,) [1/Å²], best first.
    """
    inten = np.asarray(intensity, float)
    if inten.shape != (geometry.n_tilts, geometry.n_beams):
        raise ValueError(f"intensity must have shape (n_tilts, n_beams) = "
                         f"{(geometry.n_tilts, geometry.n_beams)}, got {inten.shape}")
    if not np.all(np.isfinite(inten)) or np.any(inten < 0):
        raise ValueError("intensity must be finite and non-negative (NaN, inf or negative values found)")
    lo, hi = (float(v) for v in thickness_range_nm)
    if not (0 < lo < hi) or not np.isfinite(hi):
        raise ValueError(f"thickness_range_nm must be (low, high) with 0 < low < high, got {thickness_range_nm}")
    thick = np.arange(lo, hi + 1e-9, SEARCH_STEP_NM)
    stride = max(1, -(-geometry.n_tilts // tilts)) if tilts else 1
    obj = _Objective(geometry, inten, groups, thick, np.arange(0, geometry.n_tilts, stride))
    size = _group_magnitudes(inten, geometry, groups)
    if not np.any(size > 0):
        return []
    size = np.where(size >= weak_fraction * size.max(), size, 0.0)
    # parameter vector: real part of every group (imaginary parts, where free, start at zero)
    real_col = np.array([not is_im for _, _, is_im in obj.cols])
    col_group = np.cumsum(real_col) - 1
    base = np.where(real_col, size[col_group], 0.0)
    outs = []
    from tqdm.auto import tqdm

    n_flips = min(n_out, len(scales)) * sweeps * int(np.count_nonzero(base))
    bar = tqdm(total=len(scales) + n_flips, desc="kinematic starts", unit="eval", leave=False,
               disable=not progress)
    with kernel_threads():
        scored = sorted(((obj(c * base), c) for c in scales), key=lambda x: x[0])
        bar.update(len(scales))
        for _, c in scored[:n_out]:
            z = c * base
            best = obj(z)
            order = [j for j in np.argsort(-np.abs(z)) if z[j] != 0]
            for _ in range(sweeps):
                changed = False
                for j in order:
                    z[j] = -z[j]
                    e = obj(z)
                    bar.update(1)
                    if e < best:
                        best, changed = e, True
                    else:
                        z[j] = -z[j]
                if not changed:
                    break
            logger.info("kinematic start: scale %.3g, R = %.3g after sign descent", c, best)
            outs.append((best, obj.values(z)))
    bar.close()
    return [v for _, v in sorted(outs, key=lambda x: x[0])]
