"""Forward model: Bloch-wave LARBED patterns as labelled Datasets (conventions: docs/conventions.rst)."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence

import numpy as np
import xarray as xr

from . import bloch, schema, symmetry
from ._deprecation import moved_names
from ._random import rng_from
from .geometry import Geometry
from .metrics import check_dose, dose_column
from .threads import uses_kernels

__all__ = ["simulate", "simulate_array", "simulate_spread"]

logger = logging.getLogger(__name__)

_TILT_CHUNKS = 16

__getattr__ = moved_names(__name__, {
    "check_thickness": "larbed.schema", "check_ug": "larbed.schema",
    "pattern_coords": "larbed.schema", "attach_ug": "larbed.schema", "extract_ug": "larbed.schema",
    "is_real_ug": "larbed.bloch", "prepare_matrices": "larbed.bloch",
    "tilt_symmetry": "larbed.symmetry", "real_origin_shift": "larbed.origin",
    "one_blas_thread": "larbed.threads:kernel_threads",
    "REAL_RTOL": "larbed.origin", "SYMMETRY_RTOL": "larbed.symmetry",
})


def _independent_tilts(n_tilts: int, operations) -> np.ndarray:
    """Smallest tilt index of each orbit under the operations (a group without its identity)."""
    rep = np.arange(n_tilts)
    for tilt_perm, _ in operations:
        rep = np.minimum(rep, tilt_perm)
    return np.flatnonzero(rep == np.arange(n_tilts))


def _run_kernel(path, offdiag, diag, thickness_a, progress: bool) -> np.ndarray:
    n_tilts = diag.shape[0]
    if not progress:
        return bloch.intensities(offdiag, diag, path, thickness_a)
    from tqdm.auto import tqdm

    bounds = np.linspace(0, n_tilts, min(_TILT_CHUNKS, n_tilts) + 1).astype(int)
    parts = []
    with tqdm(total=n_tilts, desc="simulate", unit="tilt") as bar:
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            parts.append(bloch.intensities(offdiag, diag[lo:hi], path, thickness_a))
            bar.update(hi - lo)
    return np.concatenate(parts, axis=1)


def _run_symmetric(geometry, path, offdiag, diag, thickness_a, progress, use_symmetry):
    """Run the kernel on symmetry-independent tilts only and fill the rest by permutation."""
    ops = symmetry.tilt_symmetry(geometry, offdiag) if use_symmetry else []
    if not ops:
        return _run_kernel(path, offdiag, diag, thickness_a, progress), 1, diag.shape[0]
    reps = _independent_tilts(diag.shape[0], ops)
    part = _run_kernel(path, offdiag, np.ascontiguousarray(diag[reps]), thickness_a, progress)
    out = np.full((len(thickness_a),) + diag.shape, np.nan)  # anything left unfilled shows
    out[:, reps, :] = part
    for tilt_perm, beam_perm in ops:
        out[:, tilt_perm[reps][:, None], beam_perm[None, :]] = part
    return out, len(ops) + 1, len(reps)


@uses_kernels
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
    measurement=None,
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
        most 1e15. A per-tilt array is stored as the variable ``dose``. In a thickness series each
        thickness is its own pattern with its own, independent counts at this dose.
    seed : int or numpy.random.Generator, optional
        Seed of the Poisson noise.
    progress : bool
        Show a progress bar.
    use_symmetry : bool
        Exploit exact symmetries of the problem: complex U_g of a projection that is
        centrosymmetric about some point are moved to that origin and use the real eigensolver
        (:func:`larbed.origin.real_origin_shift`), and when the structure matrix is invariant under operations
        of the square tilt grid (e.g. 4mm at a centred [001] zone axis; :func:`larbed.symmetry.tilt_symmetry`) only
        independent tilts are computed and the others filled by permuting beams. The result is
        the same to round-off; ``False`` computes every tilt as given.
    measurement : larbed.Measurement, optional
        A measurement model with values (:meth:`larbed.Measurement.with_values`): the pattern a
        detector records, s·(I(θ') + B) with Poisson counts of dose·(I + B)
        (:func:`larbed.measurement.simulate_measured`); realistic pseudo-experimental data.

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
    if measurement is not None:
        from .measurement import simulate_measured

        return simulate_measured(geometry, ug, thickness_nm, measurement, absorption=absorption,
                                 dose=dose, seed=seed, progress=progress, use_symmetry=use_symmetry)
    ug_da = schema.check_ug(geometry, ug)
    scalar = np.ndim(thickness_nm) == 0
    thick = schema.check_thickness(thickness_nm)
    if dose is not None:
        dose = check_dose(dose, geometry.n_tilts)
    out, path, n_ops, n_independent = _intensities(
        geometry, ug_da, thick, absorption, progress, use_symmetry
    )
    u0 = float(ug_da.attrs.get("u0", 0.0))
    return _dataset(geometry, ug_da, thick, scalar, out[0] if scalar else out, path, n_ops,
                    n_independent, None if absorption is None else float(absorption), dose,
                    seed, u0)


@uses_kernels
def simulate_array(geometry: Geometry, ug, thickness_nm) -> np.ndarray:
    """The intensities of :func:`simulate` (no absorption, no noise) as a plain array:
    (n_tilts, n_beams), or (n_thicknesses, n_tilts, n_beams) for a sequence of thicknesses [nm].

    The same kernels and symmetry as :func:`simulate`, without building the labelled Dataset:
    for loops that simulate thousands of small candidates (Task 2)."""
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a larbed.Geometry, got {type(geometry).__name__}")
    ug_da = schema.check_ug(geometry, ug)
    thick = schema.check_thickness(thickness_nm)
    out = _intensities(geometry, ug_da, thick, None, False, True)[0]
    return out[0] if np.ndim(thickness_nm) == 0 else out


@uses_kernels
def simulate_spread(geometry: Geometry, ug, thickness_nm, points_mrad: np.ndarray,
                    weights: np.ndarray, *, absorption: float | None = None) -> xr.Dataset:
    """The pattern with each tilt's intensities averaged over a set of incident directions.

    ``points_mrad`` (n_tilts·S, 2) [mrad] lists S points per tilt, tilt by tilt (e.g.
    :meth:`larbed.Measurement.tilt_points`: a disc of beam convergence), ``weights`` (S,) their
    weights (summing to 1). Returns :func:`simulate`'s Dataset on the geometry's tilts, every
    point computed (no tilt symmetry); attrs ``spread_points`` = S."""
    from .measurement import average_spread

    ug_da = schema.check_ug(geometry, ug)
    scalar = np.ndim(thickness_nm) == 0
    thick = schema.check_thickness(thickness_nm)
    weights = np.asarray(weights, float)
    if (weights.ndim != 1 or weights.size == 0 or not np.all(np.isfinite(weights))
            or np.any(weights < 0) or abs(weights.sum() - 1.0) > 1e-9):
        raise ValueError("weights must be a 1-D array of finite values >= 0 that sum to 1")
    pts = np.asarray(points_mrad, float)
    if pts.shape != (geometry.n_tilts * len(weights), 2) or not np.all(np.isfinite(pts)):
        raise ValueError(f"points_mrad must be {geometry.n_tilts} × {len(weights)} finite (x, y) "
                         f"tilts [mrad], got shape {pts.shape}")
    u0 = float(ug_da.attrs.get("u0", 0.0))
    off, dg, path = bloch.prepare_matrices(geometry, ug_da.values, absorption, u0, tilts_mrad=pts)
    from .resources import check_memory, estimate_simulation

    check_memory(estimate_simulation(geometry, len(thick), path, n_tilts=len(pts)), "simulate",
                 "a tilt spread computes every point of every tilt: simulate fewer tilts at a time")
    out = average_spread(bloch.intensities(off, dg, path, thick * 10.0), weights)
    ds = _dataset(geometry, ug_da, thick, scalar, out[0] if scalar else out, path, 1,
                  geometry.n_tilts, None if absorption is None else float(absorption), None,
                  None, u0)
    ds.attrs["spread_points"] = len(weights)
    return ds


def _intensities(geometry, ug_da, thick, absorption, progress, use_symmetry):
    """(intensities over (thickness, tilt, beam), eigen path, symmetry operations, independent
    tilts) for checked U_g and thicknesses [nm]; κ checked here."""
    if absorption is not None:
        if isinstance(absorption, bool) or np.ndim(absorption) or np.asarray(absorption).dtype.kind not in "fiu":
            raise TypeError(f"absorption κ must be a number, got {absorption!r}")
        absorption = float(absorption)
        if not np.isfinite(absorption) or absorption < 0:
            raise ValueError(f"absorption κ must be finite and >= 0, got {absorption}")
    u0 = float(ug_da.attrs.get("u0", 0.0))
    if absorption and "u0" not in ug_da.attrs:
        logger.warning(
            "absorption κ=%g without U_0 (ug.attrs['u0']): the absorptive potential κU_g has zero "
            "mean and can add intensity (Σ I > 1); set ug.attrs['u0'] (compute_ug does)",
            absorption,
        )
    offdiag, diag, path = bloch.prepare_matrices(
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
    return out, path, n_ops, n_independent


def _dataset(geometry, ug_da, thick, scalar, intensity, path, n_ops, n_independent,
             absorption, dose, seed, u0) -> xr.Dataset:
    """The labelled pattern of :func:`simulate` (Poisson counts drawn here when ``dose``)."""
    noisy = intensity
    if dose is not None:
        rng = rng_from(seed)
        dc = dose_column(dose)
        noisy = rng.poisson(np.clip(intensity, 0, None) * dc) / dc
    ds = schema.pattern_dataset(geometry, noisy, thickness_nm=None if scalar else thick, ug=ug_da)
    if dose is not None:
        ds["intensity_noise_free"] = (ds.intensity.dims, intensity, dict(schema.INTENSITY_ATTRS))
        if np.ndim(dose):
            ds["dose"] = ("tilt", dose, {"units": "electrons per tilt"})
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


def _version() -> str:
    from . import __version__

    return __version__
