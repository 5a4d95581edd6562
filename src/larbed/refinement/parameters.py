"""The parameters of a refinement: x = base + T q, symmetry ties, the origin gauge.

The full vector x = [Re U_p (P), Im U_p (P), t [nm], (κ)] holds every quantity the forward model
needs; the free parameters q are the symmetry-reduced ones (one Re, and Im unless real, per group of
tied U_g; t; κ). The origin shifts (U_g → U_g exp(2πi g·r0)) are exact null directions of the
intensities: :func:`gauge_basis` gives them in q.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import Geometry
from ..schema import check_thickness
from ..symmetry import SymmetryGroup, reflection_index

__all__ = ["GAUGE_RTOL", "MIN_THICKNESS_NM", "ParameterMap", "build_map", "check_start_thickness",
           "covariance_of_x", "free_x", "gauge_basis", "reflection_mask"]

#: Refinement keeps the thickness at or above this [nm] (a step below is clipped).
MIN_THICKNESS_NM = 0.1
#: An origin shift is a null direction of the constrained problem when the parametrization
#: reproduces it to this relative accuracy.
GAUGE_RTOL = 1e-8


@dataclass
class ParameterMap:
    """x = base + T q: the free parameters q and their place in the full vector x.

    The interface the solver uses — :attr:`n_q`, :meth:`x`, :meth:`dx`, :meth:`q`,
    :attr:`labels` — is what any parametrization provides (a nonlinear one, e.g. atomic
    coordinates mapped to U_g, gives dx(q) = ∂x/∂q at q).
    """

    base: np.ndarray
    t: np.ndarray
    labels: list[str]

    @property
    def n_q(self) -> int:
        """Number of free parameters."""
        return self.t.shape[1]

    def x(self, q):
        """The full vector [Re U (P), Im U (P), t [nm], (κ)] at the free parameters q."""
        return self.base + self.t @ q

    def dx(self, q=None) -> np.ndarray:
        """∂x/∂q (n_x, n_q); constant for this linear map."""
        return self.t

    def q(self, x):
        """The free parameters closest to a full vector x (least squares)."""
        # columns have disjoint supports with entries ±1: the projection is a signed mean
        norm = np.sum(self.t**2, axis=0)
        return (self.t.T @ (x - self.base)) / norm


def build_map(geometry: Geometry, x0: np.ndarray, *, groups: list[SymmetryGroup], real: bool, refine_thickness: bool,
               absorbing: bool, refine_absorption: bool, free_reflections=None,
               extra_free: np.ndarray | None = None, extra_labels: list[str] | None = None) -> ParameterMap:
    """x = base + T q. ``extra_free`` (bool, one per x entry after t and κ: the measurement part)
    marks the measurement parameters that are free; ``extra_labels`` names them."""
    p = geometry.n_reflections
    n_x = len(x0)
    cols: list[np.ndarray] = []
    labels: list[str] = []
    names = geometry.reflection_labels()
    free = np.ones(p, bool) if free_reflections is None else np.asarray(free_reflections, bool)
    covered = np.zeros(n_x, bool)
    for group in groups:
        is_real = real or group.real
        members = group.members
        if not any(free[q] for q, _ in members):
            continue
        col = np.zeros(n_x)
        for q, _ in members:
            col[q] = 1.0
        cols.append(col)
        labels.append(f"Re U({names[members[0][0]]})")
        for q, _ in members:
            covered[q] = True
            covered[p + q] = is_real  # a real group pins Im U to 0
        if not is_real:
            col = np.zeros(n_x)
            for q, s in members:
                col[p + q] = float(s)
                covered[p + q] = True
            cols.append(col)
            labels.append(f"Im U({names[members[0][0]]})")
    for flag, idx, label in ((refine_thickness, 2 * p, "t"),
                             (absorbing and refine_absorption, 2 * p + 1, "kappa")):
        if flag:
            col = np.zeros(n_x)
            col[idx] = 1.0
            cols.append(col)
            labels.append(label)
            covered[idx] = True
    n_core = 2 * p + 1 + int(absorbing)
    if extra_free is not None:
        for k in np.flatnonzero(extra_free):
            col = np.zeros(n_x)
            col[n_core + k] = 1.0
            cols.append(col)
            labels.append(extra_labels[k] if extra_labels is not None else f"x[{n_core + k}]")
            covered[n_core + k] = True
    t = np.stack(cols, axis=1) if cols else np.zeros((n_x, 0))
    base = np.where(covered, 0.0, x0)
    return ParameterMap(base, t, labels)


def gauge_basis(pmap, geometry: Geometry, q: np.ndarray) -> np.ndarray:
    """Orthonormal (n_q, k) basis of the origin-shift directions the parametrization allows at q."""
    x = pmap.x(q)
    d = pmap.dx(q)
    p = geometry.n_reflections
    ure, uim = x[:p], x[p:2 * p]
    vecs = []
    for axis in range(2):
        g = 2 * np.pi * geometry.reflection_xy[:, axis]
        n = np.zeros(len(x))
        n[:p], n[p:2 * p] = -g * uim, g * ure  # d/dr0 of U exp(2πi g·r0) at r0 = 0
        if not np.any(n):
            continue
        v, *_ = np.linalg.lstsq(d, n, rcond=None)
        if np.linalg.norm(d @ v - n) <= GAUGE_RTOL * np.linalg.norm(n):
            vecs.append(v)
    if not vecs:
        return np.zeros((pmap.n_q, 0))
    basis, sv, _ = np.linalg.svd(np.stack(vecs, axis=1), full_matrices=False)
    return basis[:, sv > 1e-12 * sv[0]]


def free_x(pmap, q) -> np.ndarray:
    """Boolean mask over x: the components the free parameters move (at q; None: the start)."""
    return np.any(pmap.dx(q) != 0, axis=1)


def covariance_of_x(pmap, q, cov_q: np.ndarray) -> np.ndarray:
    """Cov(x) = D Cov(q) Dᵀ with D = ∂x/∂q; a component touched by an infinite variance is inf."""
    d = pmap.dx(q)
    bad = ~np.isfinite(np.diag(cov_q))
    finite = np.where(np.isfinite(cov_q), cov_q, 0.0)
    cov_x = d @ finite @ d.T
    loose = np.any(d[:, bad] != 0, axis=1)
    cov_x[loose, :] = np.inf
    cov_x[:, loose] = np.inf
    return cov_x


def reflection_mask(geometry: Geometry, spec) -> np.ndarray | None:
    if spec is None:
        return None
    arr = np.asarray(spec) if not isinstance(spec, (list, tuple)) else None
    if arr is not None and arr.dtype == bool:
        if arr.shape != (geometry.n_reflections,):
            raise ValueError(f"refine_reflections mask must have shape ({geometry.n_reflections},)")
        return arr
    mask = np.zeros(geometry.n_reflections, bool)
    for key in spec:
        mask[reflection_index(geometry, key)[0]] = True
    return mask


def check_start_thickness(thickness_nm) -> float:
    if np.ndim(thickness_nm) != 0:
        raise ValueError(f"thickness must be a single number [nm], got shape {np.shape(thickness_nm)}")
    t = check_thickness(thickness_nm, "thickness_nm")[0]
    if t <= 0:
        raise ValueError(f"thickness must be > 0 nm, got {t}")
    return float(t)
