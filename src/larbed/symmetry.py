"""Point-group symmetry of zone-axis patterns and structure factors, and origin alignment.

In the ZOLZ (projection) model a rotation or mirror R of the zone-axis plane maps the structure
matrix at tilt k_t with U_g onto the matrix at tilt R k_t with U_{R⁻¹g}, beams permuted. So when the
projected potential is invariant under R (U_{Rg} = U_g with the origin on the symmetry element), the
pattern obeys I(R g, R k_t) = I(g, k_t), and conversely a pattern with that symmetry has U_g with it
(up to an origin shift). This module

* lists the lattice operations of a geometry (:func:`lattice_operations`);
* detects which of them the *pattern* obeys (:func:`pattern_operations`; needs a tilt grid centred on
  the zone axis that the operation maps onto itself) or the geometry's *crystal* obeys
  (:func:`crystal_operations`);
* turns operations or user-given lists of reflections into groups of tied U_g
  (:func:`symmetry_groups`); a group tied to its own conjugate (e.g. by the 2-fold rotation, the
  projection's centre of symmetry) is real;
* moves the origin of a U_g vector to where the constraints hold best (:func:`align_to_groups`) or
  to where it best matches another vector (:func:`align_origin`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.optimize

from .geometry import Geometry

__all__ = [
    "SymmetryGroup",
    "align_origin",
    "align_to_groups",
    "crystal_operations",
    "groups_from_operations",
    "lattice_operations",
    "pattern_operations",
    "symmetrize",
    "symmetry_groups",
]

logger = logging.getLogger(__name__)

#: Two in-plane vectors are the same when they agree to this [1/Å] (reflections) …
G_MATCH_ATOL = 1e-6
#: … or to this fraction of the tilt-grid spacing (tilts).
TILT_MATCH_FRACTION = 1e-6
#: A crystal obeys an operation when U_Rg = U_g to this fraction of max |U_g|.
CRYSTAL_RTOL = 1e-8
#: Pattern symmetry without a dose: Σ|I(Rg, Rk) − I(g, k)| / Σ I at most this.
PATTERN_R_TOLERANCE = 1e-3
#: Pattern symmetry with a dose: mean (ΔI)²/(σ₁² + σ₂²) at most this (≈ 1 for Poisson noise alone).
PATTERN_CHI2_TOLERANCE = 2.0
#: Origin grid of the alignment searches (points per primitive direction) before local polishing.
ALIGN_GRID = 36


@dataclass(frozen=True)
class SymmetryGroup:
    """Reflections whose U_g are tied to one value z.

    Attributes
    ----------
    members : tuple of (int, int)
        (reflection index, sign): U_p = z for sign +1, U_p = z* for −1.
    real : bool
        z is real (the group is tied to its own conjugate).
    """

    members: tuple[tuple[int, int], ...]
    real: bool


def _candidate_operations() -> dict[str, np.ndarray]:
    ops = {}
    for deg in sorted({*range(0, 360, 30), *range(0, 360, 45)}):
        a = np.deg2rad(deg)
        ops[f"rot{deg}"] = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    for deg2 in range(0, 360, 30):  # mirror lines every 15°
        a = np.deg2rad(deg2)
        ops[f"m{deg2 / 2:g}"] = np.array([[np.cos(a), np.sin(a)], [np.sin(a), -np.cos(a)]])
    return ops


def _match(points: np.ndarray, mapped: np.ndarray, atol: float, signed: bool):
    """(index, sign, found): mapped[i] = sign[i] · points[index[i]] where found[i]."""
    diff = np.abs(mapped[:, None, :] - points[None, :, :]).max(axis=2) < atol
    idx = np.argmax(diff, axis=1)
    rows = np.arange(len(mapped))
    found = diff[rows, idx]
    sign = np.ones(len(mapped), dtype=int)
    if signed:
        neg = np.abs(mapped[:, None, :] + points[None, :, :]).max(axis=2) < atol
        neg_idx = np.argmax(neg, axis=1)
        use_neg = ~found & neg[rows, neg_idx]
        idx = np.where(use_neg, neg_idx, idx)
        sign[use_neg] = -1
        found = found | use_neg
    return idx, sign, found


def lattice_operations(geometry: Geometry) -> dict[str, np.ndarray]:
    """In-plane rotations and mirrors (2×2, frame coordinates) of the zone's 2-D reciprocal lattice
    (the holohedry: they map the lattice, not necessarily the finite beam set, onto itself).

    Examples
    --------
    >>> from larbed import Crystal, Geometry
    >>> geo = Geometry(Crystal.builtin("SrTiO3"), 120, (0, 0, 1), 13, 1, 70)
    >>> len(lattice_operations(geo))  # 4mm
    8
    """
    basis = _primitive_basis(geometry)
    inv = np.linalg.inv(basis.T)
    ops = {}
    for name, op in _candidate_operations().items():
        coeff = inv @ (op @ basis.T)  # images of b1, b2 in the basis
        if np.allclose(coeff, np.round(coeff), atol=1e-6):
            ops[name] = op
    return ops


def _reflection_map(geometry: Geometry, op: np.ndarray):
    xy = geometry.reflection_xy
    return _match(xy, xy @ op.T, G_MATCH_ATOL, True)


def crystal_operations(geometry: Geometry) -> list[str]:
    """Lattice operations under which the U_g of ``geometry.crystal`` (origin of its atom list)
    are invariant (tested on the reflections whose image is among the geometry's reflections)."""
    from .structure_factors import compute_ug

    ug = compute_ug(geometry.crystal, geometry).values
    scale = max(float(np.max(np.abs(ug))), 1e-300)
    names = []
    for name, op in lattice_operations(geometry).items():
        idx, sign, found = _reflection_map(geometry, op)
        mapped = np.where(sign > 0, ug[idx], np.conj(ug[idx]))
        if np.max(np.abs(mapped - ug)[found], initial=0.0) <= CRYSTAL_RTOL * scale:
            names.append(name)
    return names


#: Pattern symmetry is tested only when the operation maps at least this fraction of the tilts
#: onto tilts (a grid centred on the zone axis) …
MIN_TILT_FRACTION = 0.99
#: … and at least this fraction of the beams onto beams (a cut shell leaves a few out).
MIN_BEAM_FRACTION = 0.8


def pattern_operations(intensity: np.ndarray, geometry: Geometry, *, dose: float | None = None,
                       tolerance: float | None = None) -> list[str]:
    """Lattice operations that the pattern obeys, I(R g, R k_t) = I(g, k_t).

    Parameters
    ----------
    intensity : ndarray
        (n_tilts, n_beams) intensities.
    geometry : Geometry
    dose : float, optional
        Electrons per tilt: test with Poisson variances (mean (ΔI)²/(σ₁² + σ₂²) ≤ ``tolerance``,
        default :data:`PATTERN_CHI2_TOLERANCE`); without a dose the test is
        Σ|ΔI| / Σ I ≤ ``tolerance`` (default :data:`PATTERN_R_TOLERANCE`).
    tolerance : float, optional

    Returns
    -------
    list of str
        Names of the operations (keys of :func:`lattice_operations`). An operation is testable when
        it maps the tilt grid onto itself (:data:`MIN_TILT_FRACTION`) and most beams onto beams
        (:data:`MIN_BEAM_FRACTION`); the comparison uses the beams whose image is a beam. Others are
        left out (logged).
    """
    inten = np.asarray(intensity, dtype=float)
    spacing = geometry.tilt_range_mrad / max(geometry.tilt_radius, 1)
    names = []
    for name, op in lattice_operations(geometry).items():
        b_idx, _, b_ok = _match(geometry.g_xy, geometry.g_xy @ op.T, G_MATCH_ATOL, False)
        t_idx, _, t_ok = _match(geometry.tilt_mrad, geometry.tilt_mrad @ op.T,
                                TILT_MATCH_FRACTION * spacing + 1e-12, False)
        if b_ok.mean() < MIN_BEAM_FRACTION or t_ok.mean() < MIN_TILT_FRACTION:
            logger.info("symmetry: %s cannot be tested on this beam set / tilt grid", name)
            continue
        rows, cols = np.flatnonzero(t_ok), np.flatnonzero(b_ok)
        mine = inten[np.ix_(rows, cols)]
        other = inten[np.ix_(t_idx[rows], b_idx[cols])]
        if dose is None:
            stat = float(np.abs(other - mine).sum() / max(mine.sum(), 1e-300))
            ok = stat <= (PATTERN_R_TOLERANCE if tolerance is None else tolerance)
        else:
            var = np.maximum(mine, 1.0 / dose) / dose
            var2 = np.maximum(other, 1.0 / dose) / dose
            stat = float(np.mean((other - mine) ** 2 / (var + var2)))
            ok = stat <= (PATTERN_CHI2_TOLERANCE if tolerance is None else tolerance)
        logger.debug("symmetry: %s statistic %.3g -> %s", name, stat, ok)
        if ok:
            names.append(name)
    return names


def _hkl_lookup(geometry: Geometry, key) -> tuple[int, int]:
    parts = key.replace(",", " ").split() if isinstance(key, str) else list(key)
    if len(parts) != 3:
        raise ValueError(f"a reflection must be (h, k, l), got {key!r}")
    hkl = tuple(int(v) for v in parts)
    table = {tuple(r): i for i, r in enumerate(geometry.reflection_hkl.tolist())}
    if hkl in table:
        return table[hkl], 1
    neg = tuple(-v for v in hkl)
    if neg in table:
        return table[neg], -1
    raise ValueError(f"reflection {hkl} does not enter the structure matrix of {geometry}")


def _groups_from_edges(n: int, edges) -> list[SymmetryGroup]:
    adj: dict[int, list[tuple[int, int]]] = {i: [] for i in range(n)}
    for a, b, s in edges:
        adj[a].append((b, s))
        adj[b].append((a, s))
    done = np.zeros(n, dtype=bool)
    groups = []
    for root in range(n):
        if done[root]:
            continue
        members = {root: 1}
        real = False
        queue = [root]
        while queue:
            a = queue.pop()
            for b, s in adj[a]:
                sb = members[a] * s
                if b in members:
                    real |= members[b] != sb
                else:
                    members[b] = sb
                    queue.append(b)
        done[list(members)] = True
        groups.append(SymmetryGroup(tuple(sorted(members.items())), bool(real)))
    return groups


def groups_from_operations(geometry: Geometry, operations: Sequence[str]) -> list[SymmetryGroup]:
    """Orbits of the reflections under the named operations (U_{Rg} = U_g)."""
    ops = lattice_operations(geometry)
    edges = []
    for name in operations:
        if name not in ops:
            raise ValueError(f"unknown operation {name!r} for this geometry; choose from {sorted(ops)}")
        idx, sign, found = _reflection_map(geometry, ops[name])
        edges.extend((a, int(idx[a]), int(sign[a])) for a in np.flatnonzero(found))
    return _groups_from_edges(geometry.n_reflections, edges)


def symmetry_groups(geometry: Geometry, symmetry="crystal", *, intensity=None,
                    dose: float | None = None) -> list[SymmetryGroup]:
    """Groups of reflections whose U_g are tied by symmetry.

    Parameters
    ----------
    geometry : Geometry
    symmetry : {'auto', 'pattern', 'crystal'} or sequence
        ``'pattern'`` (alias ``'auto'``): the operations the pattern obeys
        (:func:`pattern_operations`; needs ``intensity``) — no knowledge of the atoms.
        ``'crystal'``: the operations under which the U_g of ``geometry.crystal`` are invariant.
        A list of :class:`SymmetryGroup` (used as is), of operation names (keys of
        :func:`lattice_operations`), or of groups, each a
        sequence of reflections ``(h, k, l)`` / ``'h k l'`` with equal U_g (a reflection given as −g
        stands for U_{−g} = U_g*).
    intensity : ndarray, optional
        (n_tilts, n_beams) pattern for ``'pattern'``.
    dose : float, optional
        Electrons per tilt of the pattern (noise-aware test).

    Returns
    -------
    list of SymmetryGroup
        Every reflection is in exactly one group.

    Examples
    --------
    >>> from larbed import Crystal, Geometry
    >>> geo = Geometry(Crystal.builtin("SrTiO3"), 120, (0, 0, 1), 13, 1, 70)
    >>> groups = symmetry_groups(geo, "crystal")
    >>> [len(g.members) for g in groups][:5], all(g.real for g in groups)  # {100} {110} {200} {210} {220}
    ([2, 2, 2, 4, 2], True)
    """
    if isinstance(symmetry, str):
        if symmetry in ("auto", "pattern"):
            if intensity is None:
                raise ValueError("symmetry='pattern' needs the pattern's intensities")
            ops = pattern_operations(intensity, geometry, dose=dose)
            logger.info("symmetry detected in the pattern: %s", ", ".join(ops) or "none")
            return groups_from_operations(geometry, ops)
        if symmetry == "crystal":
            return groups_from_operations(geometry, crystal_operations(geometry))
        raise ValueError(
            f"symmetry must be None, 'auto', 'pattern', 'crystal', a list of operation names or "
            f"a list of groups of (h, k, l); got {symmetry!r}"
        )
    items = list(symmetry)
    if items and all(isinstance(x, SymmetryGroup) for x in items):
        covered = sorted(q for g in items for q, _ in g.members)
        if covered != list(range(geometry.n_reflections)):
            raise ValueError("SymmetryGroup list must hold every reflection exactly once")
        return items
    if items and all(isinstance(x, str) and x in lattice_operations(geometry) for x in items):
        return groups_from_operations(geometry, items)
    seen: dict[int, int] = {}
    edges = []
    for gi, group in enumerate(items):
        if isinstance(group, str):
            raise ValueError(f"a symmetry group must be a list of reflections, got {group!r}")
        members = [_hkl_lookup(geometry, key) for key in group]
        for q, _ in members:
            if q in seen and seen[q] != gi:
                raise ValueError(f"reflection {geometry.reflection_hkl[q].tolist()} is in two groups")
            seen[q] = gi
        first, s0 = members[0]
        edges.extend((first, q, s * s0) for q, s in members[1:])
    return _groups_from_edges(geometry.n_reflections, edges)


def symmetrize(values: np.ndarray, groups: Sequence[SymmetryGroup]) -> np.ndarray:
    """Project U_g onto the constraints: each group gets the mean of its (conjugated) members."""
    vals = np.asarray(values, dtype=complex)
    out = vals.copy()
    for g in groups:
        z = np.mean([vals[q] if s > 0 else np.conj(vals[q]) for q, s in g.members])
        if g.real:
            z = z.real
        for q, s in g.members:
            out[q] = z if s > 0 else np.conj(z)
    return out


def _primitive_basis(geometry: Geometry) -> np.ndarray:
    """Two shortest non-collinear reflections (in-plane, 1/Å): a primitive basis of their lattice."""
    xy = geometry.reflection_xy
    order = np.argsort(np.linalg.norm(xy, axis=1), kind="stable")
    b1 = xy[order[0]]
    for i in order[1:]:
        if abs(b1[0] * xy[i, 1] - b1[1] * xy[i, 0]) > 1e-9 * np.linalg.norm(b1) * np.linalg.norm(xy[i]):
            return np.stack([b1, xy[i]])
    raise ValueError("the reflections are collinear: no in-plane origin to align")


def _origin_search(geometry: Geometry, cost, grid: int = ALIGN_GRID) -> np.ndarray:
    """r0 (in-plane x, y [Å]) minimising cost(phases (P,)) over a grid of origins, then polished."""
    basis = _primitive_basis(geometry)
    inv = np.linalg.inv(basis)  # r0 = inv @ (f1, f2): b_i · r0 = f_i
    xy = geometry.reflection_xy

    def total(f):
        r0 = inv @ f
        return cost(np.exp(2j * np.pi * (xy @ r0)))

    f = np.arange(grid) / grid
    best = min(((total(np.array([a, b])), a, b) for a in f for b in f), key=lambda x: x[0])
    res = scipy.optimize.minimize(total, np.array(best[1:]), method="Nelder-Mead",
                                  options={"xatol": 1e-9, "fatol": 1e-16, "maxiter": 400})
    return inv @ (res.x if res.fun <= best[0] else np.array(best[1:]))


def align_to_groups(geometry: Geometry, values: np.ndarray, groups: Sequence[SymmetryGroup]):
    """Shift the origin so that U_g best obeys the constraints; return (projected values, r0 [Å]).

    The violation is Σ_p |U_p − symmetrize(U)_p|², minimised over in-plane origins (grid, then
    Nelder–Mead); the returned values are the symmetrized, shifted U_g.
    """
    vals = np.asarray(values, dtype=complex)

    def cost(phase):
        shifted = vals * phase
        return float(np.sum(np.abs(shifted - symmetrize(shifted, groups)) ** 2))

    r0 = _origin_search(geometry, cost)
    shifted = vals * np.exp(2j * np.pi * (geometry.reflection_xy @ r0))
    return symmetrize(shifted, groups), r0


def align_origin(geometry: Geometry, values: np.ndarray, reference: np.ndarray):
    """Shift the origin of ``values`` to best match ``reference``: (shifted values, r0 [Å]).

    Minimises Σ_p |U_p exp(2πi g_p·r0) − U_ref,p|² over in-plane r0 (grid, then Nelder–Mead), which
    covers the discrete origin choices (e.g. a shift by half a cell in SrTiO3) as well.
    """
    vals = np.asarray(values, dtype=complex)
    ref = np.asarray(reference, dtype=complex)
    r0 = _origin_search(geometry, lambda phase: float(np.sum(np.abs(vals * phase - ref) ** 2)))
    return vals * np.exp(2j * np.pi * (geometry.reflection_xy @ r0)), r0
