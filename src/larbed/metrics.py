"""Agreement measures between patterns."""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["r_factor"]


def _values(x, name: str) -> np.ndarray:
    if isinstance(x, xr.Dataset):
        if "intensity" not in x:
            raise ValueError(f"{name}: dataset has no 'intensity' variable")
        x = x["intensity"]
    arr = np.asarray(x.values if isinstance(x, xr.DataArray) else x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real intensities, got dtype {arr.dtype}")
    arr = arr.astype(float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite intensities")
    return arr


def r_factor(experiment, simulation) -> float:
    """R = Σ|I_exp − I_sim| / Σ I_exp (SPEC §6), dimensionless.

    Parameters
    ----------
    experiment, simulation : array_like, xarray.DataArray or xarray.Dataset
        Intensities of the same shape (a Dataset contributes its ``intensity``).

    Examples
    --------
    >>> r_factor([1.0, 1.0], [1.0, 0.5])
    0.25
    """
    a = _values(experiment, "experiment")
    b = _values(simulation, "simulation")
    if a.shape != b.shape:
        raise ValueError(f"patterns differ in shape: {a.shape} vs {b.shape}")
    denom = float(np.sum(a))
    if denom <= 0:
        raise ValueError("experimental intensities sum to zero or less; R is undefined")
    return float(np.sum(np.abs(a - b)) / denom)
