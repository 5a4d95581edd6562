"""Bloch-wave kernels: intensities, eigensystems and exact derivatives, one decomposition per tilt.

Every driver loops over tilts with ``prange`` and hands each tilt to a shared per-tilt body: the
structure matrix of tilt m (:func:`_matrix_at`), its decomposition (:func:`_decompose_real`,
:func:`_decompose_hermitian`, :func:`_decompose_general`), then propagation (intensities) or the
Fréchet derivative of the exponential (:func:`tilt_jacobian`). The three paths — real symmetric,
complex Hermitian, general (absorbing) — differ only in the decomposition and, for intensities,
in real arithmetic on the real path. Intensities on the real and Hermitian paths skip the
eigenvectors altogether: a Householder reduction to a real tridiagonal matrix, implicit QR on
that, and ψ = exp(2πitH) e₀ built from the recorded rotations and reflectors (see "tridiagonal
route" below; eigh remains the fallback for a tilt where QR does not converge).

Inputs are pre-scaled by 1/(2K): ``offdiag`` holds U_{g_n-g_m}/(2K) (zero diagonal) and ``diag``
holds -(2 k_t·g_n + |g_n|²)/(2K) per tilt, both in 1/Å; thicknesses are in Å. Outputs are
allocated by the caller. The caller limits BLAS to one thread (:func:`larbed.threads.kernel_threads`).
All jitted helpers live in this file, so ``cache=True`` never serves a stale helper.

Derivatives (per tilt, H = A/(2K) = C diag(λ) C⁻¹ [1/Å], τ = 2π t, v = C⁻¹ e₀,
ψ = exp(iτH) e₀ = C diag(e^{iτλ}) v, I_n = |ψ_n|²): the Fréchet derivative of exp(iτH) in a
direction E is C (F ∘ (C⁻¹ E C)) C⁻¹ with the divided differences
F_jk = (e^{iτλ_j} − e^{iτλ_k}) / (λ_j − λ_k), evaluated as F_jk = iτ h_j h_k sinc(τ(λ_j − λ_k)/2),
h_j = e^{iτλ_j/2}: exact for real and complex λ, no cancellation for (near-)equal eigenvalues.
With B[j, b] = Σ_k F_jk v_k C[b, k], dψ_n / dE_ab = Σ_j C[n, j] C⁻¹[j, a] B[j, b]; summing over the
positions (a, b) of Friedel pair p (``pair_index[a, b] == p``; plain sum Y and sum weighted by
``pair_sign``, Ys) gives S[n, p] = Σ_j C[n, j] Y[p, j] and, with fac = (1 + iκ)/(2K),

    dI_n/d Re U_p = 2 Re(fac ψ_n* S[n, p]),   dI_n/d Im U_p = 2 Re(i fac ψ_n* Ss[n, p]),
    dI_n/dt = 2 Re(ψ_n* (C diag(iτ'λ e^{iτλ}) v)_n)  with τ' = 2π per Å,
    dI_n/dκ = 2 Re((i/2K) ψ_n* Σ_p (Re U_p S[n, p] + i Im U_p Ss[n, p])) − 2τ U₀/(2K) I_n.

A diagonal direction E = diag(e) (e.g. ∂H/∂θ of a tilt) gives dψ_n = Σ_j C[n, j] z_j with
z_j = Σ_a C⁻¹[j, a] e_a B[j, a], and dI_n = 2 Re(ψ_n* dψ_n).

Jacobian output ``jac`` (n_tilts, n_beams, n_cols): columns [Re U_0..P-1, Im U_0..P-1, t (per Å),
κ (when ``kappa`` is set), one per diagonal direction (the last ``ddirs.shape[0]``)].
"""

import cmath
import math

import llvmlite.binding as llvm_binding
import numpy as np
from numba import njit, prange, types
from numba.extending import get_cython_function_address

TWO_PI = 2.0 * np.pi
#: Below this |z| the series 1 − z²/6 + z⁴/120 replaces sin z / z (next term z⁶/5040 < 1e-16).
SINC_SERIES_BELOW = 1e-2


# ------------------------------------------------------------------------------ per-tilt bodies
@njit(cache=True)
def _matrix_at(offdiag, diag, m):
    """Structure matrix of tilt m: ``offdiag`` with ``diag[m]`` on its diagonal (a new array)."""
    a = offdiag.copy()
    for i in range(offdiag.shape[0]):
        a[i, i] = diag[m, i]
    return a


@njit(cache=True)
def _decompose_real(offdiag, diag, m):
    """(λ, C, C⁻¹ = Cᵀ) of a real symmetric tilt matrix, as complex arrays."""
    w, c = np.linalg.eigh(_matrix_at(offdiag, diag, m))
    cc = c.astype(np.complex128)
    return w.astype(np.complex128), cc, np.ascontiguousarray(cc.T)


@njit(cache=True)
def _decompose_hermitian(offdiag, diag, m):
    """(λ, C, C⁻¹ = Cᴴ) of a complex Hermitian tilt matrix."""
    w, c = np.linalg.eigh(_matrix_at(offdiag, diag, m))
    return w.astype(np.complex128), c, np.ascontiguousarray(np.conj(c).T)


@njit(cache=True)
def _decompose_general(offdiag, diag, m):
    """(λ, C, C⁻¹) of a general (absorbing) tilt matrix."""
    w, c = np.linalg.eig(_matrix_at(offdiag, diag, m))
    return w, c, np.linalg.inv(c)


@njit(cache=True)
def _write_intensities(lam, c, v, thickness, out_m):
    """|C diag(e^{2πiλt}) v|² for every thickness: out_m (n_thickness, n)."""
    n = lam.shape[0]
    for it in range(thickness.shape[0]):
        psi = c @ (np.exp(1j * TWO_PI * lam * thickness[it]) * v)
        for i in range(n):
            out_m[it, i] = psi[i].real * psi[i].real + psi[i].imag * psi[i].imag


@njit(cache=True)
def _intensities_real_tilt(offdiag, diag, m, thickness, out_m):
    """Real arithmetic throughout (a quarter of the complex work)."""
    w, c = np.linalg.eigh(_matrix_at(offdiag, diag, m))
    x = c[0, :].copy()
    n = w.shape[0]
    for it in range(thickness.shape[0]):
        ph = TWO_PI * w * thickness[it]
        pr = c @ (np.cos(ph) * x)
        pi = c @ (np.sin(ph) * x)
        for i in range(n):
            out_m[it, i] = pr[i] * pr[i] + pi[i] * pi[i]


@njit(cache=True)
def _intensities_hermitian_eigh_tilt(offdiag, diag, m, thickness, out_m):
    """The eigenvector route for a Hermitian tilt: ψ = C diag(e^{2πiλt}) Cᴴ e₀."""
    w, c = np.linalg.eigh(_matrix_at(offdiag, diag, m))
    _write_intensities(w.astype(np.complex128), c, np.conj(c[0, :]), thickness, out_m)


# ------------------------------------------------------------------------------ tridiagonal route
# Intensities need only ψ(t) = exp(2πitH) e₀, not all eigenvectors of H. LAPACK's Householder
# reduction (zhetrd / dsytrd, lower triangle) writes H = Q T Qᴴ with T real symmetric
# tridiagonal and Q = H₀ H₁ ⋯ H_{n−2}, where no reflector touches row 0, so Qᴴe₀ = e₀. Implicit
# QR with Wilkinson shifts on T (:func:`_tridiagonal_qr`) gives T = Z diag(λ) Zᵀ as a recorded
# sequence of plane rotations: x = Zᵀe₀ is accumulated on the way (O(1) per rotation) and Z b is
# one backward pass over the rotations. Then ψ = Q Z (e^{2πiλt} ∘ x): after the O(n³) reduction
# everything is O(n²) per thickness, with no back-transformation of all n eigenvectors (the O(n³)
# step eigh adds). Numba arrays are row-major and LAPACK reads them column-major, so LAPACK sees
# Hᵀ = H̄ and returns H̄ = Q_F T Q_Fᴴ: then exp(2πitH) e₀ = conj(Q_F exp(−2πitT) e₀), and the
# intensities are |Q_F Z (e^{−2πiλt} ∘ x)|². Reflector i of Q_F is I − τᵢ vᵢ vᵢᴴ with vᵢ[i+1] = 1
# and vᵢ[i+2:] in row i, columns i+2: of the reduced matrix (its column i for LAPACK).
def _lapack(name, *argtypes):
    """A routine of ``scipy.linalg.cython_lapack`` as a function jitted code can call.

    The routine's address is registered with LLVM under a larbed symbol and the kernels call it
    by that name, never by address, so a ``cache=True`` kernel stays valid in a new process (the
    name is bound again when this module is imported).
    """
    symbol = "larbed_lapack_" + name
    llvm_binding.add_symbol(symbol, get_cython_function_address("scipy.linalg.cython_lapack", name))
    return types.ExternalFunction(symbol, types.void(*argtypes))


_CHAR = types.CPointer(types.int8)
_INT = types.CPointer(types.int32)
_DOUBLE = types.CPointer(types.float64)
_COMPLEX = types.CPointer(types.complex128)
#: zhetrd / dsytrd (uplo, n, a, lda, d, e, tau, work, lwork, info): blocked Householder
#: tridiagonalisation; zhetd2 / dsytd2 (uplo, n, a, lda, d, e, tau, info): the unblocked one.
_zhetrd = _lapack("zhetrd", _CHAR, _INT, _COMPLEX, _INT, _DOUBLE, _DOUBLE, _COMPLEX, _COMPLEX,
                  _INT, _INT)
_dsytrd = _lapack("dsytrd", _CHAR, _INT, _DOUBLE, _INT, _DOUBLE, _DOUBLE, _DOUBLE, _DOUBLE,
                  _INT, _INT)
_zhetd2 = _lapack("zhetd2", _CHAR, _INT, _COMPLEX, _INT, _DOUBLE, _DOUBLE, _COMPLEX, _INT)
_dsytd2 = _lapack("dsytd2", _CHAR, _INT, _DOUBLE, _INT, _DOUBLE, _DOUBLE, _DOUBLE, _INT)
#: Up to this many beams the unblocked reduction is the faster one (measured with one OpenBLAS
#: thread: 5–20 % faster at n = 40…97, 2–10 % slower at n = 150; the same output either way).
UNBLOCKED_UP_TO = 128
_LOWER = 76  # ord("L")
#: Sweeps of implicit QR allowed per eigenvalue before a tilt falls back to eigh (LAPACK's dsteqr
#: allows 30; two are typical).
QR_SWEEPS_PER_EIGENVALUE = 30
#: Below this r² = x² + z² a rotation is formed with math.hypot (no underflow in x² + z²).
HYPOT_BELOW = 1e-150


@njit(cache=True)
def _tridiagonalise_hermitian(a, d, e, tau):
    """zhetd2 / zhetrd on the Hermitian a (n, n), overwritten by the reflectors; d, e (n,) real,
    tau (n,) complex."""
    n = a.shape[0]
    ints = np.array([n, n, -1, 0], dtype=np.int32)  # n, lda, lwork, info
    uplo = np.array([_LOWER], dtype=np.int8)
    if n <= UNBLOCKED_UP_TO:
        _zhetd2(uplo.ctypes, ints[0:1].ctypes, a.ctypes, ints[1:2].ctypes, d.ctypes, e.ctypes,
                tau.ctypes, ints[3:4].ctypes)
        return
    query = np.zeros(1, dtype=np.complex128)
    _zhetrd(uplo.ctypes, ints[0:1].ctypes, a.ctypes, ints[1:2].ctypes, d.ctypes, e.ctypes,
            tau.ctypes, query.ctypes, ints[2:3].ctypes, ints[3:4].ctypes)
    ints[2] = max(int(query[0].real), 1)
    work = np.empty(ints[2], dtype=np.complex128)
    _zhetrd(uplo.ctypes, ints[0:1].ctypes, a.ctypes, ints[1:2].ctypes, d.ctypes, e.ctypes,
            tau.ctypes, work.ctypes, ints[2:3].ctypes, ints[3:4].ctypes)


@njit(cache=True)
def _tridiagonalise_real(a, d, e, tau):
    """dsytd2 / dsytrd on the real symmetric a (n, n), overwritten by the reflectors; d, e, tau
    (n,)."""
    n = a.shape[0]
    ints = np.array([n, n, -1, 0], dtype=np.int32)  # n, lda, lwork, info
    uplo = np.array([_LOWER], dtype=np.int8)
    if n <= UNBLOCKED_UP_TO:
        _dsytd2(uplo.ctypes, ints[0:1].ctypes, a.ctypes, ints[1:2].ctypes, d.ctypes, e.ctypes,
                tau.ctypes, ints[3:4].ctypes)
        return
    query = np.zeros(1)
    _dsytrd(uplo.ctypes, ints[0:1].ctypes, a.ctypes, ints[1:2].ctypes, d.ctypes, e.ctypes,
            tau.ctypes, query.ctypes, ints[2:3].ctypes, ints[3:4].ctypes)
    ints[2] = max(int(query[0]), 1)
    work = np.empty(ints[2])
    _dsytrd(uplo.ctypes, ints[0:1].ctypes, a.ctypes, ints[1:2].ctypes, d.ctypes, e.ctypes,
            tau.ctypes, work.ctypes, ints[2:3].ctypes, ints[3:4].ctypes)


@njit(cache=True)
def _tridiagonal_qr(d, e, x, rot, sweeps, max_sweeps):
    """Implicit symmetric QR with Wilkinson shifts: T = Z diag(λ) Zᵀ for T = tridiag(e, d, e).

    d (n,) becomes λ (unordered; same units); e (n,) holds the off-diagonal in e[:n−1] and is
    destroyed; x (n,) receives Zᵀe₀. Z = R₁ᵀ R₂ᵀ ⋯ R_Kᵀ is recorded as plane rotations R_j of
    rows (k, k+1) with cosine rot[j, 0] and sine rot[j, 1], one sweep s covering k = sweeps[s, 0]
    … sweeps[s, 1] − 1. Off-diagonals below ε times the largest absolute row sum of T are set to
    zero (deflation; a backward error of that size, as eigh makes). Returns (rotations, sweeps)
    used, or (−1, 0) when ``max_sweeps`` sweeps were not enough, (−2, 0) when ``rot`` or
    ``sweeps`` is too short.
    """
    n = d.shape[0]
    for i in range(n):
        x[i] = 0.0
    x[0] = 1.0
    norm = 0.0
    for i in range(n):
        row = abs(d[i])
        if i > 0:
            row += abs(e[i - 1])
        if i < n - 1:
            row += abs(e[i])
        norm = max(norm, row)
    if norm == 0.0:
        return 0, 0
    # work on T / norm: every entry stays below ~1, so x² + z² cannot overflow
    for i in range(n):
        d[i] /= norm
    for i in range(n - 1):
        e[i] /= norm
    tol = np.finfo(np.float64).eps
    hi = n - 1
    n_rot = 0
    n_sweeps = 0
    while hi > 0:
        if abs(e[hi - 1]) <= tol:  # λ = d[hi] has converged
            e[hi - 1] = 0.0
            hi -= 1
            continue
        lo = hi - 1  # the unreduced block lo … hi
        while lo > 0:
            if abs(e[lo - 1]) <= tol:
                e[lo - 1] = 0.0
                break
            lo -= 1
        if n_sweeps >= max_sweeps:
            return -1, 0
        if n_rot + hi - lo > rot.shape[0] or n_sweeps >= sweeps.shape[0]:
            return -2, 0
        sweeps[n_sweeps, 0] = lo
        sweeps[n_sweeps, 1] = hi
        n_sweeps += 1
        # Wilkinson shift: the eigenvalue of the trailing 2 × 2 block nearer to d[hi]
        eh = e[hi - 1]
        half = 0.5 * (d[hi - 1] - d[hi])
        shift = d[hi] - eh * (eh / (half + math.copysign(math.sqrt(half * half + eh * eh), half)))
        xg = d[lo] - shift
        zg = e[lo]
        for k in range(lo, hi):
            # R (rows k, k+1) with R (xg, zg)ᵀ = (r, 0)ᵀ; then T ← R T Rᵀ chases the bulge down
            r2 = xg * xg + zg * zg
            if r2 > HYPOT_BELOW:
                inv = 1.0 / math.sqrt(r2)
                c = xg * inv
                s = zg * inv
                r = r2 * inv
            elif r2 == 0.0:
                c = 1.0
                s = 0.0
                r = 0.0
            else:
                r = math.hypot(xg, zg)
                c = xg / r
                s = zg / r
            if k > lo:
                e[k - 1] = r
            dk = d[k]
            ek = e[k]
            dk1 = d[k + 1]
            cse = 2.0 * c * s * ek
            d[k] = c * c * dk + cse + s * s * dk1
            d[k + 1] = s * s * dk - cse + c * c * dk1
            e[k] = (c - s) * (c + s) * ek + c * s * (dk1 - dk)
            if k + 1 < hi:
                zg = s * e[k + 1]  # the bulge at (k + 2, k)
                e[k + 1] *= c
                xg = e[k]
            rot[n_rot, 0] = c
            rot[n_rot, 1] = s
            n_rot += 1
            x0 = x[k]
            x1 = x[k + 1]
            x[k] = c * x0 + s * x1
            x[k + 1] = c * x1 - s * x0
    for i in range(n):
        d[i] *= norm
    return n_rot, n_sweeps


@njit(cache=True)
def _apply_rotations(b, rot, sweeps, n_rot, n_sweeps):
    """b ← Z b for the Z recorded by :func:`_tridiagonal_qr`; b (n, m) real, in place."""
    m = b.shape[1]
    j = n_rot
    for sw in range(n_sweeps - 1, -1, -1):
        lo = sweeps[sw, 0]
        hi = sweeps[sw, 1]
        if m == 2:  # one thickness: keep the row the next rotation reads in registers
            c0 = b[hi, 0]
            c1 = b[hi, 1]
            for k in range(hi - 1, lo - 1, -1):
                j -= 1
                c = rot[j, 0]
                s = rot[j, 1]
                a0 = b[k, 0]
                a1 = b[k, 1]
                b[k + 1, 0] = s * a0 + c * c0
                b[k + 1, 1] = s * a1 + c * c1
                c0 = c * a0 - s * c0
                c1 = c * a1 - s * c1
            b[lo, 0] = c0
            b[lo, 1] = c1
            continue
        for k in range(hi - 1, lo - 1, -1):
            j -= 1
            c = rot[j, 0]
            s = rot[j, 1]
            for col in range(m):
                b0 = b[k, col]
                b1 = b[k + 1, col]
                b[k, col] = c * b0 - s * b1
                b[k + 1, col] = s * b0 + c * b1


@njit(cache=True)
def _apply_reflectors(a, tau, u):
    """u ← Q_F u for the reflectors of zhetrd / dsytrd (lower) in a (n, n) and tau; u (n, m)."""
    n = a.shape[0]
    m = u.shape[1]
    w = np.empty(m, dtype=u.dtype)
    for i in range(n - 2, -1, -1):
        t = tau[i]
        if t == 0.0:
            continue
        for col in range(m):
            w[col] = u[i + 1, col]
        for r in range(i + 2, n):
            vc = np.conj(a[i, r])
            for col in range(m):
                w[col] += vc * u[r, col]
        for col in range(m):
            w[col] *= t
            u[i + 1, col] -= w[col]
        for r in range(i + 2, n):
            v = a[i, r]
            for col in range(m):
                u[r, col] -= v * w[col]


@njit(cache=True)
def _exp_tridiagonal(d, e, thickness, max_sweeps):
    """exp(−2πitT) e₀ for each thickness t [Å] of T = tridiag(e, d, e) [1/Å].

    Returns (ok, b): b (n, 2 n_t) holds Re and Im of the vector for thickness j in columns 2j and
    2j + 1; ok is False (and b empty) when implicit QR did not converge in ``max_sweeps`` sweeps.
    """
    n = d.shape[0]
    nt = thickness.shape[0]
    x = np.empty(n)
    dd = d.copy()
    ee = e.copy()
    cap = 2 * n * n + 16  # rotations: about 1.2 n² are typical
    sweeps = np.empty((max_sweeps + 1, 2), dtype=np.int64)
    while True:
        rot = np.empty((cap, 2))
        n_rot, n_sweeps = _tridiagonal_qr(dd, ee, x, rot, sweeps, max_sweeps)
        if n_rot != -2:
            break
        cap *= 4
        dd[:] = d
        ee[:] = e
    if n_rot < 0:
        return False, np.empty((0, 2 * nt))
    b = np.empty((n, 2 * nt))
    for k in range(n):
        for j in range(nt):
            ph = TWO_PI * dd[k] * thickness[j]
            b[k, 2 * j] = math.cos(ph) * x[k]
            b[k, 2 * j + 1] = -math.sin(ph) * x[k]
    _apply_rotations(b, rot, sweeps, n_rot, n_sweeps)
    return True, b


@njit(cache=True)
def _write_pairs(b, out_m):
    """out_m[j, i] = b[i, 2j]² + b[i, 2j + 1]²."""
    for j in range(out_m.shape[0]):
        for i in range(out_m.shape[1]):
            out_m[j, i] = b[i, 2 * j] * b[i, 2 * j] + b[i, 2 * j + 1] * b[i, 2 * j + 1]


@njit(cache=True)
def _intensities_hermitian_tilt(offdiag, diag, m, thickness, max_sweeps, out_m):
    """Tridiagonal route for a Hermitian tilt; False when it fell back to eigh (same result)."""
    a = _matrix_at(offdiag, diag, m)
    n = a.shape[0]
    d = np.empty(n)
    e = np.zeros(n)
    tau = np.zeros(n, dtype=np.complex128)
    _tridiagonalise_hermitian(a, d, e, tau)
    ok, b = _exp_tridiagonal(d, e, thickness, max_sweeps)
    if not ok:
        _intensities_hermitian_eigh_tilt(offdiag, diag, m, thickness, out_m)
        return False
    _apply_reflectors(a, tau, b.view(np.complex128))  # rows of b as complex: Re, Im pairs
    _write_pairs(b, out_m)
    return True


@njit(cache=True)
def _intensities_real_tridiagonal_tilt(offdiag, diag, m, thickness, max_sweeps, out_m):
    """Tridiagonal route for a real symmetric tilt; False when it fell back to eigh."""
    a = _matrix_at(offdiag, diag, m)
    n = a.shape[0]
    d = np.empty(n)
    e = np.zeros(n)
    tau = np.zeros(n)
    _tridiagonalise_real(a, d, e, tau)
    ok, b = _exp_tridiagonal(d, e, thickness, max_sweeps)
    if not ok:
        _intensities_real_tilt(offdiag, diag, m, thickness, out_m)
        return False
    _apply_reflectors(a, tau, b)  # Q_F real: Re and Im columns alike
    _write_pairs(b, out_m)
    return True


# ------------------------------------------------------------------------------ intensities
@njit(parallel=True, cache=True)
def intensities_real(offdiag, diag, thickness, out):
    """Real symmetric structure matrices. out: (n_thickness, n_tilts, n_beams)."""
    max_sweeps = QR_SWEEPS_PER_EIGENVALUE * diag.shape[1]
    for m in prange(diag.shape[0]):
        _intensities_real_tridiagonal_tilt(offdiag, diag, m, thickness, max_sweeps, out[:, m, :])


@njit(parallel=True, cache=True)
def intensities_hermitian(offdiag, diag, thickness, out):
    """Complex Hermitian structure matrices. out: (n_thickness, n_tilts, n_beams)."""
    max_sweeps = QR_SWEEPS_PER_EIGENVALUE * diag.shape[1]
    for m in prange(diag.shape[0]):
        _intensities_hermitian_tilt(offdiag, diag, m, thickness, max_sweeps, out[:, m, :])


@njit(parallel=True, cache=True)
def intensities_general(offdiag, diag, thickness, out):
    """General (absorbing, non-Hermitian) structure matrices; ``diag`` is complex."""
    n = diag.shape[1]
    for m in prange(diag.shape[0]):
        w, c = np.linalg.eig(_matrix_at(offdiag, diag, m))
        e0 = np.zeros(n, dtype=np.complex128)
        e0[0] = 1.0
        _write_intensities(w, c, np.linalg.solve(c, e0), thickness, out[:, m, :])


# ------------------------------------------------------------------------------ eigensystems
@njit(parallel=True, cache=True)
def eigensystems_hermitian(offdiag, diag, w_out, c_out):
    """Eigenvalues (n_tilts, n) and eigenvectors (n_tilts, n, n) of Hermitian matrices."""
    for m in prange(diag.shape[0]):
        w, c = np.linalg.eigh(_matrix_at(offdiag, diag, m))
        w_out[m, :] = w
        c_out[m, :, :] = c


@njit(parallel=True, cache=True)
def eigensystems_general(offdiag, diag, w_out, c_out, cinv0_out):
    """Eigenvalues, eigenvectors and C⁻¹e₀ of general complex matrices."""
    for m in prange(diag.shape[0]):
        w, c, cinv = _decompose_general(offdiag, diag, m)
        w_out[m, :] = w
        c_out[m, :, :] = c
        cinv0_out[m, :] = cinv[:, 0]


# ------------------------------------------------------------------------------ derivatives
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
                  u0s, kappa, ddirs, out_i, out_j):
    """Intensities and derivatives at one tilt from its decomposition.

    lam (n,) complex eigenvalues [1/Å]; c, cinv (n, n) complex; tau = 2π t [Å]; fac = (1 + iκ)/(2K)
    and kfac = i/(2K) [Å] complex; ure, uim (P,) current U_p [1/Å²] and u0s = U₀/(2K) [1/Å] (kfac,
    ure, uim, u0s only enter the κ column, written when out_j has 2P + 2 columns);
    out_i (n,), out_j (n, n_cols).
    """
    n = lam.shape[0]
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
    n_dirs = ddirs.shape[0]
    if n_dirs:
        dcol = 2 * n_pairs + 1 + int(kappa)
        diag_prod = cinvt * bt  # [a, j] = C⁻¹[j, a] B[j, a]
        zd = ddirs @ diag_prod  # zd[d, j] = Σ_a e_d[a] C⁻¹[j, a] B[j, a]
        dps = zd @ np.ascontiguousarray(c.T)  # dps[d, n] = Σ_j C[n, j] zd[d, j]
        for i in range(n):
            pc = psi[i].conjugate()
            for d in range(n_dirs):
                out_j[i, dcol + d] = 2.0 * (pc * dps[d, i]).real
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
        if kappa:
            out_j[i, 2 * n_pairs + 1] = 2.0 * (kfac * kap).real - 2.0 * tau * u0s * out_i[i]


@njit(parallel=True, cache=True)
def jacobian_real(offdiag, diag, thickness, pair_index, pair_sign, n_pairs, fac, kfac, ure, uim,
                  u0s, kappa, ddirs, out_i, out_j):
    """Real symmetric structure matrices (C real orthogonal, C⁻¹ = Cᵀ)."""
    for m in prange(diag.shape[0]):
        lam, c, cinv = _decompose_real(offdiag, diag, m)
        tilt_jacobian(lam, c, cinv, TWO_PI * thickness, pair_index, pair_sign, n_pairs, fac,
                      kfac, ure, uim, u0s, kappa, ddirs, out_i[m], out_j[m])


@njit(parallel=True, cache=True)
def jacobian_hermitian(offdiag, diag, thickness, pair_index, pair_sign, n_pairs, fac, kfac,
                       ure, uim, u0s, kappa, ddirs, out_i, out_j):
    """Complex Hermitian structure matrices (C unitary, C⁻¹ = Cᴴ)."""
    for m in prange(diag.shape[0]):
        lam, c, cinv = _decompose_hermitian(offdiag, diag, m)
        tilt_jacobian(lam, c, cinv, TWO_PI * thickness, pair_index, pair_sign, n_pairs, fac,
                      kfac, ure, uim, u0s, kappa, ddirs, out_i[m], out_j[m])


@njit(parallel=True, cache=True)
def jacobian_general(offdiag, diag, thickness, pair_index, pair_sign, n_pairs, fac, kfac,
                     ure, uim, u0s, kappa, ddirs, out_i, out_j):
    """General (absorbing) structure matrices; ``diag`` complex, C⁻¹ by inversion."""
    for m in prange(diag.shape[0]):
        lam, c, cinv = _decompose_general(offdiag, diag, m)
        tilt_jacobian(lam, c, cinv, TWO_PI * thickness, pair_index, pair_sign, n_pairs, fac,
                      kfac, ure, uim, u0s, kappa, ddirs, out_i[m], out_j[m])


# ------------------------------------------------------------------------------ derivatives in q
# The same Fréchet derivative, summed straight into the free parameters q of a linear map (each
# position (a, b) of the structure matrix feeds at most ``pos_col.shape[2]`` columns, with weights
# ``pos_w``: symmetry ties and the pair sign of Im U folded in). The U-part output columns are
# 2 Re(col_fac[k] ψ_n* S[n, k]) with S[n, k] = Σ_j C[n, j] Σ_(a,b)∈k w C⁻¹[j, a] B[j, b];
# col_fac is (1 + iκ)/(2K) for a Re U column and i(1 + iκ)/(2K) for an Im U column. Optional row
# ``n_u`` (κ): weights U_ab, column 2 Re(i/(2K) ψ* S) − 2τU₀/(2K) I. On the real path C is real and
# everything runs in real arithmetic (:func:`tilt_jacobian_q_real`).
@njit(cache=True)
def _accumulate(cinvt, bt, pos_col, pos_w, y):
    """y[k, j] += w C⁻¹[j, a] B[j, b] over the positions (a, b) of column k."""
    n = cinvt.shape[0]
    for a in range(n):
        for b in range(n):
            for e in range(pos_col.shape[2]):
                k = pos_col[a, b, e]
                if k < 0:
                    continue
                w = pos_w[a, b, e]
                for j in range(n):
                    y[k, j] += w * cinvt[a, j] * bt[b, j]


@njit(cache=True)
def tilt_jacobian_q(lam, c, cinv, tau, pos_col, pos_w, col_fac, n_u, kappa, kfac, u0s, ddirs,
                    out_i, out_j):
    """Intensities and derivatives in q at one tilt (complex C; the Hermitian and general
    paths): out_j columns [U-part q (n_u), t (per Å), κ (when ``kappa``), diagonal directions]."""
    n = lam.shape[0]
    ex = np.empty(n, dtype=np.complex128)
    v = np.empty(n, dtype=np.complex128)
    for j in range(n):
        ex[j] = cmath.exp(1j * tau * lam[j])
        v[j] = cinv[j, 0]
    xv = ex * v
    psi = c @ xv
    dpsi = c @ ((1j * TWO_PI) * lam * xv)
    for i in range(n):
        out_i[i] = psi[i].real * psi[i].real + psi[i].imag * psi[i].imag
        out_j[i, n_u] = 2.0 * (psi[i].conjugate() * dpsi[i]).real
    f = divided_differences(lam, tau)
    gm = np.empty((n, n), dtype=np.complex128)
    for k in range(n):
        for j in range(n):
            gm[k, j] = f[k, j] * v[k]
    n_rows = n_u + int(kappa)
    bt = c @ gm
    cinvt = np.ascontiguousarray(cinv.T)
    y = np.zeros((n_rows, n), dtype=np.complex128)
    _accumulate(cinvt, bt, pos_col, pos_w, y)
    sp = y @ np.ascontiguousarray(c.T)
    for i in range(n):
        pc = psi[i].conjugate()
        for k in range(n_u):
            out_j[i, k] = 2.0 * (col_fac[k] * pc * sp[k, i]).real
        if kappa:
            out_j[i, n_u + 1] = 2.0 * (kfac * pc * sp[n_u, i]).real - 2.0 * tau * u0s * out_i[i]
    n_dirs = ddirs.shape[0]
    if n_dirs:
        dcol = n_u + 1 + int(kappa)
        zd = ddirs @ (cinvt * bt)
        dps = zd @ np.ascontiguousarray(c.T)
        for i in range(n):
            pc = psi[i].conjugate()
            for d in range(n_dirs):
                out_j[i, dcol + d] = 2.0 * (pc * dps[d, i]).real


@njit(cache=True)
def rsinc(x):
    """sin(x)/x for real x, stable at x → 0."""
    if abs(x) < SINC_SERIES_BELOW:
        x2 = x * x
        return 1.0 - x2 / 6.0 + x2 * x2 / 120.0
    return math.sin(x) / x


@njit(cache=True)
def _accumulate_real(c, bb, pos_col, pos_w, y):
    """y[k, j] += w C[a, j] Re B[j, b] and y[k, n + j] += w C[a, j] Im B[j, b] over the positions
    (a, b) of column k (bb = [Re Bᵀ | Im Bᵀ], C⁻¹ = Cᵀ)."""
    n = c.shape[0]
    for a in range(n):
        for b in range(n):
            for e in range(pos_col.shape[2]):
                k = pos_col[a, b, e]
                if k < 0:
                    continue
                w = pos_w[a, b, e]
                for j in range(n):
                    wc = w * c[a, j]
                    y[k, j] += wc * bb[b, j]
                    y[k, n + j] += wc * bb[b, n + j]


@njit(cache=True)
def tilt_jacobian_q_real(lam, c, tau, pos_col, pos_w, col_fac, n_u, ddirs, out_i, out_j):
    """:func:`tilt_jacobian_q` for a real symmetric matrix, in real arithmetic throughout.

    lam (n,) and c (n, n) real (C⁻¹ = Cᵀ, v = C[0, :]); ``ddirs`` real; no κ column (absorption
    takes the general path). With φ_j = τλ_j, h_j = e^{iφ_j/2}: F_jk v_j = iτ v_j h_j h_k
    sinc(τ(λ_j − λ_k)/2) is split into its real and imaginary parts (the sinc is real), so the
    products with C are real matrix products of twice the width; the diagonal directions are
    extra rows of the same sums (positions (a, a), weights e_d[a]) and all rows meet Cᵀ in one
    product.
    """
    n = lam.shape[0]
    rhs = np.empty((n, 4))  # [cos φ v, sin φ v, d/dt (per Å) of both]
    hc = np.empty(n)
    hs = np.empty(n)
    for j in range(n):
        ph = tau * lam[j]
        co, si, v = math.cos(ph), math.sin(ph), c[0, j]
        rhs[j, 0] = co * v
        rhs[j, 1] = si * v
        rhs[j, 2] = -TWO_PI * lam[j] * si * v
        rhs[j, 3] = TWO_PI * lam[j] * co * v
        hc[j] = math.cos(0.5 * ph)
        hs[j] = math.sin(0.5 * ph)
    ps = c @ rhs  # Re ψ, Im ψ, Re dψ/dt, Im dψ/dt
    for i in range(n):
        out_i[i] = ps[i, 0] * ps[i, 0] + ps[i, 1] * ps[i, 1]
        out_j[i, n_u] = 2.0 * (ps[i, 0] * ps[i, 2] + ps[i, 1] * ps[i, 3])
    g = np.empty((n, 2 * n))  # [Re | Im] of G[k, j] = F_kj v_k
    for k in range(n):
        for j in range(k, n):
            s = tau * rsinc(0.5 * tau * (lam[k] - lam[j]))
            re = -s * (hs[k] * hc[j] + hc[k] * hs[j])  # Re(i h_k h_j) s
            im = s * (hc[k] * hc[j] - hs[k] * hs[j])
            g[k, j] = re * c[0, k]
            g[k, n + j] = im * c[0, k]
            g[j, k] = re * c[0, j]
            g[j, n + k] = im * c[0, j]
    bb = c @ g  # bb[b, j] = Re B[j, b], bb[b, n + j] = Im B[j, b]
    n_dirs = ddirs.shape[0]
    half = n_u + n_dirs
    y = np.zeros((half, 2 * n))
    _accumulate_real(c, bb, pos_col, pos_w, y)
    for d in range(n_dirs):
        for a in range(n):
            e = ddirs[d, a]
            if e == 0.0:
                continue
            for j in range(n):
                wc = e * c[a, j]
                y[n_u + d, j] += wc * bb[a, j]
                y[n_u + d, n + j] += wc * bb[a, n + j]
    ys = np.empty((2 * half, n))  # [Re rows; Im rows]
    for k in range(half):
        for j in range(n):
            ys[k, j] = y[k, j]
            ys[half + k, j] = y[k, n + j]
    sp = ys @ c.T  # sp[k, i] = Σ_j Y[k, j] C[i, j]
    for i in range(n):
        pr, pim = ps[i, 0], ps[i, 1]
        for k in range(half):
            zr = pr * sp[k, i] + pim * sp[half + k, i]  # ψ_i* S[i, k]
            zi = pr * sp[half + k, i] - pim * sp[k, i]
            if k < n_u:
                out_j[i, k] = 2.0 * (col_fac[k].real * zr - col_fac[k].imag * zi)
            else:
                out_j[i, k + 1] = 2.0 * zr


@njit(parallel=True, cache=True)
def jacobian_q_real(offdiag, diag, thickness, pos_col, pos_w, col_fac, n_u, kappa, kfac, u0s,
                    ddirs, out_i, out_j):
    """:func:`tilt_jacobian_q_real` over tilts, real symmetric matrices (``kappa``, ``kfac``,
    ``u0s`` unused: absorption takes the general path; ``ddirs`` real in a complex array)."""
    dr = np.ascontiguousarray(ddirs.real)
    for m in prange(diag.shape[0]):
        w, c = np.linalg.eigh(_matrix_at(offdiag, diag, m))
        tilt_jacobian_q_real(w, np.ascontiguousarray(c), TWO_PI * thickness, pos_col, pos_w,
                             col_fac, n_u, dr, out_i[m], out_j[m])


@njit(parallel=True, cache=True)
def jacobian_q_real_given(w_all, c_all, thickness, pos_col, pos_w, col_fac, n_u, kappa, kfac,
                          u0s, ddirs, out_i, out_j):
    """:func:`jacobian_q_real` from eigensystems already at hand: w_all (n_tilts, n), c_all
    (n_tilts, n, n) (e.g. from :func:`intensities_real_kept` at the same matrices)."""
    dr = np.ascontiguousarray(ddirs.real)
    for m in prange(w_all.shape[0]):
        tilt_jacobian_q_real(w_all[m], c_all[m], TWO_PI * thickness, pos_col, pos_w, col_fac,
                             n_u, dr, out_i[m], out_j[m])


@njit(cache=True)
def _propagate_real(w, c, thickness, out_m):
    """|C diag(e^{2πiλt}) Cᵀe₀|² in real arithmetic for every thickness: out_m (n_thickness, n)."""
    x = c[0, :].copy()
    n = w.shape[0]
    for it in range(thickness.shape[0]):
        ph = TWO_PI * w * thickness[it]
        pr = c @ (np.cos(ph) * x)
        pi = c @ (np.sin(ph) * x)
        for i in range(n):
            out_m[it, i] = pr[i] * pr[i] + pi[i] * pi[i]


@njit(parallel=True, cache=True)
def intensities_real_kept(offdiag, diag, thickness, out, w_out, c_out):
    """:func:`intensities_real` that also writes each tilt's eigensystem: w_out (n_tilts, n),
    c_out (n_tilts, n, n), for a Jacobian at the same matrices (:func:`jacobian_q_real_given`)."""
    for m in prange(diag.shape[0]):
        w, c = np.linalg.eigh(_matrix_at(offdiag, diag, m))
        w_out[m, :] = w
        c_out[m, :, :] = c
        _propagate_real(w_out[m], c_out[m], thickness, out[:, m, :])


@njit(parallel=True, cache=True)
def jacobian_q_hermitian(offdiag, diag, thickness, pos_col, pos_w, col_fac, n_u, kappa, kfac,
                         u0s, ddirs, out_i, out_j):
    """:func:`tilt_jacobian_q` over tilts, complex Hermitian matrices."""
    for m in prange(diag.shape[0]):
        lam, c, cinv = _decompose_hermitian(offdiag, diag, m)
        tilt_jacobian_q(lam, c, cinv, TWO_PI * thickness, pos_col, pos_w, col_fac, n_u, kappa,
                        kfac, u0s, ddirs, out_i[m], out_j[m])


@njit(parallel=True, cache=True)
def jacobian_q_general(offdiag, diag, thickness, pos_col, pos_w, col_fac, n_u, kappa, kfac,
                       u0s, ddirs, out_i, out_j):
    """:func:`tilt_jacobian_q` over tilts, general (absorbing) matrices."""
    for m in prange(diag.shape[0]):
        lam, c, cinv = _decompose_general(offdiag, diag, m)
        tilt_jacobian_q(lam, c, cinv, TWO_PI * thickness, pos_col, pos_w, col_fac, n_u, kappa,
                        kfac, u0s, ddirs, out_i[m], out_j[m])
