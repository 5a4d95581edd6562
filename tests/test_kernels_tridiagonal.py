"""The tridiagonal route of the intensity kernels (Householder reduction, implicit QR, rotations).

``intensities_real`` and ``intensities_hermitian`` never form eigenvectors: they reduce the
structure matrix to a real tridiagonal T, diagonalise T by implicit QR recorded as plane
rotations, and build ψ = exp(2πitH) e₀ from rotations and reflectors. These tests hold that route
against eigh and the matrix exponential on the awkward inputs: exactly and nearly repeated
eigenvalues (zone axes), split tridiagonals, one and two beams, many thicknesses, the fallback to
eigh, and the kernels' on-disk cache in a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.linalg
from threadpoolctl import threadpool_limits

from larbed import presets
from larbed._kernels import bloch
from larbed.testing import structure_matrices, two_beam_intensity

#: Kernel and eigh solve the same problem with backward-stable steps; with phases 2πλt up to ~10³
#: rad (|λ| ≲ 0.1 1/Å, t ≤ 300 nm) round-off reaches a few 1e-13 in I (intensities ≤ 1).
INTENSITY_ATOL = 2e-12
#: The benchmark presets are checked to the benchmarks' agreement (benchmarks/_cases.py).
PRESET_ATOL = 1e-10
#: Z diag(λ) Zᵀ reproduces T, and ZᵀZ = I, to a few ulps per rotation sweep (n ≤ 80 here).
RECONSTRUCT_ATOL = 1e-13
#: Common phase of the complex U_g (as benchmarks/_cases.py COMPLEX_PHASE).
COMPLEX_PHASE = 0.3

THICKNESSES_A = np.array([0.0, 70.0, 500.0, 3000.0])
RNG_SEED = 20240611


def _kernel(off, diag, thickness_a):
    kernel = bloch.intensities_real if np.isrealobj(off) else bloch.intensities_hermitian
    out = np.full((len(thickness_a), diag.shape[0], diag.shape[1]), np.nan)
    with threadpool_limits(1, user_api="blas"):
        kernel(np.ascontiguousarray(off), np.ascontiguousarray(diag), thickness_a, out)
    return out


def _eigh_reference(off, diag, thickness_a):
    """|C diag(e^{2πiλt}) Cᴴ e₀|² per tilt, from numpy.linalg.eigh (T, M, N)."""
    out = np.empty((len(thickness_a),) + diag.shape)
    for m in range(diag.shape[0]):
        h = off.astype(complex)
        h[np.diag_indices_from(h)] = diag[m]
        w, c = np.linalg.eigh(h)
        psi = c @ (np.exp(2j * np.pi * w[:, None] * thickness_a[None, :]) * np.conj(c[0])[:, None])
        out[:, m, :] = (np.abs(psi) ** 2).T
    return out


def _expm_reference(off, diag, thickness_a):
    """|exp(2πitH) e₀|² per tilt by scipy.linalg.expm (no eigendecomposition at all)."""
    out = np.empty((len(thickness_a),) + diag.shape)
    for m in range(diag.shape[0]):
        h = off.astype(complex)
        h[np.diag_indices_from(h)] = diag[m]
        for j, t in enumerate(thickness_a):
            out[j, m, :] = np.abs(scipy.linalg.expm(2j * np.pi * t * h)[:, 0]) ** 2
    return out


def _with_spectrum(eigenvalues, rng, complex_):
    """A random matrix U diag(λ) Uᴴ (unitary or orthogonal U) with the given eigenvalues."""
    n = len(eigenvalues)
    x = rng.normal(size=(n, n)) + (1j * rng.normal(size=(n, n)) if complex_ else 0.0)
    q, _ = np.linalg.qr(x)
    h = (q * np.asarray(eigenvalues)) @ np.conj(q).T
    return 0.5 * (h + np.conj(h).T)


def _split(h, n_tilts, rng, jitter):
    """(offdiag, diag) kernel inputs: h's diagonal for tilt 0, jittered for the others."""
    off = h.copy()
    d0 = np.real(np.diag(h)).copy()
    off[np.diag_indices_from(off)] = 0.0
    diag = d0[None, :] + jitter * rng.normal(size=(n_tilts, len(d0)))
    diag[0] = d0
    return (off.real.copy() if np.isrealobj(h) else off), diag


# ------------------------------------------------------------------------------ implicit QR on T
def _tridiagonals():
    rng = np.random.default_rng(RNG_SEED)
    n = 40
    cases = {
        "random": (0.02 * rng.normal(size=n), 0.01 * rng.normal(size=n - 1)),
        "split": (0.02 * rng.normal(size=n), np.where(np.arange(n - 1) % 7 == 3, 0.0,
                                                      0.01 * rng.normal(size=n - 1))),
        "zero": (np.zeros(n), np.zeros(n - 1)),
        "diagonal": (0.05 * rng.normal(size=n), np.zeros(n - 1)),
        "graded": (np.logspace(-9, -1, n), np.logspace(-9, -1, n - 1)),
        "one": (np.array([0.3]), np.zeros(0)),
        "two": (np.array([0.01, -0.02]), np.array([0.004])),
    }
    block_d, block_e = 0.02 * rng.normal(size=5), 0.01 * rng.normal(size=4)
    # eight identical blocks: every eigenvalue eight-fold (the zone-axis situation, exactly)
    cases["repeated blocks"] = (np.tile(block_d, 8), np.concatenate(
        [np.append(block_e, 0.0)] * 7 + [block_e]))
    # Wilkinson's W21+: pairs of eigenvalues that agree to ~1e-14 relative
    w = np.abs(np.arange(21) - 10.0)
    cases["Wilkinson W21+"] = (0.01 * w, 0.01 * np.ones(20))
    return cases


@pytest.mark.parametrize(("d", "e"), list(_tridiagonals().values()), ids=list(_tridiagonals()))
def test_implicit_qr_diagonalises_the_tridiagonal(d, e):
    n = len(d)
    t = np.diag(d) + np.diag(e, 1) + np.diag(e, -1)
    dd, ee = d.astype(float).copy(), np.zeros(n)
    ee[: n - 1] = e
    x = np.empty(n)
    rot = np.empty((4 * n * n + 16, 2))
    sweeps = np.empty((30 * n + 1, 2), dtype=np.int64)
    n_rot, n_sweeps = bloch._tridiagonal_qr(dd, ee, x, rot, sweeps, 30 * n)
    assert n_rot >= 0
    z = np.eye(n)
    bloch._apply_rotations(z, rot, sweeps, n_rot, n_sweeps)
    scale = max(np.abs(t).max(), 1e-300)
    np.testing.assert_allclose(z.T @ z, np.eye(n), rtol=0, atol=RECONSTRUCT_ATOL)
    np.testing.assert_allclose((z * dd) @ z.T, t, rtol=0, atol=RECONSTRUCT_ATOL * scale)
    np.testing.assert_allclose(x, z[0], rtol=0, atol=RECONSTRUCT_ATOL)
    np.testing.assert_allclose(np.sort(dd), np.linalg.eigvalsh(t), rtol=0,
                               atol=RECONSTRUCT_ATOL * scale)


def test_implicit_qr_reports_what_stopped_it():
    d, e = _tridiagonals()["random"]
    n = len(d)
    ee = np.append(e, 0.0)
    x, sweeps = np.empty(n), np.empty((30 * n + 1, 2), dtype=np.int64)
    # no sweeps allowed: not converged
    assert bloch._tridiagonal_qr(d.copy(), ee.copy(), x, np.empty((4 * n * n, 2)), sweeps,
                                 0) == (-1, 0)
    # room for a single rotation: too short a record
    assert bloch._tridiagonal_qr(d.copy(), ee.copy(), x, np.empty((1, 2)), sweeps,
                                 30 * n) == (-2, 0)


# ------------------------------------------------------------------------------ the kernels
SPECTRA = {
    "distinct": lambda rng, n: 0.03 * rng.normal(size=n),
    # eigenvalues repeated four times, others equal to 1e-13 (relative 1e-11)
    "degenerate": lambda rng, n: np.repeat(0.03 * rng.normal(size=n // 4 + 1), 4)[:n]
    + 1e-13 * rng.integers(0, 2, size=n),
    # one eigenvalue n-fold: H = λI, exp(2πitH) e₀ = e^{2πiλt} e₀
    "scalar": lambda rng, n: np.full(n, 0.017),
}


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "hermitian"])
@pytest.mark.parametrize("spectrum", list(SPECTRA))
@pytest.mark.parametrize("n", [1, 2, 3, 17, 64])
def test_kernels_match_eigh_and_expm(n, spectrum, complex_):
    rng = np.random.default_rng(RNG_SEED + n)
    h = _with_spectrum(SPECTRA[spectrum](rng, n), rng, complex_)
    if not complex_:
        h = h.real
    # tilt 0 keeps the spectrum exactly; tilts 1…3 move the diagonal a little
    off, diag = _split(h, 4, rng, jitter=1e-3)
    got = _kernel(off, diag, THICKNESSES_A)
    ref = _eigh_reference(off, diag, THICKNESSES_A)
    np.testing.assert_allclose(got, ref, rtol=0, atol=INTENSITY_ATOL)
    np.testing.assert_allclose(got[:, :1], _expm_reference(off, diag[:1], THICKNESSES_A),
                               rtol=0, atol=INTENSITY_ATOL)
    np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=0, atol=INTENSITY_ATOL)
    np.testing.assert_allclose(got[0, :, 0], 1.0, rtol=0, atol=1e-14)  # t = 0: e₀


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "hermitian"])
def test_two_beams_follow_the_two_beam_formula(complex_):
    u = 0.004 * (np.exp(0.7j) if complex_ else 1.0)  # U_g/(2K) [1/Å]
    excitation = np.linspace(-0.02, 0.02, 9)  # A_gg/(2K) [1/Å]
    off = np.array([[0.0, u], [np.conj(u), 0.0]])
    off = off if complex_ else off.real
    diag = np.stack([np.zeros_like(excitation), excitation], axis=1)
    got = _kernel(off, diag, THICKNESSES_A)
    want = two_beam_intensity(u, excitation[None, :], THICKNESSES_A[:, None])
    np.testing.assert_allclose(got[..., 1], want, rtol=0, atol=INTENSITY_ATOL)
    np.testing.assert_allclose(got[..., 0], 1.0 - want, rtol=0, atol=INTENSITY_ATOL)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "hermitian"])
def test_a_tilt_falls_back_to_eigh_when_qr_is_cut_short(complex_):
    rng = np.random.default_rng(RNG_SEED)
    h = _with_spectrum(0.03 * rng.normal(size=12), rng, complex_)
    off, diag = _split(h if complex_ else h.real, 2, rng, jitter=1e-3)
    tilt = bloch._intensities_hermitian_tilt if complex_ else bloch._intensities_real_tridiagonal_tilt
    want = _eigh_reference(off, diag, THICKNESSES_A)[:, 1]
    for max_sweeps, route in [(0, False), (30 * 12, True)]:  # 0: QR may not start; eigh serves
        out_m = np.full((len(THICKNESSES_A), 12), np.nan)
        with threadpool_limits(1, user_api="blas"):
            assert tilt(off, diag, 1, THICKNESSES_A, max_sweeps, out_m) is route
        np.testing.assert_allclose(out_m, want, rtol=0, atol=INTENSITY_ATOL)


@pytest.mark.parametrize("preset", ["SrTiO3-1", "SrTiO3-10", "ZnO-2"])
@pytest.mark.parametrize("ug_kind", ["real", "complex"])
def test_presets_agree_with_eigh_over_a_thickness_series(preset, ug_kind):
    """The benchmark cases (complex: a common phase on every U_g), tilts including the zone axis."""
    p = presets.load(preset)
    ug = p.ug()
    if ug_kind == "complex":
        ug = ug.copy(data=ug.values * np.exp(1j * COMPLEX_PHASE))
    mats = structure_matrices(p.geometry, ug) / (2.0 * p.geometry.k0)
    tilts = np.unique(np.r_[np.argmin(np.hypot(*p.geometry.tilt_mrad.T)),
                            np.arange(0, p.geometry.n_tilts, 37)])
    idx = np.arange(p.geometry.n_beams)
    diag = np.ascontiguousarray(mats[tilts][:, idx, idx].real)
    off = mats[0].copy()
    off[idx, idx] = 0.0
    if ug_kind == "real":
        assert np.abs(off.imag).max() < 1e-12 * np.abs(off).max()
        off = off.real.copy()
    thickness_a = 10.0 * np.array([0.0, p.thickness_nm, 5.0, 55.0, 105.0])
    got = _kernel(off, diag, thickness_a)
    np.testing.assert_allclose(got, _eigh_reference(off, diag, thickness_a), rtol=0,
                               atol=PRESET_ATOL)


def _cache_inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 7)) + 1j * rng.normal(size=(7, 7))
    off = 0.01 * (x + x.conj().T)
    off[np.diag_indices(7)] = 0.0
    return off, 0.01 * rng.normal(size=(3, 7)), np.array([0.0, 400.0])


def test_cached_kernels_load_and_run_in_a_fresh_process():
    """cache=True with LAPACK inside: a new process loads the compiled kernels from the cache and
    gets the same numbers (the LAPACK routines are bound by symbol name at import, not by
    address, so a cached kernel does not call into a stale address)."""
    off, diag, thickness_a = _cache_inputs()
    want = [_kernel(off, diag, thickness_a), _kernel(off.real.copy(), diag, thickness_a)]
    # this process compiled (and cached) or loaded both kernels; the next one must load them
    script = textwrap.dedent(
        """
        import json
        import numpy as np
        from larbed._kernels import bloch
        from test_kernels_tridiagonal import _cache_inputs
        off, diag, t = _cache_inputs()
        out, out_r = np.empty((2, 3, 7)), np.empty((2, 3, 7))
        bloch.intensities_hermitian(off, diag, t, out)
        bloch.intensities_real(np.ascontiguousarray(off.real), diag, t, out_r)
        misses = sum(bloch.intensities_hermitian.stats.cache_misses.values())
        misses += sum(bloch.intensities_real.stats.cache_misses.values())
        print(json.dumps([misses, out.tolist(), out_r.tolist()]))
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(__file__), *filter(None, [env.get("PYTHONPATH")])])
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, check=True)
    misses, out, out_r = json.loads(run.stdout.strip().splitlines()[-1])
    assert misses == 0, "the fresh process compiled the kernels again instead of loading them"
    np.testing.assert_allclose(out, want[0], rtol=0, atol=1e-14)
    np.testing.assert_allclose(out_r, want[1], rtol=0, atol=1e-14)
