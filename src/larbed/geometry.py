"""Diffraction geometry: zone axis, beams (ZOLZ reflections) and incident-beam tilts.

Conventions (also in docs/conventions.rst):

* Beams are the zero-order Laue zone reflections g = h a* + k b* + l c* (h u + k v + l w = 0) with
  the smallest |g|. Order: by |g| (to 1e-6 1/Å), ties by azimuth angle in [0, 2π) measured
  counter-clockwise from the in-plane x axis. Beam 0 is 000.
* The in-plane frame: z along the zone axis [uvw] (real space), x along the shortest ZOLZ
  reflection (among equally short ones, the lexicographically largest (h, k, l)), y = z × x.
* Tilts are the integer points (i, j) with i² + j² ≤ r², ordered by j then i; the tilt angle is
  (i, j) / r · θ_max and the in-plane wave vector k_t = (i, j) / r · θ_max · K (θ in rad, K = 1/λ).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from functools import cached_property

import numpy as np

from .constants import electron_wavelength, relativistic_gamma
from .crystal import Crystal

__all__ = ["Geometry", "circle_tilt_count", "valid_tilt_counts"]

logger = logging.getLogger(__name__)

_G_DECIMALS = 6  # |g| equal to 1e-6 1/Å counts as a tie (same shell)
_ANGLE_DECIMALS = 9


def circle_tilt_count(radius: int) -> int:
    """Number of integer points (i, j) with i² + j² ≤ radius².

    Examples
    --------
    >>> [circle_tilt_count(r) for r in (8, 9, 12, 16, 18)]
    [197, 253, 441, 797, 1009]
    """
    r = int(radius)
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    i = np.arange(-r, r + 1)
    return int(np.sum(i[:, None] ** 2 + i[None, :] ** 2 <= r * r))


def valid_tilt_counts(max_radius: int = 40) -> dict[int, int]:
    """Mapping tilt count → grid radius r for r = 0 … max_radius."""
    return {circle_tilt_count(r): r for r in range(max_radius + 1)}


def _radius_for_count(n_tilts: int) -> int:
    if isinstance(n_tilts, bool) or not isinstance(n_tilts, (int, np.integer)):
        raise TypeError(f"n_tilts must be an integer, got {type(n_tilts).__name__}")
    n = int(n_tilts)
    counts = valid_tilt_counts(max(40, int(math.sqrt(max(n, 1) / math.pi)) + 3))
    if n in counts:
        return counts[n]
    options = sorted(counts, key=lambda c: (abs(c - n), c))[:4]
    raise ValueError(
        f"n_tilts={n} is not the number of points of a disc i² + j² ≤ r²; "
        f"nearest valid counts: {sorted(options)} (e.g. 197 (r=8), 441 (r=12), 797 (r=16))"
    )


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
        Number of ZOLZ reflections (beam 0 = 000), at least 2.
    n_tilts : int
        Number of tilts; must be a disc count (1, 5, 13, …, 197, 253, 441, 797, 1009, …).
    tilt_range_mrad : float
        Tilt-disc radius θ_max [mrad].
    tilt_center_mrad : (float, float)
        Centre of the tilt disc in the in-plane frame [mrad]; (0, 0) is the zone axis.

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
        n_tilts: int = 441,
        tilt_range_mrad: float = 70.0,
        tilt_center_mrad: Sequence[float] = (0.0, 0.0),
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
        self.n_beams = int(n_beams)

        self._radius = _radius_for_count(n_tilts)
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

        self._build_frame_and_beams()
        self._build_tilts()
        self._build_reflections()

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
        kg = self.k_t @ self.g_xy.T
        return -(2.0 * kg + self.g_abs[None, :] ** 2)

    def beam_labels(self) -> list[str]:
        """Beam labels such as ``'1 -1 0'``."""
        return [" ".join(str(int(x)) for x in h) for h in self.hkl]

    def reflection_labels(self) -> list[str]:
        """Reflection labels such as ``'1 1 0'``."""
        return [" ".join(str(int(x)) for x in h) for h in self.reflection_hkl]

    def to_attrs(self) -> dict:
        """Flat, netCDF-safe description (crystal included) for ``Dataset.attrs``."""
        attrs = {
            "voltage_kv": self.voltage_kv,
            "zone_axis": list(self.zone_axis),
            "n_beams": self.n_beams,
            "n_tilts": self.n_tilts,
            "tilt_range_mrad": self.tilt_range_mrad,
            "tilt_center_mrad": list(self.tilt_center_mrad),
            "wavelength_angstrom": self.wavelength,
        }
        attrs.update(self.crystal.to_attrs())
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict) -> Geometry:
        """Rebuild a geometry from :meth:`to_attrs` output (e.g. a saved pattern's attrs)."""
        try:
            crystal = Crystal.from_attrs(attrs)
            return cls(
                crystal,
                float(attrs["voltage_kv"]),
                tuple(int(x) for x in np.atleast_1d(attrs["zone_axis"])),
                int(attrs["n_beams"]),
                int(attrs["n_tilts"]),
                float(attrs["tilt_range_mrad"]),
                tuple(float(x) for x in np.atleast_1d(attrs.get("tilt_center_mrad", (0.0, 0.0)))),
            )
        except KeyError as exc:
            raise ValueError(
                f"attributes do not describe a larbed geometry: missing {exc}"
            ) from exc

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return (
            self.voltage_kv == other.voltage_kv
            and self.zone_axis == other.zone_axis
            and self.n_beams == other.n_beams
            and self.n_tilts == other.n_tilts
            and self.tilt_range_mrad == other.tilt_range_mrad
            and self.tilt_center_mrad == other.tilt_center_mrad
            and np.allclose(self.crystal.lattice_vectors, other.crystal.lattice_vectors)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Geometry({self.crystal.name}, {self.voltage_kv:g} kV, zone axis {list(self.zone_axis)}, "
            f"{self.n_beams} beams, {self.n_tilts} tilts, {self.tilt_range_mrad:g} mrad)"
        )
