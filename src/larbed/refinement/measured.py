"""The forward model of a measurement: I = s_t (I_dyn(θ') + B) with exact derivatives (SPEC §11).

:class:`MeasuredModel` wraps :class:`~larbed.refinement.jacobian.ForwardModel` (the dynamical
intensities and their U_g, t, κ derivatives) and appends the measurement part of the parameter
vector: x = [Re U (P), Im U (P), t, (κ), global s, background, tilt map]. Chain rules:

* tilt map θ' = A θ + c: ∂I/∂c = ∂I/∂θ', ∂I/∂A_ij = ∂I/∂θ'_i θ_j, with ∂I/∂θ' from the kernels'
  diagonal directions (the excitation errors are linear in the tilt);
* background B = Σ_k p_k a_k(t) b_k(beam): ∂m/∂p_k = a_k b_k with m = I_dyn + B;
* global scale: I = s m, ∂I/∂s = m, ∂I/∂p = s ∂m/∂p;
* per-tilt scale s_t = Σ_b D_tb / Σ_b m_tb over the measured beams of tilt t (analytic, not a
  parameter): ∂I/∂p = s_t (∂m/∂p − m Σ_b ∂m_b/∂p / Σ_b m_b).
"""

from __future__ import annotations

import numpy as np

from ..geometry import Geometry
from ..measurement import Measurement
from .jacobian import ForwardModel

__all__ = ["MeasuredModel"]


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

    # ----------------------------------------------------------------------------- pieces
    def _xm(self, x) -> np.ndarray:
        return np.asarray(x[self.n_core:], float)

    def true_tilts(self, x) -> np.ndarray | None:
        """θ' (n_tilts, 2) [mrad], or None without a tilt map."""
        if self.measurement.tilt_map == "none":
            return None
        return self.measurement.true_tilts(self.geometry, self._xm(x))

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
        dyn = self.core.intensities(x[:self.n_core], thickness_nm, rows, self.true_tilts(x))
        m = dyn + self.background(x, rows)
        return self._scale(x, m, rows) * m

    def dynamic_intensities(self, x) -> np.ndarray:
        """I_dyn(θ') (n_tilts, n_beams): before background and scale."""
        return self.core.intensities(x[:self.n_core], None, None, self.true_tilts(x))

    def reduce_to(self, pmap) -> bool:
        """Let the core sum its U part into free parameters (see :meth:`ForwardModel.reduce_to`)."""
        return self.core.reduce_to(pmap)

    def reduced_d(self) -> np.ndarray:
        return self.core.reduced_d()

    def jacobian(self, x, rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Measured intensities (M, N) and dI/dx (M, N, n_x) of the tilts ``rows`` (after
        :meth:`reduce_to`, the U part in free parameters, as the core gives it)."""
        rows = slice(None) if rows is None else rows
        meas = self.measurement
        tilts = self.true_tilts(x)
        dyn, jd = self.core.jacobian(x[:self.n_core], rows, tilts, tilt_columns=tilts is not None)
        mc, n = dyn.shape
        nc = jd.shape[2] - (2 if tilts is not None else 0)  # core columns
        shift = nc - self.n_core
        full = np.zeros((mc, n, nc + self.n_m))
        full[:, :, :nc] = jd[:, :, :nc]
        m = dyn + self.background(x, rows)
        i_bg = self.i_bg + shift
        if self.n_bg:
            if meas.background == "per_beam":
                idx = np.arange(n)
                full[:, idx, i_bg + idx] = 1.0
            else:
                full[:, :, i_bg:i_bg + self.n_bg] = np.einsum("kt,kb->tbk", self.bg_t[:, rows],
                                                             self.bg_b)
        if tilts is not None:
            dth = jd[:, :, nc:nc + 2]  # ∂I/∂θ'_x, ∂I/∂θ'_y
            col = self.i_tilt + shift
            if meas.tilt_map == "affine":
                nominal = self.geometry.tilt_mrad[rows]
                for i in range(2):
                    for j in range(2):
                        full[:, :, col] = dth[:, :, i] * nominal[:, j, None]
                        col += 1
            full[:, :, col:col + 2] = dth
        if meas.scale == "global":
            s = float(x[self.i_scale])
            full *= s
            full[:, :, self.i_scale + shift] = m
            return s * m, full
        if meas.scale == "per_tilt":
            st = self.per_tilt_scale(m, rows)
            mask = self.mask[rows]
            denom = np.where(mask, m, 0.0).sum(axis=1)
            col_sums = np.einsum("tb,tbk->tk", mask.astype(float), full)
            full -= m[:, :, None] * (col_sums / denom[:, None])[:, None, :]
            full *= st[:, None, None]
            return st[:, None] * m, full
        return m, full
