"""Maps of the projected potential (Fourier synthesis of U_g) with the atoms marked."""

from __future__ import annotations

import numpy as np

from ..potential import potential_map, projected_atoms
from .pattern import figure

__all__ = ["plot_potential", "plot_structure_potential"]


def _panel(fig, ax, vmap, name: str, title: str, atoms, diverging: bool):
    data = vmap[name].values
    kw = {"cmap": "RdBu_r" if diverging else "viridis", "shading": "auto"}
    if diverging:
        lim = max(float(np.max(np.abs(data))), 1e-300)
        kw.update(vmin=-lim, vmax=lim)
    mesh = ax.pcolormesh(vmap.x.values, vmap.y.values, data, **kw)
    fig.colorbar(mesh, ax=ax, label=f"{vmap[name].attrs.get('long_name', name)} [V]")
    cell = np.asarray(vmap.attrs["cell"])
    cells = int(round(float(vmap.u.values[-1] + vmap.u.values[1] - vmap.u.values[0])))
    for element in sorted({a[0] for a in atoms}):
        pts = [(u + i, v + j) for sym, u, v in atoms if sym == element
               for i in range(cells) for j in range(cells)]
        xy = np.array(pts) @ cell
        ax.plot(xy[:, 0], xy[:, 1], "o", mfc="none", ms=7, label=element)
    ax.set_aspect("equal")
    ax.set_xlabel("x [Å]")
    ax.set_ylabel("y [Å]")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")


def plot_potential(geometry, ug, *, crystal=None, reference=None, absorption: float | None = None,
                   n: int = 64, cells: int = 2, title: str | None = None):
    """The projected potential of ``ug`` (real part; the absorptive part with ``absorption``),
    and the difference ``ug − reference`` when a reference (e.g. the independent-atom U_g) is
    given. Atoms of ``crystal`` are marked by their projected positions.

    Parameters
    ----------
    geometry : Geometry
    ug : xarray.DataArray or array_like
        U_g [1/Å²].
    crystal : Crystal, optional
        Atoms to mark.
    reference : xarray.DataArray or array_like, optional
        U_g [1/Å²] to subtract in a difference map.
    absorption : float, optional
        Proportional absorption κ (draws the imaginary part too).
    n, cells : int
        Grid points per cell edge and cells per edge (:func:`larbed.potential.potential_map`).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    vmap = potential_map(geometry, ug, absorption=absorption, n=n, cells=cells)
    panels = [(vmap, "potential", "Re V (projected)", False)]
    if absorption is not None:
        panels.append((vmap, "absorptive", "Im V (absorptive)", False))
    if reference is not None:
        ug_vals = np.asarray(getattr(ug, "values", ug), complex)
        ref_vals = np.asarray(getattr(reference, "values", reference), complex)
        diff = potential_map(geometry, ug_vals - ref_vals, n=n, cells=cells)
        panels.append((diff, "potential", "difference (− reference)", True))
    atoms = [] if crystal is None else projected_atoms(geometry, crystal)
    fig = figure(figsize=(5.0 * len(panels), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (vm, name, label, diverging) in zip(axes, panels, strict=True):
        _panel(fig, ax, vm, name, label, atoms, diverging)
    if title:
        fig.suptitle(title)
    return fig


def plot_structure_potential(result, *, n: int = 64, cells: int = 2):
    """Potential maps of a :class:`larbed.StructureResult`: the refined U_g, and the difference
    refined − independent-atom model of the refined atoms (non-zero only through the free U_g of
    a hybrid refinement: the bonding charge the pattern sees)."""
    from ..structure_factors import compute_ug

    geo = result.refinement.geometry
    iam = compute_ug(result.crystal, geo)
    return plot_potential(geo, result.ug, crystal=result.crystal, reference=iam,
                          absorption=result.refinement.absorption, n=n, cells=cells,
                          title=f"{result.crystal.name} [{' '.join(map(str, geo.zone_axis))}]")
