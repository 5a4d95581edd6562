"""The noise floor of a pattern: the R a perfect model would reach, estimated from the data alone.

Method (local-polynomial differences). Where the signal varies smoothly from tilt to tilt at the
scale of the tilt step, its counting noise does not. Real LARBED patterns are sharp on that
scale in their high-order beams, so the differences are taken of the residual D − M of a model M
(a fit; the residual of a good model is smooth where the data are not). For every tilt t, the K
nearest measured tilts predict its residual by a least-squares polynomial of second order in the
tilt offset, ê_tb = Σ_k w_tk e_kb (the same weights w_t for every beam); with independent noise of
variance v(I), the difference δ_tb = e_tb − ê_tb has variance v(I_tb) + Σ_k w_tk² v(I_kb) plus
the (small) part of the misfit a quadratic cannot follow. The variance model v(I) = a + b·I is fitted to
δ² by non-negative least squares, E[δ²] = a (1 + Σ_k w_tk²) + b (I_tb + Σ_k w_tk² I_kb), weighted
by the predicted variance of δ²; the floor is then

    R_floor = √(2/π) Σ_tb √v(Î_tb) / Σ_tb D_tb

(the mean absolute value of Gaussian noise of that variance, over the data). Systematic misfit
that a quadratic cannot follow biases the estimate upwards (it is then an upper bound of the
floor). Validated in the tests on simulated patterns with known Poisson noise and models a few
per cent off in U_g.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .geometry import Geometry
from .schema import check_pattern

__all__ = ["NoiseFloor", "noise_floor"]

logger = logging.getLogger(__name__)

#: Neighbouring tilts used for the local prediction of each tilt.
DEFAULT_NEIGHBOURS = 12


@dataclass(frozen=True)
class NoiseFloor:
    """An estimated noise floor.

    Attributes
    ----------
    r_floor : float
        R a perfect model would reach (from the fitted variance model).
    a, b : float
        The variance model σ² = a + b·I [intensity², intensity]; with Poisson noise of dose d per
        tilt (unit intensity ↔ d counts) b ≈ 1/d.
    r_by_shell : dict
        The floor per |g| shell (label → R of that shell's beams).
    n_values : int
        Data points used.
    """

    r_floor: float
    a: float
    b: float
    r_by_shell: dict
    n_values: int


def _prediction_weights(geometry: Geometry, rows: np.ndarray, k: int):
    """Neighbour indices (n, k) and weights (n, k) of the local quadratic predictor."""
    from scipy.spatial import cKDTree

    pts = geometry.tilt_mrad[rows]
    k = min(k, len(rows) - 1)
    _, nb = cKDTree(pts).query(pts, k=k + 1)
    nb = nb[:, 1:]
    step = geometry.tilt_step_mrad or 1.0
    weights = np.zeros(nb.shape)
    for i in range(len(rows)):
        d = (pts[nb[i]] - pts[i]) / step
        design = np.stack([np.ones(k), d[:, 0], d[:, 1], d[:, 0] ** 2, d[:, 0] * d[:, 1],
                           d[:, 1] ** 2], axis=1)[:, :min(6, k)]
        pinv = np.linalg.pinv(design)
        weights[i] = pinv[0]
    return nb, weights


def noise_floor(pattern, geometry: Geometry, model=None, *,
                neighbours: int = DEFAULT_NEIGHBOURS) -> NoiseFloor:
    """Estimate the noise floor of ``pattern`` (see the module docstring for the method).

    Parameters
    ----------
    pattern : xarray.Dataset, DataArray or ndarray
        Intensities over (tilt, beam); NaN where not measured.
    geometry : Geometry
        Its tilts define the neighbours (at least ``neighbours + 1`` measured tilts).
    model : array_like (n_tilts, n_beams), optional
        A model of the pattern (e.g. a fit). The local differences are then taken of the residual
        D − model, which is far smoother than the data when the pattern has structure at the
        scale of the tilt step (thick crystals, high-order beams); the variance is modelled in
        terms of the model intensity. Without it the data themselves are differenced (biased
        upwards wherever the rocking curves are sharp on the tilt step).
    neighbours : int
        Tilts in each local fit (≥ 7 for the six quadratic terms).

    Returns
    -------
    NoiseFloor

    Examples
    --------
    >>> import larbed
    >>> xtal = larbed.Crystal.builtin("SrTiO3")
    >>> geo = larbed.Geometry(xtal, 120, (0, 0, 1), 13, 441, 40)
    >>> data = larbed.simulate(geo, larbed.compute_ug(xtal, geo), 10.0, dose=1e4, seed=0)
    >>> est = noise_floor(data, geo, data.intensity_noise_free.values)  # the true model
    >>> round(est.b * 1e4, 1)  # the Poisson variance I/dose: b ≈ 1/dose
    1.0
    """
    from scipy.optimize import nnls

    data = check_pattern(pattern, geometry, scaled=True)
    if isinstance(neighbours, bool) or not isinstance(neighbours, (int, np.integer)) or neighbours < 7:
        raise ValueError(f"neighbours must be an integer >= 7, got {neighbours!r}")
    rows = np.flatnonzero(np.any(np.isfinite(data), axis=1))
    if len(rows) <= neighbours:
        raise ValueError(f"a noise-floor estimate needs more than {neighbours} measured tilts, "
                         f"got {len(rows)}")
    nb, w = _prediction_weights(geometry, rows, int(neighbours))
    d = data[rows]
    if model is None:
        signal = d
        pred = np.einsum("tk,tkb->tb", w, d[nb])
        delta = d - pred
    else:
        mod = np.asarray(model, float)
        if mod.shape != data.shape:
            raise ValueError(f"model has shape {mod.shape}; the pattern has {data.shape}")
        signal = mod[rows]
        e = d - signal
        delta = e - np.einsum("tk,tkb->tb", w, e[nb])
        pred = signal
    # E[δ²] = v(I_t) + Σ_k w_k² v(I_k) with v(I) = a + b I: linear in (a, b) with known regressors
    w2 = np.sum(w**2, axis=1)
    inten = np.clip(pred, 0.0, None)
    c1 = np.broadcast_to((1.0 + w2)[:, None], delta.shape)
    c2 = inten + np.einsum("tk,tkb->tb", w**2, np.clip(signal, 0.0, None)[nb])
    ok = np.isfinite(delta) & np.isfinite(d) & np.isfinite(signal) & np.isfinite(c2)
    design = np.stack([c1[ok], c2[ok]], axis=1)
    target = delta[ok] ** 2
    (a, b), _ = nnls(design, target)
    for _ in range(2):  # weighted by the predicted variance of δ² (∝ its square): efficient
        var = np.maximum(design @ np.array([a, b]), 1e-300)
        (a, b), _ = nnls(design / var[:, None], target / var)
    sigma = np.sqrt(np.clip(a + b * np.clip(pred, 0.0, None), 0.0, None))
    sig_all = np.where(ok, sigma, 0.0)
    d_all = np.where(ok, d, 0.0)
    r_floor = float(np.sqrt(2 / np.pi) * sig_all.sum() / d_all.sum())
    shells = {}
    glen = np.round(geometry.g_abs, 6)
    for g in np.unique(glen):
        cols = glen == g
        den = d_all[:, cols].sum()
        if den > 0:
            lab = " ".join(str(int(v)) for v in np.abs(geometry.hkl[np.flatnonzero(cols)[0]]))
            shells[f"{{{lab}}}"] = float(np.sqrt(2 / np.pi) * sig_all[:, cols].sum() / den)
    logger.info("noise floor: R = %.3g (σ² = %.3g + %.3g·I, %d values)", r_floor, a, b, int(ok.sum()))
    return NoiseFloor(r_floor=r_floor, a=float(a), b=float(b), r_by_shell=shells, n_values=int(ok.sum()))
