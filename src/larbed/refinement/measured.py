"""The forward model of a measurement: I = s_t (I_dyn(θ') + B) with exact derivatives (SPEC §11).

:class:`MeasuredModel` wraps :class:`~larbed.refinement.jacobian.ForwardModel` (the dynamical
intensities and their U_g, t, κ derivatives) and appends the measurement part of the parameter
vector: x = [Re U (P), Im U (P), t, (κ), global s, background, tilt map]. Chain rules:

* tilt map θ' = A θ + c: ∂I/∂c = ∂I/∂θ', ∂I/∂A_ij = ∂I/∂θ'_i θ_j, with ∂I/∂θ' from the kernels'
  diagonal directions (the excitation errors are linear in the tilt);
* tilt spread: I_dyn = Σ_s w_s I(θ' + ρ u_s) over the 7 points of a disc rule, so every column is
  the same mean of its values at the points and ∂I/∂ρ = Σ_s w_s ∂I/∂θ'(θ' + ρ u_s) · u_s;
* background B = Σ_k p_k a_k(t) b_k(beam): ∂m/∂p_k = a_k b_k with m = I_dyn + B;
* global scale: I = s m, ∂I/∂s = m, ∂I/∂p = s ∂m/∂p;
* per-tilt scale s_t = Σ_b D_tb / Σ_b m_tb over the measured beams of tilt t (analytic, not a
  parameter): ∂I/∂p = s_t (∂m/∂p − m Σ_b ∂m_b/∂p / Σ_b m_b).

A per-beam background's n_beams columns are the identity before the scale, so
:meth:`MeasuredModel.jacobian_parts` leaves them out and a :class:`BeamBlock` gives their share of
the normal equations in closed form.
"""

from __future__ import annotations

import numpy as np

from ..geometry import Geometry
from ..measurement import Measurement, average_spread, disc_rule
from .jacobian import ForwardModel

__all__ = ["BeamBlock", "MeasuredModel"]


class MeasuredModel:
    """Measured intensities and their Jacobian on x = [core x, measurement part].

    Parameters
    ----------
    core : ForwardModel
    measurement : Measurement
    scale_data : (n_tilts, n_beams) array
        The data the per-tilt scale normalises to (NaN: not measured; all tilts, including any
        held out of the fit).
    """

    def __init__(self, core: ForwardModel, measurement: Measurement, scale_data: np.ndarray):
        self.core = core
        self.geometry: Geometry = core.geometry
        self.p, self.u0, self.absorbing = core.p, core.u0, core.absorbing
        self.measurement = measurement
        self.n_core = core.n_x
        self.n_m = measurement.n_parameters(self.geometry)
        self.n_x = self.n_core + self.n_m
        self.mask = np.isfinite(scale_data)
        self.data_sums = np.where(self.mask, scale_data, 0.0).sum(axis=1)
        self.bg_t, self.bg_b = measurement.background_terms(self.geometry)
        self.i_scale = self.n_core if measurement.scale == "global" else None
        self.i_bg = self.n_core + int(measurement.scale == "global")
        self.n_bg = measurement.n_background(self.geometry)
        self.i_tilt = self.i_bg + self.n_bg
        self.spread = measurement.tilt_spread != "none"
        #: Points computed per tilt (a tilt spread averages several; memory of a Jacobian chunk).
        self.points_per_tilt = len(disc_rule()[1]) if self.spread else 1

    # ----------------------------------------------------------------------------- pieces
    def _xm(self, x) -> np.ndarray:
        return np.asarray(x[self.n_core:], float)

    def true_tilts(self, x) -> np.ndarray | None:
        """θ' (n_tilts, 2) [mrad], or None without a tilt map."""
        if self.measurement.tilt_map == "none":
            return None
        return self.measurement.true_tilts(self.geometry, self._xm(x))

    def _points(self, x):
        """(tilts for the core: θ' (n_tilts, 2), the points of a spread (n_tilts·S, 2), or None;
        the spread's weights (S,) and unit nodes (S, 2), or None)."""
        if not self.spread:
            return self.true_tilts(x), None, None
        return self.measurement.tilt_points(self.geometry, self._xm(x))

    def _core_rows(self, rows: slice | None) -> slice | None:
        """The core's rows of the tilts ``rows`` (S consecutive points per tilt with a spread)."""
        if rows is None or not self.spread:
            return rows
        lo, hi, step = rows.indices(self.geometry.n_tilts)
        if step != 1:
            raise ValueError("tilt rows must be a contiguous slice")
        return slice(self.points_per_tilt * lo, self.points_per_tilt * hi)

    def _dynamic(self, x, thickness_nm, rows) -> np.ndarray:
        pts, weights, _ = self._points(x)
        dyn = self.core.intensities(x[:self.n_core], thickness_nm, self._core_rows(rows), pts)
        return dyn if weights is None else average_spread(dyn, weights)

    def background(self, x, rows: slice) -> np.ndarray:
        """B (tilts of ``rows``, n_beams)."""
        if self.n_bg == 0:
            return 0.0
        return self.measurement.background_array(self.geometry, self._xm(x))[rows]

    def per_tilt_scale(self, m: np.ndarray, rows: slice) -> np.ndarray:
        """s_t = Σ D / Σ m over the measured beams, for m (..., tilts of rows, n_beams)."""
        mask = self.mask[rows]
        denom = np.where(mask, m, 0.0).sum(axis=-1)
        return self.data_sums[rows] / np.where(denom > 0, denom, np.nan)

    def _scale(self, x, m: np.ndarray, rows: slice):
        form = self.measurement.scale
        if form == "global":
            return float(x[self.i_scale])
        if form == "per_tilt":
            return self.per_tilt_scale(m, rows)[..., None]
        return 1.0

    # ----------------------------------------------------------------------------- model
    def intensities(self, x, thickness_nm=None, rows: slice | None = None) -> np.ndarray:
        """Measured intensities (M, N), or (n_t, M, N) at ``thickness_nm``, of tilts ``rows``."""
        rows = slice(None) if rows is None else rows
        m = self._dynamic(x, thickness_nm, rows) + self.background(x, rows)
        return self._scale(x, m, rows) * m

    def dynamic_intensities(self, x) -> np.ndarray:
        """I_dyn(θ') (n_tilts, n_beams): before background and scale (with a spread, its mean)."""
        return self._dynamic(x, None, None)

    def reduce_to(self, pmap) -> bool:
        """Let the core sum its U part into free parameters (see :meth:`ForwardModel.reduce_to`)."""
        return self.core.reduce_to(pmap)

    def reduced_d(self, pmap=None, q=None) -> np.ndarray:
        return self.core.reduced_d(pmap, q)

    def jacobian(self, x, rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Measured intensities (M, N) and dI/dx (M, N, n_x) of the tilts ``rows`` (after
        :meth:`reduce_to`, the U part in free parameters, as the core gives it)."""
        inten, full, _, _ = self._jacobian(x, rows, split=False)
        return inten, full

    def jacobian_parts(self, x, rows: slice | None = None):
        """(I (M, N), dense dI/dx (M, N, K), the x columns of the K dense columns, BeamBlock or
        None): as :meth:`jacobian`, but a per-beam background's columns are left out and described
        by a :class:`BeamBlock` (they are the identity before the scale: their share of the normal
        equations takes O(M N K) work instead of O(M N n_beams²))."""
        return self._jacobian(x, rows, split=self.measurement.background == "per_beam")

    def _jacobian(self, x, rows, split: bool):
        rows = slice(None) if rows is None else rows
        meas = self.measurement
        tilts, weights, nodes = self._points(x)
        dirs = tilts is not None
        dyn, jd = self.core.jacobian(x[:self.n_core], self._core_rows(rows), tilts,
                                     tilt_columns=dirs)
        nc = jd.shape[2] - (2 if dirs else 0)  # core columns
        d_rho = None
        if weights is not None:  # the mean over the spread's points; ∂/∂ρ from the tilt columns
            jd = jd.reshape(-1, len(weights), *jd.shape[1:])
            sign = 1.0 if x[-1] >= 0 else -1.0  # ρ = |x| (the rule is symmetric under ρ → −ρ)
            d_rho = sign * np.einsum("msnk,s,sk->mn", jd[..., nc:nc + 2], weights, nodes)
            jd = np.einsum("msnk,s->mnk", jd, weights)
            dyn = average_spread(dyn, weights)
        mc, n = dyn.shape
        shift = nc - self.n_core
        i_bg = self.i_bg + shift
        cols = np.arange(nc + self.n_m)
        bg_cols = np.arange(i_bg, i_bg + self.n_bg)
        if split:
            cols = np.delete(cols, bg_cols)
        place = np.full(nc + self.n_m, -1)
        place[cols] = np.arange(cols.size)  # x column → column of ``full``
        full = np.zeros((mc, n, cols.size))
        full[:, :, :nc] = jd[:, :, :nc]
        m = dyn + self.background(x, rows)
        if self.n_bg and not split:
            if meas.background == "per_beam":
                idx = np.arange(n)
                full[:, idx, i_bg + idx] = 1.0
            else:
                full[:, :, i_bg:i_bg + self.n_bg] = np.einsum("kt,kb->tbk", self.bg_t[:, rows],
                                                             self.bg_b)
        if d_rho is not None:
            full[:, :, place[self.n_x - 1 + shift]] = d_rho
        if meas.tilt_map != "none":
            dth = jd[:, :, nc:nc + 2]  # ∂I/∂θ'_x, ∂I/∂θ'_y
            col = place[self.i_tilt + shift]
            if meas.tilt_map == "affine":
                nominal = self.geometry.tilt_mrad[rows]
                for i in range(2):
                    for j in range(2):
                        full[:, :, col] = dth[:, :, i] * nominal[:, j, None]
                        col += 1
            full[:, :, col:col + 2] = dth
        alpha, beta = np.ones(mc), np.zeros((mc, n))
        if meas.scale == "global":
            s = float(x[self.i_scale])
            full *= s
            full[:, :, place[self.i_scale + shift]] = m
            inten, alpha = s * m, np.full(mc, s)
        elif meas.scale == "per_tilt":
            st = self.per_tilt_scale(m, rows)
            mask = self.mask[rows].astype(float)
            denom = (mask * m).sum(axis=1)
            col_sums = np.matmul(mask[:, None, :], full)[:, 0, :]
            full -= m[:, :, None] * (col_sums / denom[:, None])[:, None, :]
            full *= st[:, None, None]
            inten, alpha, beta = st[:, None] * m, st, (st / denom)[:, None] * m
        else:
            inten = m
        block = BeamBlock(bg_cols, alpha, beta, self.mask[rows]) if split else None
        return inten, full, cols, block


class BeamBlock:
    """The per-beam background columns of dI/dx, not stored: ∂I_tb/∂B_b' = α_t δ_bb' − β_tb γ_tb'
    (α the scale s_t, β = s_t m_tb / Σ_b γ_tb m_tb and γ the mask of measured beams under a per-tilt
    scale; β = 0 otherwise). ``cols``: their x columns."""

    def __init__(self, cols: np.ndarray, alpha: np.ndarray, beta: np.ndarray, gamma: np.ndarray):
        # a tilt without measured beams has NaN scale and weight 0: it adds nothing
        self.cols = cols
        self.alpha = np.nan_to_num(alpha)
        self.beta = np.nan_to_num(beta)
        self.gamma = gamma.astype(float)

    def normal_terms(self, a: np.ndarray, sw: np.ndarray, rw: np.ndarray):
        """(Bᵀ W A (n_bg, K), Bᵀ W B (n_bg, n_bg), Bᵀ W r (n_bg,)) of one tilt chunk with this block B,
        the weighted dense columns ``a`` = √w A (M, N, K), √w ``sw`` (M, N) and the weighted residual
        ``rw`` = √w r (M, N)."""
        al, be, ga = self.alpha, self.beta, self.gamma
        swb = sw * be  # (M, N)
        w_diag = al[:, None] * sw  # weight of the δ part
        h_ba = np.matmul(w_diag.T[:, None, :], a.transpose(1, 0, 2))[:, 0, :]
        h_ba -= ga.T @ np.matmul(swb[:, None, :], a)[:, 0, :]
        om = sw * sw
        p = (al[:, None] * om) * be
        cross = p.T @ ga
        h_bb = np.diag(np.sum(al[:, None] ** 2 * om, axis=0)) - cross - cross.T
        h_bb += ga.T @ (np.sum(om * be * be, axis=1)[:, None] * ga)
        g_b = np.sum(w_diag * rw, axis=0) - ga.T @ np.sum(swb * rw, axis=1)
        return h_ba, h_bb, g_b
