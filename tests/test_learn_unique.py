"""makeUniqueUgVector (SPEC §3): origin fixing that leaves every intensity unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import larbed
from larbed.learn import choose_reference_reflections, make_unique_ug_vector

#: Intensities before/after an origin shift agree to round-off of the eigen-solver (SPEC §2 test).
INTENSITY_ATOL = 1e-12
#: Phases of the references after make-unique [rad]: exact up to the atan2 round-off.
PHASE_ATOL = 1e-12
#: U_g recovered after shift + make-unique [1/Å²]: round-off of exp(2πi g·r0) products.
UG_ATOL = 1e-14


@pytest.fixture(scope="module")
def zno_geometry(zno):
    # ZnO [001]: a primitive pair (0 1 0, 1 -1 0) among the strong reflections -> unique result
    return larbed.Geometry(zno, 100, (0, 0, 1), 13, 13, 30)


def _complex_ug(geometry, seed):
    return larbed.random_ug(geometry, seed)


def test_srtio3_reference_rule_picks_strong_110_pair(small_geometry, small_ug):
    p, q = choose_reference_reflections(small_ug)
    assert geometry_hkl(small_geometry, (p, q)) == [(1, 1, 0), (1, -1, 0)]


def geometry_hkl(geometry, idx):
    return [tuple(int(v) for v in geometry.reflection_hkl[i]) for i in idx]


def test_rule_skips_near_zero_reflections(small_geometry):
    # 100 and 010 are the lowest-order primitive pair; made ~zero they must not be chosen
    vals = np.full(small_geometry.n_reflections, 0.05 + 0.0j)
    weak = [
        i
        for i, h in enumerate(small_geometry.reflection_hkl.tolist())
        if h in ([1, 0, 0], [0, 1, 0])
    ]
    vals[weak] = 1e-9
    p, q = choose_reference_reflections(vals, small_geometry)
    assert not set((p, q)) & set(weak)
    vals[weak] = 0.05
    p, q = choose_reference_reflections(vals, small_geometry)
    assert geometry_hkl(small_geometry, (p, q)) == [(1, 0, 0), (0, 1, 0)]


def test_intensities_unchanged(small_geometry, small_ug):
    ug = _complex_ug(small_geometry, 7)
    out = make_unique_ug_vector(ug, reference=small_ug)
    before = larbed.simulate(small_geometry, ug, 35.0).intensity.values
    after = larbed.simulate(small_geometry, out, 35.0).intensity.values
    np.testing.assert_allclose(after, before, rtol=0, atol=INTENSITY_ATOL)
    assert not np.allclose(out.values, ug.values)  # it did move the origin


@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), targets=st.tuples(st.floats(-3, 3), st.floats(-3, 3)))
def test_references_get_target_phases_and_moduli_are_kept(small_geometry, seed, targets):
    ug = _complex_ug(small_geometry, seed)
    out, r0, (p, q) = make_unique_ug_vector(ug, targets=targets, return_shift=True)
    got = np.angle(out.values[[p, q]] * np.exp(-1j * np.asarray(targets)))
    np.testing.assert_allclose(got, 0.0, atol=PHASE_ATOL)
    np.testing.assert_allclose(np.abs(out.values), np.abs(ug.values), rtol=1e-13)
    # the shift is the one applied: U_out = U exp(2πi g·r0) for every reflection
    phase = np.exp(2j * np.pi * (small_geometry.reflection_xy @ r0))
    np.testing.assert_allclose(out.values, ug.values * phase, atol=UG_ATOL)


@settings(max_examples=20)
@given(shift=st.tuples(st.floats(-20, 20), st.floats(-20, 20)))
def test_any_shift_is_undone_with_a_primitive_reference_pair(zno_geometry, shift):
    ug = larbed.compute_ug(zno_geometry.crystal, zno_geometry) * np.exp(0.4j)  # complex, generic
    ref = choose_reference_reflections(ug)
    hk = zno_geometry.reflection_hkl[list(ref)][:, :2]
    assert abs(round(np.linalg.det(hk))) == 1  # a primitive basis of the [001] zone
    moved = larbed.shift_origin(zno_geometry, ug, shift)
    np.testing.assert_allclose(
        make_unique_ug_vector(moved, reference=ref).values,
        make_unique_ug_vector(ug, reference=ref).values,
        atol=UG_ATOL,
    )


def test_known_shift_recovered(small_geometry, small_ug):
    # SrTiO3 U_g is real with U_110 = U_1-10 > 0: already unique, r0 = 0. A small in-plane shift
    # (|2π g·r| < π for the references) must be recovered exactly, with the opposite sign.
    r_true = np.array([0.31, -0.52])  # [Å]
    moved = larbed.shift_origin(small_geometry, small_ug, r_true)
    back, r0, _ = make_unique_ug_vector(moved, return_shift=True, reference=small_ug)
    np.testing.assert_allclose(r0, -r_true, atol=1e-12)
    np.testing.assert_allclose(back.values, small_ug.values, atol=UG_ATOL)


def test_batch_matches_single_vectors_and_dataarray_batch(small_geometry, small_ug):
    batch = np.stack([_complex_ug(small_geometry, s).values for s in range(6)])
    out = make_unique_ug_vector(batch, small_geometry, reference=small_ug)
    for k in range(6):
        single = make_unique_ug_vector(batch[k], small_geometry, reference=small_ug)
        np.testing.assert_allclose(out[k], single, rtol=0, atol=UG_ATOL)
    da = xr.DataArray(
        batch,
        dims=("sample", "reflection"),
        coords={
            "gx": ("reflection", small_geometry.reflection_xy[:, 0]),
            "gy": ("reflection", small_geometry.reflection_xy[:, 1]),
        },
    )
    out_da = make_unique_ug_vector(da, reference=small_ug)
    assert out_da.dims == ("sample", "reflection")
    np.testing.assert_array_equal(out_da.values, out)


def test_reference_by_hkl_and_by_minus_g(small_geometry):
    ug = _complex_ug(small_geometry, 3)
    a = make_unique_ug_vector(ug, reference=[(1, 0, 0), (0, 1, 0)])
    b = make_unique_ug_vector(ug, reference=[(-1, 0, 0), (0, -1, 0)])
    np.testing.assert_array_equal(a.values, b.values)
    assert a.attrs["unique_reference"] == ["1 0 0", "0 1 0"]


def test_zero_reference_is_harmless(small_geometry):
    ug = _complex_ug(small_geometry, 4)
    vals = ug.values.copy()
    vals[0] = 0.0
    out = make_unique_ug_vector(vals, small_geometry, reference=(0, 1))
    assert out[0] == 0
    before = larbed.simulate(small_geometry, vals, 20.0).intensity.values
    after = larbed.simulate(small_geometry, out, 20.0).intensity.values
    np.testing.assert_allclose(after, before, atol=INTENSITY_ATOL)


def test_bad_inputs(small_geometry, srtio3):
    ug = _complex_ug(small_geometry, 1)
    with pytest.raises(ValueError, match="geometry"):
        make_unique_ug_vector(ug.values)  # plain array without geometry
    other = larbed.Geometry(srtio3, 120, (0, 0, 1), 5, 13, 70)
    with pytest.raises(ValueError, match="wrong geometry"):
        make_unique_ug_vector(ug.values, other)
    with pytest.raises(ValueError, match="collinear"):
        make_unique_ug_vector(ug, reference=[(1, 0, 0), (2, 0, 0)])
    with pytest.raises(ValueError, match="not among"):
        make_unique_ug_vector(ug, reference=[(1, 0, 0), (7, 7, 0)])
    with pytest.raises(ValueError, match="two finite phases"):
        make_unique_ug_vector(ug, targets=(0.0,))
    with pytest.raises(ValueError, match="NaN"):
        make_unique_ug_vector(np.full(small_geometry.n_reflections, np.nan), small_geometry)
    with pytest.raises(TypeError, match="reference"):
        make_unique_ug_vector(ug, reference="110")
