"""From a pattern alone to U_g and thickness: the ``determine`` pipeline.

No atoms are needed: the geometry gives the lattice, the beams and the reflections. Stages:

1. **Symmetry.** The point-group operations the pattern obeys (:func:`larbed.symmetry.pattern_operations`)
   tie U_g together, with the origin on the symmetry elements; a centrosymmetric projection makes
   every U_g real. SrTiO3 [001] (4mm): 20 complex U_g become 8 real numbers.
2. **Starts.** Least squares converges from U_g within about ±30 %, not from random ones
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

Everything finished is checkpointed in ``out_dir``; a rerun with the same data and settings skips
it, and a rerun of a finished run returns the saved result (same numbers, in seconds). A lock file
refuses a second run on the same folder while one is running; larbed deletes only files it wrote.

Thickness: without ``thickness_range_nm`` the scans cover 5–100 nm, and when the best fit does not
reach the solution the stages are run again over 2–250 nm (the global search only when the first
fit's thickness sat at an edge of 5–100 nm) and the better fit is kept. A range the
user gives is never widened. A fit that does not reach the solution with its thickness at an edge
of the range, or a thickness outside a range the user gave, is reported as a 'bound' warning (see
:mod:`larbed.trust`).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from ._checkpoint import (
    check_writable,
    fingerprint,
    folder_lock,
    read_json,
    write_json,
)
from .geometry import Geometry
from .metrics import expected_noise_r, poisson_deviance
from .refinement import (
    RefinementResult,
    check_diffracted,
    check_pattern,
    pattern_dose,
    refine,
    thickness_scan,
)
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
from .trust import (
    CHI2_MAX,
    R_MAX_NOISE_FREE,
    R_NOISE_FACTOR,
    FitWarning,
    check_thresholds,
    untrustworthy,
)

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
SUCCESS_R_NOISE_FREE = R_MAX_NOISE_FREE
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
#: Thickness ranges [nm] of the automatic scan: the first, then the wider one when the best fit
#: does not reach the solution or sits at an edge of the first.
AUTO_THICKNESS_RANGES_NM = ((5.0, 100.0), (2.0, 250.0))
#: A thickness within this many scan steps of a range edge "sits at the edge".
EDGE_STEPS = 2
#: A U_g within this fraction of ``ug_bound`` counts as at the search bound.
UG_BOUND_RTOL = 1e-3
#: Checkpoint files larbed writes into ``determine_checkpoint/`` (only these are ever deleted).
CHECKPOINT_PATTERNS = ("config.json", "result.nc", "network.json", "start_*.json",
                       "kinematic*.npz", "search*.npz", "final_refine*.json", "poisson*_*.json")


# ---------------------------------------------------------------------------------- starts
def _poisson_deviance(observed: np.ndarray, fitted: np.ndarray, dose) -> float:
    """Poisson deviance 2 Σ [μ − y + y ln(y/μ)] of counts y = dose·I_obs, μ = dose·I_fit."""
    return poisson_deviance(observed, fitted, dose)


def _polish_poisson(pattern, intensity: np.ndarray, geometry: Geometry, final: RefinementResult,
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
    best, best_dev = final, _poisson_deviance(intensity, final.fit.intensity.values, dose)
    vals0 = final.ug.values
    _, strong = _weak_groups(vals0, groups, WEAK_FRACTION)
    moves = _pseudo_origin_moves(geometry, vals0, groups, strong) + _weak_moves(vals0, groups, WEAK_FRACTION)
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
                         poisson_passes=1, progress=False)
            saved = {"ug_real": res.ug.values.real.tolist(), "ug_imag": res.ug.values.imag.tolist(),
                     "thickness_nm": res.thickness_nm,
                     "deviance": _poisson_deviance(intensity, res.fit.intensity.values, dose)}
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
    warnings : list of FitWarning
        What makes a number doubtful (see :mod:`larbed.trust`): the final refinement's warnings,
        a thickness at an edge of the range, U_g at the search bound. Empty when all is well.
    thickness_range_nm : (float, float)
        The thickness range the stages used last [nm].
    provenance : dict
        How the result was made: larbed version, time, input file and SHA-256 (when the pattern was
        read from a file), SHA-256 of the intensities, dose and weights used, settings.
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
    warnings: list = field(default_factory=list)
    thickness_range_nm: tuple = (5.0, 100.0)
    provenance: dict = field(default_factory=dict, repr=False)

    @property
    def trustworthy(self) -> bool:
        """False when a warning of kind 'bound', 'chi2' or 'r_factor' was raised."""
        return not untrustworthy(self.warnings)

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
                "symmetry": " ".join(self.symmetry), "elapsed_s": self.elapsed_s,
                "warnings": [str(w) for w in self.warnings]}

    def to_dataset(self) -> xr.Dataset:
        """Fit, observed pattern, unique U_g with errors, the final refinement and the histories in
        one Dataset (:meth:`from_dataset` reads it back); attributes record the provenance."""
        import json

        from .simulation import attach_ug

        ds = self.refinement.to_dataset()
        ds = attach_ug(ds, self.refinement.ug, "refined_ug")
        ds["refined_ug_error_real"] = ds["ug_error_real"]
        ds["refined_ug_error_imag"] = ds["ug_error_imag"]
        ds = attach_ug(ds, self.ug, "ug")
        ds["ug_error_real"] = ("reflection", self.ug_error.values.real, {"units": "1/Å^2"})
        ds["ug_error_imag"] = ("reflection", self.ug_error.values.imag, {"units": "1/Å^2"})
        for name in self.history.data_vars:
            if name.startswith(("start_", "search_")):
                ds[name] = self.history[name]
        refinement_attrs = {k: ds.attrs[k] for k in ("thickness_nm", "thickness_error_nm", "r_factor",
                                                     "chi2", "weights", "converged", "message",
                                                     "n_iterations", "absorption",
                                                     "absorption_error", "warnings")}
        ds.attrs.update({"title": "larbed determine result", "thickness_nm": self.thickness_nm,
                         "thickness_error_nm": self.thickness_error_nm, "r_factor": self.r_factor,
                         "chi2": self.chi2, "symmetry": list(self.symmetry),
                         "origin_shift_angstrom": [float(v) for v in self.origin_shift],
                         "elapsed_s": self.elapsed_s,
                         "thickness_range_nm": [float(v) for v in self.thickness_range_nm],
                         "groups": json.dumps([[list(m) for m in g.members] + [int(g.real)]
                                               for g in self.groups]),
                         "history_attrs": json.dumps({k: str(v) if not isinstance(v, (int, float))
                                                      else v for k, v in self.history.attrs.items()}),
                         "determine_warnings": [[getattr(w, "kind", "r_factor"), str(w)]
                                                for w in self.warnings],
                         "refinement_attrs": json.dumps(refinement_attrs),
                         **_provenance_attrs(self.provenance)})
        return ds

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, geometry: Geometry | None = None) -> DeterminationResult:
        """Rebuild a result from :meth:`to_dataset` (e.g. ``determine_result.nc``)."""
        import json

        from .simulation import extract_ug

        if geometry is None:
            geometry = Geometry.from_attrs(ds.attrs)
        try:
            a = ds.attrs
            inner = ds.copy()
            inner.attrs = {**ds.attrs, **json.loads(a["refinement_attrs"])}
            inner["ug"] = ds["refined_ug"]
            inner["ug_error_real"] = ds["refined_ug_error_real"]
            inner["ug_error_imag"] = ds["refined_ug_error_imag"]
            refinement = RefinementResult.from_dataset(inner, geometry)
            ug = extract_ug(ds, "ug")
            ug.attrs["source"] = "determine"
            err = ug.copy(data=ds["ug_error_real"].values + 1j * ds["ug_error_imag"].values)
            err.attrs.update({"source": "standard error", "long_name":
                              "standard errors: real part σ(Re U_g), imaginary part σ(Im U_g)"})
            groups = [SymmetryGroup(tuple((int(q), int(sg)) for q, sg in g[:-1]), bool(g[-1]))
                      for g in json.loads(a["groups"])]
            hist = xr.Dataset({k: ds[k] for k in ds.data_vars if k.startswith(("start_", "search_"))})
            for name in refinement.history.data_vars:
                hist[f"refine_{name}"] = refinement.history[name]
            hist.attrs.update(json.loads(a.get("history_attrs", "{}")))
            warnings = [FitWarning(k, m) for k, m in a.get("determine_warnings", [])]
            provenance = json.loads(a.get("provenance", "{}"))
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"dataset does not hold a larbed determine result: {exc}") from exc
        std = xr.Dataset({"ug_real": ("reflection", err.values.real, {"units": "1/Å^2"}),
                          "ug_imag": ("reflection", err.values.imag, {"units": "1/Å^2"}),
                          "thickness_nm": ((), float(a["thickness_error_nm"]), {"units": "nm"})},
                         coords={c: ug.coords[c] for c in ug.coords})
        return cls(ug=ug, ug_error=err, thickness_nm=float(a["thickness_nm"]),
                   thickness_error_nm=float(a["thickness_error_nm"]), r_factor=float(a["r_factor"]),
                   chi2=float(a["chi2"]), standard_errors=std, history=hist, refinement=refinement,
                   symmetry=[str(v) for v in np.atleast_1d(a.get("symmetry", []))],
                   groups=groups, origin_shift=np.asarray(a["origin_shift_angstrom"], float),
                   elapsed_s=float(a["elapsed_s"]), geometry=geometry, warnings=warnings,
                   thickness_range_nm=tuple(float(v) for v in a["thickness_range_nm"]),
                   provenance=provenance)

    def save(self, out_dir: str | os.PathLike) -> list[str]:
        """Write ``determine_result.nc`` (everything) and ``ug.nc`` into ``out_dir``; both record
        the provenance (input, settings, dose, larbed version)."""
        from .io import save_pattern, save_ug

        check_writable(out_dir)
        paths = [os.path.join(out_dir, "determine_result.nc"), os.path.join(out_dir, "ug.nc")]
        save_pattern(self.to_dataset(), paths[0])
        ug = self.ug.copy()
        ug.attrs.update({"thickness_nm": self.thickness_nm, "r_factor": self.r_factor,
                         "ug_error_real": self.ug_error.values.real,
                         "ug_error_imag": self.ug_error.values.imag,
                         **_provenance_attrs(self.provenance)})
        save_ug(ug, paths[1])
        return paths

    def plot(self, out_dir: str | os.PathLike, ug_true=None) -> list[str]:
        """PNGs: pattern vs fit with residuals (hkl labels, mrad scale), U_g with error bars (vs
        the truth when given), R per refinement iteration. Returns the paths; each PNG records
        the provenance in its metadata."""
        import json

        from .plotting import compare_patterns, plot_refinement_history, plot_ug

        check_writable(out_dir)
        meta = {"Software": f"larbed {self.provenance.get('larbed_version', '')}".strip(),
                "Description": json.dumps({k: v for k, v in self.provenance.items()
                                           if k != "settings"}, default=str)}
        fit = self.refinement.fit
        obs = fit[["observed"]].rename({"observed": "intensity"})
        truth = None
        if ug_true is not None:
            truth, _ = align_origin(self.geometry, check_ug(self.geometry, ug_true).values,
                                    self.ug.values)
        figures = [
            ("pattern_vs_fit.png", compare_patterns(obs, fit, geometry=self.geometry)),
            ("ug.png", plot_ug(self.ug, self.ug_error, truth=truth,
                               title=f"U_g (t = {self.thickness_nm:.3f} ± {self.thickness_error_nm:.3f} nm, "
                                     f"R = {self.r_factor:.3g})")),
            ("refinement_history.png", plot_refinement_history(self.refinement.history)),
        ]
        paths = []
        for name, fig in figures:
            paths.append(os.path.join(out_dir, name))
            fig.savefig(paths[-1], dpi=110, metadata=meta)
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


def _provenance_attrs(provenance: dict) -> dict:
    """netCDF attributes of a provenance record: the whole as JSON plus the main items flat."""
    import json

    flat = {k: provenance[k] for k in ("larbed_version", "created", "source_path", "source_sha256",
                                       "data_sha256", "dose_used", "weights_used") if k in provenance}
    return {"provenance": json.dumps(provenance, default=str), **flat}


def _dose_summary(dose) -> str | float:
    if dose is None:
        return "none (noise-free: unweighted least squares)"
    if np.ndim(dose) == 0:
        return float(dose)
    d = np.asarray(dose, float)
    return f"per tilt, {d.min():.6g}..{d.max():.6g} (median {np.median(d):.6g}) electrons"


def _provenance(pattern, intensity: np.ndarray, dose, settings: dict) -> dict:
    from . import __version__
    from .io import source_provenance

    return {"larbed_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **source_provenance(pattern),
            "data_sha256": fingerprint(np.ascontiguousarray(intensity)),
            "dose_used": _dose_summary(dose), "settings": settings}


def _prepare_checkpoints(out_dir, fp: str, settings: dict, resume: bool) -> tuple[str, dict | None]:
    """The checkpoint folder of a run; its config (None for a new run). Deletes only larbed's files."""
    import glob

    ckpt = os.path.join(os.fspath(out_dir), "determine_checkpoint")
    cfg_path = os.path.join(ckpt, "config.json")
    old = None
    if os.path.exists(cfg_path):
        old = read_json(cfg_path)
        if old is None or "fingerprint" not in old:
            raise ValueError(f"{cfg_path!r} is unreadable (corrupt, or not larbed's); larbed deletes "
                             "nothing it does not recognise: remove that folder yourself or use "
                             "another out_dir")
    elif os.path.isdir(ckpt) and os.listdir(ckpt):
        raise ValueError(f"{ckpt!r} holds files but no config.json: it was not written by larbed "
                         "determine; use another out_dir")
    if old is not None and resume and old["fingerprint"] != fp:
        raise ValueError(f"{ckpt!r} holds a determine run with other data or settings; "
                         "use another out_dir or resume=False")
    if old is not None and not resume:
        removed = 0
        for pattern in CHECKPOINT_PATTERNS:
            for path in glob.glob(os.path.join(ckpt, pattern)):
                os.remove(path)
                removed += 1
        logger.info("determine: resume=False: removed %d checkpoint files of the earlier run", removed)
        old = None
    os.makedirs(ckpt, exist_ok=True)
    if old is None:
        write_json(cfg_path, {"fingerprint": fp, "settings": settings, "finished": False})
    return ckpt, old


class _Run:
    """The state of one determine run: settings, checkpoints, the refined starts so far."""

    def __init__(self, inten, geometry, groups, dose, success_r, ckpt, client, progress, rng,
                 max_iter_start: int = START_ITERATIONS):
        self.inten, self.geometry, self.groups, self.dose = inten, geometry, groups, dose
        self.success_r, self.ckpt, self.client, self.progress = success_r, ckpt, client, progress
        self.rng = rng
        self.results: dict[str, dict] = {}
        self.max_iter_start = max_iter_start

    def path(self, name: str) -> str | None:
        return os.path.join(self.ckpt, name) if self.ckpt else None

    def _load(self, key: str):
        return read_json(self.path(f"start_{key}.json")) if self.ckpt else None

    def _store(self, key: str, out: dict) -> None:
        out["source"] = key
        self.results[key] = out
        if self.ckpt:
            write_json(self.path(f"start_{key}.json"), out)

    def run(self, cands, thickness_range, continuation: bool = False) -> None:
        """Thickness scan + least squares from each (key, values) not refined before."""
        todo = []
        for key, vals in cands:
            saved = self._load(key)
            if saved is not None:
                self.results[key] = saved
            else:
                todo.append((key, vals))
        if not todo:
            return
        cont_r = self.success_r if continuation else None
        args = [(self.inten, self.geometry, v, self.groups, tuple(thickness_range),
                 self.max_iter_start, cont_r) for _, v in todo]
        if self.client is not None:
            from dask.distributed import as_completed

            futures = {self.client.submit(_refine_start, *a, pure=False): k
                       for (k, _), a in zip(todo, args, strict=True)}
            outs = ((futures[f], f.result()) for f in as_completed(futures))
        else:
            outs = ((k, _refine_start(*a)) for (k, _), a in zip(todo, args, strict=True))
        from tqdm.auto import tqdm

        for key, out in tqdm(outs, total=len(todo), desc="starts", unit="start", leave=False,
                             disable=not self.progress or len(todo) < 2):
            self._store(key, out)
            logger.info("determine: start %s -> R = %.3g, t = %.2f nm", key, out["r_factor"],
                        out["thickness_nm"])

    def try_from(self, key, values, thickness) -> dict:
        saved = self._load(key)
        if saved is not None:
            self.results[key] = saved
            return saved
        out = _refine_from(self.inten, self.geometry, values, thickness, self.groups, self.max_iter_start)
        self._store(key, out)
        return out

    def best(self, prefix: str | None = None):
        pool = [r for k, r in self.results.items() if prefix is None or k.startswith(prefix)]
        return min(pool, key=lambda r: r["r_factor"]) if pool else None

    def solved(self, b) -> bool:
        return b is not None and b["r_factor"] <= self.success_r

    def polish(self, b: dict, prefix: str, time_s: float) -> dict:
        """Weak-reflection and pseudo-symmetry-origin moves from the best start (two rounds)."""
        geometry, groups = self.geometry, self.groups
        t_polish = time.perf_counter()
        for round_ in range(2):
            start_r = b["r_factor"]
            if start_r <= EXACT_FIT_R or start_r > POLISH_MAX_FACTOR * self.success_r:
                return b  # exact already, or a wrong basin that weak moves cannot leave
            vals = _values(b)
            _, strong = _weak_groups(vals, groups, WEAK_FRACTION)
            bases = [b] + [self.try_from(f"{prefix}polish{round_}_{name}", v, b["thickness_nm"])
                           for name, v in _pseudo_origin_moves(geometry, vals, groups, strong)]
            best_out = min(bases, key=lambda r: r["r_factor"])
            target = 1e-3 * min(start_r, self.success_r)
            for base_i, base in enumerate(sorted(bases, key=lambda r: r["r_factor"])):
                moves = _weak_moves(_values(base), groups, WEAK_FRACTION)
                from tqdm.auto import tqdm

                for name, v in tqdm(moves, desc=f"polish {round_ + 1}", unit="move", leave=False,
                                    disable=not self.progress):
                    if time.perf_counter() - t_polish > time_s:
                        logger.info("determine: polish time budget %g s used up", time_s)
                        break
                    out = self.try_from(f"{prefix}polish{round_}_{base_i}_{name}", v,
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


def _values(r: dict) -> np.ndarray:
    return np.asarray(r["ug_real"]) + 1j * np.asarray(r["ug_imag"])


def _at_edge(t: float, lo: float, hi: float) -> bool:
    return t <= lo + EDGE_STEPS * SCAN_STEP_NM or t >= hi - EDGE_STEPS * SCAN_STEP_NM


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
    ug_bound: float = UG_BOUND,
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
    inten = check_pattern(pattern, geometry, dose)
    check_diffracted(inten)
    d = pattern_dose(pattern, dose, geometry.n_tilts)
    ranges, user_range = _thickness_ranges(thickness_range_nm)
    _check_int("n_starts", n_starts, 0)
    _check_int("n_perturbed", n_perturbed, 0)
    _check_int("max_iter", max_iter, 1)
    check_thresholds(chi2_max, r_noise_factor, r_max)
    if not np.isfinite(ug_bound) or ug_bound <= 0:
        raise ValueError(f"ug_bound must be a positive number [1/Å²], got {ug_bound!r}")
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
    if not (kinematic or search or explicit_kind):
        raise ValueError("no start to refine: give start=..., or kinematic=True or search=True")

    settings = {"start": explicit_kind or "search", "model": model if isinstance(model, str) else "regressor",
                "seed": seed, "n_starts": n_starts, "kinematic": kinematic,
                "range": [list(r) for r in ranges] if user_range else "auto", "symmetry": str(symmetry),
                "search": search, "popsize": search_popsize, "tilts": search_tilts,
                "ug_bound": ug_bound, "perturbation": perturbation, "n_perturbed": n_perturbed,
                "task2_iterations": task2_iterations, "task2_kwargs": task2_kwargs or {},
                "polish_weak": polish_weak, "polish_time_s": polish_time_s, "weights": weights,
                "max_iter": max_iter,
                "user_start": None if explicit_kind != "user" else
                [np.round(start.values.real, 12).tolist(), np.round(start.values.imag, 12).tolist()]}
    thresholds = {"chi2_max": chi2_max, "r_noise_factor": r_noise_factor, "r_max": r_max}
    fp = fingerprint(inten, None if d is None else np.asarray(d, float), geometry.to_attrs(), settings)
    provenance = _provenance(pattern, inten, d, {**settings, **thresholds})

    lock = contextlib.nullcontext() if out_dir is None else folder_lock(out_dir, "larbed determine")
    with lock:
        ckpt = None
        if out_dir is not None:
            ckpt, old = _prepare_checkpoints(out_dir, fp, settings, resume)
            done = _finished_result(ckpt, old, thresholds, geometry)
            if done is not None:
                return done
        res = _determine(pattern, inten, geometry, d, ranges, user_range, explicit_kind, start,
                         model, seed, n_starts, client, symmetry, weights, kinematic, search,
                         search_time_s, search_popsize, search_tilts, ug_bound, perturbation,
                         n_perturbed, task2_iterations, task2_kwargs, polish_weak, polish_time_s,
                         max_iter, thresholds, ckpt, progress, t_start, provenance)
        if ckpt is not None:
            from .io import save_pattern

            save_pattern(res.to_dataset(), os.path.join(ckpt, "result.nc"))
            write_json(os.path.join(ckpt, "config.json"),
                       {"fingerprint": fp, "settings": settings, "finished": True,
                        "thresholds": thresholds})
        return res


def _finished_result(ckpt: str, old: dict | None, thresholds: dict, geometry: Geometry):
    """The saved result of a finished run with the same fingerprint (None when there is none)."""
    path = os.path.join(ckpt, "result.nc")
    if old is None or not old.get("finished") or old.get("thresholds") != thresholds:
        return None
    from .io import load_pattern

    try:
        res = DeterminationResult.from_dataset(load_pattern(path), geometry)
    except (ValueError, OSError) as exc:
        logger.warning("determine: the saved result %s cannot be read (%s); running again", path, exc)
        return None
    logger.info("determine: %s holds this run, finished earlier; returning it", ckpt)
    return res


def _determine(pattern, inten, geometry, d, ranges, user_range, explicit_kind, start, model, seed,
               n_starts, client, symmetry, weights, kinematic, search, search_time_s,
               search_popsize, search_tilts, ug_bound, perturbation, n_perturbed, task2_iterations,
               task2_kwargs, polish_weak, polish_time_s, max_iter, thresholds, ckpt, progress,
               t_start, provenance) -> DeterminationResult:
    from tqdm.auto import tqdm

    bar = tqdm(total=6 * len(ranges), desc="determine", unit="stage", disable=not progress)

    def stage(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)

    groups, ops = _resolve_groups(symmetry, inten, geometry, d)
    logger.info("determine: %d U_g in %d symmetry groups (%s)", geometry.n_reflections, len(groups),
                ", ".join(ops) or "no symmetry")
    success_r = SUCCESS_R_NOISE_FREE if d is None else SUCCESS_R_NOISE_FACTOR * expected_noise_r(inten, d)
    rng = np.random.default_rng(seed)
    run = _Run(inten, geometry, groups, d, success_r, ckpt, client, progress, rng)

    # explicit starts (network, trained model, user) and their perturbations, once for all ranges
    explicit: list[np.ndarray] = []
    extra: dict = {}
    if explicit_kind == "user":
        explicit.append(start.values)
    elif explicit_kind in ("task2", "model"):
        path = run.path("network.json")
        saved = read_json(path) if path else None
        if saved is None:
            pds = pattern if isinstance(pattern, xr.Dataset) else None
            if pds is None:
                from .simulation import pattern_coords

                pds = xr.Dataset(coords=pattern_coords(geometry))
                pds["intensity"] = (("tilt", "beam"), inten)
            vals, t_net, extra = _network_start(pds, geometry, model, seed, task2_iterations,
                                                ranges[0], ckpt, progress, task2_kwargs or {})
            saved = {"real": np.real(vals).tolist(), "imag": np.imag(vals).tolist(), "t": t_net, **extra}
            if path:
                write_json(path, saved)
        extra = {k: v for k, v in saved.items() if k not in ("real", "imag")}
        explicit.append(np.asarray(saved["real"]) + 1j * np.asarray(saved["imag"]))
    explicit_cands = []
    for i, vals in enumerate(explicit):
        aligned, _ = align_to_groups(geometry, vals, groups)
        explicit_cands.append((f"{explicit_kind}{i}", aligned))
        for k in range(n_perturbed):
            fac = 1 + perturbation * rng.uniform(-1, 1, geometry.n_reflections)
            pert, _ = align_to_groups(geometry, aligned * fac, groups)
            explicit_cands.append((f"{explicit_kind}{i}_perturbed{k}", pert))

    refine_kwargs = dict(thresholds)
    rounds = []
    for round_i, (lo, hi) in enumerate(ranges):
        prefix, suffix = ("", "") if round_i == 0 else (f"wide{round_i}_", f"_wide{round_i}")
        cands = [(prefix + k, v) for k, v in explicit_cands]
        stage(f"{lo:g}-{hi:g} nm: explicit starts")
        run.run(cands, (lo, hi), continuation=True)  # explicit starts are near: follow the data

        stage(f"{lo:g}-{hi:g} nm: kinematic starts")
        if kinematic and not run.solved(run.best(prefix)):
            kpath = run.path(f"kinematic{suffix}.npz")
            if kpath and os.path.exists(kpath):
                with np.load(kpath) as f:
                    kin = list(f["starts"])
            else:
                kin = kinematic_starts(inten, geometry, groups, thickness_range_nm=(lo, hi),
                                       tilts=search_tilts, progress=progress)
                if kpath:
                    np.savez(kpath, starts=np.asarray(kin, complex).reshape(len(kin), geometry.n_reflections))
            kin_cands = [(f"{prefix}kinematic{i}", v) for i, v in enumerate(kin)]
            for key, vals in kin_cands:  # one at a time: stop at the first that reaches the solution
                run.run([(key, vals)], (lo, hi))
                if run.solved(run.results[key]):
                    break
            cands += kin_cands

        stage(f"{lo:g}-{hi:g} nm: search")
        search_out = None
        # a wider range repeats the (long) global search only when the last fit sat at an edge
        search_here = search and (round_i == 0 or _at_edge(rounds[-1][0].thickness_nm,
                                                            *rounds[-1][2]))
        if search_here and not run.solved(run.best(prefix)):
            spath = run.path(f"search{suffix}.npz")
            if spath and os.path.exists(spath):
                with np.load(spath) as f:
                    search_out = {k: f[k] for k in f.files}
            else:
                n_probe = [0]

                def probe(values, prefix=prefix, lo=lo, hi=hi, n_probe=n_probe) -> bool:
                    n_probe[0] += 1
                    key = f"{prefix}probe{n_probe[0]}"
                    run.run([(key, values)], (lo, hi))
                    return run.solved(run.results[key])

                search_out = global_search(
                    inten, geometry, groups, thickness_range_nm=(lo, hi), ug_bound=ug_bound,
                    seed=int(rng.integers(2**31)), time_budget_s=search_time_s, popsize=search_popsize,
                    tilts=search_tilts, init=[v for _, v in cands], probe=probe, client=client,
                    progress=progress,
                )
                if spath:
                    np.savez(spath, **{k: np.asarray(v) for k, v in search_out.items()})
            if not run.solved(run.best(prefix)):
                chosen = _distinct(search_out["population"], n_starts)
                run.run([(f"{prefix}search{i}", search_out["population"][i]) for i in chosen], (lo, hi))
        b = run.best(prefix)
        if b is None and round_i > 0:
            logger.info("determine: no starts for %g-%g nm without the search; keeping %g-%g nm",
                        lo, hi, *rounds[-1][2])
            break
        if b is None:
            raise ValueError("no start to refine: give start=..., or kinematic=True or search=True")
        logger.info("determine: best start %s, R = %.3g", b["source"], b["r_factor"])

        stage(f"{lo:g}-{hi:g} nm: polish")
        if polish_weak:
            b = run.polish(b, prefix, polish_time_s)

        stage(f"{lo:g}-{hi:g} nm: final refinement")
        ug_best = input_ug(geometry, _values(b))
        final = refine(pattern, geometry, ug_best, b["thickness_nm"], symmetry=list(groups),
                       weights=weights, dose=d, max_iter=max_iter, progress=progress,
                       checkpoint=run.path(f"final_refine{suffix}.json"), **refine_kwargs)
        stage(f"{lo:g}-{hi:g} nm: Poisson polish")
        if polish_weak and final.weights == "poisson":
            final = _polish_poisson(pattern, inten, geometry, final, groups, d, max_iter,
                                    polish_time_s, ckpt, progress, suffix, refine_kwargs)
        rounds.append((final, search_out, (lo, hi)))
        if user_range or round_i == len(ranges) - 1:
            break
        if final.r_factor <= success_r:
            break
        logger.warning("determine: the best fit over %g-%g nm (t = %.3f nm, R = %.3g) does not reach "
                       "the solution; trying %g-%g nm", lo, hi, final.thickness_nm, final.r_factor,
                       *ranges[round_i + 1])
    bar.close()

    def score(item):
        f = item[0]
        return f.r_factor if d is None else _poisson_deviance(inten, f.fit.intensity.values, d)

    final, search_out, (lo, hi) = min(rounds, key=score)
    warnings = list(final.warnings)
    t_fit = final.thickness_nm
    outside = not lo <= t_fit <= hi
    if (user_range and outside) or (final.r_factor > success_r and _at_edge(t_fit, lo, hi)):
        where = "outside" if outside else "at an edge of"
        hint = "" if user_range else " (the widest automatic range)"
        warnings.append(FitWarning("bound", f"the thickness {t_fit:.3f} nm is {where} the range "
                                            f"{lo:g}-{hi:g} nm{hint}; give thickness_range_nm "
                                            "(CLI --thickness-range) that contains it"))
    vals = final.ug.values
    at_bound = np.flatnonzero(np.maximum(np.abs(vals.real), np.abs(vals.imag))
                              >= ug_bound * (1 - UG_BOUND_RTOL))
    if at_bound.size:
        labels = [geometry.reflection_labels()[i] for i in at_bound[:6]]
        warnings.append(FitWarning("bound", f"U_g of {', '.join(labels)}{' …' if at_bound.size > 6 else ''} "
                                            f"reached the search bound ±{ug_bound:g} 1/Å² (ug_bound): "
                                            "physical U_g are smaller; the fit is likely wrong"))
    for w in warnings[len(final.warnings):]:
        logger.warning("determine: %s", w)

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
    results = run.results
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
    provenance = {**provenance, "weights_used": final.weights,
                  "thickness_range_used_nm": [lo, hi]}
    logger.info("determine: R = %.3g, t = %.3f ± %.3f nm in %.1f s", final.r_factor, final.thickness_nm,
                final.thickness_error_nm, elapsed)
    return DeterminationResult(
        ug=unique, ug_error=ug_error, thickness_nm=final.thickness_nm,
        thickness_error_nm=final.thickness_error_nm, r_factor=final.r_factor, chi2=final.chi2,
        standard_errors=std, history=hist, refinement=final, symmetry=list(ops), groups=list(groups),
        origin_shift=np.asarray(r0, float), elapsed_s=elapsed, geometry=geometry,
        warnings=warnings, thickness_range_nm=(lo, hi), provenance=provenance,
    )
