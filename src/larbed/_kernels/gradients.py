"""Exact derivatives of LARBED intensities from one eigen-decomposition per tilt.

Notation, per tilt: H = A/(2K) = C diag(λ) C⁻¹ [1/Å], τ = 2π t (t in Å), v = C⁻¹ e₀,
ψ = exp(iτH) e₀ = C diag(e^{iτλ}) v and I_n = |ψ_n|².

The Fréchet derivative of exp(iτH) in a direction E is C (F ∘ (C⁻¹ E C)) C⁻¹ with the divided
differences F_jk = (e^{iτλ_j} − e^{iτλ_k}) / (λ_j − λ_k). They are evaluated in the form
F_jk = iτ h_j h_k sinc(τ(λ_j − λ_k)/2), h_j = e^{iτλ_j/2}, which is exact for real and complex λ
and has no cancellation for (near-)equal eigenvalues (a series replaces sin z / z for small |z|).

Contraction (O(N³ + N²P) per tilt instead of one O(N³) product per parameter): with
B[j, b] = Σ_k F_jk v_k C[b, k] (computed as C @ (F ∘ v[:, None]), using F = Fᵀ),

    dψ_n / dE_ab = Σ_j C[n, j] C⁻¹[j, a] B[j, b].

A Friedel pair p occupies the matrix positions (a, b) with ``pair_index[a, b] == p``. Summing
C⁻¹[j, a] B[j, b] over those positions (plain sum Y and sum weighted by ``pair_sign``, Ys) gives
S[n, p] = Σ_j C[n, j] Y[p, j]; then, with fac = (1 + iκ)/(2K) the factor by which U_p enters H,

    dI_n/d Re U_p = 2 Re(fac ψ_n* S[n, p]),   dI_n/d Im U_p = 2 Re(i fac ψ_n* Ss[n, p]),
    dI_n/dt = 2 Re(ψ_n* (C diag(iτ'λ e^{iτλ}) v)_n)  with τ' = 2π per Å,
    dI_n/dκ = 2 Re((i/2K) ψ_n* Σ_p (Re U_p S[n, p] + i Im U_p Ss[n, p])) − 2τ U₀/(2K) I_n.

Kernels loop over tilts with ``prange``; the caller must limit BLAS to one thread. Inputs follow
:mod:`larbed._kernels.bloch` (pre-scaled by 1/(2K), thickness in Å). Output ``jac`` has shape
(n_tilts, n_beams, n_cols): columns [Re U_0..P-1, Im U_0..P-1, t (per Å), κ (when n_cols = 2P+2)].
"""

import cmath

import numpy as np
from numba import njit, prange

TWO_PI = 2.0 * np.pi
#: Below this |z| the series 1 − z²/6 + z⁴/120 replaces sin z / z (next term z⁶/5040 < 1e-16).
SINC_SERIES_BELOW = 1e-2


@njit(cache=True)
def csinc(z):
    """sin(z)/z for complex z, stable at z → 0."""
    if abs(z) < SINC_SERIES_BELOW:
        z2 = z * z
        return 1.0 - z2 / 6.0 + z2 * z2 / 120.0
    return cmath.sin(z) / z


@njit(cache=True)
def divided_differences(lam, tau):
    """F_jk = (e^{iτλ_j} − e^{iτλ_k}) / (λ_j − λ_k), F_jj = iτ e^{iτλ_j}; complex (n, n)."""
    n = lam.shape[0]
    h = np.empty(n, dtype=np.complex128)
    for j in range(n):
        h[j] = cmath.exp(0.5j * tau * lam[j])
    f = np.empty((n, n), dtype=np.complex128)
    for j in range(n):
        for k in range(j, n):
            val = 1j * tau * h[j] * h[k] * csinc(0.5 * tau * (lam[j] - lam[k]))
            f[j, k] = val
            f[k, j] = val
    return f


@njit(cache=True)
def tilt_jacobian(lam, c, cinv, tau, pair_index, pair_sign, n_pairs, fac, kfac, ure, uim,
                  u0s, out_i, out_j):
    """Intensities and derivatives at one tilt from its decomposition.

    lam (n,) complex eigenvalues [1/Å]; c, cinv (n, n) complex; tau = 2π t [Å]; fac = (1 + iκ)/(2K)
    and kfac = i/(2K) [Å] complex; ure, uim (P,) current U_p [1/Å²] and u0s = U₀/(2K) [1/Å] (kfac,
    ure, uim, u0s only enter the κ column, written when out_j has 2P + 2 columns);
    out_i (n,), out_j (n, n_cols).
    """
    n = lam.shape[0]
    n_cols = out_j.shape[1]
    ex = np.empty(n, dtype=np.complex128)
    v = np.empty(n, dtype=np.complex128)
    for j in range(n):
        ex[j] = cmath.exp(1j * tau * lam[j])
        v[j] = cinv[j, 0]
    xv = ex * v
    psi = c @ xv
    dxv = (1j * TWO_PI) * lam * xv  # d/dt (per Å) of diag(e^{iτλ}) v
    dpsi = c @ dxv
    for i in range(n):
        out_i[i] = psi[i].real * psi[i].real + psi[i].imag * psi[i].imag
        out_j[i, 2 * n_pairs] = 2.0 * (psi[i].conjugate() * dpsi[i]).real

    f = divided_differences(lam, tau)
    gm = np.empty((n, n), dtype=np.complex128)
    for k in range(n):
        for j in range(n):
            gm[k, j] = f[k, j] * v[k]
    bt = c @ gm  # bt[b, j] = B[j, b]
    cinvt = np.ascontiguousarray(cinv.T)
    y = np.zeros((2 * n_pairs, n), dtype=np.complex128)
    for a in range(n):
        for b in range(n):
            p = pair_index[a, b]
            if p < 0:
                continue
            s = pair_sign[a, b]
            for j in range(n):
                prod = cinvt[a, j] * bt[b, j]
                y[p, j] += prod
                y[n_pairs + p, j] += s * prod
    ct = np.ascontiguousarray(c.T)
    sp = y @ ct  # sp[p, n] = Σ_j Y[p, j] C[n, j]
    ifac = 1j * fac
    for i in range(n):
        pc = psi[i].conjugate()
        kap = 0.0j
        for p in range(n_pairs):
            s_plain = pc * sp[p, i]
            s_sign = pc * sp[n_pairs + p, i]
            out_j[i, p] = 2.0 * (fac * s_plain).real
            out_j[i, n_pairs + p] = 2.0 * (ifac * s_sign).real
            kap += ure[p] * s_plain + 1j * uim[p] * s_sign
        if n_cols > 2 * n_pairs + 1:
            out_j[i, 2 * n_pairs + 1] = 2.0 * (kfac * kap).real - 2.0 * tau * u0s * out_i[i]


@njit(parallel=True, cache=True)
def jacobian_real(offdiag, diag, thickness, pair_index, pair_sign, n_pairs, fac, kfac, ure, uim,
                  u0s, out_i, out_j):
    """Real symmetric structure matrices (C real orthogonal, C⁻¹ = Cᵀ)."""
    n_tilts, n = diag.shape
    tau = TWO_PI * thickness
    for m in prange(n_tilts):
        a = offdiag.copy()
        for i in range(n):
            a[i, i] = diag[m, i]
        w, c = np.linalg.eigh(a)
        cc = c.astype(np.complex128)
        cinv = np.ascontiguousarray(cc.T)
        lam = w.astype(np.complex128)
        tilt_jacobian(lam, cc, cinv, tau, pair_index, pair_sign, n_pairs, fac, kfac, ure, uim,
                      u0s, out_i[m], out_j[m])


@njit(parallel=True, cache=True)
def jacobian_hermitian(offdiag, diag, thickness, pair_index, pair_sign, n_pairs, fac, kfac,
                       ure, uim, u0s, out_i, out_j):
    """Complex Hermitian structure matrices (C unitary, C⁻¹ = Cᴴ)."""
    n_tilts, n = diag.shape
    tau = TWO_PI * thickness
    for m in prange(n_tilts):
        a = offdiag.copy()
        for i in range(n):
            a[i, i] = diag[m, i]
        w, c = np.linalg.eigh(a)
        cinv = np.ascontiguousarray(np.conj(c).T)
        lam = w.astype(np.complex128)
        tilt_jacobian(lam, c, cinv, tau, pair_index, pair_sign, n_pairs, fac, kfac, ure, uim,
                      u0s, out_i[m], out_j[m])


@njit(parallel=True, cache=True)
def jacobian_general(offdiag, diag, thickness, pair_index, pair_sign, n_pairs, fac, kfac,
                     ure, uim, u0s, out_i, out_j):
    """General (absorbing) structure matrices; ``diag`` complex, C⁻¹ by inversion."""
    n_tilts, n = diag.shape
    tau = TWO_PI * thickness
    for m in prange(n_tilts):
        a = offdiag.copy()
        for i in range(n):
            a[i, i] = diag[m, i]
        w, c = np.linalg.eig(a)
        cinv = np.linalg.inv(c)
        tilt_jacobian(w, c, cinv, tau, pair_index, pair_sign, n_pairs, fac, kfac, ure, uim,
                      u0s, out_i[m], out_j[m])
