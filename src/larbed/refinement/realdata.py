"""What real data need beyond the forward model: a hold-out set (R_free), a variance model for
normalised data without a dose, and the correlation of residuals between neighbouring tilts.

* :func:`holdout_tilts` picks a seeded random fraction of the measured tilts to leave out of the
  fit (their R under the refined model is R_free, SPEC §11).
* :func:`fit_variance_model` fits σ² = a + b·I to the squared residuals (binned by I): the
  weights of normalised data, where Poisson weights would need the lost dose.
* :func:`residual_correlation` is the correlation ρ of weighted residuals at nearest-neighbour
  tilts. Correlated residuals carry less information than (JᵀWJ)⁻¹ assumes; larbed inflates
  the standard errors by f = (1 + ρ)/(1 − ρ) (the variance factor of a separable first-order
  autoregressive field on a 2-D tilt lattice, ((1 + ρ)/(1 − ρ))², on σ its square root) when ρ is
  significant (above :data:`CORRELATION_SIGNIFICANCE` standard errors of an uncorrelated ρ).
* :func:`iam_prior` is a Gaussian prior toward the independent-atom U_g (width set by the user)
  that keeps U_g the data cannot measure where physics puts them.
"""

from __future__ import annotations

import logging

import numpy as np

from .._random import rng_from
from ..geometry import Geometry

__all__ = ["CORRELATION_SIGNIFICANCE", "MAX_INFLATION", "VARIANCE_FLOOR", "fit_variance_model",
           "holdout_tilts", "iam_prior", "inflation_factor", "residual_correlation"]

logger = logging.getLogger(__name__)

#: ρ counts as significant above this many standard errors (1/√n_pairs) of an uncorrelated ρ.
CORRELATION_SIGNIFICANCE = 3.0
#: The error inflation is capped here (ρ → 1 means the model misses a smooth signal: say so).
MAX_INFLATION = 10.0
#: The variance model's intercept is at least b × this fraction of the mean intensity.
VARIANCE_FLOOR = 0.01
#: Neighbouring tilts: closer than this many tilt steps.
NEIGHBOUR_STEPS = 1.5


def holdout_tilts(data: np.ndarray, fraction: float, seed) -> np.ndarray:
    """Sorted indices of a seeded random ``fraction`` of the measured tilts (empty for 0)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.number)) \
            or not np.isfinite(fraction):
        raise ValueError(f"holdout must be a fraction in [0, 0.5], got {fraction!r}")
    fraction = float(fraction)
    if not 0.0 <= fraction <= 0.5:
        raise ValueError(f"holdout must be a fraction in [0, 0.5] of the tilts, got {fraction}")
    measured = np.flatnonzero(np.any(np.isfinite(data), axis=1))
    n = int(round(fraction * len(measured)))
    if fraction > 0 and n == 0:
        raise ValueError(f"holdout={fraction} of {len(measured)} measured tilts is no tilt; "
                         "raise it or record more tilts")
    if n and len(measured) - n < 2:
        raise ValueError(f"holdout={fraction} leaves {len(measured) - n} tilt(s) to fit")
    rng = rng_from(seed)
    return np.sort(rng.choice(measured, size=n, replace=False)) if n else np.zeros(0, int)


def fit_variance_model(data: np.ndarray, model: np.ndarray) -> tuple[float, float]:
    """(a, b) of σ² = a + b·I fitted to the squared residuals (model − data)², binned by I.

    Binning by quantiles of I (20 bins) and non-negative least squares on the bin means keeps a
    few outliers from steering the fit; a ≥ :data:`VARIANCE_FLOOR` · b · mean(I).
    """
    from scipy.optimize import nnls

    ok = np.isfinite(data) & np.isfinite(model)
    inten, r2 = model[ok], (model[ok] - data[ok]) ** 2
    if inten.size < 4:
        raise ValueError("a variance model needs at least 4 measured values")
    edges = np.unique(np.quantile(inten, np.linspace(0, 1, 21)))
    which = np.clip(np.searchsorted(edges, inten, side="right") - 1, 0, max(len(edges) - 2, 0))
    mi = np.array([inten[which == k].mean() for k in range(len(edges) - 1) if np.any(which == k)])
    mr = np.array([r2[which == k].mean() for k in range(len(edges) - 1) if np.any(which == k)])
    (a, b), _ = nnls(np.stack([np.ones_like(mi), mi], axis=1), mr)
    # a floor on a: the variance of a weak value is at least that of a value at VARIANCE_FLOOR of
    # the mean intensity (else near-zero model values get near-infinite weights and a fit to
    # real data chases its weakest beams)
    a = max(float(a), VARIANCE_FLOOR * float(b) * float(inten.mean()), 1e-6 * float(r2.mean()),
            1e-300)
    return a, float(b)


def _neighbour_pairs(geometry: Geometry, rows: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    pts = geometry.tilt_mrad[rows]
    step = geometry.tilt_step_mrad or 1.0
    pairs = cKDTree(pts).query_pairs(NEIGHBOUR_STEPS * step, output_type="ndarray")
    return rows[pairs] if len(pairs) else np.zeros((0, 2), int)


def residual_correlation(geometry: Geometry, weighted_residual: np.ndarray,
                         fitted_tilts: np.ndarray) -> tuple[float, int]:
    """(ρ, number of pairs): correlation of weighted residuals (n_tilts, n_beams; NaN where not
    fitted) between nearest-neighbour tilts, over all beams."""
    pairs = _neighbour_pairs(geometry, fitted_tilts)
    if len(pairs) == 0:
        return float("nan"), 0
    a, b = weighted_residual[pairs[:, 0]], weighted_residual[pairs[:, 1]]
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return (float(np.sum(a * b) / den) if den > 0 else float("nan")), int(a.size)


def inflation_factor(rho: float, n_pairs: int) -> float:
    """σ factor (1 + ρ)/(1 − ρ) when ρ is significant and positive, else 1 (capped)."""
    if not np.isfinite(rho) or n_pairs == 0 or rho <= CORRELATION_SIGNIFICANCE / np.sqrt(n_pairs):
        return 1.0
    return float(min((1.0 + rho) / max(1.0 - rho, 1e-12), MAX_INFLATION))


def iam_prior(crystal, geometry: Geometry, *, relative: float = 0.1, absolute: float = 1e-3,
              parameterization: str = "lobato", min_g: float | None = None):
    """A Gaussian prior toward the independent-atom U_g, for :func:`larbed.refine` (``prior=``).

    σ_g = max(relative·|U_g^IAM|, absolute) [1/Å²]: the weak U_g that the data hardly see stay
    where the atoms put them, the strong ones are free to move by far more than their errors.

    Parameters
    ----------
    crystal : Crystal
        The atoms (with their Debye–Waller factors).
    geometry : Geometry
    relative : float
        Width as a fraction of |U_g| (> 0).
    absolute : float
        Smallest width [1/Å²] (> 0).
    parameterization : {'lobato', 'kirkland'}
    min_g : float, optional
        Only reflections with |g| ≥ this [1/Å] get a prior (the others: none, σ = inf).

    Returns
    -------
    (centre, sigma)
        ``centre`` (n_reflections,) complex IAM U_g; ``sigma`` (n_reflections,) [1/Å²].

    Examples
    --------
    >>> import larbed
    >>> xtal = larbed.Crystal.builtin("SrTiO3")
    >>> geo = larbed.Geometry(xtal, 120, (0, 0, 1), 13, 13, 50)
    >>> centre, sigma = iam_prior(xtal, geo, relative=0.05)
    >>> bool(sigma.min() >= 1e-3)
    True
    """
    from ..structure_factors import compute_ug

    for name, val in (("relative", relative), ("absolute", absolute)):
        if not np.isscalar(val) or not np.isfinite(val) or val <= 0:
            raise ValueError(f"iam_prior: {name} must be a positive number, got {val!r}")
    ug = compute_ug(crystal, geometry, parameterization)
    vals = np.asarray(ug.values, complex)
    sigma = np.maximum(relative * np.abs(vals), absolute)
    if min_g is not None:
        glen = np.linalg.norm(geometry.reflection_xy, axis=1)
        sigma = np.where(glen >= float(min_g), sigma, np.inf)
    return vals, sigma
