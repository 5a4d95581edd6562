"""The forward model and its exact Jacobian, and the weighted normal equations built from it.

:class:`ForwardModel` maps the full parameter vector to intensities and derivatives through
:mod:`larbed.bloch`; :class:`WeightedProblem` forms the weighted residuals and sums JᵀWJ and JᵀWr
over tilt chunks of :data:`JACOBIAN_CHUNK_BYTES`, so memory stays bounded at any size.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .. import bloch
from ..geometry import Geometry
from ..resources import check_memory, estimate_jacobian
from ..schema import check_ug, pattern_coords
from ..simulation import simulate
from ..threads import uses_kernels
from .parameters import MIN_THICKNESS_NM, ParameterMap, check_start_thickness, free_x

__all__ = ["JACOBIAN_CHUNK_BYTES", "SCAN_CHUNK_BYTES", "ForwardModel", "WeightedProblem",
           "intensity_jacobian", "masked_r", "simulated_chunks"]


class ForwardModel:
    """Forward model and Jacobian on the full vector x = [Re U (P), Im U (P), t [nm], (κ)].

    The kernels run through :mod:`larbed.bloch` (tilts in parallel, one BLAS thread each).
    """

    def __init__(self, geometry: Geometry, u0: float, absorbing: bool, kappa_column: bool):
        self.geometry = geometry
        self.p = geometry.n_reflections
        self.u0 = float(u0)
        self.absorbing = absorbing
        self.kappa_column = kappa_column
        self.n_x = 2 * self.p + 1 + int(absorbing)
        self.inv2k = 1.0 / (2.0 * geometry.k0)

    def unpack(self, x):
        p = self.p
        ug = x[:p] + 1j * x[p:2 * p]
        kappa = float(x[2 * p + 1]) if self.absorbing else None
        return ug, float(x[2 * p]), kappa

    def _matrices(self, ug, kappa, force_general: bool):
        off, dg, path = bloch.prepare_matrices(self.geometry, ug, kappa if kappa else None, self.u0)
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
        out = bloch.intensities(off, dg, path, thick)
        return out[0] if thickness_nm is None else out

    def jacobian(self, x, rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Intensities (M, N) and dI/dx (M, N, n_x) of the tilts ``rows`` (default all);
        thickness column per nm."""
        ug, t, kappa = self.unpack(x)
        off, dg, path = self._matrices(ug, kappa, self.kappa_column)
        if rows is not None:
            dg = np.ascontiguousarray(dg[rows])
        m, n = dg.shape
        fac = (1.0 + 1j * (kappa or 0.0)) * self.inv2k
        out_i, out_j = bloch.jacobian(off, dg, path, 10.0 * t, self.geometry, ug, fac, self.u0,
                                      self.kappa_column)
        out_j[:, :, 2 * self.p] *= 10.0  # per Å → per nm
        if self.absorbing and not self.kappa_column:
            out_j = np.concatenate([out_j, np.zeros((m, n, 1))], axis=2)
        return out_i, out_j


@uses_kernels
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
    t = float(check_start_thickness(thickness_nm))
    absorbing = absorption is not None
    if absorbing and (not np.isfinite(absorption) or absorption < 0):
        raise ValueError(f"absorption κ must be finite and >= 0, got {absorption}")
    check_memory(estimate_jacobian(geometry), "intensity_jacobian",
                 "refine() sums the normal equations over tilt chunks and needs far less; or "
                 "use a geometry with fewer tilts")
    model = ForwardModel(geometry, float(ug_da.attrs.get("u0", 0.0)), absorbing, absorbing)
    vals = ug_da.values
    x = np.concatenate([vals.real, vals.imag, [t], [absorption] if absorbing else []])
    inten, jac = model.jacobian(x)
    p = geometry.n_reflections
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


#: A thickness scan simulates at most this many bytes at once (tilt chunks beyond it).
SCAN_CHUNK_BYTES = 512 * 2**20


def simulated_chunks(geometry: Geometry, ug_da: xr.DataArray, thick: np.ndarray, absorption):
    """(tilt slice, intensities (thickness, tilts, beams)) over the pattern: all at once through
    :func:`larbed.simulate` (with its symmetry shortcut) when that fits :data:`SCAN_CHUNK_BYTES`,
    else tilt chunk by chunk (memory bounded at any number of tilts and thicknesses)."""
    per_tilt = 8 * len(thick) * geometry.n_beams
    if per_tilt * geometry.n_tilts <= SCAN_CHUNK_BYTES:
        yield slice(None), simulate(geometry, ug_da, thick, absorption=absorption).intensity.values
        return
    model = ForwardModel(geometry, float(ug_da.attrs.get("u0", 0.0)), absorption is not None, False)
    vals = ug_da.values
    x = np.concatenate([vals.real, vals.imag, [1.0], [absorption] if absorption is not None else []])
    step = max(1, SCAN_CHUNK_BYTES // per_tilt)
    for lo in range(0, geometry.n_tilts, step):
        rows = slice(lo, min(lo + step, geometry.n_tilts))
        yield rows, model.intensities(x, thick, rows=rows)


#: Memory for one tilt chunk of the Jacobian in :meth:`WeightedProblem.normal_equations` [bytes]: the
#: normal equations JᵀWJ and JᵀWr are summed over chunks, so memory stays bounded at any size.
JACOBIAN_CHUNK_BYTES = 256 * 2**20


class WeightedProblem:
    """Weighted residuals r = √w (I_sim − I_exp) and their normal equations in the free parameters q.

    Data points that are NaN (not measured) have weight 0 and count nowhere.
    """

    def __init__(self, model: ForwardModel, pmap: ParameterMap, data: np.ndarray, weights: np.ndarray,
                 prior: tuple[np.ndarray, np.ndarray] | None = None):
        self.model, self.pmap = model, pmap
        self.data = data
        self.set_weights(weights)
        n_tilts, n_beams = data.shape
        per_tilt = 8 * n_beams * (model.n_x + 2 * pmap.n_q + 4)
        self.chunk = int(max(1, min(n_tilts, JACOBIAN_CHUNK_BYTES // per_tilt)))
        # Gaussian prior on x (Re U_g, Im U_g): residual rows (x_i − centre_i)/σ_i for finite σ_i
        self.prior_idx = np.zeros(0, int)
        if prior is not None:
            centre, sigma = prior
            free = free_x(pmap, None)[:len(sigma)]
            self.prior_idx = np.flatnonzero(np.isfinite(sigma) & free)
            self.prior_centre = np.asarray(centre, float)[self.prior_idx]
            self.prior_inv = 1.0 / np.asarray(sigma, float)[self.prior_idx]

    def set_weights(self, weights: np.ndarray) -> None:
        self.sw = np.sqrt(np.asarray(weights, float)).ravel()

    def _prior_rows(self, q):
        return (self.pmap.x(q)[self.prior_idx] - self.prior_centre) * self.prior_inv

    def _prior_jacobian(self, q):
        return np.asarray(self.pmap.dx(q)[self.prior_idx]) * self.prior_inv[:, None]

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
        d = np.ascontiguousarray(self.pmap.dx(q))
        n_tilts, n_beams = self.data.shape
        n_q = self.pmap.n_q
        hess = np.zeros((n_q, n_q))
        grad = np.zeros(n_q)
        inten = np.empty((n_tilts, n_beams))
        for lo in range(0, n_tilts, self.chunk):
            hi = min(lo + self.chunk, n_tilts)
            part, jac = self.model.jacobian(x, slice(lo, hi))
            inten[lo:hi] = part
            sw = self.sw[lo * n_beams:hi * n_beams]
            jq = jac.reshape(-1, jac.shape[2]) @ d
            jq *= sw[:, None]
            hess += jq.T @ jq
            grad += jq.T @ (sw * np.nan_to_num(part - self.data[lo:hi]).ravel())
        r = self._weighted(inten)
        if self.prior_idx.size:
            rows = self._prior_rows(q)
            r = np.concatenate([r, rows])
            jp = self._prior_jacobian(q)
            hess += jp.T @ jp
            grad += jp.T @ rows
        return r, inten, hess, grad

    def clip(self, q):
        """Keep the thickness above :data:`MIN_THICKNESS_NM` (and κ >= 0); a parameter map with
        its own ``clip(q)`` (bounds of nonlinear parameters) applies that instead."""
        own = getattr(self.pmap, "clip", None)
        if own is not None:
            return own(q)
        x = self.pmap.x(q)
        p = self.model.p
        low = x.copy()
        low[2 * p] = max(x[2 * p], MIN_THICKNESS_NM)
        if self.model.absorbing:
            low[2 * p + 1] = max(x[2 * p + 1], 0.0)
        if np.array_equal(low, x):
            return q
        return q + self.pmap.q(low) - self.pmap.q(x)


def masked_r(data, inten) -> float:
    """R over the measured (finite) data points."""
    ok = np.isfinite(data)
    return float(np.abs(inten[ok] - data[ok]).sum() / data[ok].sum())
