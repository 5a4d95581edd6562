"""Physics checks of SPEC §2 on the public simulator and the references of larbed.testing."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from larbed import Crystal, Geometry, compute_ug, input_ug, random_ug, shift_origin, simulate
from larbed._kernels import bloch
from larbed.bloch import prepare_matrices
from larbed.structure_factors import ug_matrix
from larbed.testing import (
    assert_patterns_allclose,
    extinction_distance,
    kinematic_intensity,
    propagate,
    simulate_expm,
    simulate_reference,
    structure_matrices,
    two_beam_intensity,
)

#: SPEC §2: without absorption Σ_n I_n = 1 at every tilt to 1e-12.
CONSERVATION_ATOL = 1e-12
#: SPEC §2: eigen route and matrix-exponential route agree to 1e-10.
EXPM_ATOL = 1e-10
#: SPEC §2: an origin shift changes no intensity (round-off only), checked to 1e-12.
ORIGIN_ATOL = 1e-12
#: The two-beam formula is exact for two beams; only eigen-solver round-off remains.
TWO_BEAM_ATOL = 1e-12
#: Zone-axis symmetry is exact; symmetry-related elements differ by eigen-solver round-off only.
SYMMETRY_ATOL = 1e-12
#: Kinematic limit: dynamical corrections O(π t |U_g| / K) ≈ 1e-3 of the peak (U ~ 1e-4 Å⁻², 5 nm).
KINEMATIC_RTOL = 3e-3
#: Adding U_0·1 to A changes every eigenvalue by a constant: intensities equal to round-off.
U0_ATOL = 1e-12

THICKNESSES_NM = np.array([0.0, 3.0, 17.5, 60.0])


@pytest.fixture(scope="module")
def sto(srtio3):
    return lambda: srtio3


@pytest.fixture(scope="module")
def sto_geometry(make_geometry):
    return lambda n_beams=13, n_tilts=49, tilt_range_mrad=70.0: make_geometry(
        "SrTiO3", n_beams=n_beams, n_tilts=n_tilts, tilt_range_mrad=tilt_range_mrad)


def run_kernel_path(path: str, geometry: Geometry, ug, thickness_nm) -> np.ndarray:
    """Call one Numba kernel directly (the 'general' one also on a Hermitian matrix)."""
    off, diag, _ = prepare_matrices(geometry, np.asarray(ug), None)
    if path == "real":
        off, diag = np.ascontiguousarray(off.real), np.ascontiguousarray(diag.real)
        kernel = bloch.intensities_real
    elif path == "hermitian":
        off, diag = off.astype(complex), np.ascontiguousarray(diag.real)
        kernel = bloch.intensities_hermitian
    else:
        off, diag = off.astype(complex), diag.astype(complex)
        kernel = bloch.intensities_general
    t = np.atleast_1d(np.asarray(thickness_nm, dtype=float)) * 10.0
    out = np.empty((len(t), diag.shape[0], diag.shape[1]))
    with threadpool_limits(1, user_api="blas"):
        kernel(off, diag, t, out)
    return out


# ----------------------------------------------------------------------------- conservation
@pytest.mark.parametrize("path", ["real", "hermitian", "general"])
def test_intensity_conserved_on_every_kernel_path(path, sto, sto_geometry):
    geo = sto_geometry()
    ug = compute_ug(sto(), geo)
    if path != "real":  # complex U_g: move the origin off the inversion centre
        ug = shift_origin(geo, ug, (0.31, 0.77, 0.0))
        assert np.abs(ug.values.imag).max() > 1e-3
    out = run_kernel_path(path, geo, ug.values, THICKNESSES_NM)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=0, atol=CONSERVATION_ATOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_simulate_conserves_intensity_for_random_complex_ug(seed, sto_geometry):
    geo = sto_geometry(25, 13)
    ug = random_ug(geo, seed=seed)  # thesis range ±0.2 Å⁻²: strongly dynamical
    ds = simulate(geo, ug, THICKNESSES_NM)
    assert ds.attrs["eigen_path"] == "hermitian"
    np.testing.assert_allclose(ds.intensity.sum("beam"), 1.0, rtol=0, atol=CONSERVATION_ATOL)


def test_zero_thickness_is_the_incident_beam(sto_geometry):
    geo = sto_geometry()
    ds = simulate(geo, random_ug(geo, seed=3), 0.0)
    expected = np.zeros((geo.n_tilts, geo.n_beams))
    expected[:, 0] = 1.0
    assert_patterns_allclose(ds.intensity, expected, rtol=0, atol=CONSERVATION_ATOL)


# ----------------------------------------------------------------------------- two beams
@cache
def two_beam_geometry(sto, n_tilts: int) -> Geometry:
    """000 and 100 of SrTiO3 [001], tilt disc centred on the exact Bragg condition of 100."""
    probe = Geometry(sto(), 120.0, (0, 0, 1), 2, 1, 10.0)
    gx = probe.g_xy[1, 0]
    assert probe.hkl[1].tolist() == [1, 0, 0] and probe.g_xy[1, 1] == pytest.approx(0.0, abs=1e-15)
    bragg_mrad = -gx / (2.0 * probe.k0) * 1e3  # k_t·g = -|g|²/2
    return Geometry(sto(), 120.0, (0, 0, 1), 2, n_tilts, 20.0, tilt_center_mrad=(bragg_mrad, 0.0))


def test_two_beam_formula_across_the_rocking_curve(sto):
    geo = two_beam_geometry(sto, 49)
    u_g = 0.03 + 0.04j
    ug = input_ug(geo, {(1, 0, 0): u_g})
    thick = np.array([2.0, 11.0, 37.0])
    ds = simulate(geo, ug, thick)
    d = geo.excitation_diagonal[:, 1] / (2 * geo.k0)
    assert np.ptp(d) > 5 * abs(u_g) / (2 * geo.k0)  # the tilts sweep well past the rocking curve
    expected = two_beam_intensity(u_g / (2 * geo.k0), d[None, :], thick[:, None] * 10.0)
    np.testing.assert_allclose(ds.intensity.isel(beam=1), expected, rtol=0, atol=TWO_BEAM_ATOL)
    np.testing.assert_allclose(ds.intensity.isel(beam=0), 1 - expected, rtol=0, atol=TWO_BEAM_ATOL)


def test_extinction_distance_at_the_bragg_condition(sto):
    geo = two_beam_geometry(sto, 1)
    d = geo.excitation_diagonal[0, 1] / (2 * geo.k0)
    assert abs(d) < 1e-15  # exact Bragg condition
    u_g = -0.021 + 0.013j
    xi = extinction_distance(u_g, geo.k0)  # Å
    assert xi == pytest.approx(geo.k0 / abs(u_g))
    fractions = np.array([0.25, 0.5, 0.75, 1.0, 1.5])
    ds = simulate(geo, input_ug(geo, [u_g]), fractions * xi / 10.0)
    i_g = ds.intensity.isel(tilt=0, beam=1).values
    # sin²(π t / ξ): half, full transfer, half, none, full
    np.testing.assert_allclose(i_g, [0.5, 1.0, 0.5, 0.0, 1.0], rtol=0, atol=TWO_BEAM_ATOL)


# ----------------------------------------------------------------------------- kinematic limit
def test_thin_crystal_kinematic_limit(sto_geometry):
    geo = sto_geometry()
    ug = random_ug(geo, seed=11, ug_range=1e-4)  # weak scattering: π t |U| / K ~ 1e-3
    t_nm = 5.0
    ds = simulate(geo, ug, t_nm)
    s = geo.excitation_diagonal / (2 * geo.k0)
    u_col = ug_matrix(geo, ug)[:, 0] / (2 * geo.k0)  # U_{g_n - 0}
    kin = kinematic_intensity(u_col[None, :], s, t_nm * 10.0)[:, 1:]
    # the sinc factor really varies over the tilts (the test sees the excitation error)
    assert np.min(np.sinc(s[:, 1:] * t_nm * 10.0) ** 2) < 0.2
    dyn = ds.intensity.values[:, 1:]
    np.testing.assert_allclose(dyn, kin, rtol=0, atol=KINEMATIC_RTOL * kin.max())
    # and the same formula is far off when the crystal is thick (it is a limit, not an identity)
    thick = simulate(geo, ug * 400, t_nm).intensity.values[:, 1:]
    assert np.abs(thick - kin * 400**2).max() > 0.1 * (kin * 400**2).max()


# ----------------------------------------------------------------------------- eigen vs expm
@pytest.mark.parametrize("kind", ["real", "complex", "absorbing"])
def test_eigen_route_equals_matrix_exponential(kind, sto, sto_geometry):
    geo = sto_geometry(13, 13)
    ug = compute_ug(sto(), geo)
    absorption = None
    if kind == "complex":
        ug = shift_origin(geo, ug, (1.1, -0.4, 0.0))
    if kind == "absorbing":
        absorption = 0.08
    # use_symmetry=False: the shifted (complex) U_g must go through the Hermitian solver here
    ds = simulate(geo, ug, THICKNESSES_NM, absorption=absorption, use_symmetry=False)
    expected_path = {"real": "real", "complex": "hermitian", "absorbing": "general"}[kind]
    assert ds.attrs["eigen_path"] == expected_path
    ref = simulate_expm(geo, ug, THICKNESSES_NM, absorption=absorption)
    assert_patterns_allclose(ds.intensity.values, ref, rtol=0, atol=EXPM_ATOL)
    # the plain-NumPy eigen reference agrees with expm as well
    assert_patterns_allclose(
        simulate_reference(geo, ug, THICKNESSES_NM, absorption), ref, rtol=0, atol=EXPM_ATOL
    )


# ----------------------------------------------------------------------------- origin shift


@pytest.mark.parametrize("shift", [(0.37, 1.21, 0.5), (2.2, -0.9)])
def test_origin_shift_changes_no_intensity(shift, sto_geometry):
    geo = sto_geometry()
    ug = random_ug(geo, seed=5, ug_range=0.08)
    shifted = shift_origin(geo, ug, shift)
    assert np.abs(shifted.values - ug.values).max() > 1e-2  # the U_g really changed
    a = simulate(geo, ug, THICKNESSES_NM).intensity
    b = simulate(geo, shifted, THICKNESSES_NM).intensity
    assert_patterns_allclose(b, a, rtol=0, atol=ORIGIN_ATOL)


def test_origin_shift_by_a_lattice_vector_is_identity(sto, sto_geometry):
    geo = sto_geometry()
    ug = random_ug(geo, seed=6)
    shifted = shift_origin(geo, ug, sto().lattice_vectors[0] + 2 * sto().lattice_vectors[1])
    np.testing.assert_allclose(shifted.values, ug.values, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- zone-axis symmetry
def _permutation(points: np.ndarray, image: np.ndarray, tol: float) -> np.ndarray:
    """Index p with points[p[i]] == image[i] (every image point must be in the set)."""
    dist = np.linalg.norm(points[None, :, :] - image[:, None, :], axis=-1)
    p = np.argmin(dist, axis=1)
    assert np.all(dist[np.arange(len(image)), p] < tol), "the set is not closed under the operation"
    return p


def _point_ops(n_fold: int) -> list[np.ndarray]:
    """The 2n operations of the point group n mm (rotations and mirrors through the x axis)."""
    ops = []
    for k in range(n_fold):
        a = 2 * np.pi * k / n_fold
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        ops.append(rot)
        ops.append(rot @ np.diag([1.0, -1.0]))
    return ops


def _assert_symmetric(intensity, geo, ops):
    g_scale = np.abs(geo.g_xy).max()
    t_scale = max(np.abs(geo.tilt_mrad).max(), 1.0)
    for op in ops:
        pb = _permutation(geo.g_xy / g_scale, geo.g_xy @ op.T / g_scale, 1e-9)
        pt = _permutation(geo.tilt_mrad / t_scale, geo.tilt_mrad @ op.T / t_scale, 1e-9)
        # I(R k_t, R g) = I(k_t, g)
        np.testing.assert_allclose(
            intensity[..., pt, :][..., pb], intensity, rtol=0, atol=SYMMETRY_ATOL
        )


def test_srtio3_zone_axis_pattern_has_4mm_symmetry(sto, sto_geometry):
    geo = sto_geometry(25, 49)
    ug = compute_ug(sto(), geo)
    intensity = simulate(geo, ug, [10.0, 30.0]).intensity.values
    ops = _point_ops(4)
    assert len(ops) == 8
    _assert_symmetric(intensity, geo, ops)
    # the check can fail: random U_g (no symmetry) break it
    broken = simulate(geo, random_ug(geo, seed=2, ug_range=0.05), [10.0, 30.0]).intensity.values
    with pytest.raises(AssertionError):
        _assert_symmetric(broken, geo, ops)


def test_srtio3_symmetry_survives_an_origin_shift(sto, sto_geometry):
    geo = sto_geometry(13, 49)
    ug = shift_origin(geo, compute_ug(sto(), geo), (0.9, 0.3))
    intensity = simulate(geo, ug, 25.0).intensity.values
    _assert_symmetric(intensity, geo, _point_ops(4))


def test_zno_zone_axis_has_6mm_symmetry():
    zno = Crystal.builtin("ZnO")
    # at the exact zone axis all twelve operations of 6mm apply
    geo1 = Geometry(zno, 100.0, (0, 0, 1), 19, 1, 30.0)
    ug1 = compute_ug(zno, geo1)
    _assert_symmetric(simulate(geo1, ug1, [20.0, 50.0]).intensity.values, geo1, _point_ops(6))
    # with a square tilt grid, the operations of 6mm that map the grid onto itself (2mm)
    geo = Geometry(zno, 100.0, (0, 0, 1), 19, 49, 30.0)
    ops = [op for op in _point_ops(6) if np.allclose(np.abs(op), np.round(np.abs(op)))]
    assert len(ops) == 4
    _assert_symmetric(simulate(geo, compute_ug(zno, geo), 50.0).intensity.values, geo, ops)


# ----------------------------------------------------------------------------- absorption
def test_absorption_loses_intensity_monotonically(sto, sto_geometry):
    geo = sto_geometry()
    ug = compute_ug(sto(), geo)  # attrs['u0'] present: absorptive diagonal iκU_0
    thick = np.array([0.0, 5.0, 10.0, 20.0, 40.0, 80.0])
    ds = simulate(geo, ug, thick, absorption=0.1)
    total = ds.intensity.sum("beam").values  # (thickness, tilt)
    np.testing.assert_allclose(total[0], 1.0, rtol=0, atol=CONSERVATION_ATOL)
    assert np.all(total[1:] < 1.0)
    assert np.all(np.diff(total, axis=0) < 0)
    # stronger absorption loses more
    more = simulate(geo, ug, thick[1:], absorption=0.2).intensity.sum("beam").values
    assert np.all(more < total[1:])


# ----------------------------------------------------------------------------- U_0
def test_u0_shifts_no_intensity(sto, sto_geometry):
    geo = sto_geometry()
    ug = compute_ug(sto(), geo)
    u0 = ug.attrs["u0"]
    assert u0 == pytest.approx(0.18467, abs=5e-6)
    mats = structure_matrices(geo, ug)
    with_u0 = mats + u0 * np.eye(geo.n_beams)[None]
    assert_patterns_allclose(
        propagate(with_u0, geo.k0, THICKNESSES_NM),
        propagate(mats, geo.k0, THICKNESSES_NM),
        rtol=0,
        atol=U0_ATOL,
    )
    no_u0 = ug.copy()
    no_u0.attrs.pop("u0")
    assert_patterns_allclose(
        simulate(geo, no_u0, THICKNESSES_NM), simulate(geo, ug, THICKNESSES_NM), rtol=0, atol=0
    )
