"""netCDF and CSV input/output: exact round trips and clear errors on bad files."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import larbed
from larbed import io

#: Tilts written with 3 decimals [mrad] still match the geometry grid (spacing 10 mrad here).
ROUNDED_TILT_DECIMALS = 3


@pytest.fixture(scope="module")
def geometry():
    xtal = larbed.Crystal.builtin("SrTiO3")
    return larbed.Geometry(xtal, 120, (0, 0, 1), 13, 13, 20)


@pytest.fixture(scope="module")
def complex_ug(geometry):
    # SrTiO3 U_g are real; a common phase makes every one of them complex (still Hermitian)
    return larbed.compute_ug(geometry.crystal, geometry) * np.exp(0.3j)


@pytest.fixture(scope="module")
def pattern(geometry, complex_ug):
    return larbed.simulate(geometry, complex_ug, 30.0)


def test_pattern_round_trip_is_exact(tmp_path, geometry, complex_ug):
    ds = larbed.simulate(geometry, complex_ug, [10.0, 25.0], dose=500, seed=3)
    assert np.abs(ds.ug.values.imag).max() > 1e-3  # really complex
    ds.attrs.update({"note": None, "flag": True, "nested": {"a": [1, 2]}, "empty": [], "one": [7]})
    ds.attrs["array"] = np.array([[1.5, np.nan], [np.inf, -2.0]])
    ds.intensity.attrs["counts_per_tilt"] = np.int32(5)
    path = tmp_path / "p.nc"
    io.save_pattern(ds, path)
    back = io.load_pattern(path)
    assert back.ug.dtype == np.complex128
    assert np.array_equal(back.ug.values, ds.ug.values)
    assert np.array_equal(back.intensity.values, ds.intensity.values)
    assert np.array_equal(back.intensity_noise_free.values, ds.intensity_noise_free.values)
    array = back.attrs.pop("array")
    assert array.dtype == np.float64 and array.shape == (2, 2)
    np.testing.assert_array_equal(array, ds.attrs.pop("array"))  # NaN and inf included
    assert back.attrs == ds.attrs  # None, bool, dict, [] and [7] all come back as they were
    assert back.intensity.attrs["counts_per_tilt"] == 5
    xr.testing.assert_identical(back, ds)
    # the recorded geometry rebuilds the one used
    assert larbed.Geometry.from_attrs(back.attrs) == geometry
    assert larbed.Geometry.from_attrs(back.attrs).crystal == geometry.crystal


def test_ug_round_trip_is_exact(tmp_path, complex_ug, pattern):
    path = tmp_path / "ug.nc"
    io.save_ug(complex_ug, path)
    back = io.load_ug(path)
    assert np.array_equal(back.values, complex_ug.values)
    xr.testing.assert_identical(back, complex_ug)
    # a pattern file also yields its U_g
    io.save_pattern(pattern, tmp_path / "p.nc")
    assert np.array_equal(io.load_ug(tmp_path / "p.nc").values, complex_ug.values)


def test_file_on_disk_holds_real_and_imaginary_parts(tmp_path, complex_ug):
    path = tmp_path / "ug.nc"
    io.save_ug(complex_ug, path)
    with xr.open_dataset(path) as raw:
        assert raw["ug_real"].dtype == np.float64
        assert np.array_equal(raw["ug_real"].values, complex_ug.values.real)
        assert np.array_equal(raw["ug_imag"].values, complex_ug.values.imag)
        assert raw["ug_imag"].attrs["larbed_complex"] == "imag:ug"


def test_csv_round_trip_equals_simulation(tmp_path, geometry, pattern):
    path = tmp_path / "p.csv"
    io.write_csv(pattern, path)
    back = io.read_csv(path, geometry)
    xr.testing.assert_equal(back.intensity, pattern.intensity)  # values and all coordinates
    assert larbed.Geometry.from_attrs(back.attrs) == geometry


def test_csv_round_trip_keeps_values_not_measured(tmp_path, geometry, pattern):
    """NaN (not measured) gets no row and comes back NaN; infinite values are refused."""
    ds = pattern.copy(deep=True)
    ds["intensity"][0, 1] = np.nan
    ds["intensity"][3, 0] = np.nan
    io.write_csv(ds, tmp_path / "p.csv")
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 2 + geometry.n_tilts * geometry.n_beams - 2
    back = io.read_csv(tmp_path / "p.csv", geometry)
    xr.testing.assert_equal(back.intensity, ds.intensity)
    ds["intensity"][1, 1] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        io.write_csv(ds, tmp_path / "q.csv")


def test_csv_rows_in_any_order_and_rounded_tilts(tmp_path, geometry, pattern):
    rows = []
    for m in range(geometry.n_tilts):
        for n in range(geometry.n_beams):
            h, k, l = geometry.hkl[n]
            tx, ty = np.round(geometry.tilt_mrad[m], ROUNDED_TILT_DECIMALS)
            rows.append(f"{h},{k},{l},{tx},{ty},{float(pattern.intensity[m, n]):.17g}")
    np.random.default_rng(1).shuffle(rows)
    path = tmp_path / "shuffled.csv"
    path.write_text("h,k,l,tilt_x_mrad,tilt_y_mrad,intensity\n" + "\n".join(rows) + "\n")
    back = io.read_csv(path, geometry)
    assert np.array_equal(back.intensity.values, pattern.intensity.values)
    # without a geometry: beams and tilts in order of first appearance, same values
    free = io.read_csv(path)
    assert free.sizes == {"tilt": geometry.n_tilts, "beam": geometry.n_beams}
    first = rows[0].split(",")
    assert [int(free.h[0]), int(free.k[0]), int(free.l[0])] == [int(x) for x in first[:3]]
    m = np.flatnonzero(
        np.isclose(geometry.tilt_mrad[:, 0], float(first[3]))
        & np.isclose(geometry.tilt_mrad[:, 1], float(first[4]))
    )[0]
    assert float(free.intensity[0, 0]) == float(first[5])
    assert float(free.intensity[0, 0]) == float(
        pattern.intensity.isel(tilt=m).sel(beam=geometry.beam_labels().index(" ".join(first[:3])))
    )
    assert "crystal_atoms" not in free.attrs


def test_write_csv_needs_single_thickness(tmp_path, geometry, complex_ug):
    ds = larbed.simulate(geometry, complex_ug, [10.0, 20.0])
    with pytest.raises(ValueError, match="select one thickness"):
        io.write_csv(ds, tmp_path / "x.csv")
    io.write_csv(ds.isel(thickness=1), tmp_path / "x.csv")
    assert np.array_equal(io.read_csv(tmp_path / "x.csv").intensity.values, ds.intensity[1].values)


HEADER = "h,k,l,tilt_x_mrad,tilt_y_mrad,intensity\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("h,k,l,tilt_x_mrad,intensity\n0,0,0,0,1\n", r"lacks the column\(s\) \['tilt_y_mrad'\]"),
        ("", "could not parse"),
        (HEADER, "no rows"),
        (HEADER + "0,0,0,0,0,nan\n", "NaN or infinite"),
        (HEADER + "0,0,0,0,0,-0.5\n", "negative intensity"),
        (HEADER + "0,0,0,0,0,1\n0,0,0,0,0,1\n", "duplicate data rows"),
        (HEADER + "0.5,0,0,0,0,1\n", "must be integers"),
        (HEADER + "0,0,0,0,abc,1\n", "non-numeric"),
    ],
)
def test_bad_csv_raises(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        io.read_csv(path)


def test_csv_not_matching_geometry(tmp_path, geometry, pattern):
    path = tmp_path / "p.csv"
    io.write_csv(pattern, path)
    lines = path.read_text().splitlines()
    other = larbed.Geometry(geometry.crystal, 120, (0, 0, 1), 9, 13, 20)
    with pytest.raises(ValueError, match=r"not among the geometry's 9 simulated beams"):
        io.read_csv(path, other)
    shifted = larbed.Geometry(geometry.crystal, 120, (0, 0, 1), 13, 13, 20, tilt_center_mrad=(3, 0))
    with pytest.raises(ValueError, match="matches no tilt of the geometry"):
        io.read_csv(path, shifted)
    path.write_text("\n".join(lines[:-1]) + "\n")  # one row short: that value is not measured
    short = io.read_csv(path, geometry)
    values = short.intensity.values
    assert np.isnan(values[-1, -1]) and np.isfinite(values).sum() == values.size - 1
    np.testing.assert_array_equal(values[:-1], pattern.intensity.values[:-1])


def test_csv_rows_in_any_order_and_unrecorded_beams(tmp_path, geometry, pattern):
    path = tmp_path / "p.csv"
    io.write_csv(pattern, path)
    lines = path.read_text().splitlines()
    rng = np.random.default_rng(0)
    body = lines[2:]
    rng.shuffle(body)
    path.write_text("\n".join(lines[1:2] + body) + "\n")  # no attrs header, shuffled rows
    back = io.read_csv(path, geometry)
    np.testing.assert_array_equal(back.intensity.values, pattern.intensity.values)
    rec = [tuple(h) for h in geometry.hkl[:5].tolist()]
    partial = larbed.Geometry(geometry.crystal, 120, (0, 0, 1), geometry.n_beams,
                              geometry.n_tilts, geometry.tilt_range_mrad, recorded=rec)
    sub = io.read_csv(path, partial)
    assert np.all(np.isnan(sub.intensity.values[:, 5:]))
    np.testing.assert_array_equal(sub.intensity.values[:, :5], pattern.intensity.values[:, :5])
    # R against a simulation counts the measured values only (it raised on the NaN)
    other = larbed.simulate(geometry, larbed.compute_ug(geometry.crystal, geometry), 25.0)
    expected = larbed.r_factor(pattern.intensity.values[:, :5], other.intensity.values[:, :5])
    assert larbed.r_factor(sub, other) == pytest.approx(expected, rel=1e-12)
    assert sub.larbed.r_factor(other) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="simulation contains NaN"):
        larbed.r_factor(other, sub)
    with pytest.raises(ValueError, match="no measured"):
        larbed.r_factor(np.full((2, 3), np.nan), np.ones((2, 3)))
    with pytest.raises(ValueError, match="experiment contains infinite"):
        larbed.r_factor([np.inf, 1.0], [1.0, 1.0])


def test_corrupt_and_wrong_netcdf_files(tmp_path, pattern, complex_ug):
    good = tmp_path / "p.nc"
    io.save_pattern(pattern, good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="could not read .* as a netCDF file"):
        io.load_pattern(truncated)
    text = tmp_path / "table.csv"
    io.write_csv(pattern, text)
    with pytest.raises(ValueError, match="could not read .* as a netCDF file"):
        io.load_pattern(text)
    with pytest.raises(ValueError, match="no such file") as info:
        io.load_pattern(tmp_path / "missing.nc")
    assert isinstance(info.value, FileNotFoundError)
    ug_file = tmp_path / "ug.nc"
    io.save_ug(complex_ug, ug_file)
    with pytest.raises(ValueError, match="no 'intensity' variable"):
        io.load_pattern(ug_file)
    with pytest.raises(ValueError, match="needs an 'intensity' variable"):
        io.save_pattern(pattern.drop_vars("intensity"), tmp_path / "x.nc")
    with pytest.raises(ValueError, match="over 'reflection'"):
        io.save_ug(xr.DataArray(np.zeros((2, 2))), tmp_path / "x.nc")
    assert not (tmp_path / "x.nc").exists()
