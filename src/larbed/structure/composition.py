"""A structure start from the cell, the space group and the composition.

:func:`wyckoff_sets` finds the sets of equivalent positions of a space group (Wyckoff positions:
multiplicity, a representative, the coordinates free within the set) on the grid of 1/24 cell
fractions, which holds every operation of gemmi's tables exactly and every special position of
the standard settings. :func:`arrangements` lists the ways to place a composition (atoms per cell)
on them: each element's count a sum of multiplicities, a set without free coordinates used at
most once. :func:`composition_start` evaluates every arrangement (its visible free coordinates
on a coarse grid) against the pattern by a thickness scan, refines the best few with
:func:`larbed.refine_structure`, and returns the best refined structure: a global search in the
handful of parameters a structure has, where free U_g would have hundreds.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..crystal import Crystal
from ..geometry import Geometry
from ..scattering import known_elements, normalize_symbol
from ..spacegroup import SpaceGroup, displacement_basis
from .model import zone_visible

__all__ = ["B_GRID", "COORDINATE_GRID", "GRID", "HIDDEN_VALUES", "MAX_ARRANGEMENTS", "WyckoffSet", "arrangements",
           "check_composition", "composition_start", "parse_composition", "wyckoff_sets"]

logger = logging.getLogger(__name__)

#: Grid of the site search [1/cell edge]: gemmi's operations have translations in 1/24.
GRID = 24
#: Values tried for each free coordinate the zone axis can see (fractions).
COORDINATE_GRID = (0.1, 0.2, 0.3, 0.4)
#: Values of the free coordinates the zone axis cannot see, for the first, second, … use of a
#: set in one trial (any distinct values: the pattern cannot tell them apart, and atoms of
#: different elements on one column must not share a position).
HIDDEN_VALUES = (0.0, 0.375, 0.625, 0.125, 0.875, 0.25, 0.75, 0.5)
#: Overall B of the trial structures in the thickness scans [Å²] (0 K to above room
#: temperature); the best (B, t) of each trial starts its refinement.
B_GRID = (0.0, 0.5, 1.0)
#: At most this many trial structures (arrangements × coordinate values) are evaluated.
MAX_ARRANGEMENTS = 256


@dataclass(frozen=True, eq=False)
class WyckoffSet:
    """One set of equivalent positions: ``multiplicity`` atoms per cell, a ``representative``
    position (fractions), and ``basis`` (3, k) the coordinate changes that stay in the set."""

    multiplicity: int
    representative: np.ndarray = field(repr=False)
    basis: np.ndarray = field(repr=False)

    @property
    def n_free(self) -> int:
        return self.basis.shape[1]


def wyckoff_sets(group: SpaceGroup) -> list[WyckoffSet]:
    """The Wyckoff sets of ``group``, by increasing multiplicity (general position last).

    Grid points are joined when an operation maps one onto the other (one orbit) or when an
    allowed move of the same site symmetry leads from one to the other (one set).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = GRID
    ii = np.indices((n, n, n)).reshape(3, -1).T  # (N, 3) grid units
    tran = np.rint(group.translations * n).astype(int)

    def index(p):
        return (p[..., 0] % n * n + p[..., 1] % n) * n + p[..., 2] % n

    images = np.stack([index(ii @ r.T + t) for r, t in zip(group.rotations, tran, strict=True)])
    own = np.arange(len(ii))
    stab = images == own[None, :]  # (n_ops, N)
    n_images = np.sort(images, axis=0)
    n_images = 1 + np.count_nonzero(np.diff(n_images, axis=0), axis=0)
    _, kind = np.unique(np.packbits(stab, axis=0).T, axis=0, return_inverse=True)
    kind = kind.ravel()  # site symmetry of each point
    bases = [displacement_basis(group.rotations[stab[:, np.flatnonzero(kind == k)[0]]])[0]
             for k in range(kind.max() + 1)]
    rows, cols = [np.repeat(own, len(images))], [images.T.ravel()]
    for k, basis in enumerate(bases):  # along an allowed move, to the next point of the same kind
        members = np.flatnonzero(kind == k)
        for col in basis.T:
            step = col / np.min(np.abs(col[np.abs(col) > 1e-9]))
            if not np.allclose(step, np.rint(step)):
                continue
            todo = members
            for s in range(1, n):
                nxt = index(ii[todo] + s * np.rint(step).astype(int))
                same = kind[nxt] == k
                rows.append(todo[same])
                cols.append(nxt[same])
                todo = todo[~same]
                if not todo.size:
                    break
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), bool), (r, c)), shape=(len(ii), len(ii)))
    _, label = connected_components(graph, directed=False)
    out = []
    for lab in np.unique(label):
        members = np.flatnonzero(label == lab)
        rep = members[np.lexsort(ii[members][:, ::-1].T)[0]]
        out.append(WyckoffSet(int(n_images[rep]), ii[rep] / n, bases[int(kind[rep])]))
    out.sort(key=lambda w: (w.multiplicity, w.n_free, tuple(w.representative)))
    return out


_FORMULA_ITEM = re.compile(r"([A-Z][a-z]?)(\d*)")


def parse_composition(formula: str) -> dict[str, int]:
    """Atoms per cell from a formula such as ``'Zn2O2'`` (a missing count is 1).

    Examples
    --------
    >>> parse_composition("Zn2O2"), parse_composition("SrTiO3")
    ({'Zn': 2, 'O': 2}, {'Sr': 1, 'Ti': 1, 'O': 3})
    """
    text = str(formula).replace(" ", "")
    items = _FORMULA_ITEM.findall(text)
    if not text or "".join(e + n for e, n in items) != text:
        raise ValueError(f"composition {formula!r} is not a formula of element symbols and counts "
                         "such as Zn2O2")
    out: dict[str, int] = {}
    for element, count in items:
        out[element] = out.get(element, 0) + (int(count) if count else 1)
    return out


def check_composition(composition, group: SpaceGroup) -> dict[str, int]:
    """The composition as {element: atoms per cell}, or ValueError when it is malformed or no
    arrangement on the Wyckoff sets of ``group`` gives it."""
    if not isinstance(composition, Mapping) or not composition:
        raise TypeError(f"composition must be a non-empty mapping element → atoms per cell, e.g. "
                        f"{{'Zn': 2, 'O': 2}}, got {composition!r}")
    out: dict[str, int] = {}
    for element, count in composition.items():
        symbol = normalize_symbol(str(element))
        if symbol not in known_elements():
            raise ValueError(f"composition: unknown element {element!r}")
        if isinstance(count, bool) or not float(count).is_integer() or int(count) < 1:
            raise ValueError(f"composition: {symbol} needs a positive whole number of atoms per "
                             f"cell, got {count!r}")
        out[symbol] = out.get(symbol, 0) + int(count)
    if not arrangements(out, wyckoff_sets(group), limit=1):
        mult = sorted({w.multiplicity for w in wyckoff_sets(group)})
        raise ValueError(f"composition {out} does not fit the cell and space group {group.name}: "
                         f"its sites hold {mult} atoms each (sets without free coordinates at "
                         "most once); give atoms per cell (e.g. Z formula units)")
    return out


def _splits(count: int, sets: list[WyckoffSet], start: int, used: frozenset):
    """Multisets of set indices (≥ start) whose multiplicities sum to ``count``."""
    if count == 0:
        yield ()
        return
    for i in range(start, len(sets)):
        w = sets[i]
        if w.multiplicity > count or (w.n_free == 0 and i in used):
            continue
        nxt = i if w.n_free else i + 1
        for rest in _splits(count - w.multiplicity, sets, nxt, used | {i}):
            yield (i, *rest)


def arrangements(composition: dict[str, int], sets: list[WyckoffSet], limit: int | None = None
                 ) -> list[dict[str, tuple[int, ...]]]:
    """Ways to place ``composition`` on ``sets``: {element: indices of the sets it occupies}."""
    out: list = []

    def place(elements, used, current):
        if limit is not None and len(out) >= limit:
            return
        if not elements:
            out.append(dict(current))
            return
        element, rest = elements[0], elements[1:]
        for split in _splits(composition[element], sets, 0, used):
            fixed = {i for i in split if sets[i].n_free == 0}
            place(rest, used | fixed, {**current, element: split})

    place(sorted(composition, key=lambda e: -composition[e]), frozenset(), {})
    return out


def _trial_crystals(cell, group, composition, geometry: Geometry, b_iso: float = 0.0):
    sets = wyckoff_sets(group)
    trials = []
    for arr in arrangements(composition, sets):
        choices = []  # per occupied set: the positions to try
        uses: dict[int, int] = {}
        for element, split in arr.items():
            for i in split:
                w = sets[i]
                use = uses.get(i, 0)
                uses[i] = use + 1
                visible = zone_visible(w.basis, geometry.zone_axis)
                hidden = HIDDEN_VALUES[use % len(HIDDEN_VALUES)]
                grids = [COORDINATE_GRID if v else (hidden,) for v in visible]
                options = [w.representative + w.basis @ np.array(vals)
                           for vals in itertools.product(*grids)] if w.n_free else [w.representative]
                choices.append([(element, pos) for pos in options])
        for combo in itertools.product(*choices):
            trials.append(combo)
            if len(trials) > MAX_ARRANGEMENTS:
                raise ValueError(f"composition {composition} has more than {MAX_ARRANGEMENTS} "
                                 f"trial structures in {group.name}; give a starting crystal "
                                 "(refine_structure) or fewer atoms per cell")
    out = []
    for combo in trials:
        atoms = [(el, tuple(np.mod(pos, 1.0)), 1.0, b_iso) for el, pos in combo]
        try:
            out.append(Crystal(cell, atoms, name=geometry.crystal.name, space_group=group))
        except ValueError:  # two sets placed on one position
            continue
    return out


def composition_start(pattern, geometry: Geometry, composition, *, space_group=None,
                      thickness_range_nm=(5.0, 100.0), n_refine: int = 3, progress: bool = False,
                      **refine_kwargs):
    """The best structure for ``composition`` in the geometry's cell (see the module).

    Parameters
    ----------
    pattern : xarray.Dataset, xarray.DataArray or ndarray
    geometry : Geometry
        Its crystal gives the cell (and the space group unless ``space_group`` is given).
    composition : mapping
        Atoms per cell, e.g. ``{'Zn': 2, 'O': 2}``.
    space_group : str, int or SpaceGroup, optional
    thickness_range_nm : (float, float)
        Range of the thickness scans [nm] (0.25 nm steps).
    n_refine : int
        Trial structures (best by R after the scan) refined with :func:`larbed.refine_structure`
        (in that order, stopping at the first that fits as well as the data allow).
    progress : bool
    **refine_kwargs
        More arguments for :func:`larbed.refine_structure` (``dose``, ``weights``, …).

    Returns
    -------
    StructureResult
        The best refinement (lowest R), with ``crystal`` the refined structure.
    """
    from ..refinement import thickness_scan
    from ..structure_factors import compute_ug
    from .api import refine_structure

    group = SpaceGroup.from_spec(space_group if space_group is not None
                                 else geometry.crystal.space_group or 1)
    if int(n_refine) < 1:
        raise ValueError(f"n_refine must be >= 1, got {n_refine!r}")
    comp = check_composition(composition, group)
    cell = geometry.crystal.cell
    lo, hi = (float(v) for v in thickness_range_nm)
    thick = np.arange(lo, hi + 1e-9, 0.25)
    scored = []
    for b in B_GRID:
        for k, xtal in enumerate(_trial_crystals(cell, group, comp, geometry, b)):
            scan = thickness_scan(pattern, geometry, compute_ug(xtal, geometry), thick)
            scored.append((scan.attrs["best_value"], scan.attrs["best_thickness_nm"], k, xtal))
    scored.sort(key=lambda s: s[0])
    ranked, seen = [], set()
    for r_scan, t, k, xtal in scored:  # the best (B, t) of each arrangement
        if k not in seen:
            seen.add(k)
            ranked.append((r_scan, t, xtal))
    logger.info("composition_start: %d trial structures of %s in %s; best scan R %s", len(ranked),
                comp, group.name, [round(float(s[0]), 4) for s in ranked[:n_refine]])
    best = None
    for r_scan, t, xtal in ranked[:max(1, int(n_refine))]:
        res = refine_structure(pattern, geometry, xtal, t, progress=progress, log_warnings=False,
                               **refine_kwargs)
        logger.info("composition_start: %s from scan R %.3g → R %.3g", [
            (a.symbol, tuple(round(v, 3) for v in a.position)) for a in xtal.asymmetric_unit],
            r_scan, res.r_factor)
        if best is None or res.r_factor < best.r_factor:
            best = res
        if not any(w.kind in ("r_factor", "chi2") for w in res.warnings):
            break  # the fit is as good as the data allow: no need to try the next
    return best
