"""HOLZ beams (larbed.holz): the ZOLZ limit, where HOLZ lines fall, how they grow, bad input."""

import numpy as np
import pytest

import larbed
from larbed.holz import holz_effect, simulate_holz
from larbed.structure_factors import structure_factor


@pytest.fixture(scope="module")
def sto():
    xtal = larbed.Crystal.builtin("SrTiO3", debye_waller=True)
    geo = larbed.Geometry(xtal, 120, (0, 0, 1), 21, 197, 80)
    return geo, larbed.compute_ug(xtal, geo)


@pytest.mark.parametrize("name", ["SrTiO3", "ZnO"])
def test_without_holz_beams_it_is_the_zolz_model(name):
    """max_beams=0 reproduces larbed.simulate (real SrTiO3 and complex, polar ZnO U_g)."""
    xtal = larbed.Crystal.builtin(name)
    geo = larbed.Geometry(xtal, 100, (0, 0, 1), 19, 81, 60)
    ug = larbed.compute_ug(xtal, geo)
    ref = larbed.simulate(geo, ug, [20.0, 50.0]).intensity.values
    got = simulate_holz(geo, ug, [20.0, 50.0], max_beams=0)
    assert got.intensity.dims == ("thickness", "tilt", "beam")
    np.testing.assert_allclose(got.intensity.values, ref, atol=1e-12)
    assert got.n_holz.values.max() == 0 and got.attrs["holz_max_beams"] == 0


def test_holz_lines_in_the_transmitted_beam_sit_at_the_bragg_conditions():
    """In a thick crystal the transmitted beam dips where the strong FOLZ reflections meet the
    Ewald sphere, −(2 k_t·q + 2 K_z g_z + |g|²) = 0 (kinematic positions), and nowhere else;
    only the layer g_z < 0 (the beam runs along +z) can get there at these tilts."""
    xtal = larbed.Crystal.builtin("SrTiO3", debye_waller=True)
    theta = np.stack([np.linspace(70.0, 80.0, 201), np.full(201, 3.0)], axis=1)
    geo = larbed.Geometry(xtal, 120, (0, 0, 1), 9, tilts_mrad=theta)
    ug = larbed.compute_ug(xtal, geo)
    holz = simulate_holz(geo, ug, 300.0)
    zolz = simulate_holz(geo, ug, 300.0, max_beams=0)
    ratio = holz.intensity.values[:, 0] / zolz.intensity.values[:, 0]
    # where each FOLZ reflection of the scan is at s = 0, and how strongly it couples to 000
    hkl = np.array([(h, k, -1) for h in range(-40, 41) for k in range(-40, 41)])
    g = hkl @ xtal.reciprocal_vectors
    kt = theta * 1e-3 * geo.k0
    s = -(2 * kt @ (g @ geo.frame[:2].T).T + (g * g).sum(1)
          + 2 * np.sqrt(geo.k0**2 - (kt**2).sum(1))[:, None] * (g @ geo.frame[2]))
    crossing = np.flatnonzero(np.sign(s[0]) != np.sign(s[-1]))
    pos = np.array([np.interp(0.0, *(([s[:, c], theta[:, 0]]) if s[0, c] < s[-1, c]
                                     else [s[::-1, c], theta[::-1, 0]])) for c in crossing])
    u = np.abs(structure_factor(xtal, hkl[crossing], 120))
    for p in pos[np.argsort(-u)[:4]]:  # the four strongest lines: a dip within 0.35 mrad
        assert ratio[np.abs(theta[:, 0] - p) <= 0.35].min() < 0.8
    far = np.min(np.abs(theta[:, 0, None] - pos[u > 1e-3][None]), axis=1) > 0.5
    assert far.sum() > 40 and ratio[far].min() > 0.95
    upper = simulate_holz(geo, ug, 300.0, layers=(1,))
    assert upper.n_holz.values.max() == 0  # the layer g_z > 0 never comes within s_max here


def test_holz_effect_grows_with_thickness(sto):
    geo, ug = sto
    none = holz_effect(geo, ug, 0.0)
    thin, thick = holz_effect(geo, ug, 10.0), holz_effect(geo, ug, 120.0)
    assert none.changed_fraction == pytest.approx(0.0, abs=1e-12)
    assert 0 < thin.changed_fraction < thick.changed_fraction < 0.1
    assert thick.min_ratio_000 < thin.min_ratio_000 <= 1.0
    assert thin.holz_beams == 100  # the default cap: there are many FOLZ beams within s_max
    # converged in the number of HOLZ beams (10 per tilt are too few: lines switch on and off)
    more = holz_effect(geo, ug, 120.0, max_beams=200, s_max=0.05)
    assert more.changed_fraction == pytest.approx(thick.changed_fraction, rel=0.05)
    few = holz_effect(geo, ug, 120.0, max_beams=10)
    assert few.changed_fraction > 1.1 * more.changed_fraction


def test_holz_couplings_use_the_given_crystal(sto):
    """Couplings to HOLZ beams come from ``crystal``; a crystal with other atoms changes them,
    one with another cell is refused."""
    geo, ug = sto
    base = simulate_holz(geo, ug, 60.0).intensity.values
    light = larbed.Crystal(geo.crystal.cell, [larbed.Atom("O", (0.0, 0.0, 0.0), b_iso=0.5)],
                           name="light")
    other = simulate_holz(geo, ug, 60.0, crystal=light).intensity.values
    assert np.abs(other - base).max() > 1e-4
    with pytest.raises(ValueError, match="cell"):
        simulate_holz(geo, ug, 60.0, crystal=larbed.Crystal.builtin("ZnO"))


def test_holz_pattern_ignores_the_origin_of_the_given_ug_and_non_primitive_zone_axes(sto):
    """U_g in another in-plane origin (same ZOLZ pattern) give the same HOLZ pattern: they are
    moved to the crystal's origin first; [002] is the zone axis [001]."""
    geo, ug = sto
    base = simulate_holz(geo, ug, 60.0, max_beams=30).intensity.values
    shifted = larbed.shift_origin(geo, ug, (3.905 / 2, 3.905 / 2))
    np.testing.assert_allclose(simulate_holz(geo, shifted, 60.0, max_beams=30).intensity.values,
                               base, atol=1e-10)
    geo2 = larbed.Geometry(geo.crystal, 120, (0, 0, 2), 21, 197, 80)
    same = simulate_holz(geo2, larbed.compute_ug(geo.crystal, geo2), 60.0, max_beams=30)
    np.testing.assert_allclose(same.intensity.values, base, atol=1e-10)
    assert same.n_holz.values.min() == 30


@pytest.mark.parametrize("kwargs, match", [
    ({"layers": (0,)}, "non-zero integers"), ({"layers": (1.5,)}, "non-zero integers"),
    ({"layers": ()}, "non-zero integers"), ({"s_max": -0.01}, "s_max"),
    ({"s_max": float("nan")}, "s_max"), ({"max_beams": -1}, "max_beams"),
    ({"max_beams": 2.5}, "max_beams"), ({"tilts_mrad": np.zeros((3, 2))}, "tilts_mrad"),
])
def test_bad_holz_options_are_refused(sto, kwargs, match):
    geo, ug = sto
    with pytest.raises(ValueError, match=match):
        simulate_holz(geo, ug, 30.0, **kwargs)


def test_bad_holz_inputs_are_refused(sto):
    geo, ug = sto
    with pytest.raises(ValueError, match=">= 0"):
        simulate_holz(geo, ug, -1.0)
    with pytest.raises(TypeError, match="Geometry"):
        simulate_holz("SrTiO3", ug, 30.0)
    with pytest.raises(TypeError, match="layers"):
        simulate_holz(geo, ug, 30.0, layers=1)
    with pytest.raises(ValueError, match="one thickness"):
        holz_effect(geo, ug, [10.0, 20.0])
