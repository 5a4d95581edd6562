"""The 2-D LARBED image: every beam's tilt disc as a patch on a grid of beam positions."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .geometry import Geometry

__all__ = ["beam_grid_positions", "larbed_image"]


def beam_grid_positions(geometry: Geometry) -> np.ndarray:
    """(n_beams, 2) integer (column, row) grid cells of the beams, row 0 at the top.

    Beams are expressed in the basis of the two shortest non-collinear beam vectors; beams of a
    ZOLZ take integer coordinates there, so patches never overlap.
    """
    basis = geometry.beam_basis
    coeff = np.linalg.solve(basis.T, geometry.g_xy.T).T
    rounded = np.round(coeff)
    if not np.allclose(coeff, rounded, atol=1e-6):
        # beams are not on the 2-D lattice of the basis (should not happen for a ZOLZ): fall back
        # to ranking positions, which still never overlaps
        rounded = np.stack([np.unique(np.round(c, 6), return_inverse=True)[1] for c in coeff.T], 1)
    col = (rounded[:, 0] - rounded[:, 0].min()).astype(int)
    row = (rounded[:, 1].max() - rounded[:, 1]).astype(int)
    return np.stack([col, row], axis=1)


def larbed_image(pattern, geometry: Geometry, channels: int = 3) -> np.ndarray:
    """Draw LARBED patterns as images.

    Parameters
    ----------
    pattern : array_like, xarray.DataArray or xarray.Dataset
        Intensities of shape (..., n_tilts, n_beams) (a Dataset contributes ``intensity``).
    geometry : Geometry
        The pattern's geometry.
    channels : int
        Number of equal channels in the last axis (3 for ImageNet networks; 0 for none).

    Returns
    -------
    numpy.ndarray
        float32 images of shape (..., H, W, channels) (or (..., H, W)), each pattern scaled to
        [0, 1] by its maximum; zero outside the discs. H = rows · (2r+1), W = cols · (2r+1).

    Examples
    --------
    >>> import larbed
    >>> x = larbed.Crystal.builtin("SrTiO3")
    >>> geo = larbed.Geometry(x, 120, (0, 0, 1), 13, 441, 70)
    >>> larbed_image(np.ones((441, 13)), geo).shape
    (125, 125, 3)
    """
    if isinstance(pattern, xr.Dataset):
        pattern = pattern["intensity"]
    if isinstance(pattern, xr.DataArray):
        pattern = pattern.transpose(..., "tilt", "beam").values
    arr = np.asarray(pattern, dtype=float)
    if arr.ndim < 2 or arr.shape[-2:] != (geometry.n_tilts, geometry.n_beams):
        raise ValueError(
            f"pattern must have shape (..., {geometry.n_tilts}, {geometry.n_beams}) (tilt, beam), got {arr.shape}"
        )
    r = geometry.tilt_radius
    size = 2 * r + 1
    cells = beam_grid_positions(geometry)
    height = (cells[:, 1].max() + 1) * size
    width = (cells[:, 0].max() + 1) * size
    lead = arr.shape[:-2]
    img = np.zeros(lead + (height, width), dtype=np.float32)
    # pixel of each tilt inside a patch: column i + r, row r - j (y up)
    px = geometry.tilt_ij[:, 0] + r
    py = r - geometry.tilt_ij[:, 1]
    for b in range(geometry.n_beams):
        c, rr = cells[b]
        img[..., rr * size + py, c * size + px] = arr[..., :, b]
    peak = img.reshape(lead + (-1,)).max(axis=-1)
    peak = np.where(peak > 0, peak, 1.0)
    img /= peak.reshape(lead + (1, 1)).astype(np.float32)
    if channels:
        img = np.repeat(img[..., None], channels, axis=-1)
    return img
