"""Trivial predictors that every network number is compared with (issue 12).

* the **mean baseline**: ignore the pattern, predict the mean of the training targets;
* the **linear baseline**: ridge least squares from the standardised intensities to the
  standardised targets, the ridge parameter chosen by exact leave-one-out cross-validation.

:class:`RidgeMap` is also the linear read-out of the ``config="default"`` networks
(:mod:`larbed.learn.models`): it is solved in closed form on the training set each time the network
is trained. With n ≪ N_I samples the dual form is used (an n × n kernel), so a fit costs
O(n² N_I) — milliseconds for 100 patterns.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(30, 5)); y = x @ rng.normal(size=(5, 2)) + 1.0
>>> ridge = RidgeMap.fit(x, y)
>>> bool(np.allclose(ridge.predict(x), y, atol=1e-4))
True
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..geometry import Geometry
from ..metrics import r_factor
from ..simulation import simulate
from .targets import split_targets

__all__ = ["RidgeMap", "standardizer", "mean_baseline_targets", "baseline_r_factors"]

logger = logging.getLogger(__name__)

#: Floor of the per-feature standard deviation, as a fraction of the mean one (features that are
#: constant over the training set, e.g. zero intensities, are not blown up).
STD_FLOOR = 1e-2
#: Ridge parameters tried, relative to trace(K)/n (K the n × n kernel of the standardised inputs).
RIDGE_GRID = 10.0 ** np.arange(-8.0, 3.0)


def standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and floored standard deviation of each column of ``x`` (n, features)."""
    x = np.asarray(x, dtype=float)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    floor = STD_FLOOR * float(std.mean()) if std.size and std.mean() > 0 else 1.0
    return mean, np.maximum(std, floor if floor > 0 else 1.0)


@dataclass(frozen=True)
class RidgeMap:
    """y ≈ ((x - x_mean) / x_std) @ weights + bias, fitted by ridge least squares.

    Attributes
    ----------
    x_mean, x_std : ndarray (features,)
        Input standardisation (of the training set, or given).
    weights : ndarray (features, targets)
    bias : ndarray (targets,)
    lam : float
        The ridge parameter chosen (absolute, in units of the kernel).
    loo_mse : float
        Its leave-one-out mean squared error (units of ``y``, divided by ``y_scale`` if given).
    """

    x_mean: np.ndarray
    x_std: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    lam: float
    loo_mse: float

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        *,
        x_mean: np.ndarray | None = None,
        x_std: np.ndarray | None = None,
        y_scale: np.ndarray | None = None,
        grid=RIDGE_GRID,
    ) -> RidgeMap:
        """Fit on (x (n, features), y (n, targets)); λ by leave-one-out over ``grid``·trace(K)/n.

        ``x_mean``/``x_std`` fix the input standardisation (default: that of ``x``); ``y_scale``
        weights the targets in the cross-validation error (default: their standard deviations, so
        that every component counts alike). The leave-one-out residuals are the exact ones of the
        centred ridge, (r_i) / (1 - 1/n - H_ii).
        """
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 2:
            raise ValueError(
                f"ridge needs x (n, features) and y (n, targets) with n >= 2, got {x.shape}, {y.shape}"
            )
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ValueError("ridge inputs and targets must be finite (found NaN or inf)")
        if x_mean is None or x_std is None:
            x_mean, x_std = standardizer(x)
        n = len(x)
        z = (x - x_mean) / x_std
        z_bar, y_bar = z.mean(axis=0), y.mean(axis=0)
        zc, yc = z - z_bar, y - y_bar
        if y_scale is None:
            y_scale = y.std(axis=0)
        ys = np.where(np.asarray(y_scale) > 0, y_scale, 1.0)
        kern = zc @ zc.T
        w, v = np.linalg.eigh(kern)
        w = np.clip(w, 0.0, None)
        vty = v.T @ yc
        unit = max(float(np.trace(kern)) / n, 1e-300)
        best = (np.inf, float(grid[-1]) * unit)
        for rel in grid:
            lam = float(rel) * unit
            shrink = w / (w + lam)
            fitted = v @ (shrink[:, None] * vty)
            h_diag = np.einsum("ij,j,ij->i", v, shrink, v)
            denom = np.clip(1.0 - 1.0 / n - h_diag, 1e-12, None)
            loo = float(np.mean((((yc - fitted) / denom[:, None]) / ys) ** 2))
            if loo < best[0]:
                best = (loo, lam)
        loo_mse, lam = best
        alpha = v @ (vty / (w + lam)[:, None])
        weights = zc.T @ alpha
        bias = y_bar - z_bar @ weights
        return cls(np.asarray(x_mean), np.asarray(x_std), weights, bias, lam, loo_mse)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted targets (n, targets) for inputs (n, features)."""
        return ((np.asarray(x, dtype=float) - self.x_mean) / self.x_std) @ self.weights + self.bias


def mean_baseline_targets(y_train: np.ndarray) -> np.ndarray:
    """The mean baseline's prediction: the mean of the training targets (targets,)."""
    return np.asarray(y_train, dtype=float).mean(axis=0)


def _r_of_targets(targets, geometry: Geometry, i_exp: np.ndarray, t_range) -> float:
    ug, t = split_targets(np.asarray(targets, dtype=float), t_range)
    return r_factor(i_exp, simulate(geometry, ug, float(t))["intensity"].values)


def baseline_r_factors(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_exp: np.ndarray,
    geometry: Geometry,
    i_exp: np.ndarray,
    t_range,
) -> dict[str, float]:
    """R of the mean and of the linear (ridge) baseline for the experimental pattern.

    ``x_train`` (n, N·M) and ``x_exp`` (N·M,) are flattened intensities, ``y_train`` (n, 2M + 1)
    the targets; both predictions are simulated like a network's (thickness |t| clipped to
    ``t_range`` [nm]). Returns ``{"r_mean_baseline", "r_linear_baseline", "ridge_lambda"}``.
    """
    mean = mean_baseline_targets(y_train)
    ridge = RidgeMap.fit(x_train, y_train)
    lin = ridge.predict(np.asarray(x_exp, dtype=float).reshape(1, -1))[0]
    return {
        "r_mean_baseline": _r_of_targets(mean, geometry, i_exp, t_range),
        "r_linear_baseline": _r_of_targets(lin, geometry, i_exp, t_range),
        "ridge_lambda": float(ridge.lam),
    }
