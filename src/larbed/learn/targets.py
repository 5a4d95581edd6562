"""Learning targets: the vector [Re U (M), Im U (M), t / 1000 Å] a network predicts (thesis 3.1.3).

The thickness component is t [Å] / 1000 = t [nm] / 100; :func:`make_targets` builds the vector from
U_g and t, :func:`split_targets` takes it apart again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..geometry import Geometry

__all__ = [
    "THICKNESS_TARGET_NM",
    "check_thickness_range",
    "make_targets",
    "split_targets",
    "target_labels",
]

#: Thickness target unit: target = t [Å] / 1000 = t [nm] / 100 (thesis 3.1.3).
THICKNESS_TARGET_NM = 100.0


def make_targets(ug_values: np.ndarray, thickness_nm) -> np.ndarray:
    """Learning targets [Re U, Im U, t/1000 Å] of shape (..., 2M + 1) from U_g (..., M) and t [nm]."""
    u = np.asarray(ug_values, dtype=complex)
    t = np.asarray(thickness_nm, dtype=float)[..., None] / THICKNESS_TARGET_NM
    return np.concatenate([u.real, u.imag, np.broadcast_to(t, u.shape[:-1] + (1,))], axis=-1)


def split_targets(
    targets: np.ndarray, thickness_range_nm: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`make_targets`: (U_g complex (..., M) [1/Å²], thickness (...) [nm]).

    The thickness is |t| (a network may predict a negative value), clipped to
    ``thickness_range_nm`` when given.
    """
    y = np.asarray(targets, dtype=float)
    if y.shape[-1] % 2 != 1 or y.shape[-1] < 3:
        raise ValueError(f"targets must have odd length 2M + 1 >= 3, got {y.shape[-1]}")
    m = (y.shape[-1] - 1) // 2
    ug = y[..., :m] + 1j * y[..., m : 2 * m]
    t = np.abs(y[..., 2 * m]) * THICKNESS_TARGET_NM
    if thickness_range_nm is not None:
        lo, hi = check_thickness_range(thickness_range_nm)
        t = np.clip(t, lo, hi)
    return ug, t


def target_labels(geometry: Geometry) -> list[str]:
    """Names of the 2M + 1 target components, e.g. ``'Re 1 0 0'``, ``'Im 1 0 0'``, ``'t/1000A'``."""
    labels = geometry.reflection_labels()
    return [f"Re {x}" for x in labels] + [f"Im {x}" for x in labels] + ["t/1000A"]


def check_thickness_range(thickness_range_nm) -> tuple[float, float]:
    """``(low, high)`` [nm] as floats, checked: finite, ``0 < low <= high``."""
    arr = np.asarray(thickness_range_nm, dtype=float)
    if arr.shape != (2,) or not np.all(np.isfinite(arr)) or arr[0] <= 0 or arr[1] < arr[0]:
        raise ValueError(
            f"thickness_range_nm must be (low, high) with 0 < low <= high [nm], got {thickness_range_nm!r}"
        )
    return float(arr[0]), float(arr[1])
