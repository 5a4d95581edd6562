"""Higher-order Laue zones: the pattern with HOLZ beams added, and how much they change it.

larbed's :class:`~larbed.Geometry`, :func:`~larbed.simulate` and the refinements use the beams of
the zero-order Laue zone (ZOLZ) only. Reflections of the higher-order zones (HOLZ; layer n:
g·[uvw] = n) reach the Ewald sphere at large tilts or in thick crystals and take intensity from
the ZOLZ beams along sharp lines (HOLZ lines). :func:`simulate_holz` computes the recorded ZOLZ
intensities with, at every tilt, the HOLZ beams nearest the Bragg condition added to the structure
matrix; :func:`holz_effect` says how much that changes the ZOLZ-only pattern, i.e. whether the
ZOLZ-only model is good enough for a given crystal, geometry and thickness.

Conventions. The incident wave vector is K = (k_t, K_z) with k_t = θ·10⁻³ K (θ the tilt [mrad] in
the geometry's frame) and K_z = (K² − |k_t|²)^½ along +z, the zone axis. A beam g = (q, g_z) has
the diagonal element K² − |K + g|² = −(2 k_t·q + 2 K_z g_z + |g|²) [1/Å²] (for ZOLZ beams, g_z = 0,
larbed's usual −(2 k_t·g + |g|²)), so the layer with g_z < 0 is the one the Ewald sphere meets.
All beams share the normal-incidence propagation of the ZOLZ model. Couplings between two ZOLZ
beams are the given U_g; every coupling that involves a HOLZ beam is the independent-atom value of
the crystal (:func:`larbed.structure_factors.structure_factor`). No absorption.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from . import schema
from .crystal import Crystal
from .geometry import Geometry
from .structure_factors import CELL_RTOL, structure_factor, ug_matrix
from .threads import kernel_threads

__all__ = ["HolzEffect", "holz_effect", "simulate_holz"]

logger = logging.getLogger(__name__)

#: Default largest excitation error |s_g| of the HOLZ beams kept [1/Å] (outer ZOLZ beams of a
#: LARBED pattern are at 0.1–0.2).
DEFAULT_S_MAX = 0.03
#: Default most HOLZ beams per tilt (the nearest to the Bragg condition first).
DEFAULT_MAX_BEAMS = 100


def _check_options(layers, s_max, max_beams) -> tuple[tuple[int, ...], float, int]:
    try:
        lay = tuple(int(n) for n in layers)
    except (TypeError, ValueError):
        raise TypeError(f"layers must be a sequence of non-zero integers, got {layers!r}") from None
    if not lay or any(n == 0 for n in lay) or any(float(a) != n for a, n in zip(layers, lay, strict=True)):
        raise ValueError(f"layers must be non-zero integers (n of g·[uvw] = n; 0 is the ZOLZ), "
                         f"got {layers!r}")
    s_max = float(s_max)
    if not np.isfinite(s_max) or s_max <= 0:
        raise ValueError(f"s_max must be a finite excitation error > 0 [1/Å], got {s_max}")
    if isinstance(max_beams, bool) or not isinstance(max_beams, (int, np.integer)) or max_beams < 0:
        raise ValueError(f"max_beams must be an integer >= 0, got {max_beams!r}")
    return tuple(sorted(set(lay))), s_max, int(max_beams)


class _Candidates:
    """The HOLZ reflections of ``layers`` that can come within ``s_max`` at the tilts."""

    def __init__(self, geometry: Geometry, crystal: Crystal, layers, s_max, tilts_mrad):
        k0 = self.k0 = geometry.k0
        kt_max = float(np.linalg.norm(tilts_mrad, axis=1).max()) * 1e-3 * k0
        uvw = np.asarray(geometry.zone_axis)
        uvw = uvw // np.gcd.reduce(uvw)  # [002] is [001]: layers count from the lowest terms
        gz_max = max(abs(n) for n in layers) / np.linalg.norm(uvw @ crystal.lattice_vectors)
        # |q + k_t|² = 2 K_z |g_z| + k_t² − g_z² ± 2K s_max on the Laue circle of each tilt
        q_max = kt_max + np.sqrt(kt_max**2 + 2 * k0 * (gz_max + s_max)) + 0.1
        n = int(np.ceil(q_max * np.linalg.norm(crystal.lattice_vectors, axis=1).max())) + 1
        r = np.arange(-n, n + 1)
        hkl = np.stack([x.ravel() for x in np.meshgrid(r, r, r, indexing="ij")], axis=1)
        hkl = hkl[np.isin(hkl @ uvw, layers)]
        g = hkl @ crystal.reciprocal_vectors
        q = g @ geometry.frame[:2].T
        keep = np.linalg.norm(q, axis=1) <= q_max
        self.hkl, self.q = hkl[keep], q[keep]
        self.gz = (g @ geometry.frame[2])[keep]
        self.g2 = np.einsum("ij,ij->i", g[keep], g[keep])

    def diagonal(self, k_t: np.ndarray, idx=slice(None)) -> np.ndarray:
        """−(2 k_t·q + 2 K_z g_z + |g|²) [1/Å²] of the candidates ``idx`` at one tilt."""
        kz = np.sqrt(self.k0**2 - k_t @ k_t)
        return -(2 * self.q[idx] @ k_t + 2 * kz * self.gz[idx] + self.g2[idx])

    def select(self, k_t: np.ndarray, s_max: float, max_beams: int) -> np.ndarray:
        """Indices of the candidates with |s_g| ≤ s_max at in-plane wave vector k_t, nearest first."""
        s = np.abs(self.diagonal(k_t)) / (2 * self.k0)
        idx = np.flatnonzero(s <= s_max)
        return idx[np.argsort(s[idx], kind="stable")][:max_beams]


class _Couplings:
    """Independent-atom U(g_a − g_b) [1/Å²] of integer difference vectors, each computed once:
    ``keys`` is filled by :meth:`need`, then :meth:`compute` evaluates them."""

    def __init__(self, hkl_all: np.ndarray):
        reach = int(np.abs(hkl_all).max(initial=0))
        self.lo = -2 * reach
        self.width = 4 * reach + 1
        self.keys = np.zeros(0, np.int64)
        self._pending: list[np.ndarray] = []

    def _key(self, d: np.ndarray) -> np.ndarray:
        d = d.astype(np.int64) - self.lo
        return (d[..., 0] * self.width + d[..., 1]) * self.width + d[..., 2]

    def need(self, hkl_a: np.ndarray, hkl_b: np.ndarray) -> None:
        self._pending.append(np.unique(self._key(hkl_a[:, None, :] - hkl_b[None, :, :])))
        if len(self._pending) >= 64:
            self.keys = np.unique(np.concatenate([self.keys, *self._pending]))
            self._pending = []

    def compute(self, crystal: Crystal, voltage_kv: float, parameterization: str) -> None:
        self.keys = np.unique(np.concatenate([self.keys, *self._pending]))
        self._pending = []
        w = self.width
        hkl = np.stack([self.keys // (w * w), (self.keys // w) % w, self.keys % w], axis=1) + self.lo
        self.values = structure_factor(crystal, hkl, voltage_kv, parameterization)
        self.values[np.all(hkl == 0, axis=1)] = 0.0  # U_0 is a common phase: not on the diagonal

    def __call__(self, hkl_a: np.ndarray, hkl_b: np.ndarray) -> np.ndarray:
        return self.values[np.searchsorted(self.keys, self._key(hkl_a[:, None, :] - hkl_b[None, :, :]))]


def simulate_holz(
    geometry: Geometry,
    ug,
    thickness_nm: float | Sequence[float] | np.ndarray,
    *,
    crystal: Crystal | None = None,
    layers: Sequence[int] = (-1, 1),
    s_max: float = DEFAULT_S_MAX,
    max_beams: int = DEFAULT_MAX_BEAMS,
    parameterization: str = "lobato",
    tilts_mrad: np.ndarray | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """The pattern of :func:`larbed.simulate` with HOLZ beams in the structure matrix.

    Parameters
    ----------
    geometry : Geometry
        The ZOLZ beams (all of them are returned) and the tilts.
    ug : xarray.DataArray, mapping or array_like
        The ZOLZ structure factors [1/Å²] (as for :func:`larbed.simulate`, e.g. a refinement's).
        ZOLZ intensities fix them only up to an in-plane origin shift; they are first moved to
        the origin of ``crystal``'s atoms (:func:`larbed.origin.align_origin` against its
        independent-atom U_g), in which the HOLZ couplings are computed.
    thickness_nm : float or sequence of float
        Thickness [nm], ≥ 0; a sequence adds a ``thickness`` dimension (one eigen-decomposition
        per tilt serves all).
    crystal : Crystal, optional
        Atoms for the couplings that involve HOLZ beams (default ``geometry.crystal``; its cell
        must be the geometry's).
    layers : sequence of int
        Laue zones n (g·[uvw] = n) whose reflections may join (default the first, ±1; for a
        centred lattice whose first zone is extinct, add ±2).
    s_max : float
        Largest excitation error |s_g| = |K² − |K + g|²| / 2K of a HOLZ beam kept [1/Å].
    max_beams : int
        Most HOLZ beams per tilt, the nearest to the Bragg condition first (0: the ZOLZ model).
    parameterization : {'lobato', 'kirkland'}
        Scattering factors of the HOLZ couplings.
    tilts_mrad : (n_tilts, 2) array, optional
        The tilts used instead of the geometry's (e.g. a refined tilt map θ' = Aθ + c) [mrad].
    progress : bool
        Show a progress bar over the tilts.

    Returns
    -------
    xarray.Dataset
        ``intensity`` over (``tilt``, ``beam``) or (``thickness``, ``tilt``, ``beam``), the ZOLZ
        beams of ``geometry`` [fraction of the incident beam]; ``n_holz`` over ``tilt``, the HOLZ
        beams used. The attributes record the settings.
    """
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a larbed.Geometry, got {type(geometry).__name__}")
    crystal = geometry.crystal if crystal is None else crystal
    if not isinstance(crystal, Crystal):
        raise TypeError(f"crystal must be a larbed.Crystal, got {type(crystal).__name__}")
    if not np.allclose(crystal.cell, geometry.crystal.cell, rtol=CELL_RTOL, atol=0):
        raise ValueError(f"the crystal's cell {crystal.cell} differs from the geometry's "
                         f"{geometry.crystal.cell}: the HOLZ reflections would not be its beams'")
    layers, s_max, max_beams = _check_options(layers, s_max, max_beams)
    ug_da = schema.check_ug(geometry, ug)
    if max_beams:
        ug_da = _in_crystal_origin(geometry, crystal, ug_da, parameterization)
    scalar = np.ndim(thickness_nm) == 0
    thick = schema.check_thickness(thickness_nm)
    theta = geometry.tilt_mrad if tilts_mrad is None else np.asarray(tilts_mrad, float)
    if theta.shape != (geometry.n_tilts, 2) or not np.all(np.isfinite(theta)):
        raise ValueError(f"tilts_mrad must be a finite ({geometry.n_tilts}, 2) array [mrad], got "
                         f"shape {theta.shape}")
    k0 = geometry.k0
    k_t = theta * 1e-3 * k0
    cand = _Candidates(geometry, crystal, layers, s_max, theta)
    chosen = [cand.select(kt, s_max, max_beams) if max_beams else np.zeros(0, int) for kt in k_t]
    couple = _Couplings(np.concatenate([geometry.hkl, cand.hkl]))
    for idx in chosen:
        if len(idx):
            couple.need(geometry.hkl, cand.hkl[idx])
            couple.need(cand.hkl[idx], cand.hkl[idx])
    couple.compute(crystal, geometry.voltage_kv, parameterization)
    zolz = ug_matrix(geometry, ug_da)
    n = geometry.n_beams
    out = np.empty((len(thick), len(k_t), n))

    def one(m: int) -> None:
        idx = chosen[m]
        h = cand.hkl[idx]
        if len(idx):
            cross = couple(geometry.hkl, h)
            mat = np.block([[zolz, cross], [cross.conj().T, couple(h, h)]])
        else:
            mat = zolz.copy()
        mat[np.diag_indices_from(mat)] = np.concatenate(
            [-(2 * geometry.g_xy @ k_t[m] + geometry.g_abs**2), cand.diagonal(k_t[m], idx)])
        if np.abs(mat.imag).max(initial=0.0) == 0.0:
            mat = mat.real
        w, c = np.linalg.eigh(mat / (2 * k0))
        phase = np.exp(2j * np.pi * np.outer(thick * 10.0, w)) * c[0].conj()
        out[:, m] = np.abs(phase @ c[:n].T) ** 2

    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    # tilts in parallel threads (LAPACK releases the GIL), one BLAS thread each
    with kernel_threads() as n_threads, ThreadPoolExecutor(n_threads) as pool:
        for _ in tqdm(pool.map(one, range(len(k_t))), total=len(k_t), desc="simulate_holz",
                      unit="tilt", disable=not progress, leave=False):
            pass
    counts = np.array([len(i) for i in chosen])
    logger.info("simulate_holz: %d tilts, %d ZOLZ beams + %d–%d HOLZ beams (layers %s, s ≤ %g 1/Å)",
                len(k_t), n, counts.min(), counts.max(), layers, s_max)
    ds = schema.pattern_dataset(geometry, out[0] if scalar else out,
                                thickness_nm=None if scalar else thick, ug=ug_da)
    ds["n_holz"] = ("tilt", counts, {"long_name": "HOLZ beams in the structure matrix"})
    from . import __version__

    ds.attrs.update({
        "title": "LARBED pattern simulated with larbed (Bloch waves, ZOLZ + HOLZ beams)",
        "larbed_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "thickness_nm": float(thick[0]) if scalar else thick.tolist(),
        "holz_layers": list(layers), "holz_s_max_inv_A": s_max, "holz_max_beams": max_beams,
        "holz_parameterization": parameterization, "holz_crystal": crystal.name,
        "tilts": "geometry" if tilts_mrad is None else "given (tilts_mrad)",
    })
    return ds


def _in_crystal_origin(geometry, crystal, ug_da, parameterization):
    """``ug_da`` moved to the in-plane origin of the crystal's atoms: ZOLZ data fix U_g only up
    to such a shift, but the HOLZ couplings are computed in the crystal's origin."""
    from .origin import align_origin
    from .structure_factors import compute_ug

    iam = compute_ug(crystal, geometry, parameterization)
    vals, r0 = align_origin(geometry, ug_da.values, iam.values)
    if np.linalg.norm(r0) > 1e-6:
        logger.info("simulate_holz: U_g moved by r0 = (%.4f, %.4f) Å to the crystal's origin",
                    *np.asarray(r0)[:2])
        return ug_da.copy(data=vals)
    return ug_da


@dataclass(frozen=True)
class HolzEffect:
    """How much HOLZ beams change a ZOLZ-only pattern.

    Attributes
    ----------
    changed_fraction : float
        Σ |I_HOLZ − I_ZOLZ| / Σ I_ZOLZ over all tilts and beams (compare with the pattern's R).
    max_change : float
        Largest |I_HOLZ − I_ZOLZ| of one intensity [fraction of the incident beam].
    min_ratio_000 : float
        Deepest HOLZ line in the transmitted beam: min over tilts of I_000(HOLZ) / I_000(ZOLZ).
    holz_beams : int
        Median number of HOLZ beams per tilt.
    thickness_nm : float
        The thickness [nm].
    """

    changed_fraction: float
    max_change: float
    min_ratio_000: float
    holz_beams: int
    thickness_nm: float


def holz_effect(geometry: Geometry, ug, thickness_nm: float, **kwargs) -> HolzEffect:
    """Compare :func:`simulate_holz` with the ZOLZ-only model at one thickness [nm].

    ``kwargs`` go to :func:`simulate_holz` (``crystal``, ``layers``, ``s_max``, ``max_beams``,
    ``parameterization``, ``tilts_mrad``, ``progress``). The ZOLZ reference is the same code with
    ``max_beams=0`` (it equals :func:`larbed.simulate` to round-off).
    """
    if np.ndim(thickness_nm) != 0:
        raise ValueError(f"holz_effect takes one thickness [nm], got {np.shape(thickness_nm)}")
    ref_kw = {k: v for k, v in kwargs.items() if k not in ("max_beams", "progress")}
    holz = simulate_holz(geometry, ug, thickness_nm, **kwargs)
    zolz = simulate_holz(geometry, ug, thickness_nm, max_beams=0, **ref_kw)
    a, b = holz.intensity.values, zolz.intensity.values
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(b[:, 0] > 0, a[:, 0] / b[:, 0], 1.0)
    return HolzEffect(changed_fraction=float(np.abs(a - b).sum() / b.sum()),
                      max_change=float(np.abs(a - b).max()), min_ratio_000=float(ratio.min()),
                      holz_beams=int(np.median(holz.n_holz.values)), thickness_nm=float(thickness_nm))
