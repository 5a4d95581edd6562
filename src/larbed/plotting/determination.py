"""Figures of refinements and determinations: U_g with error bars, R per iteration."""

from __future__ import annotations

import numpy as np

from .pattern import figure

__all__ = ["MAX_UG_LABELS", "plot_refinement_history", "plot_ug"]

#: At most this many reflection labels on the U_g axis (every k-th beyond).
MAX_UG_LABELS = 60


def plot_ug(ug, ug_error=None, *, truth=None, title: str | None = None):
    """U_g with error bars over the reflections (and the truth, when known).

    U_g the data do not determine (infinite error) are drawn as open markers and do not set the
    vertical range, so they cannot flatten the rest; values outside the range are drawn at its edge
    as triangles.

    Parameters
    ----------
    ug : xarray.DataArray
        U_g [1/Å²] over ``reflection`` with h, k, l coordinates.
    ug_error : xarray.DataArray, optional
        Standard errors: real part σ(Re U_g), imaginary part σ(Im U_g) [1/Å²].
    truth : array_like, optional
        True U_g in the same origin [1/Å²].
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    vals = np.asarray(ug.values, complex)
    n = vals.size
    err = (np.zeros(n, complex) if ug_error is None else np.asarray(
        ug_error.values if hasattr(ug_error, "values") else ug_error, complex))
    labels = [" ".join(str(int(v)) for v in (h, k, l))
              for h, k, l in zip(ug.h.values, ug.k.values, ug.l.values, strict=True)]
    fig = figure(figsize=(min(max(6.0, 0.22 * n), 16.0), 4.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(n)
    scale = max(float(np.max(np.abs(vals))), 1e-300)
    show_imag = bool(np.max(np.abs(vals.imag)) > 1e-12 * scale)
    parts = [("Re U", vals.real, err.real, "o", -0.12)]
    if show_imag:
        parts.append(("Im U", vals.imag, err.imag, "s", 0.12))
    shown = []
    for name, v, e, marker, dx in parts:
        ok = np.isfinite(e)
        line = ax.errorbar(x[ok] + dx, v[ok], yerr=e[ok], fmt=marker, ms=3, label=f"{name} found")
        shown.append(v[ok])
        if np.any(~ok):
            ax.plot(x[~ok] + dx, v[~ok], marker, ms=5, mfc="none", color=line[0].get_color(),
                    label=f"{name} undetermined (σ = ∞)")
    if truth is not None:
        t = np.asarray(truth, complex)
        ax.plot(x, t.real, "k_", ms=10, label="Re U true (origin aligned)")
        shown.append(t.real)
        if show_imag:
            ax.plot(x, t.imag, "r_", ms=10, label="Im U true")
            shown.append(t.imag)
    ref = np.concatenate([np.ravel(a) for a in shown]) if shown else vals.real
    ref = ref[np.isfinite(ref)]
    if ref.size:
        lo, hi = float(ref.min()), float(ref.max())
        pad = 0.08 * max(hi - lo, 1e-6 * scale)
        lo, hi = lo - pad, hi + pad
        ax.set_ylim(lo, hi)
        for _, v, _, _, dx in parts:  # values beyond the range: triangles at the edge
            over, under = v > hi, v < lo
            ax.plot(x[over] + dx, np.full(over.sum(), hi), "^", color="0.3", ms=6, clip_on=False)
            ax.plot(x[under] + dx, np.full(under.sum(), lo), "v", color="0.3", ms=6, clip_on=False)
    step = max(1, int(np.ceil(n / MAX_UG_LABELS)))
    ax.set_xticks(x[::step])
    ax.set_xticklabels(labels[::step], rotation=90, fontsize=7 if n <= 40 else 6)
    ax.set_xlim(-0.8, n - 0.2)
    ax.set_xlabel("reflection hkl")
    ax.set_ylabel("U_g [1/Å²]")
    ax.axhline(0, color="0.7", lw=0.5)
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title)
    return fig


def plot_refinement_history(history, *, title: str | None = None):
    """R per refinement iteration (log scale, integer iteration ticks).

    Parameters
    ----------
    history : xarray.Dataset
        A refinement history (``RefinementResult.history``) with ``r_factor`` over ``iteration``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.ticker import MaxNLocator

    fig = figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    if history.sizes.get("iteration", 0):
        ax.semilogy(history.iteration, history.r_factor, "o-", ms=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("refinement iteration")
    ax.set_ylabel("R")
    if title:
        ax.set_title(title)
    return fig
