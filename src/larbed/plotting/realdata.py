"""Pictures of a refinement against measured data: data vs fit vs residual per beam, the refined
background against |g|, nominal vs refined tilts. Each function takes a
:class:`larbed.RefinementResult` (or a :class:`larbed.DeterminationResult`) and returns a Figure.
"""

from __future__ import annotations

import numpy as np

from .pattern import INTENSITY_LABEL, figure

__all__ = ["plot_background", "plot_fit_images", "plot_tilt_map"]


def _refinement(result):
    return getattr(result, "refinement", result)


def _refined(result, variable: str, what: str, forms: str):
    """(refinement result, its measurement Dataset), or ValueError when ``variable`` was not refined."""
    res = _refinement(result)
    m = res.measurement
    if m is None or variable not in m:
        raise ValueError(f"the result has no refined {what} (refine with a Measurement whose "
                         f"{forms})")
    return res, m


def _marker_size(geometry, ax_width_mrad: float) -> float:
    step = geometry.tilt_step_mrad or 1.0
    return max(2.0, (160.0 * step / max(ax_width_mrad, 1e-9)) ** 2)


def plot_fit_images(result, beams=8, *, title: str | None = None):
    """Data, fit and residual (data − fit) of the strongest recorded beams over the tilt disc.

    Parameters
    ----------
    result : RefinementResult or DeterminationResult
    beams : int or sequence of (h, k, l)
        The ``beams`` strongest recorded beams (by mean data intensity), or these beams.
    title : str, optional
    """
    res = _refinement(result)
    geo = res.geometry
    obs = res.fit.observed.values
    fit = res.fit.intensity.values
    if isinstance(beams, (int, np.integer)):
        rec = geo.recorded_beams
        order = rec[np.argsort(-np.nanmean(obs[:, rec], axis=0))]
        idx = order[: int(beams)]
    else:
        lookup = {tuple(h): i for i, h in enumerate(geo.hkl.tolist())}
        missing = [tuple(h) for h in beams if tuple(h) not in lookup]
        if missing:
            raise ValueError(f"beams {missing[:5]} are not among the geometry's beams")
        idx = np.array([lookup[tuple(h)] for h in beams])
    th = geo.tilt_mrad
    width = float(np.ptp(th[:, 0])) + 2 * (geo.tilt_step_mrad or 1.0)
    fig = figure(figsize=(7.5, 2.2 * len(idx) + 0.6), layout="constrained")
    axes = fig.subplots(len(idx), 3, squeeze=False)
    size = _marker_size(geo, width) / max(len(idx), 1) ** 0.5
    for row, b in enumerate(idx):
        top = float(np.nanmax(np.concatenate([obs[:, b], fit[:, b]])))
        resid = obs[:, b] - fit[:, b]
        lim = float(np.nanmax(np.abs(resid))) or 1.0
        for col, (vals, cmap, vmin, vmax, lab) in enumerate((
                (obs[:, b], "viridis", 0.0, top, "data"), (fit[:, b], "viridis", 0.0, top, "fit"),
                (resid, "RdBu_r", -lim, lim, "data − fit"))):
            ax = axes[row, col]
            sc = ax.scatter(th[:, 0], th[:, 1], c=vals, s=size, marker="s", cmap=cmap, vmin=vmin,
                            vmax=vmax, linewidths=0)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            h = " ".join(str(int(v)) for v in geo.hkl[b])
            ax.set_title(f"{lab} ({h})", fontsize=8)
            if col != 1:
                fig.colorbar(sc, ax=ax, shrink=0.8).ax.tick_params(labelsize=6)
    fig.suptitle(title or f"data vs fit (R = {res.r_factor:.3g}"
                 + (f", R_free = {res.r_free:.3g})" if np.isfinite(res.r_free) else ")"), fontsize=9)
    return fig


def plot_background(result, *, title: str | None = None):
    """The refined background against |g| [1/Å], with its standard errors."""
    res, m = _refined(result, "background", "background", "background is not 'none'")
    geo = res.geometry
    g = geo.g_abs
    fig = figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.subplots()
    form = m.attrs.get("background_form")
    err = m["background_error"].values if "background_error" in m else None
    if form == "per_beam":
        rec = geo.recorded_beams
        ax.errorbar(g[rec], m.background.values[rec], yerr=None if err is None else err[rec],
                    fmt="o", ms=3, lw=0.8, label="per beam")
    else:
        from ..measurement import Measurement

        meas = Measurement(background=form)
        xm = np.atleast_1d(m.background.values)
        bg = meas.background_array(geo, xm)
        order = np.argsort(g)
        ax.plot(g[order], bg.mean(axis=0)[order], "-", label=f"{form} (tilt mean)")
    ax.set_xlabel("|g| (1/Å)")
    ax.set_ylabel(f"background ({INTENSITY_LABEL})", fontsize=8)
    ax.axhline(0.0, color="0.6", lw=0.6)
    ax.legend(fontsize=8)
    ax.set_title(title or "refined background", fontsize=9)
    return fig


def plot_tilt_map(result, *, magnify: float | None = None, title: str | None = None):
    """Nominal tilts θ and refined true tilts θ' = A θ + c, the displacement ``magnify``-fold
    (default: so that the largest displacement shows as about two tilt steps, 1× to 20×)."""
    res, m = _refined(result, "tilt_matrix", "tilt map", "tilt_map is 'shift' or 'affine'")
    geo = res.geometry
    th = geo.tilt_mrad
    true = th @ m.tilt_matrix.values.T + m.tilt_offset_mrad.values
    if magnify is None:
        biggest = float(np.max(np.linalg.norm(true - th, axis=1), initial=0.0))
        step = geo.tilt_step_mrad or 1.0
        magnify = float(np.clip(2.0 * step / max(biggest, 1e-12), 1.0, 20.0))
    fig = figure(figsize=(5.0, 5.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(th[:, 0], th[:, 1], ".", ms=2, color="0.5", label="nominal θ")
    shown = th + magnify * (true - th)
    ax.plot(shown[:, 0], shown[:, 1], ".", ms=2, color="C3",
            label=f"refined θ' (displacement × {magnify:g})")
    ax.set_aspect("equal")
    ax.set_xlabel("θ_x (mrad)")
    ax.set_ylabel("θ_y (mrad)")
    a = m.tilt_matrix.values
    c = m.tilt_offset_mrad.values
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title or (f"A = [[{a[0, 0]:.4f}, {a[0, 1]:.4f}], [{a[1, 0]:.4f}, {a[1, 1]:.4f}]],"
                           f" c = ({c[0]:.2f}, {c[1]:.2f}) mrad"), fontsize=8)
    return fig
