"""The Dataset layout of larbed: coordinates, U_g riding along, input checks, file schema versions.

A **pattern** is an ``xr.Dataset`` with ``intensity`` over (``tilt``, ``beam``) (or with a leading
``thickness``), beam coordinates h, k, l, gx, gy [1/Å], tilt coordinates tilt_x, tilt_y [mrad] and
tilt_i, tilt_j, and the geometry in its attributes (:meth:`larbed.Geometry.to_attrs`). U_g ride
along as a ``reflection`` variable whose coordinates carry the prefix ``reflection_``
(:func:`attach_ug`, :func:`extract_ug`). A **U_g vector** is a DataArray over ``reflection``
(:func:`labelled_ug`).

Every file larbed writes records :data:`SCHEMA_VERSION` in ``attrs['larbed_schema_version']``;
:func:`upgrade` brings files of older versions (version 1: no such attribute) to the current layout
when they are read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import xarray as xr

from .geometry import Geometry
from .metrics import check_dose

__all__ = [
    "INTENSITY_ATTRS",
    "SCHEMA_VERSION",
    "UG_ATTRS",
    "attach_ug",
    "check_diffracted",
    "check_normalisation",
    "background_subtracted",
    "check_measured",
    "check_pattern",
    "check_thickness",
    "check_ug",
    "complex_from_parts",
    "extract_ug",
    "geometry_mismatch",
    "labelled_ug",
    "pattern_coords",
    "pattern_dataset",
    "pattern_dose",
    "stamp",
    "ug_coords",
    "upgrade",
]

logger = logging.getLogger(__name__)

#: Version of the layout of the files larbed writes (1: before versions were recorded).
SCHEMA_VERSION = 2
SCHEMA_ATTR = "larbed_schema_version"
KIND_ATTR = "larbed_file_kind"
#: Attributes of an intensity variable.
INTENSITY_ATTRS = {"units": "1", "long_name": "beam intensity (fraction of incident electrons)"}


def stamp(ds: xr.Dataset, kind: str) -> xr.Dataset:
    """A copy of ``ds`` whose attributes record the schema version and the kind of file."""
    out = ds.copy()
    out.attrs.update({SCHEMA_ATTR: SCHEMA_VERSION, KIND_ATTR: kind})
    return out


def upgrade(ds: xr.Dataset) -> xr.Dataset:
    """Bring a Dataset read from a file to the current layout; the version markers are removed.

    Version 1 (no version attribute) differs only in recording neither; a file of a newer version
    than this larbed knows is read as is, with a warning in the log.
    """
    version = int(ds.attrs.get(SCHEMA_ATTR, 1))
    if version > SCHEMA_VERSION:
        logger.warning("file of schema version %d, newer than this larbed's %d: reading it as is",
                       version, SCHEMA_VERSION)
    ds.attrs.pop(SCHEMA_ATTR, None)
    return ds


def labelled_ug(geometry: Geometry, values, attrs: dict | None = None) -> xr.DataArray:
    """U_g values (n_reflections,) [1/Å²] as the DataArray larbed uses: over ``reflection`` with
    h, k, l, gx, gy coordinates, units and ``attrs``."""
    xy = geometry.reflection_xy
    hkl = geometry.reflection_hkl
    da = xr.DataArray(
        np.asarray(values, dtype=complex),
        dims=("reflection",),
        coords={
            "reflection": np.arange(geometry.n_reflections),
            "h": ("reflection", hkl[:, 0].copy()),
            "k": ("reflection", hkl[:, 1].copy()),
            "l": ("reflection", hkl[:, 2].copy()),
            "gx": ("reflection", xy[:, 0].copy(), {"units": "1/Å"}),
            "gy": ("reflection", xy[:, 1].copy(), {"units": "1/Å"}),
        },
        name="ug",
        attrs={"units": "1/Å^2", "long_name": "structure factor U_g (one per Friedel pair)"},
    )
    da.attrs.update(attrs or {})
    return da


def pattern_coords(geometry: Geometry) -> dict:
    """Beam and tilt coordinates of a pattern Dataset."""
    return {
        "beam": ("beam", np.arange(geometry.n_beams)),
        "h": ("beam", geometry.hkl[:, 0].copy()),
        "k": ("beam", geometry.hkl[:, 1].copy()),
        "l": ("beam", geometry.hkl[:, 2].copy()),
        "gx": ("beam", geometry.g_xy[:, 0].copy(), {"units": "1/Å"}),
        "gy": ("beam", geometry.g_xy[:, 1].copy(), {"units": "1/Å"}),
        "tilt": ("tilt", np.arange(geometry.n_tilts)),
        "tilt_x": ("tilt", geometry.tilt_mrad[:, 0].copy(), {"units": "mrad"}),
        "tilt_y": ("tilt", geometry.tilt_mrad[:, 1].copy(), {"units": "mrad"}),
        "tilt_i": ("tilt", geometry.tilt_ij[:, 0].copy()),
        "tilt_j": ("tilt", geometry.tilt_ij[:, 1].copy()),
    }


REFLECTION_COORDS = {
    "h": "reflection_h",
    "k": "reflection_k",
    "l": "reflection_l",
    "gx": "reflection_gx",
    "gy": "reflection_gy",
}


UG_ATTRS = {"units": "1/Å^2", "long_name": "structure factor U_g (one per Friedel pair)"}


def ug_coords(ug: xr.DataArray) -> dict:
    coords = {"reflection": ("reflection", ug.reflection.values)}
    for old, new in REFLECTION_COORDS.items():
        if old in ug.coords:
            c = ug.coords[old]
            coords[new] = ("reflection", c.values, dict(c.attrs))
    return coords


def attach_ug(ds: xr.Dataset, ug: xr.DataArray, name: str = "ug") -> xr.Dataset:
    """Store a U_g DataArray in a pattern Dataset (reflection coordinates prefixed ``reflection_``)."""
    ds = ds.assign_coords(ug_coords(ug))
    ds[name] = ("reflection", np.asarray(ug.values, dtype=complex), dict(UG_ATTRS))
    return ds


def complex_from_parts(real, imag) -> np.ndarray:
    """real + i·imag without arithmetic, so that an infinite part (an undetermined standard error)
    leaves the other part as it is (``x + 1j * inf`` gives a NaN real part)."""
    out = np.array(real, dtype=complex)
    out.imag = imag
    return out


def extract_ug(ds: xr.Dataset, name: str = "ug") -> xr.DataArray:
    """Inverse of :func:`attach_ug`: the U_g DataArray with coordinates h, k, l, gx, gy."""
    if name not in ds:
        raise ValueError(f"dataset has no variable {name!r}")
    da = ds[name]
    keep = {v: k for k, v in REFLECTION_COORDS.items() if v in da.coords}
    out = xr.DataArray(
        np.asarray(da.values, dtype=complex),
        dims=("reflection",),
        coords={
            "reflection": da.reflection.values,
            **{k: ("reflection", ds[v].values) for v, k in keep.items()},
        },
        name="ug",
        attrs={"units": "1/Å^2", "u0": float(ds.attrs.get("u0", 0.0))},
    )
    return out


def pattern_dataset(geometry: Geometry, intensity: np.ndarray, *, thickness_nm=None,
                    ug: xr.DataArray | None = None, attrs: dict | None = None) -> xr.Dataset:
    """A pattern Dataset: ``intensity`` (tilt, beam) — or (thickness, tilt, beam) when
    ``thickness_nm`` is a sequence — with the geometry's coordinates and attributes."""
    coords = pattern_coords(geometry)
    if thickness_nm is None:
        dims = ("tilt", "beam")
    else:
        dims = ("thickness", "tilt", "beam")
        coords["thickness"] = ("thickness", np.asarray(thickness_nm, float), {"units": "nm"})
    ds = xr.Dataset({"intensity": (dims, np.asarray(intensity), dict(INTENSITY_ATTRS))}, coords=coords)
    if ug is not None:
        ds = attach_ug(ds, ug)
    ds.attrs.update(geometry.to_attrs())
    ds.attrs.update(attrs or {})
    return ds


def check_thickness(thickness_nm, name: str = "thickness_nm") -> np.ndarray:
    """Validate thickness values [nm]; return a 1-D float array."""
    arr = np.asarray(thickness_nm)
    if arr.dtype.kind not in "fiu":
        raise TypeError(
            f"{name} must be a real number or 1-D array of numbers [nm], got {arr.dtype}"
        )
    arr = np.atleast_1d(arr.astype(float))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"{name} must be a number or a non-empty 1-D array [nm], got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr[~np.isfinite(arr)][:5]}")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0 nm, got {arr[arr < 0][:5]}")
    return arr


def check_ug(geometry: Geometry, ug) -> xr.DataArray:
    """Turn U_g input into a labelled DataArray matching ``geometry``; raise on mismatch."""
    if isinstance(ug, xr.DataArray):
        if ug.dims != ("reflection",) or ug.sizes["reflection"] != geometry.n_reflections:
            raise ValueError(
                f"U_g has dims {dict(ug.sizes)}; this geometry needs ({geometry.n_reflections},) "
                "values over 'reflection'"
            )
        if "h" in ug.coords:
            hkl = np.stack([ug.h.values, ug.k.values, ug.l.values], axis=1)
            if not np.array_equal(hkl, geometry.reflection_hkl):
                raise ValueError(
                    "U_g reflections (h, k, l) do not match the geometry's reflections"
                )
        vals = np.asarray(ug.values)
        if vals.dtype.kind not in "fciu":
            raise TypeError(f"U_g must be numeric, got dtype {vals.dtype}")
        if not np.all(np.isfinite(vals)):
            raise ValueError("U_g contains NaN or infinite values")
        return ug.astype(complex)
    from .structure_factors import input_ug

    if isinstance(ug, Mapping):
        return input_ug(geometry, ug)
    return input_ug(geometry, np.asarray(ug))


def geometry_mismatch(attrs: dict, geometry: Geometry) -> list[str]:
    problems = []
    for key, want in (("n_beams", geometry.n_beams), ("n_tilts", geometry.n_tilts),
                      ("voltage_kv", geometry.voltage_kv),
                      ("tilt_range_mrad", geometry.tilt_range_mrad)):
        if key in attrs:
            try:
                have = float(attrs[key])
            except (TypeError, ValueError):
                continue
            if not np.isclose(have, want, rtol=1e-9):
                problems.append(f"{key}={have:g} (geometry: {want:g})")
    if "zone_axis" in attrs:
        za = tuple(int(v) for v in np.atleast_1d(attrs["zone_axis"]))
        if za != tuple(geometry.zone_axis):
            problems.append(f"zone_axis={list(za)} (geometry: {list(geometry.zone_axis)})")
    return problems


#: Per-tilt sums of normalised intensities may exceed 1 by noise: by at most this many standard
#: deviations √(1/D) of the sum when the dose D is known …
SUM_NOISE_SIGMAS = 6.0
#: … and, with no dose known, the median per-tilt sum by at most this and the largest by this.
SUM_MEDIAN_SLACK = 0.05
SUM_MAX_SLACK = 0.5
#: A pattern whose diffracted beams (all but 000) hold less than this fraction of the intensity
#: determines nothing (thickness 0, or no crystal in the beam).
MIN_DIFFRACTED_FRACTION = 1e-9

_NORMALISE_HINT = (
    "intensities must be fractions of the incident beam (per-tilt sums ≤ 1; absorption, missing "
    "beams or background subtraction make them smaller). Give counts=True (read_csv, load_pattern; "
    "CLI --counts) to normalise each tilt by its total and keep the counts as the dose, or divide "
    "each tilt by its incident dose yourself"
)


def check_normalisation(arr: np.ndarray, dose=None, what: str = "pattern") -> None:
    """Raise ValueError when intensities look like raw counts or are not normalised.

    Integer-valued data above 1, or per-tilt sums clearly above 1 (beyond the Poisson noise of the
    sum when ``dose`` is known, else a median above 1.05 or a tilt above 1.5), are rejected.
    """
    finite = arr[np.isfinite(arr)]
    if finite.size and finite.max() > 1 and np.all(finite == np.round(finite)):
        raise ValueError(f"{what} holds integer values up to {finite.max():.0f}: these look like raw "
                         f"counts; {_NORMALISE_HINT}")
    sums = np.nansum(arr, axis=1)
    if dose is not None:
        limit = 1.0 + SUM_NOISE_SIGMAS * np.sqrt(1.0 / np.asarray(dose, float)) + 1e-9
        bad = sums > limit
        if np.any(bad):
            i = int(np.argmax(sums - limit))
            raise ValueError(f"{what}: the intensities of tilt {i} sum to {sums[i]:.6g}, beyond 1 plus "
                             f"the Poisson noise of the dose; {_NORMALISE_HINT}")
        return
    med, top = float(np.median(sums)), float(np.max(sums))
    if med > 1.0 + SUM_MEDIAN_SLACK or top > 1.0 + SUM_MAX_SLACK:
        raise ValueError(f"{what}: per-tilt sums of the intensities are up to {top:.6g} (median "
                         f"{med:.6g}); {_NORMALISE_HINT}")


def check_diffracted(arr: np.ndarray) -> None:
    """Raise ValueError when the diffracted beams carry (next to) no intensity."""
    total = float(np.nansum(arr))
    diffracted = float(np.nansum(arr[:, 1:]))
    if diffracted <= MIN_DIFFRACTED_FRACTION * total:
        raise ValueError(
            f"the pattern has no diffracted intensity (beams other than 000 hold "
            f"{diffracted / max(total, 1e-300):.3g} of it): a crystal of thickness 0, or no crystal, "
            "determines neither U_g nor the thickness; if the crystal is there, the beams may all "
            "be forbidden reflections (U_g = 0, e.g. the mixed-parity ones of an F-centred cell): "
            "simulate more beams (n_beams)"
        )


def check_pattern(pattern, geometry: Geometry, dose=None, *, scaled: bool = False) -> np.ndarray:
    """Intensities (n_tilts, n_beams) of ``pattern`` after checking them against ``geometry``.

    ``pattern`` is a Dataset with ``intensity``, a DataArray over (``tilt``, ``beam``) or an array of
    shape (n_tilts, n_beams). Raises ValueError when shape, beams (h, k, l), tilts or recorded
    geometry attributes disagree with ``geometry``, when intensities are NaN, infinite or < 0, or
    when they are not fractions of the incident beam (:func:`check_normalisation`; ``dose`` [electrons
    per tilt], default the pattern's, sets the noise allowed on per-tilt sums). ``scaled``: a
    measurement model with a scale or a background explains the per-tilt sums; only raw integer
    counts are rejected then.
    """
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a larbed.Geometry, got {type(geometry).__name__}")
    attrs: dict = {}
    source = pattern
    if isinstance(pattern, xr.Dataset):
        if "intensity" not in pattern:
            raise ValueError("pattern Dataset has no 'intensity' variable")
        attrs = dict(pattern.attrs)
        pattern = pattern["intensity"]
    if isinstance(pattern, xr.DataArray):
        attrs = {**attrs, **pattern.attrs}
        if set(pattern.dims) != {"tilt", "beam"}:
            raise ValueError(
                f"pattern must have dims ('tilt', 'beam'), got {pattern.dims}; select one thickness"
            )
        da = pattern.transpose("tilt", "beam")
        if all(c in da.coords for c in ("h", "k", "l")) and da.sizes["beam"] == geometry.n_beams:
            hkl = np.stack([da.h.values, da.k.values, da.l.values], axis=1)
            if not np.array_equal(hkl, geometry.hkl):
                raise ValueError("pattern beams (h, k, l) differ from the geometry's beams (in "
                                 "set or order): read the file with read_csv(path, geometry)")
        if ("tilt_x" in da.coords and "tilt_y" in da.coords
                and da.sizes["tilt"] == geometry.n_tilts):
            tilts = np.stack([da.tilt_x.values, da.tilt_y.values], axis=1)
            if not np.allclose(tilts, geometry.tilt_mrad, atol=1e-6):
                raise ValueError("pattern tilts (tilt_x, tilt_y) differ from the geometry's tilts")
        arr = np.asarray(da.values)
    else:
        arr = np.asarray(pattern)
    problems = geometry_mismatch(attrs, geometry)
    if problems:
        raise ValueError("pattern and geometry disagree: " + ", ".join(problems))
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"pattern intensities must be real numbers, got dtype {arr.dtype}")
    want = (geometry.n_tilts, geometry.n_beams)
    if arr.shape != want:
        raise ValueError(f"pattern has shape {arr.shape}; the geometry needs (n_tilts, n_beams) = {want}")
    arr = arr.astype(float)
    if np.any(np.isinf(arr)):
        raise ValueError(f"pattern has {int(np.sum(np.isinf(arr)))} infinite intensities "
                         "(NaN marks a value that was not measured)")
    arr[:, geometry.unrecorded_mask] = np.nan  # simulated, not recorded: counts nowhere
    check_measured(arr, geometry)
    if np.nanmin(arr) < 0 and not background_subtracted(source):
        raise ValueError(
            f"pattern has {int(np.sum(arr < 0))} negative intensities (min {np.nanmin(arr):.3g}); "
            "intensities must be >= 0 unless the data are background-subtracted "
            "(read_csv(..., background_subtracted=True) or attrs['background_subtracted'] = 1)"
        )
    if np.nansum(arr) <= 0:
        raise ValueError("pattern intensities sum to zero")
    if scaled:
        finite = arr[np.isfinite(arr)]
        if finite.size and finite.max() > 1 and np.all(finite == np.round(finite)):
            raise ValueError(f"pattern holds integer values up to {finite.max():.0f}: these look "
                             f"like raw counts; {_NORMALISE_HINT}")
    else:
        check_normalisation(arr, pattern_dose(source, dose, geometry.n_tilts))
    return arr


def background_subtracted(pattern) -> bool:
    """True when a pattern declares that a background was subtracted (negative values allowed)."""
    attrs = getattr(pattern, "attrs", {})
    return bool(int(attrs.get("background_subtracted", 0) or 0))


def check_measured(arr: np.ndarray, geometry: Geometry) -> None:
    """Raise ValueError when a recorded beam or a tilt has no measured (finite) value at all."""
    measured = np.isfinite(arr)
    rec = geometry.recorded_beams
    empty_beams = rec[~np.any(measured[:, rec], axis=0)]
    if empty_beams.size:
        raise ValueError(f"recorded beam(s) {geometry.hkl[empty_beams][:5].tolist()} have no measured "
                         "value at any tilt: leave them out of the geometry's recorded beams "
                         "(Geometry(..., recorded=...), or Geometry.from_csv)")
    empty_tilts = np.flatnonzero(~np.any(measured[:, rec], axis=1))
    if empty_tilts.size:
        t = geometry.tilt_mrad[empty_tilts[0]]
        raise ValueError(f"{empty_tilts.size} tilt(s) have no measured value, e.g. tilt "
                         f"{int(empty_tilts[0])} at ({t[0]:g}, {t[1]:g}) mrad: leave them out of the "
                         "geometry (tilts_mrad, or Geometry.from_csv)")


def pattern_dose(pattern, dose=None, n_tilts: int | None = None):
    """Electrons per tilt: ``dose`` if given, else the pattern's ``dose`` variable (one value per
    tilt, as :func:`larbed.read_csv` with ``counts=True`` records it) or numeric
    ``attrs['dose']``; None when no dose is known. A float or an (n_tilts,) array."""
    if dose is None and isinstance(pattern, xr.Dataset) and "dose" in pattern.data_vars:
        dose = pattern["dose"].values
    if dose is None and isinstance(pattern, (xr.Dataset, xr.DataArray)):
        dose = pattern.attrs.get("dose")
        if isinstance(dose, str):
            dose = None
    if dose is None:
        return None
    return check_dose(dose, n_tilts)
