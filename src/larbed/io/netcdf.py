"""netCDF files of patterns, U_g and results: exact round trips of complex values and attributes.

netCDF has no complex type, so every complex variable is written as two float64 variables
``<name>_real`` and ``<name>_imag`` marked with the attribute ``larbed_complex``; loading recombines
them bit for bit. Attributes that netCDF cannot hold are written as JSON text, and a JSON copy of
every attribute dictionary is kept so that loading gives back exactly what was saved. Every file
records its kind and the schema version (:mod:`larbed.schema`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping

import numpy as np
import xarray as xr

from .._checkpoint import atomic_write, file_sha256
from ..schema import KIND_ATTR, SCHEMA_ATTR, SCHEMA_VERSION, extract_ug, upgrade
from .attributes import (
    LarbedFileError,
    MissingFileError,
    check_path_exists,
    decode_attrs,
    encode_attrs,
)

__all__ = ["load_pattern", "load_ug", "normalise_counts", "read_netcdf", "record_source",
           "save_pattern", "save_ug", "source_provenance", "write_netcdf"]

logger = logging.getLogger(__name__)

_COMPLEX_ATTR = "larbed_complex"


def _encode(ds: xr.Dataset, kind: str) -> xr.Dataset:
    out = xr.Dataset(attrs=encode_attrs({**ds.attrs, KIND_ATTR: kind, SCHEMA_ATTR: SCHEMA_VERSION}))
    for name, variable in ds.variables.items():
        if name in ds.dims and name in ds.coords and np.iscomplexobj(variable.values):
            raise ValueError(f"dimension coordinate {name!r} is complex; netCDF cannot index by it")
    coords: dict[Hashable, xr.Variable] = {}
    for name, coord in ds.coords.items():
        if name in ds.dims:
            coords[name] = coord.variable.copy()
            coords[name].attrs = encode_attrs(coord.attrs)
    out = out.assign_coords(coords)
    groups: tuple[tuple[Mapping[Hashable, xr.DataArray], bool], ...] = (
        (ds.coords, True),
        (ds.data_vars, False),
    )
    for group, is_coord in groups:
        for name, var in group.items():
            if name in ds.dims:
                continue
            attrs = encode_attrs(var.attrs)
            values = var.values
            if np.iscomplexobj(values):
                for part, arr in (("real", values.real), ("imag", values.imag)):
                    v = xr.Variable(
                        var.dims,
                        np.ascontiguousarray(arr, dtype=np.float64),
                        {**attrs, _COMPLEX_ATTR: f"{part}:{name}"},
                    )
                    key = f"{name}_{part}"
                    if key in ds.variables:
                        raise ValueError(f"cannot split complex {name!r}: {key!r} already exists")
                    if is_coord:
                        out = out.assign_coords({key: v})
                    else:
                        out[key] = v
            else:
                v = xr.Variable(var.dims, values, attrs)
                if is_coord:
                    out = out.assign_coords({name: v})
                else:
                    out[name] = v
    for name in out.variables:
        out[name].encoding = {}
    return out


def _fill_free(ds: xr.Dataset) -> dict:
    """to_netcdf encoding that writes every value as is (no _FillValue masking)."""
    return {name: {"_FillValue": None} for name in ds.variables}


def _decode(ds: xr.Dataset) -> xr.Dataset:
    pairs: dict[str, dict[str, Hashable]] = {}
    for key, var in ds.variables.items():
        marker = var.attrs.get(_COMPLEX_ATTR)
        if marker is None:
            continue
        part, _, name = str(marker).partition(":")
        if part not in ("real", "imag") or not name:
            raise LarbedFileError(
                f"variable {key!r} has a malformed {_COMPLEX_ATTR!r} attribute {marker!r}"
            )
        pairs.setdefault(name, {})[part] = key
    out = xr.Dataset(attrs=decode_attrs(ds.attrs))
    coord_names = set(ds.coords)
    for key, var in ds.variables.items():
        if _COMPLEX_ATTR in var.attrs:
            continue
        v = xr.Variable(var.dims, var.values, decode_attrs(var.attrs))
        if key in coord_names:
            out = out.assign_coords({key: v})
        else:
            out[key] = v
    for name, parts in pairs.items():
        if set(parts) != {"real", "imag"}:
            raise LarbedFileError(
                f"complex variable {name!r} lacks its {({'real', 'imag'} - set(parts)).pop()} part"
            )
        re, im = ds[parts["real"]], ds[parts["imag"]]
        if re.dims != im.dims:
            raise LarbedFileError(f"real and imaginary parts of {name!r} have different dims")
        values = np.empty(re.shape, dtype=np.complex128)
        values.real = re.values
        values.imag = im.values
        attrs = decode_attrs({k: v for k, v in re.attrs.items() if k != _COMPLEX_ATTR})
        v = xr.Variable(re.dims, values, attrs)
        if parts["real"] in coord_names:
            out = out.assign_coords({name: v})
        else:
            out[name] = v
    return out


def _open(path) -> xr.Dataset:
    path = check_path_exists(path)
    try:
        with xr.open_dataset(
            path, engine="netcdf4", mask_and_scale=False, decode_times=False, decode_timedelta=False
        ) as raw:
            raw = raw.load()
    except Exception as exc:  # netCDF4/HDF5 raise OSError, RuntimeError, ValueError … on bad files
        raise LarbedFileError(
            f"could not read {path!r} as a netCDF file "
            f"(corrupt, truncated or another format): {exc}"
        ) from exc
    return upgrade(_decode(raw))


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike, kind: str) -> None:
    """Write any larbed Dataset to netCDF-4 exactly (complex variables split, attributes as JSON),
    atomically, recording ``kind`` and the schema version; :func:`read_netcdf` reads it back."""
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"write_netcdf needs an xarray.Dataset, got {type(ds).__name__}")
    _write(_encode(ds, kind), path)


def read_netcdf(path: str | os.PathLike, kind: str | None = None) -> xr.Dataset:
    """Read a file of :func:`write_netcdf` (values in memory, file closed); with ``kind``, a file of
    another kind is a :class:`LarbedFileError`."""
    ds = _open(path)
    found = ds.attrs.pop(KIND_ATTR, None)
    if kind is not None and found is not None and found != kind:
        raise LarbedFileError(f"{os.fspath(path)!r} holds a larbed {found!r} file, not {kind!r}")
    return ds


def _write(ds: xr.Dataset, path) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise MissingFileError(f"cannot write {path!r}: folder {folder!r} does not exist")
    # a unique temporary, renamed into place: never a half-written file under the final name
    atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4",
                                                encoding=_fill_free(ds)))
    logger.info("wrote %s", path)


def save_pattern(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Write a pattern Dataset to a netCDF-4 file; complex variables and attributes survive exactly.

    Parameters
    ----------
    ds : xarray.Dataset
        A pattern, e.g. from :func:`larbed.simulate` or :func:`read_csv` (needs ``intensity``).
    path : str or path-like
        Output file (``.nc``); written to a temporary name first, then renamed.

    Examples
    --------
    >>> import os, tempfile, larbed
    >>> x = larbed.Crystal.builtin("SrTiO3")
    >>> geo = larbed.Geometry(x, 120, (0, 0, 1), 5, 5, 10)
    >>> ds = larbed.simulate(geo, larbed.compute_ug(x, geo), 20.0)
    >>> path = os.path.join(tempfile.mkdtemp(), "p.nc")
    >>> save_pattern(ds, path)
    >>> back = load_pattern(path)
    >>> bool((back.intensity == ds.intensity).all()), back.ug.dtype
    (True, dtype('complex128'))
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"save_pattern needs an xarray.Dataset, got {type(ds).__name__}")
    if "intensity" not in ds:
        raise ValueError("a pattern Dataset needs an 'intensity' variable (tilt, beam)")
    _write(_encode(ds, "pattern"), path)


def load_pattern(path: str | os.PathLike, *, counts: bool = False) -> xr.Dataset:
    """Read a pattern written by :func:`save_pattern` (values loaded into memory, file closed).

    Parameters
    ----------
    path : str or path-like
    counts : bool
        The file's ``intensity`` holds detector counts, not fractions of the incident beam:
        normalise each tilt by its total and keep the totals as the per-tilt dose (see
        :func:`normalise_counts`).

    The file's path is kept in ``ds.encoding['source']`` (results record it with its SHA-256).

    Raises
    ------
    MissingFileError
        No file at ``path`` (a ``FileNotFoundError`` and a ``ValueError``).
    LarbedFileError
        A ``ValueError``: the file is not netCDF, is truncated, or holds no ``intensity``.
    """
    ds = _open(path)
    if "intensity" not in ds:
        kind = ds.attrs.get(KIND_ATTR, "unknown")
        raise LarbedFileError(
            f"{os.fspath(path)!r} holds no 'intensity' variable (file kind: {kind}); "
            "it is not a larbed pattern file"
        )
    ds.attrs.pop(KIND_ATTR, None)
    record_source(ds, path)
    return normalise_counts(ds) if counts else ds


def record_source(ds: xr.Dataset, path) -> None:
    """Remember the file a pattern came from in ``ds.encoding['source']`` (xarray's convention;
    not an attribute, so a loaded file equals the saved one)."""
    ds.encoding["source"] = os.path.abspath(os.fspath(path))


def source_provenance(ds) -> dict:
    """``{'source_path', 'source_sha256'}`` of the file a pattern was read from (empty if none)."""
    path = getattr(ds, "encoding", {}).get("source") if isinstance(ds, xr.Dataset) else None
    if not path or not os.path.isfile(path):
        return {}
    return {"source_path": path, "source_sha256": file_sha256(path)}


def normalise_counts(ds: xr.Dataset) -> xr.Dataset:
    """Counts → intensities: divide each tilt by its total, keep the totals as the per-tilt dose.

    Intensities in larbed are fractions of the incident beam. A pattern of detector counts N_tb
    becomes I_tb = N_tb / Σ_b N_tb, and D_t = Σ_b N_tb [electrons per tilt] is stored as the
    variable ``dose`` over ``tilt`` (Poisson weights then use σ²(I_tb) = I_tb / D_t). The counts are
    kept as ``counts``. The recorded beams then sum to 1 at every tilt: the electrons scattered
    outside them are not known from the counts.

    Raises
    ------
    ValueError
        Negative counts, or a tilt whose counts sum to zero.
    """
    if "intensity" not in ds:
        raise ValueError("a pattern Dataset needs an 'intensity' variable (tilt, beam)")
    da = ds["intensity"]
    if set(da.dims) != {"tilt", "beam"}:
        raise ValueError(f"counts must be over (tilt, beam), got dims {da.dims}")
    c = da.transpose("tilt", "beam").values.astype(float)
    if np.any(c < 0):
        raise ValueError(f"counts must be >= 0; {int(np.sum(c < 0))} are negative (min {np.nanmin(c):g})")
    total = np.nansum(c, axis=1)
    if np.any(total <= 0):
        bad = np.flatnonzero(total <= 0)
        raise ValueError(f"{bad.size} tilt(s) have no counts at all (e.g. tilt {int(bad[0])}); "
                         "remove them or check the file")
    out = ds.copy()
    out.encoding = dict(ds.encoding)
    out["counts"] = (("tilt", "beam"), c, {"units": "electrons", "long_name": "detector counts"})
    out["intensity"] = (("tilt", "beam"), c / total[:, None],
                        {"units": "1", "long_name": "beam intensity (counts / counts of the tilt)"})
    out["dose"] = ("tilt", total, {"units": "electrons per tilt",
                                   "long_name": "recorded electrons per tilt (sum of its counts)"})
    out.attrs["dose"] = "per tilt (variable 'dose', from the counts)"
    out.attrs["normalisation"] = "per tilt, from counts"
    return out


def save_ug(da: xr.DataArray, path: str | os.PathLike) -> None:
    """Write a U_g DataArray (over ``reflection``, complex [1/Å²]) to a netCDF-4 file.

    Examples
    --------
    >>> import os, tempfile, numpy as np, larbed
    >>> x = larbed.Crystal.builtin("ZnO")
    >>> geo = larbed.Geometry(x, 60, (0, 0, 1), 7, 1, 10)
    >>> ug = larbed.compute_ug(x, geo) * np.exp(0.3j)
    >>> path = os.path.join(tempfile.mkdtemp(), "ug.nc")
    >>> save_ug(ug, path)
    >>> bool(np.array_equal(load_ug(path).values, ug.values))
    True
    """
    if not isinstance(da, xr.DataArray):
        raise TypeError(f"save_ug needs an xarray.DataArray, got {type(da).__name__}")
    if da.dims != ("reflection",):
        raise ValueError(f"U_g must be 1-D over 'reflection', got dims {da.dims}")
    name = da.name if isinstance(da.name, str) and da.name else "ug"
    ds = xr.Dataset({"ug": da.variable}, coords={k: v.variable for k, v in da.coords.items()})
    ds.attrs["dataarray_name"] = name
    _write(_encode(ds, "ug"), path)


def load_ug(path: str | os.PathLike) -> xr.DataArray:
    """Read U_g from a file of :func:`save_ug` (or the ``ug`` of a :func:`save_pattern` file)."""
    ds = _open(path)
    kind = ds.attrs.get(KIND_ATTR)
    if kind == "pattern" or ("intensity" in ds and "ug" in ds):
        return extract_ug(ds)
    if "ug" not in ds:
        raise LarbedFileError(
            f"{os.fspath(path)!r} holds no 'ug' variable; it is not a larbed U_g file"
        )
    name = ds.attrs.get("dataarray_name", "ug")
    da = ds["ug"]
    if da.dims != ("reflection",):
        raise LarbedFileError(
            f"'ug' in {os.fspath(path)!r} has dims {da.dims}, expected ('reflection',)"
        )
    return da.rename(name)
