"""The ``determine`` pipeline: from a pattern alone to U_g and thickness.

No atoms are needed: the geometry gives the lattice, the beams and the reflections. Stages:

1. **Symmetry.** The point-group operations the pattern obeys tie U_g together, with the origin on
   the symmetry elements; a centrosymmetric projection makes every U_g real. SrTiO3 [001] (4mm):
   20 complex U_g become 8 real numbers.
2. **Starts** (:mod:`~larbed.determination.starts`). Least squares converges from U_g within about
   ±30 %, not from random ones; the start comes from an explicit start (user, network: refined
   with data continuation), *kinematic starts* (|U_g| from the beams' mean intensities, signs by
   descent), or the *global search* (:mod:`~larbed.determination.search`).
3. **Polish** (:mod:`~larbed.determination.polish`): weak-reflection and pseudo-symmetry-origin moves.
4. **Final refinement** with Poisson weights when the pattern has a dose, standard errors from
   (JᵀWJ)⁻¹, trust warnings; U_g are reported with the origin fixed
   (:func:`larbed.origin.unique_origin`).

Everything finished is checkpointed in ``out_dir``; a rerun with the same data and settings skips
it, and a rerun of a finished run returns the saved result (same numbers, in seconds). A lock file
refuses a second run on the same folder while one is running; larbed deletes only files it wrote.

Thickness: without ``thickness_range_nm`` the scans cover 5–100 nm, and when the best fit does not
reach the solution the stages are run again over 2–250 nm (the global search only when the first
fit's thickness sat at an edge of 5–100 nm) and the better fit is kept. A range the user gives is
never widened. A fit that does not reach the solution with its thickness at an edge of the range,
or a thickness outside a range the user gave, is reported as a 'bound' warning
(:mod:`larbed.trust`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from .._checkpoint import fingerprint, folder_lock, write_json
from ..geometry import Geometry
from ..metrics import expected_noise_r, poisson_deviance
from ..origin import align_to_groups
from ..refinement import refine
from ..schema import check_diffracted, check_pattern, check_ug, pattern_dataset, pattern_dose
from ..structure_factors import input_ug
from ..symmetry import (
    SymmetryGroup,
    crystal_operations,
    groups_from_operations,
    pattern_operations,
    symmetry_groups,
)
from ..threads import uses_kernels
from ..trust import CHI2_MAX, R_MAX_NOISE_FREE, R_NOISE_FACTOR, check_thresholds
from .polish import polish, polish_poisson
from .records import finished_result, prepare_checkpoints
from .records import provenance as records_provenance
from .result import DeterminationResult, assemble, at_edge
from .search import default_ug_bound, distinct_members, global_search
from .starts import (
    SUCCESS_R_NOISE_FACTOR,
    SUCCESS_R_NOISE_FREE,
    StartRun,
    call_start,
    kinematic_starts,
    resolve_start,
    start_settings,
    start_values,
)

__all__ = ["AUTO_THICKNESS_RANGES_NM", "determine"]

logger = logging.getLogger(__name__)

#: Thickness ranges [nm] of the automatic scan: the first, then the wider one when the best fit
#: does not reach the solution.
AUTO_THICKNESS_RANGES_NM = ((5.0, 100.0), (2.0, 250.0))
@dataclass(frozen=True)
class _Plan:
    """The settings of one determine run (its public arguments, validated)."""

    start: object
    start_kind: str | None
    model: object
    seed: int
    n_starts: int
    client: object
    weights: str
    kinematic: bool
    search: bool
    search_time_s: float
    search_popsize: int
    search_tilts: int
    ug_bound: float
    perturbation: float
    n_perturbed: int
    task2_iterations: int
    task2_kwargs: dict | None
    polish_weak: bool
    polish_time_s: float
    max_iter: int
    thresholds: dict
    progress: bool
    measurement: object = None
    holdout: float = 0.0


@uses_kernels
def determine(
    pattern,
    geometry: Geometry,
    *,
    start="search",
    model="ann",
    seed: int = 0,
    n_starts: int = 4,
    client=None,
    thickness_range_nm: Sequence[float] | None = None,
    symmetry="auto",
    dose=None,
    weights: str = "auto",
    kinematic: bool = True,
    search: bool = True,
    search_time_s: float = 90.0,
    search_popsize: int = 10,
    search_tilts: int = 100,
    ug_bound: float | None = None,
    perturbation: float = 0.3,
    n_perturbed: int = 3,
    task2_iterations: int = 10,
    task2_kwargs: dict | None = None,
    polish_weak: bool = True,
    polish_time_s: float = 120.0,
    max_iter: int = 100,
    chi2_max: float = CHI2_MAX,
    r_noise_factor: float = R_NOISE_FACTOR,
    r_max: float = R_MAX_NOISE_FREE,
    out_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    measurement=None,
    holdout: float = 0.0,
    composition=None,
    space_group=None,
) -> DeterminationResult:
    """Determine U_g and the thickness from a pattern alone (see the module description).

    Parameters
    ----------
    pattern : xarray.Dataset, xarray.DataArray or ndarray
        Measured intensities over (tilt, beam).
    geometry : Geometry
        Beams, tilts, voltage and lattice (atoms only for ``symmetry='crystal'`` and ug_bound).
    start : {'search', 'task2', 'model'}, U_g or callable
        ``'search'``: kinematic starts and the global search only. A U_g DataArray/array [1/Å²]:
        that start. A callable ``start(pattern, geometry, *, seed) -> (ug, thickness_nm or None)``
        (optionally a third element, a dict recorded in ``history.attrs``): its prediction, e.g.
        :func:`larbed.learn.task2_start` or :func:`larbed.learn.model_start`. The names
        ``'task2'`` (Task 2 with ``model`` = 'ann' or 'cnn' and ``task2_iterations`` loop
        iterations; TensorFlow needed) and ``'model'`` (a trained :class:`larbed.learn.Regressor`
        given as ``model``) stand for those two. Each explicit start is aligned to the symmetry,
        ``n_perturbed`` ±``perturbation`` variants are refined too, and they seed the search.
    model : {'ann', 'cnn'} or Regressor
    seed : int
        Seed of the search, the perturbations and the network.
    n_starts : int
        Distinct members of the final search population refined as starts.
    client : dask.distributed.Client, optional
        Run the multi-start refinements and the search's evaluations on this cluster.
    thickness_range_nm : (float, float), optional
        Thickness range of the scans and the search [nm]. Default: automatic, 5–100 nm, widened
        to 2–250 nm when the best fit does not reach the solution. A range given here is never
        widened (a refined thickness outside it raises a 'bound' warning).
    symmetry : {'auto', 'pattern', 'crystal'}, None or sequence
        U_g constraints (:func:`larbed.symmetry.symmetry_groups`); ``'auto'`` = the operations the
        pattern obeys.
    dose : float or (n_tilts,) array, optional
        Electrons per tilt (default: the pattern's ``dose`` variable or ``attrs['dose']``): Poisson
        weights in the final fit.
    weights : {'auto', 'poisson', 'none'}
        Weights of the final refinement (see :func:`larbed.refine`).
    kinematic : bool
        Before the search, refine starts made from the beams' mean intensities
        (:func:`larbed.determination.kinematic_starts`: |U_g| ∝ sqrt of the tilt-averaged intensity,
        signs by descent). They reach the solution where a random search in many dimensions does
        not (SrTiO3 [001] with 69 beams).
    search : bool
        Run the global search when the explicit and kinematic starts do not reach the solution.
    search_time_s : float
        Time budget of the search [s].
    search_popsize, search_tilts, ug_bound
        See :func:`larbed.determination.global_search`; ``ug_bound=None``: ``default_ug_bound``.
    perturbation : float
        Relative size of the perturbed variants of explicit starts.
    n_perturbed : int
    task2_iterations : int
    task2_kwargs : dict, optional
        More arguments for :func:`larbed.learn.run_task2` (default ``weights=None``).
    polish_weak : bool
        After the best start, try the weak U_g (below :data:`WEAK_FRACTION` of the largest) at zero
        and with the opposite sign; keep moves that lower R (weak reflections have local minima).
    polish_time_s : float
        Time budget of those moves [s] (each is one short refinement).
    max_iter : int
        Iterations of the final refinement.
    chi2_max, r_noise_factor, r_max : float
        Trust thresholds of the final fit (see :mod:`larbed.trust`; defaults 2, 3 and 1e-3).
    out_dir : path, optional
        Checkpoints (``determine_checkpoint/``); a rerun with the same data and settings reuses
        every finished stage and start, and returns the saved result of a finished run. The folder
        is checked writable before any work and locked while the run lasts (a second run on it
        is refused); larbed deletes only the checkpoint files it wrote.
    resume : bool
        Reuse checkpoints (else delete larbed's checkpoint files in ``out_dir`` and start afresh).
    progress : bool
    measurement : larbed.Measurement, optional
        The measurement model (scale, background, absorption, tilt map; see :func:`larbed.refine`)
        refined with U_g in every start's refinement and the final one.
    holdout : float
        Fraction of the tilts (seeded by ``seed``) left out of the final refinement; its R on
        them is ``.r_free``.
    composition : mapping, optional
        Atoms per cell, e.g. ``{'Zn': 2, 'O': 2}``: first find the structure
        (:func:`larbed.structure.composition.composition_start`: the arrangements of the atoms on
        the space group's sites, a global search in their few parameters, then
        :func:`larbed.refine_structure`), and start the free U_g from its U_g (in place of
        ``start``, the kinematic starts, the perturbed variants and the weak-reflection polish:
        the structure fixes the signs of weak U_g). The result's ``crystal`` and ``structure``
        hold it.
    space_group : str, int or SpaceGroup, optional
        The space group of the composition search (default: the geometry's crystal's).

    Returns
    -------
    DeterminationResult
        With ``.warnings`` (empty when the answer can be trusted; see :mod:`larbed.trust`).

    Raises
    ------
    ValueError
        Bad input, a pattern without diffracted intensity, raw counts, an unwritable or locked
        ``out_dir`` (:class:`larbed._checkpoint.FolderLockedError`), checkpoints of another run.

    Examples
    --------
    >>> import larbed
    >>> p = larbed.presets.load("SrTiO3-2")
    >>> res = larbed.determine(p.simulate(), p.geometry, progress=False)  # doctest: +SKIP
    >>> res.r_factor < 1e-3, abs(res.thickness_nm - 30) < 0.5  # doctest: +SKIP
    (True, True)
    """
    t_start = time.perf_counter()
    from ..measurement import Measurement

    if measurement is not None and not isinstance(measurement, Measurement):
        raise TypeError(f"measurement must be a larbed.Measurement or None, got "
                        f"{type(measurement).__name__}")
    scaled = measurement is not None and (measurement.scale != "none"
                                          or measurement.background != "none")
    inten = check_pattern(pattern, geometry, dose, scaled=scaled)
    check_diffracted(inten)
    d = pattern_dose(pattern, dose, geometry.n_tilts)
    ranges, user_range = _thickness_ranges(thickness_range_nm)
    for name, val, low in (("n_starts", n_starts, 0), ("n_perturbed", n_perturbed, 0),
                           ("max_iter", max_iter, 1), ("seed", seed, 0)):
        _check_int(name, val, low)
    check_thresholds(chi2_max, r_noise_factor, r_max)
    ug_bound = default_ug_bound(geometry) if ug_bound is None else ug_bound
    if not np.isfinite(ug_bound) or ug_bound <= 0:
        raise ValueError(f"ug_bound must be a positive number [1/Å²], got {ug_bound!r}")
    for name, val in (("search_time_s", search_time_s), ("polish_time_s", polish_time_s)):
        if isinstance(val, bool) or not isinstance(val, (int, float, np.number)) or not (
                np.isfinite(val) and val >= 0):
            raise ValueError(f"{name} must be a finite number of seconds >= 0, got {val!r}")
    structure = None
    if composition is not None:
        if not (isinstance(start, str) and start == "search"):
            raise ValueError("composition= finds the start itself; do not give start= as well")
        from ..structure.composition import composition_start

        structure = composition_start(pattern, geometry, composition, space_group=space_group,
                                      thickness_range_nm=ranges[0], dose=dose, progress=progress)
        start, kinematic, n_perturbed, polish_weak = structure.ug, False, 0, False
    start, kind = _check_start(start, model, geometry)
    if not (kinematic or search or kind):
        raise ValueError("no start to refine: give start=..., or kinematic=True or search=True")
    settings = {"start": kind or "search", "model": model if isinstance(model, str) else "regressor",
                "seed": seed, "n_starts": n_starts, "kinematic": kinematic,
                "range": [list(r) for r in ranges] if user_range else "auto", "symmetry": str(symmetry),
                "search": search, "popsize": search_popsize, "tilts": search_tilts,
                "ug_bound": ug_bound, "perturbation": perturbation, "n_perturbed": n_perturbed,
                "task2_iterations": task2_iterations, "task2_kwargs": task2_kwargs or {},
                "polish_weak": polish_weak, "polish_time_s": polish_time_s, "weights": weights,
                "max_iter": max_iter, "holdout": float(holdout),
                "measurement": None if measurement is None else measurement.describe(),
                "user_start": None if kind != "user" else
                [np.round(start.values.real, 12).tolist(), np.round(start.values.imag, 12).tolist()],
                "start_callable": start_settings(start) if kind == "callable" else None}
    thresholds = {"chi2_max": chi2_max, "r_noise_factor": r_noise_factor, "r_max": r_max}
    plan = _Plan(start, kind, model, seed, n_starts, client, weights, kinematic, search,
                 search_time_s, search_popsize, search_tilts, ug_bound, perturbation, n_perturbed,
                 task2_iterations, task2_kwargs, polish_weak, polish_time_s, max_iter, thresholds,
                 progress, measurement, float(holdout))
    fp = fingerprint(inten, None if d is None else np.asarray(d, float), geometry.to_attrs(), settings)
    provenance = records_provenance(pattern, inten, d, {**settings, **thresholds})
    lock = contextlib.nullcontext() if out_dir is None else folder_lock(out_dir, "larbed determine")
    with lock:
        ckpt = None
        if out_dir is not None:
            ckpt, old = prepare_checkpoints(out_dir, fp, settings, resume)
            done = finished_result(ckpt, old, thresholds, geometry)
            if done is not None:
                if structure is not None:
                    done.crystal, done.structure = structure.crystal, structure
                return done
        res = _determine(pattern, inten, geometry, d, ranges, user_range, symmetry, plan, ckpt,
                         t_start, provenance)
        if structure is not None:
            res.crystal, res.structure = structure.crystal, structure
        if ckpt is not None:
            from ..io import save_pattern

            save_pattern(res.to_dataset(), os.path.join(ckpt, "result.nc"))
            write_json(os.path.join(ckpt, "config.json"),
                       {"fingerprint": fp, "settings": settings, "finished": True,
                        "thresholds": thresholds})
        return res


def _check_start(start, model, geometry: Geometry):
    """(start, kind): kind None (search), 'user' (U_g checked), 'task2', 'model' or 'callable'."""
    if callable(start):
        return start, "callable"
    if isinstance(start, str):
        if start not in ("search", "task2", "model"):
            raise ValueError(f"start must be 'search', 'task2', 'model', a U_g vector or a callable, "
                             f"got {start!r}")
        if start == "model" and (isinstance(model, str) or not hasattr(model, "predict")):
            raise ValueError("start='model' needs a trained larbed.learn.Regressor as model=")
        if start == "task2" and model not in ("ann", "cnn"):
            raise ValueError(f"start='task2' needs model='ann' or 'cnn', got {model!r}")
        return start, None if start == "search" else start
    return check_ug(geometry, start), "user"


def _explicit_candidates(pattern, inten, geometry, groups, plan: _Plan, run: StartRun, ckpt,
                         thickness_range):
    """(key, U_g) of the explicit start and its perturbed variants; info of a callable start."""
    if plan.start_kind is None:
        return [], {}
    info: dict = {}
    if plan.start_kind == "user":
        vals = plan.start.values
    else:
        _, fn = resolve_start(plan.start if plan.start_kind == "callable" else plan.start_kind,
                              plan.model, iterations=plan.task2_iterations,
                              task2_kwargs=plan.task2_kwargs,
                              thickness_range_nm=thickness_range, out_dir=ckpt,
                              progress=plan.progress)
        pds = pattern if isinstance(pattern, xr.Dataset) else pattern_dataset(geometry, inten)
        vals, _, info = call_start(fn, pds, geometry, plan.seed, run.path("network.json"))
    name = plan.start_kind
    aligned, _ = align_to_groups(geometry, vals, groups)
    cands = [(f"{name}0", aligned)]
    for k in range(plan.n_perturbed):
        fac = 1 + plan.perturbation * run.rng.uniform(-1, 1, geometry.n_reflections)
        pert, _ = align_to_groups(geometry, aligned * fac, groups)
        cands.append((f"{name}0_perturbed{k}", pert))
    return cands, info


#: With a background model, the kinematic starts see each beam's intensity less this percentile
#: over the tilts (a beam is weak somewhere: there it shows its background).
BACKGROUND_PERCENTILE = 5.0


def _without_background(inten: np.ndarray, measurement) -> np.ndarray:
    """The intensities less a background estimate (per beam: its low percentile over tilts) when
    the measurement model has a background; the data unchanged otherwise."""
    if measurement is None or measurement.background == "none":
        return inten
    floor = np.nanpercentile(inten, BACKGROUND_PERCENTILE, axis=0)
    if measurement.background != "per_beam":
        floor = np.full_like(floor, np.nanmin(floor))
    return np.clip(inten - floor[None, :], 0.0, None)


def _kinematic(run: StartRun, inten, geometry, groups, plan: _Plan, prefix, suffix, lo, hi):
    """Refine kinematic starts one at a time (stop at the first that solves); their candidates."""
    kpath = run.path(f"kinematic{suffix}.npz")
    if kpath and os.path.exists(kpath):
        with np.load(kpath) as f:
            kin = list(f["starts"])
    else:
        kin = kinematic_starts(_without_background(inten, plan.measurement), geometry, groups,
                               thickness_range_nm=(lo, hi), tilts=plan.search_tilts,
                               progress=plan.progress)
        if kpath:
            np.savez(kpath, starts=np.asarray(kin, complex).reshape(len(kin), geometry.n_reflections))
    cands = [(f"{prefix}kinematic{i}", v) for i, v in enumerate(kin)]
    for key, vals in cands:
        run.run([(key, vals)], (lo, hi))
        if run.solved(run.results[key]):
            break
    return cands


def _search(run: StartRun, inten, geometry, groups, plan: _Plan, cands, prefix, suffix, lo, hi):
    """The global search seeded with ``cands``, probed by refinements; then its distinct best."""
    spath = run.path(f"search{suffix}.npz")
    if spath and os.path.exists(spath):
        with np.load(spath) as f:
            search_out = {k: f[k] for k in f.files}
    else:
        n_probe = [0]

        def probe(values) -> bool:
            n_probe[0] += 1
            key = f"{prefix}probe{n_probe[0]}"
            run.run([(key, values)], (lo, hi))
            return run.solved(run.results[key])

        search_out = global_search(
            inten, geometry, groups, thickness_range_nm=(lo, hi), ug_bound=plan.ug_bound,
            seed=int(run.rng.integers(2**31)), time_budget_s=plan.search_time_s,
            popsize=plan.search_popsize, tilts=plan.search_tilts, init=[v for _, v in cands],
            probe=probe, client=plan.client, progress=plan.progress)
        if spath:
            np.savez(spath, **{k: np.asarray(v) for k, v in search_out.items()})
    if not run.solved(run.best(prefix)):
        chosen = distinct_members(search_out["population"], plan.n_starts)
        run.run([(f"{prefix}search{i}", search_out["population"][i]) for i in chosen], (lo, hi))
    return search_out


def _one_range(pattern, inten, geometry, groups, plan: _Plan, run: StartRun, explicit, round_i,
               lo, hi, search_here, stage):
    """All stages over one thickness range: (final refinement, search output) or None."""
    prefix, suffix = ("", "") if round_i == 0 else (f"wide{round_i}_", f"_wide{round_i}")
    cands = [(prefix + k, v) for k, v in explicit]
    stage(f"{lo:g}-{hi:g} nm: explicit starts")
    run.run(cands, (lo, hi), continuation=True)  # explicit starts are near: follow the data
    stage(f"{lo:g}-{hi:g} nm: kinematic starts")
    if plan.kinematic and not run.solved(run.best(prefix)):
        cands += _kinematic(run, inten, geometry, groups, plan, prefix, suffix, lo, hi)
    stage(f"{lo:g}-{hi:g} nm: search")
    search_out = None
    if search_here and not run.solved(run.best(prefix)):
        search_out = _search(run, inten, geometry, groups, plan, cands, prefix, suffix, lo, hi)
    b = run.best(prefix)
    if b is None:
        return None
    logger.info("determine: best start %s, R = %.3g", b["source"], b["r_factor"])
    stage(f"{lo:g}-{hi:g} nm: polish")
    if plan.polish_weak:
        b = polish(run, b, prefix, plan.polish_time_s)
    stage(f"{lo:g}-{hi:g} nm: final refinement")
    final = refine(pattern, geometry, input_ug(geometry, start_values(b)), b["thickness_nm"],
                   symmetry=list(groups), weights=plan.weights, dose=run.dose,
                   max_iter=plan.max_iter, progress=plan.progress,
                   checkpoint=run.path(f"final_refine{suffix}.json"), measurement=plan.measurement,
                   holdout=plan.holdout, seed=plan.seed, **plan.thresholds)
    stage(f"{lo:g}-{hi:g} nm: Poisson polish")
    if plan.polish_weak and final.weights == "poisson" and plan.measurement is None \
            and not plan.holdout:
        final = polish_poisson(pattern, inten, geometry, final, groups, run.dose, plan.max_iter,
                               plan.polish_time_s, run.ckpt, plan.progress, suffix, plan.thresholds)
    return final, search_out


def _determine(pattern, inten, geometry, d, ranges, user_range, symmetry, plan: _Plan, ckpt,
               t_start, provenance) -> DeterminationResult:
    from tqdm.auto import tqdm

    bar = tqdm(total=6 * len(ranges), desc="determine", unit="stage", disable=not plan.progress)

    def stage(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)

    groups, ops = resolve_groups(symmetry, inten, geometry, d)
    logger.info("determine: %d U_g in %d symmetry groups (%s)", geometry.n_reflections, len(groups),
                ", ".join(ops) or "no symmetry")
    success_r = SUCCESS_R_NOISE_FREE if d is None else SUCCESS_R_NOISE_FACTOR * expected_noise_r(inten, d)
    run = StartRun(inten, geometry, groups, d, success_r, ckpt, plan.client, plan.progress,
                   np.random.default_rng(plan.seed), measurement=plan.measurement)
    explicit, info = _explicit_candidates(pattern, inten, geometry, groups, plan, run, ckpt,
                                          ranges[0])
    rounds = []
    for round_i, (lo, hi) in enumerate(ranges):
        # a wider range repeats the (long) global search only when the last fit sat at an edge
        search_here = plan.search and (round_i == 0 or at_edge(rounds[-1][0].thickness_nm,
                                                                 *rounds[-1][2]))
        out = _one_range(pattern, inten, geometry, groups, plan, run, explicit, round_i, lo, hi,
                         search_here, stage)
        if out is None and round_i == 0:
            raise ValueError("no start to refine: give start=..., or kinematic=True or search=True")
        if out is None:
            logger.info("determine: no starts for %g-%g nm without the search; keeping %g-%g nm",
                        lo, hi, *rounds[-1][2])
            break
        rounds.append((*out, (lo, hi)))
        final = out[0]
        if user_range or round_i == len(ranges) - 1 or final.r_factor <= success_r:
            break
        logger.warning("determine: the best fit over %g-%g nm (t = %.3f nm, R = %.3g) does not reach "
                       "the solution; trying %g-%g nm", lo, hi, final.thickness_nm, final.r_factor,
                       *ranges[round_i + 1])
    bar.close()

    def score(item):
        f = item[0]
        return f.r_factor if d is None else poisson_deviance(inten, f.fit.intensity.values, d)

    final, search_out, (lo, hi) = min(rounds, key=score)
    return assemble(run, final, search_out, (lo, hi), user_range, groups, ops, plan.ug_bound,
                    info, success_r, t_start, provenance)


def resolve_groups(symmetry, intensity, geometry, dose):
    if symmetry is None:
        return [SymmetryGroup(((i, 1),), False) for i in range(geometry.n_reflections)], []
    if isinstance(symmetry, str) and symmetry in ("auto", "pattern"):
        ops = pattern_operations(intensity, geometry, dose=dose)
        return groups_from_operations(geometry, ops), ops
    if isinstance(symmetry, str) and symmetry == "crystal":
        ops = crystal_operations(geometry)
        return groups_from_operations(geometry, ops), ops
    groups = symmetry_groups(geometry, symmetry)
    return groups, ["user"]


def _check_int(name: str, val, low: int) -> None:
    if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {val!r}")


def _thickness_ranges(thickness_range_nm) -> tuple[list[tuple[float, float]], bool]:
    """The ranges to try and whether the user chose them (then they are never widened)."""
    if thickness_range_nm is None:
        return [tuple(r) for r in AUTO_THICKNESS_RANGES_NM], False
    try:
        lo, hi = (float(v) for v in thickness_range_nm)
    except (TypeError, ValueError):
        raise ValueError(f"thickness_range_nm must be (low, high) [nm], got {thickness_range_nm!r}") from None
    if not (0 < lo < hi) or not np.isfinite(hi):
        raise ValueError(f"thickness_range_nm must be (low, high) with 0 < low < high, got {thickness_range_nm}")
    return [(lo, hi)], True
