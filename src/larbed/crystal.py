"""Crystal structures: unit cell, atoms, reciprocal lattice.

Conventions: cell lengths in Å, angles in degrees, fractional coordinates, isotropic Debye-Waller
factors B in Å². The Cartesian frame puts a along x and b in the xy plane. Reciprocal vectors carry
no factor 2π (|g| = 1/d).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .scattering import normalize_symbol
from .spacegroup import Site, SpaceGroup, complete, find_sites

__all__ = ["Atom", "Crystal", "lattice_from_cell"]

logger = logging.getLogger(__name__)

#: Two atoms closer than this [Å] (modulo the lattice) sit on one site.
SITE_TOLERANCE_ANGSTROM = 0.01
#: Occupancies of one site may sum to 1 plus this (rounding in files).
OCCUPANCY_SUM_SLACK = 1e-6


@dataclass(frozen=True)
class Atom:
    """One atom of the unit cell.

    Attributes
    ----------
    symbol : str
        Element symbol.
    position : tuple of float
        Fractional coordinates (x, y, z).
    occupancy : float
        Site occupancy in [0, 1].
    b_iso : float
        Isotropic Debye-Waller factor B [Å²] (for an anisotropic atom B_eq = 8π² U_eq).
    u_aniso : tuple of 6 float or None
        Anisotropic displacement U^ij [Å²] in CIF order (U11, U22, U33, U12, U13, U23): the
        Debye-Waller factor is then exp(−2π² Σ U^ij h_i h_j a*_i a*_j) and ``b_iso`` is not used.
    label : str
        Site label (e.g. from a CIF); '' for none (the crystal then names its sites 'Sr1', 'O1', …).
    """

    symbol: str
    position: tuple[float, float, float]
    occupancy: float = 1.0
    b_iso: float = 0.0
    u_aniso: tuple[float, float, float, float, float, float] | None = None
    label: str = ""


def _as_atom(item) -> Atom:
    u6, label = None, ""
    if isinstance(item, Atom):
        symbol, pos, occ, b = item.symbol, item.position, item.occupancy, item.b_iso
        u6, label = item.u_aniso, str(item.label)
    else:
        if not isinstance(item, Sequence) or isinstance(item, str) or not 2 <= len(item) <= 4:
            raise TypeError(
                f"each atom must be (symbol, (x, y, z)[, occupancy[, B]]), got {item!r}"
            )
        symbol, pos = item[0], item[1]
        occ = item[2] if len(item) > 2 else 1.0
        b = item[3] if len(item) > 3 else 0.0
    symbol = normalize_symbol(symbol)
    pos_arr = np.asarray(pos, dtype=float)
    if pos_arr.shape != (3,) or not np.all(np.isfinite(pos_arr)):
        raise ValueError(f"atom position must be 3 finite fractional coordinates, got {pos!r}")
    occ = float(occ)
    if not (0.0 <= occ <= 1.0):
        raise ValueError(f"occupancy must be in [0, 1], got {occ} for {symbol}")
    b = float(b)
    if not math.isfinite(b) or b < 0:
        raise ValueError(f"Debye-Waller B must be finite and >= 0 [Å²], got {b} for {symbol}")
    if u6 is not None:
        u_arr = np.asarray(u6, dtype=float)
        if u_arr.shape != (6,) or not np.all(np.isfinite(u_arr)):
            raise ValueError(f"u_aniso must be 6 finite numbers (U11, U22, U33, U12, U13, U23) [Å²], "
                             f"got {u6!r} for {symbol}")
        u6 = tuple(float(v) for v in u_arr)
    return Atom(symbol, tuple(float(x) for x in pos_arr), occ, b, u6, label)


def _merge_duplicates(atoms: list, uc) -> tuple[list, int]:
    """Drop atoms of the same element on the same site as an earlier one (a CIF that lists
    symmetry-equivalent positions explicitly yields each of them once per listed copy)."""
    lattice = np.array(uc.orth.mat.tolist()).T  # rows a, b, c [Å] (Cartesian)
    kept: list = []
    merged = 0
    for atom in atoms:
        f = np.asarray(atom[1])
        dup = None
        for other in kept:
            d = np.asarray(other[1]) - f
            d -= np.round(d)
            if other[0] == atom[0] and np.linalg.norm(d @ lattice) <= SITE_TOLERANCE_ANGSTROM:
                dup = other
                break
        if dup is None:
            kept.append(atom)
            continue
        merged += 1
        if not (np.isclose(dup[2], atom[2]) and np.isclose(dup[3], atom[3])):
            logger.warning("duplicate %s at %s with other occupancy or B (%g, %g vs %g, %g); "
                           "kept the first", atom[0], tuple(np.round(f, 4)), dup[2], dup[3],
                           atom[2], atom[3])
    return kept, merged


def _u_equivalent(aniso, uc) -> float:
    """U_eq = (1/3) Σ_ij U^ij a*_i a*_j (a_i·a_j) of a CIF anisotropic tensor [Å²]."""
    u = np.array(
        [
            [aniso.u11, aniso.u12, aniso.u13],
            [aniso.u12, aniso.u22, aniso.u23],
            [aniso.u13, aniso.u23, aniso.u33],
        ]
    )
    lengths = np.array([uc.a, uc.b, uc.c])
    cos = np.cos(np.radians([uc.alpha, uc.beta, uc.gamma]))
    cos_matrix = np.array([[1, cos[2], cos[1]], [cos[2], 1, cos[0]], [cos[1], cos[0], 1]])
    metric = np.outer(lengths, lengths) * cos_matrix  # a_i·a_j
    rec = uc.reciprocal()
    rec_len = np.array([rec.a, rec.b, rec.c])
    return float(np.sum(u * np.outer(rec_len, rec_len) * metric) / 3.0)


def _group_from_number(number: int, path: str):
    """The standard setting of space group ``number`` (a CIF that gives only the number)."""
    import gemmi

    group = gemmi.find_spacegroup_by_number(int(number))
    if group is None:
        raise ValueError(f"CIF file {path!r}: space-group number {number} is not in 1-230")
    settings = [sg.xhm() for sg in gemmi.spacegroup_table() if sg.number == group.number]
    if len(settings) > 1:
        logger.warning("%s gives only the space-group number %d: the standard setting %s is used "
                       "(others: %s); give the Hermann-Mauguin name or the symmetry operations "
                       "if the file uses another", path, group.number, group.xhm(),
                       ", ".join(settings[1:4]) + (" …" if len(settings) > 4 else ""))
    return group


def _check_origin_choice(group, atoms, cell, n_atoms: int, path: str) -> None:
    """Warn when the file names a group with two origin choices but not which, and the other
    choice makes fewer atoms of the listed sites (e.g. Si at 0 0 0 in F d -3 m: 8 atoms with
    origin choice 1, 16 with 2): listed sites are usually special positions of the file's
    setting."""
    import gemmi

    if group.ext not in ("1", "2"):
        return
    other = gemmi.find_spacegroup_by_name(f"{group.hm}:{'2' if group.ext == '1' else '1'}")
    alt, _ = complete([_as_atom(a) for a in atoms], SpaceGroup.from_spec(other),
                      lattice_from_cell(cell), SITE_TOLERANCE_ANGSTROM)
    if len(alt) != n_atoms:
        log = logger.warning if len(alt) < n_atoms else logger.info
        log("%s names %s without its origin choice: %s is used (%d atoms); with %s the sites make "
            "%d atoms. Give the setting (e.g. '%s') or the symmetry operations in the file if it "
            "uses the other one", path, group.hm, group.xhm(), n_atoms, other.xhm(), len(alt),
            other.xhm())


def lattice_from_cell(cell) -> np.ndarray:
    """Rows a, b, c [Å] (Cartesian: a along x, b in the xy plane) of a cell (a, b, c, α, β, γ)."""
    a, b, c, al, be, ga = cell
    al, be, ga = np.radians([al, be, ga])
    cx = c * math.cos(be)
    cy = c * (math.cos(al) - math.cos(be) * math.cos(ga)) / math.sin(ga)
    cz2 = c * c - cx * cx - cy * cy
    cz = math.sqrt(cz2) if cz2 > 0 else float("nan")
    return np.array(
        [[a, 0.0, 0.0], [b * math.cos(ga), b * math.sin(ga), 0.0], [cx, cy, cz]], dtype=float
    )


class Crystal:
    """A crystal: unit cell and atoms.

    Parameters
    ----------
    cell : sequence of 6 floats
        (a, b, c, alpha, beta, gamma): lengths [Å], angles [degrees].
    atoms : iterable
        Items ``(symbol, (x, y, z), occupancy, B)`` (occupancy and B optional, default 1 and 0 Å²)
        or :class:`Atom`. Give every atom of the cell (symmetry-expanded).
    name : str, optional
        A label recorded in output files.
    space_group : str, int or gemmi.SpaceGroup, optional
        The space group (Hermann–Mauguin name such as ``'P m -3 m'``, number 1–230). The atoms
        are then completed by its operations (give the asymmetric unit or the whole cell: an
        image that is listed is merged), and :attr:`sites` is the asymmetric unit. Without one
        the crystal is P1: every atom is its own site (a refinement has no constraints).

    Examples
    --------
    >>> xtal = Crystal((4.0, 4.0, 4.0, 90, 90, 90), [("Si", (0, 0, 0))])
    >>> round(xtal.volume, 3)
    64.0
    >>> rutile = Crystal((4.594, 4.594, 2.959, 90, 90, 90),
    ...                  [("Ti", (0, 0, 0)), ("O", (0.305, 0.305, 0))], space_group="P 42/m n m")
    >>> len(rutile.atoms), [s.label for s in rutile.sites], [s.multiplicity for s in rutile.sites]
    (6, ['Ti1', 'O1'], [2, 4])
    """

    def __init__(self, cell: Sequence[float], atoms: Iterable, name: str = "crystal",
                 space_group=None):
        cell_arr = np.asarray(cell, dtype=float)
        if cell_arr.shape != (6,) or not np.all(np.isfinite(cell_arr)):
            raise ValueError(
                f"cell must be 6 finite numbers (a, b, c, alpha, beta, gamma), got {cell!r}"
            )
        if np.any(cell_arr[:3] <= 0):
            raise ValueError(f"cell lengths must be positive [Å], got {cell_arr[:3]}")
        if np.any(cell_arr[3:] <= 0) or np.any(cell_arr[3:] >= 180):
            raise ValueError(f"cell angles must be in (0, 180) degrees, got {cell_arr[3:]}")
        self.cell = tuple(float(x) for x in cell_arr)
        self.atoms: tuple[Atom, ...] = tuple(_as_atom(a) for a in atoms)
        if not self.atoms:
            raise ValueError("a crystal needs at least one atom")
        self.name = str(name)
        # V = abc·sqrt(f): f ≤ 0 is impossible, f → 0 a flat cell (e.g. α + β + γ = 360°)
        ca, cb, cg = np.cos(np.radians(cell_arr[3:]))
        if 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg <= 1e-10:
            raise ValueError(f"cell angles {cell_arr[3:]} give no valid (positive-volume) cell")
        self.lattice_vectors = self._lattice()
        self.space_group: SpaceGroup | None = None
        if space_group is not None:
            self.space_group = SpaceGroup.from_spec(space_group)
            self.space_group.check_cell(self.cell, self.lattice_vectors)
            full, merged = complete(self.atoms, self.space_group, self.lattice_vectors,
                                    SITE_TOLERANCE_ANGSTROM)
            added = len(full) + merged - len(self.atoms)
            if added or merged:
                logger.debug("%s: %d atoms added by %s, %d listed images merged", self.name, added,
                             self.space_group.name, merged)
            self.atoms = tuple(full)
        self._check_sites()
        self._sites: list[Site] | None = None

    @property
    def sites(self) -> list[Site]:
        """The asymmetric unit: one :class:`larbed.spacegroup.Site` per orbit (label, element,
        member atoms, site symmetry, allowed coordinate and U^ij changes); without a space group
        every atom is a site."""
        if self._sites is None:
            self._sites = find_sites(self.atoms, self.space_group, self.lattice_vectors,
                                     SITE_TOLERANCE_ANGSTROM)
        return self._sites

    @property
    def asymmetric_unit(self) -> tuple[Atom, ...]:
        """The representative atom of each site, labelled."""
        from dataclasses import replace

        return tuple(replace(self.atoms[s.atoms[0]], label=s.label) for s in self.sites)

    def _check_sites(self) -> None:
        """Atoms sharing a site (within :data:`SITE_TOLERANCE_ANGSTROM`) must have occupancies
        summing to at most 1."""
        for members in self._sites():
            total = sum(self.atoms[i].occupancy for i in members)
            if len(members) > 1 and total > 1.0 + OCCUPANCY_SUM_SLACK:
                atoms = ", ".join(f"{self.atoms[i].symbol} (occupancy {self.atoms[i].occupancy:g})"
                                  for i in members)
                pos = self.atoms[members[0]].position
                raise ValueError(
                    f"site ({pos[0]:g}, {pos[1]:g}, {pos[2]:g}) holds {atoms}: occupancies sum to "
                    f"{total:g} > 1 (a duplicated atom, or a mixed site whose occupancies are off)"
                )

    def _sites(self) -> list[list[int]]:
        """Indices of the atoms on each distinct site (positions equal modulo the lattice)."""
        frac = self.fractional_positions
        d = frac[:, None, :] - frac[None, :, :]
        d -= np.round(d)
        close = np.linalg.norm(d @ self.lattice_vectors, axis=2) <= SITE_TOLERANCE_ANGSTROM
        sites, seen = [], np.zeros(len(frac), bool)
        for i in range(len(frac)):
            if not seen[i]:
                members = np.flatnonzero(close[i] & ~seen)
                seen[members] = True
                sites.append(members.tolist())
        return sites

    def _lattice(self) -> np.ndarray:
        return lattice_from_cell(self.cell)

    @property
    def volume(self) -> float:
        """Unit-cell volume Ω [Å³]."""
        return float(abs(np.linalg.det(self.lattice_vectors)))

    @property
    def reciprocal_vectors(self) -> np.ndarray:
        """Rows a*, b*, c* in the Cartesian frame [1/Å], without 2π: a·a* = 1."""
        return np.linalg.inv(self.lattice_vectors).T

    @property
    def fractional_positions(self) -> np.ndarray:
        """(n_atoms, 3) fractional coordinates."""
        return np.array([a.position for a in self.atoms], dtype=float)

    def __eq__(self, other: object) -> bool:
        """The same name, cell, atoms (symmetry-expanded) and space group (by name): what a
        file records, so a crystal equals itself read back (two separate loads of one CIF or
        built-in too)."""
        if not isinstance(other, Crystal):
            return NotImplemented
        groups = [None if c.space_group is None else c.space_group.name for c in (self, other)]
        return (self.name == other.name and self.cell == other.cell
                and self.atoms == other.atoms and groups[0] == groups[1])

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        a, b, c, al, be, ga = self.cell
        return (
            f"Crystal({self.name!r}, a={a:g} Å, b={b:g} Å, c={c:g} Å, "
            f"α={al:g}°, β={be:g}°, γ={ga:g}°, {len(self.atoms)} atoms)"
        )

    def to_attrs(self) -> dict:
        """Flat, netCDF-safe description of the crystal for ``Dataset.attrs``."""
        return {
            "crystal_name": self.name,
            "crystal_cell": list(self.cell),
            "crystal_atoms": ";".join(
                # repr: shortest text that reads back bit-for-bit (1/3 stays 1/3)
                f"{a.symbol} {a.position[0]!r} {a.position[1]!r} {a.position[2]!r} "
                f"{a.occupancy!r} {a.b_iso!r}"
                + ("" if a.u_aniso is None else " " + " ".join(repr(u) for u in a.u_aniso))
                for a in self.atoms
            ),
            "crystal_space_group": "" if self.space_group is None else self.space_group.name,
        }

    @classmethod
    def from_attrs(cls, attrs: dict) -> Crystal:
        """Inverse of :meth:`to_attrs`."""
        atoms = []
        for entry in str(attrs["crystal_atoms"]).split(";"):
            parts = entry.split()
            u6 = tuple(map(float, parts[6:12])) if len(parts) >= 12 else None
            atoms.append(Atom(parts[0], tuple(map(float, parts[1:4])), float(parts[4]),
                              float(parts[5]), u6))
        group = str(attrs.get("crystal_space_group", "")) or None
        return cls(
            np.asarray(attrs["crystal_cell"], dtype=float), atoms, name=str(attrs["crystal_name"]),
            space_group=group,
        )

    @classmethod
    def builtin(cls, name: str, debye_waller: bool = False) -> Crystal:
        """A built-in crystal: ``'SrTiO3'`` (cubic perovskite, Pm-3m) or ``'ZnO'`` (wurtzite,
        P6₃mc), with their space groups.

        Parameters
        ----------
        name : {'SrTiO3', 'ZnO'}
        debye_waller : bool
            Use room-temperature B values (Sr 0.41, Ti 0.32, O 0.63, Zn 0.6, O(ZnO) 0.6 Å²);
            default B = 0.

        Examples
        --------
        >>> Crystal.builtin("SrTiO3").cell[0]
        3.905
        """
        key = str(name).lower()
        if key == "srtio3":
            b = {"Sr": 0.41, "Ti": 0.32, "O": 0.63} if debye_waller else {"Sr": 0, "Ti": 0, "O": 0}
            atoms = [
                ("Sr", (0, 0, 0), 1.0, b["Sr"]),
                ("Ti", (0.5, 0.5, 0.5), 1.0, b["Ti"]),
                ("O", (0.5, 0.5, 0), 1.0, b["O"]),
                ("O", (0.5, 0, 0.5), 1.0, b["O"]),
                ("O", (0, 0.5, 0.5), 1.0, b["O"]),
            ]
            return cls((3.905, 3.905, 3.905, 90, 90, 90), atoms, name="SrTiO3",
                       space_group="P m -3 m")
        if key == "zno":
            u = 0.3819
            bz, bo = (0.6, 0.6) if debye_waller else (0.0, 0.0)
            atoms = [
                ("Zn", (1 / 3, 2 / 3, 0), 1.0, bz),
                ("Zn", (2 / 3, 1 / 3, 0.5), 1.0, bz),
                ("O", (1 / 3, 2 / 3, u), 1.0, bo),
                ("O", (2 / 3, 1 / 3, 0.5 + u), 1.0, bo),
            ]
            return cls((3.2498, 3.2498, 5.2066, 90, 90, 120), atoms, name="ZnO",
                       space_group="P 63 m c")
        raise ValueError(f"unknown built-in crystal {name!r}; choose 'SrTiO3' or 'ZnO'")

    @classmethod
    def from_cif(cls, path: str | os.PathLike) -> Crystal:
        """Read a crystal from a CIF file, with its space group.

        With a space group (the Hermann–Mauguin name, the number or the symmetry operations of
        the file, through gemmi; a number alone means its standard setting, with a warning when
        the group has others; a name with two origin choices but no choice given is gemmi's
        default, with a warning when the other choice makes fewer atoms) the listed sites are
        the asymmetric unit, completed by the operations (anisotropic U^ij rotated with them);
        sites listed although they are images of others are merged (logged). Without one the
        file's atoms are taken as the whole cell (P1) and U^ij, if given alone, become B_eq.
        Occupancies, labels and displacements (B_iso, U_iso converted with B = 8π²U, or U^ij) are
        read when present.

        Parameters
        ----------
        path : str or path-like
            CIF file.
        """
        import gemmi

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no CIF file at {path!r}")
        try:
            doc = gemmi.cif.read_file(path)
            block = doc.sole_block()
            small = gemmi.make_small_structure_from_block(block)
        except Exception as exc:  # gemmi raises RuntimeError/ValueError/IndexError variously
            raise ValueError(f"could not read CIF file {path!r}: {exc}") from exc
        uc = small.cell
        lengths = ("_cell_length_a", "_cell_length_b", "_cell_length_c")
        missing = [t for t in lengths if block.find_value(t) is None]
        if missing:  # gemmi would silently fall back to a 1 Å cube
            raise ValueError(f"CIF file {path!r} has no unit cell: missing {', '.join(missing)}")
        cell = (uc.a, uc.b, uc.c, uc.alpha, uc.beta, uc.gamma)
        name = block.name or os.path.splitext(os.path.basename(path))[0]
        group = small.spacegroup
        if group is None and len(small.symops) > 1:
            group = gemmi.find_spacegroup_by_ops(gemmi.GroupOps([gemmi.Op(t) for t in small.symops]))
        if group is None and len(small.symops) <= 1 and small.spacegroup_number > 0:
            group = _group_from_number(small.spacegroup_number, path)
        if len(small.sites) == 0:
            raise ValueError(f"CIF file {path!r} has no atom sites")
        if group is None:
            if len(small.symops) > 1:
                logger.warning("%s: symmetry operations of no known space group; the expanded "
                               "atoms are used in P1", path)
            return cls._from_expanded_cif(small, cell, name, path)
        atoms = []
        for site in small.sites:
            symbol = normalize_symbol(site.type_symbol or site.element.name)
            u6 = None
            u_iso = float(site.u_iso)
            if site.aniso.nonzero():
                a = site.aniso
                u6 = (a.u11, a.u22, a.u33, a.u12, a.u13, a.u23)
                u_iso = u_iso or _u_equivalent(site.aniso, uc)
            frac = tuple(float(x) % 1.0 for x in (site.fract.x, site.fract.y, site.fract.z))
            atoms.append(Atom(symbol, frac, float(site.occ), 8 * math.pi**2 * u_iso, u6,
                              str(site.label)))
        sg = SpaceGroup.from_spec(group)
        sg.check_cell(cell, lattice_from_cell(cell))
        full, merged = complete([_as_atom(a) for a in atoms], sg, lattice_from_cell(cell),
                                SITE_TOLERANCE_ANGSTROM)
        if merged:
            logger.warning("%s lists symmetry-equivalent sites: %d duplicate atoms (same element "
                           "on the same site) merged", path, merged)
        if len(small.symops) <= 1 and not small.spacegroup_hall and ":" not in small.spacegroup_hm:
            _check_origin_choice(group, atoms, cell, len(full), path)
        logger.info("read %d sites (%d atoms, %s) from %s", len(atoms) - merged, len(full),
                    sg.name, path)
        return cls(cell, full, name=name, space_group=sg)

    @classmethod
    def _from_expanded_cif(cls, small, cell, name: str, path: str) -> Crystal:
        uc = small.cell
        atoms = []
        for site in small.get_all_unit_cell_sites():
            symbol = site.type_symbol or site.element.name
            u_iso = float(site.u_iso)
            if not u_iso and site.aniso.nonzero():  # only U^ij given: use U_eq
                u_iso = _u_equivalent(site.aniso, uc)
            b = 8 * math.pi**2 * u_iso if u_iso else 0.0
            frac = [float(x) % 1.0 for x in (site.fract.x, site.fract.y, site.fract.z)]
            atoms.append((normalize_symbol(symbol), tuple(frac), float(site.occ), b))
        atoms, merged = _merge_duplicates(atoms, uc)
        if merged:
            logger.warning("%s lists symmetry-equivalent sites: %d duplicate atoms (same element "
                           "on the same site) merged", path, merged)
        logger.info("read %d atoms from %s", len(atoms), path)
        return cls(cell, atoms, name=name)
