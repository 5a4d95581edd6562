"""Agreement measures between patterns."""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["check_dose", "dose_column", "expected_noise_r", "poisson_deviance", "r_factor"]


def _values(x, name: str, missing: bool = False) -> np.ndarray:
    if isinstance(x, xr.Dataset):
        if "intensity" not in x:
            raise ValueError(f"{name}: dataset has no 'intensity' variable")
        x = x["intensity"]
    arr = np.asarray(x.values if isinstance(x, xr.DataArray) else x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real intensities, got dtype {arr.dtype}")
    arr = arr.astype(float)
    if np.any(np.isinf(arr)) or (not missing and np.any(np.isnan(arr))):
        raise ValueError(f"{name} contains {'infinite' if missing else 'NaN or infinite'} "
                         "intensities")
    return arr


def r_factor(experiment, simulation) -> float:
    """R = Σ|I_exp − I_sim| / Σ I_exp, dimensionless, over the measured values.

    Parameters
    ----------
    experiment, simulation : array_like, xarray.DataArray or xarray.Dataset
        Intensities of the same shape (a Dataset contributes its ``intensity``). NaN in
        ``experiment`` marks a value that was not measured (e.g. from :func:`larbed.read_csv`) and
        counts nowhere.

    Examples
    --------
    >>> r_factor([1.0, 1.0], [1.0, 0.5])
    0.25
    >>> r_factor([1.0, float("nan")], [0.5, 3.0])
    0.5
    """
    a = _values(experiment, "experiment", missing=True)
    b = _values(simulation, "simulation")
    if a.shape != b.shape:
        raise ValueError(f"patterns differ in shape: {a.shape} vs {b.shape}")
    measured = ~np.isnan(a)
    if not measured.any():
        raise ValueError("experiment has no measured (non-NaN) intensity; R is undefined")
    a, b = a[measured], b[measured]
    denom = float(np.sum(a))
    if denom <= 0:
        raise ValueError("experimental intensities sum to zero or less; R is undefined")
    return float(np.sum(np.abs(a - b)) / denom)


#: Largest dose [electrons per tilt] larbed accepts (numpy's Poisson sampler stops near 1e18; no
#: detector counts this many, and noise-free data need no dose at all).
MAX_DOSE = 1e15


def check_dose(dose, n_tilts: int | None = None, name: str = "dose"):
    """Validate a dose [electrons per tilt]: a positive number or an (n_tilts,) array of them.

    Returns a float or a 1-D float array.
    """
    arr = np.asarray(dose)
    if arr.dtype.kind not in "fiu" or arr.dtype.kind == "b":
        raise TypeError(f"{name} must be a number of electrons per tilt, got {dose!r}")
    arr = arr.astype(float)
    if arr.ndim > 1 or (arr.ndim == 1 and n_tilts is not None and arr.shape != (n_tilts,)):
        raise ValueError(f"{name} must be a number or one value per tilt ({n_tilts},), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be a positive number of electrons per tilt, got {dose!r}")
    if np.any(arr > MAX_DOSE):
        raise ValueError(
            f"{name} = {float(np.max(arr)):g} electrons per tilt is beyond {MAX_DOSE:g}; for "
            "noise-free data give no dose"
        )
    return float(arr) if arr.ndim == 0 else arr


def dose_column(dose):
    """A dose broadcastable against (tilt, beam) arrays: the float, or an (n_tilts, 1) array."""
    return dose if np.ndim(dose) == 0 else np.asarray(dose, float)[:, None]


def expected_noise_r(intensity, dose) -> float:
    """Expected R between Poisson data and their mean: the noise floor of R.

    R = Σ|I_data − I| / Σ I for data Poisson(D·I)/D. Each term uses the exact mean absolute
    deviation of a Poisson variable, E|X − μ| = 2μ P(X = ⌊μ⌋) (μ = D·I), so the floor is right at
    low counts too (the large-count form √(2I/(πD)) overestimates it there).

    Parameters
    ----------
    intensity : array_like
        (n_tilts, n_beams) mean intensities (the fit, or noise-free data).
    dose : float or (n_tilts,) array
        Electrons per tilt.

    Examples
    --------
    >>> round(expected_noise_r([[0.5, 0.5]], 1e4) / (2 * (2 * 0.5 / (3.14159 * 1e4)) ** 0.5), 3)
    1.0
    """
    from scipy.stats import poisson

    inten = np.clip(np.asarray(intensity, float), 0.0, None)
    d = dose_column(dose)
    mu = inten * d
    mad = 2.0 * mu * poisson.pmf(np.floor(mu), mu)
    total = float(inten.sum())
    return float(np.sum(mad / d) / total) if total > 0 else 0.0


def poisson_deviance(observed, fitted, dose) -> float:
    """Poisson deviance 2 Σ [μ − y + y ln(y/μ)] of counts y = dose·I_obs, μ = dose·I_fit."""
    d = dose_column(dose)
    y = d * np.asarray(observed, float)
    mu = d * np.maximum(np.asarray(fitted, float), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0) / mu), 0.0)
    return float(2.0 * np.sum(mu - y + term))
