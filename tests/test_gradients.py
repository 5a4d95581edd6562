"""Exact intensity derivatives (SPEC §8) against scipy.linalg.expm_frechet and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

import larbed
from larbed._kernels import bloch as gradients
from larbed.refinement import intensity_jacobian
from larbed.structure_factors import ug_matrix

#: Analytic vs expm_frechet, relative to the largest derivative: both are exact up to round-off of
#: O(N) products of O(1) numbers times τ‖H‖ ~ 1e2.
FRECHET_RTOL = 1e-9
#: Central differences with h = 1e-6 (U) / 1e-5 (t, κ): truncation ~h², cancellation ~1e-16/h.
FD_RTOL = 1e-7
#: Σ_n I_n = 1 for every U_g without absorption, so Σ_n ∂I_n/∂θ = 0 to round-off.
SUM_RULE_ATOL = 1e-12
#: An origin shift changes no intensity: J · (dU/dr0) = 0 to round-off, relative to ‖J‖‖dU/dr0‖.
GAUGE_RTOL = 1e-10


def reference_jacobian(geometry, ug, thickness_nm, kappa=None, u0=0.0):
    """Plain NumPy/SciPy reference: one expm_frechet call per tilt and parameter direction."""
    inv2k = 1.0 / (2.0 * geometry.k0)
    p = geometry.n_reflections
    kap = 0.0 if kappa is None else kappa
    mat = ug_matrix(geometry, ug) * inv2k
    tau = 2.0 * np.pi * thickness_nm * 10.0
    n = geometry.n_beams
    out_i = np.empty((geometry.n_tilts, n))
    out_j = np.empty((geometry.n_tilts, n, 2 * p + 2))
    for m in range(geometry.n_tilts):
        h = mat * (1 + 1j * kap) + np.diag(geometry.excitation_diagonal[m] * inv2k + 1j * kap * u0 * inv2k)
        psi = scipy.linalg.expm(1j * tau * h)[:, 0]
        out_i[m] = np.abs(psi) ** 2
        dirs = []
        for q in range(p):
            at = geometry.pair_index == q
            dirs.append(at * (1 + 1j * kap) * inv2k)
        for q in range(p):
            at = geometry.pair_index == q
            dirs.append(1j * geometry.pair_sign * at * (1 + 1j * kap) * inv2k)
        for c, e in enumerate(dirs):
            _, frechet = scipy.linalg.expm_frechet(1j * tau * h, 1j * tau * e)
            out_j[m, :, c] = 2 * np.real(np.conj(psi) * frechet[:, 0])
        out_j[m, :, 2 * p] = 2 * np.real(np.conj(psi) * (1j * 2 * np.pi * 10.0 * h @ psi))
        e_kappa = 1j * (mat + u0 * np.eye(n) * inv2k)
        _, frechet = scipy.linalg.expm_frechet(1j * tau * h, 1j * tau * e_kappa)
        out_j[m, :, 2 * p + 1] = 2 * np.real(np.conj(psi) * frechet[:, 0])
    return out_i, out_j


@pytest.fixture(scope="module")
def geo9(srtio3):
    """SrTiO3 [001], 9 beams, 5 tilts; the centre tilt is the exact zone axis (degenerate eigenvalues)."""
    return larbed.Geometry(srtio3, 120, (0, 0, 1), 9, 5, 60)


def _complex_ug(geo, ug, seed=3):
    """Origin shift plus a random perturbation: a general complex (non-centrosymmetric) U_g."""
    rng = np.random.default_rng(seed)
    shifted = larbed.shift_origin(geo, ug, (0.37, 0.81))
    noise = 0.01 * (rng.standard_normal(geo.n_reflections) + 1j * rng.standard_normal(geo.n_reflections))
    return shifted.copy(data=shifted.values + noise)


def _zone_axis_tilt(geo):
    return int(np.flatnonzero(np.all(geo.tilt_ij == 0, axis=1))[0])


def _stack(jac):
    cols = [jac.d_real.values, jac.d_imag.values, jac.d_thickness.values[..., None]]
    if "d_absorption" in jac:
        cols.append(jac.d_absorption.values[..., None])
    return np.concatenate(cols, axis=2)


@pytest.mark.parametrize("case", ["real", "complex", "absorbing"])
def test_jacobian_matches_expm_frechet(geo9, srtio3, case):
    ug = larbed.compute_ug(srtio3, geo9)
    kappa = None
    if case != "real":
        ug = _complex_ug(geo9, ug)
    if case == "absorbing":
        kappa = 0.08
    u0 = ug.attrs["u0"]
    jac = intensity_jacobian(geo9, ug, 27.0, absorption=kappa)
    ref_i, ref_j = reference_jacobian(geo9, ug.values, 27.0, kappa, u0)
    got = _stack(jac)
    want = ref_j[:, :, : got.shape[2]]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(jac.intensity.values, ref_i, atol=1e-12)
    scale = np.max(np.abs(want))
    assert np.max(np.abs(got - want)) <= FRECHET_RTOL * scale
    # the zone-axis tilt (degenerate eigenvalues) on its own
    za = _zone_axis_tilt(geo9)
    assert np.max(np.abs(got[za] - want[za])) <= FRECHET_RTOL * scale


def test_real_u_uses_real_path_and_zone_axis_is_degenerate(geo9, srtio3):
    """The test above covers degeneracy only if the zone-axis matrix really has equal eigenvalues."""
    ug = larbed.compute_ug(srtio3, geo9)
    inv2k = 1 / (2 * geo9.k0)
    h = ug_matrix(geo9, ug).real * inv2k + np.diag(geo9.excitation_diagonal[_zone_axis_tilt(geo9)] * inv2k)
    w = np.linalg.eigvalsh(h)
    assert np.min(np.diff(w)) < 1e-14  # 4mm: two-dimensional irreducible representations
    assert larbed.simulate(geo9, ug, 10.0).attrs["eigen_path"] == "real"


@pytest.mark.parametrize("kappa", [None, 0.05])
def test_thickness_and_absorption_match_finite_differences(geo9, srtio3, kappa):
    ug = _complex_ug(geo9, larbed.compute_ug(srtio3, geo9))
    t = 33.0
    jac = intensity_jacobian(geo9, ug, t, absorption=kappa)

    def sim(tt, kk=kappa):
        return larbed.simulate(geo9, ug, tt, absorption=kk).intensity.values

    h = 1e-5
    fd_t = (sim(t + h) - sim(t - h)) / (2 * h)
    assert np.max(np.abs(fd_t - jac.d_thickness.values)) <= FD_RTOL * np.max(np.abs(fd_t))
    if kappa is not None:
        fd_k = (sim(t, kappa + h) - sim(t, kappa - h)) / (2 * h)
        assert np.max(np.abs(fd_k - jac.d_absorption.values)) <= FD_RTOL * np.max(np.abs(fd_k))


def test_ug_derivatives_match_finite_differences(geo9, srtio3):
    ug = _complex_ug(geo9, larbed.compute_ug(srtio3, geo9))
    jac = intensity_jacobian(geo9, ug, 21.0)
    h = 1e-6
    scale = max(np.max(np.abs(jac.d_real.values)), np.max(np.abs(jac.d_imag.values)))
    for q in range(geo9.n_reflections):
        for part, name in ((1.0, "d_real"), (1j, "d_imag")):
            d = np.zeros(geo9.n_reflections, complex)
            d[q] = part * h
            plus = larbed.simulate(geo9, ug.copy(data=ug.values + d), 21.0).intensity.values
            minus = larbed.simulate(geo9, ug.copy(data=ug.values - d), 21.0).intensity.values
            fd = (plus - minus) / (2 * h)
            assert np.max(np.abs(fd - jac[name].values[:, :, q])) <= FD_RTOL * scale, (q, name)


def test_sum_rule_and_origin_null_direction(geo9, srtio3):
    ug = _complex_ug(geo9, larbed.compute_ug(srtio3, geo9))
    jac = intensity_jacobian(geo9, ug, 40.0)
    for name in ("d_real", "d_imag", "d_thickness"):
        assert np.max(np.abs(jac[name].sum("beam").values)) <= SUM_RULE_ATOL
    g = 2 * np.pi * geo9.reflection_xy
    for axis in range(2):
        d_re = -g[:, axis] * ug.values.imag
        d_im = g[:, axis] * ug.values.real
        change = jac.d_real.values @ d_re + jac.d_imag.values @ d_im
        norm = np.linalg.norm(np.r_[d_re, d_im]) * np.max(np.abs(jac.d_real.values))
        assert np.max(np.abs(change)) <= GAUGE_RTOL * norm


def _frechet_by_divided_differences(lam, c, e, tau):
    cinv = np.linalg.inv(c)
    f = gradients.divided_differences(lam.astype(complex), tau)
    return c @ (f * (cinv @ e @ c)) @ cinv


@pytest.mark.parametrize(
    "lam",
    [
        np.array([0.1, 0.1, -0.3, 0.2, 0.2]),  # exactly equal pairs
        np.array([0.1, 0.1 + 1e-13, -0.3, 0.2 - 1e-9, 0.2]),  # nearly equal
        np.array([0.1 + 0.01j, 0.1 + 0.01j, -0.3 + 0.002j, 0.2 + 1e-12j, 0.2]),  # absorbing
    ],
)
def test_divided_differences_at_degenerate_eigenvalues(lam):
    rng = np.random.default_rng(0)
    n = len(lam)
    if np.iscomplexobj(lam):
        c = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))  # non-normal
    else:
        c, _ = np.linalg.qr(rng.standard_normal((n, n)))
    e = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    tau = 2 * np.pi * 300.0
    h = c @ np.diag(lam) @ np.linalg.inv(c)
    got = _frechet_by_divided_differences(np.asarray(lam), c, e, tau)
    _, want = scipy.linalg.expm_frechet(1j * tau * h, 1j * tau * e)
    assert np.all(np.isfinite(got))
    assert np.max(np.abs(got - want)) <= FRECHET_RTOL * np.max(np.abs(want))


def test_csinc_series_joins_the_direct_formula():
    """Just inside and outside the series threshold the two forms agree to round-off."""
    for z in (0.99e-2, 1.01e-2, 0.7e-2 + 0.7e-2j, 1e-300, 0.0):
        want = 1.0 if z == 0 else np.sin(z) / z
        assert abs(gradients.csinc(complex(z)) - want) <= 1e-15


@settings(max_examples=8)
@given(seed=st.integers(0, 2**31 - 1), t=st.floats(1.0, 80.0))
def test_random_ug_jacobian_property(srtio3, seed, t):
    geo = larbed.Geometry(srtio3, 120, (0, 0, 1), 5, 5, 80)
    ug = larbed.random_ug(geo, seed, ug_range=0.1)
    jac = intensity_jacobian(geo, ug, t)
    _, ref_j = reference_jacobian(geo, ug.values, t)
    got = _stack(jac)
    want = ref_j[:, :, : got.shape[2]]
    assert np.max(np.abs(got - want)) <= FRECHET_RTOL * np.max(np.abs(want))


def test_jacobian_rejects_bad_thickness(geo9, srtio3):
    ug = larbed.compute_ug(srtio3, geo9)
    with pytest.raises(ValueError, match="thickness"):
        intensity_jacobian(geo9, ug, -1.0)
    with pytest.raises(ValueError, match="thickness"):
        intensity_jacobian(geo9, ug, float("nan"))
