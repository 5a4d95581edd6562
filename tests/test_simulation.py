"""simulate(): the labelled result, its shortcuts, noise and doses, and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

import larbed
from larbed import bloch
from larbed.testing import assert_patterns_allclose

#: The symmetry shortcuts reproduce the plain computation to round-off.
EXPM_ATOL = 1e-11
THICKNESSES_NM = np.array([0.0, 7.0, 50.0])


@pytest.fixture(scope="module")
def sto_geometry(make_geometry):
    return lambda n_beams=13, n_tilts=49: make_geometry("SrTiO3", n_beams=n_beams, n_tilts=n_tilts)


@pytest.fixture(scope="module")
def case(make_geometry):
    geo = make_geometry("SrTiO3", n_beams=9, n_tilts=29, tilt_range_mrad=60)
    return geo, larbed.compute_ug(geo.crystal, geo)


def test_the_dataset_records_how_it_was_made(case):
    geo, ug = case
    ds = larbed.simulate(geo, ug, [10.0, 20.0], dose=1e4, seed=5)
    assert ds.intensity.dims == ("thickness", "tilt", "beam")
    assert ds.thickness.attrs["units"] == "nm" and ds.tilt_x.attrs["units"] == "mrad"
    assert ds.attrs["dose"] == 1e4 and ds.attrs["seed"] == 5 and ds.attrs["eigen_path"] == "real"
    assert ds.larbed.geometry == geo
    np.testing.assert_array_equal(ds.larbed.ug.values, ug.values)
    again = larbed.simulate(geo, ug, [10.0, 20.0], dose=1e4, seed=5)
    np.testing.assert_array_equal(again.intensity.values, ds.intensity.values)  # seeded noise


def test_simulate_array_is_the_pattern_of_simulate(case):
    from larbed.simulation import simulate_array

    geo, ug = case
    rng = np.random.default_rng(3)
    ug_c = ug.values * (1 + 0.3 * (rng.uniform(-1, 1, ug.size) + 1j * rng.uniform(-1, 1, ug.size)))
    for u in (ug, ug_c):  # the real (symmetric) and the Hermitian path
        series = simulate_array(geo, u, [10.0, 35.0])
        np.testing.assert_array_equal(series, larbed.simulate(geo, u, [10.0, 35.0]).intensity.values)
        one = simulate_array(geo, u, 35.0)
        assert one.shape == (geo.n_tilts, geo.n_beams)
        np.testing.assert_allclose(one.sum(axis=1), 1.0, atol=1e-10)  # no absorption
    with pytest.raises(ValueError, match="thickness"):
        simulate_array(geo, ug, -1.0)
    with pytest.raises(TypeError, match="Geometry"):
        simulate_array("SrTiO3-1", ug, 10.0)


def test_each_thickness_of_a_series_gets_its_own_counts(case):
    """The dose applies to each thickness: R to the noise-free pattern is the Poisson floor."""
    geo, ug = case
    ds = larbed.simulate(geo, ug, [10.0, 30.0], dose=1e4, seed=1)
    noisy, clean = ds.intensity.values, ds.intensity_noise_free.values
    for k in range(2):
        r = larbed.metrics.r_factor(clean[k], noisy[k])
        assert r == pytest.approx(larbed.metrics.expected_noise_r(clean[k], 1e4), rel=0.3)  # 261 values
    assert not np.allclose(noisy[0] - clean[0], noisy[1] - clean[1])  # independent draws


def test_an_unfilled_value_raises(case, monkeypatch):
    """A tilt the shortcut (or a kernel) leaves undefined is an error, never a number."""
    geo, ug = case
    real = bloch.intensities

    def leaky(*args, **kw):
        out = real(*args, **kw)
        out[:, 0, 0] = np.nan
        return out

    monkeypatch.setattr(bloch, "intensities", leaky)
    with pytest.raises(RuntimeError, match="undefined"):
        larbed.simulate(geo, ug, 20.0)


def test_per_tilt_dose_in_simulate(case):
    geo, ug = case
    dose = np.linspace(1e3, 1e5, geo.n_tilts)
    ds = larbed.simulate(geo, ug, 25.0, dose=dose, seed=2)
    np.testing.assert_array_equal(ds.dose.values, dose)
    assert ds.attrs["dose"] == "per tilt"
    res = larbed.refine(ds, geo, ug, 25.0, progress=False)
    assert res.weights == "poisson" and res.chi2 < 2


@pytest.mark.parametrize("dose", [0, -5, np.inf, np.nan, 1e30, "many", [1e5, 1e5]])
def test_absurd_doses_are_rejected(case, dose):
    geo, ug = case
    with pytest.raises((ValueError, TypeError), match="dose"):
        larbed.simulate(geo, ug, 25.0, dose=dose)


def test_simulation_too_large_is_refused_before_work(case, monkeypatch):
    from larbed import resources

    geo, ug = case
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 10_000)
    with pytest.raises(resources.ResourceError, match="simulate would need .* of memory"):
        larbed.simulate(geo, ug, np.linspace(1, 100, 400))


def test_progress_chunks_equal_one_call(make_geometry):
    geo = make_geometry("SrTiO3", n_tilts=13, tilt_range_mrad=40)
    ug = larbed.shift_origin(geo, larbed.compute_ug(geo.crystal, geo), (0.43, -0.61, 0.2))
    a = larbed.simulate(geo, ug, THICKNESSES_NM, progress=False)
    b = larbed.simulate(geo, ug, THICKNESSES_NM, progress=True)
    assert_patterns_allclose(b, a, rtol=0, atol=0)


def test_symmetry_shortcuts_change_no_intensity(srtio3, sto_geometry):
    """simulate's shortcuts (origin moved to the centre of symmetry → real solver; only
    symmetry-independent tilts computed) give the plain computation to round-off."""
    geo = sto_geometry(13, 49)
    ug = larbed.shift_origin(geo, larbed.compute_ug(srtio3, geo), (1.1, -0.4, 0.0))
    fast = larbed.simulate(geo, ug, THICKNESSES_NM)
    plain = larbed.simulate(geo, ug, THICKNESSES_NM, use_symmetry=False)
    assert fast.attrs["eigen_path"] == "real" and plain.attrs["eigen_path"] == "hermitian"
    # origin on the 4mm axis after the shift: 8 operations, 49 tilts → 10 independent ones
    assert fast.attrs["symmetry_operations"] == 8 and fast.attrs["independent_tilts"] == 10
    assert_patterns_allclose(fast.intensity.values, plain.intensity.values, rtol=0, atol=EXPM_ATOL)
    # a U_g without any symmetry is computed tilt by tilt on the Hermitian path
    rnd = larbed.random_ug(geo, seed=3, ug_range=0.05)
    ds = larbed.simulate(geo, rnd, THICKNESSES_NM)
    assert ds.attrs["eigen_path"] == "hermitian" and ds.attrs["independent_tilts"] == 49


def test_absorption_without_u0_is_flagged(caplog, srtio3, sto_geometry):
    geo = sto_geometry()
    ug = larbed.compute_ug(srtio3, geo)
    bare = ug.copy()
    del bare.attrs["u0"]  # κU_g alone (zero mean) is not a positive absorptive potential
    with caplog.at_level("WARNING", logger="larbed.simulation"):
        larbed.simulate(geo, bare, 20.0, absorption=0.1)
    assert any("without U_0" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="larbed.simulation"):
        larbed.simulate(geo, ug, 20.0, absorption=0.1)
        larbed.simulate(geo, bare, 20.0)  # no absorption: U_0 not needed
    assert not caplog.records
