"""PNG figures of Task 1 and Task 2 results (matplotlib ``Figure`` objects, no pyplot state)."""

from __future__ import annotations

import logging
import os

import numpy as np

from ..image import larbed_image
from .pattern import figure

__all__ = [
    "plot_task1",
    "plot_task2",
    "loss_figure",
    "r_vs_scale_figure",
    "r_vs_iteration_figure",
    "ug_comparison_figure",
    "image_comparison_figure",
]

logger = logging.getLogger(__name__)

_DPI = 110


def _save(fig, out_dir, name: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(os.fspath(out_dir), name)
    fig.savefig(path, dpi=_DPI)
    logger.info("wrote %s", path)
    return path


def loss_figure(curves: dict, title: str):
    """MSE loss curves: ``curves`` maps a label to (x, y) arrays (NaNs are skipped)."""
    fig = figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for label, (x, y) in curves.items():
        y = np.asarray(y, float)
        ok = np.isfinite(y)
        ax.semilogy(
            np.asarray(x)[ok], y[ok], marker="o" if ok.sum() < 40 else None, ms=3, label=label
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def r_vs_scale_figure(scales, r, title: str, threshold: float | None = None):
    """R of the predicted pattern against the deviation scale (log axis)."""
    fig = figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.semilogx(scales, r, "o-")
    ax.axhline(0.3, color="0.5", ls="--", lw=1, label="R = 0.3")
    ax.axhline(0.5, color="0.7", ls=":", lw=1, label="R = 0.5 (stop)")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="C3", lw=1, label=f"threshold {threshold:g}")
    ax.set_xlabel("deviation scale s")
    ax.set_ylabel("R")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def r_vs_iteration_figure(r, thickness_nm, title: str):
    """R and the predicted thickness against the Task 2 iteration."""
    fig = figure(figsize=(7, 5), layout="constrained")
    ax, ax2 = fig.subplots(2, 1, sharex=True)
    it = np.arange(len(r))
    ax.plot(it, r, ".-")
    best = int(np.argmin(r))
    ax.plot(best, r[best], "o", color="C3", label=f"R_min = {r[best]:.3f} (iteration {best})")
    ax.set_ylabel("R")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax2.plot(it, thickness_nm, ".-", color="C2")
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("predicted t [nm]")
    ax2.grid(alpha=0.3)
    return fig


def ug_comparison_figure(labels, true, pred, title: str, extra: dict | None = None):
    """Predicted vs true Re U_g and Im U_g over the reflections."""
    fig = figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    x = np.arange(len(labels))
    for ax, part, name in ((axes[0], np.real, "Re"), (axes[1], np.imag, "Im")):
        if true is not None:
            ax.plot(x, part(true), "o-", color="C0", label="true")
        ax.plot(x, part(pred), "s--", color="C3", label="predicted")
        for lab, vals in (extra or {}).items():
            ax.plot(x, part(vals), ".:", label=lab)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=90, fontsize=6)
        ax.set_ylabel(f"{name} U_g [1/Å²]")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def image_comparison_figure(geometry, experiment, simulated, title: str, r: float | None = None):
    """Experimental vs simulated 2-D LARBED image, each scaled to its maximum."""
    fig = figure(figsize=(9, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, pat, name in ((axes[0], experiment, "experimental"), (axes[1], simulated, "simulated")):
        img = larbed_image(np.asarray(pat, float), geometry, channels=0)
        im = ax.imshow(img, cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name if name == "experimental" or r is None else f"{name} (R = {r:.3f})")
        ax.set_axis_off()
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="I / max I")
    fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------- per task
def plot_task1(result, out_dir) -> list[str]:
    """Figures of a :class:`~larbed.learn.Task1Result`; returns the written paths."""
    from ..simulation import simulate

    h = result.history
    tag = f"task1_{result.name}_{result.model}"
    title = f"Task 1 {result.name} ({result.model.upper()})"
    paths = []
    epochs = h.epoch.values
    curves = {}
    for k in sorted({0, h.sizes["scale"] - 1}):
        s = float(h.scale.values[k])
        curves[f"train, s={s:g}"] = (epochs, h.train_loss.values[k])
        curves[f"test, s={s:g}"] = (epochs, h.test_loss.values[k])
    paths.append(_save(loss_figure(curves, title + ": losses"), out_dir, tag + "_loss.png"))
    paths.append(
        _save(
            r_vs_scale_figure(h.scale.values, h.r_factor.values, title, result.threshold),
            out_dir,
            tag + "_r_vs_scale.png",
        )
    )
    labels = [str(x) for x in h.reflection_label.values]
    # the prediction at the threshold scale (or at the smallest scale when none qualifies)
    k = (
        int(np.flatnonzero(h.scale.values == result.threshold)[0])
        if np.isfinite(result.threshold)
        else 0
    )
    s = float(h.scale.values[k])
    paths.append(
        _save(
            ug_comparison_figure(
                labels, h.ug_true.values, h.ug_pred.values[k], f"{title}: prediction at s = {s:g}"
            ),
            out_dir,
            tag + "_ug.png",
        )
    )
    geo = result.inputs.geometry
    sim = simulate(geo, h.ug_pred.values[k], float(h.thickness_nm.values[k]))["intensity"].values
    paths.append(
        _save(
            image_comparison_figure(
                geo,
                result.inputs.intensity(),
                sim,
                f"{title}: s = {s:g}",
                float(h.r_factor.values[k]),
            ),
            out_dir,
            tag + "_images.png",
        )
    )
    return paths


def plot_task2(result, out_dir) -> list[str]:
    """Figures of a :class:`~larbed.learn.Task2Result`; returns the written paths."""
    h = result.history
    tag = f"task2_{result.name}_{result.model}"
    title = f"Task 2 {result.name} ({result.model.upper()})"
    paths = []
    n_init = h.sizes["epoch"]
    loop = h.train_loss.values.reshape(-1)
    x_loop = n_init + np.arange(1, loop.size + 1)
    test_x = n_init + (np.arange(h.sizes["iteration"]) + 1) * h.sizes["loop_epoch"]
    curves = {
        "initial training: train": (h.epoch.values, h.init_train_loss.values),
        "initial training: test": (h.epoch.values, h.init_test_loss.values),
        "loop: train": (x_loop, loop),
        "loop: test (end of iteration)": (test_x, h.test_loss.values),
    }
    paths.append(_save(loss_figure(curves, title + ": losses"), out_dir, tag + "_loss.png"))
    paths.append(
        _save(
            r_vs_iteration_figure(h.r_factor.values, h.thickness_nm.values, title),
            out_dir,
            tag + "_r_vs_iteration.png",
        )
    )
    labels = [str(x) for x in h.reflection_label.values]
    true = h.ug_true.values if "ug_true" in h else None
    paths.append(
        _save(
            ug_comparison_figure(
                labels,
                true,
                result.best_ug.values,
                f"{title}: best prediction (iteration {result.best_iteration})",
                extra={"first prediction": h.ug_pred.values[0]},
            ),
            out_dir,
            tag + "_ug.png",
        )
    )
    best = result.best_pattern()["intensity"].values
    paths.append(
        _save(
            image_comparison_figure(
                result.inputs.geometry,
                result.inputs.intensity(),
                best,
                f"{title}: experimental vs best simulated",
                result.r_min,
            ),
            out_dir,
            tag + "_images.png",
        )
    )
    return paths
