"""Property-based invariants (hypothesis) over random small crystals, zone axes, tilts and U_g."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from larbed import Crystal, Geometry, compute_ug, input_ug, random_ug, shift_origin, simulate
from larbed.testing import assert_patterns_allclose, simulate_reference, two_beam_intensity

#: SPEC §2: without absorption Σ I = 1 to 1e-12.
CONSERVATION_ATOL = 1e-12
#: An origin shift is a diagonal unitary similarity: intensities agree to round-off.
ORIGIN_ATOL = 1e-12
#: Kernel and NumPy reference solve the same eigenproblems (phases up to ~10² rad): round-off.
KERNEL_ATOL = 1e-11
#: Absorbing matrices are non-normal: the general eigensolver loses a little more.
GENERAL_ATOL = 1e-10

PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,  # the first example may compile/load the numba kernels
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

ZONE_AXES = [(0, 0, 1), (1, 0, 0), (0, 1, 0), (1, 1, 0), (1, -1, 0), (1, 0, 1), (1, 1, 1)]
ELEMENTS = ["O", "Mg", "Si", "Ti", "Zn", "Sr"]
DISC_COUNTS = [1, 5, 13]


@st.composite
def crystals(draw) -> Crystal:
    lengths = draw(st.tuples(*[st.floats(3.0, 7.0)] * 3))
    orthogonal = draw(st.booleans())
    angles = (90.0, 90.0, 90.0) if orthogonal else draw(st.tuples(*[st.floats(65.0, 115.0)] * 3))
    ca, cb, cg = np.cos(np.radians(angles))
    assume(1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg > 0.2)  # not too flat
    n_atoms = draw(st.integers(1, 4))
    atoms = [
        (
            draw(st.sampled_from(ELEMENTS)),
            draw(st.tuples(*[st.floats(0.0, 1.0, exclude_max=True)] * 3)),
            draw(st.floats(0.3, 1.0)),
            draw(st.floats(0.0, 1.0)),
        )
        for _ in range(n_atoms)
    ]
    # distinct sites (two atoms on one site would need occupancies summing to at most 1)
    frac = np.array([a[1] for a in atoms])
    gap = np.abs((frac[:, None] - frac[None]) - np.round(frac[:, None] - frac[None])).max(axis=2)
    assume(np.all(gap[np.triu_indices(n_atoms, 1)] > 0.01))
    return Crystal((*lengths, *angles), atoms, name="hypothesis")


@st.composite
def setups(draw, max_beams: int = 9, kinds=("computed", "random", "shifted")):
    xtal = draw(crystals())
    geo = Geometry(
        xtal,
        draw(st.sampled_from([60.0, 120.0, 200.0, 300.0])),
        draw(st.sampled_from(ZONE_AXES)),
        draw(st.integers(2, max_beams)),
        draw(st.sampled_from(DISC_COUNTS)),
        draw(st.floats(1.0, 80.0)),
        tilt_center_mrad=draw(st.tuples(*[st.floats(-20.0, 20.0)] * 2)),
    )
    kind = draw(st.sampled_from(kinds))
    if kind == "computed":
        ug = compute_ug(xtal, geo)
    elif kind == "random":
        ug = random_ug(
            geo, seed=draw(st.integers(0, 2**32 - 1)), ug_range=draw(st.floats(1e-3, 0.2))
        )
    else:
        ug = shift_origin(geo, compute_ug(xtal, geo), draw(st.tuples(*[st.floats(-3.0, 3.0)] * 3)))
    thickness = draw(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=3))
    return geo, ug, np.array(thickness)


@PROPERTY_SETTINGS
@given(setup=setups())
def test_intensity_is_conserved(setup):
    geo, ug, thickness = setup
    ds = simulate(geo, ug, thickness)
    np.testing.assert_allclose(ds.intensity.sum("beam"), 1.0, rtol=0, atol=CONSERVATION_ATOL)
    assert float(ds.intensity.min()) >= -CONSERVATION_ATOL


@PROPERTY_SETTINGS
@given(setup=setups(), shift=st.tuples(*[st.floats(-5.0, 5.0)] * 3))
def test_origin_shift_invariance(setup, shift):
    geo, ug, thickness = setup
    a = simulate(geo, ug, thickness)
    b = simulate(geo, shift_origin(geo, ug, shift), thickness)
    assert_patterns_allclose(b, a, rtol=0, atol=ORIGIN_ATOL)


@PROPERTY_SETTINGS
@given(setup=setups())
def test_kernel_equals_reference(setup):
    geo, ug, thickness = setup
    ds = simulate(geo, ug, thickness)
    ref = simulate_reference(geo, ug, thickness)
    assert_patterns_allclose(ds.intensity.values, ref, rtol=0, atol=KERNEL_ATOL)


@PROPERTY_SETTINGS
@given(setup=setups(max_beams=7, kinds=("computed", "shifted")), kappa=st.floats(0.01, 0.2))
def test_absorbing_kernel_equals_reference(setup, kappa):
    # crystal U_g with U_0: the absorptive potential κ(U_0 + U) is positive, so intensity is lost
    geo, ug, thickness = setup
    assert ug.attrs["u0"] > 0
    ds = simulate(geo, ug, thickness, absorption=kappa)
    assert ds.attrs["eigen_path"] == "general"
    ref = simulate_reference(geo, ug, thickness, kappa)
    assert_patterns_allclose(ds.intensity.values, ref, rtol=0, atol=GENERAL_ATOL)
    assert float(ds.intensity.sum("beam").max()) <= 1.0 + CONSERVATION_ATOL


@PROPERTY_SETTINGS
@given(
    xtal=crystals(),
    zone=st.sampled_from(ZONE_AXES),
    u_re=st.floats(-0.2, 0.2),
    u_im=st.floats(-0.2, 0.2),
    tilt_range=st.floats(1.0, 80.0),
    thickness=st.floats(0.0, 100.0),
)
def test_two_beam_formula_holds_for_any_crystal(xtal, zone, u_re, u_im, tilt_range, thickness):
    u_g = complex(u_re, u_im)
    assume(abs(u_g) > 1e-4)
    geo = Geometry(xtal, 120.0, zone, 2, 13, tilt_range)
    ds = simulate(geo, input_ug(geo, [u_g]), thickness)
    d = geo.excitation_diagonal[:, 1] / (2 * geo.k0)
    expected = two_beam_intensity(u_g / (2 * geo.k0), d, thickness * 10.0)
    np.testing.assert_allclose(ds.intensity.isel(beam=1), expected, rtol=0, atol=CONSERVATION_ATOL)
