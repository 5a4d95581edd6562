"""Trust flags: how larbed says that a fitted number should not be believed.

One policy for the whole package:

* a problem that is certain **before** fitting (more parameters than data, a pattern with no
  diffracted intensity, a model the data cannot constrain) is a :class:`ValueError`;
* a problem found **by** the fit is a :class:`FitWarning` in the result's ``.warnings`` (and in
  the log). Its ``kind`` says what was found:

  ``'bound'``
      a parameter ended at a bound (the thickness at the end of its range, κ at 0, a U_g at the
      search bound of :func:`larbed.determine`) or beyond what is physical (a refined |U_g| above
      :data:`UNPHYSICAL_FACTOR` × the largest independent-atom |U_g| of the geometry's crystal: a
      false minimum where couplings the data hardly see ran off);
  ``'chi2'``
      the reduced χ² is above ``chi2_max`` (default 2) although the dose is known: the model does
      not explain the data to within their counting noise;
  ``'r_factor'``
      R is above ``r_noise_factor`` (default 3) times the Poisson noise floor of the fit (dose
      known), or, without a dose, above ``r_max`` (default 1e-3: such a pattern is taken as
      noise-free, and a fit that does not reproduce it has not found its solution);
  ``'not_converged'``
      the fit stopped at ``max_iter`` while its parameters were still moving: over the last
      iterations some moved by more than :data:`DRIFT_SIGMA` of their standard errors (a long
      valley, e.g. U_g against t), so neither the values nor their errors are final;
  ``'undetermined'``
      parameter combinations the data do not determine were kept at their start and reported
      with infinite standard errors; the rest of the fit is sound;
  ``'symmetry'``
      a structure refinement ran without the constraints of a space group (the crystal has
      none, so it was refined in P1).

The first four kinds make an answer untrustworthy (:func:`untrustworthy`; the command line then
exits with status 3), the last two do not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from ._types import WARNING_KINDS, WarningKind

__all__ = [
    "CHI2_MAX",
    "DRIFT_SIGMA",
    "DRIFT_WINDOW",
    "FitWarning",
    "R_MAX_NOISE_FREE",
    "R_NOISE_FACTOR",
    "UNTRUSTWORTHY_KINDS",
    "WarningKind",
    "drift_warning",
    "fit_quality_warnings",
    "unphysical_warning",
    "untrustworthy",
]

logger = logging.getLogger(__name__)

#: Kinds that make a result untrustworthy (CLI exit status 3).
UNTRUSTWORTHY_KINDS: tuple[str, ...] = ("bound", "chi2", "r_factor", "not_converged")

#: A fit stopped by ``max_iter`` whose parameters moved by more than this many standard errors
#: over its last :data:`DRIFT_WINDOW` iterations is flagged ``'not_converged'``.
DRIFT_SIGMA = 3.0
DRIFT_WINDOW = 10

#: A refined |U_g| above this multiple of the largest independent-atom |U_g| of the geometry's
#: crystal is flagged ``'bound'`` (no bonding or Debye–Waller effect comes near it).
UNPHYSICAL_FACTOR = 5.0

#: Reduced χ² above this, with a known dose, is flagged.
CHI2_MAX = 2.0
#: R above this multiple of the expected Poisson R of the fit, with a known dose, is flagged.
R_NOISE_FACTOR = 3.0
#: Without a dose the pattern is taken as noise-free: R above this is flagged.
R_MAX_NOISE_FREE = 1e-3


class FitWarning(str):
    """A warning about a fit: a ``str`` (the message) with a ``kind`` (see the module text).

    Examples
    --------
    >>> w = FitWarning("chi2", "reduced χ² = 7.8 > 2")
    >>> w, w.kind, w.untrustworthy
    ('reduced χ² = 7.8 > 2', 'chi2', True)
    """

    kind: str

    def __new__(cls, kind: str, message: str):
        if kind not in WARNING_KINDS:
            raise ValueError(f"unknown warning kind {kind!r}; choose one of {WARNING_KINDS}")
        obj = super().__new__(cls, message)
        obj.kind = kind
        return obj

    def __reduce__(self):  # picklable (results travel through Dask)
        return (FitWarning, (self.kind, str(self)))

    @property
    def untrustworthy(self) -> bool:
        """True for the kinds that make the answer untrustworthy."""
        return self.kind in UNTRUSTWORTHY_KINDS


def untrustworthy(warnings: Iterable[str]) -> bool:
    """True when any warning is of an untrustworthy kind (plain strings count as untrustworthy)."""
    return any(getattr(w, "kind", "r_factor") in UNTRUSTWORTHY_KINDS for w in warnings)


def drift_warning(recent, sigma: np.ndarray, labels, message: str) -> FitWarning | None:
    """The ``'not_converged'`` warning of a fit that stopped at ``max_iter`` (``message``) while
    moving: ``recent`` the parameter vectors of its last iterations (oldest first), ``sigma``
    their standard errors (inf or NaN: not judged), ``labels`` their names."""
    if "max_iter" not in message or len(recent) < 2:
        return None
    drift = np.abs(np.asarray(recent[-1], float) - np.asarray(recent[0], float))
    sigma = np.asarray(sigma, float)
    ok = np.isfinite(sigma) & (sigma > 0)
    z = np.where(ok, drift / np.where(ok, sigma, 1.0), 0.0)
    if not np.any(z > DRIFT_SIGMA):
        return None
    top = np.argsort(-z)[:3]
    moved = ", ".join(f"{labels[i]} by {drift[i]:.3g}{' nm' if labels[i] == 't' else ''} ({z[i]:.3g} σ)" for i in top if z[i] > DRIFT_SIGMA)
    return FitWarning("not_converged", f"{message} while still moving: over the last "
                                       f"{len(recent) - 1} iterations {moved}; the values and "
                                       "their standard errors are not final (raise max_iter, or "
                                       "resume from the checkpoint)")


def check_thresholds(chi2_max: float, r_noise_factor: float, r_max: float) -> None:
    """Validate the trust thresholds (positive and finite)."""
    for name, value in (("chi2_max", chi2_max), ("r_noise_factor", r_noise_factor),
                        ("r_max", r_max)):
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def fit_quality_warnings(r_factor: float, chi2: float | None, noise_r: float | None, *,
                         chi2_max: float = CHI2_MAX, r_noise_factor: float = R_NOISE_FACTOR,
                         r_max: float = R_MAX_NOISE_FREE) -> list[FitWarning]:
    """The ``'chi2'`` and ``'r_factor'`` warnings of a fit.

    Parameters
    ----------
    r_factor : float
        R of the fit.
    chi2 : float or None
        Reduced χ² with Poisson weights (None when no dose is known).
    noise_r : float or None
        Expected R of Poisson data about the fit (:func:`larbed.metrics.expected_noise_r`); None
        when no dose is known.
    """
    out = []
    if chi2 is not None and chi2 > chi2_max:
        out.append(FitWarning("chi2", f"reduced χ² = {chi2:.4g} is above {chi2_max:g}: the model does "
                                      "not explain the data to within their counting noise"))
    if noise_r is not None:
        if r_factor > r_noise_factor * noise_r:
            out.append(FitWarning(
                "r_factor", f"R = {r_factor:.4g} is {r_factor / noise_r:.3g} × the Poisson noise "
                            f"floor {noise_r:.3g} (flagged above {r_noise_factor:g} ×)"))
    elif r_factor > r_max:
        out.append(FitWarning(
            "r_factor", f"R = {r_factor:.4g} is above {r_max:g} and no dose is known: taken as "
                        "noise-free, the pattern is not reproduced (for measured data give the "
                        "dose, or the counts, so that R can be judged against the noise)"))
    return out


def unphysical_warning(geometry, values: np.ndarray) -> FitWarning | None:
    """A ``'bound'`` warning naming the U_g whose |U_g| exceeds :data:`UNPHYSICAL_FACTOR` × the
    largest independent-atom |U_g| of ``geometry.crystal`` (a false minimum where unmeasured
    couplings ran off), or None."""
    from .structure_factors import compute_ug

    limit = UNPHYSICAL_FACTOR * float(np.max(np.abs(compute_ug(geometry.crystal, geometry).values)))
    big = np.flatnonzero(np.abs(values) > limit)
    if not big.size:
        return None
    labels = geometry.reflection_labels()
    worst = big[np.argsort(-np.abs(values[big]))][:4]
    listed = ", ".join(f"U({labels[i]}) = {abs(values[i]):.3g}" for i in worst)
    return FitWarning("bound", f"{big.size} U_g exceed {UNPHYSICAL_FACTOR:g} × the largest "
                               f"independent-atom |U_g| of the geometry's crystal ({limit:.3g} 1/Å²): "
                               f"{listed} 1/Å²; unphysical, the fit likely sits in a false minimum: "
                               "set them back to their start and refine again (that often "
                               "reaches the solution), or record more beams or tilts")
