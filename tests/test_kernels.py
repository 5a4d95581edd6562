"""Numba kernels against the plain NumPy reference (larbed.testing) on awkward inputs."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from larbed import Geometry, compute_ug, shift_origin, simulate
from larbed._kernels import bloch
from larbed.bloch import prepare_matrices
from larbed.testing import (
    assert_patterns_allclose,
    extinction_distance,
    kinematic_intensity,
    simulate_reference,
    structure_matrices,
    two_beam_intensity,
)

#: Kernel and reference solve the same Hermitian eigenproblems: round-off only (N ≤ 19, t ≤ 50 nm).
HERMITIAN_ATOL = 1e-12
#: The general eigensolver is less well conditioned (non-normal A): a little more round-off.
GENERAL_ATOL = 1e-11
#: t = 0 gives C C⁻¹ e₀ = e₀ up to round-off of the (near-)unitary eigenvector matrix.
ZERO_THICKNESS_ATOL = 1e-13
#: Eigen-decompositions reproduce their matrix to a few ulps of its largest element.
RECONSTRUCT_RTOL = 1e-12

THICKNESSES_NM = np.array([0.0, 7.0, 50.0])




# (crystal, zone axis, n_beams, voltage)
CASES = {
    "SrTiO3[001]": ("SrTiO3", (0, 0, 1), 13, 120.0),
    "SrTiO3[110]": ("SrTiO3", (1, 1, 0), 11, 120.0),
    "SrTiO3[111]": ("SrTiO3", (1, 1, 1), 13, 120.0),
    "ZnO[001]": ("ZnO", (0, 0, 1), 13, 100.0),
    "ZnO[100]": ("ZnO", (1, 0, 0), 9, 100.0),
    "triclinic[001]": ("triclinic", (0, 0, 1), 9, 200.0),
    "triclinic[1-12]": ("triclinic", (1, -1, 2), 7, 200.0),
}


@pytest.fixture(scope="module")
def geometry(make_geometry):
    def make(case: str, n_tilts: int) -> Geometry:
        name, zone, n_beams, kv = CASES[case]
        return make_geometry(name, zone, n_beams, n_tilts, 40.0, kv)

    return make


def ug_variant(geo: Geometry, variant: str):
    ug = compute_ug(geo.crystal, geo)
    if variant == "complex":
        ug = shift_origin(geo, ug, (0.43, -0.61, 0.2))
    return ug


@pytest.mark.parametrize("n_tilts", [1, 13], ids=["zone-axis", "13-tilts"])
@pytest.mark.parametrize("variant", ["computed", "complex", "absorbing"])
@pytest.mark.parametrize("case", list(CASES))
def test_simulate_matches_reference(case, variant, n_tilts, geometry):
    geo = geometry(case, n_tilts)
    ug = ug_variant(geo, variant)
    absorption = 0.1 if variant == "absorbing" else None
    ref = simulate_reference(geo, ug, THICKNESSES_NM, absorption)
    atol = GENERAL_ATOL if variant == "absorbing" else HERMITIAN_ATOL
    # use_symmetry=False: every tilt on the solver the U_g call for; True: simulate's shortcuts
    # (origin moved onto a centre of symmetry, symmetry-independent tilts only) — same answer
    plain = simulate(geo, ug, THICKNESSES_NM, absorption=absorption, use_symmetry=False)
    if variant == "absorbing":
        assert plain.attrs["eigen_path"] == "general"
    elif variant == "complex":
        assert plain.attrs["eigen_path"] == "hermitian"
    assert_patterns_allclose(plain.intensity.values, ref, rtol=0, atol=atol)
    ds = simulate(geo, ug, THICKNESSES_NM, absorption=absorption)
    assert_patterns_allclose(ds.intensity.values, ref, rtol=0, atol=atol)
    # zero thickness: the incident beam only
    expected = np.zeros((geo.n_tilts, geo.n_beams))
    expected[:, 0] = 1.0
    assert_patterns_allclose(ds.intensity.values[0], expected, rtol=0, atol=ZERO_THICKNESS_ATOL)


def test_srtio3_zone_axis_is_exactly_degenerate(geometry):
    """The awkward case is real: at the SrTiO3 [001] zone axis A has repeated eigenvalues."""
    geo = geometry("SrTiO3[001]", 1)
    mats = structure_matrices(geo, compute_ug(geo.crystal, geo))
    w = np.linalg.eigvalsh(mats[0])
    gaps = np.diff(np.sort(w))
    assert np.sum(gaps < 1e-12 * np.abs(w).max()) >= 3


def _kernel_run(path: str, off, diag, thickness_nm) -> np.ndarray:
    kernel = {
        "real": bloch.intensities_real,
        "hermitian": bloch.intensities_hermitian,
        "general": bloch.intensities_general,
    }[path]
    t = np.atleast_1d(np.asarray(thickness_nm, dtype=float)) * 10.0
    out = np.full((len(t), diag.shape[0], diag.shape[1]), np.nan)
    with threadpool_limits(1, user_api="blas"):
        kernel(np.ascontiguousarray(off), np.ascontiguousarray(diag), t, out)
    return out


@pytest.mark.parametrize(
    ("case", "path"),
    [
        ("SrTiO3[001]", "real"),
        ("SrTiO3[001]", "hermitian"),
        ("SrTiO3[001]", "general"),
        ("triclinic[1-12]", "hermitian"),  # complex U_g: no real-symmetric form
        ("triclinic[1-12]", "general"),
    ],
)
def test_every_kernel_on_the_same_hermitian_input(case, path, geometry):
    """Every kernel that can take the problem gives the reference answer (no absorption)."""
    geo = geometry(case, 13)
    ug = compute_ug(geo.crystal, geo)
    off, diag, auto_path = prepare_matrices(geo, ug.values)
    # centrosymmetric SrTiO3 with the origin on Sr: real U_g; the triclinic cell: complex U_g
    assert auto_path == ("real" if case == "SrTiO3[001]" else "hermitian")
    if path == "real":
        off_p, diag_p = off.real, diag.real
    elif path == "hermitian":
        off_p, diag_p = off.astype(complex), diag.real
    else:
        off_p, diag_p = off.astype(complex), diag.astype(complex)
    out = _kernel_run(path, off_p, diag_p, THICKNESSES_NM)
    ref = simulate_reference(geo, ug, THICKNESSES_NM)
    assert_patterns_allclose(
        out, ref, rtol=0, atol=GENERAL_ATOL if path == "general" else HERMITIAN_ATOL
    )


@pytest.mark.parametrize("path", ["real", "hermitian", "general"])
def test_kernels_with_a_single_beam(path):
    """N = 1: no scattering; only absorption (imaginary diagonal) can change the intensity."""
    diag = np.array([[-0.3], [0.0], [0.7]])
    t_nm = np.array([0.0, 10.0, 100.0])
    if path == "general":
        kappa_u0 = 2e-4  # Im A_00 / (2K) [1/Å]
        out = _kernel_run(path, np.zeros((1, 1), complex), diag + 1j * kappa_u0, t_nm)
        expected = np.exp(-4 * np.pi * kappa_u0 * t_nm * 10.0)[:, None, None]
        np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-12)
    else:
        off = np.zeros((1, 1), complex if path == "hermitian" else float)
        out = _kernel_run(path, off, diag, t_nm)
        np.testing.assert_allclose(out, 1.0, rtol=0, atol=1e-15)


def test_eigensystem_kernels_reproduce_their_matrices(geometry):
    geo = geometry("triclinic[001]", 13)
    ug = compute_ug(geo.crystal, geo)
    off, diag, path = prepare_matrices(geo, ug.values, absorption=0.05, u0=ug.attrs["u0"])
    assert path == "general"
    n_tilts, n = diag.shape
    w = np.empty((n_tilts, n), complex)
    c = np.empty((n_tilts, n, n), complex)
    cinv0 = np.empty((n_tilts, n), complex)
    with threadpool_limits(1, user_api="blas"):
        bloch.eigensystems_general(off, diag, w, c, cinv0)
    a = np.repeat(off[None], n_tilts, axis=0)
    a[:, np.arange(n), np.arange(n)] = diag
    scale = np.abs(a).max()
    np.testing.assert_allclose(
        c @ (w[..., None] * np.linalg.inv(c)), a, rtol=0, atol=RECONSTRUCT_RTOL * scale
    )
    e0 = np.zeros(n)
    e0[0] = 1.0
    np.testing.assert_allclose(
        np.einsum("mij,mj->mi", c, cinv0), np.broadcast_to(e0, (n_tilts, n)), rtol=0, atol=1e-12
    )

    off_h, diag_h, path_h = prepare_matrices(geo, ug.values)
    assert path_h == "hermitian"
    wh = np.empty((n_tilts, n))
    ch = np.empty((n_tilts, n, n), complex)
    with threadpool_limits(1, user_api="blas"):
        bloch.eigensystems_hermitian(off_h, diag_h, wh, ch)
    ah = np.repeat(off_h[None], n_tilts, axis=0)
    ah[:, np.arange(n), np.arange(n)] = diag_h
    recon = ch @ (wh[..., None] * np.conj(np.swapaxes(ch, 1, 2)))
    np.testing.assert_allclose(recon, ah, rtol=0, atol=RECONSTRUCT_RTOL * np.abs(ah).max())
    assert np.all(np.diff(wh, axis=1) >= 0)  # ascending, as eigh returns them


# ------------------------------------------------------------------------ larbed.testing itself
def test_assert_patterns_allclose_fails_when_it_should():
    a = np.full((2, 3), 0.25)
    assert_patterns_allclose(a, a + 1e-13, rtol=0, atol=1e-12)
    with pytest.raises(AssertionError, match=r"worst at index \(1, 2\)"):
        b = a.copy()
        b[1, 2] += 1e-9
        assert_patterns_allclose(b, a, rtol=0, atol=1e-12)
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_patterns_allclose(a, a[:, :2])
    with pytest.raises(AssertionError, match="NaN"):
        assert_patterns_allclose(np.where(a > 0, np.nan, a), a)


def test_closed_forms_are_consistent():
    """The kinematic formula is the thin-crystal limit of the two-beam formula (SPEC §2)."""
    u, s = 3e-5 - 2e-5j, np.linspace(-0.02, 0.02, 41)
    t = 40.0  # Å: 2π|u|t ≈ 0.009
    two = two_beam_intensity(u, s, t)
    kin = kinematic_intensity(u, s, t)
    np.testing.assert_allclose(two, kin, rtol=0, atol=1e-3 * kin.max())
    # at the Bragg condition the two-beam period in t is the extinction distance K/|U_g|
    k0, ug = 30.0, 0.05
    xi = extinction_distance(ug, k0)
    assert xi == pytest.approx(600.0)
    assert two_beam_intensity(ug / (2 * k0), 0.0, xi / 2) == pytest.approx(1.0, abs=1e-15)
    assert two_beam_intensity(ug / (2 * k0), 0.0, xi) == pytest.approx(0.0, abs=1e-15)
