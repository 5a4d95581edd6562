"""Plots: figure layout, image contents in intensity units, errors."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

import larbed
from larbed import plotting
from larbed.image import beam_grid_positions

matplotlib.use("Agg")

#: Pixels hold the simulated intensities up to float32 rounding of the normalised image.
PIXEL_RTOL = 1e-6


@pytest.fixture(scope="module")
def geo():
    return larbed.Geometry(larbed.Crystal.builtin("SrTiO3"), 120, (0, 0, 1), 13, 13, 40)


@pytest.fixture(scope="module")
def pattern(geo):
    return larbed.simulate(geo, larbed.compute_ug(geo.crystal, geo), 30.0)


def _pixel(img, geo, beam, tilt):
    size = 2 * geo.tilt_radius + 1
    col, row = beam_grid_positions(geo)[beam]
    i, j = geo.tilt_ij[tilt]
    return img[row * size + geo.tilt_radius - j, col * size + geo.tilt_radius + i]


def test_plot_pattern_figure_and_image(geo, pattern, tmp_path):
    fig = plotting.plot_pattern(pattern)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) == 2  # image + colour bar
    img = np.asarray(fig.axes[0].images[0].get_array().filled(np.nan))
    size = 2 * geo.tilt_radius + 1
    assert img.shape == (5 * size, 5 * size)  # 13 beams up to {200}: a 5 × 5 grid of discs
    inten = pattern.intensity.values
    for beam in (0, 1, 5, 9):
        for tilt in (0, 6, 12):
            assert _pixel(img, geo, beam, tilt) == pytest.approx(inten[tilt, beam], rel=PIXEL_RTOL)
    assert np.isnan(img[0, 0])  # outside every disc
    assert np.isfinite(img).sum() == geo.n_beams * geo.n_tilts
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert len(labels) == geo.n_beams and "$\\bar{1}10$" in labels
    fig.savefig(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_plot_pattern_options(geo, pattern):
    from matplotlib.colors import LogNorm

    fig = plotting.plot_pattern(pattern, log=True, colorbar=False, labels=False, title="x")
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert isinstance(ax.images[0].norm, LogNorm)
    assert ax.images[0].norm.vmin == pytest.approx(plotting.LOG_FLOOR * pattern.intensity.max())
    assert len(ax.texts) == 0 and ax.get_title() == "x"
    # onto an existing axes; plain DataArray with an explicit geometry
    from matplotlib.figure import Figure

    host = Figure()
    axes = host.subplots(1, 2)
    out = plotting.plot_pattern(pattern.intensity, axes[1], geometry=geo, colorbar=False)
    assert out is host and len(axes[1].images) == 1 and len(axes[0].images) == 0


def test_thickness_series_and_accessor(geo):
    ug = larbed.compute_ug(geo.crystal, geo)
    series = larbed.simulate(geo, ug, np.arange(5.0, 90.0, 5.0))  # 17 thicknesses
    fig = plotting.plot_thickness_series(series, max_panels=6)
    assert len(fig.axes) == 6 + 1  # panels + colour bar
    titles = [ax.get_title() for ax in fig.axes[:6]]
    assert titles[0] == "t = 5 nm" and titles[-1] == "t = 85 nm"
    img = fig.axes[2].images[0].get_array().filled(np.nan)
    t_shown = float(titles[2].split()[2])
    direct = series.intensity.sel(thickness=t_shown).values
    assert _pixel(img, geo, 0, 6) == pytest.approx(direct[6, 0], rel=PIXEL_RTOL)
    # the accessor picks the series plot for a thickness dimension, the single plot otherwise
    assert len(series.larbed.plot(max_panels=3).axes) == 4
    single = series.larbed.plot(thickness=30.0)
    got = single.axes[0].images[0].get_array().filled(np.nan)
    assert _pixel(got, geo, 1, 3) == pytest.approx(
        float(series.intensity.sel(thickness=30.0)[3, 1]), rel=PIXEL_RTOL
    )


def test_compare_patterns(geo, pattern):
    noisy = larbed.simulate(geo, larbed.compute_ug(geo.crystal, geo), 30.0, dose=100, seed=2)
    fig = plotting.compare_patterns(noisy, pattern)
    assert len(fig.axes) == 5  # experiment, simulation, difference + two colour bars
    r = larbed.r_factor(noisy, pattern)
    assert f"R = {r:.4g}" in fig._suptitle.get_text()
    diff = fig.axes[2].images[0].get_array().filled(np.nan)
    expected = noisy.intensity.values - pattern.intensity.values
    assert _pixel(diff, geo, 0, 4) == pytest.approx(expected[4, 0], rel=1e-5, abs=1e-7)


def test_plot_errors(geo, pattern):
    series = larbed.simulate(geo, larbed.compute_ug(geo.crystal, geo), [10.0, 20.0])
    with pytest.raises(ValueError, match="has 2 thicknesses; pass thickness="):
        plotting.plot_pattern(series)
    with pytest.raises(ValueError, match=r"thickness 15.0 nm is not in the pattern"):
        plotting.plot_pattern(series, thickness=15.0)
    with pytest.raises(ValueError, match="records no geometry"):
        plotting.plot_pattern(pattern.intensity.drop_attrs())
    with pytest.raises(ValueError, match="needs a 'thickness' dimension"):
        plotting.plot_thickness_series(pattern)
    with pytest.raises(ValueError, match="no variable 'counts'"):
        plotting.plot_pattern(pattern, variable="counts")
