"""The ``Dataset.larbed`` accessor: methods on pattern Datasets (registered by ``import larbed``).

Examples
--------
>>> import larbed
>>> x = larbed.Crystal.builtin("SrTiO3")
>>> geo = larbed.Geometry(x, 120, (0, 0, 1), 5, 5, 10)
>>> ds = larbed.simulate(geo, larbed.compute_ug(x, geo), 20.0)
>>> ds.larbed.geometry == geo
True
>>> ds.larbed.image(channels=0).shape
(9, 9)
>>> ds.larbed.r_factor(ds)
0.0
"""

from __future__ import annotations

import xarray as xr

from .geometry import Geometry

__all__ = ["LarbedAccessor"]


@xr.register_dataset_accessor("larbed")
class LarbedAccessor:
    """Pattern methods under ``ds.larbed``: geometry, U_g, image, plot, R-factor."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds
        self._geometry: Geometry | None = None

    @property
    def geometry(self) -> Geometry:
        """The :class:`~larbed.Geometry` recorded in the attributes (rebuilt once, then cached)."""
        if self._geometry is None:
            self._geometry = Geometry.from_attrs(self._ds.attrs)
        return self._geometry

    @property
    def ug(self) -> xr.DataArray:
        """The structure factors stored with the pattern (complex [1/Å²], over ``reflection``)."""
        from .schema import extract_ug

        return extract_ug(self._ds)

    def image(self, channels: int = 0, variable: str = "intensity"):
        """The 2-D LARBED image of ``variable``; see :func:`larbed.image.larbed_image`.

        Returns
        -------
        numpy.ndarray
            float32 (..., H, W[, channels]) scaled to [0, 1] per pattern.
        """
        from .image import larbed_image

        if variable not in self._ds:
            raise ValueError(f"dataset has no variable {variable!r}")
        return larbed_image(self._ds[variable], self.geometry, channels=channels)

    def plot(self, **kwargs):
        """Plot the pattern: :func:`larbed.plotting.plot_pattern` (single thickness) or
        :func:`larbed.plotting.plot_thickness_series` (a ``thickness`` dimension and no
        ``thickness=`` keyword). Returns the matplotlib Figure."""
        from . import plotting

        if "thickness" in self._ds.dims and "thickness" not in kwargs:
            return plotting.plot_thickness_series(self._ds, **kwargs)
        return plotting.plot_pattern(self._ds, **kwargs)

    def r_factor(self, other) -> float:
        """R = Σ|I_self − I_other| / Σ I_self with this pattern as the experiment."""
        from .metrics import r_factor

        return r_factor(self._ds, other)
