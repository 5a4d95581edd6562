"""Slow, obviously-correct references for tests and benchmarks.

Everything here is plain NumPy/SciPy written straight from the formulas, independent of the Numba
kernels and of the index bookkeeping in :mod:`larbed.simulation`:

* :func:`structure_matrices` builds the stacked structure matrices A (n_tilts, N, N) [1/Å²] with
  A_nn = -(2 k_t·g_n + |g_n|²) and A_nm = U_{g_n - g_m}, looking each U_g up by its (h, k, l).
* :func:`simulate_reference` diagonalises A/(2K) per tilt (``numpy.linalg.eigh``, or ``eig`` when
  absorbing) and forms ψ = C diag(exp(2πiγt)) C⁻¹ e₀.
* :func:`simulate_expm` forms ψ = expm(2πi t A/(2K)) e₀ with :func:`scipy.linalg.expm`.
* :func:`two_beam_intensity`, :func:`kinematic_intensity` and :func:`extinction_distance` are the
  closed forms (two-beam and thin-crystal limits).

The references run with one BLAS thread (``threadpoolctl``), which is both the fast setting for
small matrices and the fair baseline for benchmarks.

Examples
--------
>>> from larbed import Crystal, Geometry, compute_ug, simulate
>>> xtal = Crystal.builtin("SrTiO3")
>>> geo = Geometry(xtal, 120, (0, 0, 1), 13, 1, 70)
>>> ug = compute_ug(xtal, geo)
>>> ref = simulate_reference(geo, ug, 30.0)
>>> ref.shape
(1, 1, 13)
>>> import numpy as np
>>> bool(np.allclose(simulate(geo, ug, 30.0).intensity, ref[0], rtol=0, atol=1e-12))
True
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import scipy.linalg
import xarray as xr
from threadpoolctl import threadpool_limits

from ..geometry import Geometry

__all__ = [
    "structure_matrices",
    "propagate",
    "simulate_reference",
    "simulate_expm",
    "two_beam_intensity",
    "kinematic_intensity",
    "extinction_distance",
]

logger = logging.getLogger(__name__)


def _ug_lookup(geometry: Geometry, ug) -> dict[tuple[int, int, int], complex]:
    """Signed-reflection table (h, k, l) → U [1/Å²], both g and -g (U_{-g} = U_g*)."""
    if isinstance(ug, Mapping):
        items = [(tuple(int(x) for x in k), complex(v)) for k, v in ug.items()]
    else:
        values = np.asarray(ug.values if isinstance(ug, xr.DataArray) else ug, dtype=complex)
        if values.shape != (geometry.n_reflections,):
            raise ValueError(f"U_g must have shape ({geometry.n_reflections},), got {values.shape}")
        if isinstance(ug, xr.DataArray) and "h" in ug.coords:
            hkl = np.stack([ug.h.values, ug.k.values, ug.l.values], axis=1)
        else:
            hkl = geometry.reflection_hkl
        items = [(tuple(int(x) for x in h), complex(v)) for h, v in zip(hkl, values, strict=True)]
    table: dict[tuple[int, int, int], complex] = {}
    for hkl, v in items:
        table[hkl] = v
        table[tuple(-x for x in hkl)] = v.conjugate()
    return table


def _u0(ug, u0: float | None) -> float:
    if u0 is not None:
        return float(u0)
    if isinstance(ug, xr.DataArray):
        return float(ug.attrs.get("u0", 0.0))
    return 0.0


def structure_matrices(
    geometry: Geometry, ug, absorption: float | None = None, *, u0: float | None = None
) -> np.ndarray:
    """Stacked structure matrices A, one per tilt.

    Parameters
    ----------
    geometry : Geometry
        Beams and tilts.
    ug : xarray.DataArray, array_like or mapping
        One U_g per Friedel pair [1/Å²] (DataArray labelled by h, k, l; array in the order of
        ``geometry.reflection_hkl``; or mapping (h, k, l) → U_g).
    absorption : float, optional
        Proportional absorption κ: U_g → (1 + iκ) U_g off the diagonal and iκU_0 added on it.
    u0 : float, optional
        U_0 [1/Å²] for the absorptive diagonal; default ``ug.attrs['u0']`` or 0. Without
        absorption U_0 is not used (it only shifts every eigenvalue).

    Returns
    -------
    numpy.ndarray
        (n_tilts, n_beams, n_beams) complex, A_nn = -(2 k_t·g_n + |g_n|²) (+ iκU_0),
        A_nm = U_{g_n - g_m} (× (1 + iκ)) [1/Å²].
    """
    table = _ug_lookup(geometry, ug)
    hkl = np.asarray(geometry.hkl, dtype=int)
    n = len(hkl)
    off = np.zeros((n, n), dtype=complex)
    for a in range(n):
        for b in range(n):
            if a != b:
                d = tuple(int(x) for x in hkl[a] - hkl[b])
                off[a, b] = table[d]
    kappa = 0.0 if absorption is None else float(absorption)
    off *= 1.0 + 1j * kappa
    # Beams in Cartesian and in the in-plane frame, recomputed from hkl (independent of g_xy).
    g = hkl @ geometry.crystal.reciprocal_vectors
    gx, gy = g @ geometry.frame[0], g @ geometry.frame[1]
    k_t = np.asarray(geometry.tilt_mrad, dtype=float) * 1e-3 / geometry.wavelength
    diag = -(2.0 * (k_t[:, :1] * gx[None, :] + k_t[:, 1:] * gy[None, :]) + np.sum(g * g, axis=1))
    mats = np.repeat(off[None, :, :], len(k_t), axis=0)
    idx = np.arange(n)
    mats[:, idx, idx] = diag + 1j * kappa * _u0(ug, u0)
    return mats


def propagate(matrices: np.ndarray, k0: float, thickness_nm) -> np.ndarray:
    """Intensities |exp(2πi t A/(2K)) e₀|² by eigen-decomposition, one per matrix.

    Parameters
    ----------
    matrices : ndarray
        (n_tilts, N, N) structure matrices [1/Å²]; Hermitian ones use ``eigh``, others ``eig``.
    k0 : float
        Wave number K = 1/λ [1/Å].
    thickness_nm : float or sequence of float
        Thicknesses [nm].

    Returns
    -------
    numpy.ndarray
        (n_thickness, n_tilts, N) intensities.
    """
    mats = np.asarray(matrices, dtype=complex) / (2.0 * k0)
    t = np.atleast_1d(np.asarray(thickness_nm, dtype=float)) * 10.0  # Å
    n_tilts, n, _ = mats.shape
    out = np.empty((len(t), n_tilts, n))
    hermitian = bool(np.allclose(mats, np.conj(np.swapaxes(mats, 1, 2)), rtol=0, atol=0))
    e0 = np.zeros(n, dtype=complex)
    e0[0] = 1.0
    with threadpool_limits(limits=1, user_api="blas"):
        for m in range(n_tilts):
            if hermitian:
                w, c = np.linalg.eigh(mats[m])
                x = c.conj().T @ e0
            else:
                w, c = np.linalg.eig(mats[m])
                x = np.linalg.solve(c, e0)
            for it, tt in enumerate(t):
                psi = c @ (np.exp(2j * np.pi * w * tt) * x)
                out[it, m] = np.abs(psi) ** 2
    return out


def simulate_reference(
    geometry: Geometry,
    ug,
    thickness_nm,
    absorption: float | None = None,
    *,
    u0: float | None = None,
) -> np.ndarray:
    """Plain NumPy Bloch-wave reference (eigen route).

    Parameters
    ----------
    geometry : Geometry
    ug : xarray.DataArray, array_like or mapping
        Structure factors [1/Å²] (see :func:`structure_matrices`).
    thickness_nm : float or sequence of float
        Thicknesses [nm].
    absorption : float, optional
        Proportional absorption κ (general eigensolver).
    u0 : float, optional
        U_0 [1/Å²] for the absorptive diagonal (default ``ug.attrs['u0']`` or 0).

    Returns
    -------
    numpy.ndarray
        (n_thickness, n_tilts, n_beams) intensities, always three-dimensional.
    """
    mats = structure_matrices(geometry, ug, absorption, u0=u0)
    return propagate(mats, geometry.k0, thickness_nm)


def simulate_expm(
    geometry: Geometry,
    ug,
    thickness_nm,
    absorption: float | None = None,
    *,
    u0: float | None = None,
) -> np.ndarray:
    """Matrix-exponential reference: I = |expm(2πi t A/(2K)) e₀|² with :func:`scipy.linalg.expm`.

    Same arguments and result layout as :func:`simulate_reference`.
    """
    mats = structure_matrices(geometry, ug, absorption, u0=u0) / (2.0 * geometry.k0)
    t = np.atleast_1d(np.asarray(thickness_nm, dtype=float)) * 10.0
    out = np.empty((len(t), mats.shape[0], mats.shape[1]))
    with threadpool_limits(limits=1, user_api="blas"):
        for m in range(mats.shape[0]):
            for it, tt in enumerate(t):
                psi = scipy.linalg.expm(2j * np.pi * tt * mats[m])[:, 0]
                out[it, m] = np.abs(psi) ** 2
    return out


def two_beam_intensity(u, d, t):
    """Two-beam diffracted intensity.

    Parameters
    ----------
    u : complex or array_like
        U_g / (2K) [1/Å].
    d : float or array_like
        Diagonal element A_gg / (2K) [1/Å] (excitation error).
    t : float or array_like
        Thickness [Å].

    Returns
    -------
    numpy.ndarray
        I_g = |u|² sin²(2πΔt) / Δ² with Δ = sqrt(d²/4 + |u|²).

    Examples
    --------
    >>> round(float(two_beam_intensity(0.01, 0.0, 25.0)), 12)  # t = ξ/2: full transfer
    1.0
    """
    u2 = np.abs(np.asarray(u)) ** 2
    d = np.asarray(d, dtype=float)
    delta = np.sqrt(d * d / 4.0 + u2)
    return u2 * np.sin(2 * np.pi * delta * np.asarray(t, dtype=float)) ** 2 / delta**2


def kinematic_intensity(u, s, t):
    """Thin-crystal (kinematic) intensity.

    Parameters
    ----------
    u : complex or array_like
        U_g / (2K) [1/Å].
    s : float or array_like
        s_g = A_gg / (2K) [1/Å].
    t : float or array_like
        Thickness [Å].

    Returns
    -------
    numpy.ndarray
        (π t |U_g| / K)² sinc²(π s t) = (2π |u| t)² sinc²(π s t), sinc x = sin x / x.
    """
    t = np.asarray(t, dtype=float)
    amp = 2 * np.pi * np.abs(np.asarray(u)) * t
    return amp**2 * np.sinc(np.asarray(s, dtype=float) * t) ** 2  # np.sinc(x) = sin(πx)/(πx)


def extinction_distance(ug, k0: float):
    """Two-beam extinction distance ξ_g = K / |U_g| [Å] (U_g in 1/Å², K in 1/Å)."""
    return k0 / np.abs(np.asarray(ug))
