"""Diffraction geometry: zone axis, beams (ZOLZ reflections) and incident-beam tilts.

Conventions (also in docs/conventions.rst):

* Beams are the zero-order Laue zone reflections g = h a* + k b* + l c* (h u + k v + l w = 0) with
  the smallest |g|. Order: by |g| (to 1e-6 1/Å), ties by azimuth angle in [0, 2π) measured
  counter-clockwise from the in-plane x axis. Beam 0 is 000.
* The in-plane frame: z along the zone axis [uvw] (real space), x along the shortest ZOLZ
  reflection (among equally short ones, the lexicographically largest (h, k, l)), y = z × x.
* Tilts are the integer points (i, j) with i² + j² ≤ r², ordered by j then i; the tilt angle is
  (i, j) / r · θ_max and the in-plane wave vector k_t = (i, j) / r · θ_max · K (θ in rad, K = 1/λ).
  Measured tilts (``tilts_mrad``) replace the grid: any point set, in the same frame, k_t = θ K.
* Simulated beams (``n_beams``) enter the Bloch matrix; recorded beams (``recorded``, default all)
  enter the fit and R. A value that was not measured is NaN and counts nowhere.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from functools import cached_property

import numpy as np

from .constants import electron_wavelength, relativistic_gamma
from .crystal import Crystal
from .tilts import circle_tilt_count, measured_pixels, radius_for_count, valid_tilt_counts

__all__ = ["Geometry", "circle_tilt_count", "valid_tilt_counts"]

logger = logging.getLogger(__name__)

_G_DECIMALS = 6  # |g| equal to 1e-6 1/Å counts as a tie (same shell)
_ANGLE_DECIMALS = 9
MAX_BEAMS = 5000  # one (n, n) complex matrix is 0.37 GiB; building this geometry alone takes ~14 s


class Geometry:
    """Beams and tilts of a LARBED experiment.

    Parameters
    ----------
    crystal : Crystal
        The crystal (its lattice defines the reflections).
    voltage_kv : float
        Accelerating voltage [kV].
    zone_axis : sequence of 3 ints
        Zone axis [u v w] in direct-lattice coordinates.
    n_beams : int
        Number of ZOLZ reflections (beam 0 = 000) simulated, 2 to 5000 (``MAX_BEAMS``).
    n_tilts : int, optional
        Number of tilts of the disc grid; must be a disc count (1, 5, 13, …, 197, 253, 441, 797,
        1009, …); default 441. Derived (leave it out) when ``tilts_mrad`` is given.
    tilt_range_mrad : float, optional
        Tilt-disc radius θ_max [mrad] of the grid; default 70. Derived when ``tilts_mrad`` is given.
    tilt_center_mrad : (float, float)
        Centre of the tilt disc in the in-plane frame [mrad]; (0, 0) is the zone axis. Derived
        (the centroid) when ``tilts_mrad`` is given.
    tilts_mrad : (M, 2) array_like, optional
        Measured tilts [mrad] in the in-plane frame (x along the shortest ZOLZ reflection,
        y = z × x), any point set and count, replacing the disc grid.
    recorded : sequence of (h, k, l), optional
        The beams recorded (fitted, counted in R); default all ``n_beams`` simulated beams. Every
        recorded beam must be among the simulated ones.

    Examples
    --------
    >>> geo = Geometry(Crystal.builtin("SrTiO3"), 120, (0, 0, 1), 13, 441, 70)
    >>> geo.hkl[:5].tolist()
    [[0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]]
    >>> geo.n_reflections
    20
    """

    def __init__(
        self,
        crystal: Crystal,
        voltage_kv: float,
        zone_axis: Sequence[int] = (0, 0, 1),
        n_beams: int = 13,
        n_tilts: int | None = None,
        tilt_range_mrad: float | None = None,
        tilt_center_mrad: Sequence[float] = (0.0, 0.0),
        *,
        tilts_mrad=None,
        recorded=None,
    ):
        if not isinstance(crystal, Crystal):
            raise TypeError(f"crystal must be a larbed.Crystal, got {type(crystal).__name__}")
        self.crystal = crystal
        self.voltage_kv = float(voltage_kv)
        self.wavelength = electron_wavelength(self.voltage_kv)  # validates voltage
        self.gamma = relativistic_gamma(self.voltage_kv)
        self.k0 = 1.0 / self.wavelength

        za = np.asarray(zone_axis)
        if (
            za.shape != (3,)
            or not np.all(np.isfinite(za.astype(float)))
            or np.any(za != np.round(za))
        ):
            raise ValueError(f"zone_axis must be 3 integers [u v w], got {zone_axis!r}")
        za = za.astype(int)
        if not np.any(za):
            raise ValueError("zone_axis (0, 0, 0) is not a direction")
        self.zone_axis = tuple(int(x) for x in za)

        if isinstance(n_beams, bool) or not isinstance(n_beams, (int, np.integer)):
            raise TypeError(f"n_beams must be an integer, got {type(n_beams).__name__}")
        if n_beams < 2:
            raise ValueError(f"n_beams must be at least 2 (000 and one reflection), got {n_beams}")
        if n_beams > MAX_BEAMS:
            raise ValueError(f"n_beams={n_beams} is more than larbed simulates ({MAX_BEAMS}): one "
                             f"structure matrix takes {16 * float(n_beams) ** 2 / 2**30:.3g} GiB; "
                             "LARBED patterns converge with tens to a few hundred beams")
        self.n_beams = int(n_beams)

        if tilts_mrad is None:
            self._set_grid(441 if n_tilts is None else n_tilts,
                           70.0 if tilt_range_mrad is None else tilt_range_mrad, tilt_center_mrad)
        else:
            self._set_measured(tilts_mrad, n_tilts, tilt_range_mrad, tilt_center_mrad)

        self._build_frame_and_beams()
        self._build_tilts()
        self._build_reflections()
        self._set_recorded(recorded)

    # ------------------------------------------------------------------ tilts
    def _set_grid(self, n_tilts, tilt_range_mrad, tilt_center_mrad) -> None:
        self.tilts_measured = False
        self._radius = radius_for_count(n_tilts)
        self.n_tilts = int(n_tilts)
        t = float(tilt_range_mrad)
        if not math.isfinite(t) or t < 0 or (t == 0 and self._radius > 0):
            raise ValueError(
                f"tilt_range_mrad must be positive and finite, got {tilt_range_mrad!r}"
            )
        if t >= 1000:
            raise ValueError(
                f"tilt_range_mrad={t} is beyond the small-angle geometry (< 1000 mrad)"
            )
        self.tilt_range_mrad = t
        center = np.asarray(tilt_center_mrad, dtype=float)
        if center.shape != (2,) or not np.all(np.isfinite(center)):
            raise ValueError(f"tilt_center_mrad must be 2 finite numbers, got {tilt_center_mrad!r}")
        self.tilt_center_mrad = (float(center[0]), float(center[1]))
        self.tilt_step_mrad = t / self._radius if self._radius else 0.0

    def _set_measured(self, tilts_mrad, n_tilts, tilt_range_mrad, tilt_center_mrad) -> None:
        arr = np.asarray(tilts_mrad)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"tilts_mrad must be numbers [mrad], got dtype {arr.dtype}")
        arr = arr.astype(float)
        if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1:
            raise ValueError(f"tilts_mrad must have shape (n_tilts, 2) [mrad], got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("tilts_mrad contains NaN or infinite values")
        if np.any(np.abs(arr) >= 1000):
            raise ValueError("tilts_mrad beyond the small-angle geometry (|θ| < 1000 mrad)")
        if n_tilts is not None and int(n_tilts) != len(arr):
            raise ValueError(f"n_tilts={n_tilts} disagrees with the {len(arr)} tilts_mrad; leave it out")
        if tilt_range_mrad is not None:
            raise ValueError("tilt_range_mrad is derived from tilts_mrad; leave it out")
        if tuple(tilt_center_mrad) != (0.0, 0.0):
            raise ValueError("tilt_center_mrad is derived from tilts_mrad; leave it out")
        keys = np.round(arr, 9)
        if len(np.unique(keys, axis=0)) != len(arr):
            raise ValueError("tilts_mrad lists the same tilt twice")
        self.tilts_measured = True
        self.n_tilts = len(arr)
        center = arr.mean(axis=0)
        self.tilt_center_mrad = (float(center[0]), float(center[1]))
        self.tilt_range_mrad = float(np.max(np.linalg.norm(arr - center, axis=1)))
        if len(arr) > 1:  # median distance to the nearest neighbour: the pixel of the images
            from scipy.spatial import cKDTree

            dist, _ = cKDTree(arr).query(arr, k=2)
            self.tilt_step_mrad = float(np.median(dist[:, 1]))
        else:
            self.tilt_step_mrad = 0.0
        self._measured = arr
        ij = measured_pixels(arr, self.tilt_step_mrad)
        self._radius = int(np.max(np.abs(ij))) if len(arr) > 1 else 0
        self._measured_ij = ij

    def _set_recorded(self, recorded) -> None:
        if recorded is None:
            self.recorded_beams = np.arange(self.n_beams)
        else:
            lookup = {tuple(h): i for i, h in enumerate(self.hkl.tolist())}
            arr = np.asarray(recorded)
            if arr.size and arr.dtype.kind not in "fiu":
                raise TypeError(f"recorded must be (h, k, l) integers, got dtype {arr.dtype}")
            if arr.size == 0 or arr.ndim > 2 or arr.shape[-1] != 3:
                raise ValueError(f"recorded must be a non-empty list of (h, k, l), got shape "
                                 f"{arr.shape}")
            arr = arr.reshape(-1, 3)
            bad = ~np.all(np.isfinite(arr) & (arr == np.round(arr)), axis=1)
            if np.any(bad):
                raise ValueError(f"recorded beams must have integer (h, k, l), got "
                                 f"{arr[bad][:3].tolist()}")
            keys = [tuple(int(v) for v in h) for h in arr]
            missing = [h for h in keys if h not in lookup]
            if missing:
                raise ValueError(f"recorded beam(s) {missing[:6]} are not among the {self.n_beams} "
                                 "simulated beams (raise n_beams or check the zone axis)")
            if len(set(keys)) != len(keys):
                raise ValueError("recorded lists a beam twice")
            self.recorded_beams = np.array(sorted(lookup[h] for h in keys), dtype=int)
        self.recorded_beams.flags.writeable = False

    @property
    def recorded_hkl(self) -> np.ndarray:
        """(n_recorded, 3) hkl of the recorded beams."""
        return self.hkl[self.recorded_beams]

    @property
    def n_recorded(self) -> int:
        """Number of recorded (fitted) beams."""
        return len(self.recorded_beams)

    @property
    def unrecorded_mask(self) -> np.ndarray:
        """(n_beams,) True for simulated beams that are not recorded."""
        mask = np.ones(self.n_beams, bool)
        mask[self.recorded_beams] = False
        return mask

    def tilt_permutation(self, op: np.ndarray) -> np.ndarray | None:
        """Index of the tilt R·θ for every tilt θ (R a 2×2 in-plane operation about the zone axis),
        or None when R does not map the tilt set exactly onto itself.

        Grid tilts are mapped on the integer grid (R must keep the disc centre); measured tilts
        must match to 10⁻⁹ of the tilt step, so a permuted simulation is exact.
        """
        op = np.asarray(op, float)
        if not self.tilts_measured:
            center = np.asarray(self.tilt_center_mrad)
            if not np.allclose(op @ center, center, atol=1e-9 * max(1.0, self.tilt_range_mrad)):
                return None
            ij = self.tilt_ij
            r = int(np.max(np.abs(ij), initial=0))
            grid = -np.ones((2 * r + 1, 2 * r + 1), dtype=np.int64)
            grid[ij[:, 0] + r, ij[:, 1] + r] = np.arange(len(ij))
            mapped = np.rint(ij @ op.T).astype(np.int64)
            if np.any(np.abs(mapped) > r):
                return None
            perm = grid[mapped[:, 0] + r, mapped[:, 1] + r]
            return None if np.any(perm < 0) else perm
        from scipy.spatial import cKDTree

        dist, idx = cKDTree(self.tilt_mrad).query(self.tilt_mrad @ op.T)
        tol = 1e-9 * max(self.tilt_step_mrad, 1.0)
        if np.any(dist > tol) or len(np.unique(idx)) != len(idx):
            return None
        return idx

    # ------------------------------------------------------------------ construction
    def _zolz_candidates(self, g_max: float) -> tuple[np.ndarray, np.ndarray]:
        rec = self.crystal.reciprocal_vectors
        real = self.crystal.lattice_vectors
        nmax = [int(math.ceil(g_max * np.linalg.norm(real[i]))) + 1 for i in range(3)]
        rng = [np.arange(-n, n + 1) for n in nmax]
        h, k, l = (x.ravel() for x in np.meshgrid(*rng, indexing="ij"))
        u, v, w = self.zone_axis
        zolz = h * u + k * v + l * w == 0
        hkl = np.stack([h[zolz], k[zolz], l[zolz]], axis=1)
        g = hkl @ rec
        keep = np.linalg.norm(g, axis=1) <= g_max * (1 + 1e-9)
        return hkl[keep], g[keep]

    def _build_frame_and_beams(self) -> None:
        real = self.crystal.lattice_vectors
        z = np.asarray(self.zone_axis, dtype=float) @ real
        z /= np.linalg.norm(z)
        rec_len = np.linalg.norm(self.crystal.reciprocal_vectors, axis=1).min()
        g_max = rec_len
        while True:
            hkl, g = self._zolz_candidates(g_max)
            if len(hkl) >= self.n_beams + 1 and len(hkl) >= 3:
                gl = np.round(np.linalg.norm(g, axis=1), _G_DECIMALS)
                # make sure the shell of the last beam is complete and x axis exists
                if np.sort(gl)[self.n_beams - 1] < gl.max():
                    break
            g_max *= 1.5
            if g_max > 100:
                raise ValueError("could not enumerate reflections for this zone axis")
        glen = np.round(np.linalg.norm(g, axis=1), _G_DECIMALS)
        nonzero = glen > 0
        gmin = glen[nonzero].min()
        shortest = hkl[nonzero & (glen == gmin)]
        x_hkl = max(map(tuple, shortest.tolist()))
        x = np.asarray(x_hkl, dtype=float) @ self.crystal.reciprocal_vectors
        x -= np.dot(x, z) * z
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        self.frame = np.stack([x, y, z])  # rows: x, y, z unit vectors (Cartesian)
        gx, gy = g @ x, g @ y
        angle = np.round(np.mod(np.arctan2(gy, gx), 2 * np.pi), _ANGLE_DECIMALS)
        angle[angle >= np.round(2 * np.pi, _ANGLE_DECIMALS)] = 0.0
        order = np.lexsort((angle, glen))
        order = order[: self.n_beams]
        self.hkl = hkl[order].astype(int)
        self.g_cart = g[order]
        self.g_xy = np.stack([gx[order], gy[order]], axis=1)
        self.g_abs = np.linalg.norm(self.g_cart, axis=1)
        for arr in (self.hkl, self.g_cart, self.g_xy, self.g_abs):
            arr.flags.writeable = False

    def _build_tilts(self) -> None:
        if self.tilts_measured:
            self.tilt_ij = self._measured_ij
            self.tilt_mrad = self._measured
            self.k_t = self.tilt_mrad * 1e-3 * self.k0
            for arr in (self.tilt_ij, self.tilt_mrad, self.k_t):
                arr.flags.writeable = False
            return
        r = self._radius
        idx = np.arange(-r, r + 1)
        jj, ii = np.meshgrid(idx, idx, indexing="ij")
        inside = ii**2 + jj**2 <= r * r
        self.tilt_ij = np.stack([ii[inside], jj[inside]], axis=1).astype(int)
        scale = self.tilt_range_mrad / r if r > 0 else 0.0
        self.tilt_mrad = self.tilt_ij * scale + np.asarray(self.tilt_center_mrad)[None, :]
        # in-plane wave vector [1/Å]; small-angle: k_t = θ K
        self.k_t = self.tilt_mrad * 1e-3 * self.k0
        for arr in (self.tilt_ij, self.tilt_mrad, self.k_t):
            arr.flags.writeable = False

    def _build_reflections(self) -> None:
        n = self.n_beams
        diff = (self.hkl[:, None, :] - self.hkl[None, :, :]).reshape(-1, 3)  # g_n - g_m
        off = ~np.eye(n, dtype=bool).ravel()
        # canonical member of each Friedel pair: first non-zero index positive
        first = np.take_along_axis(diff, np.argmax(diff != 0, axis=1)[:, None], axis=1)[:, 0]
        sign = np.where(first > 0, 1, -1)
        canon = diff * sign[:, None]
        # one integer key per (h, k, l): a 1-D unique is many times faster than unique(axis=0)
        lo = canon.min(axis=0)
        width = canon.max(axis=0) - lo + 1
        key = ((canon[:, 0] - lo[0]) * width[1] + canon[:, 1] - lo[1]) * width[2] + canon[:, 2] - lo[2]
        ukeys, inverse = np.unique(key[off], return_inverse=True)
        reps_arr = np.stack([ukeys // (width[1] * width[2]) + lo[0],
                             (ukeys // width[2]) % width[1] + lo[1],
                             ukeys % width[2] + lo[2]], axis=1)
        g = reps_arr @ self.crystal.reciprocal_vectors
        glen = np.round(np.linalg.norm(g, axis=1), _G_DECIMALS)
        ang = np.round(
            np.mod(np.arctan2(g @ self.frame[1], g @ self.frame[0]), 2 * np.pi), _ANGLE_DECIMALS
        )
        order = np.lexsort((ang, glen))
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        index = -np.ones(n * n, dtype=np.int64)
        pair_sign = np.zeros(n * n, dtype=np.int64)
        index[off] = rank[np.ravel(inverse)]
        pair_sign[off] = sign[off]
        self.reflection_hkl = reps_arr[order]
        self.reflection_g = self.reflection_hkl @ self.crystal.reciprocal_vectors
        self.pair_index = index.reshape(n, n)
        self.pair_sign = pair_sign.reshape(n, n)
        for arr in (self.reflection_hkl, self.reflection_g, self.pair_index, self.pair_sign):
            arr.flags.writeable = False

    # ------------------------------------------------------------------ properties
    @property
    def tilt_radius(self) -> int:
        """Radius r of the integer tilt grid."""
        return self._radius

    @property
    def n_reflections(self) -> int:
        """Number of Friedel pairs {g, -g} entering the structure matrix (U_0 excluded)."""
        return len(self.reflection_hkl)

    @cached_property
    def reflection_xy(self) -> np.ndarray:
        """(n_reflections, 2) in-plane coordinates of the reflections [1/Å]."""
        return self.reflection_g @ self.frame[:2].T

    @cached_property
    def reflection_basis(self) -> np.ndarray:
        """(2, 2) rows: the two shortest non-collinear reflections (in-plane, 1/Å), a primitive
        basis of the reflections' 2-D lattice. Raises ValueError when all are collinear."""
        xy = self.reflection_xy
        order = np.argsort(np.linalg.norm(xy, axis=1), kind="stable")
        b1 = xy[order[0]]
        for i in order[1:]:
            if abs(b1[0] * xy[i, 1] - b1[1] * xy[i, 0]) > 1e-9 * np.linalg.norm(b1) * np.linalg.norm(xy[i]):
                return np.stack([b1, xy[i]])
        raise ValueError("the reflections are collinear: they span no 2-D lattice")

    @cached_property
    def beam_basis(self) -> np.ndarray:
        """(2, 2) rows: the two shortest non-collinear beam vectors (in-plane, 1/Å) spanning the
        beams' lattice; for collinear beams the second is the perpendicular of the first."""
        g = self.g_xy[1:]
        order = np.argsort(np.round(np.linalg.norm(g, axis=1), 6), kind="stable")
        b1 = g[order[0]]
        for idx in order[1:]:
            cand = g[idx]
            if abs(b1[0] * cand[1] - b1[1] * cand[0]) > 1e-9 * np.linalg.norm(b1) * np.linalg.norm(cand):
                return np.stack([b1, cand])
        return np.stack([b1, np.array([-b1[1], b1[0]])])

    @cached_property
    def excitation_diagonal(self) -> np.ndarray:
        """(n_tilts, n_beams) diagonal of the structure matrix, -(2 k_t·g + |g|²) [1/Å²]."""
        return self.excitation_diagonal_at(self.tilt_mrad)

    def excitation_diagonal_at(self, tilts_mrad: np.ndarray) -> np.ndarray:
        """(M, n_beams) diagonal -(2 k_t·g + |g|²) [1/Å²] at other tilts (M, 2) [mrad] (a tilt map)."""
        k_t = np.asarray(tilts_mrad, float) * 1e-3 * self.k0
        return -(2.0 * (k_t @ self.g_xy.T) + self.g_abs[None, :] ** 2)

    @cached_property
    def excitation_tilt_derivative(self) -> np.ndarray:
        """(2, n_beams) ∂/∂θ_x, ∂/∂θ_y of the diagonal, -2 K 10⁻³ g_x,y [1/Å² per mrad]."""
        return -2.0e-3 * self.k0 * self.g_xy.T

    def beam_labels(self) -> list[str]:
        """Beam labels such as ``'1 -1 0'``."""
        return [" ".join(str(int(x)) for x in h) for h in self.hkl]

    def reflection_labels(self) -> list[str]:
        """Reflection labels such as ``'1 1 0'``."""
        return [" ".join(str(int(x)) for x in h) for h in self.reflection_hkl]

    def to_attrs(self) -> dict:
        """Flat, netCDF-safe description (crystal included) for ``Dataset.attrs``.

        Measured tilts are stored as ``tilts_mrad`` (flat x, y pairs) and a recorded subset as
        ``recorded_hkl`` (flat h, k, l triples); :meth:`from_attrs` reads both back.
        """
        attrs = {
            "voltage_kv": self.voltage_kv,
            "zone_axis": list(self.zone_axis),
            "n_beams": self.n_beams,
            "n_tilts": self.n_tilts,
            "tilt_range_mrad": self.tilt_range_mrad,
            "tilt_center_mrad": list(self.tilt_center_mrad),
            "wavelength_angstrom": self.wavelength,
        }
        if self.tilts_measured:
            attrs["tilts_mrad"] = [float(v) for v in self.tilt_mrad.ravel()]
        if self.n_recorded != self.n_beams:
            attrs["recorded_hkl"] = [int(v) for v in self.recorded_hkl.ravel()]
        attrs.update(self.crystal.to_attrs())
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict) -> Geometry:
        """Rebuild a geometry from :meth:`to_attrs` output (e.g. a saved pattern's attrs)."""
        try:
            crystal = Crystal.from_attrs(attrs)
            recorded = attrs.get("recorded_hkl")
            recorded = None if recorded is None else np.asarray(recorded, int).reshape(-1, 3)
            common = (crystal, float(attrs["voltage_kv"]),
                      tuple(int(x) for x in np.atleast_1d(attrs["zone_axis"])), int(attrs["n_beams"]))
            if "tilts_mrad" in attrs:
                tilts = np.asarray(attrs["tilts_mrad"], float).reshape(-1, 2)
                return cls(*common, tilts_mrad=tilts, recorded=recorded)
            return cls(
                *common,
                int(attrs["n_tilts"]),
                float(attrs["tilt_range_mrad"]),
                tuple(float(x) for x in np.atleast_1d(attrs.get("tilt_center_mrad", (0.0, 0.0)))),
                recorded=recorded,
            )
        except KeyError as exc:
            raise ValueError(
                f"attributes do not describe a larbed geometry: missing {exc}"
            ) from exc

    @classmethod
    def from_csv(cls, path, crystal: Crystal, *, voltage_kv: float, zone_axis: Sequence[int],
                 n_beams: int | None = None) -> Geometry:
        """A geometry with the tilts and recorded beams of a CSV table (:func:`larbed.read_csv`).

        Parameters
        ----------
        path : str or path-like
            Table with columns ``h, k, l, tilt_x_mrad, tilt_y_mrad, intensity`` (any row order).
        crystal : Crystal
        voltage_kv : float
            Accelerating voltage [kV].
        zone_axis : (u, v, w)
        n_beams : int, optional
            Beams to simulate; default the fewest of larbed's beam set (nearest |g| first) that
            hold every beam of the file. The file's beams are the recorded (fitted) ones.

        Raises
        ------
        ValueError
            A beam of the file outside the zero-order Laue zone of ``zone_axis``, or not among
            ``n_beams`` simulated beams; tilts that are not distinct.
        """
        from .io.csv import read_table

        hkl, tilt, _, _ = read_table(path)
        beams = np.unique(hkl, axis=0)
        za = np.asarray(zone_axis, int)
        off_zone = beams[beams @ za != 0]
        if len(off_zone):
            raise ValueError(f"{os.fspath(path)!r}: beam(s) {off_zone[:5].tolist()} are not in the "
                             f"zero-order Laue zone of {za.tolist()} (h·u + k·v + l·w ≠ 0)")
        order = np.unique(np.round(tilt, 9), axis=0, return_index=True)[1]
        tilts = tilt[np.sort(order)]  # the file's order of first appearance
        want = {tuple(h) for h in beams.tolist()}
        counts = [n_beams] if n_beams is not None else range(max(len(beams), 2), 4 * len(beams) + 50)
        for n in counts:
            geo = cls(crystal, voltage_kv, zone_axis, int(n), tilts_mrad=tilts)
            have = {tuple(h) for h in geo.hkl.tolist()}
            if want <= have:
                if n_beams is None and n == len(beams):
                    logger.warning("Geometry.from_csv: n_beams=%d simulates only the recorded beams; "
                                   "unrecorded beams couple too: check that the fit converges with "
                                   "a larger n_beams (e.g. %d)", n, int(1.6 * n))
                return cls(crystal, voltage_kv, zone_axis, int(n), tilts_mrad=tilts,
                           recorded=beams)
        raise ValueError(f"{os.fspath(path)!r}: beam(s) {sorted(want - have)[:5]} are not among the "
                         f"{n} simulated beams (larbed's beam set: nearest |g| first); raise n_beams "
                         "or check the crystal, voltage and zone axis")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        same_tilts = (self.tilts_measured == other.tilts_measured and self.n_tilts == other.n_tilts
                      and np.array_equal(self.tilt_mrad, other.tilt_mrad))
        return (
            self.voltage_kv == other.voltage_kv and self.zone_axis == other.zone_axis
            and self.n_beams == other.n_beams and same_tilts
            and self.tilt_range_mrad == other.tilt_range_mrad
            and self.tilt_center_mrad == other.tilt_center_mrad
            and np.array_equal(self.recorded_beams, other.recorded_beams)
            and np.allclose(self.crystal.lattice_vectors, other.crystal.lattice_vectors)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        recorded = "" if self.n_recorded == self.n_beams else f" ({self.n_recorded} recorded)"
        kind = "measured tilts" if self.tilts_measured else "tilts"
        return (
            f"Geometry({self.crystal.name}, {self.voltage_kv:g} kV, zone axis {list(self.zone_axis)}, "
            f"{self.n_beams} beams{recorded}, {self.n_tilts} {kind}, {self.tilt_range_mrad:g} mrad)"
        )
