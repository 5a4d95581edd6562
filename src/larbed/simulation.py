"""Forward model: Bloch-wave LARBED patterns (SPEC §2)."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr
from threadpoolctl import threadpool_limits

from ._kernels import bloch
from .geometry import Geometry
from .structure_factors import input_ug, ug_matrix

__all__ = ["simulate", "prepare_matrices", "check_thickness", "check_ug", "is_real_ug"]

logger = logging.getLogger(__name__)

#: |Im U_g| below this fraction of max |U_g| counts as real (round-off of exp(-2πi g·r)).
REAL_RTOL = 1e-12
_TILT_CHUNKS = 16


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
    if isinstance(ug, Mapping):
        return input_ug(geometry, ug)
    return input_ug(geometry, np.asarray(ug))


def is_real_ug(values: np.ndarray) -> bool:
    """True when every U_g is real to round-off (SPEC §2: real symmetric path)."""
    values = np.asarray(values)
    scale = max(float(np.max(np.abs(values), initial=0.0)), 1e-300)
    return bool(np.max(np.abs(values.imag), initial=0.0) <= REAL_RTOL * scale)


def prepare_matrices(
    geometry: Geometry, ug_values: np.ndarray, absorption: float | None = None, u0: float = 0.0
):
    """Kernel inputs scaled by 1/(2K): (offdiag, diag, path) with path in {'real', 'hermitian', 'general'}."""
    inv2k = 1.0 / (2.0 * geometry.k0)
    mat = ug_matrix(geometry, ug_values) * inv2k
    diag = geometry.excitation_diagonal * inv2k
    if absorption is not None and absorption != 0.0:
        off = mat * (1.0 + 1j * absorption)
        dg = diag.astype(complex) + 1j * absorption * u0 * inv2k
        return np.ascontiguousarray(off), np.ascontiguousarray(dg), "general"
    if is_real_ug(ug_values):
        return np.ascontiguousarray(mat.real), np.ascontiguousarray(diag), "real"
    return np.ascontiguousarray(mat), np.ascontiguousarray(diag.astype(float)), "hermitian"


def _run_kernel(path, offdiag, diag, thickness_a, progress: bool) -> np.ndarray:
    n_tilts, n = diag.shape
    out = np.empty((len(thickness_a), n_tilts, n))
    kernel = {
        "real": bloch.intensities_real,
        "hermitian": bloch.intensities_hermitian,
        "general": bloch.intensities_general,
    }[path]
    with threadpool_limits(limits=1, user_api="blas"):
        if not progress:
            kernel(offdiag, diag, thickness_a, out)
        else:
            from tqdm.auto import tqdm

            bounds = np.linspace(0, n_tilts, min(_TILT_CHUNKS, n_tilts) + 1).astype(int)
            with tqdm(total=n_tilts, desc="simulate", unit="tilt") as bar:
                for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                    part = np.empty((len(thickness_a), hi - lo, n))
                    kernel(offdiag, np.ascontiguousarray(diag[lo:hi]), thickness_a, part)
                    out[:, lo:hi] = part
                    bar.update(hi - lo)
    return out


def simulate(
    geometry: Geometry,
    ug,
    thickness_nm: float | Sequence[float] | np.ndarray,
    *,
    absorption: float | None = None,
    dose: float | None = None,
    seed: int | np.random.Generator | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Simulate a LARBED pattern with the Bloch-wave method.

    Parameters
    ----------
    geometry : Geometry
        Beams, tilts and voltage.
    ug : xarray.DataArray, mapping or array_like
        Structure factors [1/Å²], one per Friedel pair (see :func:`larbed.input_ug`).
    thickness_nm : float or sequence of float
        Crystal thickness [nm], ≥ 0. A sequence adds a ``thickness`` dimension; all thicknesses
        share one eigen-decomposition per tilt.
    absorption : float, optional
        Proportional absorption κ: U_g → (1 + iκ) U_g, and iκU_0 on the diagonal (U_0 from
        ``ug.attrs['u0']``, else 0). ``None`` (default): no absorption, Σ I = 1.
    dose : float, optional
        Electrons per tilt: replace I by Poisson(dose·I)/dose (pseudo-experimental counts).
    seed : int or numpy.random.Generator, optional
        Seed of the Poisson noise.
    progress : bool
        Show a progress bar.

    Returns
    -------
    xarray.Dataset
        ``intensity`` over (``tilt``, ``beam``) or (``thickness``, ``tilt``, ``beam``) as a fraction of
        the incident beam; ``intensity_noise_free`` too when ``dose`` is given; ``ug`` over
        ``reflection``. Attributes record geometry, crystal, settings and the larbed version.

    Examples
    --------
    >>> from larbed import Crystal, Geometry, compute_ug
    >>> xtal = Crystal.builtin("SrTiO3")
    >>> geo = Geometry(xtal, 120, (0, 0, 1), 13, 1, 70)
    >>> ds = simulate(geo, compute_ug(xtal, geo), 30.0)
    >>> round(float(ds.intensity.sel(tilt=0, beam=0)), 5)
    0.10209
    """
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a larbed.Geometry, got {type(geometry).__name__}")
    ug_da = check_ug(geometry, ug)
    scalar = np.ndim(thickness_nm) == 0
    thick = check_thickness(thickness_nm)
    if absorption is not None:
        absorption = float(absorption)
        if not np.isfinite(absorption) or absorption < 0:
            raise ValueError(f"absorption κ must be finite and >= 0, got {absorption}")
    if dose is not None:
        dose = float(dose)
        if not np.isfinite(dose) or dose <= 0:
            raise ValueError(f"dose must be a positive number of electrons per tilt, got {dose}")
    u0 = float(ug_da.attrs.get("u0", 0.0))
    if absorption and "u0" not in ug_da.attrs:
        logger.warning(
            "absorption κ=%g without U_0 (ug.attrs['u0']): the absorptive potential κU_g has zero "
            "mean and can add intensity (Σ I > 1); set ug.attrs['u0'] (compute_ug does)",
            absorption,
        )
    offdiag, diag, path = prepare_matrices(geometry, ug_da.values, absorption, u0)
    logger.debug(
        "simulate: %s path, %d tilts, %d beams, %d thicknesses", path, *diag.shape, len(thick)
    )
    out = _run_kernel(path, offdiag, diag, thick * 10.0, progress)

    intensity = out[0] if scalar else out
    dims = ("tilt", "beam") if scalar else ("thickness", "tilt", "beam")
    ds = xr.Dataset(coords=pattern_coords(geometry))
    if not scalar:
        ds = ds.assign_coords(thickness=("thickness", thick, {"units": "nm"}))
    attrs = {"units": "1", "long_name": "beam intensity (fraction of incident electrons)"}
    if dose is not None:
        rng = np.random.default_rng(seed)
        noisy = rng.poisson(np.clip(intensity, 0, None) * dose) / dose
        ds["intensity"] = (dims, noisy, attrs)
        ds["intensity_noise_free"] = (dims, intensity, attrs)
    else:
        ds["intensity"] = (dims, intensity, attrs)
    ds = attach_ug(ds, ug_da)
    ds.attrs.update(geometry.to_attrs())
    ds.attrs.update(
        {
            "title": "LARBED pattern simulated with larbed (Bloch waves)",
            "larbed_version": _version(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "thickness_nm": float(thick[0]) if scalar else thick.tolist(),
            "absorption": "none" if absorption is None else absorption,
            "dose": "none" if dose is None else dose,
            "seed": "none"
            if seed is None or not isinstance(seed, (int, np.integer))
            else int(seed),
            "eigen_path": path,
            "u0": u0,
            "ug_source": str(ug_da.attrs.get("source", "input")),
            "parameterization": str(ug_da.attrs.get("parameterization", "n/a")),
        }
    )
    return ds


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


_REFL_RENAME = {
    "h": "reflection_h",
    "k": "reflection_k",
    "l": "reflection_l",
    "gx": "reflection_gx",
    "gy": "reflection_gy",
}


def attach_ug(ds: xr.Dataset, ug: xr.DataArray, name: str = "ug") -> xr.Dataset:
    """Store a U_g DataArray in a pattern Dataset (reflection coordinates prefixed ``reflection_``)."""
    da = ug.rename({k: v for k, v in _REFL_RENAME.items() if k in ug.coords})
    da.attrs = {"units": "1/Å^2", "long_name": "structure factor U_g (one per Friedel pair)"}
    ds = ds.assign_coords({k: da.coords[k] for k in da.coords if k != "reflection"})
    ds = ds.assign_coords(reflection=da.reflection.values)
    ds[name] = ("reflection", da.values, da.attrs)
    return ds


def extract_ug(ds: xr.Dataset, name: str = "ug") -> xr.DataArray:
    """Inverse of :func:`attach_ug`: the U_g DataArray with coordinates h, k, l, gx, gy."""
    if name not in ds:
        raise ValueError(f"dataset has no variable {name!r}")
    da = ds[name]
    keep = {v: k for k, v in _REFL_RENAME.items() if v in da.coords}
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


def _version() -> str:
    from . import __version__

    return __version__
