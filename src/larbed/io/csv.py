"""CSV tables of measured intensities: one row per (tilt, beam), read into the pattern layout.

Columns ``h, k, l, tilt_x_mrad, tilt_y_mrad, intensity`` (any order, extra columns ignored), lines
starting with ``#`` are comments; a first line ``# larbed-attrs: {...}`` (written by
:func:`write_csv`) carries the Dataset attributes and the schema version.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import xarray as xr

from .._checkpoint import atomic_write
from ..geometry import Geometry
from ..schema import SCHEMA_ATTR, SCHEMA_VERSION, pattern_coords
from .attributes import LarbedFileError, check_path_exists, from_jsonable, to_jsonable
from .netcdf import normalise_counts, record_source

__all__ = ["CSV_COLUMNS", "TILT_MATCH_FRACTION", "TILT_SAME_MRAD", "read_csv", "read_table", "write_csv"]

logger = logging.getLogger(__name__)

#: Columns a CSV table of measured intensities must have (any order, extra columns ignored).
CSV_COLUMNS: tuple[str, ...] = ("h", "k", "l", "tilt_x_mrad", "tilt_y_mrad", "intensity")
#: A CSV tilt matches a geometry tilt when it lies within this fraction of the tilt-grid spacing
#: (measured tilt angles are usually written with a few decimals).
TILT_MATCH_FRACTION = 0.05
#: Distinct tilts closer than this [mrad] are one tilt when tilts are inferred from a table.
TILT_SAME_MRAD = 1e-9

_CSV_ATTRS_PREFIX = "# larbed-attrs: "


def write_csv(ds: xr.Dataset, path: str | os.PathLike, variable: str = "intensity") -> None:
    """Write a (tilt, beam) pattern as a CSV table, one row per tilt and beam (tilt-major).

    Columns: ``h, k, l, tilt_x_mrad, tilt_y_mrad, intensity`` (floats with 17 significant digits,
    so :func:`read_csv` gives the values back exactly). A first comment line ``# larbed-attrs:``
    holds the Dataset attributes as JSON. A NaN value (not measured) gets no row, so that
    :func:`read_csv` reads it back as NaN; infinite values are refused.

    Parameters
    ----------
    ds : xarray.Dataset
        Pattern with ``variable`` over (``tilt``, ``beam``) and coordinates h, k, l, tilt_x, tilt_y.
    path : str or path-like
    variable : str
        Which variable to write in the ``intensity`` column.
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"write_csv needs an xarray.Dataset, got {type(ds).__name__}")
    if variable not in ds:
        raise ValueError(f"dataset has no variable {variable!r}")
    da = ds[variable]
    if set(da.dims) != {"tilt", "beam"}:
        raise ValueError(
            f"write_csv writes one (tilt, beam) pattern; {variable!r} has dims {da.dims} "
            "(select one thickness first, e.g. ds.isel(thickness=0))"
        )
    for name in ("h", "k", "l", "tilt_x", "tilt_y"):
        if name not in ds.coords:
            raise ValueError(f"dataset lacks the coordinate {name!r} needed for the CSV columns")
    vals = da.transpose("tilt", "beam").values
    hkl = np.stack([ds.h.values, ds.k.values, ds.l.values], axis=1).astype(int)
    tx, ty = ds.tilt_x.values, ds.tilt_y.values
    header = {**ds.attrs, SCHEMA_ATTR: SCHEMA_VERSION}
    lines = [_CSV_ATTRS_PREFIX + json.dumps(to_jsonable(header)), ",".join(CSV_COLUMNS)]
    if np.any(np.isinf(vals)):
        raise ValueError(f"{variable!r} has infinite values (at {int(np.isinf(vals).sum())} "
                         "(tilt, beam) points): write_csv does not write them")
    for m in range(vals.shape[0]):
        tilt = f"{float(tx[m]):.17g},{float(ty[m]):.17g}"
        for n in np.flatnonzero(np.isfinite(vals[m])):  # NaN (not measured): no row
            lines.append(f"{hkl[n, 0]},{hkl[n, 1]},{hkl[n, 2]},{tilt},{float(vals[m, n]):.17g}")
    path = os.fspath(path)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")

    atomic_write(path, write)
    logger.info("wrote %d rows to %s (%d values not measured left out)", len(lines) - 2, path,
                int(np.isnan(vals).sum()))


def _read_table(path: str):
    import pandas as pd

    header_attrs: dict = {}
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        if first.startswith(_CSV_ATTRS_PREFIX):
            header_attrs = from_jsonable(json.loads(first[len(_CSV_ATTRS_PREFIX) :]))
            header_attrs.pop(SCHEMA_ATTR, None)
    except (UnicodeDecodeError, ValueError) as exc:
        raise LarbedFileError(
            f"{path!r} is not a UTF-8 CSV table with a valid header: {exc}"
        ) from exc
    try:
        table = pd.read_csv(path, comment="#", skipinitialspace=True)
    except Exception as exc:  # pandas raises ParserError, EmptyDataError, UnicodeDecodeError …
        raise LarbedFileError(f"could not parse {path!r} as a CSV table: {exc}") from exc
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in CSV_COLUMNS if c not in table.columns]
    if missing:
        raise LarbedFileError(
            f"{path!r} lacks the column(s) {missing}; "
            f"a LARBED CSV table needs {list(CSV_COLUMNS)}, "
            f"found {list(table.columns)}"
        )
    if len(table) == 0:
        raise LarbedFileError(f"{path!r} has a header but no rows")
    cols = {}
    for c in CSV_COLUMNS:
        try:
            cols[c] = np.asarray(pd.to_numeric(table[c], errors="raise"), dtype=float)
        except (ValueError, TypeError) as exc:
            raise LarbedFileError(
                f"column {c!r} of {path!r} holds non-numeric values: {exc}"
            ) from exc
    hkl = np.stack([cols["h"], cols["k"], cols["l"]], axis=1)
    if not np.all(np.isfinite(hkl)) or np.any(hkl != np.round(hkl)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(hkl) & (hkl == np.round(hkl)), axis=1))[0])
        raise LarbedFileError(
            f"{path!r}: h, k, l must be integers (data row {bad + 1}: {hkl[bad].tolist()})"
        )
    tilt = np.stack([cols["tilt_x_mrad"], cols["tilt_y_mrad"]], axis=1)
    if not np.all(np.isfinite(tilt)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(tilt), axis=1))[0])
        raise LarbedFileError(
            f"{path!r}: tilt angles must be finite numbers [mrad] (data row {bad + 1})"
        )
    inten = cols["intensity"]
    if not np.all(np.isfinite(inten)):
        bad = int(np.flatnonzero(~np.isfinite(inten))[0])
        raise LarbedFileError(
            f"{path!r}: intensity is NaN or infinite in data row {bad + 1}; "
            "intensities must be finite (leave a value that was not measured out of the table)"
        )
    return hkl.astype(int), tilt, inten, header_attrs


def read_table(path: str | os.PathLike):
    """The raw rows of a CSV table: (hkl (R, 3) int, tilts (R, 2) [mrad], intensity (R,), header
    attributes). Raises :class:`LarbedFileError` naming the first bad row."""
    return _read_table(check_path_exists(path))


def _check_negative(path: str, inten: np.ndarray, background_subtracted: bool) -> None:
    if background_subtracted or not np.any(inten < 0):
        return
    bad = int(np.flatnonzero(inten < 0)[0])
    raise LarbedFileError(
        f"{path!r}: negative intensity {inten[bad]} in data row {bad + 1}; intensities must be "
        ">= 0 unless the data are background-subtracted (background_subtracted=True; CLI "
        "--background-subtracted), which then need Gaussian weights"
    )


def _match_tilts(path: str, tilt: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Index of the geometry tilt each row's tilt matches (within TILT_MATCH_FRACTION of a step)."""
    from scipy.spatial import cKDTree

    step = geometry.tilt_step_mrad or max(geometry.tilt_range_mrad, 1.0)
    tol = TILT_MATCH_FRACTION * step
    dist, idx = cKDTree(geometry.tilt_mrad).query(tilt)
    far = dist > tol
    if np.any(far):
        row = int(np.flatnonzero(far)[0])
        raise LarbedFileError(
            f"{path!r}: tilt ({tilt[row, 0]:g}, {tilt[row, 1]:g}) mrad in data row {row + 1} "
            f"matches no tilt of the geometry (nearest {dist[row]:.3g} mrad away; tilt step "
            f"{step:g} mrad, tolerance {tol:g} mrad); build the geometry from the file "
            "(larbed.Geometry.from_csv) or give tilts_mrad"
        )
    return idx


def _first_appearance(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows in order of first appearance, and each row's index into them."""
    uniq, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[np.ravel(inverse)]


def read_csv(path: str | os.PathLike, geometry: Geometry | None = None, *,
             counts: bool = False, background_subtracted: bool = False) -> xr.Dataset:
    """Read measured intensities from a CSV table into a pattern Dataset.

    Parameters
    ----------
    path : str or path-like
        CSV file with a header row naming (at least) the columns ``h, k, l, tilt_x_mrad,
        tilt_y_mrad, intensity``; one row per (tilt, beam), rows in any order; lines starting with
        ``#`` are comments. Tilt angles are in the geometry's in-plane frame [mrad].
    geometry : Geometry, optional
        When given, every row's beam must be one of the geometry's beams and its tilt one of the
        geometry's tilts (within 5 % of the tilt step; grid or measured tilts); the result is
        ordered like the geometry and carries its coordinates and attributes, exactly like
        :func:`larbed.simulate`. A (tilt, beam) the file lacks — and every beam the geometry
        simulates but does not record — is NaN: *not measured*, masked everywhere (a recorded
        beam or a tilt with no value at all is an error when the pattern is used). Without a
        geometry, the one recorded in a ``# larbed-attrs:`` header (files of :func:`write_csv`) is
        used, and failing that beams and tilts are taken from the table in order of first
        appearance (coordinates h, k, l, tilt_x, tilt_y only; see
        :meth:`larbed.Geometry.from_csv` to build the geometry from the table).
    counts : bool
        The ``intensity`` column holds detector counts: normalise each tilt by its total and keep
        the totals as the per-tilt dose (:func:`normalise_counts`). Without it the values must be
        fractions of the incident beam (per-tilt sums ≤ 1); raw counts are then rejected when
        larbed uses the pattern.
    background_subtracted : bool
        The values had a background subtracted and may be negative (recorded in
        ``attrs['background_subtracted']``; refinement then uses Gaussian weights). Otherwise a
        negative value is an error naming its row.

    The file's path is kept in ``ds.encoding['source']`` (results record it with its SHA-256).

    Returns
    -------
    xarray.Dataset
        ``intensity`` over (``tilt``, ``beam``), NaN where not measured.

    Raises
    ------
    LarbedFileError
        (a ``ValueError``) missing columns, non-numeric or infinite values, negative intensities
        not declared background-subtracted, duplicate (tilt, beam) rows, or beams/tilts that do
        not match ``geometry`` — each naming the data row.
    """
    path = check_path_exists(path)
    if geometry is not None and not isinstance(geometry, Geometry):
        raise TypeError(
            f"geometry must be a larbed.Geometry or None, got {type(geometry).__name__}"
        )
    hkl, tilt, inten, header_attrs = _read_table(path)
    _check_negative(path, inten, background_subtracted)
    if geometry is None and "crystal_atoms" in header_attrs:
        try:
            geometry = Geometry.from_attrs(header_attrs)
            logger.info("%s: using the geometry recorded in its larbed-attrs header", path)
        except (ValueError, TypeError, KeyError, IndexError):
            geometry = None

    if geometry is None:
        beams, beam_idx = _first_appearance(hkl)
        tilts, tilt_idx = _first_appearance(np.round(tilt / TILT_SAME_MRAD) * TILT_SAME_MRAD)
    else:
        beams, tilts = geometry.hkl, geometry.tilt_mrad
        lookup = {tuple(h): i for i, h in enumerate(beams.tolist())}
        beam_idx = np.array([lookup.get(tuple(h), -1) for h in hkl.tolist()])
        if np.any(beam_idx < 0):
            row = int(np.flatnonzero(beam_idx < 0)[0])
            extra = sorted({tuple(h) for h, i in zip(hkl.tolist(), beam_idx, strict=True) if i < 0})
            raise LarbedFileError(
                f"{path!r}: beam(s) {extra[:5]} (first in data row {row + 1}) are not among the "
                f"geometry's {geometry.n_beams} simulated beams (raise n_beams, or check the zone "
                "axis and the crystal)"
            )
        tilt_idx = _match_tilts(path, tilt, geometry)
    n_t, n_b = len(tilts), len(beams)
    flat = tilt_idx * n_b + beam_idx
    per_cell = np.bincount(flat, minlength=n_t * n_b)
    if np.any(per_cell > 1):
        cell = int(np.flatnonzero(per_cell > 1)[0])
        rows = (np.flatnonzero(flat == cell) + 1).tolist()
        raise LarbedFileError(
            f"{path!r}: duplicate data rows {rows[:5]} for beam {beams[cell % n_b].tolist()} "
            f"at tilt ({tilts[cell // n_b][0]:g}, {tilts[cell // n_b][1]:g}) mrad; "
            "each (tilt, beam) must appear once"
        )
    flat_values = np.full(n_t * n_b, np.nan)
    flat_values[flat] = inten
    values = flat_values.reshape(n_t, n_b)
    if geometry is not None and geometry.n_recorded != geometry.n_beams:
        dropped = geometry.unrecorded_mask & np.any(np.isfinite(values), axis=0)
        if np.any(dropped):
            logger.info("%s: %d beam(s) of the file are not recorded in the geometry and are "
                        "ignored: %s", path, int(dropped.sum()), geometry.hkl[dropped][:5].tolist())
        values[:, geometry.unrecorded_mask] = np.nan
    n_missing = int(np.sum(np.isnan(values)))
    if n_missing:
        logger.info("%s: %d of %d (tilt, beam) values not measured (NaN)", path, n_missing, values.size)

    if geometry is not None:
        coords = pattern_coords(geometry)
    else:
        coords = {
            "beam": ("beam", np.arange(n_b)),
            "h": ("beam", beams[:, 0].copy()),
            "k": ("beam", beams[:, 1].copy()),
            "l": ("beam", beams[:, 2].copy()),
            "tilt": ("tilt", np.arange(n_t)),
            "tilt_x": ("tilt", tilts[:, 0].copy(), {"units": "mrad"}),
            "tilt_y": ("tilt", tilts[:, 1].copy(), {"units": "mrad"}),
        }
    ds = xr.Dataset(coords=coords)
    ds["intensity"] = (("tilt", "beam"), values, {"units": "1", "long_name": "beam intensity"})
    attrs = dict(header_attrs)
    if geometry is not None:
        attrs.update(geometry.to_attrs())
    attrs.update({"source_file": os.path.basename(path), "source_format": "csv"})
    if background_subtracted:
        attrs["background_subtracted"] = 1
    ds.attrs.update(attrs)
    record_source(ds, path)
    logger.info("read %d tilts × %d beams from %s", n_t, n_b, path)
    return normalise_counts(ds) if counts else ds
