"""Reading and writing LARBED patterns and structure factors.

netCDF files (through xarray and netCDF4) hold simulated or measured patterns and U_g vectors.
netCDF has no complex type, so every complex variable is written as two float64 variables
``<name>_real`` and ``<name>_imag`` marked with the attribute ``larbed_complex``; loading recombines
them bit for bit. Attributes that netCDF cannot hold (``None``, booleans, dictionaries, empty or
nested lists) are written as JSON text, and a JSON copy of every attribute dictionary is kept so
that loading gives back exactly what was saved.

CSV tables of measured intensities (columns ``h, k, l, tilt_x_mrad, tilt_y_mrad, intensity``, one
row per beam and tilt) are read into the same Dataset layout as :func:`larbed.simulate`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Hashable, Mapping
from numbers import Number

import numpy as np
import xarray as xr

from ._checkpoint import atomic_write
from .geometry import Geometry
from .schema import KIND_ATTR, SCHEMA_ATTR, SCHEMA_VERSION, extract_ug, pattern_coords, upgrade

__all__ = [
    "LarbedFileError",
    "MissingFileError",
    "save_pattern",
    "load_pattern",
    "save_ug",
    "load_ug",
    "read_csv",
    "write_csv",
    "CSV_COLUMNS",
    "normalise_counts",
    "read_netcdf",
    "source_provenance",
    "write_netcdf",
]

logger = logging.getLogger(__name__)

#: Columns a CSV table of measured intensities must have (any order, extra columns ignored).
CSV_COLUMNS: tuple[str, ...] = ("h", "k", "l", "tilt_x_mrad", "tilt_y_mrad", "intensity")

#: A CSV tilt matches a geometry tilt when it lies within this fraction of the tilt-grid spacing
#: (measured tilt angles are usually written with a few decimals).
TILT_MATCH_FRACTION = 0.05
#: Distinct tilts closer than this [mrad] are one tilt when tilts are inferred from a table.
TILT_SAME_MRAD = 1e-9

_COMPLEX_ATTR = "larbed_complex"
_ATTRS_JSON = "larbed_attrs_json"
_KIND_ATTR = KIND_ATTR
_JSON_PREFIX = "json:"
_CSV_ATTRS_PREFIX = "# larbed-attrs: "


class LarbedFileError(ValueError):
    """A file is corrupt, of the wrong format, or does not hold what was asked for."""


class MissingFileError(FileNotFoundError, LarbedFileError):
    """The file does not exist (both a :class:`FileNotFoundError` and a :class:`ValueError`)."""


# ----------------------------------------------------------------------------- attributes
def _to_jsonable(value):
    """Plain-Python copy of an attribute value (numpy scalars/arrays → numbers/lists)."""
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return _to_jsonable(value.item())
        if value.dtype.kind not in "biufcU":
            raise TypeError(f"attribute array of dtype {value.dtype} cannot be saved")
        return {"__ndarray__": _to_jsonable(value.tolist()), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return _to_jsonable(value.item())
    if isinstance(value, complex):
        return {"__complex__": [value.real, value.imag]}
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"attribute value {value!r} of type {type(value).__name__} cannot be saved; "
        "use numbers, strings, lists of them, dicts or None"
    )


def _from_jsonable(value):
    if isinstance(value, dict):
        if set(value) == {"__complex__"}:
            re, im = value["__complex__"]
            return complex(re, im)
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        if set(value) == {"__ndarray__", "dtype"}:
            return np.array(_from_jsonable(value["__ndarray__"]), dtype=np.dtype(value["dtype"]))
        return {k: _from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    return value


def _native_attr(value):
    """netCDF-safe version of one attribute value (for other tools reading the file)."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return _JSON_PREFIX + json.dumps(_to_jsonable(value))
    if isinstance(value, str):
        return value
    if isinstance(value, (Number, np.number)) and not isinstance(
        value, (complex, np.complexfloating)
    ):
        return value
    arr = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    if arr is not None and arr.ndim == 1 and arr.size > 0 and arr.dtype.kind in "iuf":
        return arr
    if arr is not None and arr.ndim == 1 and arr.size > 0 and arr.dtype.kind == "U":
        return [str(v) for v in arr]
    return _JSON_PREFIX + json.dumps(_to_jsonable(value))


def _encode_attrs(attrs: Mapping) -> dict:
    exact = {str(k): _to_jsonable(v) for k, v in attrs.items()}
    out = {str(k): _native_attr(v) for k, v in attrs.items()}
    out[_ATTRS_JSON] = json.dumps(exact)
    return out


def _decode_attrs(attrs: Mapping) -> dict:
    attrs = dict(attrs)
    text = attrs.pop(_ATTRS_JSON, None)
    if text is not None:
        try:
            return _from_jsonable(json.loads(text))
        except (TypeError, ValueError) as exc:
            raise LarbedFileError(f"attribute {_ATTRS_JSON!r} is not valid JSON: {exc}") from exc
    out = {}
    for key, value in attrs.items():  # a file written by another tool: decode what we can
        if isinstance(value, str) and value.startswith(_JSON_PREFIX):
            try:
                value = _from_jsonable(json.loads(value[len(_JSON_PREFIX) :]))
            except ValueError:
                pass
        out[key] = value
    return out


# ----------------------------------------------------------------------------- netCDF
def _encode(ds: xr.Dataset, kind: str) -> xr.Dataset:
    out = xr.Dataset(attrs=_encode_attrs({**ds.attrs, _KIND_ATTR: kind, SCHEMA_ATTR: SCHEMA_VERSION}))
    for name, variable in ds.variables.items():
        if name in ds.dims and name in ds.coords and np.iscomplexobj(variable.values):
            raise ValueError(f"dimension coordinate {name!r} is complex; netCDF cannot index by it")
    coords: dict[Hashable, xr.Variable] = {}
    for name, coord in ds.coords.items():
        if name in ds.dims:
            coords[name] = coord.variable.copy()
            coords[name].attrs = _encode_attrs(coord.attrs)
    out = out.assign_coords(coords)
    groups: tuple[tuple[Mapping[Hashable, xr.DataArray], bool], ...] = (
        (ds.coords, True),
        (ds.data_vars, False),
    )
    for group, is_coord in groups:
        for name, var in group.items():
            if name in ds.dims:
                continue
            attrs = _encode_attrs(var.attrs)
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
    out = xr.Dataset(attrs=_decode_attrs(ds.attrs))
    coord_names = set(ds.coords)
    for key, var in ds.variables.items():
        if _COMPLEX_ATTR in var.attrs:
            continue
        v = xr.Variable(var.dims, var.values, _decode_attrs(var.attrs))
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
        attrs = _decode_attrs({k: v for k, v in re.attrs.items() if k != _COMPLEX_ATTR})
        v = xr.Variable(re.dims, values, attrs)
        if parts["real"] in coord_names:
            out = out.assign_coords({name: v})
        else:
            out[name] = v
    return out


def _check_path_exists(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise LarbedFileError(f"{path!r} is a directory, not a netCDF or CSV file")
    return path


def _open(path) -> xr.Dataset:
    path = _check_path_exists(path)
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
    found = ds.attrs.pop(_KIND_ATTR, None)
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
        kind = ds.attrs.get(_KIND_ATTR, "unknown")
        raise LarbedFileError(
            f"{os.fspath(path)!r} holds no 'intensity' variable (file kind: {kind}); "
            "it is not a larbed pattern file"
        )
    ds.attrs.pop(_KIND_ATTR, None)
    _record_source(ds, path)
    return normalise_counts(ds) if counts else ds


def _record_source(ds: xr.Dataset, path) -> None:
    """Remember the file a pattern came from in ``ds.encoding['source']`` (xarray's convention;
    not an attribute, so a loaded file equals the saved one)."""
    ds.encoding["source"] = os.path.abspath(os.fspath(path))


def source_provenance(ds) -> dict:
    """``{'source_path', 'source_sha256'}`` of the file a pattern was read from (empty if none)."""
    from ._checkpoint import file_sha256

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
    kind = ds.attrs.get(_KIND_ATTR)
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


# ----------------------------------------------------------------------------- CSV
def write_csv(ds: xr.Dataset, path: str | os.PathLike, variable: str = "intensity") -> None:
    """Write a (tilt, beam) pattern as a CSV table, one row per tilt and beam (tilt-major).

    Columns: ``h, k, l, tilt_x_mrad, tilt_y_mrad, intensity`` (floats with 17 significant digits,
    so :func:`read_csv` gives the values back exactly). A first comment line ``# larbed-attrs:``
    holds the Dataset attributes as JSON.

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
    lines = [_CSV_ATTRS_PREFIX + json.dumps(_to_jsonable(header)), ",".join(CSV_COLUMNS)]
    for m in range(vals.shape[0]):
        tilt = f"{float(tx[m]):.17g},{float(ty[m]):.17g}"
        for n in range(vals.shape[1]):
            lines.append(f"{hkl[n, 0]},{hkl[n, 1]},{hkl[n, 2]},{tilt},{float(vals[m, n]):.17g}")
    path = os.fspath(path)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")

    atomic_write(path, write)
    logger.info("wrote %d rows to %s", vals.size, path)


def _read_table(path: str):
    import pandas as pd

    header_attrs: dict = {}
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        if first.startswith(_CSV_ATTRS_PREFIX):
            header_attrs = _from_jsonable(json.loads(first[len(_CSV_ATTRS_PREFIX) :]))
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
            "intensities must be finite"
        )
    if np.any(inten < 0):
        bad = int(np.flatnonzero(inten < 0)[0])
        raise LarbedFileError(
            f"{path!r}: negative intensity {inten[bad]} in data row {bad + 1}; "
            "intensities must be >= 0"
        )
    return hkl.astype(int), tilt, inten, header_attrs


def _first_appearance(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows in order of first appearance, and each row's index into them."""
    uniq, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[np.ravel(inverse)]


def read_csv(path: str | os.PathLike, geometry: Geometry | None = None, *,
             counts: bool = False) -> xr.Dataset:
    """Read measured intensities from a CSV table into a pattern Dataset.

    Parameters
    ----------
    path : str or path-like
        CSV file with a header row naming (at least) the columns ``h, k, l, tilt_x_mrad,
        tilt_y_mrad, intensity``; one row per (tilt, beam); lines starting with ``#`` are comments.
        Tilt angles are in the geometry's in-plane frame [mrad].
    geometry : Geometry, optional
        When given, the table must hold exactly the geometry's beams and tilts (a tilt matches when
        within 5 % of the tilt-grid spacing); the result is ordered like the geometry and carries
        its coordinates and attributes, exactly like :func:`larbed.simulate`. Otherwise the geometry
        recorded in a ``# larbed-attrs:`` header (files of :func:`write_csv`) is used, and failing
        that beams and tilts are taken from the table in order of first appearance (coordinates
        h, k, l, tilt_x, tilt_y only; no geometry attributes).
    counts : bool
        The ``intensity`` column holds detector counts: normalise each tilt by its total and keep
        the totals as the per-tilt dose (:func:`normalise_counts`). Without it the values must be
        fractions of the incident beam (per-tilt sums ≤ 1); raw counts are then rejected when
        larbed uses the pattern.

    The file's path is kept in ``ds.encoding['source']`` (results record it with its SHA-256).

    Returns
    -------
    xarray.Dataset
        ``intensity`` over (``tilt``, ``beam``).

    Raises
    ------
    LarbedFileError
        (a ``ValueError``) missing columns, non-numeric values, NaN or negative intensities,
        duplicate (tilt, beam) rows, an incomplete table, or beams/tilts that do not match
        ``geometry``.
    """
    path = _check_path_exists(path)
    if geometry is not None and not isinstance(geometry, Geometry):
        raise TypeError(
            f"geometry must be a larbed.Geometry or None, got {type(geometry).__name__}"
        )
    hkl, tilt, inten, header_attrs = _read_table(path)
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
            extra = sorted({tuple(h) for h, i in zip(hkl.tolist(), beam_idx, strict=True) if i < 0})
            raise LarbedFileError(
                f"{path!r}: beam(s) {extra[:5]} are not among the geometry's "
                f"{geometry.n_beams} beams"
            )
        spacing = geometry.tilt_range_mrad / geometry.tilt_radius if geometry.tilt_radius else 1.0
        tol = TILT_MATCH_FRACTION * spacing
        grid = (tilt - np.asarray(geometry.tilt_center_mrad)[None, :]) / spacing
        ij = np.round(grid).astype(np.int64)
        grid_index = {tuple(t): i for i, t in enumerate(geometry.tilt_ij.tolist())}
        tilt_idx = np.array([grid_index.get(tuple(t), -1) for t in ij.tolist()])
        far = (tilt_idx < 0) | (np.hypot(*(grid - ij).T) * spacing > tol)
        if np.any(far):
            row = int(np.flatnonzero(far)[0])
            raise LarbedFileError(
                f"{path!r}: tilt ({tilt[row, 0]:g}, {tilt[row, 1]:g}) mrad in data row {row + 1} "
                "matches no tilt "
                f"of the geometry (grid spacing {spacing:g} mrad, tolerance {tol:g} mrad)"
            )
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
    if np.any(per_cell == 0):
        cell = int(np.flatnonzero(per_cell == 0)[0])
        raise LarbedFileError(
            f"{path!r}: incomplete table, {int(np.sum(per_cell == 0))} (tilt, beam) rows missing, "
            f"e.g. beam {beams[cell % n_b].tolist()} at tilt "
            f"({tilts[cell // n_b][0]:g}, {tilts[cell // n_b][1]:g}) mrad"
        )
    flat_values = np.empty(n_t * n_b)
    flat_values[flat] = inten
    values = flat_values.reshape(n_t, n_b)

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
    ds.attrs.update(attrs)
    _record_source(ds, path)
    logger.info("read %d tilts × %d beams from %s", n_t, n_b, path)
    return normalise_counts(ds) if counts else ds
