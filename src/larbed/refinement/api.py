"""The refinement entry points: :func:`refine` and :func:`thickness_scan`.

:func:`refine` is weighted least squares of U_g, thickness and absorption against a pattern:
Levenberg–Marquardt (:mod:`larbed.refinement.solver`) on normal equations summed over tilt chunks
(:mod:`larbed.refinement.jacobian`), Poisson re-weighting passes when a dose is known, resumable
checkpoints, and a :class:`~larbed.refinement.result.RefinementResult` with errors and warnings.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import xarray as xr

from .._checkpoint import fingerprint, read_json, write_json
from .._types import SCAN_METRICS, WEIGHTS, ScanMetric, Weights
from ..geometry import Geometry
from ..measurement import Measurement
from ..metrics import dose_column
from ..resources import estimate_jacobian
from ..schema import (
    check_diffracted,
    check_measured,
    check_pattern,
    check_thickness,
    check_ug,
    pattern_dose,
)
from ..symmetry import SymmetryGroup, symmetry_groups
from ..threads import uses_kernels
from ..trust import CHI2_MAX, R_MAX_NOISE_FREE, R_NOISE_FACTOR, check_thresholds
from .jacobian import ForwardModel, WeightedProblem, masked_r, simulated_chunks
from .measured import MeasuredModel
from .parameters import ParameterMap, build_map, check_start_thickness, gauge_basis, reflection_mask
from .realdata import fit_variance_model, holdout_tilts
from .result import RealData, RefinementResult, build_result
from .solver import LMState, covariance, levenberg_marquardt, restore_undetermined

__all__ = ["refine", "thickness_scan"]

logger = logging.getLogger(__name__)

#: Poisson variances: σ² = max(I, floor/dose)/dose, floor 1 count for the data-based first pass and
#: this for the model-based passes (the maximum-likelihood fit needs σ² = I_model/dose).
MODEL_VARIANCE_FLOOR = 1e-3
#: A Poisson re-weighting pass that raises R by more than this factor is undone.
POISSON_REVERT_FACTOR = 1.05
#: A refinement iteration estimated to take longer than this [s] is announced in the log.
ANNOUNCE_ITERATION_S = 10.0


@uses_kernels
def thickness_scan(pattern, geometry: Geometry, ug, thicknesses_nm=None, *,
                   absorption: float | None = None, metric: ScanMetric = "r_factor",
                   dose: float | None = None, measurement: Measurement | None = None) -> xr.DataArray:
    """Agreement between ``pattern`` and simulations with fixed U_g over a range of thicknesses.

    One eigen-decomposition per tilt serves all thicknesses.

    Parameters
    ----------
    pattern : xarray.Dataset, xarray.DataArray or ndarray
        Measured intensities over (tilt, beam).
    geometry : Geometry
    ug : xarray.DataArray or array_like
        Structure factors [1/Å²].
    thicknesses_nm : array_like, optional
        Thicknesses to try [nm]; default 5 to 100 nm in 0.25 nm steps.
    absorption : float, optional
        Proportional absorption κ.
    metric : {'r_factor', 'chi2'}
        R = Σ|I − I_sim|/Σ I, or χ² with Poisson variances I/dose (needs a dose) per data point.
    dose : float, optional
        Electrons per tilt (default: ``pattern.attrs['dose']``).
    measurement : Measurement, optional
        Apply its (start) values to every simulation: background, scale (a per-tilt scale
        normalises each simulated tilt to the data), κ and tilt map.

    Returns
    -------
    xarray.DataArray
        The metric over ``thickness`` [nm]; ``attrs['best_thickness_nm']`` and
        ``attrs['best_value']`` give the minimum.

    Examples
    --------
    >>> from larbed import Crystal, Geometry, compute_ug, simulate
    >>> xtal = Crystal.builtin("SrTiO3")
    >>> geo = Geometry(xtal, 120, (0, 0, 1), 9, 13, 70)
    >>> ug = compute_ug(xtal, geo)
    >>> scan = thickness_scan(simulate(geo, ug, 31.5), geo, ug)
    >>> scan.attrs["best_thickness_nm"]
    31.5
    """
    meas = _check_measurement(measurement)
    exp = check_pattern(pattern, geometry, dose, scaled=meas is not None)
    ug_da = check_ug(geometry, ug)
    if meas is not None and meas.absorption == "proportional" and absorption is None:
        absorption = meas.start_absorption()
    if metric not in SCAN_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {SCAN_METRICS}")
    thick = (np.arange(5.0, 100.0 + 1e-9, 0.25) if thicknesses_nm is None
             else check_thickness(thicknesses_nm, "thicknesses_nm"))
    inv_var = None
    if metric == "chi2":
        d = pattern_dose(pattern, dose, geometry.n_tilts)
        if d is None:
            raise ValueError("metric='chi2' needs a dose (argument or pattern.attrs['dose'])")
        dc = dose_column(d)
        inv_var = dc / np.maximum(exp, 1.0 / dc)
    values = np.zeros(len(thick))
    ok = np.isfinite(exp)
    for rows, sim in simulated_chunks(geometry, ug_da, thick, absorption, meas):
        if meas is not None:
            sim = _measured_scan(meas, geometry, sim, exp, rows)
        diff = np.where(ok[None, rows], sim - exp[None, rows], 0.0)
        if inv_var is None:
            values += np.abs(diff).sum(axis=(1, 2))
        else:
            values += (diff**2 * np.where(ok, inv_var, 0.0)[None, rows]).sum(axis=(1, 2))
    values /= np.nansum(exp) if inv_var is None else ok.sum()
    units = "1"
    best = int(np.argmin(values))
    return xr.DataArray(
        values, dims=("thickness",),
        coords={"thickness": ("thickness", thick, {"units": "nm"})},
        name=metric,
        attrs={"units": units, "metric": metric, "best_thickness_nm": float(thick[best]),
               "best_value": float(values[best])},
    )


def _measured_scan(meas: Measurement, geometry: Geometry, sim: np.ndarray, exp: np.ndarray, rows):
    """Apply the measurement's start values (background, scale) to simulations (n_t, M, N)."""
    xm = meas.start_vector(geometry)
    m = sim + meas.background_array(geometry, xm)[rows][None]
    if meas.scale == "global":
        return meas.split(geometry, xm)[0] * m
    if meas.scale == "per_tilt":
        ok = np.isfinite(exp[rows])
        den = np.where(ok[None], m, 0.0).sum(axis=2, keepdims=True)
        return m * (np.where(ok, exp[rows], 0.0).sum(axis=1)[None, :, None] / den)
    return m


@dataclass
class _Setup:
    """Everything :func:`refine` derives from its inputs before the first iteration."""

    exp: np.ndarray
    ug: xr.DataArray
    dose: object
    weights: str
    pmap: ParameterMap
    model: ForwardModel
    x0: np.ndarray
    prior: tuple | None
    fingerprint: str
    absorbing: bool
    measurement: Measurement | None = None
    full_data: np.ndarray | None = None  # the data with the held-out tilts (exp has them NaN)
    holdout: np.ndarray | None = None
    variance_model: tuple[float, float] | None = None

    def weights_for(self, x_w) -> np.ndarray:
        """1/σ²: ones, Poisson from the data (``x_w`` None) or from the fit at ``x_w``, or the
        variance model fitted to the residuals at ``x_w``."""
        if self.weights == "none" or (self.weights == "variance" and x_w is None):
            return np.ones_like(self.exp)
        if self.weights == "variance":
            model = self.model.intensities(x_w)
            a, b = fit_variance_model(self.exp, model)
            self.variance_model = (a, b)
            logger.info("refine: variance model σ² = %.3g + %.3g·I", a, b)
            return 1.0 / (a + b * np.clip(model, 0.0, None))
        dc = dose_column(self.dose)
        if x_w is None:  # first pass: data-based variances with a floor of one count
            return dc / np.maximum(self.exp, 1.0 / dc)
        return dc / np.maximum(self.model.intensities(x_w), MODEL_VARIANCE_FLOOR / dc)


def _prior(prior, p: int):
    if prior is None:
        return None
    if not isinstance(prior, (tuple, list)) or len(prior) != 2:
        raise TypeError("prior must be a (centre, sigma) pair")
    try:
        centre = np.broadcast_to(np.asarray(prior[0], complex), (p,))
        sigma = np.broadcast_to(np.asarray(prior[1], float), (p,))
    except ValueError as exc:
        raise ValueError(f"prior: centre and sigma must be numbers or ({p},) arrays, one per "
                         f"reflection; got shapes {np.shape(prior[0])} and {np.shape(prior[1])}"
                         ) from exc
    if not np.all(np.isfinite(centre)) or np.any(np.isnan(sigma)) or np.any(sigma <= 0):
        raise ValueError("prior: centre must be finite and sigma positive (inf for no prior)")
    return np.concatenate([centre.real, centre.imag]), np.concatenate([sigma, sigma])


def _check_measurement(measurement) -> Measurement | None:
    if measurement is None or isinstance(measurement, Measurement):
        return measurement
    raise TypeError(f"measurement must be a larbed.Measurement or None, got {type(measurement).__name__}")


def measured_pattern(pattern, geometry, dose, measurement) -> tuple[Measurement | None, np.ndarray]:
    """(the Measurement or None, the checked intensities): a scale or background model lets the
    data sit on another scale than the dynamical intensities. Shared with ``refine_structure``."""
    meas = _check_measurement(measurement)
    scaled = meas is not None and (meas.scale != "none" or meas.background != "none")
    return meas, check_pattern(pattern, geometry, dose, scaled=scaled)


def measurement_absorption(meas: Measurement | None, geometry, data, absorption, refine_absorption):
    """(κ, refine κ) after checking that ``data`` determine ``meas``: a proportional absorption
    model refines κ, from its start value unless ``absorption`` gives one."""
    if meas is not None:
        meas.check_determinable(geometry, data)
        if meas.absorption == "proportional":
            absorption = meas.start_absorption() if absorption is None else absorption
            refine_absorption = True
    return absorption, refine_absorption


def _setup(pattern, geometry, ug0, thickness_nm0, *, refine_thickness, weights, dose, symmetry,
           real, absorption, refine_absorption, refine_reflections, prior, max_iter,
           measurement=None, holdout=0.0, seed=None) -> _Setup:
    """Validate the inputs (ValueError before any fitting) and build the parameter map."""
    meas, exp = measured_pattern(pattern, geometry, dose, measurement)
    check_measured(exp, geometry)
    check_diffracted(exp)
    absorption, refine_absorption = measurement_absorption(meas, geometry, exp, absorption,
                                                           refine_absorption)
    held = holdout_tilts(exp, holdout, seed)
    full_data = exp
    if held.size:
        exp = exp.copy()
        exp[held] = np.nan
    ug_da = check_ug(geometry, ug0)
    t0 = check_start_thickness(thickness_nm0)
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; choose one of {WEIGHTS}")
    d = pattern_dose(pattern, dose, geometry.n_tilts)
    if weights == "auto":
        weights = "poisson" if d is not None else "none"
    if weights == "poisson" and d is None:
        raise ValueError("weights='poisson' needs a dose (argument or pattern.attrs['dose']); "
                         "normalised data without a dose can use weights='variance'")
    if absorption is not None:
        absorption = float(absorption)
        if not np.isfinite(absorption) or absorption < 0:
            raise ValueError(f"absorption κ must be finite and >= 0, got {absorption}")
    if refine_absorption and absorption is None:
        raise ValueError("refine_absorption=True needs a starting absorption (e.g. absorption=0.05)")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    vals = ug_da.values
    if real and np.max(np.abs(vals.imag), initial=0) > 1e-12 * max(np.max(np.abs(vals)), 1e-300):
        raise ValueError("real=True needs a real starting U_g (Im U_g = 0); "
                         "align the origin first (e.g. make_unique_ug_vector) or use real=False")
    p = geometry.n_reflections
    absorbing = absorption is not None
    groups = ([SymmetryGroup(((i, 1),), False) for i in range(p)] if symmetry is None
              else symmetry_groups(geometry, symmetry, intensity=exp, dose=d))
    free = reflection_mask(geometry, refine_reflections)
    xm0 = meas.start_vector(geometry) if meas is not None else np.zeros(0)
    x0 = np.concatenate([vals.real, vals.imag, [t0], [absorption] if absorbing else [], xm0])
    extra_free = None if meas is None else meas.free_mask(geometry, exp)
    pmap = build_map(geometry, x0, groups=groups, real=real, refine_thickness=refine_thickness,
                     absorbing=absorbing, refine_absorption=refine_absorption, free_reflections=free,
                     extra_free=extra_free,
                     extra_labels=None if meas is None else meas.labels(geometry))
    n_q, n_data = pmap.n_q, int(np.isfinite(exp).sum())
    if n_q == 0:
        raise ValueError("nothing to refine: no free U_g, thickness or absorption")
    if n_q >= n_data:
        raise ValueError(f"{n_q} free parameters but only {n_data} measured intensities: the pattern "
                         "cannot determine them (tie U_g by symmetry, fix some, or record more tilts)")
    prior_x = _prior(prior, p)
    if prior_x is not None and weights == "none":  # its σ against unit-intensity residuals
        logger.warning("refine: a prior with weights='none' can swamp the data (give a dose)")
    if symmetry is not None:
        moved = np.max(np.abs(pmap.x(pmap.q(x0)) - x0)[:2 * p])
        logger.info("symmetry constraint moved the start by up to %.3g 1/Å²", moved)
    settings = {"weights": weights, "symmetry": [g.members for g in groups], "real": real,
                "refine_thickness": refine_thickness, "refine_absorption": refine_absorption,
                "free": None if free is None else free.tolist(), "prior": None if prior_x is None else
                [prior_x[0].tolist(), np.where(np.isfinite(prior_x[1]), prior_x[1], -1).tolist()],
                "measurement": None if meas is None else meas.describe(), "holdout": held.tolist()}
    fp = fingerprint(exp, None if d is None else np.asarray(d, float), np.asarray(x0),
                     geometry.to_attrs(), settings)
    model = ForwardModel(geometry, float(ug_da.attrs.get("u0", 0.0)), absorbing, refine_absorption)
    if meas is not None:
        model = MeasuredModel(model, meas, full_data)
    return _Setup(exp, ug_da, d, weights, pmap, model, x0, prior_x, fp, absorbing, meas,
                  full_data, held)


def _load_checkpoint(path, n_x: int, fp: str):
    if path is None or not os.path.exists(path):
        return None
    state = read_json(path)
    if state is None:
        raise ValueError(f"refinement checkpoint {os.fspath(path)!r} is unreadable (corrupt?); larbed "
                         "does not overwrite it: delete it or give another checkpoint path")
    if state.get("fingerprint", fp) != fp or len(state.get("x", [])) != n_x:
        raise ValueError(f"refinement checkpoint {os.fspath(path)!r} belongs to another pattern or "
                         "other settings; delete it or give another checkpoint path")
    return state


def _save_checkpoint(path, fp: str, x, history, stage, x_weights, finished_with=None,
                     state: LMState | None = None) -> None:
    """``finished_with``: the iteration limits of a finished refinement (None while it runs);
    ``state``: its last iterates, and how it ended (for the warnings of a reused result)."""
    write_json(path, {"fingerprint": fp, "x": np.asarray(x).tolist(), "history": history,
                      "stage": stage, "finished": finished_with is not None, "limits": finished_with,
                      "x_weights": None if x_weights is None else np.asarray(x_weights).tolist(),
                      "recent": [] if state is None else [np.asarray(v).tolist() for v in state.recent],
                      "ended": None if state is None else [bool(state.converged), state.message]})


def _log_cost(su: _Setup, prob: WeightedProblem) -> None:
    """Log the estimated cost of an iteration (the path, reduced kernels and a tilt spread)."""
    geometry, n_q, chunk = su.model.geometry, su.pmap.n_q, prob.chunk
    points = getattr(su.model, "points_per_tilt", 1)
    core = getattr(su.model, "core", su.model)
    path = core.eigen_path(np.asarray(su.x0[:core.n_x], float))
    est = estimate_jacobian(geometry, n_q, chunk_tilts=chunk * points, path=path,
                            reduced=prob.reduced, points_per_tilt=points)
    spread = f" ({points} points per tilt: a tilt spread)" if points > 1 else ""
    msg = (f"refine: {geometry.n_tilts} tilts × {geometry.n_beams} beams{spread}, {n_q} free "
           f"parameters, Jacobian in chunks of {chunk} tilts; about {est.seconds:.3g} s "
           f"and {est.memory_bytes / 2**20:.0f} MiB per iteration")
    (logger.warning if est.seconds > ANNOUNCE_ITERATION_S else logger.info)(msg)


def _passes(su: _Setup, prob: WeightedProblem, state: LMState, stage0: int, x_weights, *,
            n_stages: int, max_iter: int, ftol: float, bar, save, log=logger.warning):
    """The least-squares pass and the Poisson re-weighting passes; (state, x_weights, stage)."""
    geometry = su.model.geometry
    prev_weights = None  # weights of the previous pass, under which q_before was fitted
    stage = stage0
    for stage in range(stage0, n_stages):
        if stage > stage0 or (stage > 0 and x_weights is None):
            prev_weights, x_weights = x_weights, su.pmap.x(state.q)
            prob.set_weights(su.weights_for(x_weights))
        q_before = state.q.copy()
        r_before = masked_r(su.exp, su.model.intensities(su.pmap.x(q_before))) if stage > 0 else np.inf
        state.mu = None
        state = levenberg_marquardt(prob, state, max_iter=max_iter, ftol=ftol, xtol=ftol,
                                    stage=stage, bar=bar,
                                    on_iteration=lambda st, s=stage, w=x_weights: save(st, s, w))
        if stage > 0 and masked_r(su.exp, state.inten) > POISSON_REVERT_FACTOR * r_before:
            # model-based weights only make sense near the solution: keep the previous pass
            log("refine: re-weighting pass %d raised R from %.3g to %.3g; keeping the previous "
                "pass (the fit is far from the data)", stage, r_before, masked_r(su.exp, state.inten))
            state.q, x_weights = q_before, prev_weights
            prob.set_weights(su.weights_for(x_weights))
            state.r, state.inten, state.hess, _ = prob.normal_equations(q_before)
            break
        if stage > 0:
            cov, _ = covariance(state.hess, gauge_basis(su.pmap, geometry, state.q))
            sig = np.sqrt(np.abs(np.diag(cov)))
            if np.all(np.abs(state.q - q_before) <= 0.01 * sig):
                break
    return state, x_weights, stage


@uses_kernels
def refine(
    pattern,
    geometry: Geometry,
    ug0,
    thickness_nm0: float,
    *,
    refine_thickness: bool = True,
    weights: Weights = "auto",
    dose=None,
    symmetry=None,
    real: bool = False,
    absorption: float | None = None,
    refine_absorption: bool = False,
    refine_reflections=None,
    prior=None,
    max_iter: int = 100,
    ftol: float = 1e-10,
    poisson_passes: int = 3,
    chi2_max: float = CHI2_MAX,
    r_noise_factor: float = R_NOISE_FACTOR,
    r_max: float = R_MAX_NOISE_FREE,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    log_warnings: bool = True,
    measurement: Measurement | None = None,
    holdout: float = 0.0,
    seed: int | None = None,
    correlated_errors: bool = True,
) -> RefinementResult:
    """Least-squares refinement of U_g and thickness against a pattern.

    Levenberg–Marquardt on the intensities with the exact Jacobian (:func:`intensity_jacobian`).

    Parameters
    ----------
    pattern : xarray.Dataset, xarray.DataArray or ndarray
        Measured intensities over (tilt, beam), fractions of the incident beam.
    geometry : Geometry
        Must match the pattern (beams, tilts, voltage).
    ug0 : xarray.DataArray or array_like
        Starting U_g [1/Å²], one per Friedel pair.
    thickness_nm0 : float
        Starting thickness [nm], > 0.
    refine_thickness : bool
        Refine t (else keep it fixed).
    weights : {'auto', 'poisson', 'variance', 'none'}
        ``'poisson'``: w = 1/σ² with σ² = I/dose (data-based in the first pass, then the fitted
        intensities, iterated — the Poisson maximum-likelihood fit); ``'variance'``: a first
        unweighted pass, then σ² = a + b·I fitted to its residuals (normalised data without a
        dose; see :func:`larbed.refinement.realdata.fit_variance_model`); ``'none'``: w = 1;
        ``'auto'``: Poisson when a dose is known.
    dose : float, optional
        Electrons per tilt (default ``pattern.attrs['dose']``).
    symmetry : None, 'auto', 'pattern', 'crystal' or sequence
        Tie symmetry-equivalent U_g (see :func:`larbed.symmetry.symmetry_groups`: ``'auto'`` detects
        the pattern's point group, ``'crystal'`` uses the geometry's atoms, or give operation names
        or groups of (h, k, l)). The constraints hold with the origin on the symmetry elements; the
        start is projected onto them (group means) as it is, so give a start in that origin
        (e.g. :func:`larbed.origin.align_to_groups`).
    real : bool
        Keep every U_g real (centrosymmetric projection, origin on the centre); the start must be real.
    absorption : float, optional
        Proportional absorption κ (fixed, or the start when ``refine_absorption``).
    refine_absorption : bool
        Refine κ too (needs ``absorption``).
    refine_reflections : bool mask or sequence of (h, k, l), optional
        Refine only these U_g; the others stay at the start (continuation strategies).
    prior : (centre, sigma), optional
        Gaussian prior on U_g: ``centre`` (n_reflections,) complex U_g [1/Å²] and ``sigma``
        (n_reflections,) [1/Å²], ``inf`` for none. Adds the residuals (Re U − Re c)/σ and
        (Im U − Im c)/σ to the weighted intensity residuals: with Poisson weights a maximum a
        posteriori fit, with ``weights='none'`` σ counts per unit intensity residual (a warning).
        It keeps U_g that the data hardly see from running off (continuation strategies); the
        standard errors are then the posterior ones.
    max_iter : int
        Iterations per pass.
    ftol : float
        Converged when the relative χ² decrease (or the scaled step) falls below this twice.
    poisson_passes : int
        Re-weighting passes with model variances after the first (Poisson weights only).
    progress : bool
        Show a progress bar.
    checkpoint : path, optional
        JSON file written after every iteration; an existing one restarts from its parameters, and
        a finished one (same data, settings and limits) is returned without iterating.
    log_warnings : bool
        Also log the result's warnings (default); ``False`` keeps them in ``.warnings`` only (for
        the many trial refinements inside :func:`larbed.determine`).
    measurement : Measurement, optional
        The measurement model (scale, background, absorption, tilt map; SPEC §11), refined
        jointly with U_g and t; its start values from ``measurement.values``. The result's
        ``.measurement`` holds the refined values and their standard errors.
    holdout : float
        Fraction of the measured tilts (seeded by ``seed``) left out of the fit; their R under
        the refined model is ``.r_free`` (NaN for 0), the tilts ``.holdout_tilts``.
    seed : int, optional
        Seed of the hold-out choice.
    correlated_errors : bool
        Inflate the standard errors by (1 + ρ)/(1 − ρ) when the weighted residuals of
        neighbouring tilts are significantly correlated (ρ; :mod:`larbed.refinement.realdata`);
        ``.error_inflation`` and ``.residual_correlation`` record it.

    Returns
    -------
    RefinementResult

    Examples
    --------
    >>> from larbed import Crystal, Geometry, compute_ug, simulate
    >>> xtal = Crystal.builtin("SrTiO3")
    >>> geo = Geometry(xtal, 120, (0, 0, 1), 9, 13, 70)
    >>> truth = compute_ug(xtal, geo)
    >>> res = refine(simulate(geo, truth, 30.0), geo, truth * 1.05, 29.0, progress=False)
    >>> res.r_factor < 1e-8, round(res.thickness_nm, 6)
    (True, 30.0)
    """
    su = _setup(pattern, geometry, ug0, thickness_nm0, refine_thickness=refine_thickness,
                weights=weights, dose=dose, symmetry=symmetry, real=real, absorption=absorption,
                refine_absorption=refine_absorption, refine_reflections=refine_reflections,
                prior=prior, max_iter=max_iter, measurement=measurement, holdout=holdout, seed=seed)
    check_thresholds(chi2_max, r_noise_factor, r_max)
    if isinstance(ftol, bool) or not isinstance(ftol, (int, float, np.number)) or not (
            np.isfinite(ftol) and ftol >= 0):
        raise ValueError(f"ftol must be a finite number >= 0 (relative change of the cost), "
                         f"got {ftol!r}")
    pmap = su.pmap
    limits_used = [int(max_iter), float(ftol), int(poisson_passes)]  # a rerun with others continues
    q, history, stage0, x_weights, finished = pmap.q(su.x0), [], 0, None, False
    saved = _load_checkpoint(checkpoint, len(su.x0), su.fingerprint)
    if saved is not None:
        q = pmap.q(np.asarray(saved["x"], float))
        history = [tuple(h) for h in saved["history"]]
        stage0 = int(saved.get("stage", 0))
        finished = bool(saved.get("finished", False)) and saved.get("limits") == limits_used
        x_weights = None if saved.get("x_weights") is None else np.asarray(saved["x_weights"], float)
        logger.info("%s refinement from %s (%d iterations done)",
                    "reusing the finished" if finished else "resuming", checkpoint, len(history))
    n_stages = 1 + (poisson_passes if su.weights == "poisson" else
                    min(poisson_passes, 2) if su.weights == "variance" else 0)

    def save(st, stage, x_w, done=False):
        if checkpoint is not None:
            _save_checkpoint(checkpoint, su.fingerprint, pmap.x(st.q), st.history, stage, x_w,
                             limits_used if done else None, st)

    from tqdm.auto import tqdm

    prob = WeightedProblem(su.model, pmap, su.exp, su.weights_for(x_weights), su.prior)
    state = LMState(q=q, history=history, iterations=len(history),
                    recent=[np.asarray(v, float) for v in (saved or {}).get("recent", [])])
    _log_cost(su, prob)
    bar = tqdm(total=max_iter * n_stages, desc="refine", unit="it",
               disable=not progress or finished, leave=False)
    try:
        stage = stage0
        if finished:
            state.r, state.inten, state.hess, _ = prob.normal_equations(state.q)
            ended = saved.get("ended") or [True, "finished earlier"]
            state.converged, state.message = bool(ended[0]), f"{ended[1]} (reused from the checkpoint)"
        else:
            state, x_weights, stage = _passes(su, prob, state, stage0, x_weights, n_stages=n_stages,
                                              max_iter=max_iter, ftol=ftol, bar=bar, save=save,
                                              log=logger.warning if log_warnings else logger.debug)
            restore_undetermined(prob, state, pmap.q(su.x0), max_iter=max_iter, ftol=ftol)
        if not finished:  # a reused checkpoint stays as written
            save(state, stage, x_weights, done=True)
        weights_used = su.weights
        if su.weights == "variance" and x_weights is None:
            # the re-weighting pass was undone (or never ran): the fit used unit weights
            su.variance_model, weights_used = None, "none"
        elif su.weights == "variance" and su.variance_model is None:
            su.weights_for(x_weights)  # a finished run from a checkpoint: recompute (a, b)
        return build_result(prob, state, geometry, su.ug, weights_used, su.absorbing, su.dose,
                            (chi2_max, r_noise_factor, r_max), log_warnings,
                            RealData(su.measurement, su.full_data, su.holdout, su.variance_model,
                                     correlated_errors))
    finally:
        bar.close()
