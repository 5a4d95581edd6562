"""The outcome of :func:`larbed.determine`: :class:`DeterminationResult` (compare, save, load, plot)."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from .._checkpoint import check_writable
from ..geometry import Geometry
from ..origin import align_origin, phase_factors, unique_origin
from ..refinement import RefinementResult
from ..schema import attach_ug, check_ug, complex_from_parts, extract_ug
from ..symmetry import SymmetryGroup
from ..trust import FitWarning, untrustworthy

__all__ = ["EDGE_STEPS", "FIXED_ERROR_RTOL", "UG_BOUND_RTOL", "DeterminationResult", "assemble",
           "at_edge", "provenance_attrs", "rotate_errors"]

logger = logging.getLogger(__name__)

#: A standard error below this fraction of the largest one belongs to a fixed part (e.g. Im U_g
#: of a real, centrosymmetric solution after an origin shift by a lattice fraction).
FIXED_ERROR_RTOL = 1e-9
#: A thickness within this many scan steps of a range edge "sits at the edge".
EDGE_STEPS = 2
#: A U_g within this fraction of ``ug_bound`` counts as at the search bound.
UG_BOUND_RTOL = 1e-3


@dataclass
class DeterminationResult:
    """Outcome of :func:`determine`.

    Attributes
    ----------
    ug : xarray.DataArray
        U_g [1/Å²] after :func:`larbed.origin.make_unique_ug_vector` (labelled like
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
    crystal : Crystal or None
        With ``composition=``: the refined structure the U_g started from (else None).
    structure : StructureResult or None
        With ``composition=``: that structure refinement (parameters with errors, CIF output).
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
    crystal: object = field(default=None, repr=False)
    structure: object = field(default=None, repr=False)

    @property
    def r_free(self) -> float:
        """R on the held-out tilts (``holdout`` of :func:`larbed.determine`; NaN without)."""
        return self.refinement.r_free

    @property
    def holdout_tilts(self) -> np.ndarray:
        """The tilts left out of the final fit."""
        return self.refinement.holdout_tilts

    @property
    def measurement(self):
        """The refined measurement model (``xr.Dataset`` with errors), or None."""
        return self.refinement.measurement

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
                         **provenance_attrs(self.provenance)})
        return ds

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, geometry: Geometry | None = None) -> DeterminationResult:
        """Rebuild a result from :meth:`to_dataset` (e.g. ``determine_result.nc``)."""
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
            err = ug.copy(data=complex_from_parts(ds["ug_error_real"].values,
                                                  ds["ug_error_imag"].values))
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
        from ..io import save_pattern, save_ug

        check_writable(out_dir)
        paths = [os.path.join(out_dir, "determine_result.nc"), os.path.join(out_dir, "ug.nc")]
        save_pattern(self.to_dataset(), paths[0])
        ug = self.ug.copy()
        ug.attrs.update({"thickness_nm": self.thickness_nm, "r_factor": self.r_factor,
                         "ug_error_real": self.ug_error.values.real,
                         "ug_error_imag": self.ug_error.values.imag,
                         **provenance_attrs(self.provenance)})
        save_ug(ug, paths[1])
        return paths

    def plot(self, out_dir: str | os.PathLike, ug_true=None) -> list[str]:
        """PNGs: pattern vs fit with residuals (hkl labels, mrad scale), U_g with error bars (vs
        the truth when given), R per refinement iteration. Returns the paths; each PNG records
        the provenance in its metadata."""
        from ..plotting import compare_patterns, plot_refinement_history, plot_ug

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


def rotate_errors(res: RefinementResult, phase: np.ndarray) -> np.ndarray:
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
        if s[i] == 0.0:  # U → ±U: each part keeps its σ (an infinite one leaves the other)
            b = np.abs(np.diag(np.diag(block)))
        else:
            b = rot @ block @ rot.T if np.all(np.isfinite(block)) else np.full((2, 2), np.inf)
        out[i] = complex(np.sqrt(abs(b[0, 0])), np.sqrt(abs(b[1, 1])))  # no inf·1j = nan + inf·j
    return out


def provenance_attrs(provenance: dict) -> dict:
    """netCDF attributes of a provenance record: the whole as JSON plus the main items flat."""
    flat = {k: provenance[k] for k in ("larbed_version", "created", "source_path", "source_sha256",
                                       "data_sha256", "dose_used", "weights_used") if k in provenance}
    return {"provenance": json.dumps(provenance, default=str), **flat}


def at_edge(t: float, lo: float, hi: float) -> bool:
    """The thickness t [nm] sits within :data:`EDGE_STEPS` scan steps of an edge of (lo, hi)."""
    from .starts import SCAN_STEP_NM

    return t <= lo + EDGE_STEPS * SCAN_STEP_NM or t >= hi - EDGE_STEPS * SCAN_STEP_NM


def assemble(run, final, search_out, thickness_range, user_range: bool, groups, ops, ug_bound: float,
             info: dict, success_r: float, t_start: float, provenance: dict) -> DeterminationResult:
    """The result of the chosen round: warnings, unique origin, errors, histories, provenance."""
    geometry = run.geometry
    lo, hi = thickness_range
    warnings = list(final.warnings)
    t_fit = final.thickness_nm
    outside = not lo <= t_fit <= hi
    if (user_range and outside) or (final.r_factor > success_r and at_edge(t_fit, lo, hi)):
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
                                            "the search could not go beyond; if U_g can be this "
                                            "large, raise ug_bound (CLI --ug-bound)"))
    for w in warnings[len(final.warnings):]:
        logger.warning("determine: %s", w)
    unique, r0 = unique_origin(geometry, final.ug, groups)
    err = rotate_errors(final, phase_factors(geometry, np.asarray(r0)))
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
    hist.attrs.update({"success_r": success_r, **info})
    elapsed = time.perf_counter() - t_start
    provenance = {**provenance, "weights_used": final.weights, "thickness_range_used_nm": [lo, hi]}
    logger.info("determine: R = %.3g, t = %.3f ± %.3f nm in %.1f s", final.r_factor, final.thickness_nm,
                final.thickness_error_nm, elapsed)
    return DeterminationResult(
        ug=unique, ug_error=ug_error, thickness_nm=final.thickness_nm,
        thickness_error_nm=final.thickness_error_nm, r_factor=final.r_factor, chi2=final.chi2,
        standard_errors=std, history=hist, refinement=final, symmetry=list(ops), groups=list(groups),
        origin_shift=np.asarray(r0, float), elapsed_s=elapsed, geometry=geometry,
        warnings=warnings, thickness_range_nm=(lo, hi), provenance=provenance,
    )
