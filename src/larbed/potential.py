"""Projected crystal potential by Fourier synthesis of the U_g of a zone axis.

The zero-order (ZOLZ) structure factors of a pattern are the Fourier coefficients of the crystal
potential projected along the zone axis [uvw]:

    V(r) = V_0 + Σ_g V_g exp(2πi g·r),   V_g = h² U_g / (2 m₀ e γ) = 150.41 V·Å² · U_g / γ,

summed over both members of every Friedel pair (U_{−g} = U_g*, so V is real), r in the plane
normal to [uvw]. With proportional absorption κ the absorptive potential is V'(r) = κ V(r) (the
imaginary part of the optical potential). :func:`potential_map` evaluates both on a grid over the
projected cell; :func:`larbed.plotting.plot_potential` draws them with the atoms marked, and the
difference refined − independent-atom model (the bonding charge seen by the pattern).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .constants import ELECTRON_MASS, ELEMENTARY_CHARGE, PLANCK
from .geometry import Geometry
from .schema import check_ug

__all__ = ["VOLT_ANGSTROM2", "potential_map", "projected_atoms"]

#: h² / (2 m₀ e) [V·Å²]: V_g = VOLT_ANGSTROM2 · U_g / γ.
VOLT_ANGSTROM2 = PLANCK**2 / (2 * ELECTRON_MASS * ELEMENTARY_CHARGE) * 1e20


def _cell_2d(geometry: Geometry) -> np.ndarray:
    """(2, 2) rows: the real-space basis [Å] dual to the reflections' 2-D lattice."""
    return np.linalg.inv(geometry.reflection_basis).T


def potential_map(geometry: Geometry, ug, *, absorption: float | None = None, n: int = 64,
                  cells: int = 2, include_mean: bool = False) -> xr.Dataset:
    """The potential projected along the zone axis, by Fourier synthesis of ``ug``.

    Parameters
    ----------
    geometry : Geometry
        Gives the reflections and the projection (its in-plane x, y frame).
    ug : xarray.DataArray or array_like
        U_g [1/Å²], one per Friedel pair of ``geometry``.
    absorption : float, optional
        Proportional absorption κ: the imaginary (absorptive) part is κ times the real one.
    n : int
        Grid points per projected-cell edge.
    cells : int
        Projected cells along each edge.
    include_mean : bool
        Add V_0 (from ``ug.attrs['u0']``; 0 when absent).

    Returns
    -------
    xarray.Dataset
        ``potential`` (real part) and ``absorptive`` (imaginary part) [V] over (``u``, ``v``), the fractional coordinates along the two
        projected-cell edges, with coordinates ``x`` and ``y`` [Å] in the geometry's frame;
        ``attrs['cell']`` the (2, 2) cell edges [Å].

    Examples
    --------
    >>> from larbed import Crystal, Geometry, compute_ug
    >>> xtal = Crystal.builtin("SrTiO3")
    >>> geo = Geometry(xtal, 120, (0, 0, 1), 25, 1, 10)
    >>> vmap = potential_map(geo, compute_ug(xtal, geo), n=8, cells=1)
    >>> float(vmap.potential[0, 0]) > float(vmap.potential[4, 0])  # a Sr column at the origin, O halfway
    True
    """
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a larbed.Geometry, got {type(geometry).__name__}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2 grid points per cell edge, got {n!r}")
    if isinstance(cells, bool) or not isinstance(cells, (int, np.integer)) or cells < 1:
        raise ValueError(f"cells must be a positive integer, got {cells!r}")
    if absorption is not None and (not np.isfinite(absorption) or absorption < 0):
        raise ValueError(f"absorption κ must be finite and >= 0, got {absorption}")
    ug_da = check_ug(geometry, ug)
    cell = _cell_2d(geometry)
    frac = np.arange(n * cells) / n
    uu, vv = np.meshgrid(frac, frac, indexing="ij")
    xy = uu[..., None] * cell[0] + vv[..., None] * cell[1]  # (nu, nv, 2) [Å]
    phase = np.exp(2j * np.pi * np.einsum("uvk,pk->uvp", xy, geometry.reflection_xy))
    scale = VOLT_ANGSTROM2 / float(geometry.gamma)
    v = 2.0 * np.real(phase @ np.asarray(ug_da.values, complex)) * scale
    if include_mean:
        v = v + float(ug_da.attrs.get("u0", 0.0)) * scale
    kappa = 0.0 if absorption is None else float(absorption)
    coords = {"u": ("u", frac, {"units": "1 (projected cell)"}),
              "v": ("v", frac, {"units": "1 (projected cell)"}),
              "x": (("u", "v"), xy[..., 0], {"units": "Å"}),
              "y": (("u", "v"), xy[..., 1], {"units": "Å"})}
    return xr.Dataset(
        {"potential": (("u", "v"), v, {"units": "V", "long_name": "projected potential"}),
         "absorptive": (("u", "v"), kappa * v, {"units": "V", "long_name": "absorptive potential"})},
        coords=coords,
        attrs={"cell": cell.tolist(), "zone_axis": list(geometry.zone_axis),
               "absorption": "none" if absorption is None else kappa, "units": "V"})


def projected_atoms(geometry: Geometry, crystal) -> list[tuple[str, float, float]]:
    """(element, u, v) of the crystal's atoms projected along the zone axis, in fractions of the
    projected cell of :func:`potential_map` (wrapped into [0, 1))."""
    cell = _cell_2d(geometry)
    out = []
    for atom in crystal.atoms:
        r = np.asarray(atom.position, float) @ crystal.lattice_vectors
        xy = geometry.frame[:2] @ r
        u, v = np.mod(np.linalg.solve(cell.T, xy), 1.0)
        out.append((atom.symbol, float(u), float(v)))
    return out
