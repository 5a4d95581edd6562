"""Refinement of U_g and thickness against a LARBED pattern.

Three tools:

* :func:`intensity_jacobian` — exact derivatives of every intensity with respect to every
  Re U_g, Im U_g, the thickness and (optionally) the absorption κ, from one eigen-decomposition
  per tilt (divided differences of the exponential, stable at the degenerate zone axis);
* :func:`thickness_scan` — the agreement with the pattern as a function of thickness at fixed U_g;
* :func:`refine` — weighted least squares (Levenberg–Marquardt with the analytic Jacobian) of U_g,
  thickness and absorption against the intensities, with standard errors from (JᵀWJ)⁻¹.

Parameters are Re U_p and Im U_p [1/Å²] of the Friedel pairs p (``geometry.reflection_hkl``), the
thickness t [nm] and κ. Intensities cannot see the unit-cell origin: when Im U_g are free, the two
in-plane origin shifts are exact null directions of JᵀWJ. The solver keeps steps out of them and the
covariance is the minimum-norm one (errors are those of U_g after aligning the origin).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import scipy.linalg
import xarray as xr

from ._checkpoint import fingerprint, read_json, write_json
from ._kernels import bloch, gradients
from .geometry import Geometry
from .metrics import check_dose, dose_column, expected_noise_r
from .simulation import check_thickness, check_ug, prepare_matrices, simulate
from .structure_factors import input_ug
from .symmetry import SymmetryGroup, _hkl_lookup, symmetry_groups
from .threads import kernel_threads
from .trust import (
    CHI2_MAX,
    R_MAX_NOISE_FREE,
    R_NOISE_FACTOR,
    FitWarning,
    check_thresholds,
    fit_quality_warnings,
    untrustworthy,
)

__all__ = [
    "RefinementResult",
    "Weights",
    "WEIGHTS",
    "intensity_jacobian",
    "refine",
    "thickness_scan",
]

logger = logging.getLogger(__name__)

Weights = Literal["auto", "poisson", "none"]
WEIGHTS: tuple[str, ...] = get_args(Weights)
ScanMetric = Literal["r_factor", "chi2"]
SCAN_METRICS: tuple[str, ...] = get_args(ScanMetric)

#: Refinement keeps the thickness at or above this [nm] (a step below is clipped).
MIN_THICKNESS_NM = 0.1
#: An origin shift is a null direction of the constrained problem when the parametrization
#: reproduces it to this relative accuracy.
GAUGE_RTOL = 1e-8
#: Poisson variances: σ² = max(I, floor/dose)/dose, floor 1 count for the data-based first pass and
#: this for the model-based passes (the maximum-likelihood fit needs σ² = I_model/dose).
MODEL_VARIANCE_FLOOR = 1e-3
#: A Poisson re-weighting pass that raises R by more than this factor is undone.
POISSON_REVERT_FACTOR = 1.05
#: Eigenvalues of JᵀWJ (outside the origin null space) below this fraction of the largest count
#: as undetermined: their variance is reported as infinite.
UNDETERMINED_RCOND = 1e-13


# ---------------------------------------------------------------------------------- inputs
def _geometry_mismatch(attrs: dict, geometry: Geometry) -> list[str]:
    problems = []
    for key, want in (("n_beams", geometry.n_beams), ("n_tilts", geometry.n_tilts),
                      ("voltage_kv", geometry.voltage_kv),
                      ("tilt_range_mrad", geometry.tilt_range_mrad)):
        if key in attrs:
            try:
                have = float(attrs[key])
            except (TypeError, ValueError):
                continue
            if not np.isclose(have, want, rtol=1e-9):
                problems.append(f"{key}={have:g} (geometry: {want:g})")
    if "zone_axis" in attrs:
        za = tuple(int(v) for v in np.atleast_1d(attrs["zone_axis"]))
        if za != tuple(geometry.zone_axis):
            problems.append(f"zone_axis={list(za)} (geometry: {list(geometry.zone_axis)})")
    return problems


#: Per-tilt sums of normalised intensities may exceed 1 by noise: by at most this many standard
#: deviations √(1/D) of the sum when the dose D is known …
SUM_NOISE_SIGMAS = 6.0
#: … and, with no dose known, the median per-tilt sum by at most this and the largest by this.
SUM_MEDIAN_SLACK = 0.05
SUM_MAX_SLACK = 0.5
#: A pattern whose diffracted beams (all but 000) hold less than this fraction of the intensity
#: determines nothing (thickness 0, or no crystal in the beam).
MIN_DIFFRACTED_FRACTION = 1e-9

_NORMALISE_HINT = (
    "intensities must be fractions of the incident beam (per-tilt sums ≤ 1; absorption, missing "
    "beams or background subtraction make them smaller). Give counts=True (read_csv, load_pattern; "
    "CLI --counts) to normalise each tilt by its total and keep the counts as the dose, or divide "
    "each tilt by its incident dose yourself"
)


def check_normalisation(arr: np.ndarray, dose=None, what: str = "pattern") -> None:
    """Raise ValueError when intensities look like raw counts or are not normalised.

    Integer-valued data above 1, or per-tilt sums clearly above 1 (beyond the Poisson noise of the
    sum when ``dose`` is known, else a median above 1.05 or a tilt above 1.5), are rejected.
    """
    finite = arr[np.isfinite(arr)]
    if finite.size and finite.max() > 1 and np.all(finite == np.round(finite)):
        raise ValueError(f"{what} holds integer values up to {finite.max():.0f}: these look like raw "
                         f"counts; {_NORMALISE_HINT}")
    sums = np.nansum(arr, axis=1)
    if dose is not None:
        limit = 1.0 + SUM_NOISE_SIGMAS * np.sqrt(1.0 / np.asarray(dose, float)) + 1e-9
        bad = sums > limit
        if np.any(bad):
            i = int(np.argmax(sums - limit))
            raise ValueError(f"{what}: the intensities of tilt {i} sum to {sums[i]:.6g}, beyond 1 plus "
                             f"the Poisson noise of the dose; {_NORMALISE_HINT}")
        return
    med, top = float(np.median(sums)), float(np.max(sums))
    if med > 1.0 + SUM_MEDIAN_SLACK or top > 1.0 + SUM_MAX_SLACK:
        raise ValueError(f"{what}: per-tilt sums of the intensities are up to {top:.6g} (median "
                         f"{med:.6g}); {_NORMALISE_HINT}")


def check_diffracted(arr: np.ndarray) -> None:
    """Raise ValueError when the diffracted beams carry (next to) no intensity."""
    total = float(np.nansum(arr))
    diffracted = float(np.nansum(arr[:, 1:]))
    if diffracted <= MIN_DIFFRACTED_FRACTION * total:
        raise ValueError(
            f"the pattern has no diffracted intensity (beams other than 000 hold "
            f"{diffracted / max(total, 1e-300):.3g} of it): a crystal of thickness 0, or no crystal, "
            "determines neither U_g nor the thickness"
        )


def check_pattern(pattern, geometry: Geometry, dose=None) -> np.ndarray:
    """Intensities (n_tilts, n_beams) of ``pattern`` after checking them against ``geometry``.

    ``pattern`` is a Dataset with ``intensity``, a DataArray over (``tilt``, ``beam``) or an array of
    shape (n_tilts, n_beams). Raises ValueError when shape, beams (h, k, l), tilts or recorded
    geometry attributes disagree with ``geometry``, when intensities are NaN, infinite or < 0, or
    when they are not fractions of the incident beam (:func:`check_normalisation`; ``dose`` [electrons
    per tilt], default the pattern's, sets the noise allowed on per-tilt sums).
    """
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a larbed.Geometry, got {type(geometry).__name__}")
    attrs: dict = {}
    source = pattern
    if isinstance(pattern, xr.Dataset):
        if "intensity" not in pattern:
            raise ValueError("pattern Dataset has no 'intensity' variable")
        attrs = dict(pattern.attrs)
        pattern = pattern["intensity"]
    if isinstance(pattern, xr.DataArray):
        attrs = {**attrs, **pattern.attrs}
        if set(pattern.dims) != {"tilt", "beam"}:
            raise ValueError(
                f"pattern must have dims ('tilt', 'beam'), got {pattern.dims}; select one thickness"
            )
        da = pattern.transpose("tilt", "beam")
        if all(c in da.coords for c in ("h", "k", "l")) and da.sizes["beam"] == geometry.n_beams:
            hkl = np.stack([da.h.values, da.k.values, da.l.values], axis=1)
            if not np.array_equal(hkl, geometry.hkl):
                raise ValueError("pattern beams (h, k, l) differ from the geometry's beams")
        if ("tilt_x" in da.coords and "tilt_y" in da.coords
                and da.sizes["tilt"] == geometry.n_tilts):
            tilts = np.stack([da.tilt_x.values, da.tilt_y.values], axis=1)
            if not np.allclose(tilts, geometry.tilt_mrad, atol=1e-6):
                raise ValueError("pattern tilts (tilt_x, tilt_y) differ from the geometry's tilts")
        arr = np.asarray(da.values)
    else:
        arr = np.asarray(pattern)
    problems = _geometry_mismatch(attrs, geometry)
    if problems:
        raise ValueError("pattern and geometry disagree: " + ", ".join(problems))
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"pattern intensities must be real numbers, got dtype {arr.dtype}")
    want = (geometry.n_tilts, geometry.n_beams)
    if arr.shape != want:
        raise ValueError(f"pattern has shape {arr.shape}; the geometry needs (n_tilts, n_beams) = {want}")
    arr = arr.astype(float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"pattern has {int(np.sum(~np.isfinite(arr)))} NaN or infinite intensities")
    if np.any(arr < 0):
        raise ValueError(
            f"pattern has {int(np.sum(arr < 0))} negative intensities (min {arr.min():.3g}); "
            "intensities must be >= 0"
        )
    if arr.sum() <= 0:
        raise ValueError("pattern intensities sum to zero")
    check_normalisation(arr, pattern_dose(source, dose, geometry.n_tilts))
    return arr


def pattern_dose(pattern, dose=None, n_tilts: int | None = None):
    """Electrons per tilt: ``dose`` if given, else the pattern's ``dose`` variable (one value per
    tilt, as :func:`larbed.read_csv` with ``counts=True`` records it) or numeric
    ``attrs['dose']``; None when no dose is known. A float or an (n_tilts,) array."""
    if dose is None and isinstance(pattern, xr.Dataset) and "dose" in pattern.data_vars:
        dose = pattern["dose"].values
    if dose is None and isinstance(pattern, (xr.Dataset, xr.DataArray)):
        dose = pattern.attrs.get("dose")
        if isinstance(dose, str):
            dose = None
    if dose is None:
        return None
    return check_dose(dose, n_tilts)


# ---------------------------------------------------------------------------------- model
class _Model:
    """Forward model and Jacobian on the full vector x = [Re U (P), Im U (P), t [nm], (κ)].

    Callers must hold :func:`larbed.threads.kernel_threads` (the kernels run BLAS inside
    parallel loops).
    """

    def __init__(self, geometry: Geometry, u0: float, absorbing: bool, kappa_column: bool):
        self.geometry = geometry
        self.p = geometry.n_reflections
        self.u0 = float(u0)
        self.absorbing = absorbing
        self.kappa_column = kappa_column
        self.n_x = 2 * self.p + 1 + int(absorbing)
        self.pair_index = np.ascontiguousarray(geometry.pair_index, dtype=np.int64)
        self.pair_sign = np.ascontiguousarray(geometry.pair_sign, dtype=np.int64)
        self.inv2k = 1.0 / (2.0 * geometry.k0)

    def unpack(self, x):
        p = self.p
        ug = x[:p] + 1j * x[p:2 * p]
        kappa = float(x[2 * p + 1]) if self.absorbing else None
        return ug, float(x[2 * p]), kappa

    def _matrices(self, ug, kappa, force_general: bool):
        off, dg, path = prepare_matrices(self.geometry, ug, kappa if kappa else None, self.u0)
        if force_general and path != "general":
            off, dg, path = off.astype(complex), dg.astype(complex), "general"
        return off, dg, path

    def intensities(self, x, thickness_nm=None, rows: slice | None = None) -> np.ndarray:
        """Intensities (M, N) at the thickness of ``x``, or (n_t, M, N) at ``thickness_nm``, of
        the tilts ``rows`` (default all)."""
        ug, t, kappa = self.unpack(x)
        thick = np.atleast_1d(np.asarray(t if thickness_nm is None else thickness_nm, float)) * 10.0
        off, dg, path = self._matrices(ug, kappa, False)
        if rows is not None:
            dg = np.ascontiguousarray(dg[rows])
        kernel = {"real": bloch.intensities_real, "hermitian": bloch.intensities_hermitian,
                  "general": bloch.intensities_general}[path]
        out = np.empty((thick.size,) + dg.shape)
        kernel(off, dg, thick, out)  # callers hold kernel_threads()
        return out[0] if thickness_nm is None else out

    def jacobian(self, x, rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Intensities (M, N) and dI/dx (M, N, n_x) of the tilts ``rows`` (default all);
        thickness column per nm."""
        ug, t, kappa = self.unpack(x)
        off, dg, path = self._matrices(ug, kappa, self.kappa_column)
        if rows is not None:
            dg = np.ascontiguousarray(dg[rows])
        n_cols = 2 * self.p + 1 + int(self.kappa_column)
        m, n = dg.shape
        out_i = np.empty((m, n))
        out_j = np.empty((m, n, n_cols))
        kernel = {"real": gradients.jacobian_real, "hermitian": gradients.jacobian_hermitian,
                  "general": gradients.jacobian_general}[path]
        fac = (1.0 + 1j * (kappa or 0.0)) * self.inv2k
        kernel(off, dg, 10.0 * t, self.pair_index, self.pair_sign, self.p, fac,
               1j * self.inv2k, np.ascontiguousarray(ug.real), np.ascontiguousarray(ug.imag),
               self.u0 * self.inv2k, out_i, out_j)
        out_j[:, :, 2 * self.p] *= 10.0  # per Å → per nm
        if self.absorbing and not self.kappa_column:
            out_j = np.concatenate([out_j, np.zeros((m, n, 1))], axis=2)
        return out_i, out_j


def intensity_jacobian(geometry: Geometry, ug, thickness_nm: float, *,
                       absorption: float | None = None) -> xr.Dataset:
    """Exact derivatives of the pattern with respect to U_g, thickness and absorption.

    Parameters
    ----------
    geometry : Geometry
    ug : xarray.DataArray or array_like
        Structure factors [1/Å²], one per Friedel pair.
    thickness_nm : float
        Thickness [nm].
    absorption : float, optional
        Proportional absorption κ; when given, ``d_absorption`` is included.

    Returns
    -------
    xarray.Dataset
        ``intensity`` (tilt, beam); ``d_real`` and ``d_imag`` (tilt, beam, reflection) = ∂I/∂Re U_g
        and ∂I/∂Im U_g [Å²]; ``d_thickness`` (tilt, beam) [1/nm]; ``d_absorption`` (tilt, beam).

    Examples
    --------
    >>> from larbed import Crystal, Geometry, compute_ug
    >>> xtal = Crystal.builtin("SrTiO3")
    >>> geo = Geometry(xtal, 120, (0, 0, 1), 5, 5, 50)
    >>> jac = intensity_jacobian(geo, compute_ug(xtal, geo), 20.0)
    >>> jac.d_real.dims, float(abs(jac.d_real.sum("beam")).max()) < 1e-12  # Σ I = 1 for any U_g
    (('tilt', 'beam', 'reflection'), True)
    """
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a larbed.Geometry, got {type(geometry).__name__}")
    ug_da = check_ug(geometry, ug)
    t = float(_check_start_thickness(thickness_nm))
    absorbing = absorption is not None
    if absorbing and (not np.isfinite(absorption) or absorption < 0):
        raise ValueError(f"absorption κ must be finite and >= 0, got {absorption}")
    from .resources import check_memory, estimate_jacobian

    check_memory(estimate_jacobian(geometry), "intensity_jacobian",
                 "refine() sums the normal equations over tilt chunks and needs far less; or "
                 "use a geometry with fewer tilts")
    model = _Model(geometry, float(ug_da.attrs.get("u0", 0.0)), absorbing, absorbing)
    vals = ug_da.values
    x = np.concatenate([vals.real, vals.imag, [t], [absorption] if absorbing else []])
    with kernel_threads():
        inten, jac = model.jacobian(x)
    p = geometry.n_reflections
    from .simulation import pattern_coords

    ds = xr.Dataset(coords=pattern_coords(geometry))
    ds = ds.assign_coords(reflection=np.arange(p), reflection_h=("reflection", geometry.reflection_hkl[:, 0]),
                          reflection_k=("reflection", geometry.reflection_hkl[:, 1]),
                          reflection_l=("reflection", geometry.reflection_hkl[:, 2]))
    ds["intensity"] = (("tilt", "beam"), inten, {"units": "1"})
    ds["d_real"] = (("tilt", "beam", "reflection"), jac[:, :, :p], {"units": "Å^2"})
    ds["d_imag"] = (("tilt", "beam", "reflection"), jac[:, :, p:2 * p], {"units": "Å^2"})
    ds["d_thickness"] = (("tilt", "beam"), jac[:, :, 2 * p], {"units": "1/nm"})
    if absorbing:
        ds["d_absorption"] = (("tilt", "beam"), jac[:, :, 2 * p + 1], {"units": "1"})
    ds.attrs.update({"thickness_nm": t, "absorption": "none" if not absorbing else absorption})
    return ds


def _check_start_thickness(thickness_nm) -> float:
    if np.ndim(thickness_nm) != 0:
        raise ValueError(f"thickness must be a single number [nm], got shape {np.shape(thickness_nm)}")
    t = check_thickness(thickness_nm, "thickness_nm")[0]
    if t <= 0:
        raise ValueError(f"thickness must be > 0 nm, got {t}")
    return float(t)


# ---------------------------------------------------------------------------------- thickness scan
def thickness_scan(pattern, geometry: Geometry, ug, thicknesses_nm=None, *,
                   absorption: float | None = None, metric: ScanMetric = "r_factor",
                   dose: float | None = None) -> xr.DataArray:
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
    exp = check_pattern(pattern, geometry, dose)
    ug_da = check_ug(geometry, ug)
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
    for rows, sim in _simulated_chunks(geometry, ug_da, thick, absorption):
        diff = sim - exp[None, rows]
        if inv_var is None:
            values += np.abs(diff).sum(axis=(1, 2))
        else:
            values += (diff**2 * inv_var[None, rows]).sum(axis=(1, 2))
    values /= exp.sum() if inv_var is None else exp.size
    units = "1"
    best = int(np.argmin(values))
    return xr.DataArray(
        values, dims=("thickness",),
        coords={"thickness": ("thickness", thick, {"units": "nm"})},
        name=metric,
        attrs={"units": units, "metric": metric, "best_thickness_nm": float(thick[best]),
               "best_value": float(values[best])},
    )


#: A thickness scan simulates at most this many bytes at once (tilt chunks beyond it).
SCAN_CHUNK_BYTES = 512 * 2**20


def _simulated_chunks(geometry: Geometry, ug_da: xr.DataArray, thick: np.ndarray, absorption):
    """(tilt slice, intensities (thickness, tilts, beams)) over the pattern: all at once through
    :func:`larbed.simulate` (with its symmetry shortcut) when that fits :data:`SCAN_CHUNK_BYTES`,
    else tilt chunk by chunk (memory bounded at any number of tilts and thicknesses)."""
    per_tilt = 8 * len(thick) * geometry.n_beams
    if per_tilt * geometry.n_tilts <= SCAN_CHUNK_BYTES:
        yield slice(None), simulate(geometry, ug_da, thick, absorption=absorption).intensity.values
        return
    model = _Model(geometry, float(ug_da.attrs.get("u0", 0.0)), absorption is not None, False)
    vals = ug_da.values
    x = np.concatenate([vals.real, vals.imag, [1.0], [absorption] if absorption is not None else []])
    step = max(1, SCAN_CHUNK_BYTES // per_tilt)
    with kernel_threads():
        for lo in range(0, geometry.n_tilts, step):
            rows = slice(lo, min(lo + step, geometry.n_tilts))
            yield rows, model.intensities(x, thick, rows=rows)


# ---------------------------------------------------------------------------------- parameters
@dataclass
class _Map:
    """x = base + T q: the free parameters q and their place in the full vector x."""

    base: np.ndarray
    t: np.ndarray
    labels: list[str]

    def x(self, q):
        return self.base + self.t @ q

    def q(self, x):
        # columns have disjoint supports with entries ±1: the projection is a signed mean
        norm = np.sum(self.t**2, axis=0)
        return (self.t.T @ (x - self.base)) / norm


def _build_map(geometry: Geometry, x0: np.ndarray, *, groups: list[SymmetryGroup], real: bool, refine_thickness: bool,
               absorbing: bool, refine_absorption: bool, free_reflections=None) -> _Map:
    p = geometry.n_reflections
    n_x = len(x0)
    cols: list[np.ndarray] = []
    labels: list[str] = []
    names = geometry.reflection_labels()
    free = np.ones(p, bool) if free_reflections is None else np.asarray(free_reflections, bool)
    covered = np.zeros(n_x, bool)
    for group in groups:
        is_real = real or group.real
        members = group.members
        if not any(free[q] for q, _ in members):
            continue
        col = np.zeros(n_x)
        for q, _ in members:
            col[q] = 1.0
        cols.append(col)
        labels.append(f"Re U({names[members[0][0]]})")
        for q, _ in members:
            covered[q] = True
            covered[p + q] = is_real  # a real group pins Im U to 0
        if not is_real:
            col = np.zeros(n_x)
            for q, s in members:
                col[p + q] = float(s)
                covered[p + q] = True
            cols.append(col)
            labels.append(f"Im U({names[members[0][0]]})")
    for flag, idx, label in ((refine_thickness, 2 * p, "t"),
                             (absorbing and refine_absorption, 2 * p + 1, "kappa")):
        if flag:
            col = np.zeros(n_x)
            col[idx] = 1.0
            cols.append(col)
            labels.append(label)
            covered[idx] = True
    t = np.stack(cols, axis=1) if cols else np.zeros((n_x, 0))
    base = np.where(covered, 0.0, x0)
    return _Map(base, t, labels)


def _gauge_basis(pmap: _Map, geometry: Geometry, x: np.ndarray) -> np.ndarray:
    """Orthonormal (Q, k) basis of the origin-shift directions that the parametrization allows."""
    p = geometry.n_reflections
    ure, uim = x[:p], x[p:2 * p]
    vecs = []
    for axis in range(2):
        g = 2 * np.pi * geometry.reflection_xy[:, axis]
        n = np.zeros(len(x))
        n[:p], n[p:2 * p] = -g * uim, g * ure  # d/dr0 of U exp(2πi g·r0) at r0 = 0
        if not np.any(n):
            continue
        q, *_ = np.linalg.lstsq(pmap.t, n, rcond=None)
        if np.linalg.norm(pmap.t @ q - n) <= GAUGE_RTOL * np.linalg.norm(n):
            vecs.append(q)
    if not vecs:
        return np.zeros((pmap.t.shape[1], 0))
    basis, sv, _ = np.linalg.svd(np.stack(vecs, axis=1), full_matrices=False)
    return basis[:, sv > 1e-12 * sv[0]]


# ---------------------------------------------------------------------------------- solver
#: Memory for one tilt chunk of the Jacobian in :meth:`_Problem.normal_equations` [bytes]: the
#: normal equations JᵀWJ and JᵀWr are summed over chunks, so memory stays bounded at any size.
JACOBIAN_CHUNK_BYTES = 256 * 2**20


class _Problem:
    """Weighted residuals r = √w (I_sim − I_exp) and their normal equations in the free parameters q.

    Data points that are NaN (not measured) have weight 0 and count nowhere.
    """

    def __init__(self, model: _Model, pmap: _Map, data: np.ndarray, weights: np.ndarray,
                 prior: tuple[np.ndarray, np.ndarray] | None = None):
        self.model, self.pmap = model, pmap
        self.data = data
        self.set_weights(weights)
        self._t_dense = np.ascontiguousarray(pmap.t)
        n_tilts, n_beams = data.shape
        per_tilt = 8 * n_beams * (model.n_x + 2 * pmap.t.shape[1] + 4)
        self.chunk = int(max(1, min(n_tilts, JACOBIAN_CHUNK_BYTES // per_tilt)))
        # Gaussian prior on x (Re U_g, Im U_g): residual rows (x_i − centre_i)/σ_i for finite σ_i
        self.prior_idx = np.zeros(0, int)
        if prior is not None:
            centre, sigma = prior
            self.prior_idx = np.flatnonzero(np.isfinite(sigma) & np.any(pmap.t != 0, axis=1)[:len(sigma)])
            self.prior_centre = np.asarray(centre, float)[self.prior_idx]
            self.prior_inv = 1.0 / np.asarray(sigma, float)[self.prior_idx]
            self._t_prior = np.asarray(pmap.t[self.prior_idx]) * self.prior_inv[:, None]

    def set_weights(self, weights: np.ndarray) -> None:
        self.sw = np.sqrt(np.asarray(weights, float)).ravel()

    def _prior_rows(self, q):
        return (self.pmap.x(q)[self.prior_idx] - self.prior_centre) * self.prior_inv

    def _weighted(self, inten: np.ndarray) -> np.ndarray:
        return self.sw * np.nan_to_num(inten - self.data).ravel()

    def residual(self, q):
        inten = self.model.intensities(self.pmap.x(q))
        r = self._weighted(inten)
        if self.prior_idx.size:
            r = np.concatenate([r, self._prior_rows(q)])
        return r, inten

    def normal_equations(self, q):
        """(r, I_sim, JᵀJ, Jᵀr) of the weighted problem, the Jacobian built tilt chunk by chunk."""
        x = self.pmap.x(q)
        n_tilts, n_beams = self.data.shape
        n_q = self.pmap.t.shape[1]
        hess = np.zeros((n_q, n_q))
        grad = np.zeros(n_q)
        inten = np.empty((n_tilts, n_beams))
        for lo in range(0, n_tilts, self.chunk):
            hi = min(lo + self.chunk, n_tilts)
            part, jac = self.model.jacobian(x, slice(lo, hi))
            inten[lo:hi] = part
            sw = self.sw[lo * n_beams:hi * n_beams]
            jq = jac.reshape(-1, jac.shape[2]) @ self._t_dense
            jq *= sw[:, None]
            hess += jq.T @ jq
            grad += jq.T @ (sw * np.nan_to_num(part - self.data[lo:hi]).ravel())
        r = self._weighted(inten)
        if self.prior_idx.size:
            rows = self._prior_rows(q)
            r = np.concatenate([r, rows])
            hess += self._t_prior.T @ self._t_prior
            grad += self._t_prior.T @ rows
        return r, inten, hess, grad

    def clip(self, q):
        """Keep the thickness above :data:`MIN_THICKNESS_NM` (and κ >= 0)."""
        x = self.pmap.x(q)
        p = self.model.p
        low = x.copy()
        low[2 * p] = max(x[2 * p], MIN_THICKNESS_NM)
        if self.model.absorbing:
            low[2 * p + 1] = max(x[2 * p + 1], 0.0)
        if np.array_equal(low, x):
            return q
        return q + self.pmap.q(low) - self.pmap.q(x)


@dataclass
class _LMState:
    q: np.ndarray
    mu: float | None = None
    history: list = field(default_factory=list)
    iterations: int = 0
    converged: bool = False
    message: str = ""


def _r(data, inten) -> float:
    ok = np.isfinite(data)
    return float(np.abs(inten[ok] - data[ok]).sum() / data[ok].sum())


def _null_directions(hess: np.ndarray, gauge: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning the directions JᵀJ does not determine, outside the gauge.

    An eigenvalue of JᵀWJ below :data:`UNDETERMINED_RCOND` of the largest (on the complement of
    the origin-shift null space) is a combination of parameters the data do not see.
    """
    nq = hess.shape[0]
    v = scipy.linalg.null_space(gauge.T) if gauge.shape[1] else np.eye(nq)
    if v.shape[1] == 0:
        return np.zeros((nq, 0))
    w, e = np.linalg.eigh(v.T @ hess @ v)
    bad = w <= UNDETERMINED_RCOND * max(float(w.max(initial=0.0)), 1e-300)
    return v @ e[:, bad]


def _levenberg_marquardt(prob: _Problem, state: _LMState, *, max_iter: int, ftol: float, xtol: float,
                         stage: int, bar=None, on_iteration=None,
                         pinned: np.ndarray | None = None) -> _LMState:
    """Levenberg–Marquardt with Marquardt scaling and Nielsen's damping update.

    Steps are kept out of the origin-shift null space (see :func:`_gauge_basis`) and out of the
    span of ``pinned`` (orthonormal columns; directions held where they are).
    """
    r, inten, hess, grad = prob.normal_equations(state.q)
    cost = 0.5 * float(r @ r)
    nu = 2.0
    small_steps = 0
    geometry = prob.model.geometry
    for _ in range(max_iter):
        diag = np.maximum(np.diag(hess).copy(), 1e-12 * max(np.max(np.diag(hess)), 1e-300))
        gauge = _gauge_basis(prob.pmap, geometry, prob.pmap.x(state.q))
        if pinned is not None and pinned.shape[1]:
            gauge, *_ = np.linalg.svd(np.hstack([gauge, pinned]), full_matrices=False)
        pin = np.max(diag) * (gauge @ gauge.T) if gauge.shape[1] else 0.0
        if state.mu is None:
            state.mu = 1e-3
        accepted = False
        while not accepted:
            try:
                factor = scipy.linalg.cho_factor(hess + state.mu * np.diag(diag) + pin)
                step = -scipy.linalg.cho_solve(factor, grad)
            except (np.linalg.LinAlgError, ValueError):
                state.mu *= nu
                nu *= 2.0
                if state.mu > 1e20:
                    break
                continue
            if gauge.shape[1]:
                step -= gauge @ (gauge.T @ step)
            q_new = prob.clip(state.q + step)
            step = q_new - state.q
            r_new, inten_new = prob.residual(q_new)
            cost_new = 0.5 * float(r_new @ r_new)
            predicted = -float(step @ grad) - 0.5 * float(step @ hess @ step)
            rho = (cost - cost_new) / predicted if predicted > 0 else -1.0
            if rho > 0 and cost_new < cost:
                accepted = True
                state.mu *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
                nu = 2.0
            else:
                state.mu *= nu
                nu *= 2.0
                if state.mu > 1e20:
                    break
        if not accepted:
            state.converged = True
            state.message = "no further decrease (damping limit reached)"
            break
        reduction = (cost - cost_new) / max(cost, 1e-300)
        scaled_step = np.sqrt(np.sum(diag * step**2))
        scaled_q = np.sqrt(np.sum(diag * state.q**2))
        state.q = q_new
        state.iterations += 1
        r, inten, hess, grad = prob.normal_equations(state.q)
        cost = 0.5 * float(r @ r)
        x = prob.pmap.x(state.q)
        state.history.append((state.iterations, stage, 2.0 * cost, _r(prob.data, inten),
                              float(x[2 * prob.model.p]), float(state.mu)))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(R=f"{state.history[-1][3]:.2e}", t=f"{x[2 * prob.model.p]:.2f}")
        if on_iteration is not None:
            on_iteration(state)
        small_steps = small_steps + 1 if (reduction < ftol or scaled_step < xtol * (scaled_q + xtol)) else 0
        if small_steps >= 2 or cost <= 1e-300:
            state.converged = True
            state.message = "converged (relative decrease of χ² or step below tolerance)"
            break
    else:
        state.message = f"stopped after max_iter={max_iter} iterations"
    state.hess, state.inten, state.r = hess, inten, r  # type: ignore[attr-defined]
    return state


def _covariance(hess: np.ndarray, gauge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(JᵀJ)⁻¹ on the complement of the origin null space; undetermined directions → inf.

    Returns the covariance and the (n_q, k) undetermined directions (:func:`_null_directions`).
    """
    nq = hess.shape[0]
    v = scipy.linalg.null_space(gauge.T) if gauge.shape[1] else np.eye(nq)
    w, e = np.linalg.eigh(v.T @ hess @ v)
    keep = w > UNDETERMINED_RCOND * max(w.max(initial=0.0), 1e-300)
    ev = v @ e
    cov = (ev[:, keep] / w[keep]) @ ev[:, keep].T
    null = ev[:, ~keep]
    if null.shape[1]:
        loose = np.any(np.abs(null) > 1e-3, axis=1)
        cov[loose, :] = np.inf
        cov[:, loose] = np.inf
    return cov, null


def _describe_null(null: np.ndarray, labels: list[str], max_terms: int = 4) -> list[str]:
    """Each undetermined direction as a readable combination of parameter labels."""
    out = []
    for vec in null.T:
        order = np.argsort(-np.abs(vec))
        big = [i for i in order[:max_terms] if abs(vec[i]) > 0.2 * abs(vec[order[0]])]
        terms = " ".join(f"{'+' if vec[i] * vec[big[0]] > 0 else '−'} {labels[i]}" for i in big)
        out.append(terms.lstrip("+ ") + (" …" if np.sum(np.abs(vec) > 1e-3) > len(big) else ""))
    return out


# ---------------------------------------------------------------------------------- result
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

    @property
    def trustworthy(self) -> bool:
        """False when a warning of kind 'bound', 'chi2' or 'r_factor' was raised (see
        :mod:`larbed.trust`)."""
        return not untrustworthy(self.warnings)

    def to_dataset(self) -> xr.Dataset:
        """Everything in one Dataset (fit, U_g with errors, covariance, history) for saving;
        :meth:`from_dataset` reads it back."""
        from .simulation import attach_ug

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
            "warnings": [[getattr(w, "kind", "r_factor"), str(w)] for w in self.warnings],
        })
        return ds

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, geometry: Geometry | None = None) -> RefinementResult:
        """Rebuild a result from :meth:`to_dataset` (e.g. a saved file); bit-for-bit the same."""
        from .simulation import extract_ug

        if geometry is None:
            geometry = Geometry.from_attrs(ds.attrs)
        try:
            ug = extract_ug(ds, "ug")
            ug.attrs.update({"source": "refined"})
            err = ug.copy(data=ds["ug_error_real"].values + 1j * ds["ug_error_imag"].values)
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
            warnings = [FitWarning(k, m) for k, m in a.get("warnings", [])]
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
                   geometry=geometry, warnings=warnings)


def _reflection_mask(geometry: Geometry, spec) -> np.ndarray | None:
    if spec is None:
        return None
    arr = np.asarray(spec) if not isinstance(spec, (list, tuple)) else None
    if arr is not None and arr.dtype == bool:
        if arr.shape != (geometry.n_reflections,):
            raise ValueError(f"refine_reflections mask must have shape ({geometry.n_reflections},)")
        return arr
    mask = np.zeros(geometry.n_reflections, bool)
    for key in spec:
        mask[_hkl_lookup(geometry, key)[0]] = True
    return mask


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


def _save_checkpoint(path, fp: str, x, history, stage, x_weights, finished_with=None) -> None:
    """``finished_with``: the iteration limits of a finished refinement (None while it runs)."""
    write_json(path, {"fingerprint": fp, "x": np.asarray(x).tolist(), "history": history,
                      "stage": stage, "finished": finished_with is not None, "limits": finished_with,
                      "x_weights": None if x_weights is None else np.asarray(x_weights).tolist()})


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
    weights : {'auto', 'poisson', 'none'}
        ``'poisson'``: w = 1/σ² with σ² = I/dose (data-based in the first pass, then the fitted
        intensities, iterated — the Poisson maximum-likelihood fit); ``'none'``: w = 1;
        ``'auto'``: Poisson when a dose is known.
    dose : float, optional
        Electrons per tilt (default ``pattern.attrs['dose']``).
    symmetry : None, 'auto', 'pattern', 'crystal' or sequence
        Tie symmetry-equivalent U_g (see :func:`larbed.symmetry.symmetry_groups`: ``'auto'`` detects
        the pattern's point group, ``'crystal'`` uses the geometry's atoms, or give operation names
        or groups of (h, k, l)). The constraints hold with the origin on the symmetry elements; the
        start is projected onto them (group means) as it is, so give a start in that origin
        (e.g. :func:`larbed.symmetry.align_to_groups`).
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
        posteriori fit, with ``weights='none'`` σ counts in units of U per unit intensity residual.
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
        JSON file written after every iteration; an existing one restarts from its parameters.

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
    exp = check_pattern(pattern, geometry, dose)
    check_diffracted(exp)
    ug_da = check_ug(geometry, ug0)
    t0 = _check_start_thickness(thickness_nm0)
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; choose one of {WEIGHTS}")
    d = pattern_dose(pattern, dose, geometry.n_tilts)
    if weights == "auto":
        weights = "poisson" if d is not None else "none"
    if weights == "poisson" and d is None:
        raise ValueError("weights='poisson' needs a dose (argument or pattern.attrs['dose'])")
    check_thresholds(chi2_max, r_noise_factor, r_max)
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
    if symmetry is None:
        groups = [SymmetryGroup(((i, 1),), False) for i in range(p)]
    else:
        groups = symmetry_groups(geometry, symmetry, intensity=exp, dose=d)
    free = _reflection_mask(geometry, refine_reflections)
    x0 = np.concatenate([vals.real, vals.imag, [t0], [absorption] if absorbing else []])
    pmap = _build_map(geometry, x0, groups=groups, real=real, refine_thickness=refine_thickness,
                      absorbing=absorbing, refine_absorption=refine_absorption, free_reflections=free)
    n_q = pmap.t.shape[1]
    if n_q == 0:
        raise ValueError("nothing to refine: no free U_g, thickness or absorption")
    n_data = int(np.isfinite(exp).sum())
    if n_q >= n_data:
        raise ValueError(f"{n_q} free parameters but only {n_data} measured intensities: the pattern "
                         "cannot determine them (tie U_g by symmetry, fix some, or record more tilts)")
    prior_x = None
    if prior is not None:
        if not isinstance(prior, (tuple, list)) or len(prior) != 2:
            raise TypeError("prior must be a (centre, sigma) pair")
        centre = np.broadcast_to(np.asarray(prior[0], complex), (p,))
        sigma = np.broadcast_to(np.asarray(prior[1], float), (p,))
        if not np.all(np.isfinite(centre)) or np.any(np.isnan(sigma)) or np.any(sigma <= 0):
            raise ValueError("prior: centre must be finite and sigma positive (inf for no prior)")
        prior_x = (np.concatenate([centre.real, centre.imag]), np.concatenate([sigma, sigma]))
    model = _Model(geometry, float(ug_da.attrs.get("u0", 0.0)), absorbing, refine_absorption)
    q = pmap.q(x0)
    if symmetry is not None:
        moved = np.max(np.abs(pmap.x(q) - x0)[:2 * p])
        logger.info("symmetry constraint moved the start by up to %.3g 1/Å²", moved)
    settings = {"weights": weights, "symmetry": [g.members for g in groups], "real": real,
                "refine_thickness": refine_thickness, "refine_absorption": refine_absorption,
                "free": None if free is None else free.tolist(), "prior": None if prior_x is None else
                [prior_x[0].tolist(), np.where(np.isfinite(prior_x[1]), prior_x[1], -1).tolist()]}
    fp = _fingerprint(exp, d, x0, geometry.to_attrs(), settings)
    limits_used = [int(max_iter), float(ftol), int(poisson_passes)]  # a rerun with others continues

    history: list = []
    stage0 = 0
    x_weights = None  # the parameters whose fitted intensities set the current Poisson weights
    finished = False
    saved = _load_checkpoint(checkpoint, len(x0), fp)
    if saved is not None:
        q = pmap.q(np.asarray(saved["x"], float))
        history = [tuple(h) for h in saved["history"]]
        stage0 = int(saved.get("stage", 0))
        finished = bool(saved.get("finished", False)) and saved.get("limits") == limits_used
        x_weights = None if saved.get("x_weights") is None else np.asarray(saved["x_weights"], float)
        logger.info("%s refinement from %s (%d iterations done)",
                    "reusing the finished" if finished else "resuming", checkpoint, len(history))

    def weights_for(x_w):
        if weights == "none":
            return np.ones_like(exp)
        dc = dose_column(d)
        if x_w is None:  # first pass: data-based variances with a floor of one count
            return dc / np.maximum(exp, 1.0 / dc)
        return dc / np.maximum(model.intensities(x_w), MODEL_VARIANCE_FLOOR / dc)

    n_stages = 1 + (poisson_passes if weights == "poisson" else 0)
    from tqdm.auto import tqdm

    with kernel_threads():  # tilts in parallel, one BLAS thread each
        prob = _Problem(model, pmap, exp, weights_for(x_weights), prior_x)
        state = _LMState(q=q, history=history, iterations=len(history))
        _log_cost(geometry, n_q, prob.chunk)
        bar = tqdm(total=max_iter * n_stages, desc="refine", unit="it",
                   disable=not progress or finished, leave=False)
        stage = stage0
        q_start = pmap.q(x0)

        def save(st, done=False):
            if checkpoint is not None:
                _save_checkpoint(checkpoint, fp, pmap.x(st.q), st.history, stage, x_weights,
                                 limits_used if done else None)

        try:
            if finished:
                state.r, state.inten, state.hess, _ = prob.normal_equations(state.q)
                state.converged, state.message = True, "finished earlier (reused from the checkpoint)"
            prev_weights = None  # weights of the previous pass, under which q_before was fitted
            for stage in range(stage0, 0 if finished else n_stages):
                if stage > stage0 or (stage > 0 and x_weights is None):
                    prev_weights, x_weights = x_weights, pmap.x(state.q)
                    prob.set_weights(weights_for(x_weights))
                q_before = state.q.copy()
                r_before = _r(exp, model.intensities(pmap.x(q_before))) if stage > 0 else np.inf
                state.mu = None
                state = _levenberg_marquardt(prob, state, max_iter=max_iter, ftol=ftol, xtol=ftol,
                                             stage=stage, bar=bar, on_iteration=save)
                if stage > 0 and _r(exp, state.inten) > POISSON_REVERT_FACTOR * r_before:
                    # model-based weights only make sense near the solution: keep the previous pass
                    logger.warning("refine: re-weighting pass %d raised R from %.3g to %.3g; keeping "
                                   "the previous pass (the fit is far from the data)", stage, r_before,
                                   _r(exp, state.inten))
                    state.q, x_weights = q_before, prev_weights
                    prob.set_weights(weights_for(x_weights))
                    state.r, state.inten, state.hess, _ = prob.normal_equations(q_before)
                    break
                if stage > 0:
                    cov, _ = _covariance(state.hess, _gauge_basis(pmap, geometry, pmap.x(state.q)))
                    sig = np.sqrt(np.abs(np.diag(cov)))
                    if np.all(np.abs(state.q - q_before) <= 0.01 * sig):
                        break
            if not finished:
                _restore_undetermined(prob, state, q_start, max_iter=max_iter, ftol=ftol)
            save(state, done=True)
            return _result(prob, state, geometry, ug_da, weights, absorbing, d,
                           (chi2_max, r_noise_factor, r_max))
        finally:
            bar.close()


#: Holding the undetermined directions at their start may raise χ² by at most this fraction …
RESTORE_RTOL = 1e-6
#: … plus this fraction of Σ w I² (an exact fit of noise-free data: both χ² are round-off).
RESTORE_FLOOR = 1e-20


def _restore_undetermined(prob: _Problem, state: _LMState, q_start: np.ndarray, *, max_iter: int,
                          ftol: float) -> None:
    """Hold the parameter combinations the data do not determine at their start.

    Least squares moves along such directions only by accident (damping couples them to the
    rest); they carry no information. They are set back to the start and the fit is converged
    again with them pinned; the result is kept when it fits as well (:data:`RESTORE_RTOL`),
    otherwise the directions stay where the fit put them (logged). Either way their standard
    errors are infinite.
    """
    null = _null_directions(state.hess, _gauge_basis(prob.pmap, prob.model.geometry,
                                                     prob.pmap.x(state.q)))
    if not null.shape[1]:
        return
    q_new = state.q - null @ (null.T @ (state.q - q_start))
    if np.allclose(q_new, state.q, rtol=0, atol=1e-15):
        return
    cost = float(state.r @ state.r)
    trial = _LMState(q=q_new, history=list(state.history), iterations=state.iterations)
    trial = _levenberg_marquardt(prob, trial, max_iter=max_iter, ftol=ftol, xtol=ftol,
                                 stage=state.history[-1][1] if state.history else 0, pinned=null)
    floor = RESTORE_FLOOR * float(np.sum((prob.sw * np.nan_to_num(prob.data).ravel()) ** 2))
    if float(trial.r @ trial.r) <= cost * (1 + RESTORE_RTOL) + floor:
        for name in ("q", "r", "inten", "hess", "history", "iterations"):
            setattr(state, name, getattr(trial, name))
    else:
        logger.info("refine: the undetermined directions were left where the fit put them "
                    "(holding them at the start fits worse)")


def _fingerprint(exp, dose, x0, geometry_attrs, settings) -> str:
    return fingerprint(exp, None if dose is None else np.asarray(dose, float), np.asarray(x0),
                       geometry_attrs, settings)


#: A refinement iteration estimated to take longer than this [s] is announced in the log.
ANNOUNCE_ITERATION_S = 10.0


def _log_cost(geometry: Geometry, n_q: int, chunk: int) -> None:
    from .resources import estimate_jacobian

    est = estimate_jacobian(geometry, n_q, chunk_tilts=chunk)
    msg = (f"refine: {geometry.n_tilts} tilts × {geometry.n_beams} beams, {n_q} free parameters, "
           f"Jacobian in chunks of {chunk} tilts; about {est.seconds:.3g} s and "
           f"{est.memory_bytes / 2**20:.0f} MiB per iteration")
    (logger.warning if est.seconds > ANNOUNCE_ITERATION_S else logger.info)(msg)


def _result(prob: _Problem, state: _LMState, geometry: Geometry, ug_start: xr.DataArray,
            weights: str, absorbing: bool, dose, thresholds) -> RefinementResult:
    pmap = prob.pmap
    p = geometry.n_reflections
    x = pmap.x(state.q)
    gauge = _gauge_basis(pmap, geometry, x)
    cov_q, null = _covariance(state.hess, gauge)
    inten = state.inten
    resid = prob._weighted(inten)
    n_free = state.hess.shape[1] - gauge.shape[1] - null.shape[1]
    dof = max(int(np.isfinite(prob.data).sum()) - n_free, 1)
    chi2 = float(resid @ resid) / dof
    if weights == "none":
        cov_q = cov_q * chi2
    # x_i = base_i + T[i, c] q_c with at most one column c per i
    n_x = len(x)
    col = np.full(n_x, -1)
    coef = np.zeros(n_x)
    nz = np.nonzero(pmap.t)
    col[nz[0]] = nz[1]
    coef[nz[0]] = pmap.t[nz]
    cov_x = np.zeros((n_x, n_x))
    idx = np.flatnonzero(col >= 0)
    cov_x[np.ix_(idx, idx)] = coef[idx, None] * coef[None, idx] * cov_q[np.ix_(col[idx], col[idx])]
    sig = np.sqrt(np.abs(np.diag(cov_x)))

    ug = input_ug(geometry, x[:p] + 1j * x[p:2 * p])
    ug.attrs.update({"source": "refined", "u0": float(ug_start.attrs.get("u0", 0.0))})
    ug_error = ug.copy(data=sig[:p] + 1j * sig[p:2 * p])  # may hold inf (undetermined)
    ug_error.attrs.update({"source": "standard error", "long_name":
                           "standard errors: real part σ(Re U_g), imaginary part σ(Im U_g)"})
    t, t_err = float(x[2 * p]), float(sig[2 * p])
    kappa = float(x[2 * p + 1]) if absorbing else None
    kappa_err = float(sig[2 * p + 1]) if absorbing else None
    names = geometry.reflection_labels()
    labels = ([f"Re U({n})" for n in names] + [f"Im U({n})" for n in names] + ["t"]
              + (["kappa"] if absorbing else []))
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
    fit["observed"] = (("tilt", "beam"), prob.data, {"units": "1"})
    fit["residual"] = (("tilt", "beam"), prob.data - fit.intensity.values, {"units": "1"})
    r = _r(prob.data, fit.intensity.values)
    fit.attrs.update({"r_factor": r, "chi2_reduced": chi2, "weights": weights})
    chi2_max, r_noise_factor, r_max = thresholds
    noise_r = None if dose is None else expected_noise_r(fit.intensity.values, dose)
    warnings = fit_quality_warnings(r, chi2 if weights == "poisson" else None, noise_r,
                                    chi2_max=chi2_max, r_noise_factor=r_noise_factor, r_max=r_max)
    if pmap.t[2 * p].any() and t <= MIN_THICKNESS_NM * (1 + 1e-9):
        warnings.append(FitWarning("bound", f"the thickness ended at its lower bound "
                                            f"{MIN_THICKNESS_NM:g} nm"))
    if absorbing and pmap.t[2 * p + 1].any() and kappa <= 0.0:
        warnings.append(FitWarning("bound", "the absorption κ ended at its lower bound 0"))
    if null.shape[1]:
        q_labels = [pmap.labels[c] for c in range(pmap.t.shape[1])]
        combos = _describe_null(null, q_labels)
        warnings.append(FitWarning(
            "undetermined", f"{null.shape[1]} parameter combination(s) not determined by the pattern "
                            f"were kept at their start (σ = inf): {'; '.join(combos[:6])}"
                            + (" …" if len(combos) > 6 else "")))
    for w in warnings:
        logger.warning("refine: %s", w)
    logger.info("refine: R = %.3g, reduced χ² = %.3g, t = %.3f ± %.3f nm after %d iterations (%s)",
                r, chi2, t, t_err, state.iterations, state.message)
    return RefinementResult(
        ug=ug, ug_error=ug_error, thickness_nm=t, thickness_error_nm=t_err, absorption=kappa,
        absorption_error=kappa_err, r_factor=r, chi2=chi2, standard_errors=std,
        covariance=covariance, history=history, fit=fit, weights=weights,
        converged=state.converged, message=state.message, n_iterations=state.iterations,
        geometry=geometry, warnings=warnings,
    )
