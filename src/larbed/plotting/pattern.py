"""Pictures of LARBED patterns with matplotlib (works with the non-interactive Agg backend).

Every function returns a :class:`matplotlib.figure.Figure`; save it with ``fig.savefig(path)``.
The figures use :class:`matplotlib.figure.Figure` directly (no pyplot state), so they work in
scripts, tests and servers without a display and are freed when no longer referenced.

The picture of a pattern is the 2-D LARBED image (each beam's tilt disc drawn at the
beam's position) in intensity units, with the beams' hkl labels and a colour bar.
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr

from ..geometry import Geometry
from ..image import beam_grid_positions, larbed_image

__all__ = ["INTENSITY_LABEL", "compare_patterns", "figure", "pattern_image", "plot_pattern",
           "plot_thickness_series"]

logger = logging.getLogger(__name__)

#: On a log scale, intensities below this fraction of the maximum are drawn at the floor colour.
LOG_FLOOR = 1e-6
#: At most this many panels in a thickness series (evenly spaced picks beyond it).
MAX_SERIES_PANELS = 12
#: Colour-bar label of intensities.
INTENSITY_LABEL = "intensity (fraction of incident beam)"


def figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _geometry_of(ds, geometry: Geometry | None) -> Geometry:
    if geometry is not None:
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be a larbed.Geometry, got {type(geometry).__name__}")
        return geometry
    attrs = ds.attrs if isinstance(ds, (xr.Dataset, xr.DataArray)) else {}
    try:
        return Geometry.from_attrs(attrs)
    except ValueError as exc:
        raise ValueError(
            "the pattern records no geometry in its attributes; pass geometry=... "
            f"(a larbed.Geometry) ({exc})"
        ) from exc


def _intensity(ds, variable: str = "intensity") -> xr.DataArray:
    if isinstance(ds, xr.Dataset):
        if variable not in ds:
            raise ValueError(f"dataset has no variable {variable!r}")
        return ds[variable]
    if isinstance(ds, xr.DataArray):
        return ds
    raise TypeError(f"expected an xarray.Dataset or DataArray pattern, got {type(ds).__name__}")


def _select_thickness(da: xr.DataArray, thickness: float | None) -> xr.DataArray:
    if "thickness" not in da.dims:
        if thickness is not None:
            raise ValueError("thickness= given but the pattern has no thickness dimension")
        return da
    if thickness is None:
        raise ValueError(
            f"the pattern has {da.sizes['thickness']} thicknesses; pass thickness=<nm> to pick one "
            "or use plot_thickness_series"
        )
    values = da.thickness.values
    idx = int(np.argmin(np.abs(values - float(thickness))))
    if not np.isclose(values[idx], float(thickness), rtol=1e-9, atol=1e-9):
        raise ValueError(
            f"thickness {thickness} nm is not in the pattern; available: {values.tolist()}"
        )
    return da.isel(thickness=idx)


def pattern_image(pattern, geometry: Geometry) -> np.ndarray:
    """The LARBED image in intensity units, NaN outside the tilt discs.

    Parameters
    ----------
    pattern : array_like or xarray.DataArray
        (..., n_tilts, n_beams) intensities.
    geometry : Geometry

    Returns
    -------
    numpy.ndarray
        float64 (..., H, W) image (see :func:`larbed.image.larbed_image` for the layout).
    """
    if isinstance(pattern, xr.DataArray):
        pattern = pattern.transpose(..., "tilt", "beam").values
    arr = np.asarray(pattern, dtype=float)
    scaled = larbed_image(arr, geometry, channels=0).astype(float)
    peak = arr.reshape(arr.shape[:-2] + (-1,)).max(axis=-1)
    peak = np.where(peak > 0, peak, 1.0)
    img = scaled * peak.reshape(peak.shape + (1, 1))
    inside = larbed_image(np.ones((geometry.n_tilts, geometry.n_beams)), geometry, channels=0) > 0
    img[..., ~inside] = np.nan
    return img


def _hkl_label(hkl) -> str:
    parts = [rf"\bar{{{-int(x)}}}" if x < 0 else str(int(x)) for x in hkl]
    return "$" + "".join(parts) + "$"


def _norm(img: np.ndarray, log: bool, vmax: float | None = None):
    from matplotlib.colors import LogNorm, Normalize

    finite = img[np.isfinite(img)]
    top = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    top = top if top > 0 else 1.0
    if log:
        return LogNorm(vmin=top * LOG_FLOOR, vmax=top, clip=True)
    return Normalize(vmin=0.0, vmax=top)


def _nice_length(x: float) -> float:
    """The largest of 1, 2, 5 × 10^k not above x."""
    if x <= 0:
        return 0.0
    k = np.floor(np.log10(x))
    for m in (5.0, 2.0, 1.0):
        if m * 10**k <= x:
            return float(m * 10**k)
    return float(10**k)


def _scale_bar(ax, geometry: Geometry) -> None:
    """A bar of a round number of mrad in the lower left (one tilt-disc pixel = one tilt step)."""
    r = geometry.tilt_radius
    if r == 0 or geometry.tilt_step_mrad <= 0:
        return
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    px_per_mrad = 1.0 / geometry.tilt_step_mrad  # one pixel = one tilt step
    length = _nice_length(geometry.tilt_range_mrad)
    bar = AnchoredSizeBar(ax.transData, length * px_per_mrad, f"{length:g} mrad", "lower left",
                          pad=0.3, color="0.15", frameon=False, size_vertical=max(r / 12, 0.5),
                          fontproperties={"size": 7})
    ax.add_artist(bar)


def _draw(ax, img, geometry: Geometry, norm, cmap: str, labels: bool, scale: bool = True) -> object:
    im = ax.imshow(img, cmap=cmap, norm=norm, interpolation="nearest", origin="upper")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("0.85")
    if scale:
        _scale_bar(ax, geometry)
    if labels:
        from matplotlib import patheffects

        size = 2 * geometry.tilt_radius + 1
        cells = beam_grid_positions(geometry)
        n_cols = int(cells[:, 0].max()) + 1
        fontsize = max(4.0, min(9.0, 60.0 / n_cols))
        for hkl, (col, row) in zip(geometry.hkl, cells, strict=True):
            ax.text(
                col * size + size / 2 - 0.5,
                row * size + 0.5,
                _hkl_label(hkl),
                ha="center",
                va="top",
                fontsize=fontsize,
                color="white",
                path_effects=[patheffects.withStroke(linewidth=1.5, foreground="black")],
            )
    return im


def plot_pattern(
    ds,
    ax=None,
    *,
    geometry: Geometry | None = None,
    thickness: float | None = None,
    variable: str = "intensity",
    log: bool = False,
    cmap: str = "inferno",
    labels: bool = True,
    colorbar: bool = True,
    title: str | None = None,
):
    """Draw a pattern as its 2-D LARBED image with hkl labels and a colour bar.

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
        Pattern over (``tilt``, ``beam``) (or with ``thickness``; then pick one).
    ax : matplotlib.axes.Axes, optional
        Draw here; default a new Figure with one axes.
    geometry : Geometry, optional
        Default: rebuilt from ``ds.attrs``.
    thickness : float, optional
        Thickness [nm] to show when the pattern has a ``thickness`` dimension.
    variable : str
        Dataset variable to draw.
    log : bool
        Logarithmic colour scale (floor at 1e-6 of the maximum).
    cmap : str
        Colour map name.
    labels : bool
        Write each beam's hkl above its disc.
    colorbar : bool
        Add a colour bar (intensity, fraction of the incident beam).
    title : str, optional
        Default: crystal, zone axis and thickness from the attributes.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import larbed
    >>> from larbed.plotting import plot_pattern
    >>> x = larbed.Crystal.builtin("SrTiO3")
    >>> geo = larbed.Geometry(x, 120, (0, 0, 1), 13, 13, 40)
    >>> fig = plot_pattern(larbed.simulate(geo, larbed.compute_ug(x, geo), 30.0), log=True)
    >>> len(fig.axes), fig.axes[0].images[0].get_array().shape
    (2, (25, 25))
    """
    geo = _geometry_of(ds, geometry)
    da = _select_thickness(_intensity(ds, variable), thickness)
    img = pattern_image(da, geo)
    if ax is None:
        fig = figure(figsize=(5.6, 4.8), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    im = _draw(ax, img, geo, _norm(img, log), cmap, labels)
    if colorbar:
        fig.colorbar(im, ax=ax, label=INTENSITY_LABEL)
    ax.set_title(title if title is not None else _default_title(ds, geo, da))
    return fig


def _default_title(ds, geo: Geometry, da: xr.DataArray) -> str:
    zone = "".join(str(x) for x in geo.zone_axis)
    parts = [f"{geo.crystal.name} [{zone}]", f"{geo.voltage_kv:g} kV"]
    if "thickness" in da.coords and da.thickness.ndim == 0:
        parts.append(f"t = {float(da.thickness):g} nm")
    elif isinstance(ds, xr.Dataset) and isinstance(ds.attrs.get("thickness_nm"), (int, float)):
        parts.append(f"t = {float(ds.attrs['thickness_nm']):g} nm")
    return ", ".join(parts)


def plot_thickness_series(
    ds,
    *,
    geometry: Geometry | None = None,
    variable: str = "intensity",
    max_panels: int = MAX_SERIES_PANELS,
    log: bool = False,
    cmap: str = "inferno",
    labels: bool = False,
    ncols: int | None = None,
):
    """One panel per thickness on a common colour scale (evenly spaced picks beyond ``max_panels``).

    Parameters
    ----------
    ds : xarray.Dataset or xarray.DataArray
        Pattern over (``thickness``, ``tilt``, ``beam``).
    max_panels : int
        Most panels to draw.
    ncols : int, optional
        Panels per row (default about the square root of the panel count).

    Returns
    -------
    matplotlib.figure.Figure
        Panels plus one colour-bar axes.
    """
    geo = _geometry_of(ds, geometry)
    da = _intensity(ds, variable)
    if "thickness" not in da.dims:
        raise ValueError("plot_thickness_series needs a 'thickness' dimension; use plot_pattern")
    if int(max_panels) < 1:
        raise ValueError(f"max_panels must be >= 1, got {max_panels}")
    n_t = da.sizes["thickness"]
    picks = np.unique(np.round(np.linspace(0, n_t - 1, min(n_t, int(max_panels)))).astype(int))
    if len(picks) < n_t:
        logger.info("showing %d of %d thicknesses", len(picks), n_t)
    da = da.isel(thickness=picks).transpose("thickness", "tilt", "beam")
    imgs = pattern_image(da, geo)
    n = len(picks)
    cols = int(ncols) if ncols else int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig = figure(figsize=(2.4 * cols + 0.8, 2.4 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    norm = _norm(imgs, log)
    im = None
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            fig.delaxes(ax)
            continue
        im = _draw(ax, imgs[i], geo, norm, cmap, labels)
        ax.set_title(f"t = {float(da.thickness[i]):g} nm", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist()[:n], label=INTENSITY_LABEL, shrink=0.8)
    fig.suptitle(f"{geo.crystal.name}, {geo.n_beams} beams × {geo.n_tilts} tilts")
    return fig


def compare_patterns(
    experiment,
    simulation,
    *,
    geometry: Geometry | None = None,
    log: bool = False,
    cmap: str = "inferno",
    labels: bool = True,
):
    """Experiment, simulation and their difference side by side, with the R-factor in the title.

    Each panel has the beams' hkl labels (``labels``) and a scale bar in mrad of incident-beam tilt;
    the colour bars are in fractions of the incident beam.

    Parameters
    ----------
    experiment, simulation : xarray.Dataset or xarray.DataArray
        Patterns over (``tilt``, ``beam``) of the same geometry.
    geometry : Geometry, optional
        Default: from the experiment's (else the simulation's) attributes.
    labels : bool
        Write each beam's hkl above its disc.

    Returns
    -------
    matplotlib.figure.Figure
        Three image axes (experiment, simulation, experiment − simulation) and two colour bars.
    """
    from ..metrics import r_factor

    try:
        geo = _geometry_of(experiment, geometry)
    except ValueError:
        geo = _geometry_of(simulation, None)
    a = _select_thickness(_intensity(experiment), None)
    b = _select_thickness(_intensity(simulation), None)
    if a.shape != b.shape:
        raise ValueError(f"patterns differ in shape: {a.shape} vs {b.shape}")
    r = r_factor(a, b)
    img_a, img_b = pattern_image(a, geo), pattern_image(b, geo)
    diff = img_a - img_b
    top = float(np.nanmax([np.nanmax(img_a), np.nanmax(img_b)]))
    fig = figure(figsize=(13.0, 4.4), layout="constrained")
    axes = fig.subplots(1, 3)
    norm = _norm(np.array([top]), log, vmax=top)
    im = _draw(axes[0], img_a, geo, norm, cmap, labels)
    _draw(axes[1], img_b, geo, norm, cmap, labels)
    fig.colorbar(im, ax=axes[:2].tolist(), label=INTENSITY_LABEL, shrink=0.85)
    from matplotlib.colors import Normalize

    span = float(np.nanmax(np.abs(diff))) or 1.0
    imd = _draw(axes[2], diff, geo, Normalize(-span, span), "RdBu_r", labels)
    fig.colorbar(imd, ax=axes[2], label="difference (fraction of incident beam)", shrink=0.85)
    axes[0].set_title("experiment")
    axes[1].set_title("simulation")
    axes[2].set_title("experiment − simulation")
    fig.suptitle(f"{geo.crystal.name}: R = {r:.4g}")
    return fig
