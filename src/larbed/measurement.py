r"""The measurement model: what a detector does to the dynamical intensities (SPEC §11).

I_meas(t, b) = s_t · (I_dyn(t, b; U_g, thickness, κ, θ') + B(t, b)), with the nominal tilts θ of the
data mapped to the true tilts θ' = A θ + c [mrad]. A :class:`Measurement` names the form of each
part; its :attr:`~Measurement.values` (an ``xr.Dataset``) hold the numbers — the start of a
refinement, the truth of a simulation (:meth:`Measurement.with_values`), or (with ``<name>_error``
variables) what a refinement found.

* ``scale``: ``"none"`` (s = 1), ``"global"`` (one fitted s), ``"per_tilt"`` (s_t such that
  Σ_b I_meas = Σ_b I_data over the recorded beams of tilt t: analytic, not a parameter);
* ``background``: ``"none"``, ``"flat"`` (one B), ``"per_beam"`` (one B_b per beam),
  ``"smooth"`` (B = b₀ + b₁ \|g\| + b₂ \|g\|² + b₃ ρ², \|g\| in 1/Å, ρ the distance of the tilt from
  the disc centre over the disc radius: a diffuse inelastic background);
* ``absorption``: ``"none"``, ``"proportional"`` (κ: U_g → (1 + iκ) U_g, iκU₀ on the diagonal);
* ``tilt_map``: ``"none"``, ``"shift"`` (θ' = θ + c), ``"affine"`` (θ' = A θ + c);
* ``tilt_spread``: ``"none"``, ``"disc"`` (each recorded intensity is the mean of the dynamical
  intensities over a uniform disc of incident directions of radius ρ [mrad] around its true tilt:
  beam convergence, or an integration over a range of tilts; a fitted parameter, by Radon's
  7-point rule, exact for polynomials of degree ≤ 5 in the tilt, at 7× the cost).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import xarray as xr

from ._random import rng_from
from .geometry import Geometry

__all__ = ["ABSORPTION_FORMS", "BACKGROUND_FORMS", "SCALE_FORMS", "SMOOTH_TERMS", "TILT_MAP_FORMS",
           "TILT_SPREAD_FORMS", "Measurement", "average_spread", "disc_rule"]

logger = logging.getLogger(__name__)

ScaleForm = Literal["none", "global", "per_tilt"]
BackgroundForm = Literal["none", "flat", "per_beam", "smooth"]
AbsorptionForm = Literal["none", "proportional"]
TiltMapForm = Literal["none", "shift", "affine"]
TiltSpreadForm = Literal["none", "disc"]
SCALE_FORMS: tuple[str, ...] = get_args(ScaleForm)
BACKGROUND_FORMS: tuple[str, ...] = get_args(BackgroundForm)
ABSORPTION_FORMS: tuple[str, ...] = get_args(AbsorptionForm)
TILT_MAP_FORMS: tuple[str, ...] = get_args(TiltMapForm)
TILT_SPREAD_FORMS: tuple[str, ...] = get_args(TiltSpreadForm)
#: The start of a fitted tilt spread without a given value [mrad]: not 0, where ∂I/∂ρ = 0.
DEFAULT_TILT_SPREAD_MRAD = 1.0
#: The terms of the smooth background, in order (|g| in 1/Å, ρ = tilt radius / disc radius).
SMOOTH_TERMS: tuple[str, ...] = ("1", "|g|", "|g|^2", "rho^2")
_AXES = ("x", "y")
#: The forms a Measurement names, in order (files store them in this order).
FORM_NAMES: tuple[str, ...] = ("scale", "background", "absorption", "tilt_map", "tilt_spread")


def disc_rule() -> tuple[np.ndarray, np.ndarray]:
    """Radon's 7-point rule for the mean over the unit disc: nodes (7, 2), weights (7,).

    The centre with weight 1/4 and a hexagon at radius √(2/3) with 1/8 each: exact for every
    polynomial of degree ≤ 5 (e.g. the mean of x² is 1/4, of x⁴ 1/8, of x²y² 1/24).
    """
    phi = np.arange(6) * np.pi / 3
    ring = np.sqrt(2.0 / 3.0) * np.stack([np.cos(phi), np.sin(phi)], axis=1)
    return np.vstack([np.zeros((1, 2)), ring]), np.array([0.25] + [0.125] * 6)


def average_spread(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ_s w_s v[..., m·S + s, :]: values (..., n_tilts·S, N) at the points of a tilt spread (tilt
    by tilt, S points each) → (..., n_tilts, N)."""
    s = len(weights)
    v = values.reshape(values.shape[:-2] + (values.shape[-2] // s, s, values.shape[-1]))
    return np.einsum("...msn,s->...mn", v, weights)


def _check_form(name: str, value, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"Measurement {name}={value!r} is not one of {allowed}")
    return value


def _spread(name: str, value) -> float:
    rho = float(_finite(name, value, ()))
    if rho <= 0:
        raise ValueError(f"Measurement {name} must be > 0 [mrad] (no spread: tilt_spread='none'; a "
                         f"fit cannot start at 0, where the derivative in ρ vanishes), got {rho}")
    return rho


def _finite(name: str, value, shape=None) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if shape is not None and arr.shape != shape:
        raise ValueError(f"Measurement {name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"Measurement {name} holds NaN or infinite values")
    return arr


@dataclass(frozen=True)
class Measurement:
    """How the data were measured: scale, background, absorption and tilt calibration.

    Parameters
    ----------
    scale : {'none', 'global', 'per_tilt'}
    background : {'none', 'flat', 'per_beam', 'smooth'}
    absorption : {'none', 'proportional'}
    tilt_map : {'none', 'shift', 'affine'}
    tilt_spread : {'none', 'disc'}
        ``'disc'``: every intensity is averaged over a disc of incident directions of radius ρ
        [mrad] around its tilt (beam convergence, an integration over tilts); ρ is fitted.
    values : xarray.Dataset, optional
        Known or starting values (see :meth:`with_values` and :meth:`values_for`); missing ones
        start at s = 1, B = 0, κ = 0, A = 1, c = 0, ρ = 1 mrad.

    Examples
    --------
    >>> m = Measurement(scale="per_tilt", background="flat", tilt_map="shift")
    >>> m.n_parameters(None)
    3
    >>> Measurement.with_values(scale=0.8, background=0.002).background
    'flat'
    """

    scale: ScaleForm = "none"
    background: BackgroundForm = "none"
    absorption: AbsorptionForm = "none"
    tilt_map: TiltMapForm = "none"
    tilt_spread: TiltSpreadForm = "none"
    values: xr.Dataset | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_form("scale", self.scale, SCALE_FORMS)
        _check_form("background", self.background, BACKGROUND_FORMS)
        _check_form("absorption", self.absorption, ABSORPTION_FORMS)
        _check_form("tilt_map", self.tilt_map, TILT_MAP_FORMS)
        _check_form("tilt_spread", self.tilt_spread, TILT_SPREAD_FORMS)
        if self.values is not None and not isinstance(self.values, xr.Dataset):
            raise TypeError(f"Measurement values must be an xarray.Dataset, got "
                            f"{type(self.values).__name__}")

    # ----------------------------------------------------------------------------- building
    @classmethod
    def with_values(cls, *, scale=None, background=None, background_smooth=None,
                    absorption=None, tilt_matrix=None, tilt_offset_mrad=None,
                    tilt_spread_mrad=None) -> Measurement:
        """A measurement with known values (e.g. to make pseudo-experimental data with
        :func:`larbed.simulate`); the forms follow from what is given.

        Parameters
        ----------
        scale : float or (n_tilts,) array, optional
            One s (``'global'``) or one per tilt (``'per_tilt'``).
        background : float or (n_beams,) array, optional
            A flat B or one B_b per beam (fractions of the incident beam, >= 0).
        background_smooth : 4 floats, optional
            The coefficients (b₀, b₁ [Å], b₂ [Å²], b₃) of the smooth background.
        absorption : float, optional
            Proportional absorption κ ≥ 0.
        tilt_matrix : (2, 2) array, optional
            A of θ' = A θ + c (``'affine'``).
        tilt_offset_mrad : 2 floats, optional
            c [mrad] (``'shift'`` unless ``tilt_matrix`` is given).
        tilt_spread_mrad : float, optional
            Radius ρ > 0 [mrad] of the disc of incident directions averaged at each tilt
            (``tilt_spread='disc'``).
        """
        ds = xr.Dataset()
        forms = {}
        if scale is not None:
            s = _finite("scale", scale)
            if np.any(s <= 0):
                raise ValueError("Measurement scale must be > 0")
            forms["scale"] = "global" if s.ndim == 0 else "per_tilt"
            ds["scale"] = ((), float(s)) if s.ndim == 0 else (("tilt",), s)
        if background is not None and background_smooth is not None:
            raise ValueError("give background or background_smooth, not both")
        if background is not None:
            b = _finite("background", background)
            if b.ndim > 1:
                raise ValueError("Measurement background must be a number or one value per beam")
            if np.any(b < 0):
                raise ValueError(
                    f"Measurement background must be >= 0 (a fraction of the incident beam), "
                    f"got {b.min():g}"
                )
            forms["background"] = "flat" if b.ndim == 0 else "per_beam"
            ds["background"] = ((), float(b)) if b.ndim == 0 else (("beam",), b)
        if background_smooth is not None:
            forms["background"] = "smooth"
            ds["background"] = (("background_term",),
                                _finite("background_smooth", background_smooth, (len(SMOOTH_TERMS),)))
        if absorption is not None:
            k = float(_finite("absorption", absorption, ()))
            if k < 0:
                raise ValueError(f"absorption κ must be >= 0, got {k}")
            forms["absorption"] = "proportional"
            ds["absorption"] = ((), k)
        if tilt_matrix is not None:
            a = _finite("tilt_matrix", tilt_matrix, (2, 2))
            forms["tilt_map"] = "affine"
            ds["tilt_matrix"] = (("tilt_axis", "tilt_axis_b"), a)
        if tilt_offset_mrad is not None:
            forms.setdefault("tilt_map", "shift")
            ds["tilt_offset_mrad"] = (("tilt_axis",), _finite("tilt_offset_mrad", tilt_offset_mrad, (2,)))
        if tilt_spread_mrad is not None:
            forms["tilt_spread"] = "disc"
            ds["tilt_spread_mrad"] = ((), _spread("tilt_spread_mrad", tilt_spread_mrad))
        return cls(**forms, values=ds)

    # ----------------------------------------------------------------------------- parameters
    def background_terms(self, geometry: Geometry | None) -> tuple[np.ndarray, np.ndarray]:
        """B = Σ_k p_k a_k(t) b_k(beam): the tilt factors (K, n_tilts) and beam factors (K, n_beams)."""
        if self.background == "none":
            return np.zeros((0, 0)), np.zeros((0, 0))
        m, n = (1, 1) if geometry is None else (geometry.n_tilts, geometry.n_beams)
        if self.background == "flat":
            return np.ones((1, m)), np.ones((1, n))
        if self.background == "per_beam":
            return np.ones((n, m)), np.eye(n)
        if geometry is None:
            return np.ones((4, m)), np.ones((4, n))
        g = geometry.g_abs
        rho2 = (np.sum((geometry.tilt_mrad - np.asarray(geometry.tilt_center_mrad)) ** 2, axis=1)
                / max(geometry.tilt_range_mrad, 1e-300) ** 2)
        one_t, one_b = np.ones(m), np.ones(n)
        return np.stack([one_t, one_t, one_t, rho2]), np.stack([one_b, g, g**2, one_b])

    def n_background(self, geometry: Geometry | None) -> int:
        return {"none": 0, "flat": 1, "smooth": len(SMOOTH_TERMS),
                "per_beam": 0 if geometry is None else geometry.n_beams}[self.background]

    def n_parameters(self, geometry: Geometry | None) -> int:
        """Entries of the measurement part of the parameter vector (κ excluded: it has its own
        place): global s, background, tilt map, tilt spread."""
        return (int(self.scale == "global") + self.n_background(geometry)
                + {"none": 0, "shift": 2, "affine": 6}[self.tilt_map]
                + int(self.tilt_spread == "disc"))

    def labels(self, geometry: Geometry) -> list[str]:
        out = ["scale"] if self.scale == "global" else []
        if self.background == "flat":
            out.append("background")
        elif self.background == "per_beam":
            out += [f"background({lab})" for lab in geometry.beam_labels()]
        elif self.background == "smooth":
            out += [f"background[{t}]" for t in SMOOTH_TERMS]
        if self.tilt_map == "affine":
            out += [f"A_{a}{b}" for a in _AXES for b in _AXES]
        if self.tilt_map != "none":
            out += [f"c_{a} [mrad]" for a in _AXES]
        if self.tilt_spread == "disc":
            out.append("tilt spread ρ [mrad]")
        return out

    def _value(self, name: str, default):
        if self.values is not None and name in self.values:
            return np.asarray(self.values[name].values, float)
        return np.asarray(default, float)

    def start_vector(self, geometry: Geometry) -> np.ndarray:
        """The measurement part of x from :attr:`values` (defaults s = 1, B = 0, A = 1, c = 0)."""
        parts = []
        if self.scale == "global":
            parts.append(np.atleast_1d(self._value("scale", 1.0)).ravel()[:1])
        nb = self.n_background(geometry)
        if nb:
            b = self._value("background", 0.0)
            parts.append(np.broadcast_to(b, (nb,)).astype(float) if b.size in (1, nb) else
                         _finite("background", b, (nb,)))
        if self.tilt_map == "affine":
            parts.append(_finite("tilt_matrix", self._value("tilt_matrix", np.eye(2)), (2, 2)).ravel())
        if self.tilt_map != "none":
            parts.append(_finite("tilt_offset_mrad", self._value("tilt_offset_mrad", [0.0, 0.0]), (2,)))
        if self.tilt_spread == "disc":
            parts.append([_spread("tilt_spread_mrad", self._value("tilt_spread_mrad",
                                                                   DEFAULT_TILT_SPREAD_MRAD))])
        return np.concatenate(parts) if parts else np.zeros(0)

    def start_absorption(self) -> float | None:
        """κ to start from (``values['absorption']``, else 0) when absorption is modelled."""
        if self.absorption == "none":
            return None
        return float(self._value("absorption", 0.0))

    def free_mask(self, geometry: Geometry, data: np.ndarray) -> np.ndarray:
        """(n_parameters,) bool: the measurement parameters the fit moves (all but the per-beam
        background of a beam ``data`` never measures)."""
        free = np.ones(self.n_parameters(geometry), bool)
        if self.background == "per_beam":
            nb0 = int(self.scale == "global")
            free[nb0:nb0 + geometry.n_beams] = np.any(np.isfinite(data), axis=0)
        return free

    def split(self, geometry: Geometry, xm: np.ndarray):
        """(global s or None, background parameters, A (2, 2), c (2,)) from the measurement part."""
        i = 0
        s = None
        if self.scale == "global":
            s, i = float(xm[0]), 1
        nb = self.n_background(geometry)
        bg = xm[i:i + nb]
        i += nb
        a = np.eye(2)
        if self.tilt_map == "affine":
            a, i = xm[i:i + 4].reshape(2, 2), i + 4
        c = xm[i:i + 2] if self.tilt_map != "none" else np.zeros(2)
        return s, bg, a, c

    def true_tilts(self, geometry: Geometry, xm: np.ndarray) -> np.ndarray:
        """θ' = A θ + c (n_tilts, 2) [mrad] for the measurement part ``xm``."""
        _, _, a, c = self.split(geometry, xm)
        return geometry.tilt_mrad @ a.T + c

    def spread_mrad(self, xm: np.ndarray) -> float:
        """ρ [mrad] of the measurement part ``xm`` (its last entry; 0 without a spread)."""
        return float(abs(xm[-1])) if self.tilt_spread == "disc" else 0.0

    def tilt_points(self, geometry: Geometry, xm: np.ndarray):
        """(points (n_tilts·7, 2) [mrad], weights (7,), unit nodes (7, 2)) of a tilt spread —
        tilt by tilt, θ'_m + ρ u_s — or None without one (``average_spread`` takes the mean)."""
        if self.tilt_spread == "none":
            return None
        nodes, weights = disc_rule()
        centre = self.true_tilts(geometry, xm)
        pts = centre[:, None, :] + self.spread_mrad(xm) * nodes[None]
        return pts.reshape(-1, 2), weights, nodes

    def background_array(self, geometry: Geometry, xm: np.ndarray) -> np.ndarray:
        """B(t, b) (n_tilts, n_beams) for the measurement part ``xm``."""
        if self.background == "none":
            return np.zeros((geometry.n_tilts, geometry.n_beams))
        _, bg, _, _ = self.split(geometry, xm)
        a, b = self.background_terms(geometry)
        if self.background == "per_beam":
            return np.broadcast_to(bg[None, :], (geometry.n_tilts, geometry.n_beams)).copy()
        return np.einsum("k,kt,kb->tb", bg, a, b)

    def check_determinable(self, geometry: Geometry, data: np.ndarray) -> None:
        """ValueError when the data cannot determine this measurement model."""
        measured = np.isfinite(data)
        tilts = np.flatnonzero(np.any(measured, axis=1))
        per_tilt = measured.sum(axis=1)
        if self.background == "per_beam" and len(tilts) < 2:
            raise ValueError("background='per_beam' needs at least 2 measured tilts (one tilt cannot "
                             "separate a beam's background from its intensity); use 'flat'")
        if self.background == "smooth" and len(tilts) < 2:
            raise ValueError("background='smooth' needs at least 2 measured tilts")
        if self.scale == "per_tilt" and np.any(per_tilt[tilts] < 2):
            raise ValueError("scale='per_tilt' needs at least 2 measured beams at every tilt "
                             "(normalising one beam leaves nothing to fit)")
        if self.tilt_map != "none":
            pts = geometry.tilt_mrad[tilts]
            need = 3 if self.tilt_map == "affine" else 1
            spread = np.linalg.matrix_rank(pts[1:] - pts[0]) if len(pts) > 1 else 0
            if len(pts) < need or (self.tilt_map == "affine" and spread < 2):
                raise ValueError(f"tilt_map={self.tilt_map!r} needs tilts that span the plane "
                                 "(at least 3 not on one line); use 'shift' or 'none'")
            if geometry.n_beams < 2:
                raise ValueError("a tilt map needs more than one beam")

    # ----------------------------------------------------------------------------- values
    def values_for(self, geometry: Geometry, xm: np.ndarray, sigma: np.ndarray | None = None, *,
                   kappa=None, kappa_error=None, per_tilt_scale=None) -> xr.Dataset:
        """The values (and ``<name>_error`` standard errors) as a Dataset."""
        s, bg, a, c = self.split(geometry, xm)
        err = (None if sigma is None else self.split(geometry, sigma))
        ds = xr.Dataset()
        if self.scale == "global":
            ds["scale"] = ((), s)
            if err is not None:
                ds["scale_error"] = ((), err[0])
        elif self.scale == "per_tilt" and per_tilt_scale is not None:
            ds["scale"] = (("tilt",), np.asarray(per_tilt_scale, float),
                           {"long_name": "per-tilt scale (analytic, no error)"})
        if self.background != "none":
            dims = {"flat": (), "per_beam": ("beam",), "smooth": ("background_term",)}[self.background]
            ds["background"] = (dims, bg[0] if dims == () else bg, {"units": "1"})
            if err is not None:
                ds["background_error"] = (dims, err[1][0] if dims == () else err[1], {"units": "1"})
            if self.background == "smooth":
                ds = ds.assign_coords(background_term=list(SMOOTH_TERMS))
            elif self.background == "per_beam":
                ds = ds.assign_coords(h=("beam", geometry.hkl[:, 0]), k=("beam", geometry.hkl[:, 1]),
                                      l=("beam", geometry.hkl[:, 2]))
        if kappa is not None:
            ds["absorption"] = ((), float(kappa))
            if kappa_error is not None:
                ds["absorption_error"] = ((), float(kappa_error))
        if self.tilt_map != "none":
            ds["tilt_matrix"] = (("tilt_axis", "tilt_axis_b"), a)
            ds["tilt_offset_mrad"] = (("tilt_axis",), c, {"units": "mrad"})
            if err is not None:
                ds["tilt_matrix_error"] = (("tilt_axis", "tilt_axis_b"),
                                           err[2] if self.tilt_map == "affine" else np.zeros((2, 2)))
                ds["tilt_offset_mrad_error"] = (("tilt_axis",), err[3], {"units": "mrad"})
            ds = ds.assign_coords(tilt_axis=list(_AXES), tilt_axis_b=list(_AXES))
        if self.tilt_spread == "disc":
            ds["tilt_spread_mrad"] = ((), self.spread_mrad(xm), {"units": "mrad"})
            if err is not None:
                ds["tilt_spread_mrad_error"] = ((), float(sigma[-1]), {"units": "mrad"})
        ds.attrs.update({f"{k}_form": getattr(self, k) for k in FORM_NAMES})
        return ds

    def describe(self) -> str:
        names = FORM_NAMES if self.tilt_spread != "none" else FORM_NAMES[:-1]
        return ", ".join(f"{k}={getattr(self, k)}" for k in names)


def simulate_measured(geometry: Geometry, ug, thickness_nm, measurement: Measurement, *,
                      absorption=None, dose=None, seed=None, progress=False,
                      use_symmetry=True) -> xr.Dataset:
    """:func:`larbed.simulate` with a measurement model: the pattern a detector records.

    The dynamical intensities at the true tilts θ' = A θ + c (with κ of the measurement), plus
    the background B; with a dose, Poisson counts of dose·(I + B) [electrons per tilt]; then the
    scale: s (global), the given s_t (per tilt), or — ``scale='per_tilt'`` without values —
    each tilt normalised to Σ = 1 over the recorded beams. Coordinates are the nominal tilts.

    ``dose`` is electrons per tilt (``attrs['incident_dose']``); the pattern's ``dose`` is the
    effective one, dose/s (per tilt when s varies), so that Var(I) = I/dose holds for the
    scaled data, as :func:`larbed.refine`'s Poisson weights assume (for data normalised per
    tilt it is the total recorded counts, as :func:`larbed.read_csv` with ``counts=True`` keeps).
    """
    from . import schema
    from .metrics import check_dose, dose_column
    from .simulation import simulate

    if not isinstance(measurement, Measurement):
        raise TypeError(f"measurement must be a larbed.Measurement, got {type(measurement).__name__}")
    kappa = measurement.start_absorption()
    if kappa is not None and absorption is not None and float(absorption) != kappa:
        raise ValueError(f"absorption={absorption} disagrees with the measurement's κ = {kappa}; "
                         "give one of them")
    kappa = absorption if kappa is None else kappa
    xm = measurement.start_vector(geometry)
    true_geo = geometry
    if measurement.tilt_map != "none":
        try:
            true_geo = Geometry(geometry.crystal, geometry.voltage_kv, geometry.zone_axis,
                                geometry.n_beams, tilts_mrad=measurement.true_tilts(geometry, xm))
        except ValueError as exc:  # e.g. a singular A maps two tilts onto one
            _, _, a, c = measurement.split(geometry, xm)
            raise ValueError(f"the measurement's tilt map θ' = A θ + c (A = {a.tolist()}, c = "
                             f"{c.tolist()} mrad) gives no valid set of true tilts: {exc}") from exc
    spread = measurement.tilt_points(geometry, xm)
    if spread is None:
        dyn = simulate(true_geo, ug, thickness_nm, absorption=kappa, progress=progress,
                       use_symmetry=use_symmetry)
    else:
        from .simulation import simulate_spread

        dyn = simulate_spread(geometry, ug, thickness_nm, spread[0], spread[1], absorption=kappa)
    clean = dyn.intensity.values + measurement.background_array(geometry, xm)
    noisy = clean
    if dose is not None:
        dose = check_dose(dose, geometry.n_tilts)
        dc = dose_column(dose)
        noisy = rng_from(seed).poisson(np.clip(clean, 0, None) * dc) / dc
    if measurement.scale == "global":
        s = float(measurement._value("scale", 1.0))
    elif measurement.scale == "per_tilt" and measurement.values is not None \
            and "scale" in measurement.values:
        s = _finite("scale", measurement.values["scale"].values, (geometry.n_tilts,))[:, None]
    elif measurement.scale == "per_tilt":
        s = 1.0 / noisy[..., geometry.recorded_beams].sum(axis=-1, keepdims=True)
    else:
        s = 1.0
    thick = None if np.ndim(thickness_nm) == 0 else schema.check_thickness(thickness_nm)
    ds = schema.pattern_dataset(geometry, s * noisy, thickness_nm=thick, ug=dyn.ug)
    eff = None
    if dose is not None:
        ds["intensity_noise_free"] = (ds.intensity.dims, s * clean, dict(schema.INTENSITY_ATTRS))
        # Var(I) = I / dose_eff with dose_eff = dose / s: what refine's Poisson weights need
        s_t = np.asarray(s, float)
        s_t = s_t if s_t.ndim == 0 else s_t.reshape(-1, geometry.n_tilts)[0]  # first thickness
        eff = np.asarray(dose, float) / s_t
        if np.allclose(eff, eff.flat[0], rtol=1e-12):
            eff = float(eff.flat[0])
        else:
            ds["dose"] = ("tilt", np.asarray(eff, float),
                          {"units": "counts per unit intensity", "long_name":
                           "effective dose: Var(I) = I / dose"})
    keep = {k: v for k, v in dyn.attrs.items() if k not in geometry.to_attrs()}
    ds.attrs.update(keep)
    ds.attrs.update({
        "title": "LARBED pattern simulated with larbed (Bloch waves and a measurement model)",
        "dose": "none" if eff is None else (eff if np.ndim(eff) == 0 else "per tilt"),
        "incident_dose": "none" if dose is None else (float(dose) if np.ndim(dose) == 0
                                                       else "per tilt"),
        "seed": "none" if seed is None or not isinstance(seed, (int, np.integer)) else int(seed),
        "measurement": measurement.describe(),
        "measurement_values": [float(v) for v in xm],
        "absorption": "none" if kappa is None else float(kappa),
    })
    logger.info("simulated a measured pattern (%s)", measurement.describe())
    return ds
