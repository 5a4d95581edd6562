"""The structure parameter map: free structure parameters (and free U_g, thickness, κ) → x.

:class:`StructureMap` implements the parameter-map interface of :mod:`larbed.refinement`
(``n_q``, ``labels``, ``x(q)``, ``dx(q)``, ``q(x)``) for a nonlinear map: x = [Re U (P), Im U (P),
t [nm], (κ), measurement part] with U_g from the atoms (:class:`~larbed.structure.model.SiteModel`)
except the hybrid ones, which are free on top of the independent-atom model and tied by the space group
(:func:`larbed.spacegroup.ug_ties`). ``dx(q)`` is the exact ∂x/∂q, so the refinement's Jacobian
is the chain rule ∂I/∂q = Σ_g ∂I/∂U_g ∂U_g/∂q. :meth:`StructureMap.clip` keeps the parameters
inside their bounds (t ≥ 0.1 nm, B ≥ −2 Å², 0 ≤ occupancy ≤ 1, κ ≥ 0).

The ``free``, ``free_ug``, ``fix`` and ``tie`` arguments of :func:`larbed.refine_structure` are
parsed here (:func:`select_parameters`, :func:`free_ug_groups`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import numpy as np

from .._types import STRUCTURE_KINDS
from ..geometry import Geometry
from ..refinement.parameters import MIN_THICKNESS_NM
from ..spacegroup import TieGroup, ug_ties
from ..symmetry import reflection_index
from .model import SiteModel, zone_visible

__all__ = ["MIN_B_ANGSTROM2", "StructureMap", "aniso_sites", "free_ug_groups", "select_parameters"]

logger = logging.getLogger(__name__)

#: Lower bound of a refined B [Å²]. B < 0 is non-physical, but a B near 0 must be free to
#: scatter below it with the noise (else its estimate is biased and its error bar wrong);
#: :func:`larbed.structure.result.bound_warnings` flags a B below 0 by more than 3σ.
MIN_B_ANGSTROM2 = -2.0

_ITEM = re.compile(r"^\s*([A-Za-z_]+)\s*\(\s*([^()]+?)\s*\)\s*$")


def _items(free, labels: list[str]) -> list[tuple[str, str | None]]:
    """(kind, site label or None = every site) of a ``free`` argument."""
    if isinstance(free, str):
        free = [free]
    if isinstance(free, Mapping):
        out = []
        for site, kinds in free.items():
            for kind in [kinds] if isinstance(kinds, str) else list(kinds):
                out.append((str(kind), str(site)))
    elif isinstance(free, Sequence):
        out = []
        for item in free:
            if not isinstance(item, str):
                raise TypeError(f"free: each entry must be a string such as 'xyz' or 'b_iso(O1)', "
                                f"got {item!r}")
            m = _ITEM.match(item)
            out.append((m.group(1), m.group(2)) if m else (item.strip(), None))
    else:
        raise TypeError(f"free must be None, a string, a sequence of strings or a mapping site → "
                        f"kinds, got {type(free).__name__}")
    for kind, site in out:
        if kind not in STRUCTURE_KINDS:
            raise ValueError(f"free: unknown parameter kind {kind!r}; choose from {STRUCTURE_KINDS}")
        if site is not None and site not in labels:
            raise ValueError(f"free: no site {site!r}; the sites are {labels}")
        if kind == "b_global" and site is not None:
            raise ValueError("free: 'b_global' is one B for all atoms; name it without a site")
    return out


def aniso_sites(free, crystal) -> set[str]:
    """Labels of the sites ``free`` refines with anisotropic U^ij."""
    if free is None:
        return set()
    labels = [s.label for s in crystal.sites]
    out = set()
    for kind, site in _items(free, labels):
        if kind == "u_aniso":
            out.update(labels if site is None else [site])
    return out


def select_parameters(free, model: SiteModel, zone_axis) -> tuple[list[int], list[str]]:
    """Indices of the raw parameters ``free`` names, and the labels of the coordinates left out
    because they move along the zone axis (only for ``free=None``).

    ``None``: every coordinate the site symmetry allows and the zone axis can see, one B (or
    the U^ij of an anisotropic site) per site; occupancies fixed.
    """
    sites = model.crystal.sites
    labels = [s.label for s in sites]
    by_site: dict[tuple[str, int], list[int]] = {}
    for i, prm in enumerate(model.parameters):
        by_site.setdefault((prm.kind, prm.site), []).append(i)
    hidden_all: list[str] = []
    if free is None:
        items = [("xyz", None), ("adp", None)]
    else:
        items = _items(free, labels)
    chosen: list[int] = []
    for kind, site in items:
        if kind == "b_global":
            chosen.append(model.global_col)
            continue
        targets = range(len(sites)) if site is None else [labels.index(site)]
        for si in targets:
            if kind == "xyz":
                cols = by_site.get(("xyz", si), [])
                if free is None:
                    mask = zone_visible(sites[si].coordinates, zone_axis) if cols else []
                    hidden = [model.parameters[c].label for c, v in zip(cols, mask, strict=True) if not v]
                    hidden_all.extend(hidden)
                    cols = [c for c, v in zip(cols, mask, strict=True) if v]
                elif not cols and site is not None:
                    raise ValueError(
                        f"free: the space group fixes every coordinate of {site} (site symmetry of "
                        f"order {len(sites[si].stabilizer)} at {tuple(np.round(model.terms[si].r_base, 4))})")
                chosen.extend(cols)
            elif kind in ("adp", "b_iso", "u_aniso"):
                cols = by_site.get(("u_aniso", si)) or by_site.get(("b_iso", si), [])
                chosen.extend(cols)
            elif kind == "occupancy":
                chosen.extend(by_site[("occupancy", si)])
    if free is not None and any(k == "xyz" and s is None for k, s in items) and not any(
            model.parameters[c].kind == "xyz" for c in chosen):
        raise ValueError("free: the space group fixes every coordinate of every site; nothing "
                         "named 'xyz' can move")
    adps = [c for c in chosen if model.parameters[c].kind == "b_iso"]
    if model.global_col in chosen and len(adps) == len(sites):
        raise ValueError("free: 'b_global' with 'b_iso' of every site is degenerate (B_global + ΔB "
                         "and every B − ΔB give the same crystal); refine one or the other")
    return list(dict.fromkeys(chosen)), hidden_all


def free_ug_groups(free_ug, geometry: Geometry, crystal) -> list[TieGroup]:
    """The tie groups of the U_g refined freely (hybrid mode): ``None`` (none), an int n (the
    n lowest |g| shells of reflections the space group allows) or a sequence of (h, k, l)."""
    if free_ug is None:
        return []
    ties = [t for t in ug_ties(crystal.space_group, geometry.reflection_hkl)]
    owner = {m: t for t in ties for m in t.members}
    if isinstance(free_ug, (bool, np.bool_)):
        raise TypeError("free_ug must be None, a number of shells or a sequence of (h, k, l)")
    if isinstance(free_ug, (int, np.integer)):
        if free_ug < 0:
            raise ValueError(f"free_ug must be >= 0 shells, got {free_ug}")
        allowed = [t for t in ties if t.basis.shape[1]]  # forbidden reflections stay zero
        shell = [round(float(np.linalg.norm(geometry.reflection_xy[t.members[0]])), 6) for t in allowed]
        keep = set(sorted(set(shell))[:int(free_ug)])
        return [t for t, s in zip(allowed, shell, strict=True) if s in keep]
    out = []
    for key in free_ug:
        try:
            idx, _ = reflection_index(geometry, key)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"free_ug: {exc}") from None
        tie = owner[idx]
        if tie.basis.shape[1] == 0:
            raise ValueError(f"free_ug: the space group {crystal.space_group.name} fixes U"
                             f"({geometry.reflection_labels()[idx]}) to zero (a forbidden reflection)")
        if tie not in out:
            out.append(tie)
    return out


class StructureMap:
    """x(q) for structure parameters (see the module). ``select`` (n_raw, n_s) maps the free
    structure parameters onto the raw ones (a column with several ones ties them).
    ``measurement_part`` (start vector, free mask, labels) appends the measurement model's part
    of x (:class:`larbed.refinement.measured.MeasuredModel`): its free entries are parameters
    of their own (kind ``'measurement'``), the fixed ones stay at the start."""

    def __init__(self, model: SiteModel, geometry: Geometry, select: np.ndarray, ug_groups: list[TieGroup],
                 thickness_nm: float, refine_thickness: bool, absorption: float | None,
                 refine_absorption: bool, measurement_part=None):
        self.model, self.geometry = model, geometry
        self.p = geometry.n_reflections
        self.select = np.asarray(select, float)
        covered = self.select.sum(axis=1) > 0
        self.p_base = np.where(covered, 0.0, model.p0)
        starts = [model.p0[np.flatnonzero(col)[0]] for col in self.select.T]
        self.labels = [model.parameters[np.flatnonzero(col)[0]].label for col in self.select.T]
        self.kinds = [model.parameters[np.flatnonzero(col)[0]].kind for col in self.select.T]
        self.n_s = self.select.shape[1]
        u_iam, _ = model.evaluate(model.p0, derivatives=False)
        names = geometry.reflection_labels()
        self.groups = ug_groups
        self.free_refl = np.zeros(self.p, bool)
        for grp in ug_groups:
            self.free_refl[list(grp.members)] = True
            root = u_iam[grp.members[0]]
            v0 = grp.basis.T @ np.array([root.real, root.imag])
            lab = names[grp.members[0]]
            parts = (["Re", "Im"] if grp.basis.shape[1] == 2 else
                     ["Re" if abs(grp.basis[0, 0]) > 1 - 1e-9 else
                      "Im" if abs(grp.basis[1, 0]) > 1 - 1e-9 else "|phase|"])
            for part, v in zip(parts, v0, strict=True):
                self.labels.append(f"{part} U({lab})")
                self.kinds.append("ug")
                starts.append(float(v))
        self.n_v = len(starts) - self.n_s
        self.absorbing = absorption is not None
        self.t0, self.kappa0 = float(thickness_nm), absorption
        self.refine_t, self.refine_kappa = bool(refine_thickness), bool(refine_absorption)
        if self.refine_t:
            self.labels.append("t")
            self.kinds.append("thickness")
            starts.append(self.t0)
        if self.absorbing and self.refine_kappa:
            self.labels.append("kappa")
            self.kinds.append("absorption")
            starts.append(float(absorption))
        self.n_core = 2 * self.p + 1 + int(self.absorbing)
        # the measurement part of x (scale, background, tilt map: refinement.measured), linear
        xm0, free_m, labels_m = (np.zeros(0), np.zeros(0, bool), []) if measurement_part is None \
            else measurement_part
        self.xm0 = np.asarray(xm0, float)
        self.free_m = np.flatnonzero(np.asarray(free_m, bool))
        self.i_m = len(starts)
        for k in self.free_m:
            self.labels.append(labels_m[k])
            self.kinds.append("measurement")
            starts.append(float(self.xm0[k]))
        self.q0 = np.array(starts, float)
        self.n_x = self.n_core + len(self.xm0)
        self._cache: tuple | None = None

    @property
    def n_q(self) -> int:
        return len(self.q0)

    def reduction_skeleton(self) -> np.ndarray:
        """One column per entry of x: lets the refinement's kernels give ∂I/∂x in real arithmetic
        (:meth:`larbed.refinement.jacobian.ForwardModel.reduce_to`); ∂x/∂q is applied after."""
        return np.eye(self.n_x)

    def raw(self, q) -> np.ndarray:
        """The raw structure parameters (every site) at q."""
        return self.p_base + self.select @ np.asarray(q)[:self.n_s]

    def _eval(self, q):
        q = np.asarray(q, float)
        if self._cache is not None and np.array_equal(self._cache[0], q):
            return self._cache[1], self._cache[2]
        u, du = self.model.evaluate(self.raw(q))
        self._cache = (q.copy(), u, du)
        return u, du

    def _group_values(self, q):
        col = self.n_s
        for grp in self.groups:
            d = grp.basis.shape[1]
            v = grp.basis @ np.asarray(q)[col:col + d]
            yield grp, col, d, v
            col += d

    def x(self, q) -> np.ndarray:
        """[Re U (P), Im U (P), t [nm], (κ), measurement part] at q."""
        u, _ = self._eval(q)
        u = u.copy()
        for grp, _, _, v in self._group_values(q):
            for m, lin in zip(grp.members, grp.maps, strict=True):
                re, im = lin @ v
                u[m] = re + 1j * im
        i = self.n_s + self.n_v
        t = q[i] if self.refine_t else self.t0
        out = [u.real, u.imag, [t]]
        if self.absorbing:
            out.append([q[i + int(self.refine_t)] if self.refine_kappa else self.kappa0])
        xm = self.xm0.copy()
        xm[self.free_m] = np.asarray(q, float)[self.i_m:]
        out.append(xm)
        return np.concatenate(out)

    def dx(self, q=None) -> np.ndarray:
        """∂x/∂q (n_x, n_q), exact."""
        q = self.q0 if q is None else q
        _, du = self._eval(q)
        p = self.p
        d = np.zeros((self.n_x, self.n_q))
        duq = du @ self.select
        duq[self.free_refl] = 0.0
        d[:p, :self.n_s], d[p:2 * p, :self.n_s] = duq.real, duq.imag
        for grp, col, dim, _ in self._group_values(q):
            for m, lin in zip(grp.members, grp.maps, strict=True):
                block = lin @ grp.basis
                d[m, col:col + dim] = block[0]
                d[p + m, col:col + dim] = block[1]
        i = self.n_s + self.n_v
        if self.refine_t:
            d[2 * p, i] = 1.0
        if self.absorbing and self.refine_kappa:
            d[2 * p + 1, i + int(self.refine_t)] = 1.0
        d[self.n_core + self.free_m, self.i_m + np.arange(len(self.free_m))] = 1.0
        return d

    def q(self, x, iterations: int = 20) -> np.ndarray:
        """The free parameters whose x(q) is closest to x (Gauss–Newton from the start)."""
        q = self.q0.copy()
        for _ in range(iterations):
            r = self.x(q) - np.asarray(x, float)
            step = np.linalg.lstsq(self.dx(q), -r, rcond=None)[0]
            q = q + step
            if np.max(np.abs(step)) <= 1e-14 * max(1.0, np.max(np.abs(q))):
                break
        return q

    def clip(self, q) -> np.ndarray:
        """q inside the bounds: t ≥ 0.1 nm, B ≥ :data:`MIN_B_ANGSTROM2` (and B + B_global too),
        0 ≤ occupancy ≤ 1, κ ≥ 0."""
        q = np.array(q, float)
        for i, kind in enumerate(self.kinds):
            if kind == "thickness":
                q[i] = max(q[i], MIN_THICKNESS_NM)
            elif kind == "b_iso":
                q[i] = max(q[i], MIN_B_ANGSTROM2)
            elif kind == "absorption":
                q[i] = max(q[i], 0.0)
            elif kind == "occupancy":
                q[i] = min(max(q[i], 0.0), 1.0)
        if "b_global" in self.kinds:
            raw = self.raw(q)
            b = [raw[c] for c, prm in enumerate(self.model.parameters) if prm.kind == "b_iso"]
            i = self.kinds.index("b_global")
            q[i] = max(q[i], MIN_B_ANGSTROM2 - min(b, default=0.0))
        return q

    def at_bound(self, q) -> list[str]:
        """Labels of the parameters that sit on a bound at q."""
        out = []
        for i, kind in enumerate(self.kinds):
            v = q[i]
            if (kind == "thickness" and v <= MIN_THICKNESS_NM * (1 + 1e-9)) or \
               (kind == "b_iso" and v <= MIN_B_ANGSTROM2 + 1e-12) or \
               (kind == "absorption" and v <= 1e-12) or \
               (kind == "occupancy" and (v <= 1e-12 or v >= 1 - 1e-12)):
                out.append(self.labels[i])
        return out
