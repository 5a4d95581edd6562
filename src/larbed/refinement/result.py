"""The outcome of a refinement: :class:`RefinementResult`, and how it is built from the solver."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from ..geometry import Geometry
from ..measurement import FORM_NAMES
from ..metrics import expected_noise_r
from ..schema import complex_from_parts
from ..simulation import simulate
from ..structure_factors import input_ug
from ..trust import (
    FitWarning,
    drift_warning,
    fit_quality_warnings,
    unphysical_warning,
    untrustworthy,
)
from .jacobian import WeightedProblem, masked_r
from .parameters import MIN_THICKNESS_NM, covariance_of_x, free_x, gauge_basis
from .solver import LMState, describe_null
from .solver import covariance as covariance_of

__all__ = ["RealData", "RefinementResult", "build_result"]

logger = logging.getLogger(__name__)


@dataclass
class RefinementResult:
    """Outcome of :func:`refine`.

    Attributes
    ----------
    ug : xarray.DataArray
        Refined U_g [1/Å²] over ``reflection`` (labelled like :func:`larbed.compute_ug`).
    ug_error : xarray.DataArray
        Standard errors: real part σ(Re U_g), imaginary part σ(Im U_g) [1/Å²] (0 when fixed).
    thickness_nm, thickness_error_nm : float
        Refined thickness and its standard error [nm].
    absorption, absorption_error : float or None
        Proportional absorption κ (None without absorption) and its standard error.
    r_factor : float
        R = Σ|I_exp − I_fit| / Σ I_exp.
    chi2 : float
        Reduced χ² = Σ w (I_exp − I_fit)² / (n_data − n_parameters).
    standard_errors : xarray.Dataset
        ``ug_real``, ``ug_imag`` (reflection) [1/Å²], ``thickness_nm`` [nm], ``absorption``.
    covariance : xarray.DataArray
        Over (``parameter``, ``parameter_b``) for [Re U_g…, Im U_g…, t, (κ)]; from (JᵀWJ)⁻¹ on
        the complement of the origin-shift null space, times the reduced χ² when unweighted.
    history : xarray.Dataset
        Per iteration: ``chi2`` (Σ w r²), ``r_factor``, ``thickness_nm``, ``damping``, ``stage``.
    fit : xarray.Dataset
        The fitted pattern (as :func:`larbed.simulate`) plus ``observed`` and ``residual``
        (observed − fit).
    weights : str
        ``'poisson'`` or ``'none'``.
    converged : bool
    message : str
    n_iterations : int
    warnings : list of FitWarning
        What the fit found that makes a number doubtful (a ``str`` each, with a ``kind``:
        'bound', 'chi2', 'r_factor' or 'undetermined'; see :mod:`larbed.trust`). Empty when
        all is well.
    measurement : xarray.Dataset or None
        The refined measurement model (``scale``, ``background``, ``absorption``,
        ``tilt_matrix``, ``tilt_offset_mrad`` as modelled, with ``<name>_error``); None without one.
    r_free : float
        R on the held-out tilts under the refined model (NaN without a hold-out).
    holdout_tilts : ndarray of int
        The tilts left out of the fit.
    residual_correlation : float
        Correlation of weighted residuals between neighbouring tilts (NaN when not computed).
    error_inflation : float
        Factor applied to every standard error for that correlation (1: none).
    variance_model : (a, b) or None
        σ² = a + b·I of ``weights='variance'``.
    """

    ug: xr.DataArray
    ug_error: xr.DataArray
    thickness_nm: float
    thickness_error_nm: float
    absorption: float | None
    absorption_error: float | None
    r_factor: float
    chi2: float
    standard_errors: xr.Dataset
    covariance: xr.DataArray
    history: xr.Dataset
    fit: xr.Dataset
    weights: str
    converged: bool
    message: str
    n_iterations: int
    geometry: Geometry = field(repr=False)
    warnings: list = field(default_factory=list)
    measurement: xr.Dataset | None = None
    r_free: float = float("nan")
    holdout_tilts: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    residual_correlation: float = float("nan")
    error_inflation: float = 1.0
    variance_model: tuple | None = None

    @property
    def trustworthy(self) -> bool:
        """False when a warning of kind 'bound', 'chi2' or 'r_factor' was raised (see
        :mod:`larbed.trust`)."""
        return not untrustworthy(self.warnings)

    def to_dataset(self) -> xr.Dataset:
        """Everything in one Dataset (fit, U_g with errors, covariance, history) for saving
        (:func:`larbed.save_pattern`, which keeps complex values exact); :meth:`from_dataset`
        reads it back."""
        from ..schema import attach_ug

        ds = self.fit.copy()
        ds = attach_ug(ds, self.ug, "ug")
        ds["ug_error_real"] = ("reflection", self.ug_error.values.real, {"units": "1/Å^2"})
        ds["ug_error_imag"] = ("reflection", self.ug_error.values.imag, {"units": "1/Å^2"})
        ds["covariance"] = (("parameter", "parameter_b"), self.covariance.values,
                            dict(self.covariance.attrs))
        ds = ds.assign_coords(parameter=self.covariance.parameter.values,
                              parameter_b=self.covariance.parameter_b.values)
        for name in self.history.data_vars:
            ds[f"history_{name}"] = ("iteration", self.history[name].values,
                                     dict(self.history[name].attrs))
        ds = ds.assign_coords(iteration=self.history.iteration.values)
        ds.attrs.update({
            "thickness_nm": self.thickness_nm, "thickness_error_nm": self.thickness_error_nm,
            "r_factor": self.r_factor, "chi2": self.chi2, "weights": self.weights,
            "converged": int(self.converged), "message": self.message,
            "n_iterations": self.n_iterations,
            "absorption": "none" if self.absorption is None else self.absorption,
            "absorption_error": "none" if self.absorption_error is None else self.absorption_error,
            # flat "kind: message" strings: netCDF attributes cannot be nested lists
            "warnings": [f"{getattr(w, 'kind', 'r_factor')}: {w}" for w in self.warnings],
            "r_free": self.r_free, "holdout_tilts": np.asarray(self.holdout_tilts, int).tolist(),
            "residual_correlation": self.residual_correlation,
            "error_inflation": self.error_inflation,
            "variance_model": "none" if self.variance_model is None else list(self.variance_model),
        })
        if self.measurement is not None:
            m = self.measurement.rename({v: f"measurement_{v}" for v in self.measurement.data_vars})
            drop = [c for c in ("h", "k", "l") if c in m.coords]
            attrs = dict(ds.attrs)
            ds = ds.merge(m.drop_vars(drop), compat="override", combine_attrs="drop")
            ds.attrs = attrs
            ds.attrs["measurement_forms"] = [self.measurement.attrs.get(f"{k}_form", "none")
                                             for k in FORM_NAMES]
        return ds

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, geometry: Geometry | None = None) -> RefinementResult:
        """Rebuild a result from :meth:`to_dataset` (e.g. a saved file); bit-for-bit the same."""
        from ..schema import extract_ug

        if geometry is None:
            geometry = Geometry.from_attrs(ds.attrs)
        try:
            ug = extract_ug(ds, "ug")
            ug.attrs.update({"source": "refined"})
            err = ug.copy(data=complex_from_parts(ds["ug_error_real"].values,
                                                  ds["ug_error_imag"].values))
            err.attrs.update({"source": "standard error", "long_name":
                              "standard errors: real part σ(Re U_g), imaginary part σ(Im U_g)"})
            hist = xr.Dataset(
                {k[len("history_"):]: ("iteration", ds[k].values, dict(ds[k].attrs))
                 for k in ds.data_vars if k.startswith("history_")},
                coords={"iteration": ds.iteration.values})
            cov = xr.DataArray(ds["covariance"].values, dims=("parameter", "parameter_b"),
                               coords={"parameter": ds.parameter.values,
                                       "parameter_b": ds.parameter_b.values},
                               name="covariance", attrs=dict(ds["covariance"].attrs))
            a = ds.attrs
            kappa = None if a["absorption"] == "none" else float(a["absorption"])
            kappa_err = None if a["absorption_error"] == "none" else float(a["absorption_error"])
            keep = [v for v in ("intensity", "observed", "residual", "intensity_noise_free")
                    if v in ds]
            fit = ds[keep]
            fit = fit.drop_vars([c for c in ("parameter", "parameter_b", "iteration")
                                 if c in fit.coords])
            fit["ug"] = ds["ug"]
            warnings = [_warning_from(w) for w in np.atleast_1d(a.get("warnings", [])) if len(w)]
            measurement = _measurement_from(ds)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"dataset does not hold a larbed refinement result: {exc}") from exc
        p = geometry.n_reflections
        std = xr.Dataset(
            {"ug_real": ("reflection", err.values.real, {"units": "1/Å^2"}),
             "ug_imag": ("reflection", err.values.imag, {"units": "1/Å^2"}),
             "thickness_nm": ((), float(a["thickness_error_nm"]), {"units": "nm"}),
             "absorption": ((), np.nan if kappa_err is None else kappa_err, {"units": "1"})},
            coords={c: ug.coords[c] for c in ug.coords})
        assert std.sizes["reflection"] == p
        return cls(ug=ug, ug_error=err, thickness_nm=float(a["thickness_nm"]),
                   thickness_error_nm=float(a["thickness_error_nm"]), absorption=kappa,
                   absorption_error=kappa_err, r_factor=float(a["r_factor"]), chi2=float(a["chi2"]),
                   standard_errors=std, covariance=cov, history=hist, fit=fit,
                   weights=str(a["weights"]), converged=bool(a["converged"]),
                   message=str(a["message"]), n_iterations=int(a["n_iterations"]),
                   geometry=geometry, warnings=warnings, measurement=measurement,
                   r_free=float(a.get("r_free", np.nan)),
                   holdout_tilts=np.asarray(a.get("holdout_tilts", []), int).reshape(-1),
                   residual_correlation=float(a.get("residual_correlation", np.nan)),
                   error_inflation=float(a.get("error_inflation", 1.0)),
                   variance_model=None if isinstance(a.get("variance_model", "none"), str)
                   else tuple(float(v) for v in np.ravel(a["variance_model"])))


def _warning_from(item) -> FitWarning:
    """A FitWarning from its saved form: "kind: message" (or a [kind, message] pair)."""
    if isinstance(item, str):
        kind, sep, message = item.partition(": ")
        if not sep:
            raise ValueError(f"saved warning {item!r} is not 'kind: message'")
        return FitWarning(kind, message)
    kind, message = item
    return FitWarning(str(kind), str(message))


def _measurement_from(ds: xr.Dataset):
    """The measurement Dataset saved by :meth:`RefinementResult.to_dataset` (None without one)."""
    names = [v for v in ds.data_vars if v.startswith("measurement_")]
    if not names:
        return None
    m = ds[names].rename({v: v[len("measurement_"):] for v in names})
    keep_dims = {d for v in m.data_vars for d in m[v].dims}
    m = m.drop_vars([c for c in m.coords if not set(m[c].dims) <= keep_dims or c in
                     ("tilt", "tilt_x", "tilt_y", "beam")], errors="ignore")
    forms = list(np.ravel(ds.attrs.get("measurement_forms", ["none"] * len(FORM_NAMES))))
    if len(forms) not in (len(FORM_NAMES) - 1, len(FORM_NAMES)):  # files before the tilt spread: 4
        raise ValueError(f"measurement_forms has {len(forms)} entries, not {len(FORM_NAMES)}")
    forms += ["none"] * (len(FORM_NAMES) - len(forms))
    m.attrs = {f"{k}_form": str(f) for k, f in zip(FORM_NAMES, forms, strict=True)}
    return m


@dataclass
class RealData:
    """What :func:`refine` knows beyond the fit data: the measurement model, the full data (with
    the held-out tilts), the hold-out, the variance model, and whether to inflate errors."""

    measurement: object = None
    full_data: np.ndarray | None = None
    holdout: np.ndarray | None = None
    variance_model: tuple | None = None
    correlated_errors: bool = True


def _inflation(prob: WeightedProblem, state: LMState, geometry: Geometry, real: RealData):
    """(ρ, factor) from the weighted residuals of the fitted tilts."""
    from .realdata import inflation_factor, residual_correlation

    resid = (prob.sw * (state.inten - prob.data).ravel()).reshape(prob.data.shape)
    resid = np.where(np.isfinite(prob.data) & (prob.sw.reshape(prob.data.shape) > 0), resid, np.nan)
    fitted = np.flatnonzero(np.any(np.isfinite(resid), axis=1))
    rho, n_pairs = residual_correlation(geometry, resid, fitted)
    factor = inflation_factor(rho, n_pairs) if real.correlated_errors else 1.0
    return rho, factor


def _n_informative(data: np.ndarray, inten: np.ndarray, measurement) -> int:
    """Data points that carry information for the reduced χ²: the measured ones, less the beams
    the model holds at zero at every tilt (forbidden reflections of a centred cell, glides) and
    one per fitted tilt under an analytic per-tilt scale (each takes a degree of freedom)."""
    fitted = np.isfinite(data)
    mod = np.abs(np.asarray(inten, float).reshape(data.shape))
    dead = np.all(mod <= 1e-9 * max(float(mod.max(initial=0.0)), 1e-300), axis=0)
    n = int(fitted[:, ~dead].sum())
    if measurement is not None and getattr(measurement, "scale", "none") == "per_tilt":
        n -= int(fitted.any(axis=1).sum())
    return n


def build_result(prob: WeightedProblem, state: LMState, geometry: Geometry, ug_start: xr.DataArray,
                 weights: str, absorbing: bool, dose, thresholds,
                 log_warnings: bool = True, real: RealData | None = None) -> RefinementResult:
    real = RealData() if real is None else real
    pmap = prob.pmap
    p = geometry.n_reflections
    x = pmap.x(state.q)
    gauge = gauge_basis(pmap, geometry, state.q)
    cov_q, null = covariance_of(state.hess, gauge)
    inten = state.inten
    resid = prob._weighted(inten)
    n_free = state.hess.shape[1] - gauge.shape[1] - null.shape[1]
    dof = max(_n_informative(prob.data, inten, real.measurement) - n_free, 1)
    chi2 = float(resid @ resid) / dof
    if weights in ("none", "variance"):
        cov_q = cov_q * chi2
    rho, inflation = _inflation(prob, state, geometry, real)
    if inflation != 1.0:
        logger.info("refine: residuals of neighbouring tilts correlate (ρ = %.3g): standard errors "
                    "× %.3g", rho, inflation)
        cov_q = cov_q * inflation**2
    cov_x = covariance_of_x(pmap, state.q, cov_q)
    sig = np.sqrt(np.abs(np.diag(cov_x)))

    ug = input_ug(geometry, x[:p] + 1j * x[p:2 * p])
    ug.attrs.update({"source": "refined", "u0": float(ug_start.attrs.get("u0", 0.0))})
    # may hold inf (undetermined)
    ug_error = ug.copy(data=complex_from_parts(sig[:p], sig[p:2 * p]))
    ug_error.attrs.update({"source": "standard error", "long_name":
                           "standard errors: real part σ(Re U_g), imaginary part σ(Im U_g)"})
    t, t_err = float(x[2 * p]), float(sig[2 * p])
    kappa = float(x[2 * p + 1]) if absorbing else None
    kappa_err = float(sig[2 * p + 1]) if absorbing else None
    names = geometry.reflection_labels()
    meas = real.measurement
    labels = ([f"Re U({n})" for n in names] + [f"Im U({n})" for n in names] + ["t"]
              + (["kappa"] if absorbing else []) + ([] if meas is None else meas.labels(geometry)))
    covariance = xr.DataArray(cov_x, dims=("parameter", "parameter_b"),
                              coords={"parameter": labels, "parameter_b": labels},
                              name="covariance", attrs={"units": "mixed (1/Å², nm)"})
    refl = {c: ug.coords[c] for c in ug.coords}
    std = xr.Dataset(
        {"ug_real": ("reflection", sig[:p], {"units": "1/Å^2"}),
         "ug_imag": ("reflection", sig[p:2 * p], {"units": "1/Å^2"}),
         "thickness_nm": ((), t_err, {"units": "nm"}),
         "absorption": ((), np.nan if kappa_err is None else kappa_err, {"units": "1"})},
        coords=refl,
    )
    hist = np.array(state.history, dtype=float).reshape(-1, 6)
    history = xr.Dataset(
        {"stage": ("iteration", hist[:, 1].astype(int)),
         "chi2": ("iteration", hist[:, 2], {"long_name": "Σ w (I_sim − I_exp)²"}),
         "r_factor": ("iteration", hist[:, 3]),
         "thickness_nm": ("iteration", hist[:, 4], {"units": "nm"}),
         "damping": ("iteration", hist[:, 5])},
        coords={"iteration": hist[:, 0].astype(int)},
    )
    fit = simulate(geometry, ug, t, absorption=kappa)
    observed = prob.data if real.full_data is None else real.full_data
    measured_values = r_free = None
    if meas is not None:  # the measured model: background, scale and tilt map applied
        fit["intensity"] = (("tilt", "beam"), prob.model.intensities(x), dict(fit.intensity.attrs))
        n_core = prob.model.n_core
        dyn = prob.model.dynamic_intensities(x) + prob.model.background(x, slice(None))
        measured_values = meas.values_for(
            geometry, x[n_core:], sig[n_core:], kappa=kappa, kappa_error=kappa_err,
            per_tilt_scale=prob.model.per_tilt_scale(dyn, slice(None))
            if meas.scale == "per_tilt" else None)
    fit["observed"] = (("tilt", "beam"), observed, {"units": "1"})
    fit["residual"] = (("tilt", "beam"), observed - fit.intensity.values, {"units": "1"})
    r = masked_r(prob.data, fit.intensity.values)
    held = np.zeros(0, int) if real.holdout is None else np.asarray(real.holdout, int)
    r_free = (masked_r(observed[held], fit.intensity.values[held]) if held.size else float("nan"))
    fit.attrs.update({"r_factor": r, "chi2_reduced": chi2, "weights": weights, "r_free": r_free})
    chi2_max, r_noise_factor, r_max = thresholds
    noise_r = None if dose is None else expected_noise_r(fit.intensity.values, dose)
    if noise_r is None and weights == "variance" and real.variance_model is not None:
        # the fitted variance model stands for the unknown dose: R expected from that noise
        a, b = real.variance_model
        ok = np.isfinite(prob.data)
        sig = np.sqrt(a + b * np.clip(fit.intensity.values[ok], 0.0, None))
        noise_r = float(np.sqrt(2.0 / np.pi) * sig.sum() / prob.data[ok].sum())
    warnings = fit_quality_warnings(r, chi2 if weights == "poisson" else None, noise_r,
                                    chi2_max=chi2_max, r_noise_factor=r_noise_factor, r_max=r_max)
    moved = free_x(pmap, state.q)
    if moved[2 * p] and t <= MIN_THICKNESS_NM * (1 + 1e-9):
        warnings.append(FitWarning("bound", f"the thickness ended at its lower bound "
                                            f"{MIN_THICKNESS_NM:g} nm"))
    if absorbing and moved[2 * p + 1] and kappa <= 0.0:
        warnings.append(FitWarning("bound", "the absorption κ ended at its lower bound 0"))
    unphysical = unphysical_warning(geometry, x[:p] + 1j * x[p:2 * p])
    if unphysical is not None:
        warnings.append(unphysical)
    q_labels = [pmap.labels[c] for c in range(pmap.n_q)]
    drift = drift_warning(state.recent, np.sqrt(np.abs(np.diag(cov_q))), q_labels, state.message)
    if drift is not None:
        warnings.append(drift)
    if null.shape[1]:
        combos = describe_null(null, q_labels)
        warnings.append(FitWarning(
            "undetermined", f"{null.shape[1]} parameter combination(s) not determined by the pattern "
                            f"were kept at their start (σ = inf): {'; '.join(combos[:6])}"
                            + (" …" if len(combos) > 6 else "")))
    for w in warnings:
        (logger.warning if log_warnings else logger.debug)("refine: %s", w)
    logger.info("refine: R = %.3g, reduced χ² = %.3g, t = %.3f ± %.3f nm after %d iterations (%s)",
                r, chi2, t, t_err, state.iterations, state.message)
    if held.size:
        logger.info("refine: R_free = %.3g on %d held-out tilts", r_free, held.size)
    return RefinementResult(
        ug=ug, ug_error=ug_error, thickness_nm=t, thickness_error_nm=t_err, absorption=kappa,
        absorption_error=kappa_err, r_factor=r, chi2=chi2, standard_errors=std,
        covariance=covariance, history=history, fit=fit, weights=weights,
        converged=state.converged, message=state.message, n_iterations=state.iterations,
        geometry=geometry, warnings=warnings, measurement=measured_values, r_free=r_free,
        holdout_tilts=held, residual_correlation=rho, error_inflation=inflation,
        variance_model=real.variance_model,
    )
