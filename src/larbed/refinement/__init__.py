"""Refinement of U_g, thickness and absorption against a LARBED pattern.

* :func:`intensity_jacobian` — exact derivatives of every intensity with respect to every
  Re U_g, Im U_g, the thickness and (optionally) the absorption κ, from one eigen-decomposition
  per tilt (divided differences of the exponential, stable at the degenerate zone axis);
* :func:`thickness_scan` — the agreement with the pattern as a function of thickness at fixed U_g;
* :func:`refine` — weighted least squares (Levenberg–Marquardt with the analytic Jacobian) of U_g,
  thickness and absorption against the intensities, with standard errors from (JᵀWJ)⁻¹ and trust
  warnings (:mod:`larbed.trust`).

Parameters are Re U_p and Im U_p [1/Å²] of the Friedel pairs p (``geometry.reflection_hkl``), the
thickness t [nm] and κ. Intensities cannot see the unit-cell origin: when Im U_g are free, the two
in-plane origin shifts are exact null directions of JᵀWJ. The solver keeps steps out of them and the
covariance is the minimum-norm one (errors are those of U_g after aligning the origin).

Modules: :mod:`~larbed.refinement.api` (entry points), :mod:`~larbed.refinement.parameters` (the
parameter map, symmetry ties, gauge), :mod:`~larbed.refinement.jacobian` (forward model, normal
equations), :mod:`~larbed.refinement.solver` (Levenberg–Marquardt, covariance),
:mod:`~larbed.refinement.result` (:class:`RefinementResult`), :mod:`~larbed.refinement.measured`
(the measurement model's forward model), :mod:`~larbed.refinement.realdata` (hold-out, variance
model, correlated residuals, the independent-atom prior).
"""

from .._deprecation import moved_names
from .._types import SCAN_METRICS, WEIGHTS, ScanMetric, Weights
from .api import refine, thickness_scan
from .jacobian import intensity_jacobian
from .realdata import iam_prior
from .result import RefinementResult

__all__ = [
    "RefinementResult",
    "SCAN_METRICS",
    "ScanMetric",
    "WEIGHTS",
    "Weights",
    "iam_prior",
    "intensity_jacobian",
    "refine",
    "thickness_scan",
]

__getattr__ = moved_names(__name__, {
    "check_pattern": "larbed.schema", "pattern_dose": "larbed.schema",
    "check_normalisation": "larbed.schema", "check_diffracted": "larbed.schema",
    "MIN_THICKNESS_NM": "larbed.refinement.parameters", "GAUGE_RTOL": "larbed.refinement.parameters",
    "UNDETERMINED_RCOND": "larbed.refinement.solver",
    "MODEL_VARIANCE_FLOOR": "larbed.refinement.api", "POISSON_REVERT_FACTOR": "larbed.refinement.api",
})
