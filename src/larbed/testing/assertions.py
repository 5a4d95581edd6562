"""Shared assertions for tests: patterns equal to a tolerance, with a message that names the worst
element."""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["assert_patterns_allclose"]


def _values(x) -> np.ndarray:
    if isinstance(x, xr.Dataset):
        x = x["intensity"]
    if isinstance(x, xr.DataArray):
        return np.asarray(x.values)
    return np.asarray(x)


def assert_patterns_allclose(
    actual, desired, rtol: float = 1e-10, atol: float = 1e-12, err_msg: str = ""
) -> None:
    """Assert two patterns agree: same shape and |a - b| ≤ atol + rtol·|b| everywhere.

    Accepts Datasets (their ``intensity``), DataArrays (dims must match when both are labelled) or
    arrays. The failure message names the worst (tilt, beam) element.
    """
    if isinstance(actual, xr.DataArray) and isinstance(desired, xr.DataArray):
        if actual.dims != desired.dims:
            raise AssertionError(f"pattern dims differ: {actual.dims} vs {desired.dims}")
    a, b = _values(actual), _values(desired)
    if a.shape != b.shape:
        raise AssertionError(f"pattern shapes differ: {a.shape} vs {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise AssertionError("patterns contain NaN or infinite values")
    err = np.abs(a - b)
    excess = err - (atol + rtol * np.abs(b))
    if np.any(excess > 0):
        worst = np.unravel_index(int(np.argmax(excess)), a.shape)
        raise AssertionError(
            f"patterns differ: {int(np.sum(excess > 0))} of {a.size} elements beyond "
            f"atol={atol:g}, rtol={rtol:g}; worst at index {tuple(int(i) for i in worst)}: "
            f"{a[worst]!r} vs {b[worst]!r} (max abs diff {err.max():.3g}) {err_msg}"
        )
