"""Measured tilts and recorded beams: Geometry(tilts_mrad=, recorded=), Geometry.from_csv, symmetry."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import larbed
from larbed import io


@pytest.fixture(scope="module")
def grid(srtio3):
    return larbed.Geometry(srtio3, 120, (0, 0, 1), 13, 29, 60)


def test_measured_tilts_reproduce_the_grid(grid, srtio3):
    """The grid's own tilts given as measured tilts simulate the same pattern."""
    measured = larbed.Geometry(srtio3, 120, (0, 0, 1), 13, tilts_mrad=grid.tilt_mrad)
    assert measured.tilts_measured and measured.n_tilts == grid.n_tilts
    assert measured.tilt_range_mrad == pytest.approx(60.0)
    assert measured.tilt_step_mrad == pytest.approx(20.0)  # r = 3
    ug = larbed.compute_ug(srtio3, grid)
    a = larbed.simulate(grid, ug, 25.0).intensity.values
    b = larbed.simulate(measured, ug, 25.0).intensity.values
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)


def test_off_centre_rotated_tilts_and_symmetry(srtio3, grid):
    """A rotated, off-centre lattice of tilts: no exact symmetry → simulate agrees with the
    direct computation; a symmetric set keeps its tilt symmetry."""
    rot = np.deg2rad(7.0)
    r = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    tilts = grid.tilt_mrad @ r.T * 0.97 + np.array([11.0, -4.0])
    geo = larbed.Geometry(srtio3, 120, (0, 0, 1), 13, tilts_mrad=tilts)
    assert geo.tilt_center_mrad == pytest.approx((11.0, -4.0))
    ij = geo.tilt_ij
    assert len(np.unique(ij, axis=0)) == geo.n_tilts  # distinct image pixels
    ug = larbed.compute_ug(srtio3, geo)
    fast = larbed.simulate(geo, ug, 20.0).intensity.values
    slow = larbed.simulate(geo, ug, 20.0, use_symmetry=False).intensity.values
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
    # a centred, 4-fold symmetric set keeps the permutations
    sym = larbed.Geometry(srtio3, 120, (0, 0, 1), 13, tilts_mrad=grid.tilt_mrad @ r.T)
    assert sym.tilt_permutation(np.array([[0.0, -1.0], [1.0, 0.0]])) is not None
    assert geo.tilt_permutation(np.array([[0.0, -1.0], [1.0, 0.0]])) is None


def test_measured_geometry_round_trips(srtio3, tmp_path):
    rng = np.random.default_rng(3)
    tilts = rng.uniform(-40, 40, size=(23, 2))
    rec = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]
    geo = larbed.Geometry(srtio3, 120, (0, 0, 1), 13, tilts_mrad=tilts, recorded=rec)
    back = larbed.Geometry.from_attrs(geo.to_attrs())
    assert back == geo
    np.testing.assert_array_equal(back.tilt_mrad, geo.tilt_mrad)
    np.testing.assert_array_equal(back.recorded_hkl, geo.recorded_hkl)
    assert geo != larbed.Geometry(srtio3, 120, (0, 0, 1), 13, tilts_mrad=tilts)
    pattern = larbed.simulate(geo, larbed.compute_ug(srtio3, geo), 20.0)
    assert np.all(np.isfinite(pattern.intensity.values))  # simulate gives every simulated beam
    path = tmp_path / "m.nc"
    io.save_pattern(pattern, path)
    loaded = io.load_pattern(path)
    assert larbed.Geometry.from_attrs(loaded.attrs) == geo


def test_from_csv_builds_the_geometry(srtio3, tmp_path, caplog):
    rng = np.random.default_rng(4)
    tilts = rng.uniform(-30, 30, size=(15, 2))
    geo = larbed.Geometry(srtio3, 120, (0, 0, 1), 13, tilts_mrad=tilts)
    pattern = larbed.simulate(geo, larbed.compute_ug(srtio3, geo), 20.0)
    path = tmp_path / "m.csv"
    io.write_csv(pattern.sel(beam=pattern.beam[:9]), path)  # the file records 9 of 13 beams
    with caplog.at_level(logging.WARNING, logger="larbed.geometry"):
        built = larbed.Geometry.from_csv(path, srtio3, voltage_kv=120, zone_axis=(0, 0, 1))
    assert built.n_beams == 9 and built.n_recorded == 9
    assert "n_beams=9 simulates only the recorded beams" in caplog.text  # a hint to check convergence
    np.testing.assert_allclose(built.tilt_mrad, tilts, rtol=0, atol=1e-12)
    wider = larbed.Geometry.from_csv(path, srtio3, voltage_kv=120, zone_axis=(0, 0, 1), n_beams=21)
    assert wider.n_beams == 21 and wider.n_recorded == 9
    data = io.read_csv(path, wider)
    np.testing.assert_allclose(data.intensity.values[:, :9], pattern.intensity.values[:, :9],
                               rtol=1e-15)
    assert np.all(np.isnan(data.intensity.values[:, 9:]))
    with pytest.raises(ValueError, match="not among the 5 simulated beams"):
        larbed.Geometry.from_csv(path, srtio3, voltage_kv=120, zone_axis=(0, 0, 1), n_beams=5)
    with pytest.raises(ValueError, match="zero-order Laue zone"):
        larbed.Geometry.from_csv(path, srtio3, voltage_kv=120, zone_axis=(1, 1, 0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tilts_mrad": np.zeros((3, 3))}, "shape"),
        ({"tilts_mrad": [[0.0, 0.0], [0.0, 0.0]]}, "same tilt twice"),
        ({"tilts_mrad": [[0.0, np.nan]]}, "NaN"),
        ({"tilts_mrad": [[0.0, 0.0], [1.0, 0.0]], "n_tilts": 5}, "disagrees"),
        ({"tilts_mrad": [[0.0, 0.0], [1.0, 0.0]], "tilt_range_mrad": 5}, "derived"),
        ({"recorded": [(5, 5, 0)]}, "not among the 13"),
        ({"recorded": [(1, 0, 0), (1, 0, 0)]}, "twice"),
    ],
)
def test_bad_measured_geometry(srtio3, kwargs, match):
    base = {"n_tilts": 13, "tilt_range_mrad": 50} if "tilts_mrad" not in kwargs else {}
    with pytest.raises(ValueError, match=match):
        larbed.Geometry(srtio3, 120, (0, 0, 1), 13, **{**base, **kwargs})


def test_incomplete_data_are_masked(small_geometry, srtio3):
    """NaN (not measured) values count nowhere: R and the refinement use the rest."""
    ug = larbed.compute_ug(srtio3, small_geometry)
    pattern = larbed.simulate(small_geometry, ug, 20.0)
    vals = pattern.intensity.values.copy()
    vals[2, 3] = vals[7, 1] = np.nan
    res = larbed.refine(vals, small_geometry, ug * 1.02, 19.0, progress=False, real=True)
    assert res.r_factor < 1e-8
    assert res.thickness_nm == pytest.approx(20.0, abs=1e-6)
