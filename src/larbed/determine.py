"""From a pattern alone to U_g and thickness: the ``determine`` pipeline (SPEC §8, issue 4).

No atoms are needed: the geometry gives the lattice, the beams and the reflections. Stages:

1. **Symmetry.** The point-group operations the pattern obeys (:func:`larbed.symmetry.pattern_operations`)
   tie U_g together, with the origin on the symmetry elements; a centrosymmetric projection makes
   every U_g real. SrTiO3 [001] (4mm): 20 complex U_g become 8 real numbers.
2. **Starts.** Least squares converges from U_g within about ±30 % (SPEC §8), not from random ones
   (measured here: 0 of 16 random physical-prior starts on SrTiO3-2, R stalls at 0.12–0.52). So
   the start comes from

   * *kinematic starts* (:func:`larbed.search.kinematic_starts`): |U_g| from the square root of
     each beam's tilt-averaged intensity up to a scanned common factor, weak ones at zero, signs
     by descent on R — tried first, since they reach the solution with many beams where a random
     search in tens of dimensions does not;
   * a *global search*: differential evolution over the symmetry-reduced U_g, each candidate's
     thickness optimised by a scan (one decomposition per tilt for all thicknesses), on a subset
     of the tilts; every few generations a short refinement from the current best probes whether
     the basin of the solution has been reached, and stops the search when it has;
   * a *network*: Task 2 (:func:`larbed.learn.run_task2`) or a trained
     :class:`larbed.learn.Regressor`; its prediction (origin aligned to the symmetry) and
     ±``perturbation`` variants join the search population and the refinement starts;
   * or a user-given U_g.
3. **Multi-start refinement.** Thickness scan plus least squares (symmetry-constrained) from each
   start — through Dask when a client is given — and the best by R is kept.
4. **Final refinement** with Poisson weights when the pattern has a dose, standard errors from
   (JᵀWJ)⁻¹; U_g are reported after :func:`larbed.learn.make_unique_ug_vector` (the origin is not
   visible in intensities).

Everything finished is checkpointed in ``out_dir``; a rerun with the same settings skips it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from .geometry import Geometry
from .refinement import RefinementResult, check_pattern, pattern_dose, refine, thickness_scan
from .search import (
    UG_BOUND,
    WEAK_FRACTION,
    _distinct,
    _pseudo_origin_moves,
    _weak_groups,
    _weak_moves,
    global_search,
    kinematic_starts,
)
from .simulation import check_ug
from .structure_factors import input_ug
from .symmetry import SymmetryGroup, align_origin, align_to_groups, symmetry_groups

__all__ = ["DeterminationResult", "determine"]

logger = logging.getLogger(__name__)

#: Thickness grid step of the start scans [nm].
SCAN_STEP_NM = 0.5
#: From this many symmetry groups on, each start is refined in stages: the reflections up to these
#: quantiles of |g| (the others held at the start), then all.
STAGED_MIN_GROUPS = 30
STAGES = (0.3, 0.6, 1.0)
#: Data-continuation steps and iterations per step of :func:`_refine_continuation`.
CONTINUATION_STEPS = 8
CONTINUATION_ITERATIONS = 12
#: Refinement iterations of each multi-start candidate (per stage).
START_ITERATIONS = 40
#: A refinement counts as having reached the solution when R is below this (noise-free data) …
SUCCESS_R_NOISE_FREE = 1e-3
#: … or below this multiple of the expected Poisson floor of R (data with a dose).
SUCCESS_R_NOISE_FACTOR = 1.5
#: A standard error below this fraction of the largest one belongs to a fixed part (e.g. Im U_g
#: of a real, centrosymmetric solution after an origin shift by a lattice fraction).
FIXED_ERROR_RTOL = 1e-9
#: R below this is an exact fit of noise-free data: nothing left to polish.
EXACT_FIT_R = 1e-9
#: Polishing is tried only when R is within this factor of the success threshold.
POLISH_MAX_FACTOR = 10.0
#: A weak-reflection move is kept when it lowers R by at least this factor.
WEAK_IMPROVEMENT = 0.999
#: … and, in the Poisson polish, when it lowers the deviance by more than this (Δχ² = 9: 3σ).
POISSON_DEVIANCE_GAIN = 9.0


# ---------------------------------------------------------------------------------- starts
def _poisson_deviance(observed: np.ndarray, fitted: np.ndarray, dose: float) -> float:
    """Poisson deviance 2 Σ [μ − y + y ln(y/μ)] of counts y = dose·I_obs, μ = dose·I_fit."""
    y = dose * np.asarray(observed, float)
    mu = dose * np.maximum(np.asarray(fitted, float), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(y > 0, y * np.log(y / mu), 0.0)
    return float(2.0 * np.sum(mu - y + term))


def _polish_poisson(pattern, intensity: np.ndarray, geometry: Geometry, final: RefinementResult,
                    groups: Sequence[SymmetryGroup], dose: float, max_iter: int, time_s: float,
                    ckpt: str | None, progress: bool) -> RefinementResult:
    """Pseudo-origin and weak-reflection moves again, now in the Poisson likelihood of the fit.

    The starts are compared by unweighted R, which hardly sees the weak beams: with noise the
    best of them can lie around a false symmetry centre whose R is within 0.2 % of the right one
    (SrTiO3-7, dose 1e5, seed 1: origin (½, 0), weak U_g 300σ off, reduced χ² 2.09 instead of
    1.03). The Poisson deviance separates them clearly, so each move is refined with Poisson
    weights and the fit of lowest deviance is kept.
    """
    t0 = time.perf_counter()
    best, best_dev = final, _poisson_deviance(intensity, final.fit.intensity.values, dose)
    vals0 = final.ug.values
    _, strong = _weak_groups(vals0, groups, WEAK_FRACTION)
    moves = _pseudo_origin_moves(geometry, vals0, groups, strong) + _weak_moves(vals0, groups, WEAK_FRACTION)
    for name, vals in moves:
        if time.perf_counter() - t0 > time_s:
            logger.info("determine: Poisson polish time budget %g s used up", time_s)
            break
        path = os.path.join(ckpt, f"poisson_{name}.json") if ckpt else None
        saved = _read_json(path) if path else None
        if saved is None:
            res = refine(pattern, geometry, input_ug(geometry, vals), final.thickness_nm,
                         symmetry=list(groups), weights="poisson", dose=dose, max_iter=START_ITERATIONS,
                         poisson_passes=1, progress=False)
            saved = {"ug_real": res.ug.values.real.tolist(), "ug_imag": res.ug.values.imag.tolist(),
                     "thickness_nm": res.thickness_nm,
                     "deviance": _poisson_deviance(intensity, res.fit.intensity.values, dose)}
            if path:
                _write_json(path, saved)
        if saved["deviance"] < best_dev - POISSON_DEVIANCE_GAIN:
            logger.info("determine: %s lowers the Poisson deviance from %.6g to %.6g", name, best_dev,
                        saved["deviance"])
            best, best_dev = saved, saved["deviance"]
    if best is final:
        return final
    start = input_ug(geometry, np.asarray(best["ug_real"]) + 1j * np.asarray(best["ug_imag"]))
    return refine(pattern, geometry, start, best["thickness_nm"], symmetry=list(groups), weights="poisson",
                  dose=dose, max_iter=max_iter, progress=progress,
                  checkpoint=None if ckpt is None else os.path.join(ckpt, "final_refine_polished.json"))


def _refine_staged(intensity, geometry: Geometry, start, thickness_nm: float,
                   groups: Sequence[SymmetryGroup], max_iter: int):
    """Constrained least squares; for many groups low orders first (:data:`STAGES`).

    With many U_g, those that couple only distant beams are hardly seen by the data; refined from
    the start together with the rest they wander off to unphysical values and least squares stalls
    (ZnO-1 from truth ±10 %: R = 0.008 after 150 iterations, some |U| ~ 1 1/Å²). Refining the
    lower-order ones first and then all reaches the solution (R = 3e-14 in 21 iterations).
    """
    stages = (1.0,) if len(groups) < STAGED_MIN_GROUPS else STAGES
    glen = np.linalg.norm(geometry.reflection_xy, axis=1)
    res = None
    for frac in stages:
        mask = None if frac >= 1.0 else glen <= np.quantile(glen, frac) + 1e-9
        res = refine(intensity, geometry, start, thickness_nm, symmetry=list(groups), weights="none",
                     max_iter=max_iter, progress=False, refine_reflections=mask)
        start, thickness_nm = res.ug, res.thickness_nm
    return res


def _refine_continuation(intensity, geometry: Geometry, start, thickness_nm: float,
                         groups: Sequence[SymmetryGroup], max_iter: int):
    """Least squares along a path of data: I_λ = (1 − λ) I(start) + λ I_exp, λ → 1.

    At λ = 0 the start fits exactly; each step refines from the previous solution, so the fit
    follows the data to the measured pattern instead of jumping into the nearest false minimum.
    It reaches the solution from farther than direct least squares: ZnO-2 (97 beams, 101 U_g
    groups, 60 kV, 50 nm) from truth ±30 % and t 3 % off, 8 steps of 12 iterations and 60 final
    ones: R = 4e-14, where staged least squares from the same U_g ends at R = 0.17.
    """
    from .simulation import simulate

    ug = input_ug(geometry, start)
    inten0 = simulate(geometry, ug, thickness_nm).intensity.values
    t = thickness_nm
    for lam in np.linspace(1.0 / CONTINUATION_STEPS, 1.0, CONTINUATION_STEPS)[:-1]:
        target = (1.0 - lam) * inten0 + lam * intensity
        res = refine(target, geometry, ug, t, symmetry=list(groups), weights="none",
                     max_iter=CONTINUATION_ITERATIONS, progress=False)
        ug, t = res.ug, res.thickness_nm
    return refine(intensity, geometry, ug, t, symmetry=list(groups), weights="none",
                  max_iter=max_iter, progress=False)


def _refine_start(intensity: np.ndarray, geometry: Geometry, values: np.ndarray,
                  groups: Sequence[SymmetryGroup], thickness_range_nm, max_iter: int,
                  continuation_r: float | None = None) -> dict:
    """Thickness scan + constrained least squares from one start (picklable for Dask).

    With ``continuation_r``, a result above that R is followed by :func:`_refine_continuation`
    from the same start (the better of the two is kept).
    """
    lo, hi = thickness_range_nm
    start = input_ug(geometry, values)
    scan = thickness_scan(intensity, geometry, start, np.arange(lo, hi + 1e-9, SCAN_STEP_NM))
    res = _refine_staged(intensity, geometry, start, scan.attrs["best_thickness_nm"], groups, max_iter)
    if continuation_r is not None and res.r_factor > continuation_r:
        cont = _refine_continuation(intensity, geometry, start, scan.attrs["best_thickness_nm"],
                                    groups, max_iter)
        logger.info("determine: data continuation from the same start: R = %.3g (direct: %.3g)",
                    cont.r_factor, res.r_factor)
        if cont.r_factor < res.r_factor:
            res = cont
    return {"ug_real": res.ug.values.real.tolist(), "ug_imag": res.ug.values.imag.tolist(),
            "thickness_nm": res.thickness_nm, "r_factor": res.r_factor,
            "scan_r": float(scan.attrs["best_value"]), "scan_thickness_nm": scan.attrs["best_thickness_nm"],
            "iterations": res.n_iterations}


def _refine_from(intensity: np.ndarray, geometry: Geometry, values: np.ndarray, thickness_nm: float,
                 groups: Sequence[SymmetryGroup], max_iter: int) -> dict:
    res = _refine_staged(intensity, geometry, input_ug(geometry, values), thickness_nm, groups, max_iter)
    return {"ug_real": res.ug.values.real.tolist(), "ug_imag": res.ug.values.imag.tolist(),
            "thickness_nm": res.thickness_nm, "r_factor": res.r_factor, "scan_r": float("nan"),
            "scan_thickness_nm": thickness_nm, "iterations": res.n_iterations}


def _network_start(pattern_ds: xr.Dataset, geometry: Geometry, model, seed: int, iterations: int,
                   thickness_range_nm, out_dir, progress: bool, kwargs: dict):
    """(U_g values, thickness) predicted by Task 2 or by a trained Regressor."""
    from .learn import run_task2

    if not isinstance(model, str):  # a trained larbed.learn.Regressor
        from .learn.dataset import split_targets

        out = model.predict(model.inputs(pattern_ds["intensity"].values[None]))[0]
        ug, t = split_targets(out, tuple(thickness_range_nm))
        return np.asarray(ug, complex), float(t), {"source": "model"}
    opts = {"weights": None, "iterations": iterations, "seed": seed, "progress": progress,
            "thickness_range_nm": tuple(thickness_range_nm)}
    opts.update(kwargs)
    res = run_task2((pattern_ds, geometry), model=model,
                    out_dir=None if out_dir is None else os.path.join(out_dir, "task2"), **opts)
    return res.best_ug.values, res.thickness_nm, {"source": f"task2-{model}", "task2_r_min": res.r_min}


# ---------------------------------------------------------------------------------- result
@dataclass
class DeterminationResult:
    """Outcome of :func:`determine`.

    Attributes
    ----------
    ug : xarray.DataArray
        U_g [1/Å²] after :func:`larbed.learn.make_unique_ug_vector` (labelled like
        :func:`larbed.compute_ug`).
    ug_error : xarray.DataArray
        Standard errors in the same origin: real part σ(Re U_g), imaginary part σ(Im U_g) [1/Å²].
    thickness_nm, thickness_error_nm : float
    r_factor, chi2 : float
        R and reduced χ² of the final fit.
    standard_errors : xarray.Dataset
        ``ug_real``, ``ug_imag`` (reflection) and ``thickness_nm``.
    history : xarray.Dataset
        ``start_*`` over ``start`` (source, R after the start's refinement, thickness),
        ``search_best_r`` over ``generation``, and the final refinement's ``refine_*`` over
        ``iteration``.
    refinement : RefinementResult
        The final refinement (in the origin it was refined in).
    symmetry : list of str
        Operations detected in the pattern (or given) that tie the U_g.
    groups : list of SymmetryGroup
        The resulting groups of tied U_g (one free Re, and Im unless real, per group).
    origin_shift : ndarray
        In-plane shift r0 [Å] applied by make_unique.
    elapsed_s : float
        Wall time of the whole run (resumed parts not included).
    """

    ug: xr.DataArray
    ug_error: xr.DataArray
    thickness_nm: float
    thickness_error_nm: float
    r_factor: float
    chi2: float
    standard_errors: xr.Dataset
    history: xr.Dataset
    refinement: RefinementResult = field(repr=False)
    symmetry: list
    groups: list
    origin_shift: np.ndarray
    elapsed_s: float
    geometry: Geometry = field(repr=False)

    def compare(self, ug_true, thickness_true_nm: float | None = None) -> xr.Dataset:
        """Found vs true U_g after aligning the true origin to the found one.

        Returns a Dataset over ``reflection``: ``found``, ``true`` (aligned), ``error`` (complex
        standard errors), ``deviation`` (found − true), ``relative`` (|found − true| / |true|),
        ``z_real``, ``z_imag`` (|deviation| / standard error of Re and Im; NaN where that part was
        fixed, e.g. Im U_g of a centrosymmetric projection) and ``z`` (the larger); attrs
        ``thickness_true_nm``.
        """
        truth = check_ug(self.geometry, ug_true).values
        aligned, _ = align_origin(self.geometry, truth, self.ug.values)
        found = self.ug.values
        dev = found - aligned
        err = self.ug_error.values
        scale = max(float(np.max(np.abs(err.real))), float(np.max(np.abs(err.imag))), 1e-300)
        with np.errstate(divide="ignore", invalid="ignore"):
            z_re = np.where(err.real > FIXED_ERROR_RTOL * scale, np.abs(dev.real) / err.real, np.nan)
            z_im = np.where(err.imag > FIXED_ERROR_RTOL * scale, np.abs(dev.imag) / err.imag, np.nan)
            rel = np.abs(dev) / np.abs(aligned)
        z = np.fmax(z_re, z_im)
        ds = xr.Dataset(
            {"found": ("reflection", found), "true": ("reflection", aligned),
             "error": ("reflection", err), "deviation": ("reflection", dev),
             "relative": ("reflection", rel), "z_real": ("reflection", z_re),
             "z_imag": ("reflection", z_im), "z": ("reflection", z)},
            coords={c: self.ug.coords[c] for c in self.ug.coords},
        )
        ds.attrs["thickness_true_nm"] = np.nan if thickness_true_nm is None else float(thickness_true_nm)
        ds.attrs["thickness_nm"] = self.thickness_nm
        return ds

    def summary(self) -> dict:
        return {"r_factor": self.r_factor, "thickness_nm": self.thickness_nm,
                "thickness_error_nm": self.thickness_error_nm, "chi2": self.chi2,
                "symmetry": " ".join(self.symmetry), "elapsed_s": self.elapsed_s}

    def to_dataset(self) -> xr.Dataset:
        """Fit, observed pattern, unique U_g with errors and the histories in one Dataset."""
        from .simulation import attach_ug

        ds = self.refinement.to_dataset()
        ds = attach_ug(ds, self.ug, "ug")
        ds["ug_error_real"] = ("reflection", self.ug_error.values.real, {"units": "1/Å^2"})
        ds["ug_error_imag"] = ("reflection", self.ug_error.values.imag, {"units": "1/Å^2"})
        for name in self.history.data_vars:
            if name.startswith(("start_", "search_")):
                ds[name] = self.history[name]
        ds.attrs.update({"title": "larbed determine result", "thickness_nm": self.thickness_nm,
                         "thickness_error_nm": self.thickness_error_nm, "r_factor": self.r_factor,
                         "chi2": self.chi2, "symmetry": list(self.symmetry),
                         "origin_shift_angstrom": [float(v) for v in self.origin_shift],
                         "elapsed_s": self.elapsed_s})
        return ds

    def save(self, out_dir: str | os.PathLike) -> list[str]:
        """Write ``determine_result.nc`` (everything) and ``ug.nc`` into ``out_dir``."""
        from .io import save_pattern, save_ug

        os.makedirs(out_dir, exist_ok=True)
        paths = [os.path.join(out_dir, "determine_result.nc"), os.path.join(out_dir, "ug.nc")]
        save_pattern(self.to_dataset(), paths[0])
        save_ug(self.ug, paths[1])
        return paths

    def plot(self, out_dir: str | os.PathLike, ug_true=None) -> list[str]:
        """PNGs: pattern vs fit with residuals, U_g with error bars (vs the truth when given),
        R per refinement iteration. Returns the paths."""
        from matplotlib.figure import Figure

        from .plotting import compare_patterns

        os.makedirs(out_dir, exist_ok=True)
        paths = []
        fit = self.refinement.fit
        obs = fit[["observed"]].rename({"observed": "intensity"})
        fig = compare_patterns(obs, fit, geometry=self.geometry)
        paths.append(os.path.join(out_dir, "pattern_vs_fit.png"))
        fig.savefig(paths[-1], dpi=110)

        fig = Figure(figsize=(max(6.0, 0.28 * self.geometry.n_reflections), 4.5), layout="constrained")
        ax = fig.subplots()
        x = np.arange(self.geometry.n_reflections)
        found, err = self.ug.values, self.ug_error.values
        ax.errorbar(x - 0.12, found.real, yerr=err.real, fmt="o", ms=3, label="Re U found")
        if np.max(np.abs(found.imag)) > 1e-12 * np.max(np.abs(found)):
            ax.errorbar(x + 0.12, found.imag, yerr=err.imag, fmt="s", ms=3, label="Im U found")
        if ug_true is not None:
            truth, _ = align_origin(self.geometry, check_ug(self.geometry, ug_true).values, found)
            ax.plot(x, truth.real, "k_", ms=10, label="Re U true (origin aligned)")
            if np.max(np.abs(truth.imag)) > 1e-9 * np.max(np.abs(truth)):
                ax.plot(x, truth.imag, "r_", ms=10, label="Im U true")
        ax.set_xticks(x)
        ax.set_xticklabels(self.geometry.reflection_labels(), rotation=90, fontsize=7)
        ax.set_ylabel("U_g [1/Å²]")
        ax.axhline(0, color="0.7", lw=0.5)
        ax.legend(fontsize=8)
        ax.set_title(f"U_g (t = {self.thickness_nm:.3f} ± {self.thickness_error_nm:.3f} nm, "
                     f"R = {self.r_factor:.3g})")
        paths.append(os.path.join(out_dir, "ug.png"))
        fig.savefig(paths[-1], dpi=110)

        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        hist = self.refinement.history
        if hist.sizes.get("iteration", 0):
            ax.semilogy(hist.iteration, hist.r_factor, "o-", ms=3)
        ax.set_xlabel("refinement iteration")
        ax.set_ylabel("R")
        paths.append(os.path.join(out_dir, "refinement_history.png"))
        fig.savefig(paths[-1], dpi=110)
        return paths


def _unique_origin(geometry: Geometry, ug: xr.DataArray, groups: Sequence[SymmetryGroup]):
    """make_unique_ug_vector, then among the origins that keep the two reference phases (a finite
    set when the references span a sublattice) the one where the symmetry constraints hold."""
    from .learn import make_unique_ug_vector
    from .symmetry import symmetrize

    unique, r0, (p, q) = make_unique_ug_vector(ug, geometry, return_shift=True)
    if all(len(g.members) == 1 and not g.real for g in groups):
        return unique, np.asarray(r0, float)
    xy = geometry.reflection_xy
    inv = np.linalg.inv(xy[[p, q]])
    vals = unique.values
    best = (np.inf, np.zeros(2))
    for m1 in range(-3, 4):
        for m2 in range(-3, 4):
            r = inv @ np.array([m1, m2], float)
            shifted = vals * np.exp(2j * np.pi * (xy @ r))
            viol = float(np.linalg.norm(shifted - symmetrize(shifted, groups)))
            if viol < best[0] - 1e-12 * np.linalg.norm(vals):
                best = (viol, r)
    shifted = vals * np.exp(2j * np.pi * (xy @ best[1]))
    return unique.copy(data=shifted), np.asarray(r0, float) + best[1]


def _rotate_errors(res: RefinementResult, phase: np.ndarray) -> np.ndarray:
    """Standard errors of U·exp(iφ) from the (Re, Im) covariance blocks of each reflection."""
    p = len(phase)
    cov = res.covariance.values
    c, s = np.cos(np.angle(phase)), np.sin(np.angle(phase))
    s = np.where(np.abs(s) < 1e-12, 0.0, s)  # shifts by lattice fractions: no Re/Im mixing
    c = np.where(s == 0.0, np.sign(c), c)
    out = np.empty(p, complex)
    for i in range(p):
        block = cov[np.ix_([i, p + i], [i, p + i])]
        rot = np.array([[c[i], -s[i]], [s[i], c[i]]])
        b = rot @ block @ rot.T if np.all(np.isfinite(block)) else np.full((2, 2), np.inf)
        out[i] = np.sqrt(abs(b[0, 0])) + 1j * np.sqrt(abs(b[1, 1]))
    return out


def _fingerprint(intensity: np.ndarray, geometry: Geometry, settings: dict) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(intensity).tobytes())
    h.update(json.dumps(geometry.to_attrs(), sort_keys=True, default=str).encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)
    os.replace(tmp, path)


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------- pipeline
def _expected_noise_r(intensity: np.ndarray, dose: float) -> float:
    """Expected R between Poisson data and its mean: Σ √(2I/(π D)) / Σ I (large-count limit)."""
    return float(np.sum(np.sqrt(2.0 * np.maximum(intensity, 0.0) / (np.pi * dose))) / intensity.sum())


def _resolve_groups(symmetry, intensity, geometry, dose):
    from .symmetry import crystal_operations, groups_from_operations, pattern_operations

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


def determine(
    pattern,
    geometry: Geometry,
    *,
    start="search",
    model="ann",
    seed: int = 0,
    n_starts: int = 4,
    client=None,
    thickness_range_nm: Sequence[float] = (5.0, 100.0),
    symmetry="auto",
    dose: float | None = None,
    weights: str = "auto",
    kinematic: bool = True,
    search: bool = True,
    search_time_s: float = 90.0,
    search_popsize: int = 10,
    search_tilts: int = 100,
    ug_bound: float = UG_BOUND,
    perturbation: float = 0.3,
    n_perturbed: int = 3,
    task2_iterations: int = 10,
    task2_kwargs: dict | None = None,
    polish_weak: bool = True,
    polish_time_s: float = 120.0,
    max_iter: int = 100,
    out_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
) -> DeterminationResult:
    """Determine U_g and the thickness from a pattern alone (see the module description).

    Parameters
    ----------
    pattern : xarray.Dataset, xarray.DataArray or ndarray
        Measured intensities over (tilt, beam).
    geometry : Geometry
        Beams, tilts, voltage and lattice (the crystal's atoms are not used, except with
        ``symmetry='crystal'``).
    start : {'search', 'task2', 'model'} or U_g
        ``'search'``: global search only. ``'task2'``: a Task 2 network prediction
        (:func:`larbed.learn.run_task2` with ``model`` = 'ann' or 'cnn', ``task2_iterations``
        loop iterations; TensorFlow needed) starts the refinement and seeds the search.
        ``'model'``: the prediction of a trained :class:`larbed.learn.Regressor` given as ``model``.
        A U_g DataArray/array [1/Å²]: that start. Each explicit start is aligned to the symmetry and
        ``n_perturbed`` ±``perturbation`` variants are refined too.
    model : {'ann', 'cnn'} or Regressor
    seed : int
        Seed of the search, the perturbations and the network.
    n_starts : int
        Distinct members of the final search population refined as starts.
    client : dask.distributed.Client, optional
        Run the multi-start refinements and the search's evaluations on this cluster.
    thickness_range_nm : (float, float)
        Thickness range of the scans and the search [nm].
    symmetry : {'auto', 'pattern', 'crystal'}, None or sequence
        U_g constraints (:func:`larbed.symmetry.symmetry_groups`); ``'auto'`` = the operations the
        pattern obeys.
    dose : float, optional
        Electrons per tilt (default ``pattern.attrs['dose']``): Poisson weights in the final fit.
    weights : {'auto', 'poisson', 'none'}
        Weights of the final refinement (see :func:`larbed.refine`).
    kinematic : bool
        Before the search, refine starts made from the beams' mean intensities
        (:func:`larbed.search.kinematic_starts`: |U_g| ∝ sqrt of the tilt-averaged intensity,
        signs by descent). They reach the solution where a random search in many dimensions does
        not (SrTiO3 [001] with 69 beams).
    search : bool
        Run the global search when the explicit and kinematic starts do not reach the solution.
    search_time_s : float
        Time budget of the search [s].
    search_popsize, search_tilts, ug_bound
        See :func:`larbed.search.global_search`.
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
    out_dir : path, optional
        Checkpoints (``determine_checkpoint/``); a rerun with the same data and settings reuses
        every finished stage and start.
    resume : bool
        Reuse checkpoints (else start afresh).
    progress : bool

    Returns
    -------
    DeterminationResult

    Examples
    --------
    >>> import larbed
    >>> p = larbed.presets.load("SrTiO3-2")
    >>> res = larbed.determine(p.simulate(), p.geometry, progress=False)  # doctest: +SKIP
    >>> res.r_factor < 1e-3, abs(res.thickness_nm - 30) < 0.5  # doctest: +SKIP
    (True, True)
    """
    t_start = time.perf_counter()
    inten = check_pattern(pattern, geometry)
    d = pattern_dose(pattern, dose)
    lo, hi = (float(v) for v in thickness_range_nm)
    if not (0 < lo < hi) or not np.isfinite(hi):
        raise ValueError(f"thickness_range_nm must be (low, high) with 0 < low < high, got {thickness_range_nm}")
    for name, val in (("n_starts", n_starts), ("n_perturbed", n_perturbed), ("max_iter", max_iter)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < (1 if name == "max_iter" else 0):
            raise ValueError(f"{name} must be a non-negative integer, got {val!r}")
    explicit_kind = None
    if isinstance(start, str):
        if start not in ("search", "task2", "model"):
            raise ValueError(f"start must be 'search', 'task2', 'model' or a U_g vector, got {start!r}")
        if start == "model" and (isinstance(model, str) or not hasattr(model, "predict")):
            raise ValueError("start='model' needs a trained larbed.learn.Regressor as model=")
        if start == "task2" and model not in ("ann", "cnn"):
            raise ValueError(f"start='task2' needs model='ann' or 'cnn', got {model!r}")
        explicit_kind = None if start == "search" else start
    else:
        start = check_ug(geometry, start)
        explicit_kind = "user"

    settings = {"start": explicit_kind or "search", "model": model if isinstance(model, str) else "regressor",
                "seed": seed, "n_starts": n_starts, "kinematic": kinematic, "range": [lo, hi], "symmetry": str(symmetry),
                "search": search, "popsize": search_popsize, "tilts": search_tilts,
                "ug_bound": ug_bound, "perturbation": perturbation, "n_perturbed": n_perturbed,
                "task2_iterations": task2_iterations, "task2_kwargs": task2_kwargs or {},
                "polish_weak": polish_weak, "polish_time_s": polish_time_s,
                "user_start": None if explicit_kind != "user" else
                [np.round(start.values.real, 12).tolist(), np.round(start.values.imag, 12).tolist()]}
    ckpt = None
    if out_dir is not None:
        ckpt = os.path.join(os.fspath(out_dir), "determine_checkpoint")
        fp = _fingerprint(inten, geometry, settings)
        cfg_path = os.path.join(ckpt, "config.json")
        old = _read_json(cfg_path) if resume else None
        if old is not None and old.get("fingerprint") != fp:
            raise ValueError(f"{ckpt!r} holds a determine run with other data or settings; "
                             "use another out_dir or resume=False")
        if old is None and os.path.isdir(ckpt):
            import shutil

            shutil.rmtree(ckpt)
        os.makedirs(ckpt, exist_ok=True)
        _write_json(cfg_path, {"fingerprint": fp, "settings": settings})

    groups, ops = _resolve_groups(symmetry, inten, geometry, d)
    logger.info("determine: %d U_g in %d symmetry groups (%s)", geometry.n_reflections, len(groups),
                ", ".join(ops) or "no symmetry")
    success_r = SUCCESS_R_NOISE_FREE if d is None else SUCCESS_R_NOISE_FACTOR * _expected_noise_r(inten, d)
    rng = np.random.default_rng(seed)
    results: dict[str, dict] = {}

    def run(cands: list[tuple[str, np.ndarray]], continuation: bool = False) -> None:
        todo = []
        for key, vals in cands:
            saved = _read_json(os.path.join(ckpt, f"start_{key}.json")) if ckpt else None
            if saved is not None:
                results[key] = saved
            else:
                todo.append((key, vals))
        if not todo:
            return
        cont_r = success_r if continuation else None
        args = [(inten, geometry, v, groups, (lo, hi), START_ITERATIONS, cont_r) for _, v in todo]
        if client is not None:
            from dask.distributed import as_completed

            futures = {client.submit(_refine_start, *a, pure=False): k
                       for (k, _), a in zip(todo, args, strict=True)}
            outs = ((futures[f], f.result()) for f in as_completed(futures))
        else:
            outs = ((k, _refine_start(*a)) for (k, _), a in zip(todo, args, strict=True))
        for key, out in outs:
            out["source"] = key
            results[key] = out
            if ckpt:
                _write_json(os.path.join(ckpt, f"start_{key}.json"), out)
            logger.info("determine: start %s -> R = %.3g, t = %.2f nm", key, out["r_factor"],
                        out["thickness_nm"])

    def best():
        return min(results.values(), key=lambda r: r["r_factor"]) if results else None

    def _try(key, values, thickness):
        saved = _read_json(os.path.join(ckpt, f"start_{key}.json")) if ckpt else None
        out = saved or _refine_from(inten, geometry, values, thickness, groups, START_ITERATIONS)
        out["source"] = key
        results[key] = out
        if ckpt and saved is None:
            _write_json(os.path.join(ckpt, f"start_{key}.json"), out)
        return out

    def _values(r):
        return np.asarray(r["ug_real"]) + 1j * np.asarray(r["ug_imag"])

    def _polish(b):
        """Weak-reflection and pseudo-symmetry-origin moves from the best start (two rounds)."""
        t_polish = time.perf_counter()
        for round_ in range(2):
            start_r = b["r_factor"]
            if start_r <= EXACT_FIT_R or start_r > POLISH_MAX_FACTOR * success_r:
                return b  # exact already, or a wrong basin that weak moves cannot leave
            vals = _values(b)
            _, strong = _weak_groups(vals, groups, WEAK_FRACTION)
            bases = [b] + [_try(f"polish{round_}_{name}", v, b["thickness_nm"])
                           for name, v in _pseudo_origin_moves(geometry, vals, groups, strong)]
            best_out = min(bases, key=lambda r: r["r_factor"])
            for base_i, base in enumerate(sorted(bases, key=lambda r: r["r_factor"])):
                for name, v in _weak_moves(_values(base), groups, WEAK_FRACTION):
                    if time.perf_counter() - t_polish > polish_time_s:
                        logger.info("determine: polish time budget %g s used up", polish_time_s)
                        break
                    out = _try(f"polish{round_}_{base_i}_{name}", v, base["thickness_nm"])
                    if out["r_factor"] < best_out["r_factor"]:
                        best_out = out
                    if best_out["r_factor"] <= 1e-3 * min(start_r, success_r):
                        break
                if best_out["r_factor"] <= 1e-3 * min(start_r, success_r):
                    break
            if best_out["r_factor"] >= WEAK_IMPROVEMENT * start_r:
                return b
            logger.info("determine: %s lowers R from %.3g to %.3g", best_out["source"], start_r,
                        best_out["r_factor"])
            b = best_out
        return b

    # explicit starts (network, trained model, user) and their perturbations
    explicit: list[np.ndarray] = []
    extra: dict = {}
    if explicit_kind == "user":
        explicit.append(start.values)
    elif explicit_kind in ("task2", "model"):
        path = os.path.join(ckpt, "network.json") if ckpt else None
        saved = _read_json(path) if path else None
        if saved is None:
            pds = pattern if isinstance(pattern, xr.Dataset) else None
            if pds is None:
                from .simulation import pattern_coords

                pds = xr.Dataset(coords=pattern_coords(geometry))
                pds["intensity"] = (("tilt", "beam"), inten)
            vals, t_net, extra = _network_start(pds, geometry, model, seed, task2_iterations, (lo, hi),
                                                ckpt, progress, task2_kwargs or {})
            saved = {"real": np.real(vals).tolist(), "imag": np.imag(vals).tolist(), "t": t_net, **extra}
            if path:
                _write_json(path, saved)
        extra = {k: v for k, v in saved.items() if k not in ("real", "imag")}
        explicit.append(np.asarray(saved["real"]) + 1j * np.asarray(saved["imag"]))
    cands = []
    for i, vals in enumerate(explicit):
        aligned, _ = align_to_groups(geometry, vals, groups)
        cands.append((f"{explicit_kind}{i}", aligned))
        for k in range(n_perturbed):
            fac = 1 + perturbation * rng.uniform(-1, 1, geometry.n_reflections)
            pert, _ = align_to_groups(geometry, aligned * fac, groups)
            cands.append((f"{explicit_kind}{i}_perturbed{k}", pert))
    run(cands, continuation=True)  # explicit starts are near: follow the data from them

    b = best()
    if kinematic and (b is None or b["r_factor"] > success_r):
        kpath = os.path.join(ckpt, "kinematic.npz") if ckpt else None
        if kpath and os.path.exists(kpath):
            with np.load(kpath) as f:
                kin = list(f["starts"])
        else:
            kin = kinematic_starts(inten, geometry, groups, thickness_range_nm=(lo, hi), tilts=search_tilts)
            if kpath:
                np.savez(kpath, starts=np.asarray(kin, complex).reshape(len(kin), geometry.n_reflections))
        kin_cands = [(f"kinematic{i}", v) for i, v in enumerate(kin)]
        for key, vals in kin_cands:  # one at a time: stop at the first that reaches the solution
            run([(key, vals)])
            if results[key]["r_factor"] <= success_r:
                break
        cands += kin_cands

    search_out = None
    b = best()
    if search and (b is None or b["r_factor"] > success_r):
        spath = os.path.join(ckpt, "search.npz") if ckpt else None
        if spath and os.path.exists(spath):
            with np.load(spath) as f:
                search_out = {k: f[k] for k in f.files}
        else:
            n_probe = [0]

            def probe(values) -> bool:
                n_probe[0] += 1
                run([(f"probe{n_probe[0]}", values)])
                return results[f"probe{n_probe[0]}"]["r_factor"] <= success_r

            search_out = global_search(
                inten, geometry, groups, thickness_range_nm=(lo, hi), ug_bound=ug_bound,
                seed=int(rng.integers(2**31)), time_budget_s=search_time_s, popsize=search_popsize,
                tilts=search_tilts, init=[v for _, v in cands], probe=probe, client=client,
                progress=progress,
            )
            if spath:
                np.savez(spath, **{k: np.asarray(v) for k, v in search_out.items()})
        b = best()
        if b is None or b["r_factor"] > success_r:
            chosen = _distinct(search_out["population"], n_starts)
            run([(f"search{i}", search_out["population"][i]) for i in chosen])
    b = best()
    if b is None:
        raise ValueError("no start to refine: give start=..., or kinematic=True or search=True")
    logger.info("determine: best start %s, R = %.3g", b["source"], b["r_factor"])
    if polish_weak:
        b = _polish(b)

    ug_best = input_ug(geometry, np.asarray(b["ug_real"]) + 1j * np.asarray(b["ug_imag"]))
    final = refine(pattern, geometry, ug_best, b["thickness_nm"], symmetry=list(groups), weights=weights,
                   dose=d, max_iter=max_iter, progress=progress,
                   checkpoint=None if ckpt is None else os.path.join(ckpt, "final_refine.json"))
    if polish_weak and final.weights == "poisson":
        final = _polish_poisson(pattern, inten, geometry, final, groups, d, max_iter, polish_time_s,
                                ckpt, progress)
    unique, r0 = _unique_origin(geometry, final.ug, groups)
    phase = np.exp(2j * np.pi * (geometry.reflection_xy @ np.asarray(r0)))
    err = _rotate_errors(final, phase)
    ug_error = unique.copy(data=err)  # may hold inf (undetermined)
    ug_error.attrs.update({"source": "standard error",
                           "long_name": "standard errors: real part σ(Re U_g), imaginary part σ(Im U_g)"})
    unique.attrs["source"] = "determine"
    std = xr.Dataset({"ug_real": ("reflection", err.real, {"units": "1/Å^2"}),
                      "ug_imag": ("reflection", err.imag, {"units": "1/Å^2"}),
                      "thickness_nm": ((), final.thickness_error_nm, {"units": "nm"})},
                     coords={c: unique.coords[c] for c in unique.coords})
    keys = sorted(results, key=lambda k: results[k]["r_factor"])
    hist = xr.Dataset(
        {"start_source": ("start", np.array(keys, dtype=str)),
         "start_r_factor": ("start", [results[k]["r_factor"] for k in keys]),
         "start_thickness_nm": ("start", [results[k]["thickness_nm"] for k in keys]),
         "start_scan_r": ("start", [results[k]["scan_r"] for k in keys])},
        coords={"start": np.arange(len(keys))},
    )
    if search_out is not None and len(search_out["history"]):
        hist["search_best_r"] = ("generation", np.asarray(search_out["history"], float))
        hist.attrs["search_stopped"] = str(search_out["stopped"])
        hist.attrs["search_evaluations"] = int(search_out["evaluations"])
    for name in final.history.data_vars:
        hist[f"refine_{name}"] = final.history[name]
    hist.attrs.update({"success_r": success_r, **{k: v for k, v in extra.items() if k != "t"}})
    elapsed = time.perf_counter() - t_start
    logger.info("determine: R = %.3g, t = %.3f ± %.3f nm in %.1f s", final.r_factor, final.thickness_nm,
                final.thickness_error_nm, elapsed)
    return DeterminationResult(
        ug=unique, ug_error=ug_error, thickness_nm=final.thickness_nm,
        thickness_error_nm=final.thickness_error_nm, r_factor=final.r_factor, chi2=final.chi2,
        standard_errors=std, history=hist, refinement=final, symmetry=list(ops), groups=list(groups),
        origin_shift=np.asarray(r0, float), elapsed_s=elapsed, geometry=geometry,
    )
