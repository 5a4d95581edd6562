"""Plain NumPy Bloch-wave baseline for the speed comparison (SPEC §2, issue 2 "Speed").

Vectorised over tilts, the way one would write it with NumPy alone:

1. stack the structure matrices A/(2K) of all tilts, (M, N, N) — real when every U_g is real,
   complex Hermitian otherwise;
2. ``numpy.linalg.eigh`` on the whole stack (LAPACK ``syevd``/``heevd`` per matrix);
3. ψ(t) = C diag(exp(2πiγt)) C^H e₀ for all thicknesses at once: one (N × N) @ (N × T) product
   per tilt through stacked ``matmul``.

Run it under one BLAS thread (``threadpoolctl.threadpool_limits(1)``): with several threads these
small eigenproblems only get slower (SPEC §10). This is deliberately a good NumPy program, not a
strawman: a real-symmetric solver for real U_g and no Python loop over tilts or thicknesses.
"""

from __future__ import annotations

import numpy as np

TWO_PI = 2.0 * np.pi


def stack_matrices(offdiag: np.ndarray, diag: np.ndarray) -> np.ndarray:
    """(M, N, N) matrices: ``offdiag`` (N, N, zero diagonal) with ``diag[m]`` on the diagonal."""
    n_tilts, n = diag.shape
    mats = np.empty((n_tilts, n, n), dtype=np.result_type(offdiag, diag))
    mats[:] = offdiag
    idx = np.arange(n)
    mats[:, idx, idx] = diag
    return mats


def intensities(offdiag: np.ndarray, diag: np.ndarray, thickness_a: np.ndarray) -> np.ndarray:
    """Beam intensities (T, M, N) of the stacked Hermitian matrices.

    Parameters
    ----------
    offdiag : ndarray
        (N, N) U_{g_n - g_m}/(2K) [1/Å], zero diagonal; float64 (real U_g) or complex128.
    diag : ndarray
        (M, N) -(2 k_t·g_n + |g_n|²)/(2K) [1/Å].
    thickness_a : ndarray
        (T,) thicknesses [Å].
    """
    mats = stack_matrices(offdiag, diag)
    w, c = np.linalg.eigh(mats)  # (M, N), (M, N, N); columns of c are eigenvectors
    x = np.conj(c[:, 0, :])  # C^H e0
    phase = TWO_PI * w[:, :, None] * np.asarray(thickness_a, dtype=float)[None, None, :]
    if np.isrealobj(c):
        re = c @ (np.cos(phase) * x[:, :, None])  # (M, N, T)
        im = c @ (np.sin(phase) * x[:, :, None])
        out = re * re + im * im
    else:
        psi = c @ (np.exp(1j * phase) * x[:, :, None])
        out = psi.real**2 + psi.imag**2
    return np.ascontiguousarray(out.transpose(2, 0, 1))
