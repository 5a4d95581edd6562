"""The outcome of :func:`larbed.refine_structure`: :class:`StructureResult`.

Besides the refined crystal and its parameters with standard errors it reports every U_g (the
free ones of a hybrid refinement and the ones computed from the atoms, with errors propagated
through ∂U_g/∂p) and their X-ray equivalents by the Mott–Bethe formula,

    F_X(g) = Σ_j occ_j Z_j T_j(g) exp(−2πi g·r_j) − 2π² a₀ |g|² F_e(g),   F_e = πΩ U_g / γ,

(a₀ the Bohr radius [Å], T_j the Debye–Waller factor, F_X in electrons per cell): the quantity
bonding-charge studies compare with X-ray diffraction and theory.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace

import numpy as np
import xarray as xr

from ..crystal import Atom, Crystal
from ..refinement import RefinementResult
from ..spacegroup import rotate_u
from ..trust import FitWarning, untrustworthy
from .cif import format_su, structure_cif
from .model import SiteModel, propagate

__all__ = ["BOHR_RADIUS_ANGSTROM", "NEGATIVE_B_SIGMAS", "StructureResult", "parameter_name", "refined_crystal",
           "xray_structure_factors"]

logger = logging.getLogger(__name__)

#: A refined B this many standard errors below 0 is flagged.
NEGATIVE_B_SIGMAS = 3.0
#: Bohr radius a₀ [Å] (CODATA 2018).
BOHR_RADIUS_ANGSTROM = 0.529177210903

_UNITS = {"xyz": "1 (fractional)", "b_iso": "Å^2", "u_aniso": "Å^2", "occupancy": "1",
          "b_global": "Å^2", "ug": "1/Å^2", "thickness": "nm", "absorption": "1",
          "measurement": "1"}  # scale, background (fraction of the incident beam), tilt matrix


def parameter_name(label: str) -> str:
    """A netCDF-safe variable name for a parameter label: 'x(O1)' → 'x_O1', 'Re U(1 -1 0)' →
    'Re_U_1_m1_0'."""
    return re.sub(r"[^A-Za-z0-9]+", "_", label.replace("-", "m")).strip("_")


@dataclass
class StructureResult:
    """Outcome of :func:`larbed.refine_structure`.

    Attributes
    ----------
    crystal : Crystal
        The refined crystal (same space group, atoms, labels; positions, B or U^ij and
        occupancies refined; an overall B is folded into every atom). A B refined below 0 (free
        to scatter there with the noise) is 0 here, as :class:`larbed.Crystal` requires, and as
        refined in ``parameters`` and the CIF.
    parameters : xarray.Dataset
        One variable per refined parameter (named by :func:`parameter_name`, ``attrs['label']``
        the label such as ``'x(O1)'``, ``attrs['units']``) and ``<name>_error`` (standard error;
        inf for a combination the pattern does not determine), plus ``correlation`` and
        ``covariance`` over (``parameter``, ``parameter_b``).
    thickness_nm, thickness_error_nm : float
    r_factor, chi2 : float
        R and reduced χ² (χ²/dof) of the fit.
    r_free : float
        R on the tilts held out of the fit (``holdout``) under the refined model; NaN when none
        were held out.
    ug, ug_error : xarray.DataArray
        Every U_g of the fit [1/Å²] with standard errors (real part σ(Re U), imaginary σ(Im U)).
    free_ug : xarray.Dataset
        The U_g refined freely (hybrid mode): ``value``, ``error``, ``iam`` (the independent-atom
        value of the refined atoms) and ``change`` (value/iam − 1) over ``reflection``.
    xray, xray_error : xarray.DataArray
        X-ray structure factors F_X [electrons per cell] by the Mott–Bethe formula, and their
        standard errors (real part σ(Re F), imaginary σ(Im F)).
    fixed : dict
        Parameters held at their start and why (e.g. invisible along the zone axis).
    warnings : list of FitWarning
        What makes a number doubtful (:mod:`larbed.trust`), and 'symmetry' for a crystal without
        a space group (refined in P1).
    refinement : RefinementResult
        The fit as a U_g refinement: fitted pattern, history, covariance of x.
    """

    crystal: Crystal
    parameters: xr.Dataset
    thickness_nm: float
    thickness_error_nm: float
    r_factor: float
    chi2: float
    ug: xr.DataArray
    ug_error: xr.DataArray
    free_ug: xr.Dataset
    xray: xr.DataArray
    xray_error: xr.DataArray
    refinement: RefinementResult = field(repr=False)
    fixed: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    converged: bool = False
    n_iterations: int = 0
    r_free: float = float("nan")
    site_values: list = field(default_factory=list, repr=False)
    cif_items: dict = field(default_factory=dict, repr=False)
    truth_map: object = field(default=None, repr=False)

    @property
    def trustworthy(self) -> bool:
        """False when a warning of kind 'bound', 'chi2' or 'r_factor' was raised."""
        return not untrustworthy(self.warnings)

    @property
    def measurement(self):
        """The refined measurement model (``xarray.Dataset`` of values and ``<name>_error``, as
        :attr:`larbed.refinement.result.RefinementResult.measurement`), or None without one."""
        return self.refinement.measurement

    @property
    def labels(self) -> list[str]:
        """The refined parameters' labels, in order."""
        return [str(v) for v in self.parameters.parameter.values]

    def value(self, label: str) -> tuple[float, float]:
        """(value, standard error) of the parameter ``label`` (e.g. ``'B(Sr1)'``)."""
        name = parameter_name(label)
        if name not in self.parameters:
            raise KeyError(f"{label!r} was not refined; refined: {self.labels}")
        return float(self.parameters[name]), float(self.parameters[f"{name}_error"])

    def compare(self, crystal_true: Crystal, ug_true=None, thickness_true_nm: float | None = None
                ) -> xr.Dataset:
        """Refined vs true parameters (a test's truth): ``found``, ``true``, ``error`` and
        ``z`` = |found − true| / error over ``parameter``. The true crystal must list the same
        atoms in the same order as the start; ``ug_true`` (U_g [1/Å²]) gives the truth of free
        U_g, ``thickness_true_nm`` that of t."""
        smap = self.truth_map
        raw = smap.model.raw_of(crystal_true)
        found = np.array([self.parameters[parameter_name(lab)].item() for lab in self.labels])
        error = np.array([self.parameters[f"{parameter_name(lab)}_error"].item() for lab in self.labels])
        true = np.full(len(found), np.nan)
        for i in range(smap.n_s):
            true[i] = raw[np.flatnonzero(smap.select[:, i])[0]]
        if ug_true is not None:
            vals = np.asarray(getattr(ug_true, "values", ug_true), complex)
            col = smap.n_s
            for grp in smap.groups:
                root = vals[grp.members[0]]
                d = grp.basis.shape[1]
                true[col:col + d] = grp.basis.T @ np.array([root.real, root.imag])
                col += d
        if thickness_true_nm is not None and "t" in self.labels:
            true[self.labels.index("t")] = thickness_true_nm
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.abs(found - true) / error
        return xr.Dataset({"found": ("parameter", found), "true": ("parameter", true),
                           "error": ("parameter", error), "z": ("parameter", z)},
                          coords={"parameter": self.labels})

    def to_cif(self, path) -> str:
        """Write the refined crystal as CIF with standard uncertainties; returns the path."""
        rows = []
        for h, k, l_, v, e in zip(self.free_ug.h.values, self.free_ug.k.values,
                                  self.free_ug.l.values, self.free_ug.value.values,
                                  self.free_ug.error.values, strict=True):
            rows.append((int(h), int(k), int(l_), v.real, e.real, v.imag, e.imag))
        return structure_cif(path, crystal=self.crystal, sites=self.site_values,
                             labels=[s.label for s in self.crystal.sites],
                             extra_items=self.cif_items, ug_rows=rows)


def refined_crystal(model: SiteModel, values: list[dict], name: str) -> Crystal:
    """The crystal of the refined site values (every member atom placed by its operation)."""
    start = model.crystal
    atoms: list[Atom | None] = [None] * len(start.atoms)
    for st, vals in zip(model.terms, values, strict=True):
        site = st.site
        for idx, rot, tran in zip(site.atoms, site.rotations, site.translations, strict=True):
            pos = np.mod(rot @ vals["position"] + tran, 1.0)
            u6 = None
            if vals["u_aniso"] is not None:
                u6 = rotate_u(vals["u_aniso"], rot, np.linalg.norm(start.reciprocal_vectors, axis=1))
            atoms[idx] = replace(start.atoms[idx], position=tuple(float(v) for v in pos),
                                 b_iso=max(float(vals["b_iso"]), 0.0),
                                 occupancy=min(max(float(vals["occupancy"]), 0.0), 1.0),
                                 u_aniso=u6, label=site.label)
    return Crystal(start.cell, atoms, name=name, space_group=start.space_group)


def xray_structure_factors(smap, nuclear: SiteModel, q, cov_q, geometry):
    """(F_X complex (P,), σ complex (P,)) by the Mott–Bethe formula at q, errors from Cov(q)."""
    p = geometry.n_reflections
    x = smap.x(q)
    d = smap.dx(q)
    u = x[:p] + 1j * x[p:2 * p]
    du = d[:p] + 1j * d[p:2 * p]
    u_nuc, du_nuc = nuclear.evaluate(smap.raw(q))
    g2 = nuclear.g2
    scale = np.pi * smap.model.crystal.volume / float(geometry.gamma)
    fx = scale * (u_nuc - 2 * np.pi**2 * BOHR_RADIUS_ANGSTROM * g2 * u)
    dfx = -2 * np.pi**2 * BOHR_RADIUS_ANGSTROM * g2[:, None] * du
    dfx[:, :smap.n_s] += du_nuc @ smap.select
    dfx *= scale
    err = propagate(dfx.real, cov_q) + 1j * propagate(dfx.imag, cov_q)
    return fx, err


def parameters_dataset(labels, kinds, q, cov_q) -> xr.Dataset:
    """Every refined value with ``<name>_error``, the correlation and the covariance."""
    sig = np.sqrt(np.abs(np.diag(cov_q)))
    sig[~np.isfinite(np.diag(cov_q))] = np.inf
    ds = xr.Dataset(coords={"parameter": ("parameter", list(labels)),
                            "parameter_b": ("parameter_b", list(labels))})
    for lab, kind, v, s in zip(labels, kinds, q, sig, strict=True):
        name = parameter_name(lab)
        units = "mrad" if "[mrad]" in lab else _UNITS[kind]  # the tilt offset c
        ds[name] = ((), float(v), {"label": lab, "kind": kind, "units": units})
        ds[f"{name}_error"] = ((), float(s), {"label": f"σ {lab}", "units": units})
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov_q / np.outer(sig, sig)
    corr[~np.isfinite(corr)] = np.nan
    np.fill_diagonal(corr, np.where(np.isfinite(sig), 1.0, np.nan))
    ds["correlation"] = (("parameter", "parameter_b"), corr, {"units": "1"})
    ds["covariance"] = (("parameter", "parameter_b"), cov_q, {"units": "mixed (see each parameter)"})
    return ds


def free_ug_dataset(smap, ref: RefinementResult, iam: np.ndarray) -> xr.Dataset:
    """The freely refined U_g (one per tie group, its first member) with errors."""
    idx = [grp.members[0] for grp in smap.groups]
    ug, err = ref.ug.values[idx], ref.ug_error.values[idx]
    hkl = ref.geometry.reflection_hkl[idx] if idx else np.zeros((0, 3), int)
    with np.errstate(divide="ignore", invalid="ignore"):
        change = ug / iam[idx] - 1 if idx else np.zeros(0)
    return xr.Dataset({"value": ("reflection", ug, {"units": "1/Å^2"}),
                       "error": ("reflection", err, {"units": "1/Å^2"}),
                       "iam": ("reflection", iam[idx], {"units": "1/Å^2"}),
                       "change": ("reflection", change, {"units": "1"})},
                      coords={"h": ("reflection", hkl[:, 0]), "k": ("reflection", hkl[:, 1]),
                              "l": ("reflection", hkl[:, 2]),
                              "label": ("reflection", [ref.geometry.reflection_labels()[i] for i in idx])})


def bound_warnings(smap, q, cov_q=None) -> list[FitWarning]:
    """'bound' warnings of structure parameters that ended on a bound (the thickness is left to
    :func:`larbed.refinement.result.build_result`), and of a B below 0 by more than
    :data:`NEGATIVE_B_SIGMAS` standard errors (non-physical: the model misses something, e.g.
    absorption or a wrong scattering factor)."""
    out = []
    for label in smap.at_bound(q):
        if label != "t":
            out.append(FitWarning("bound", f"{label} ended at its bound ({format_su(float(q[smap.labels.index(label)]), None)})"))
    if cov_q is not None:
        sig = np.sqrt(np.abs(np.diag(cov_q)))
        for i, kind in enumerate(smap.kinds):
            if kind in ("b_iso", "b_global") and q[i] < 0 and q[i] + NEGATIVE_B_SIGMAS * sig[i] < 0:
                out.append(FitWarning("bound", f"{smap.labels[i]} = {format_su(float(q[i]), float(sig[i]))} Å² "
                                               f"is negative by more than {NEGATIVE_B_SIGMAS:g}σ (non-physical)"))
    return out
