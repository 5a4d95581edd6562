"""Space groups: operations, the asymmetric unit and what symmetry lets move.

The operations come from gemmi (:func:`gemmi.find_spacegroup_by_name`, :class:`gemmi.SpaceGroup`);
this module turns them into what a refinement needs:

* :func:`complete` — the atoms of the cell from the asymmetric unit (images of every atom,
  anisotropic displacement tensors rotated with them);
* :func:`find_sites` — the asymmetric unit of a cell: one :class:`Site` per orbit, with the
  operation that carries the representative atom onto each member;
* :func:`displacement_basis` and :func:`adp_basis` — the coordinate changes and the anisotropic
  displacement parameters (U\\ :sup:`ij`) the site symmetry allows (special positions);
* :func:`ug_ties` — structure factors tied by the space group, with their phases:
  U(h R) = exp(2πi h·t) U(h) for every operation (R, t).

Conventions: fractional coordinates (column vectors), r' = R r + t; Miller indices h are rows;
U\\ :sup:`ij` as in CIF, the Debye–Waller factor exp(−2π² Σ U\\ :sup:`ij` h_i h_j a*_i a*_j).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["RANK_TOL", "U_NAMES", "U_PAIRS", "SpaceGroup", "Site", "TieGroup", "adp_basis", "complete",
           "displacement_basis", "find_sites", "reduced_basis", "rotate_u", "u_to_beta", "ug_ties"]

logger = logging.getLogger(__name__)

#: Singular values below this (relative) count as zero in the constraint null spaces.
RANK_TOL = 1e-9
#: Index pairs (i, j) of the six U^ij components, in CIF order U11 U22 U33 U12 U13 U23.
U_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
U_NAMES = ("U11", "U22", "U33", "U12", "U13", "U23")
#: A cell obeys a space group when R^T G R = G to this (relative) for every rotation R.
METRIC_RTOL = 1e-5


@dataclass(frozen=True, eq=False)
class SpaceGroup:
    """A space group: its Hermann–Mauguin name, number and operations (r' = R r + t).

    ``triplets`` holds the operations as CIF triplets ('x,y,z', '-y,x-y,z+1/2', …).

    Build one with :meth:`from_spec` from a name (``'P m -3 m'``, ``'Pm-3m'``, ``'P63mc'``), an
    International Tables number (1–230), or a :class:`gemmi.SpaceGroup`.

    Examples
    --------
    >>> sg = SpaceGroup.from_spec("P63mc")
    >>> sg.name, sg.number, len(sg.rotations)
    ('P 63 m c', 186, 12)
    """

    name: str
    number: int
    rotations: np.ndarray = field(repr=False)
    translations: np.ndarray = field(repr=False)
    triplets: tuple[str, ...] = field(repr=False, default=())

    @classmethod
    def from_spec(cls, spec) -> SpaceGroup:
        import gemmi

        if isinstance(spec, SpaceGroup):
            return spec
        if isinstance(spec, (bool, np.bool_)):
            raise TypeError(f"space group must be a name, a number or a gemmi.SpaceGroup, got {spec!r}")
        if isinstance(spec, (int, np.integer)):
            if not 1 <= int(spec) <= 230:
                raise ValueError(f"space-group number must be 1-230, got {spec}")
            sg = gemmi.find_spacegroup_by_number(int(spec))
        elif isinstance(spec, str):
            sg = gemmi.find_spacegroup_by_name(spec.strip())
            if sg is None:
                raise ValueError(f"unknown space group {spec!r}; give a Hermann-Mauguin name "
                                 "such as 'P m -3 m' or 'P 63 m c', or a number 1-230")
        elif isinstance(spec, gemmi.SpaceGroup):
            sg = spec
        else:
            raise TypeError(f"space group must be a name, a number or a gemmi.SpaceGroup, got "
                            f"{type(spec).__name__}")
        ops = list(sg.operations())
        rot = np.array([op.rot for op in ops], dtype=float) / ops[0].DEN
        tran = np.array([op.tran for op in ops], dtype=float) / ops[0].DEN
        rot = np.round(rot).astype(int)
        tran = np.mod(tran, 1.0)
        for arr in (rot, tran):
            arr.flags.writeable = False
        return cls(str(sg.xhm()), int(sg.number), rot, tran, tuple(op.triplet() for op in ops))

    @property
    def is_centrosymmetric(self) -> bool:
        """True when −1 (with some translation) is an operation."""
        return bool(np.any(np.all(self.rotations == -np.eye(3, dtype=int), axis=(1, 2))))

    def check_cell(self, cell, lattice: np.ndarray) -> None:
        """ValueError when the operations are not isometries of the lattice (e.g. a cubic group
        on a tetragonal cell)."""
        metric = lattice @ lattice.T
        for r in self.rotations:
            if not np.allclose(r.T @ metric @ r, metric, rtol=METRIC_RTOL,
                               atol=METRIC_RTOL * np.max(np.abs(metric))):
                raise ValueError(f"space group {self.name} does not fit the cell {tuple(cell)}: "
                                 "its operations are not symmetries of the lattice")

    def __repr__(self) -> str:
        return f"SpaceGroup({self.name!r}, number={self.number})"


def _wrap_distance(d: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Cartesian length [Å] of fractional differences d (..., 3), modulo the lattice."""
    d = d - np.round(d)
    return np.linalg.norm(d @ lattice, axis=-1)


def u_to_beta(reciprocal_lengths) -> np.ndarray:
    """(6,) factors β_ij = 2π² a*_i a*_j U^ij of the six components (CIF order)."""
    n = np.asarray(reciprocal_lengths, float)
    return np.array([2 * np.pi**2 * n[i] * n[j] for i, j in U_PAIRS])


def _sym6(v) -> np.ndarray:
    m = np.zeros((3, 3))
    for k, (i, j) in enumerate(U_PAIRS):
        m[i, j] = m[j, i] = v[k]
    return m


def _vec6(m: np.ndarray) -> np.ndarray:
    return np.array([m[i, j] for i, j in U_PAIRS])


def rotate_u(u6, rotation: np.ndarray, reciprocal_lengths) -> tuple[float, ...]:
    """U^ij of the image R r + t of an atom with U^ij ``u6``: β' = R β Rᵀ."""
    scale = u_to_beta(reciprocal_lengths)
    beta = _sym6(np.asarray(u6, float) * scale)
    return tuple(float(v) for v in _vec6(rotation @ beta @ rotation.T) / scale)


def complete(atoms, group: SpaceGroup, lattice: np.ndarray, tol: float) -> tuple[list, int]:
    """The atoms of the cell: every atom and its images under ``group``.

    ``atoms`` are :class:`larbed.Atom` (any subset of the cell, e.g. the asymmetric unit). An
    atom that lands within ``tol`` [Å] of an earlier atom of the same element (an image listed
    explicitly) is merged into it. Returns (atoms, number merged).
    """
    recip = np.linalg.norm(np.linalg.inv(lattice).T, axis=1)
    out: list = []
    merged = 0

    def present(symbol, pos) -> int:
        for k, other in enumerate(out):
            if other.symbol == symbol and _wrap_distance(np.asarray(other.position) - pos,
                                                          lattice) <= tol:
                return k
        return -1

    for atom in atoms:
        pos = np.asarray(atom.position, float)
        k = present(atom.symbol, pos)
        if k >= 0:
            merged += 1
            other = out[k]
            if not (np.isclose(other.occupancy, atom.occupancy) and np.isclose(other.b_iso, atom.b_iso)):
                logger.warning("%s at %s is a symmetry image of an earlier atom but has another "
                               "occupancy or B (%g, %g vs %g, %g); kept the first", atom.symbol,
                               tuple(np.round(pos, 4)), atom.occupancy, atom.b_iso,
                               other.occupancy, other.b_iso)
            continue
        out.append(atom)
        for r, t in zip(group.rotations, group.translations, strict=True):
            img = np.mod(r @ pos + t, 1.0)
            img[np.isclose(img, 1.0, atol=1e-12)] = 0.0
            if present(atom.symbol, img) >= 0:
                continue
            u6 = None if atom.u_aniso is None else rotate_u(atom.u_aniso, r, recip)
            out.append(replace(atom, position=tuple(float(v) for v in img), u_aniso=u6))
    return out, merged


def reduced_basis(basis: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Columns spanning the same space as ``basis`` (n, k) in reduced row-echelon form of its
    transpose: column m has a 1 at pivot m and 0 at the other pivots, so the coefficient of
    column m *is* component ``pivots[m]`` of a vector in the space."""
    a = np.array(basis, float).T
    k, n = a.shape
    pivots = []
    row = 0
    for col in range(n):
        if row >= k:
            break
        piv = row + int(np.argmax(np.abs(a[row:, col])))
        if abs(a[piv, col]) <= RANK_TOL:
            continue
        a[[row, piv]] = a[[piv, row]]
        a[row] /= a[row, col]
        for other in range(k):
            if other != row:
                a[other] -= a[other, col] * a[row]
        pivots.append(col)
        row += 1
    a[np.abs(a) < 1e-12] = 0.0
    return a[:len(pivots)].T.copy(), tuple(pivots)


def _null_space(m: np.ndarray, n: int) -> np.ndarray:
    if m.size == 0:
        return np.eye(n)
    _, s, vt = np.linalg.svd(m)
    rank = int(np.sum(s > RANK_TOL * max(s.max(initial=0.0), 1.0)))
    return vt[rank:].T


def displacement_basis(stabilizer: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """(3, k) fractional displacements δ with R δ = δ for every rotation of the site symmetry, and
    the pivot coordinates (0 = x, 1 = y, 2 = z) that label them."""
    m = np.concatenate([r - np.eye(3) for r in stabilizer]) if len(stabilizer) else np.zeros((0, 3))
    return reduced_basis(_null_space(m, 3))


def adp_basis(stabilizer: np.ndarray, reciprocal_lengths) -> tuple[np.ndarray, tuple[int, ...]]:
    """(6, k) U^ij (CIF order) with R β Rᵀ = β for every rotation of the site symmetry, and the
    pivot components that label them (0 = U11 … 5 = U23)."""
    scale = u_to_beta(reciprocal_lengths)
    rows = []
    for r in stabilizer:
        m = np.zeros((6, 6))
        for k in range(6):
            e = np.zeros(6)
            e[k] = 1.0
            m[:, k] = _vec6(r @ _sym6(e * scale) @ r.T) / scale
        rows.append(m - np.eye(6))
    return reduced_basis(_null_space(np.concatenate(rows) if rows else np.zeros((0, 6)), 6))


@dataclass(frozen=True, eq=False)
class Site:
    """One orbit of the asymmetric unit.

    Attributes
    ----------
    label : str
        Site label ('Sr1', 'O1', or the CIF's).
    symbol : str
        Element.
    atoms : tuple of int
        Indices of the orbit's atoms in ``Crystal.atoms``; the first is the representative.
    rotations, translations : ndarray
        (m, 3, 3) and (m, 3): atom ``atoms[k]`` sits at R_k r + t_k for the representative's
        position r (t_k includes the lattice translation to the listed position).
    stabilizer : ndarray
        (s, 3, 3) rotations of the site symmetry.
    coordinates, coordinate_pivots : ndarray, tuple
        Allowed displacements (3, k) (:func:`displacement_basis`).
    adps, adp_pivots : ndarray, tuple
        Allowed U^ij (6, k') (:func:`adp_basis`).
    """

    label: str
    symbol: str
    atoms: tuple[int, ...]
    rotations: np.ndarray = field(repr=False)
    translations: np.ndarray = field(repr=False)
    stabilizer: np.ndarray = field(repr=False)
    coordinates: np.ndarray = field(repr=False)
    coordinate_pivots: tuple[int, ...] = ()
    adps: np.ndarray = field(repr=False, default=None)
    adp_pivots: tuple[int, ...] = ()

    @property
    def multiplicity(self) -> int:
        """Atoms in the orbit (per cell)."""
        return len(self.atoms)


def find_sites(atoms, group: SpaceGroup | None, lattice: np.ndarray, tol: float) -> list[Site]:
    """The asymmetric unit of a cell (its atoms complete under ``group``; None = P1)."""
    pos = np.array([a.position for a in atoms], float)
    recip = np.linalg.norm(np.linalg.inv(lattice).T, axis=1)
    rots = group.rotations if group is not None else np.eye(3, dtype=int)[None]
    trans = group.translations if group is not None else np.zeros((1, 3))
    owner = np.full(len(atoms), -1)
    sites: list[Site] = []
    counts: dict[str, int] = {}
    for i, atom in enumerate(atoms):
        if owner[i] >= 0:
            continue
        images = np.einsum("kij,j->ki", rots, pos[i]) + trans  # (n_ops, 3)
        stab = [k for k in range(len(rots)) if _wrap_distance(images[k] - pos[i], lattice) <= tol]
        members, m_rot, m_tran = [], [], []
        for k in range(len(rots)):
            dist = _wrap_distance(pos[None, :, :] - images[k][None, :], lattice)[0]
            cand = [j for j in np.flatnonzero(dist <= tol) if atoms[j].symbol == atom.symbol
                    and owner[j] in (-1, len(sites)) and j not in members]
            if not cand:
                continue
            j = int(cand[0])
            members.append(j)
            owner[j] = len(sites)
            m_rot.append(rots[k])
            m_tran.append(trans[k] + np.round(pos[j] - images[k]))
        counts[atom.symbol] = counts.get(atom.symbol, 0) + 1
        label = atom.label or f"{atom.symbol}{counts[atom.symbol]}"
        stabilizer = rots[stab]
        coords, cpiv = displacement_basis(stabilizer)
        adps, apiv = adp_basis(stabilizer, recip)
        sites.append(Site(label, atom.symbol, tuple(members), np.array(m_rot), np.array(m_tran),
                          stabilizer, coords, cpiv, adps, apiv))
    taken = [s.label for s in sites]
    if len(set(taken)) != len(taken):  # repeated CIF labels: make them unique
        seen: dict[str, int] = {}
        fixed = []
        for s in sites:
            seen[s.label] = seen.get(s.label, 0) + 1
            fixed.append(s if seen[s.label] == 1 else replace(s, label=f"{s.label}_{seen[s.label]}"))
        sites = fixed
    return sites


@dataclass(frozen=True, eq=False)
class TieGroup:
    """Structure factors tied by the space group to one complex value V (the first member's).

    ``maps[k]`` (2, 2) takes (Re V, Im V) to (Re U, Im U) of reflection ``members[k]``;
    ``basis`` (2, d) spans the values V may take (d = 2 general, 1 a fixed phase, 0 absent).
    """

    members: tuple[int, ...]
    maps: np.ndarray = field(repr=False)
    basis: np.ndarray = field(repr=False)


def _complex_matrix(z: complex) -> np.ndarray:
    return np.array([[z.real, -z.imag], [z.imag, z.real]])


_CONJ = np.diag([1.0, -1.0])


def ug_ties(group: SpaceGroup | None, hkl: np.ndarray) -> list[TieGroup]:
    """Groups of the reflections ``hkl`` (one per Friedel pair) whose U_g the space group ties.

    For an operation (R, t), U(h R) = exp(2πi h·t) U(h); a relation that closes on itself
    restricts V (a centre of symmetry makes it real; a forbidden reflection has d = 0).
    """
    hkl = np.asarray(hkl, int)
    lookup = {tuple(h): i for i, h in enumerate(hkl.tolist())}
    rots = group.rotations if group is not None else np.eye(3, dtype=int)[None]
    trans = group.translations if group is not None else np.zeros((1, 3))
    maps: dict[int, np.ndarray] = {}
    out = []
    for root in range(len(hkl)):
        if root in maps:
            continue
        maps[root] = np.eye(2)
        members, queue, constraints = [root], [root], []
        while queue:
            a = queue.pop()
            for r, t in zip(rots, trans, strict=True):
                h2 = tuple(int(v) for v in hkl[a] @ r)
                phase = np.exp(2j * np.pi * float(hkl[a] @ t))
                if h2 in lookup:
                    b, rel = lookup[h2], _complex_matrix(phase)
                elif tuple(-v for v in h2) in lookup:
                    b, rel = lookup[tuple(-v for v in h2)], _CONJ @ _complex_matrix(phase)
                else:
                    continue
                new = rel @ maps[a]
                if b in maps:
                    if b in members:
                        constraints.append(maps[b] - new)
                    continue
                maps[b] = new
                members.append(b)
                queue.append(b)
        basis = _null_space(np.concatenate(constraints) if constraints else np.zeros((0, 2)), 2)
        if basis.shape[1] == 2:
            basis = np.eye(2)
        elif basis.shape[1] == 1 and basis[np.argmax(np.abs(basis[:, 0])), 0] < 0:
            basis = -basis
        order = sorted(members)
        out.append(TieGroup(tuple(order), np.array([maps[m] for m in order]), basis))
    return out
