"""Structure matrices and the Bloch-wave kernels: the one module that calls :mod:`larbed._kernels`.

* :func:`prepare_matrices` turns U_g (and absorption) into the kernels' scaled inputs and picks the
  eigensolver path: real symmetric when every U_g is real, complex Hermitian, or general when
  absorbing;
* :func:`intensities`, :func:`jacobian` and :func:`eigensystems` run the kernel of that path over all
  tilts, with :func:`larbed.threads.kernel_threads` (tilts in parallel, one BLAS thread each).
"""

from __future__ import annotations

import logging

import numpy as np

from ._kernels import bloch as _kernels
from ._types import EIGEN_PATHS, EigenPath
from .geometry import Geometry
from .origin import REAL_RTOL, phase_factors, real_origin_shift
from .structure_factors import ug_matrix
from .symmetry import tilt_symmetry
from .threads import kernel_threads

__all__ = ["eigensystems", "intensities", "intensities_kept", "is_real_ug", "jacobian", "jacobian_q",
           "prepare_matrices"]

logger = logging.getLogger(__name__)

_INTENSITY = {"real": _kernels.intensities_real, "hermitian": _kernels.intensities_hermitian,
              "general": _kernels.intensities_general}
_JACOBIAN = {"real": _kernels.jacobian_real, "hermitian": _kernels.jacobian_hermitian,
             "general": _kernels.jacobian_general}
_JACOBIAN_Q = {"real": _kernels.jacobian_q_real, "hermitian": _kernels.jacobian_q_hermitian,
               "general": _kernels.jacobian_q_general}


def _check_path(path: str) -> None:
    if path not in EIGEN_PATHS:
        raise ValueError(f"unknown eigensolver path {path!r}; choose one of {EIGEN_PATHS}")


def is_real_ug(values: np.ndarray) -> bool:
    """True when every U_g is real to round-off (then the real symmetric eigensolver serves)."""
    values = np.asarray(values)
    scale = max(float(np.max(np.abs(values), initial=0.0)), 1e-300)
    return bool(np.max(np.abs(values.imag), initial=0.0) <= REAL_RTOL * scale)


def prepare_matrices(
    geometry: Geometry,
    ug_values: np.ndarray,
    absorption: float | None = None,
    u0: float = 0.0,
    *,
    allow_origin_shift: bool = False,
    tilts_mrad: np.ndarray | None = None,
):
    """Kernel inputs scaled by 1/(2K): (offdiag, diag, path) with path in {'real', 'hermitian', 'general'}.

    With ``allow_origin_shift`` complex U_g of a projection that is centrosymmetric about some
    in-plane point are moved to that origin (see :func:`real_origin_shift`) and take the real
    path: the intensities are the same, but the matrix no longer matches ``ug_values`` element by
    element (so derivative code must leave it off). ``tilts_mrad`` (n_tilts, 2) replaces the
    geometry's tilts in the diagonal (a tilt map θ' = A θ + c) [mrad].
    """
    inv2k = 1.0 / (2.0 * geometry.k0)
    mat = ug_matrix(geometry, ug_values) * inv2k
    diag = (geometry.excitation_diagonal if tilts_mrad is None
            else geometry.excitation_diagonal_at(tilts_mrad)) * inv2k
    if absorption is not None and absorption != 0.0:
        off = mat * (1.0 + 1j * absorption)
        dg = diag.astype(complex) + 1j * absorption * u0 * inv2k
        return np.ascontiguousarray(off), np.ascontiguousarray(dg), "general"
    if is_real_ug(ug_values):
        return np.ascontiguousarray(mat.real), np.ascontiguousarray(diag), "real"
    centres = real_origin_shift(geometry, ug_values) if allow_origin_shift else []
    if centres:
        # of the centres of symmetry, take the one with the most tilt-grid symmetry
        best = None
        for r0 in centres:
            shifted = np.asarray(ug_values) * phase_factors(geometry, r0)
            if not is_real_ug(shifted):
                continue
            cand = np.ascontiguousarray(ug_matrix(geometry, shifted.real).real * inv2k)
            n_ops = len(tilt_symmetry(geometry, cand))
            if best is None or n_ops > best[0]:
                best = (n_ops, cand)
        if best is not None:
            return best[1], np.ascontiguousarray(diag), "real"
    return np.ascontiguousarray(mat), np.ascontiguousarray(diag.astype(float)), "hermitian"


def intensities(offdiag: np.ndarray, diag: np.ndarray, path: EigenPath,
                thickness_a: np.ndarray) -> np.ndarray:
    """|ψ|² over (thickness, tilt, beam) for thicknesses ``thickness_a`` [Å] (inputs from
    :func:`prepare_matrices`); unfilled values would be NaN."""
    _check_path(path)
    thick = np.ascontiguousarray(np.atleast_1d(thickness_a), dtype=float)
    out = np.full((thick.size,) + diag.shape, np.nan)
    with kernel_threads():
        _INTENSITY[path](offdiag, np.ascontiguousarray(diag), thick, out)
    return out


def intensities_kept(offdiag: np.ndarray, diag: np.ndarray, thickness_a: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`intensities` on the real path, with the eigensystems it computed: (I (thickness,
    tilt, beam), λ (tilt, n), C (tilt, n, n)) for :func:`jacobian_q` at the same matrices."""
    thick = np.ascontiguousarray(np.atleast_1d(thickness_a), dtype=float)
    m, n = diag.shape
    out = np.full((thick.size, m, n), np.nan)
    w, c = np.empty((m, n)), np.empty((m, n, n))
    with kernel_threads():
        _kernels.intensities_real_kept(offdiag, np.ascontiguousarray(diag), thick, out, w, c)
    return out, w, c


def jacobian(offdiag: np.ndarray, diag: np.ndarray, path: EigenPath, thickness_a: float,
             geometry: Geometry, ug: np.ndarray, fac: complex, u0: float,
             kappa_column: bool, diag_directions: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Intensities (tilt, beam) and their derivatives (tilt, beam, column) [columns as in
    :mod:`larbed._kernels.bloch`] at thickness ``thickness_a`` [Å]; ``fac`` = (1 + iκ)/(2K).

    ``diag_directions`` (n_dirs, n_beams): directions of the (scaled) diagonal, e.g. its
    derivative with respect to the tilt; one extra column each, after t (and κ).
    """
    _check_path(path)
    m, n = diag.shape
    p = geometry.n_reflections
    dirs = (np.zeros((0, n), complex) if diag_directions is None
            else np.ascontiguousarray(diag_directions, dtype=complex))
    out_i = np.empty((m, n))
    out_j = np.empty((m, n, 2 * p + 1 + int(kappa_column) + dirs.shape[0]))
    inv2k = 1.0 / (2.0 * geometry.k0)
    with kernel_threads():
        _JACOBIAN[path](offdiag, np.ascontiguousarray(diag), float(thickness_a),
                        np.ascontiguousarray(geometry.pair_index, dtype=np.int64),
                        np.ascontiguousarray(geometry.pair_sign, dtype=np.int64), p, fac,
                        1j * inv2k, np.ascontiguousarray(ug.real), np.ascontiguousarray(ug.imag),
                        u0 * inv2k, bool(kappa_column), dirs, out_i, out_j)
    return out_i, out_j


def jacobian_q(offdiag: np.ndarray, diag: np.ndarray, path: EigenPath, thickness_a: float,
               pos_col: np.ndarray, pos_w: np.ndarray, col_fac: np.ndarray, kappa: bool,
               kfac: complex, u0s: float, diag_directions: np.ndarray | None = None,
               eigensystems: tuple[np.ndarray, np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Intensities (tilt, beam) and derivatives summed into free parameters (tilt, beam, column):
    columns [U-part q (``len(col_fac)``), t (per Å), κ (when ``kappa``), diagonal directions]
    (see :func:`larbed._kernels.bloch.tilt_jacobian_q`). ``pos_col``/``pos_w`` (n, n, e): the
    columns and weights each structure-matrix position feeds; with ``kappa`` also row
    ``len(col_fac)`` with weights U_ab (complex; general path). On the real path
    ``eigensystems`` (λ, C) of these matrices (from :func:`intensities_kept`) skip the
    decompositions."""
    _check_path(path)
    m, n = diag.shape
    n_u = len(col_fac)
    dirs = (np.zeros((0, n), complex) if diag_directions is None
            else np.ascontiguousarray(diag_directions, dtype=complex))
    out_i = np.empty((m, n))
    out_j = np.empty((m, n, n_u + 1 + int(kappa) + dirs.shape[0]))
    weights = np.ascontiguousarray(pos_w, dtype=complex if path == "general" else float)
    if eigensystems is not None and path == "real":
        with kernel_threads():
            _kernels.jacobian_q_real_given(*eigensystems, float(thickness_a),
                                           np.ascontiguousarray(pos_col, dtype=np.int64), weights,
                                           np.ascontiguousarray(col_fac, dtype=complex), n_u,
                                           bool(kappa), complex(kfac), float(u0s), dirs, out_i,
                                           out_j)
        return out_i, out_j
    with kernel_threads():
        _JACOBIAN_Q[path](offdiag, np.ascontiguousarray(diag), float(thickness_a),
                          np.ascontiguousarray(pos_col, dtype=np.int64), weights,
                          np.ascontiguousarray(col_fac, dtype=complex), n_u, bool(kappa),
                          complex(kfac), float(u0s), dirs, out_i, out_j)
    return out_i, out_j


def eigensystems(offdiag: np.ndarray, diag: np.ndarray, path: EigenPath):
    """Eigenvalues (tilt, n) and eigenvectors (tilt, n, n) — and C⁻¹e₀ on the general path."""
    _check_path(path)
    m, n = diag.shape
    with kernel_threads():
        if path == "general":
            w, c, cinv0 = (np.empty((m, n), complex), np.empty((m, n, n), complex),
                           np.empty((m, n), complex))
            _kernels.eigensystems_general(offdiag.astype(complex), diag.astype(complex), w, c, cinv0)
            return w, c, cinv0
        w, c = np.empty((m, n)), np.empty((m, n, n), complex)
        _kernels.eigensystems_hermitian(offdiag.astype(complex), np.ascontiguousarray(diag, float), w, c)
        return w, c
