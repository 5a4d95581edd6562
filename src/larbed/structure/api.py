"""``refine_structure``: least squares of the crystal's atoms against a LARBED pattern.

The refinement's machinery is :mod:`larbed.refinement`'s (forward model, normal equations over
tilt chunks, Levenberg–Marquardt, covariance, undetermined directions); only the parameter map
differs (:class:`~larbed.structure.parameters.StructureMap`), and the chain rule through its exact
∂U_g/∂p makes the Jacobian exact.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np

from .._random import rng_from
from .._types import WEIGHTS, Weights
from ..crystal import Crystal
from ..geometry import Geometry
from ..metrics import dose_column
from ..refinement.api import (
    MODEL_VARIANCE_FLOOR,
    POISSON_REVERT_FACTOR,
    measured_pattern,
    measurement_absorption,
)
from ..refinement.jacobian import ForwardModel, WeightedProblem, masked_r
from ..refinement.measured import MeasuredModel
from ..refinement.parameters import check_start_thickness, gauge_basis
from ..refinement.result import RealData, build_result
from ..refinement.solver import LMState, covariance, levenberg_marquardt, restore_undetermined
from ..scattering import PARAMETERIZATIONS, Parameterization
from ..schema import check_diffracted, pattern_dose
from ..spacegroup import U_NAMES
from ..structure_factors import compute_ug
from ..threads import uses_kernels
from ..trust import CHI2_MAX, R_MAX_NOISE_FREE, R_NOISE_FACTOR, FitWarning, check_thresholds
from .cif import format_su
from .model import COORD_NAMES, SiteModel
from .parameters import StructureMap, aniso_sites, free_ug_groups, select_parameters
from .result import (
    StructureResult,
    bound_warnings,
    free_ug_dataset,
    parameters_dataset,
    refined_crystal,
    xray_structure_factors,
)

__all__ = ["CELL_RTOL", "MAX_HOLDOUT", "ZERO_COLUMN_RTOL", "held_out_tilts", "refine_structure"]

logger = logging.getLogger(__name__)

#: The crystal and the geometry's crystal share the cell when lengths and angles agree to this.
CELL_RTOL = 1e-6
#: At most this fraction of the tilts may be held out of the fit (R_free).
MAX_HOLDOUT = 0.5
#: A parameter whose column of ∂U_g/∂p is below this fraction of the largest enters no U_g of the
#: pattern (a coordinate along the zone axis): it is fixed before the fit, with a warning.
ZERO_COLUMN_RTOL = 1e-12


@dataclass
class _Setup:
    exp: np.ndarray  # the fitted data: held-out tilts NaN
    dose: object
    weights: str
    smap: StructureMap
    model: ForwardModel | MeasuredModel
    warnings: list
    fixed: dict
    observed: np.ndarray  # every tilt
    held: np.ndarray  # (n_tilts,) bool: tilts left out of the fit (R_free)
    measurement: object = None  # the Measurement, or None

    def weights_for(self, x_w) -> np.ndarray:
        """1/σ²: ones, or Poisson from the data (``x_w`` None) or from the fit at ``x_w``; 0 on
        the held-out tilts."""
        if self.weights == "none":
            w = np.ones_like(self.exp)
        else:
            dc = dose_column(self.dose)
            if x_w is None:
                w = dc / np.maximum(self.observed, 1.0 / dc)
            else:
                w = dc / np.maximum(self.model.intensities(x_w), MODEL_VARIANCE_FLOOR / dc)
        w[self.held] = 0.0
        return w


def held_out_tilts(n_tilts: int, fraction: float, seed: int) -> np.ndarray:
    """(n_tilts,) bool: a seeded random ``fraction`` of the tilts (rounded, at least one when the
    fraction is positive) left out of the fit for R_free."""
    if isinstance(fraction, bool) or not np.isfinite(fraction) or not 0 <= fraction <= MAX_HOLDOUT:
        raise ValueError(f"holdout must be a fraction of the tilts in [0, {MAX_HOLDOUT}], "
                         f"got {fraction!r}")
    held = np.zeros(n_tilts, bool)
    n = max(1, round(fraction * n_tilts)) if fraction > 0 else 0
    held[rng_from(seed).choice(n_tilts, size=n, replace=False)] = True
    return held


def _check_crystal(crystal, geometry: Geometry) -> list[FitWarning]:
    if not isinstance(crystal, Crystal):
        raise TypeError(f"crystal must be a larbed.Crystal, got {type(crystal).__name__}")
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a larbed.Geometry, got {type(geometry).__name__}")
    if not np.allclose(crystal.cell, geometry.crystal.cell, rtol=CELL_RTOL, atol=0):
        raise ValueError(f"the crystal's cell {crystal.cell} differs from the geometry's "
                         f"{geometry.crystal.cell}: the crystal gives the start, the geometry the "
                         "lattice, and they must share the cell")
    if crystal.space_group is None:
        msg = (f"{crystal.name} has no space group: refined in P1, every atom free (give "
               "space_group= to the Crystal, or read a CIF with one)")
        logger.warning("refine_structure: %s", msg)
        return [FitWarning("symmetry", msg)]
    return []


def _symmetry_fixed(label: str, model: SiteModel) -> bool:
    m = re.match(r"^([A-Za-z0-9]+)\((.+)\)$", label)
    sites = {s.label for s in model.crystal.sites}
    return bool(m) and m.group(2) in sites and m.group(1) in (*COORD_NAMES, *U_NAMES)


def _selection(model: SiteModel, chosen: list[int], fix, tie) -> np.ndarray:
    """(n_raw, n_s) selection matrix of the free structure parameters after ``fix`` and ``tie``."""
    labels = [p.label for p in model.parameters]
    chosen = list(chosen)

    def index(label: str, what: str) -> int:
        if label in labels:
            i = labels.index(label)
            if i not in chosen:
                raise ValueError(f"{what}: {label} is not refined (name it in free=)")
            return i
        if _symmetry_fixed(label, model):
            raise ValueError(f"{what}: {label} is fixed by the space group "
                             f"{model.crystal.space_group.name} (the site symmetry allows no such "
                             "parameter of its own)")
        raise ValueError(f"{what}: no parameter {label!r}; refined: {[labels[i] for i in chosen]}")

    for label in [fix] if isinstance(fix, str) else list(fix or []):
        chosen.remove(index(str(label), "fix"))
    columns = {i: [i] for i in chosen}
    for group in tie or []:
        if isinstance(group, str) or len(group) < 2:
            raise ValueError(f"tie: each entry must list two or more parameter labels, got {group!r}")
        idx = [index(str(label), "tie") for label in group]
        kinds = {model.parameters[i].kind for i in idx}
        if len(kinds) > 1:
            raise ValueError(f"tie: {list(group)} mix parameter kinds {sorted(kinds)}")
        for i in idx[1:]:
            columns[idx[0]] += columns.pop(i, [])
    select = np.zeros((model.n_raw, len(columns)))
    for col, rows in enumerate(columns.values()):
        select[rows, col] = 1.0
    return select


def _build(pattern, geometry, crystal, thickness_nm0, *, free, free_ug, fix, tie, refine_thickness,
           weights, dose, absorption, refine_absorption, parameterization, max_iter, holdout=0.0,
           seed=0, measurement=None) -> _Setup:
    """Validate the inputs (ValueError before any fitting) and build the structure map."""
    warnings = _check_crystal(crystal, geometry)
    meas, observed = measured_pattern(pattern, geometry, dose, measurement)
    check_diffracted(observed)
    absorption, refine_absorption = measurement_absorption(meas, geometry, observed, absorption,
                                                           refine_absorption)
    t0 = check_start_thickness(thickness_nm0)
    held = held_out_tilts(geometry.n_tilts, holdout, seed)
    exp = observed.copy()
    exp[held] = np.nan  # counts nowhere in the fit
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; choose one of {WEIGHTS}")
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")
    d = pattern_dose(pattern, dose, geometry.n_tilts)
    if weights == "auto":
        weights = "poisson" if d is not None else "none"
    if weights == "poisson" and d is None:
        raise ValueError("weights='poisson' needs a dose (argument or pattern.attrs['dose'])")
    if absorption is not None and (not np.isfinite(absorption) or absorption < 0):
        raise ValueError(f"absorption κ must be finite and >= 0, got {absorption}")
    if refine_absorption and absorption is None:
        raise ValueError("refine_absorption=True needs a starting absorption (e.g. absorption=0.05)")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if isinstance(fix, str) and fix == "t" or (not isinstance(fix, str) and "t" in list(fix or [])):
        refine_thickness = False
        fix = [f for f in ([fix] if isinstance(fix, str) else fix) if f != "t"]
    model = SiteModel(crystal, geometry, parameterization, aniso=aniso_sites(free, crystal))
    chosen, hidden = select_parameters(free, model, geometry.zone_axis)
    groups = free_ug_groups(free_ug, geometry, crystal)
    kappa = None if absorption is None else float(absorption)
    select = _selection(model, chosen, fix, tie)
    part = None if meas is None else (meas.start_vector(geometry), meas.free_mask(geometry, exp),
                                      meas.labels(geometry))
    smap = StructureMap(model, geometry, select, groups, t0, refine_thickness, kappa, refine_absorption,
                        part)
    # parameters that enter no U_g of this pattern: fixed now, with a warning
    p = geometry.n_reflections
    uvw = "[{}]".format(" ".join(map(str, geometry.zone_axis)))
    fixed = {label: f"moves along the zone axis {uvw}: a zero-order pattern cannot see it"
             for label in hidden}
    norms = np.linalg.norm(smap.dx()[:2 * p, :smap.n_s], axis=0)
    dead = norms <= ZERO_COLUMN_RTOL * max(float(norms.max(initial=0.0)), 1e-300)
    for i in np.flatnonzero(dead):
        fixed[smap.labels[i]] = "enters no U_g of this pattern (e.g. a move along the zone axis)"
    if fixed:
        msg = (f"{', '.join(fixed)}: not determined by this pattern (no U_g of the zone axis "
               f"{uvw} depends on them); held at the start")
        warnings.append(FitWarning("undetermined", msg))
        logger.warning("refine_structure: %s", msg)
    if np.any(dead):
        smap = StructureMap(model, geometry, select[:, ~dead], groups, t0, refine_thickness, kappa,
                            refine_absorption, part)
    n_data = int(np.isfinite(exp).sum())
    if smap.n_q == 0:
        raise ValueError("nothing to refine: no free structure parameter, U_g or thickness")
    if smap.n_q >= n_data:
        raise ValueError(f"{smap.n_q} free parameters but only {n_data} measured intensities")
    u0 = float(compute_ug(crystal, geometry, parameterization).attrs["u0"])
    fmodel = ForwardModel(geometry, u0, absorption is not None, refine_absorption)
    if meas is not None:  # I = s_t (I_dyn(θ') + B): the per-tilt scale sees every tilt's data
        fmodel = MeasuredModel(fmodel, meas, observed)
    return _Setup(exp, d, weights, smap, fmodel, warnings, fixed, observed, held, meas)


def _fit(su: _Setup, prob: WeightedProblem, *, n_stages: int, max_iter: int, ftol: float, bar) -> LMState:
    """Least squares, then Poisson re-weighting passes with model variances (kept only while
    they do not raise R; stopped when the parameters no longer move)."""
    state = LMState(q=su.smap.q0.copy())
    geometry = su.model.geometry
    for stage in range(n_stages):
        if stage:
            q_before, r_before = state.q.copy(), masked_r(su.exp, state.inten)
            weights_before = prob.sw.copy()
            prob.set_weights(su.weights_for(su.smap.x(state.q)))
        state.mu = None
        state = levenberg_marquardt(prob, state, max_iter=max_iter, ftol=ftol, xtol=ftol,
                                    stage=stage, bar=bar)
        if not stage:
            continue
        if masked_r(su.exp, state.inten) > POISSON_REVERT_FACTOR * r_before:
            state.q = q_before
            prob.sw = weights_before
            state.r, state.inten, state.hess, _ = prob.normal_equations(q_before)
            break
        cov, _ = covariance(state.hess, gauge_basis(su.smap, geometry, state.q))
        if np.all(np.abs(state.q - q_before) <= 0.01 * np.sqrt(np.abs(np.diag(cov)))):
            break
    return state


@uses_kernels
def refine_structure(pattern, geometry: Geometry, crystal: Crystal, thickness_nm0: float, *,
                     free=None, free_ug=None, measurement=None, fix=None, tie=None,
                     refine_thickness: bool = True,
                     weights: Weights = "auto", dose=None, absorption: float | None = None,
                     refine_absorption: bool = False, parameterization: Parameterization = "lobato",
                     max_iter: int = 100, ftol: float = 1e-10, poisson_passes: int = 3,
                     chi2_max: float = CHI2_MAX, r_noise_factor: float = R_NOISE_FACTOR,
                     r_max: float = R_MAX_NOISE_FREE, holdout: float = 0.0, seed: int = 0,
                     progress: bool = True, log_warnings: bool = True) -> StructureResult:
    """Refine the crystal — coordinates, Debye–Waller factors, occupancies — against a pattern.

    Least squares with exact derivatives: ∂I/∂p = Σ_g ∂I/∂U_g · ∂U_g/∂p, from the U_g Jacobian of
    :func:`larbed.intensity_jacobian` and the analytic derivatives of the structure-factor
    formula. Only what the space group allows moves (special positions, the site symmetry of
    U^ij); a crystal without a space group is refined in P1, with a 'symmetry' warning. In hybrid
    mode (``free_ug``) chosen low-order U_g are free on top of the independent-atom model (the
    others come from the atoms): the standard route to bonding charge.

    Parameters
    ----------
    pattern : xarray.Dataset, xarray.DataArray or ndarray
        Measured intensities over (tilt, beam).
    geometry : Geometry
        Beams, tilts and voltage; its crystal fixes the lattice only.
    crystal : Crystal
        The start (atoms, B, occupancies, space group); must share the geometry's cell.
    thickness_nm0 : float
        Starting thickness [nm].
    free : None, str, sequence of str or mapping
        What to refine: kinds ``'xyz'``, ``'b_iso'``, ``'u_aniso'``, ``'occupancy'``, ``'b_global'``
        for every site, or one site as ``'b_iso(O1)'``, or a mapping ``{'O1': ['xyz', 'b_iso']}``.
        Default: every coordinate the site symmetry allows and the zone axis can see (moves along
        the zone axis change no ZOLZ U_g), one B per site (the U^ij of an anisotropic one), and
        the thickness; occupancies fixed.
    free_ug : None, int or sequence of (h, k, l)
        U_g refined freely on top of the independent-atom model, with the ties and phases of the
        space group: reflections (``[(1, 1, 0), (2, 0, 0)]``) or the n lowest |g| shells.
    measurement : larbed.Measurement, optional
        The measurement model of real data (scale, background, absorption, tilt map; SPEC §11),
        refined jointly with the structure: I = s_t (I_dyn(θ') + B), exactly as in
        :func:`larbed.refine`. Its refined values with standard errors are the result's
        ``.measurement``; the free ones are also rows of ``.parameters`` (kind ``'measurement'``).
    fix : sequence of str, optional
        Parameter labels to hold at the start (``'z(O1)'``, ``'B(Ti1)'``, ``'t'``).
    tie : sequence of sequences of str, optional
        Groups of labels refined as one value (``[('B(Sr1)', 'B(Ti1)')]``).
    refine_thickness : bool
    weights : {'auto', 'poisson', 'none'}
        As in :func:`larbed.refine`.
    dose : float or (n_tilts,) array, optional
        Electrons per tilt (default ``pattern.attrs['dose']``).
    absorption : float, optional
        Proportional absorption κ (fixed, or the start with ``refine_absorption``).
    refine_absorption : bool
    parameterization : {'lobato', 'kirkland'}
        Scattering factors of the independent-atom model.
    max_iter, ftol, poisson_passes, chi2_max, r_noise_factor, r_max
        As in :func:`larbed.refine`.
    holdout : float
        Fraction of the tilts (seeded random, ``seed``) left out of the fit; R on them under the
        refined model is ``r_free``. 0 (default): every tilt is fitted and ``r_free`` is NaN.
    seed : int
        Seed of the held-out tilts.
    progress : bool
    log_warnings : bool

    Returns
    -------
    StructureResult

    Raises
    ------
    ValueError
        A crystal and geometry with different cells; a parameter the space group fixes named in
        ``free``, ``fix`` or ``tie``; a forbidden reflection in ``free_ug``; occupancies outside
        [0, 1] (from :class:`larbed.Crystal`); more parameters than data; bad options.

    Examples
    --------
    >>> from larbed import Crystal, Geometry, simulate, compute_ug
    >>> truth = Crystal.builtin("SrTiO3", debye_waller=True)
    >>> geo = Geometry(truth, 120, (0, 0, 1), 13, 49, 70)
    >>> pattern = simulate(geo, compute_ug(truth, geo), 30.0)
    >>> res = refine_structure(pattern, geo, Crystal.builtin("SrTiO3"), 29.5, progress=False)
    >>> [round(res.value(f"B({s})")[0], 4) for s in ("Sr1", "Ti1", "O1")], round(res.thickness_nm, 4)
    ([0.41, 0.32, 0.63], 30.0)
    """
    su = _build(pattern, geometry, crystal, thickness_nm0, free=free, free_ug=free_ug, fix=fix,
                tie=tie, refine_thickness=refine_thickness, weights=weights, dose=dose,
                absorption=absorption, refine_absorption=refine_absorption,
                parameterization=parameterization, max_iter=max_iter, holdout=holdout, seed=seed,
                measurement=measurement)
    check_thresholds(chi2_max, r_noise_factor, r_max)
    smap = su.smap
    from tqdm.auto import tqdm

    n_stages = 1 + (int(poisson_passes) if su.weights == "poisson" else 0)
    prob = WeightedProblem(su.model, smap, su.exp, su.weights_for(None))
    logger.info("refine_structure: %d parameters (%s) against %d × %d intensities", smap.n_q,
                ", ".join(smap.labels), geometry.n_tilts, geometry.n_beams)
    bar = tqdm(total=max_iter * n_stages, desc="refine_structure", unit="it", disable=not progress,
               leave=False)
    try:
        state = _fit(su, prob, n_stages=n_stages, max_iter=max_iter, ftol=ftol, bar=bar)
        restore_undetermined(prob, state, smap.q0, max_iter=max_iter, ftol=ftol)
    finally:
        bar.close()
    ug_start = compute_ug(crystal, geometry, parameterization)
    ref = build_result(prob, state, geometry, ug_start, su.weights, su.model.absorbing, su.dose,
                       (chi2_max, r_noise_factor, r_max), log_warnings,
                       RealData(su.measurement, su.observed, np.flatnonzero(su.held)))
    return _result(su, state, ref, crystal, geometry, parameterization, log_warnings)


def _result(su: _Setup, state: LMState, ref, crystal, geometry, parameterization, log_warnings):
    smap = su.smap
    cov_q, _ = covariance(state.hess, gauge_basis(smap, geometry, state.q))
    if su.weights == "none":
        cov_q = cov_q * ref.chi2
    # the inflation for residuals correlated between neighbouring tilts, as the U_g errors have
    cov_q = cov_q * ref.error_inflation**2
    fixed = dict(su.fixed)
    for label, var in zip(smap.labels, np.diag(cov_q), strict=True):
        if not np.isfinite(var):  # a null direction of JᵀWJ (restore_undetermined held it)
            fixed[label] = "in a parameter combination the pattern does not determine (σ = inf)"
    raw = smap.raw(state.q)
    finite = np.where(np.isfinite(cov_q[:smap.n_s, :smap.n_s]), cov_q[:smap.n_s, :smap.n_s], 0.0)
    cov_raw = smap.select @ finite @ smap.select.T
    loose = np.any(smap.select[:, ~np.isfinite(np.diag(cov_q))[:smap.n_s]] != 0, axis=1)
    cov_raw[loose, :] = np.inf
    cov_raw[:, loose] = np.inf
    values = smap.model.site_values(raw, cov_raw)
    refined = refined_crystal(smap.model, values, crystal.name)
    nuclear = SiteModel(crystal, geometry, parameterization, aniso=smap.model.aniso_labels,
                        nuclear=True)
    fx, fx_err = xray_structure_factors(smap, nuclear, state.q, cov_q, geometry)
    iam, _ = smap.model.evaluate(raw, derivatives=False)
    warnings = list(su.warnings) + list(ref.warnings) + bound_warnings(smap, state.q, cov_q)
    for w in warnings[len(su.warnings) + len(ref.warnings):]:
        (logger.warning if log_warnings else logger.debug)("refine_structure: %s", w)
    xray = ref.ug.copy(data=fx)
    xray.attrs = {"units": "electrons per cell", "long_name": "X-ray structure factor (Mott–Bethe)"}
    items = {"_refine_ls_R_factor_all": f"{ref.r_factor:.5g}",
             "_refine_ls_goodness_of_fit_all": f"{np.sqrt(ref.chi2):.4g}",
             "_larbed_thickness_nm": f"{ref.thickness_nm:.6g}" if not np.isfinite(ref.thickness_error_nm)
             else format_su(ref.thickness_nm, ref.thickness_error_nm),
             "_larbed_zone_axis": "'[{}]'".format(" ".join(map(str, geometry.zone_axis))),
             "_larbed_voltage_kV": f"{geometry.voltage_kv:g}"}
    return StructureResult(
        crystal=refined, parameters=parameters_dataset(smap.labels, smap.kinds, state.q, cov_q),
        thickness_nm=ref.thickness_nm, thickness_error_nm=ref.thickness_error_nm,
        r_factor=ref.r_factor, chi2=ref.chi2, ug=ref.ug, ug_error=ref.ug_error,
        free_ug=free_ug_dataset(smap, ref, iam), xray=xray,
        xray_error=xray.copy(data=fx_err), refinement=ref, fixed=fixed, warnings=warnings,
        converged=state.converged, n_iterations=state.iterations, site_values=values,
        r_free=(masked_r(su.observed[su.held], ref.fit.intensity.values[su.held])
                if su.held.any() else float("nan")),
        cif_items=items, truth_map=smap)
