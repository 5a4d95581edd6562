"""The forward model and its exact Jacobian, and the weighted normal equations built from it.

:class:`ForwardModel` maps the full parameter vector to intensities and derivatives through
:mod:`larbed.bloch`; :class:`WeightedProblem` forms the weighted residuals and sums JᵀWJ and JᵀWr
over tilt chunks of :data:`JACOBIAN_CHUNK_BYTES`, so memory stays bounded at any size. A forward
pass over the whole pattern on the real path keeps its eigensystems (up to
:data:`KEEP_EIGENSYSTEMS_BYTES`) for the Jacobian at the same point.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .. import bloch
from ..geometry import Geometry
from ..measurement import average_spread
from ..resources import check_memory, estimate_jacobian
from ..schema import check_ug, pattern_coords
from ..simulation import simulate
from ..threads import uses_kernels
from .parameters import MIN_THICKNESS_NM, ParameterMap, check_start_thickness, free_x

__all__ = ["JACOBIAN_CHUNK_BYTES", "KEEP_EIGENSYSTEMS_BYTES", "SCAN_CHUNK_BYTES", "ForwardModel",
           "WeightedProblem", "intensity_jacobian", "masked_r", "simulated_chunks"]


#: A forward pass over the whole pattern on the real path keeps its eigensystems when they take at
#: most this many bytes: the Jacobian at the same point (LM's next normal equations after an
#: accepted trial) then skips the decompositions.
KEEP_EIGENSYSTEMS_BYTES = 512 * 2**20


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

    def _matrices(self, ug, kappa, force_general: bool, tilts_mrad=None):
        off, dg, path = bloch.prepare_matrices(self.geometry, ug, kappa if kappa else None, self.u0,
                                               tilts_mrad=tilts_mrad)
        if force_general and path != "general":
            off, dg, path = off.astype(complex), dg.astype(complex), "general"
        return off, dg, path

    def eigen_path(self, x) -> str:
        """The eigensolver the model takes at ``x``: 'real', 'hermitian' or 'general'."""
        ug, _, kappa = self.unpack(x)
        return self._matrices(ug, kappa, False)[2]

    def intensities(self, x, thickness_nm=None, rows: slice | None = None,
                    tilts_mrad: np.ndarray | None = None) -> np.ndarray:
        """Intensities (M, N) at the thickness of ``x``, or (n_t, M, N) at ``thickness_nm``, of
        the tilts ``rows`` (default all); ``tilts_mrad`` (n_tilts, 2) replaces the geometry's
        tilts (a tilt map)."""
        ug, t, kappa = self.unpack(x)
        thick = np.atleast_1d(np.asarray(t if thickness_nm is None else thickness_nm, float)) * 10.0
        off, dg, path = self._matrices(ug, kappa, False, tilts_mrad)
        whole = rows is None or rows == slice(None)
        if (path == "real" and whole and thickness_nm is None and self.reduction is not None
                and 8 * dg.size * (dg.shape[1] + 1) <= KEEP_EIGENSYSTEMS_BYTES):  # λ and C
            out, w, c = bloch.intensities_kept(off, dg, thick)
            self._kept = (off, dg, w, c)
            return out[0]
        if not whole:
            dg = np.ascontiguousarray(dg[rows])
        out = bloch.intensities(off, dg, path, thick)
        return out[0] if thickness_nm is None else out

    #: (offdiag, diag, λ, C) of the last forward pass on the real path (see :meth:`intensities`).
    _kept: tuple | None = None

    def _kept_eigensystems(self, off, dg, path, rows):
        """(λ, C) of the tilts ``rows`` when the last forward pass had these very matrices."""
        kept = self._kept
        if (kept is None or path != "real" or not np.array_equal(kept[0], off)
                or not np.array_equal(kept[1], dg)):
            return None
        rows = slice(None) if rows is None else rows
        return kept[2][rows], kept[3][rows]

    #: Set by :meth:`reduce_to`: the U part of the Jacobian summed straight into free parameters.
    reduction: dict | None = None

    def reduce_to(self, pmap) -> bool:
        """Sum the U-part derivatives straight into the free parameters of ``pmap`` inside the
        kernels (symmetry ties folded in: far fewer columns, and real arithmetic on the real
        path). Needs a linear map whose U columns are each all-Re or all-Im with disjoint
        supports; returns False (and changes nothing) otherwise. A nonlinear map (the structure
        map) may offer ``reduction_skeleton()``: a linear map with one column per entry of x; the
        kernels then give ∂I/∂x in real arithmetic and :meth:`reduced_d` applies ∂x/∂q at q."""
        skeleton = getattr(pmap, "reduction_skeleton", None)
        t = skeleton() if callable(skeleton) else getattr(pmap, "t", None)
        p = self.p
        if t is None or t.shape[0] < self.n_x:
            return False
        tu = t[:2 * p]
        u_cols = np.flatnonzero(np.any(tu != 0, axis=0))
        if u_cols.size == 0 or np.any(t[2 * p:, u_cols] != 0) or np.any((tu != 0).sum(axis=1) > 1):
            return False
        is_re = np.any(tu[:p, u_cols] != 0, axis=0)
        is_im = np.any(tu[p:, u_cols] != 0, axis=0)
        if np.any(is_re & is_im):
            return False
        geo = self.geometry
        n = geo.n_beams
        pos_col = -np.ones((n, n, 3), np.int64)
        pos_w = np.zeros((n, n, 3))
        local = -np.ones(t.shape[1], np.int64)
        local[u_cols] = np.arange(u_cols.size)
        pidx, psign = geo.pair_index, geo.pair_sign
        a, b = np.nonzero(pidx >= 0)
        pr = pidx[a, b]
        for e, rows_x, sign in ((0, pr, 1.0), (1, p + pr, psign[a, b].astype(float))):
            nz = tu[rows_x] != 0
            has = np.any(nz, axis=1)
            col = np.argmax(nz, axis=1)
            keep = has & (local[col] >= 0)
            pos_col[a[keep], b[keep], e] = local[col[keep]]
            pos_w[a[keep], b[keep], e] = tu[rows_x[keep], col[keep]] * np.broadcast_to(sign, a.shape)[keep]
        n_q = t.shape[1]
        select = np.zeros((u_cols.size, n_q))
        select[np.arange(u_cols.size), u_cols] = 1.0
        self.reduction = {"pos_col": pos_col, "pos_w": pos_w, "is_im": is_im,
                          "n_u": int(u_cols.size), "d": np.vstack([select, t[2 * p:]]),
                          "skeleton": t if callable(skeleton) else None}
        return True

    def reduced_d(self, pmap=None, q=None) -> np.ndarray:
        """∂(Jacobian columns)/∂q of the reduced Jacobian: [U-part q; rows 2P… of T]; through a
        skeleton (see :meth:`reduce_to`) times ∂x/∂q of ``pmap`` at ``q``."""
        red = self.reduction
        if red["skeleton"] is None:
            return red["d"]
        return red["d"] @ (red["skeleton"].T @ np.asarray(pmap.dx(q)))

    def _kernel_inputs(self, x, rows, tilts_mrad, tilt_columns):
        """(U_g, t, matrices, diagonal of ``rows``, path, fac, diagonal directions, the kept
        eigensystems of ``rows`` or None) for a Jacobian."""
        ug, t, kappa = self.unpack(x)
        off, dg, path = self._matrices(ug, kappa, self.kappa_column, tilts_mrad)
        eig = self._kept_eigensystems(off, dg, path, rows)
        if rows is not None:
            dg = np.ascontiguousarray(dg[rows])
        fac = (1.0 + 1j * (kappa or 0.0)) * self.inv2k
        dirs = self.geometry.excitation_tilt_derivative * self.inv2k if tilt_columns else None
        return ug, t, off, dg, path, fac, dirs, eig

    def _with_kappa_column(self, out_j: np.ndarray, k: int) -> np.ndarray:
        """Insert a zero κ column at ``k`` when κ is modelled but not refined."""
        if self.absorbing and not self.kappa_column:
            m, n = out_j.shape[:2]
            return np.concatenate([out_j[:, :, :k], np.zeros((m, n, 1)), out_j[:, :, k:]], axis=2)
        return out_j

    def _jacobian_reduced(self, x, rows, tilts_mrad, tilt_columns):
        red = self.reduction
        ug, t, off, dg, path, fac, dirs, eig = self._kernel_inputs(x, rows, tilts_mrad, tilt_columns)
        col_fac = np.where(red["is_im"], 1j * fac, fac)
        pos_col, pos_w = red["pos_col"], red["pos_w"]
        if self.kappa_column:
            from ..structure_factors import ug_matrix

            pos_col = pos_col.copy()
            pos_col[:, :, 2] = np.where(self.geometry.pair_index >= 0, red["n_u"], -1)
            pos_w = pos_w.astype(complex)
            pos_w[:, :, 2] = ug_matrix(self.geometry, ug)
        out_i, out_j = bloch.jacobian_q(off, dg, path, 10.0 * t, pos_col, pos_w, col_fac,
                                        self.kappa_column, 1j * self.inv2k, self.u0 * self.inv2k,
                                        dirs, eigensystems=eig)
        nu = red["n_u"]
        out_j[:, :, nu] *= 10.0  # per Å → per nm
        return out_i, self._with_kappa_column(out_j, nu + 1)

    def jacobian(self, x, rows: slice | None = None, tilts_mrad: np.ndarray | None = None,
                 tilt_columns: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Intensities (M, N) and dI/dx (M, N, n_x) of the tilts ``rows`` (default all);
        thickness column per nm. With ``tilt_columns`` two more columns, dI/dθ_x and dI/dθ_y
        [per mrad] of the (true) tilt. After :meth:`reduce_to` the U part comes in the free
        parameters instead (columns [U-part q, t, (κ), (θ)]; :meth:`reduced_d` maps them to q)."""
        if self.reduction is not None:
            return self._jacobian_reduced(x, rows, tilts_mrad, tilt_columns)
        ug, t, off, dg, path, fac, dirs, _ = self._kernel_inputs(x, rows, tilts_mrad, tilt_columns)
        out_i, out_j = bloch.jacobian(off, dg, path, 10.0 * t, self.geometry, ug, fac, self.u0,
                                      self.kappa_column, dirs)
        out_j[:, :, 2 * self.p] *= 10.0  # per Å → per nm
        return out_i, self._with_kappa_column(out_j, 2 * self.p + 1)


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


def simulated_chunks(geometry: Geometry, ug_da: xr.DataArray, thick: np.ndarray, absorption,
                     measurement=None):
    """(tilt slice, intensities (thickness, tilts, beams)) over the pattern: all at once through
    :func:`larbed.simulate` (with its symmetry shortcut) when that fits :data:`SCAN_CHUNK_BYTES`,
    else tilt chunk by chunk (memory bounded at any number of tilts and thicknesses). A tilt map
    of ``measurement`` (its start values) moves the tilts."""
    tilts, spread = None, None
    if measurement is not None and measurement.tilt_spread != "none":
        tilts, spread, _ = measurement.tilt_points(geometry, measurement.start_vector(geometry))
    elif measurement is not None and measurement.tilt_map != "none":
        tilts = measurement.true_tilts(geometry, measurement.start_vector(geometry))
    per_tilt = 8 * len(thick) * geometry.n_beams * (1 if spread is None else len(spread))
    if per_tilt * geometry.n_tilts <= SCAN_CHUNK_BYTES and tilts is None:
        yield slice(None), simulate(geometry, ug_da, thick, absorption=absorption).intensity.values
        return
    model = ForwardModel(geometry, float(ug_da.attrs.get("u0", 0.0)), absorption is not None, False)
    vals = ug_da.values
    x = np.concatenate([vals.real, vals.imag, [1.0], [absorption] if absorption is not None else []])
    step = max(1, SCAN_CHUNK_BYTES // per_tilt)
    for lo in range(0, geometry.n_tilts, step):
        rows = slice(lo, min(lo + step, geometry.n_tilts))
        if spread is None:
            yield rows, model.intensities(x, thick, rows=rows, tilts_mrad=tilts)
        else:  # S points per tilt, tilt by tilt: their mean
            pts = slice(len(spread) * rows.start, len(spread) * rows.stop)
            yield rows, average_spread(model.intensities(x, thick, rows=pts, tilts_mrad=tilts),
                                       spread)


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
        self.reduced = bool(model.reduce_to(pmap))
        self.set_weights(weights)
        n_tilts, n_beams = data.shape
        per_tilt = 8 * n_beams * (model.n_x + 2 * pmap.n_q + 4) * getattr(model, "points_per_tilt", 1)
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
        """1/σ² per data point; zero (not NaN) wherever the data are not measured."""
        w = np.broadcast_to(np.asarray(weights, float), self.data.shape)
        w = np.where(np.isfinite(self.data) & np.isfinite(w), w, 0.0)
        self.sw = np.sqrt(w).ravel()

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
        """(r, I_sim, JᵀJ, Jᵀr) of the weighted problem, the Jacobian built tilt chunk by chunk.

        After :meth:`ForwardModel.reduce_to` the sums run over the Jacobian's own columns and meet
        ∂x/∂q once at the end (Dᵀ(JᵀWJ)D), with a per-beam background's columns summed in closed
        form (:class:`~larbed.refinement.measured.BeamBlock`); otherwise J is mapped to q chunk
        by chunk.
        """
        if self.reduced:
            hess, grad, inten = self._sums_in_columns(q)
        else:
            hess, grad, inten = self._sums_in_q(q)
        r = self._weighted(inten)
        if self.prior_idx.size:
            rows = self._prior_rows(q)
            r = np.concatenate([r, rows])
            jp = self._prior_jacobian(q)
            hess += jp.T @ jp
            grad += jp.T @ rows
        return r, inten, hess, grad

    def _sums_in_q(self, q):
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
            keep = sw > 0  # points not measured (or held out) add nothing
            jq = jac.reshape(-1, jac.shape[2])[keep] @ d
            jq *= sw[keep, None]
            # JᵀJ by a symmetric rank-k update (half the work of jq.T @ jq), upper triangle
            hess = _syrk(jq, hess)
            grad += jq.T @ (sw * np.nan_to_num(part - self.data[lo:hi]).ravel())[keep]
        return np.triu(hess) + np.triu(hess, 1).T, grad, inten

    def _sums_in_columns(self, q):
        x = self.pmap.x(q)
        d = self.model.reduced_d(self.pmap, q)
        n_tilts, n_beams = self.data.shape
        parts = getattr(self.model, "jacobian_parts", None)
        inten = np.empty((n_tilts, n_beams))
        h_aa = g_a = h_ba = h_bb = g_b = None
        for lo in range(0, n_tilts, self.chunk):
            hi = min(lo + self.chunk, n_tilts)
            if parts is None:
                part, a = self.model.jacobian(x, slice(lo, hi))
                cols, block = np.arange(a.shape[2]), None
            else:
                part, a, cols, block = parts(x, slice(lo, hi))
            inten[lo:hi] = part
            sw = self.sw[lo * n_beams:hi * n_beams].reshape(hi - lo, n_beams)
            rw = sw * np.nan_to_num(part - self.data[lo:hi])
            a *= sw[:, :, None]
            if not np.all(sw > 0):
                a[sw == 0] = 0.0  # not measured (or held out): nothing, not even a NaN scale
            flat = a.reshape(-1, a.shape[2])
            if h_aa is None:
                h_aa, g_a = np.zeros((cols.size, cols.size)), np.zeros(cols.size)
            h_aa = _syrk(flat, h_aa)  # JᵀJ by a symmetric rank-k update, upper triangle
            g_a += flat.T @ rw.ravel()
            if block is not None:
                terms = block.normal_terms(a, sw, rw)
                h_ba, h_bb, g_b = terms if h_ba is None else (h_ba + terms[0], h_bb + terms[1],
                                                              g_b + terms[2])
        n_cols = d.shape[0]
        hx, gx = np.zeros((n_cols, n_cols)), np.zeros(n_cols)
        hx[np.ix_(cols, cols)] = np.triu(h_aa) + np.triu(h_aa, 1).T
        gx[cols] = g_a
        if h_ba is not None:
            bc = block.cols
            hx[np.ix_(bc, cols)] = h_ba
            hx[np.ix_(cols, bc)] = h_ba.T
            hx[np.ix_(bc, bc)] = h_bb
            gx[bc] = g_b
        hess = d.T @ hx @ d
        return 0.5 * (hess + hess.T), d.T @ gx, inten

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


def _syrk(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """c + aᵀa in the upper triangle (BLAS dsyrk)."""
    from scipy.linalg.blas import dsyrk

    if a.shape[0] == 0:
        return c
    if a.flags.c_contiguous:  # aᵀ is Fortran-ordered: no copy
        return dsyrk(1.0, a.T, beta=1.0, c=c, trans=0, lower=0, overwrite_c=1)
    return dsyrk(1.0, a, beta=1.0, c=c, trans=1, lower=0, overwrite_c=1)


def masked_r(data, inten) -> float:
    """R over the measured (finite) data points."""
    ok = np.isfinite(data)
    return float(np.abs(inten[ok] - data[ok]).sum() / data[ok].sum())
