"""Bloch-wave kernels: one eigen-decomposition per tilt, reused for every thickness.

All kernels loop over tilts with ``prange``. Inputs are pre-scaled by 1/(2K): ``offdiag`` holds
U_{g_n-g_m}/(2K) (zero diagonal) and ``diag`` holds -(2 k_t·g_n + |g_n|²)/(2K) per tilt, both in
1/Å; thicknesses are in Å. The caller must limit BLAS to one thread (threadpoolctl).
"""

import numpy as np
from numba import njit, prange

TWO_PI = 2.0 * np.pi


@njit(cache=True)
def _matrix_at(offdiag, diag, m):
    """Structure matrix of tilt m: ``offdiag`` with ``diag[m]`` on its diagonal (a new array)."""
    a = offdiag.copy()
    for i in range(offdiag.shape[0]):
        a[i, i] = diag[m, i]
    return a


@njit(parallel=True, cache=True)
def intensities_real(offdiag, diag, thickness, out):
    """Real symmetric structure matrices. out: (n_thickness, n_tilts, n_beams)."""
    n_tilts, n = diag.shape
    n_t = thickness.shape[0]
    for m in prange(n_tilts):
        a = _matrix_at(offdiag, diag, m)
        w, c = np.linalg.eigh(a)
        x = c[0, :].copy()
        for it in range(n_t):
            ph = TWO_PI * w * thickness[it]
            vr = np.cos(ph) * x
            vi = np.sin(ph) * x
            pr = c @ vr
            pi = c @ vi
            for i in range(n):
                out[it, m, i] = pr[i] * pr[i] + pi[i] * pi[i]


@njit(parallel=True, cache=True)
def intensities_hermitian(offdiag, diag, thickness, out):
    """Complex Hermitian structure matrices. out: (n_thickness, n_tilts, n_beams)."""
    n_tilts, n = diag.shape
    n_t = thickness.shape[0]
    for m in prange(n_tilts):
        a = _matrix_at(offdiag, diag, m)
        w, c = np.linalg.eigh(a)
        x = np.conj(c[0, :])
        for it in range(n_t):
            v = np.exp(1j * TWO_PI * w * thickness[it]) * x
            psi = c @ v
            for i in range(n):
                out[it, m, i] = psi[i].real * psi[i].real + psi[i].imag * psi[i].imag


@njit(parallel=True, cache=True)
def intensities_general(offdiag, diag, thickness, out):
    """General (absorbing, non-Hermitian) structure matrices; ``diag`` is complex."""
    n_tilts, n = diag.shape
    n_t = thickness.shape[0]
    for m in prange(n_tilts):
        a = _matrix_at(offdiag, diag, m)
        w, c = np.linalg.eig(a)
        e0 = np.zeros(n, dtype=np.complex128)
        e0[0] = 1.0
        x = np.linalg.solve(c, e0)
        for it in range(n_t):
            v = np.exp(1j * TWO_PI * w * thickness[it]) * x
            psi = c @ v
            for i in range(n):
                out[it, m, i] = psi[i].real * psi[i].real + psi[i].imag * psi[i].imag


@njit(parallel=True, cache=True)
def eigensystems_hermitian(offdiag, diag, w_out, c_out):
    """Eigenvalues (n_tilts, n) and eigenvectors (n_tilts, n, n) of Hermitian matrices."""
    n_tilts, n = diag.shape
    for m in prange(n_tilts):
        a = _matrix_at(offdiag, diag, m)
        w, c = np.linalg.eigh(a)
        w_out[m, :] = w
        c_out[m, :, :] = c


@njit(parallel=True, cache=True)
def eigensystems_general(offdiag, diag, w_out, c_out, cinv0_out):
    """Eigenvalues, eigenvectors and C⁻¹e₀ of general complex matrices."""
    n_tilts, n = diag.shape
    for m in prange(n_tilts):
        a = _matrix_at(offdiag, diag, m)
        w, c = np.linalg.eig(a)
        e0 = np.zeros(n, dtype=np.complex128)
        e0[0] = 1.0
        w_out[m, :] = w
        c_out[m, :, :] = c
        cinv0_out[m, :] = np.linalg.solve(c, e0)
