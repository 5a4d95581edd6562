"""Levenberg–Marquardt on the normal equations, covariance, and the directions data cannot see.

The solver works on JᵀWJ and JᵀWr (summed over tilt chunks by
:class:`larbed.refinement.jacobian.WeightedProblem`), not on J itself: that is what keeps memory
bounded at 10⁵ tilts, and why larbed has its own LM step instead of
``scipy.optimize.least_squares`` (which needs the full Jacobian or a LinearOperator over it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from ..trust import DRIFT_WINDOW
from .jacobian import WeightedProblem, masked_r
from .parameters import gauge_basis

__all__ = ["RESTORE_FLOOR", "RESTORE_RTOL", "UNDETERMINED_RCOND", "LMState", "covariance",
           "describe_null", "levenberg_marquardt", "null_directions", "restore_undetermined"]

logger = logging.getLogger(__name__)

#: Eigenvalues of JᵀWJ (outside the origin null space) below this fraction of the largest count
#: as undetermined: their variance is reported as infinite.
UNDETERMINED_RCOND = 1e-13


@dataclass
class LMState:
    q: np.ndarray
    mu: float | None = None
    history: list = field(default_factory=list)
    iterations: int = 0
    converged: bool = False
    message: str = ""
    #: q after each of the last iterations (oldest first; at most DRIFT_WINDOW + 1)
    recent: list = field(default_factory=list)


def null_directions(hess: np.ndarray, gauge: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning the directions JᵀJ does not determine, outside the gauge.

    An eigenvalue of JᵀWJ below :data:`UNDETERMINED_RCOND` of the largest (on the complement of
    the origin-shift null space) is a combination of parameters the data do not see.
    """
    nq = hess.shape[0]
    v = scipy.linalg.null_space(gauge.T) if gauge.shape[1] else np.eye(nq)
    if v.shape[1] == 0:
        return np.zeros((nq, 0))
    w, e = np.linalg.eigh(v.T @ hess @ v)
    bad = w <= UNDETERMINED_RCOND * max(float(w.max(initial=0.0)), 1e-300)
    return v @ e[:, bad]


def levenberg_marquardt(prob: WeightedProblem, state: LMState, *, max_iter: int, ftol: float, xtol: float,
                         stage: int, bar=None, on_iteration=None,
                         pinned: np.ndarray | None = None) -> LMState:
    """Levenberg–Marquardt with Marquardt scaling and Nielsen's damping update.

    Steps are kept out of the origin-shift null space (see :func:`gauge_basis`) and out of the
    span of ``pinned`` (orthonormal columns; directions held where they are).
    """
    r, inten, hess, grad = prob.normal_equations(state.q)
    cost = 0.5 * float(r @ r)
    nu = 2.0
    state.recent = [state.q.copy()]  # the drift of this pass (see larbed.trust.drift_warning)
    small_steps = 0
    geometry = prob.model.geometry
    for _ in range(max_iter):
        diag = np.maximum(np.diag(hess).copy(), 1e-12 * max(np.max(np.diag(hess)), 1e-300))
        gauge = gauge_basis(prob.pmap, geometry, state.q)
        if pinned is not None and pinned.shape[1]:
            gauge, *_ = np.linalg.svd(np.hstack([gauge, pinned]), full_matrices=False)
        pin = np.max(diag) * (gauge @ gauge.T) if gauge.shape[1] else 0.0
        if state.mu is None:
            state.mu = 1e-3
        accepted = False
        while not accepted:
            try:
                factor = scipy.linalg.cho_factor(hess + state.mu * np.diag(diag) + pin)
                step = -scipy.linalg.cho_solve(factor, grad)
            except (np.linalg.LinAlgError, ValueError):
                state.mu *= nu
                nu *= 2.0
                if state.mu > 1e20:
                    break
                continue
            if gauge.shape[1]:
                step -= gauge @ (gauge.T @ step)
            q_new = prob.clip(state.q + step)
            step = q_new - state.q
            r_new, inten_new = prob.residual(q_new)
            cost_new = 0.5 * float(r_new @ r_new)
            predicted = -float(step @ grad) - 0.5 * float(step @ hess @ step)
            rho = (cost - cost_new) / predicted if predicted > 0 else -1.0
            if rho > 0 and cost_new < cost:
                accepted = True
                state.mu *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
                nu = 2.0
            else:
                state.mu *= nu
                nu *= 2.0
                if state.mu > 1e20:
                    break
        if not accepted:
            state.converged = True
            state.message = "no further decrease (damping limit reached)"
            break
        reduction = (cost - cost_new) / max(cost, 1e-300)
        scaled_step = np.sqrt(np.sum(diag * step**2))
        scaled_q = np.sqrt(np.sum(diag * state.q**2))
        state.q = q_new
        state.recent = (state.recent + [q_new.copy()])[-(DRIFT_WINDOW + 1):]
        state.iterations += 1
        r, inten, hess, grad = prob.normal_equations(state.q)
        cost = 0.5 * float(r @ r)
        x = prob.pmap.x(state.q)
        state.history.append((state.iterations, stage, 2.0 * cost, masked_r(prob.data, inten),
                              float(x[2 * prob.model.p]), float(state.mu)))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(R=f"{state.history[-1][3]:.2e}", t=f"{x[2 * prob.model.p]:.2f}")
        if on_iteration is not None:
            on_iteration(state)
        small_steps = small_steps + 1 if (reduction < ftol or scaled_step < xtol * (scaled_q + xtol)) else 0
        if small_steps >= 2 or cost <= 1e-300:
            state.converged = True
            state.message = "converged (relative decrease of χ² or step below tolerance)"
            break
    else:
        state.message = f"stopped after max_iter={max_iter} iterations"
    state.hess, state.inten, state.r = hess, inten, r  # type: ignore[attr-defined]
    return state


def covariance(hess: np.ndarray, gauge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(JᵀJ)⁻¹ on the complement of the origin null space; undetermined directions → inf.

    Returns the covariance and the (n_q, k) undetermined directions (:func:`null_directions`).
    """
    nq = hess.shape[0]
    v = scipy.linalg.null_space(gauge.T) if gauge.shape[1] else np.eye(nq)
    w, e = np.linalg.eigh(v.T @ hess @ v)
    keep = w > UNDETERMINED_RCOND * max(w.max(initial=0.0), 1e-300)
    ev = v @ e
    cov = (ev[:, keep] / w[keep]) @ ev[:, keep].T
    null = ev[:, ~keep]
    if null.shape[1]:
        loose = np.any(np.abs(null) > 1e-3, axis=1)
        cov[loose, :] = np.inf
        cov[:, loose] = np.inf
    return cov, null


def describe_null(null: np.ndarray, labels: list[str], max_terms: int = 4) -> list[str]:
    """Each undetermined direction as a readable combination of parameter labels."""
    out = []
    for vec in null.T:
        order = np.argsort(-np.abs(vec))
        big = [i for i in order[:max_terms] if abs(vec[i]) > 0.2 * abs(vec[order[0]])]
        terms = " ".join(f"{'+' if vec[i] * vec[big[0]] > 0 else '−'} {labels[i]}" for i in big)
        out.append(terms.lstrip("+ ") + (" …" if np.sum(np.abs(vec) > 1e-3) > len(big) else ""))
    return out


#: Holding the undetermined directions at their start may raise χ² by at most this fraction …
RESTORE_RTOL = 1e-6
#: … plus this fraction of Σ w I² (an exact fit of noise-free data: both χ² are round-off).
RESTORE_FLOOR = 1e-20


def restore_undetermined(prob: WeightedProblem, state: LMState, q_start: np.ndarray, *, max_iter: int,
                          ftol: float) -> None:
    """Hold the parameter combinations the data do not determine at their start.

    Least squares moves along such directions only by accident (damping couples them to the
    rest); they carry no information. They are set back to the start and the fit is converged
    again with them pinned; the result is kept when it fits as well (:data:`RESTORE_RTOL`),
    otherwise the directions stay where the fit put them (logged). Either way their standard
    errors are infinite.
    """
    null = null_directions(state.hess, gauge_basis(prob.pmap, prob.model.geometry, state.q))
    if not null.shape[1]:
        return
    q_new = state.q - null @ (null.T @ (state.q - q_start))
    if np.allclose(q_new, state.q, rtol=0, atol=1e-15):
        return
    cost = float(state.r @ state.r)
    trial = LMState(q=q_new, history=list(state.history), iterations=state.iterations)
    trial = levenberg_marquardt(prob, trial, max_iter=max_iter, ftol=ftol, xtol=ftol,
                                 stage=state.history[-1][1] if state.history else 0, pinned=null)
    floor = RESTORE_FLOOR * float(np.sum((prob.sw * np.nan_to_num(prob.data).ravel()) ** 2))
    if float(trial.r @ trial.r) <= cost * (1 + RESTORE_RTOL) + floor:
        for name in ("q", "r", "inten", "hess", "history", "iterations"):
            setattr(state, name, getattr(trial, name))
    else:
        logger.info("refine: the undetermined directions were left where the fit put them "
                    "(holding them at the start fits worse)")
