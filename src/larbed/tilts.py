"""Incident-beam tilt sets: the integer disc grid and measured (off-grid) tilts.

The disc grid holds the integer points (i, j) with i² + j² ≤ r²; measured tilts are any point
set [mrad]. :func:`measured_pixels` gives measured tilts integer image positions (for the 2-D
LARBED image and the tilt symmetry) without changing them.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["circle_tilt_count", "lattice_coordinates", "measured_pixels", "radius_for_count",
           "valid_tilt_counts"]

def circle_tilt_count(radius: int) -> int:
    """Number of integer points (i, j) with i² + j² ≤ radius².

    Examples
    --------
    >>> [circle_tilt_count(r) for r in (8, 9, 12, 16, 18)]
    [197, 253, 441, 797, 1009]
    """
    r = int(radius)
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    i = np.arange(-r, r + 1)
    return int(np.sum(i[:, None] ** 2 + i[None, :] ** 2 <= r * r))


def valid_tilt_counts(max_radius: int = 40) -> dict[int, int]:
    """Mapping tilt count → grid radius r for r = 0 … max_radius."""
    return {circle_tilt_count(r): r for r in range(max_radius + 1)}


def radius_for_count(n_tilts: int) -> int:
    if isinstance(n_tilts, bool) or not isinstance(n_tilts, (int, np.integer)):
        raise TypeError(f"n_tilts must be an integer, got {type(n_tilts).__name__}")
    n = int(n_tilts)
    counts = valid_tilt_counts(max(40, int(math.sqrt(max(n, 1) / math.pi)) + 3))
    if n in counts:
        return counts[n]
    options = sorted(counts, key=lambda c: (abs(c - n), c))[:4]
    raise ValueError(
        f"n_tilts={n} is not the number of points of a disc i² + j² ≤ r²; "
        f"nearest valid counts: {sorted(options)} (e.g. 197 (r=8), 441 (r=12), 797 (r=16))"
    )


def lattice_coordinates(arr: np.ndarray, step: float) -> np.ndarray | None:
    """Integer coordinates of the tilts on their own (possibly rotated, slightly distorted)
    lattice, or None when the tilts do not form one.

    The basis starts from the neighbours of the tilt nearest the centroid (the first vector the
    one nearest the x axis, the second the next non-collinear one) and is refitted to all tilts by
    least squares; every tilt must then lie within 0.25 cells of its own lattice point.
    """
    from scipy.spatial import cKDTree

    centre = arr.mean(axis=0)
    p0 = int(np.argmin(np.linalg.norm(arr - centre, axis=1)))
    near = arr[cKDTree(arr).query_ball_point(arr[p0], 1.6 * step)] - arr[p0]
    near = near[np.linalg.norm(near, axis=1) > 0.5 * step]
    if len(near) < 2:
        return None
    near = np.where((near[:, :1] < 0) | ((near[:, :1] == 0) & (near[:, 1:] < 0)), -near, near)
    b1 = near[np.argmin(np.abs(np.arctan2(near[:, 1], near[:, 0])))]
    cross = b1[0] * near[:, 1] - b1[1] * near[:, 0]
    ok = np.abs(cross) > 0.5 * np.linalg.norm(b1) * np.linalg.norm(near, axis=1)
    if not np.any(ok):
        return None
    cand = near[ok]
    b2 = cand[np.argmin(np.linalg.norm(cand, axis=1))]
    b2 = b2 if b1[0] * b2[1] - b1[1] * b2[0] > 0 else -b2
    basis = np.stack([b1, b2])
    rel = arr - arr[p0]
    for _ in range(3):
        coeff = np.linalg.solve(basis.T, rel.T).T
        ij = np.round(coeff)
        basis = np.linalg.lstsq(ij, rel, rcond=None)[0]
    coeff = np.linalg.solve(basis.T, rel.T).T
    ij = np.round(coeff).astype(int)
    if np.max(np.abs(coeff - ij)) > 0.25 or len(np.unique(ij, axis=0)) != len(ij):
        return None
    return ij - np.round(np.linalg.solve(basis.T, centre - arr[p0])).astype(int)


def measured_pixels(arr: np.ndarray, step: float) -> np.ndarray:
    """(M, 2) distinct integer pixels of measured tilts for the 2-D LARBED image: their lattice
    coordinates when they form a lattice, else the tilts rounded to a square grid of the tilt
    step (halved until no two tilts share a pixel)."""
    if len(arr) == 1 or step <= 0:
        return np.zeros((len(arr), 2), int)
    ij = lattice_coordinates(arr, step)
    if ij is not None:
        return ij
    centre = arr.mean(axis=0)
    pixel = step
    while True:
        ij = np.round((arr - centre) / pixel).astype(int)
        if len(np.unique(ij, axis=0)) == len(ij):
            return ij
        pixel /= 2.0
