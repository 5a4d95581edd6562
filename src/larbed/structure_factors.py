"""Structure factors U_g: computed from a crystal, random, or user-given (thesis channels).

A U_g vector is an ``xr.DataArray`` over ``reflection`` holding one complex value [1/Å²] per
Friedel pair {g, -g} that enters the structure matrix (U_{-g} = U_g*, U_0 left out), in the order of
:attr:`Geometry.reflection_hkl`, with coordinates ``h``, ``k``, ``l``, ``gx``, ``gy`` [1/Å].
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from ._deprecation import moved_names
from ._random import rng_from
from ._types import RANDOM_PRIORS, RandomPrior
from .crystal import Crystal
from .geometry import Geometry
from .scattering import Parameterization, scattering_factor
from .schema import labelled_ug

__all__ = [
    "compute_ug",
    "random_ug",
    "input_ug",
    "normalize_ug",
    "structure_factor",
    "ug_matrix",
    "RandomPrior",
]

logger = logging.getLogger(__name__)

__getattr__ = moved_names(__name__, {"shift_origin": "larbed.origin"})

#: Relative tolerance for the Hermitian check U_{-g} = U_g* in user input.
HERMITIAN_RTOL = 1e-9
#: compute_ug: the crystal's cell must equal the geometry's to this (relative; rounding in files).
CELL_RTOL = 1e-6


def structure_factor(
    crystal: Crystal,
    hkl: np.ndarray,
    voltage_kv: float,
    parameterization: Parameterization = "lobato",
) -> np.ndarray:
    """U_g = γ/(πΩ) Σ_j occ_j f_j(|g|) exp(-B_j |g|²/4) exp(-2πi g·r_j) [1/Å²] for rows of ``hkl``.

    An atom with ``u_aniso`` has exp(−2π² Σ U^ij h_i h_j a*_i a*_j) in place of exp(−B|g|²/4).
    """
    from .constants import relativistic_gamma
    from .spacegroup import U_PAIRS, u_to_beta

    hkl = np.atleast_2d(np.asarray(hkl, dtype=float))
    g = np.linalg.norm(hkl @ crystal.reciprocal_vectors, axis=1)
    total = np.zeros(len(hkl), dtype=complex)
    cache: dict[str, np.ndarray] = {}
    beta = u_to_beta(np.linalg.norm(crystal.reciprocal_vectors, axis=1))
    hh = np.stack([hkl[:, i] * hkl[:, j] * (1 if i == j else 2) for i, j in U_PAIRS], axis=1)
    for atom in crystal.atoms:
        if atom.symbol not in cache:
            cache[atom.symbol] = scattering_factor(atom.symbol, g, parameterization)
        f = cache[atom.symbol]
        phase = np.exp(-2j * np.pi * (hkl @ np.asarray(atom.position)))
        if atom.u_aniso is None:
            dw = np.exp(-atom.b_iso * g**2 / 4.0)
        else:
            dw = np.exp(-hh @ (beta * np.asarray(atom.u_aniso)))
        total += atom.occupancy * f * dw * phase
    return relativistic_gamma(voltage_kv) / (np.pi * crystal.volume) * total


def compute_ug(
    crystal: Crystal, geometry: Geometry, parameterization: Parameterization = "lobato"
) -> xr.DataArray:
    """ComputeUg channel: U_g of a crystal for every reflection of ``geometry``.

    Parameters
    ----------
    crystal : Crystal
        Atoms and cell (normally ``geometry.crystal``).
    geometry : Geometry
        Defines the reflections and the voltage.
    parameterization : {'lobato', 'kirkland'}
        Scattering-factor table.

    Returns
    -------
    xarray.DataArray
        Complex U_g [1/Å²] over ``reflection``; ``attrs['u0']`` holds U_0 (real) [1/Å²].

    Examples
    --------
    >>> from larbed import Crystal, Geometry
    >>> xtal = Crystal.builtin("SrTiO3")
    >>> ug = compute_ug(xtal, Geometry(xtal, 120, (0, 0, 1), 13, 1, 70))
    >>> round(float(ug.sel(reflection=(ug.h == 1) & (ug.k == 1)).real[0]), 6)
    0.050729
    """
    if not isinstance(crystal, Crystal):
        raise TypeError(f"crystal must be a larbed.Crystal, got {type(crystal).__name__}")
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a larbed.Geometry, got {type(geometry).__name__}")
    if not np.allclose(crystal.cell, geometry.crystal.cell, rtol=CELL_RTOL, atol=0):
        raise ValueError(
            f"the crystal's cell {crystal.cell} differs from that of the geometry's crystal "
            f"{geometry.crystal.cell}: the U_g would belong to other |g| than the beams; build "
            "the geometry from this crystal (or give geometry.crystal)"
        )
    values = structure_factor(
        crystal, geometry.reflection_hkl, geometry.voltage_kv, parameterization
    )
    u0 = structure_factor(crystal, np.zeros((1, 3)), geometry.voltage_kv, parameterization)[0].real
    dark = dark_beams(geometry, values)
    if dark.size:
        labels = geometry.beam_labels()
        logger.warning("compute_ug: %d of the %d beams (%s%s) are coupled to 000 by no U_g of %s "
                       "(lattice centring): they stay dark at every tilt; raise n_beams for more "
                       "live beams", dark.size, geometry.n_beams, ", ".join(labels[i] for i in dark[:4]),
                       " …" if dark.size > 4 else "", crystal.name)
    return labelled_ug(
        geometry,
        values,
        {
            "source": "compute",
            "parameterization": parameterization,
            "crystal_name": crystal.name,
            "u0": float(u0),
        },
    )


def dark_beams(geometry: Geometry, values: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """Indices of the beams no chain of non-zero U_g (|U| > rtol · max |U|) links to 000: with these
    U_g they get no intensity at any tilt (e.g. the mixed-parity hkl of an F-centred cell)."""
    mat = np.abs(ug_matrix(geometry, values))
    linked = mat > rtol * max(float(mat.max(initial=0.0)), 1e-300)
    reached = np.zeros(geometry.n_beams, bool)
    reached[0] = True
    while True:
        grown = reached | linked[reached].any(axis=0)
        if np.array_equal(grown, reached):
            return np.flatnonzero(~reached)
        reached = grown


def random_ug(
    geometry: Geometry,
    seed: int | np.random.Generator | None = None,
    *,
    prior: RandomPrior = "uniform",
    ug_range: float = 0.2,
    n_atoms: int | None = None,
    elements: Sequence[str] = ("O", "Mg", "Ti", "Zn", "Sr"),
    parameterization: Parameterization = "lobato",
) -> xr.DataArray:
    """RandomUg channel: random structure factors.

    Parameters
    ----------
    geometry : Geometry
    seed : int or numpy.random.Generator, optional
        Seed for reproducible draws.
    prior : {'uniform', 'physical'}
        ``'uniform'``: Re and Im uniform in ±``ug_range`` (thesis). ``'physical'``: U_g of a random
        arrangement of ``n_atoms`` atoms drawn from ``elements`` in the geometry's unit cell, which
        gives magnitudes and correlations like real crystals.
    ug_range : float
        Half-width of the uniform prior [1/Å²].
    n_atoms : int, optional
        Atoms in the random cell (physical prior); default: as many as the geometry's crystal.
    elements : sequence of str
        Element pool (physical prior).
    """
    rng = rng_from(seed)
    if prior not in RANDOM_PRIORS:
        raise ValueError(f"unknown prior {prior!r}; choose one of {RANDOM_PRIORS}")
    if prior == "uniform":
        if not np.isfinite(ug_range) or ug_range <= 0:
            raise ValueError(f"ug_range must be positive [1/Å²], got {ug_range}")
        m = geometry.n_reflections
        values = rng.uniform(-ug_range, ug_range, m) + 1j * rng.uniform(-ug_range, ug_range, m)
        return labelled_ug(
            geometry, values, {"source": "random", "prior": prior, "ug_range": float(ug_range)}
        )
    n = len(geometry.crystal.atoms) if n_atoms is None else int(n_atoms)
    if n < 1:
        raise ValueError(f"n_atoms must be >= 1, got {n}")
    symbols = rng.choice(list(elements), size=n)
    positions = rng.uniform(0, 1, (n, 3))
    xtal = Crystal(
        geometry.crystal.cell,
        [(s, tuple(p)) for s, p in zip(symbols, positions, strict=True)],
        name="random",
    )
    values = structure_factor(xtal, geometry.reflection_hkl, geometry.voltage_kv, parameterization)
    u0 = structure_factor(xtal, np.zeros((1, 3)), geometry.voltage_kv, parameterization)[0].real
    return labelled_ug(geometry, values, {"source": "random", "prior": prior, "u0": float(u0)})


def _hkl_key(key) -> tuple[int, int, int]:
    if isinstance(key, str):
        parts = key.replace(",", " ").split()
    else:
        parts = list(key)
    if len(parts) != 3:
        raise ValueError(f"reflection key must be (h, k, l), got {key!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def _check_finite(values: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(values)):
        bad = np.flatnonzero(~np.isfinite(values))
        raise ValueError(f"{what} contains NaN or infinite values at positions {bad[:10].tolist()}")


def input_ug(
    geometry: Geometry,
    values: Mapping | Sequence | np.ndarray | xr.DataArray,
    *,
    fill_missing: complex | None = None,
) -> xr.DataArray:
    """InputUg channel: user-given U_g.

    Parameters
    ----------
    geometry : Geometry
    values : mapping or array_like
        Either a mapping (h, k, l) → complex (a string ``'1 1 0'`` also works as key; a key may be g
        or -g, and if both are given they must satisfy U_{-g} = U_g*), or an array of
        ``geometry.n_reflections`` complex values in the order of ``geometry.reflection_hkl`` [1/Å²].
    fill_missing : complex, optional
        Value for reflections the mapping omits; by default omitting one is an error.
    """
    if isinstance(values, xr.DataArray):
        if all(c in values.coords for c in ("h", "k", "l")) and values.ndim == 1:
            # labelled: match by (h, k, l), never by position (another geometry's order differs)
            hkl = np.stack([values.h.values, values.k.values, values.l.values], axis=1).tolist()
            values = dict(zip(map(tuple, hkl), values.values.tolist(), strict=True))
        else:
            values = values.values
    if isinstance(values, Mapping):
        lookup = {tuple(r): i for i, r in enumerate(geometry.reflection_hkl.tolist())}
        out = np.full(geometry.n_reflections, np.nan + 0j)
        for key, val in values.items():
            hkl = _hkl_key(key)
            val = complex(val)
            if not np.isfinite(val):  # NaN also marks "missing" below: reject it here
                raise ValueError(f"U_g at {hkl} is NaN or infinite: {val}")
            if hkl in lookup:
                idx, v = lookup[hkl], val
            elif tuple(-x for x in hkl) in lookup:
                idx, v = lookup[tuple(-x for x in hkl)], val.conjugate()
            else:
                raise ValueError(
                    f"reflection {hkl} does not enter the structure matrix of {geometry}"
                )
            if np.isfinite(out[idx]) and not np.isclose(
                out[idx], v, rtol=HERMITIAN_RTOL, atol=1e-15
            ):
                raise ValueError(
                    f"U_g is not Hermitian at {hkl}: U_g and U_-g* differ ({out[idx]} vs {v})"
                )
            out[idx] = v
        missing = np.flatnonzero(np.isnan(out))
        if missing.size:
            if fill_missing is None:
                names = [tuple(geometry.reflection_hkl[i].tolist()) for i in missing[:8]]
                raise ValueError(
                    f"{missing.size} reflections have no value, e.g. {names}; give them or set fill_missing"
                )
            out[missing] = complex(fill_missing)
        arr = out
    else:
        arr = np.asarray(values)
        if arr.dtype.kind not in "fciu":
            raise TypeError(f"U_g values must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(complex)
        if arr.shape != (geometry.n_reflections,):
            raise ValueError(
                f"U_g array must have shape ({geometry.n_reflections},) (one per Friedel pair), got {arr.shape}"
            )
    _check_finite(arr, "U_g")
    return labelled_ug(geometry, arr, {"source": "input"})


def normalize_ug(geometry: Geometry, values: Mapping | np.ndarray) -> xr.DataArray:
    """Normalization function (thesis 3.1.2): make any set of U_g Hermitian, U_{-g} = U_g*.

    Parameters
    ----------
    geometry : Geometry
    values : mapping or ndarray
        Either a mapping (h, k, l) → complex over signed reflections (g and -g may disagree), or an
        (n_beams, n_beams) matrix whose off-diagonal element (n, m) is U_{g_n - g_m}.

    Returns
    -------
    xarray.DataArray
        One value per Friedel pair: the mean of U_g and U_{-g}*.
    """
    total = np.zeros(geometry.n_reflections, dtype=complex)
    count = np.zeros(geometry.n_reflections)
    if isinstance(values, Mapping):
        lookup = {tuple(r): i for i, r in enumerate(geometry.reflection_hkl.tolist())}
        for key, val in values.items():
            hkl = _hkl_key(key)
            if hkl in lookup:
                total[lookup[hkl]] += complex(val)
                count[lookup[hkl]] += 1
            elif tuple(-x for x in hkl) in lookup:
                total[lookup[tuple(-x for x in hkl)]] += complex(val).conjugate()
                count[lookup[tuple(-x for x in hkl)]] += 1
            else:
                raise ValueError(
                    f"reflection {hkl} does not enter the structure matrix of {geometry}"
                )
    else:
        mat = np.asarray(values, dtype=complex)
        n = geometry.n_beams
        if mat.shape != (n, n):
            raise ValueError(f"U_g matrix must have shape ({n}, {n}), got {mat.shape}")
        off = ~np.eye(n, dtype=bool)
        idx = geometry.pair_index[off]
        vals = np.where(geometry.pair_sign[off] > 0, mat[off], np.conj(mat[off]))
        np.add.at(total, idx, vals)
        np.add.at(count, idx, 1)
    if np.any(count == 0):
        missing = [
            tuple(geometry.reflection_hkl[i].tolist()) for i in np.flatnonzero(count == 0)[:8]
        ]
        raise ValueError(f"no value given for reflections {missing}")
    out = total / count
    _check_finite(out, "U_g")
    return labelled_ug(geometry, out, {"source": "normalized"})


def ug_matrix(geometry: Geometry, ug: xr.DataArray | np.ndarray) -> np.ndarray:
    """(n_beams, n_beams) Hermitian matrix with U_{g_n - g_m} off the diagonal and 0 on it [1/Å²]."""
    vals = np.asarray(ug.values if isinstance(ug, xr.DataArray) else ug, dtype=complex)
    if vals.shape != (geometry.n_reflections,):
        raise ValueError(f"U_g must have shape ({geometry.n_reflections},), got {vals.shape}")
    idx = np.where(geometry.pair_index < 0, 0, geometry.pair_index)
    mat = np.where(geometry.pair_sign > 0, vals[idx], np.conj(vals[idx]))
    mat[geometry.pair_index < 0] = 0.0
    return mat
