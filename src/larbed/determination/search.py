"""The global search of :func:`larbed.determine`: differential evolution over symmetry-reduced U_g.

Least squares converges from U_g within about ±30 % of the solution, not from random ones. The
search finds such a start without knowledge of the atoms: differential evolution over the
symmetry-reduced U_g, each candidate's thickness optimised by a scan (one decomposition per tilt for
all thicknesses), probed by short refinements.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from .. import bloch
from .._random import rng_from
from ..geometry import Geometry
from ..symmetry import SymmetryGroup
from ..threads import uses_kernels

__all__ = ["MAX_POPULATION", "SEARCH_STEP_NM", "UG_BOUND", "Objective", "default_ug_bound", "distinct_members",
           "global_search"]

logger = logging.getLogger(__name__)

#: Search bounds of Re U_g and Im U_g [1/Å²] (light crystals stay below ~0.1; the thesis's random
#: range is ±0.2); :func:`default_ug_bound` raises it for heavy ones.
UG_BOUND = 0.1
#: :func:`default_ug_bound`: this multiple of the largest independent-atom |U_g|, when above UG_BOUND.
UG_BOUND_IAM_FACTOR = 1.4


def default_ug_bound(geometry) -> float:
    """The search bound of :func:`larbed.determine` [1/Å²]: ``UG_BOUND``, or ``UG_BOUND_IAM_FACTOR``
    × the largest independent-atom |U_g| of ``geometry.crystal`` where that is larger (heavy
    elements: Au U_200 is 0.16 1/Å² at 200 kV)."""
    from ..structure_factors import compute_ug

    iam = compute_ug(geometry.crystal, geometry).values
    return max(UG_BOUND, UG_BOUND_IAM_FACTOR * float(np.max(np.abs(iam), initial=0.0)))
#: Thickness grid step of the global search (the scan over t is most of a candidate's cost) [nm].
SEARCH_STEP_NM = 1.0
#: Largest search population (the initial population is evaluated before the time budget counts).
MAX_POPULATION = 400
#: Differential-evolution engines (see :func:`global_search`).
ENGINES = ("scipy", "larbed")
DEFAULT_ENGINE = "larbed"


class Objective:
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
        if self.real:
            out = bloch.intensities(np.ascontiguousarray(mat.real), self.diag, "real", self.thick_a)
        else:
            out = bloch.intensities(np.ascontiguousarray(mat), self.diag, "hermitian", self.thick_a)
        return np.abs(out - self.data[None]).sum(axis=(1, 2)) / self.norm

    def __call__(self, z) -> float:
        return float(self.r_by_thickness(z).min())


def _evaluate_chunk(objective: Objective, zs) -> list[float]:
    return [objective(z) for z in zs]


def _evaluator(objective: Objective, client):
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


@uses_kernels
def global_search(intensity: np.ndarray, geometry: Geometry, groups: Sequence[SymmetryGroup], *,
                  thickness_range_nm=(5.0, 100.0), ug_bound: float = UG_BOUND, seed: int = 0,
                  time_budget_s: float = 90.0, popsize: int = 10, max_generations: int = 1000,
                  tilts: int = 100, init: Sequence[np.ndarray] = (), probe=None,
                  probe_every: int = 5, probe_top: int = 3, client=None,
                  progress: bool = False, engine: str = DEFAULT_ENGINE) -> dict:
    """Differential evolution over symmetry-reduced U_g, thickness optimised by scan per candidate.

    DE/rand/1/bin (mutation factor dithered in [0.5, 1), crossover 0.7), which explores more than
    the greedy best/1 variant: the pattern's R has many false minima in U_g. ``engine='scipy'``
    runs :func:`scipy.optimize.differential_evolution` (``updating='deferred'``, ``init=`` the
    population, ``workers=`` the Dask map, ``polish=False``, probes and the time budget in its
    callback); ``engine='larbed'`` the home-made loop (out-of-bound trial values reflected instead of
    redrawn). ``benchmarks/bench_search.py`` compares them.

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
    engine : {'scipy', 'larbed'}

    Returns
    -------
    dict
        ``population`` (n, n_reflections) complex U_g sorted by R, ``energies`` (n,), ``history`` best
        R per generation, ``generations``, ``stopped`` (reason), ``evaluations``.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown search engine {engine!r}; choose one of {ENGINES}")
    inten = np.asarray(intensity, float)
    lo, hi = (float(v) for v in thickness_range_nm)
    thick = np.arange(lo, hi + 1e-9, SEARCH_STEP_NM)
    stride = max(1, -(-geometry.n_tilts // tilts)) if tilts else 1
    obj = Objective(geometry, inten, groups, thick, np.arange(0, geometry.n_tilts, stride))
    n = obj.n_params
    rng = rng_from(seed)
    n_pop = int(np.clip(popsize * n, 8, MAX_POPULATION))
    pop = rng.uniform(-ug_bound, ug_bound, (n_pop, n))
    for i, u in enumerate(init):
        if i < n_pop:
            pop[i] = np.clip(obj.params(u), -ug_bound, ug_bound)
    from tqdm.auto import tqdm

    bar = tqdm(total=max_generations, desc="search", unit="gen", disable=not progress, leave=False)
    monitor = _Monitor(obj, probe, probe_every, probe_top, time_budget_s, bar)
    run = _evolve_scipy if engine == "scipy" else _evolve_larbed
    pop, energy = run(obj, pop, _evaluator(obj, client), ug_bound, rng, max_generations, monitor)
    bar.close()
    order = np.argsort(energy)
    population = np.array([obj.values(z) for z in pop[order]])
    logger.info("search (%s): %d generations, %d evaluations, best R = %.3g (%s)", engine,
                monitor.generation, monitor.evaluations, energy[order[0]], monitor.stopped)
    return {"population": population, "energies": energy[order],
            "history": np.asarray(monitor.history), "generations": monitor.generation,
            "stopped": monitor.stopped, "evaluations": monitor.evaluations, "n_params": n,
            "tilt_stride": stride, "engine": engine}


class _Monitor:
    """Per generation: best R, probes of the best new members, the time budget; says when to stop."""

    def __init__(self, obj, probe, probe_every, probe_top, time_budget_s, bar):
        self.obj, self.probe, self.every, self.top = obj, probe, probe_every, probe_top
        self.budget, self.bar = time_budget_s, bar
        self.t0 = time.perf_counter()
        self.history: list[float] = []
        self.probed: list[np.ndarray] = []
        self.generation = 0
        self.evaluations = 0
        self.stopped = "max_generations"

    def __call__(self, pop: np.ndarray, energy: np.ndarray) -> bool:
        """Record a finished generation; True to stop."""
        self.generation += 1
        self.history.append(float(energy.min()))
        self.bar.update(1)
        self.bar.set_postfix(R=f"{self.history[-1]:.3f}")
        if self.probe is not None and self.generation % self.every == 0 and self._probe(pop, energy):
            self.stopped = "probe reached the solution"
            return True
        if time.perf_counter() - self.t0 > self.budget:
            self.stopped = f"time budget {self.budget:g} s"
            return True
        if np.ptp(energy) <= 1e-12 * max(abs(float(energy.min())), 1e-300):
            self.stopped = "population converged"
            return True
        return False

    def _probe(self, pop, energy) -> bool:
        n_new = 0
        for i in np.argsort(energy):
            if any(np.linalg.norm(pop[i] - q) <= 0.05 * max(np.linalg.norm(q), 1e-12)
                   for q in self.probed):
                continue
            self.probed.append(pop[i].copy())
            n_new += 1
            if self.probe(self.obj.values(pop[i])):
                return True
            if n_new == self.top:
                return False
        return False


def _evolve_larbed(obj, pop, evaluate, ug_bound, rng, max_generations, monitor):
    """DE/rand/1/bin, deferred updating; out-of-bound trial values reflected into the bounds."""
    n_pop, n = pop.shape
    energy = evaluate(pop)
    monitor.evaluations += n_pop
    for _ in range(max_generations):
        f = rng.uniform(0.5, 1.0)
        r = np.array([rng.choice(np.delete(np.arange(n_pop), i), 3, replace=False) for i in range(n_pop)])
        mutant = pop[r[:, 0]] + f * (pop[r[:, 1]] - pop[r[:, 2]])
        cross = rng.random((n_pop, n)) < 0.7
        cross[np.arange(n_pop), rng.integers(0, n, n_pop)] = True
        trial = np.where(cross, mutant, pop)
        trial = np.where(trial > ug_bound, 2 * ug_bound - trial, trial)
        trial = np.where(trial < -ug_bound, -2 * ug_bound - trial, trial)
        trial = np.clip(trial, -ug_bound, ug_bound)
        e_trial = evaluate(trial)
        monitor.evaluations += n_pop
        better = e_trial <= energy
        pop[better], energy[better] = trial[better], e_trial[better]
        if monitor(pop, energy):
            break
    return pop, energy


def _evolve_scipy(obj, pop, evaluate, ug_bound, rng, max_generations, monitor):
    """:func:`scipy.optimize.differential_evolution` with the same population, moves and stops."""
    import scipy.optimize

    n_pop, n = pop.shape
    state = {"pop": pop.copy(), "energy": None}

    def workers(func, iterable):  # one generation's candidates at a time, Dask-parallel when given
        zs = np.array(list(iterable))
        monitor.evaluations += len(zs)
        return list(evaluate(zs))

    def callback(intermediate_result) -> bool:
        state["pop"] = np.asarray(intermediate_result.population)
        state["energy"] = np.asarray(intermediate_result.population_energies)
        return monitor(state["pop"], state["energy"])

    res = scipy.optimize.differential_evolution(
        obj, [(-ug_bound, ug_bound)] * n, strategy="rand1bin", maxiter=max_generations,
        popsize=max(1, n_pop // max(n, 1)), init=pop, mutation=(0.5, 1.0), recombination=0.7,
        rng=rng, callback=callback, polish=False, updating="deferred", workers=workers, tol=0,
        atol=0)
    if state["energy"] is None:  # stopped before a generation completed
        state["pop"] = np.asarray(res.population)
        state["energy"] = np.asarray(res.population_energies)
    return state["pop"], state["energy"]


def distinct_members(population: np.ndarray, n: int, rtol: float = 0.05) -> list[int]:
    """Indices of up to n population members (best first) that differ by > rtol relatively."""
    chosen: list[int] = []
    for i, u in enumerate(population):
        if all(np.linalg.norm(u - population[j]) > rtol * max(np.linalg.norm(u), 1e-12) for j in chosen):
            chosen.append(i)
        if len(chosen) == n:
            break
    return chosen
