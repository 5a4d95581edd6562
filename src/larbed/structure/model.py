"""Structure factors as functions of the structure parameters, with exact derivatives.

:class:`SiteModel` holds, for one crystal and one geometry, everything that does not change during
a refinement (the site operations applied to every reflection, scattering factors); its
:meth:`~SiteModel.evaluate` gives U_g and ∂U_g/∂p for the *raw* parameter vector p of every site:

* coordinates: the pivots of the allowed displacements (``x(O1)``, ``z(Zn1)``; absolute
  fractional values, see :func:`larbed.spacegroup.displacement_basis`);
* one B [Å²] per isotropic site (``B(Sr1)``), or the allowed U^ij [Å²] of an anisotropic one
  (``U11(O1)``, …);
* one occupancy per site (``occ(Ti1)``);
* an overall B [Å²] added to every atom (``B_global``).

U_g = γ/(πΩ) Σ_j occ_j f_j(|g|) T_j(g) exp(−2πi g·r_j), with r_j = R_j r + t_j for the members of
a site (representative r), T_j = exp(−(B + B_global)|g|²/4) or exp(−h R_j β R_jᵀ hᵀ − B_global|g|²/4)
(β = 2π² a*_i a*_j U^ij). The derivatives follow the formula term by term.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..constants import relativistic_gamma
from ..crystal import SITE_TOLERANCE_ANGSTROM, Crystal
from ..geometry import Geometry
from ..scattering import Parameterization, known_elements, scattering_factor
from ..spacegroup import U_NAMES, U_PAIRS, Site, u_to_beta

__all__ = ["COORD_NAMES", "RawParameter", "SiteModel", "atomic_number", "propagate", "zone_visible"]

COORD_NAMES = ("x", "y", "z")


def atomic_number(symbol: str) -> int:
    """Z of an element (the order of the scattering-factor tables)."""
    return known_elements().index(symbol) + 1


@dataclass(frozen=True)
class RawParameter:
    """One structure parameter: ``kind`` in {'xyz', 'b_iso', 'u_aniso', 'occupancy', 'b_global'}."""

    label: str
    kind: str
    site: int  # -1 for b_global
    start: float


def zone_visible(basis: np.ndarray, zone_axis) -> np.ndarray:
    """Boolean mask over the columns of a displacement basis (3, k): False for the columns a
    zone-axis pattern cannot see (moving along [uvw] changes no ZOLZ phase h·r, h·uvw = 0)."""
    uvw = np.asarray(zone_axis, float)
    k = basis.shape[1]
    if k == 0 or np.linalg.matrix_rank(np.column_stack([basis, uvw]), tol=1e-9) > k:
        return np.ones(k, bool)  # the zone axis is not among the allowed moves
    keep = np.zeros(k, bool)
    span = uvw[:, None]
    for m in range(k):
        trial = np.column_stack([span, basis[:, m]])
        if np.linalg.matrix_rank(trial, tol=1e-9) > span.shape[1]:
            keep[m] = True
            span = trial
    return keep


@dataclass
class _SiteTerms:
    site: Site
    r_base: np.ndarray        # (3,) position = r_base + basis @ c
    basis: np.ndarray         # (3, k) displacement basis in the representative's frame
    coord_cols: np.ndarray    # raw indices of the driving coordinates (the leader's for a follower)
    hrb: np.ndarray           # (P, m, k) (h R_j) @ basis
    hr: np.ndarray            # (P, m, 3) h R_j
    ht: np.ndarray            # (P, m) h·t_j
    f: np.ndarray             # (P,) scattering factor
    aniso: bool
    adp_cols: np.ndarray      # raw indices of B (1) or of the U^ij coefficients (k')
    qa: np.ndarray | None     # (P, m, k') −∂(h β_j hᵀ)/∂coef … as positive exponent terms
    occ_col: int


class SiteModel:
    """U_g and ∂U_g/∂p of a crystal's sites for the reflections of a geometry (see the module).

    Parameters
    ----------
    crystal : Crystal
        The start: its sites (asymmetric unit) and their values.
    geometry : Geometry
        The reflections (its crystal only fixes the lattice).
    parameterization : {'lobato', 'kirkland'}
    aniso : set of str
        Site labels refined with anisotropic U^ij (sites whose atoms carry ``u_aniso`` are
        anisotropic anyway).
    nuclear : bool
        Replace each f_j(|g|) by the atomic number Z_j (the nuclear term of the Mott–Bethe formula).
    """

    def __init__(self, crystal: Crystal, geometry: Geometry, parameterization: Parameterization = "lobato",
                 aniso=frozenset(), nuclear: bool = False):
        self.crystal = crystal
        hkl = geometry.reflection_hkl.astype(float)
        self.hkl = hkl
        self.g2 = np.sum((hkl @ crystal.reciprocal_vectors) ** 2, axis=1)
        self.prefactor = relativistic_gamma(geometry.voltage_kv) / (np.pi * crystal.volume)
        recip = np.linalg.norm(crystal.reciprocal_vectors, axis=1)
        beta = u_to_beta(recip)
        params: list[RawParameter] = []
        self.terms: list[_SiteTerms] = []
        leaders: list[tuple[int, np.ndarray, np.ndarray]] = []  # (site, member positions, coord cols)
        frac = crystal.fractional_positions
        cache: dict[str, np.ndarray] = {}
        for si, site in enumerate(crystal.sites):
            rep = crystal.atoms[site.atoms[0]]
            r_sym = _symmetrized(frac[site.atoms[0]], site, crystal)
            follow = _leader(r_sym, leaders, crystal)
            if follow is None:
                basis = site.coordinates
                cols = np.arange(len(params), len(params) + basis.shape[1])
                c0 = r_sym[list(site.coordinate_pivots)]
                for m, axis in enumerate(site.coordinate_pivots):
                    params.append(RawParameter(f"{COORD_NAMES[axis]}({site.label})", "xyz", si,
                                               float(c0[m])))
                r_base = r_sym - basis @ c0
                leaders.append((si, _member_positions(site, r_sym), cols))
            else:
                lead_site, rot, t_off, cols = follow
                lead = self.terms[lead_site]
                basis = rot @ lead.basis
                c0 = np.array([params[c].start for c in cols])
                r_base = r_sym - basis @ c0
            hr = np.einsum("pi,mij->pmj", hkl, site.rotations.astype(float))
            ht = hkl @ site.translations.T
            if rep.symbol not in cache:
                g = np.sqrt(self.g2)
                cache[rep.symbol] = (np.full(len(g), float(atomic_number(rep.symbol))) if nuclear
                                     else scattering_factor(rep.symbol, g, parameterization))
            is_aniso = rep.u_aniso is not None or site.label in aniso
            if is_aniso:
                u6 = (np.asarray(rep.u_aniso, float) if rep.u_aniso is not None
                      else _isotropic_u(rep.b_iso, crystal))
                coef = np.linalg.lstsq(site.adps, u6, rcond=None)[0]
                adp_cols = np.arange(len(params), len(params) + site.adps.shape[1])
                for m, comp in enumerate(site.adp_pivots):
                    params.append(RawParameter(f"{U_NAMES[comp]}({site.label})", "u_aniso", si,
                                               float(coef[m])))
                hh = np.stack([hr[..., i] * hr[..., j] * (1.0 if i == j else 2.0)
                               for i, j in U_PAIRS], axis=-1)  # (P, m, 6)
                qa = (hh * beta) @ site.adps
            else:
                adp_cols = np.array([len(params)])
                params.append(RawParameter(f"B({site.label})", "b_iso", si, float(rep.b_iso)))
                qa = None
            occ_col = len(params)
            params.append(RawParameter(f"occ({site.label})", "occupancy", si, float(rep.occupancy)))
            self.terms.append(_SiteTerms(site, r_base, basis, cols, hr @ basis, hr, ht,
                                         cache[rep.symbol], is_aniso, adp_cols, qa, occ_col))
        self.aniso_labels = frozenset(st.site.label for st in self.terms if st.aniso)
        self.global_col = len(params)
        params.append(RawParameter("B_global", "b_global", -1, 0.0))
        self.parameters = params
        self.p0 = np.array([p.start for p in params])

    @property
    def n_raw(self) -> int:
        return len(self.parameters)

    def evaluate(self, p: np.ndarray, derivatives: bool = True):
        """(U (P,) complex [1/Å²], ∂U/∂p (P, n_raw) complex or None) at raw parameters p."""
        n_p = len(self.g2)
        total = np.zeros(n_p, complex)
        jac = np.zeros((n_p, self.n_raw), complex) if derivatives else None
        glob = np.exp(-p[self.global_col] * self.g2 / 4.0)
        for st in self.terms:
            r = st.r_base + st.basis @ p[st.coord_cols]
            phase = np.exp(-2j * np.pi * (st.hr @ r + st.ht))  # (P, m)
            if st.aniso:
                dw = np.exp(-st.qa @ p[st.adp_cols])  # (P, m)
            else:
                dw = np.exp(-p[st.adp_cols[0]] * self.g2 / 4.0)[:, None]
            unit = (self.prefactor * st.f * glob)[:, None] * dw * phase  # occupancy 1
            u_site1 = unit.sum(axis=1)
            occ = p[st.occ_col]
            total += occ * u_site1
            if not derivatives:
                continue
            if st.coord_cols.size:
                jac[:, st.coord_cols] += occ * -2j * np.pi * np.einsum("pm,pmk->pk", unit, st.hrb)
            if st.aniso:
                jac[:, st.adp_cols] += -occ * np.einsum("pm,pmk->pk", unit, st.qa)
            else:
                jac[:, st.adp_cols[0]] += -self.g2 / 4.0 * occ * u_site1
            jac[:, st.occ_col] += u_site1
            jac[:, self.global_col] += -self.g2 / 4.0 * occ * u_site1
        return total, jac

    def site_values(self, p: np.ndarray, cov: np.ndarray | None = None) -> list[dict]:
        """Per site: position (3,), B, U^ij (6,) or None, occupancy — and their standard errors
        from the covariance of p (None: no errors)."""
        out = []
        for st in self.terms:
            d_pos = np.zeros((3, self.n_raw))
            d_pos[:, st.coord_cols] = st.basis
            r = st.r_base + st.basis @ p[st.coord_cols]
            vals = {"position": r, "occupancy": float(p[st.occ_col])}
            d_occ = np.zeros(self.n_raw)
            d_occ[st.occ_col] = 1.0
            d_b = np.zeros(self.n_raw)
            d_b[self.global_col] = 1.0
            if st.aniso:
                iso = _isotropic_u(1.0, self.crystal)  # U^ij of B = 1 Å²
                d_u = np.zeros((6, self.n_raw))
                d_u[:, st.adp_cols] = st.site.adps
                d_u[:, self.global_col] = iso
                vals["u_aniso"] = d_u @ p
                weights = np.array([_u_eq(e, self.crystal) for e in np.eye(6)])  # U_eq is linear
                vals["b_iso"] = float(8 * np.pi**2 * weights @ vals["u_aniso"])
                blocks = {"position": d_pos, "u_aniso": d_u, "occupancy": d_occ,
                          "b_iso": 8 * np.pi**2 * weights @ d_u}
            else:
                d_b[st.adp_cols[0]] = 1.0
                vals["u_aniso"] = None
                vals["b_iso"] = float(d_b @ p)
                blocks = {"position": d_pos, "b_iso": d_b, "occupancy": d_occ}
            if cov is not None:
                for name, d in blocks.items():
                    vals[f"{name}_su"] = propagate(np.atleast_2d(d), cov).reshape(d.shape[:-1])
            out.append(vals)
        return out

    def raw_of(self, crystal: Crystal) -> np.ndarray:
        """The raw parameters of another crystal with the same atoms in the same order (e.g. the
        truth of a test), each coordinate taken at the image nearest the start."""
        if len(crystal.atoms) != len(self.crystal.atoms) or any(
                a.symbol != b.symbol for a, b in zip(crystal.atoms, self.crystal.atoms, strict=True)):
            raise ValueError("the crystal must list the same elements in the same order as the start")
        p = self.p0.copy()
        for st in self.terms:
            atom = crystal.atoms[st.site.atoms[0]]
            start = st.r_base + st.basis @ self.p0[st.coord_cols]
            pos = np.asarray(atom.position) - np.round(np.asarray(atom.position) - start)
            if st.coord_cols.size:
                p[st.coord_cols] = np.linalg.lstsq(st.basis, pos - st.r_base, rcond=None)[0]
            if st.aniso:
                u6 = (np.asarray(atom.u_aniso) if atom.u_aniso is not None
                      else _isotropic_u(atom.b_iso, crystal))
                p[st.adp_cols] = np.linalg.lstsq(st.site.adps, u6, rcond=None)[0]
            else:
                p[st.adp_cols[0]] = atom.b_iso
            p[st.occ_col] = atom.occupancy
        p[self.global_col] = 0.0
        return p


def propagate(d: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Standard errors of d @ p (rows of d) from Cov(p); inf where an undetermined p enters."""
    bad = ~np.isfinite(np.diag(cov))
    finite = np.where(np.isfinite(cov), cov, 0.0)
    su = np.sqrt(np.abs(np.einsum("ki,ij,kj->k", d, finite, d)))
    su[np.any(d[:, bad] != 0, axis=1)] = np.inf
    return su


def _symmetrized(position: np.ndarray, site: Site, crystal: Crystal) -> np.ndarray:
    """The representative's position projected onto its site symmetry (mean of its images)."""
    group = crystal.space_group
    if group is None:
        return np.asarray(position, float)
    imgs = []
    for r, t in zip(group.rotations, group.translations, strict=True):
        img = r @ position + t
        d = img - position
        if np.linalg.norm((d - np.round(d)) @ crystal.lattice_vectors) <= SITE_TOLERANCE_ANGSTROM:
            imgs.append(img - np.round(d))
    return np.mean(imgs, axis=0)


def _member_positions(site: Site, r: np.ndarray) -> np.ndarray:
    return np.einsum("mij,j->mi", site.rotations.astype(float), r) + site.translations


def _leader(r: np.ndarray, leaders, crystal: Crystal):
    """(leader site, R, t, coordinate columns) when a site of another element shares this
    position (a mixed site: its coordinates follow the leader's), else None."""
    for si, members, cols in leaders:
        site = crystal.sites[si]
        d = members - r
        dist = np.linalg.norm((d - np.round(d)) @ crystal.lattice_vectors, axis=1)
        hit = np.flatnonzero(dist <= SITE_TOLERANCE_ANGSTROM)
        if hit.size:
            m = int(hit[0])
            return si, site.rotations[m].astype(float), site.translations[m], cols
    return None


def _isotropic_u(b_iso: float, crystal: Crystal) -> np.ndarray:
    """U^ij (CIF convention) of an isotropic displacement B [Å²]: U^ij = U g*^ij / (a*_i a*_j)."""
    rec = crystal.reciprocal_vectors
    gstar = rec @ rec.T
    n = np.linalg.norm(rec, axis=1)
    u = b_iso / (8 * np.pi**2) * gstar / np.outer(n, n)
    return np.array([u[i, j] for i, j in U_PAIRS])


def _u_eq(u6: np.ndarray, crystal: Crystal) -> float:
    """U_eq = (1/3) Σ U^ij a*_i a*_j a_i·a_j [Å²]."""
    u = np.zeros((3, 3))
    for k, (i, j) in enumerate(U_PAIRS):
        u[i, j] = u[j, i] = u6[k]
    n = np.linalg.norm(crystal.reciprocal_vectors, axis=1)
    lat = crystal.lattice_vectors
    return float(np.sum(u * np.outer(n, n) * (lat @ lat.T)) / 3.0)
