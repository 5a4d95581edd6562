"""Forward model: Bloch-wave LARBED patterns (conventions: docs/conventions.rst)."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from ._kernels import bloch
from .geometry import Geometry
from .metrics import check_dose, dose_column
from .structure_factors import input_ug, ug_matrix
from .symmetry import largest_subgroup
from .threads import kernel_threads

__all__ = [
    "simulate",
    "prepare_matrices",
    "check_thickness",
    "check_ug",
    "is_real_ug",
    "tilt_symmetry",
    "real_origin_shift",
    "one_blas_thread",
]

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
    """True when every U_g is real to round-off (then the real symmetric eigensolver serves)."""
    values = np.asarray(values)
    scale = max(float(np.max(np.abs(values), initial=0.0)), 1e-300)
    return bool(np.max(np.abs(values.imag), initial=0.0) <= REAL_RTOL * scale)


def real_origin_shift(geometry: Geometry, ug_values: np.ndarray) -> list[np.ndarray]:
    """In-plane origin shifts r0 [Å] that make every U_g real (empty if none exists).

    A projection that is centrosymmetric about some point has real U_g with the origin there;
    intensities do not depend on the origin (U_g → U_g exp(2πi g·r0)), so such patterns can use
    the real symmetric eigensolver. Up to four inequivalent centres are returned (phases 0 or π
    of two reference reflections).
    """
    values = np.asarray(ug_values, dtype=complex)
    mag = np.abs(values)
    scale = float(np.max(mag, initial=0.0))
    if scale == 0.0:
        return []
    xy = geometry.reflection_xy
    strong = np.flatnonzero(mag > 1e-3 * scale)
    if strong.size < 2:
        return []
    first = strong[np.argmax(mag[strong])]
    second = None
    for idx in strong[np.argsort(-mag[strong], kind="stable")]:
        cross = xy[first, 0] * xy[idx, 1] - xy[first, 1] * xy[idx, 0]
        if abs(cross) > 1e-6 * np.linalg.norm(xy[first]) * np.linalg.norm(xy[idx]):
            second = idx
            break
    if second is None:
        return []
    basis = xy[[first, second]]
    phases = np.angle(values[[first, second]])
    g_all = geometry.reflection_xy
    for t1 in (0.0, np.pi):
        for t2 in (0.0, np.pi):
            r0 = np.linalg.solve(2 * np.pi * basis, np.array([t1, t2]) - phases)
            shifted = values * np.exp(2j * np.pi * (g_all @ r0))
            if np.max(np.abs(shifted.imag), initial=0.0) <= REAL_RTOL * 10 * scale:
                # every centre of the projection: r0 plus half in-plane lattice vectors
                from .image import _zolz_basis

                real_basis = np.linalg.inv(_zolz_basis(geometry)).T
                return [
                    r0 + (i * real_basis[0] + j * real_basis[1]) / 2 for i in (0, 1) for j in (0, 1)
                ]
    return []


def prepare_matrices(
    geometry: Geometry,
    ug_values: np.ndarray,
    absorption: float | None = None,
    u0: float = 0.0,
    *,
    allow_origin_shift: bool = False,
):
    """Kernel inputs scaled by 1/(2K): (offdiag, diag, path) with path in {'real', 'hermitian', 'general'}.

    With ``allow_origin_shift`` complex U_g of a projection that is centrosymmetric about some
    in-plane point are moved to that origin (see :func:`real_origin_shift`) and take the real
    path: the intensities are the same, but the matrix no longer matches ``ug_values`` element by
    element (so derivative code must leave it off).
    """
    inv2k = 1.0 / (2.0 * geometry.k0)
    mat = ug_matrix(geometry, ug_values) * inv2k
    diag = geometry.excitation_diagonal * inv2k
    if absorption is not None and absorption != 0.0:
        off = mat * (1.0 + 1j * absorption)
        dg = diag.astype(complex) + 1j * absorption * u0 * inv2k
        return np.ascontiguousarray(off), np.ascontiguousarray(dg), "general"
    if is_real_ug(ug_values):
        return np.ascontiguousarray(mat.real), np.ascontiguousarray(diag), "real"
    centres = real_origin_shift(geometry, ug_values) if allow_origin_shift else []
    if centres:
        # of the centres of symmetry, take the one with the most tilt-grid symmetry
        best = None
        for r0 in centres:
            shifted = np.asarray(ug_values) * np.exp(2j * np.pi * (geometry.reflection_xy @ r0))
            if not is_real_ug(shifted):
                continue
            cand = np.ascontiguousarray(ug_matrix(geometry, shifted.real).real * inv2k)
            n_ops = len(tilt_symmetry(geometry, cand))
            if best is None or n_ops > best[0]:
                best = (n_ops, cand)
        if best is not None:
            return best[1], np.ascontiguousarray(diag), "real"
    return np.ascontiguousarray(mat), np.ascontiguousarray(diag.astype(float)), "hermitian"


#: Off-diagonal structure-matrix elements agree under a symmetry operation to this fraction of
#: max |U_g| (round-off of exp(-2πi g·r) is ~1e-16; a real asymmetry is far larger).
SYMMETRY_RTOL = 1e-12

# The eight operations of the square tilt grid (acting on in-plane (x, y)), identity first; only
# these can map the integer tilt grid onto itself.
_GRID_OPERATIONS = tuple(
    np.array(m, dtype=float)
    for m in (
        [[1, 0], [0, 1]],
        [[0, -1], [1, 0]],
        [[-1, 0], [0, -1]],
        [[0, 1], [-1, 0]],
        [[1, 0], [0, -1]],
        [[-1, 0], [0, 1]],
        [[0, 1], [1, 0]],
        [[0, -1], [-1, 0]],
    )
)

def one_blas_thread():
    """Context manager for kernel calls: :func:`larbed.threads.kernel_threads` (kept name)."""
    return kernel_threads()


def _match_rows(points: np.ndarray, mapped: np.ndarray, atol: float) -> np.ndarray | None:
    """Index of the row of ``points`` equal to each row of ``mapped``; None if any is missing."""
    d = np.abs(mapped[:, None, :] - points[None, :, :]).max(axis=2)
    idx = np.argmin(d, axis=1)
    if np.any(d[np.arange(len(mapped)), idx] > atol):
        return None
    return idx


def _map_tilts(tilt_ij: np.ndarray, op: np.ndarray) -> np.ndarray | None:
    """Index of the tilt R (i, j) for every tilt (i, j); None if one falls off the grid."""
    r = int(np.max(np.abs(tilt_ij), initial=0))
    grid = -np.ones((2 * r + 1, 2 * r + 1), dtype=np.int64)
    grid[tilt_ij[:, 0] + r, tilt_ij[:, 1] + r] = np.arange(len(tilt_ij))
    mapped = np.rint(tilt_ij @ op.T).astype(np.int64)
    if np.any(np.abs(mapped) > r):
        return None
    perm = grid[mapped[:, 0] + r, mapped[:, 1] + r]
    return None if np.any(perm < 0) else perm


def tilt_symmetry(geometry: Geometry, offdiag: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Operations R of the square tilt grid under which the pattern is invariant (to round-off).

    R qualifies when it maps the tilt grid and the beam set onto themselves (beam permutation π)
    and leaves the structure matrix invariant, U_{g_π(n) − g_π(m)} = U_{g_n − g_m} to
    :data:`SYMMETRY_RTOL`. Then A(R k_t) = P A(k_t) Pᵀ and I(R k_t)[π(n)] = I(k_t)[n]. The check
    uses the actual U_g (and absorption), so it changes a result by round-off at most.

    The operations returned always form a group (with the identity): the largest subgroup of the
    grid's operations whose every element qualifies (:func:`larbed.symmetry.largest_subgroup`).
    Near-symmetric U_g can pass the test for R₁ and R₂ but not for R₁R₂; the independent tilts of
    a set that is not a group would leave tilts uncomputed.

    Returns
    -------
    list of (tilt_permutation, beam_permutation)
        Index arrays for each operation of the group other than the identity.
    """
    if geometry.n_tilts == 1:
        return []
    scale = float(np.max(np.abs(offdiag), initial=0.0))
    atol_g = 1e-6 * max(float(np.max(geometry.g_abs)), 1.0)
    center = np.asarray(geometry.tilt_center_mrad)
    perms: list[tuple[np.ndarray, np.ndarray] | None] = []
    for op in _GRID_OPERATIONS:
        perms.append(None)
        if not np.allclose(op @ center, center, atol=1e-9 * max(1.0, geometry.tilt_range_mrad)):
            continue
        beam_perm = _match_rows(geometry.g_xy, geometry.g_xy @ op.T, atol_g)
        if beam_perm is None or beam_perm[0] != 0:
            continue
        moved = offdiag[np.ix_(beam_perm, beam_perm)]
        if np.max(np.abs(moved - offdiag), initial=0.0) > SYMMETRY_RTOL * scale:
            continue
        tilt_perm = _map_tilts(geometry.tilt_ij, op)
        if tilt_perm is None:
            continue
        perms[-1] = (tilt_perm, beam_perm)
    group = largest_subgroup(_GRID_OPERATIONS, [p is not None for p in perms])
    return [perms[i] for i in group if i != 0]  # type: ignore[misc]


def _independent_tilts(n_tilts: int, operations) -> np.ndarray:
    """Smallest tilt index of each orbit under the operations (a group without its identity)."""
    rep = np.arange(n_tilts)
    for tilt_perm, _ in operations:
        rep = np.minimum(rep, tilt_perm)
    return np.flatnonzero(rep == np.arange(n_tilts))


def _run_kernel(path, offdiag, diag, thickness_a, progress: bool) -> np.ndarray:
    n_tilts, n = diag.shape
    out = np.full((len(thickness_a), n_tilts, n), np.nan)
    kernel = {
        "real": bloch.intensities_real,
        "hermitian": bloch.intensities_hermitian,
        "general": bloch.intensities_general,
    }[path]
    with one_blas_thread():
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


def _run_symmetric(geometry, path, offdiag, diag, thickness_a, progress, use_symmetry):
    """Run the kernel on symmetry-independent tilts only and fill the rest by permutation."""
    ops = tilt_symmetry(geometry, offdiag) if use_symmetry else []
    if not ops:
        return _run_kernel(path, offdiag, diag, thickness_a, progress), 1, diag.shape[0]
    reps = _independent_tilts(diag.shape[0], ops)
    part = _run_kernel(path, offdiag, np.ascontiguousarray(diag[reps]), thickness_a, progress)
    out = np.full((len(thickness_a),) + diag.shape, np.nan)  # anything left unfilled shows
    out[:, reps, :] = part
    for tilt_perm, beam_perm in ops:
        out[:, tilt_perm[reps][:, None], beam_perm[None, :]] = part
    return out, len(ops) + 1, len(reps)


def simulate(
    geometry: Geometry,
    ug,
    thickness_nm: float | Sequence[float] | np.ndarray,
    *,
    absorption: float | None = None,
    dose: float | None = None,
    seed: int | np.random.Generator | None = None,
    progress: bool = False,
    use_symmetry: bool = True,
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
    dose : float or (n_tilts,) array, optional
        Electrons per tilt: replace I by Poisson(dose·I)/dose (pseudo-experimental counts); at
        most 1e15. A per-tilt array is stored as the variable ``dose``.
    seed : int or numpy.random.Generator, optional
        Seed of the Poisson noise.
    progress : bool
        Show a progress bar.
    use_symmetry : bool
        Exploit exact symmetries of the problem: complex U_g of a projection that is
        centrosymmetric about some point are moved to that origin and use the real eigensolver
        (:func:`real_origin_shift`), and when the structure matrix is invariant under operations
        of the square tilt grid (e.g. 4mm at a centred [001] zone axis; :func:`tilt_symmetry`) only
        independent tilts are computed and the others filled by permuting beams. The result is
        the same to round-off; ``False`` computes every tilt as given.

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
        dose = check_dose(dose, geometry.n_tilts)
    u0 = float(ug_da.attrs.get("u0", 0.0))
    if absorption and "u0" not in ug_da.attrs:
        logger.warning(
            "absorption κ=%g without U_0 (ug.attrs['u0']): the absorptive potential κU_g has zero "
            "mean and can add intensity (Σ I > 1); set ug.attrs['u0'] (compute_ug does)",
            absorption,
        )
    offdiag, diag, path = prepare_matrices(
        geometry, ug_da.values, absorption, u0, allow_origin_shift=use_symmetry
    )
    from .resources import check_memory, estimate_simulation

    check_memory(estimate_simulation(geometry, len(thick), path), "simulate",
                 "simulate fewer thicknesses or tilts at a time (e.g. split the thickness series)")
    logger.debug(
        "simulate: %s path, %d tilts, %d beams, %d thicknesses", path, *diag.shape, len(thick)
    )
    out, n_ops, n_independent = _run_symmetric(
        geometry, path, offdiag, diag, thick * 10.0, progress, use_symmetry
    )
    if not np.all(np.isfinite(out)):
        bad = np.argwhere(~np.isfinite(out))[:, -2]
        raise RuntimeError(
            f"simulate left {int(np.sum(~np.isfinite(out)))} intensities undefined (NaN/inf) at "
            f"{len(np.unique(bad))} tilts, e.g. tilt {int(bad[0])} ({path} eigensolver, "
            f"{n_ops} symmetry operations); this is a larbed bug or an eigensolver failure, "
            "please report it (use_symmetry=False may work around it)"
        )

    intensity = out[0] if scalar else out
    dims = ("tilt", "beam") if scalar else ("thickness", "tilt", "beam")
    coords = pattern_coords(geometry)
    if not scalar:
        coords["thickness"] = ("thickness", thick, {"units": "nm"})
    coords.update(_ug_coords(ug_da))
    attrs = {"units": "1", "long_name": "beam intensity (fraction of incident electrons)"}
    data_vars = {}
    if dose is not None:
        rng = np.random.default_rng(seed)
        dc = dose_column(dose)
        noisy = rng.poisson(np.clip(intensity, 0, None) * dc) / dc
        data_vars["intensity"] = (dims, noisy, attrs)
        data_vars["intensity_noise_free"] = (dims, intensity, attrs)
        if np.ndim(dose):
            data_vars["dose"] = ("tilt", dose, {"units": "electrons per tilt"})
    else:
        data_vars["intensity"] = (dims, intensity, attrs)
    data_vars["ug"] = ("reflection", np.asarray(ug_da.values, dtype=complex), dict(_UG_ATTRS))
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs.update(geometry.to_attrs())
    ds.attrs.update(
        {
            "title": "LARBED pattern simulated with larbed (Bloch waves)",
            "larbed_version": _version(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "thickness_nm": float(thick[0]) if scalar else thick.tolist(),
            "absorption": "none" if absorption is None else absorption,
            "dose": "none" if dose is None else (dose if np.ndim(dose) == 0 else "per tilt"),
            "seed": "none"
            if seed is None or not isinstance(seed, (int, np.integer))
            else int(seed),
            "eigen_path": path,
            "symmetry_operations": n_ops,
            "independent_tilts": n_independent,
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


_UG_ATTRS = {"units": "1/Å^2", "long_name": "structure factor U_g (one per Friedel pair)"}


def _ug_coords(ug: xr.DataArray) -> dict:
    coords = {"reflection": ("reflection", ug.reflection.values)}
    for old, new in _REFL_RENAME.items():
        if old in ug.coords:
            c = ug.coords[old]
            coords[new] = ("reflection", c.values, dict(c.attrs))
    return coords


def attach_ug(ds: xr.Dataset, ug: xr.DataArray, name: str = "ug") -> xr.Dataset:
    """Store a U_g DataArray in a pattern Dataset (reflection coordinates prefixed ``reflection_``)."""
    ds = ds.assign_coords(_ug_coords(ug))
    ds[name] = ("reflection", np.asarray(ug.values, dtype=complex), dict(_UG_ATTRS))
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
