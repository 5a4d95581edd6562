"""Task 1 (U_g deviation) and Task 2 (U_g determination) of the thesis (chapter 4).

Random numbers: everything derives from ``seed`` through ``numpy.random.SeedSequence(seed,
spawn_key=...)`` with a fixed key per purpose (data set of scale k, training of scale k, iteration i
of Task 2 …), so a run is reproducible and a resumed Task 2 draws exactly what an uninterrupted one
draws; no generator state has to be stored.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from .._random import check_seed
from ._common import (
    EPOCHS,
    KEY_T1_DATA,
    KEY_T1_TRAIN,
    LOOP_EPOCHS,
    R_STOP,
    R_THRESHOLD,
    UG_MAX,
    NetworkSettings,
    TaskPlan,
    baselines_for,
    check_common_settings,
    default_scales,
    machine_info,
    predict_and_score,
    resolve_inputs,
)
from .dataset import THICKNESS_JITTER_NM, generate_dataset
from .models import check_config
from .results import Task1Result
from .targets import target_labels
from .task2 import run_task2
from .training import BATCH_SIZE, LEARNING_RATE, Regressor

__all__ = ["run_task1", "run_task2", "resolve_inputs", "default_scales", "EPOCHS", "LOOP_EPOCHS"]

logger = logging.getLogger(__name__)


# ============================================================================ Task 1
@dataclass(frozen=True)
class _Task1Plan(TaskPlan):
    """A Task 1 run: the shared settings, the true U_g [1/Å²] and thickness [nm] and the stop and
    threshold criteria."""

    ug_true: np.ndarray
    thickness_true_nm: float
    r_stop: float
    r_threshold: float
    ug_max: float


def run_task1(
    preset_or_inputs,
    model: str = "cnn",
    *,
    config: str = "default",
    weights="imagenet",
    hidden: Sequence[int] | None = None,
    trainable_backbone: bool = False,
    standardize_features: bool = False,
    seed: int = 0,
    scales: Sequence[float] | None = None,
    n_train: int = 100,
    n_test: int = 40,
    epochs: int | None = None,
    batch_size: int = BATCH_SIZE,
    learning_rate: float = LEARNING_RATE,
    thickness_range_nm: Sequence[float] = (5.0, 100.0),
    thickness_jitter_nm: float = THICKNESS_JITTER_NM,
    r_stop: float = R_STOP,
    r_threshold: float = R_THRESHOLD,
    ug_max: float = UG_MAX,
    dose: float | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    client=None,
    download: bool = False,
) -> Task1Result:
    """Task 1, U_g deviation: how far from the truth may training data lie?

    For each deviation scale s (default 0.01·2^k, k = 0 … 12): simulate ``n_train + n_test``
    patterns with U = U_true + s·|U_true|·(ε_r + iε_i) and t = t_true ± ``thickness_jitter_nm``
    (made unique), train a fresh network (same initial weights every scale), predict (U, t) for
    the experimental pattern, simulate it and compute R. Stop once R ≥ ``r_stop``.

    Parameters
    ----------
    preset_or_inputs : str, Preset, TaskInputs or tuple
        See :func:`resolve_inputs`; Task 1 needs the true U_g and thickness.
    model : {'cnn', 'ann'}
    config : {'default', 'thesis'}
        ``'thesis'``: the thesis's networks and training exactly (SPEC §5). ``'default'``:
        standardised inputs and targets, a closed-form (ridge) linear read-out plus the tanh stack
        with a linear output layer, ANN hidden sizes (128, 64, T) — see ``docs/learning.rst``
        for each difference and the measurements behind it.
    weights : {'imagenet', None} or path
        ResNet-50 weights (CNN); see :func:`larbed.learn.models.resolve_weights`.
    hidden : sequence of 3 ints, optional
        Hidden sizes (ANN) or head sizes (CNN); default the thesis's.
    trainable_backbone : bool
        Train ResNet-50 end to end (slow) instead of a frozen backbone with cached features.
    standardize_features : bool
        CNN: standardise backbone features with training-set statistics (not in the thesis; see
        :class:`~larbed.learn.training.Regressor`).
    seed : int
        Seeds data, weight initialisation and batch order.
    scales : sequence of float, optional
        Deviation scales to try, in order.
    n_train, n_test : int
        Training and test samples per scale (thesis 100/40).
    epochs : int, optional
        Training epochs per scale (default 20 CNN / 30 ANN).
    batch_size, learning_rate : int, float
        Adam training settings (thesis 20, 1e-3).
    thickness_range_nm : (float, float)
        Allowed thickness range [nm] (clips jittered and predicted thicknesses).
    thickness_jitter_nm : float
        Half-width of the thickness jitter [nm].
    r_stop, r_threshold, ug_max : float
        Stop criterion and threshold criteria.
    dose : float, optional
        Poisson noise of the pseudo-experimental pattern (presets only).
    out_dir : path, optional
        Keep the data sets there (``task1_data/``) so a rerun reuses them.
    progress : bool
        Progress bar over scales.
    client : dask.distributed.Client, optional
        Simulate the data sets on this cluster.
    download : bool
        Allow Keras to download ImageNet weights.

    Returns
    -------
    Task1Result
    """
    t_start = time.perf_counter()
    ep = check_common_settings(model, n_train, n_test, epochs, thickness_range_nm)
    check_seed(seed, integer=True)
    check_config(config)
    inputs = resolve_inputs(preset_or_inputs, dose=dose)
    if inputs.ug_true is None or inputs.thickness_true_nm is None:
        raise ValueError("Task 1 needs the true U_g and thickness (ug_true, thickness_true_nm)")
    scale_list = _check_scales(scales)
    plan = _Task1Plan(
        inputs=inputs,
        net=NetworkSettings(
            model, weights, hidden, trainable_backbone, standardize_features, config
        ),
        seed=seed,
        n_train=n_train,
        n_test=n_test,
        epochs=ep,
        batch_size=batch_size,
        learning_rate=learning_rate,
        t_range=tuple(float(x) for x in thickness_range_nm),
        jitter=thickness_jitter_nm,
        ug_true=inputs.ug_true.values,
        thickness_true_nm=inputs.thickness_true_nm,
        r_stop=r_stop,
        r_threshold=r_threshold,
        ug_max=ug_max,
        download=download,
    )
    reg = plan.regressor()
    x_exp = reg.inputs(plan.i_exp)
    data_dir = None
    if out_dir is not None:
        data_dir = os.path.join(os.fspath(out_dir), "task1_data")
        os.makedirs(data_dir, exist_ok=True)

    rows = []
    from tqdm.auto import tqdm

    bar = tqdm(scale_list, desc=f"task1 {inputs.name} {model}", unit="scale", disable=not progress)
    for k, s in enumerate(bar):
        row = _run_scale(plan, reg, x_exp, k, s, client, data_dir)
        rows.append(row)
        bar.set_postfix(s=f"{s:g}", R=f"{row['r']:.3f}")
        logger.info(
            "task1 %s %s: scale %g R = %.4f (%.1f s)", inputs.name, model, s, row["r"], row["time"]
        )
        if row["r"] >= r_stop:
            break
    bar.close()
    return Task1Result(_history(plan, reg, rows, t_start), inputs)


def _check_scales(scales) -> list[float]:
    """The deviation scales to try (default :func:`default_scales`), checked."""
    scale_list = default_scales() if scales is None else [float(s) for s in scales]
    if not scale_list or any(not math.isfinite(s) or s < 0 for s in scale_list):
        raise ValueError(f"scales must be a non-empty list of finite values >= 0, got {scales!r}")
    return scale_list


def _run_scale(
    plan: _Task1Plan, reg: Regressor, x_exp: np.ndarray, k: int, s: float, client, data_dir
) -> dict:
    """Scale ``k`` (deviation ``s``): simulate its data set (kept in ``data_dir`` unless None),
    train the network from its initial weights, predict (U, t) for the experimental pattern and
    compute R. Returns the row of the history."""
    t0 = time.perf_counter()
    n_train, n_all = plan.n_train, plan.n_train + plan.n_test
    path = None
    if data_dir is not None:
        path = os.path.join(data_dir, f"seed{plan.seed}_k{k:02d}_s{s:g}_n{n_all}.nc")
    ds = generate_dataset(
        plan.geometry,
        n_all,
        channel="deviation",
        ug0=plan.ug_true,
        thickness0_nm=plan.thickness_true_nm,
        scale=s,
        thickness_range_nm=plan.t_range,
        thickness_jitter_nm=plan.jitter,
        seed=np.random.SeedSequence(plan.seed, spawn_key=(KEY_T1_DATA, k)),
        client=client,
        progress=False,
        path=path,
    )
    x = reg.inputs(ds["intensity"].values)
    y = ds["targets"].values
    reg.reset()
    seeds = np.random.SeedSequence(plan.seed, spawn_key=(KEY_T1_TRAIN, k))
    train, test = plan.fit_from_start(reg, x, y, seeds)
    ug_p, t_p, r = predict_and_score(reg, x_exp, plan.geometry, plan.i_exp, plan.t_range)
    base = baselines_for(plan, ds["intensity"].values[:n_train], y[:n_train])
    return {
        "scale": s,
        "r": r,
        **base,
        "ug": ug_p,
        "t": t_p,
        "train": train,
        "test": test,
        "test_pred": reg.predict(x[n_train:]),
        "test_true": y[n_train:],
        "time": time.perf_counter() - t0,
    }


def _history(plan: _Task1Plan, reg: Regressor, rows: list[dict], t_start: float) -> xr.Dataset:
    """The result Dataset: one entry per scale tried, the threshold and the settings."""
    geo, inputs = plan.geometry, plan.inputs
    ugs = np.stack([row["ug"] for row in rows])
    max_abs = np.abs(ugs).max(axis=1)
    rs = np.array([row["r"] for row in rows])
    ok = (rs < plan.r_threshold) & (max_abs < plan.ug_max)
    sc = np.array([row["scale"] for row in rows])
    threshold = float(sc[ok].max()) if np.any(ok) else float("nan")
    base_thresholds = {}
    for which in ("mean", "linear"):
        rb = np.array([row[f"r_{which}_baseline"] for row in rows])
        okb = rb < plan.r_threshold  # (R only: both predictions stay near the data, |U| < 0.2)
        base_thresholds[f"threshold_{which}_baseline"] = (
            float(sc[okb].max()) if np.any(okb) else float("nan")
        )
    labels = geo.reflection_labels()
    hist = xr.Dataset(
        coords={
            "scale": ("scale", sc),
            "epoch": ("epoch", np.arange(1, plan.epochs + 1)),
            "reflection": ("reflection", np.arange(geo.n_reflections)),
            "reflection_label": ("reflection", np.array(labels)),
            "test_sample": ("test_sample", np.arange(plan.n_test)),
            "target": ("target", np.arange(2 * geo.n_reflections + 1)),
            "target_label": ("target", np.array(target_labels(geo))),
        }
    )
    hist["r_factor"] = ("scale", rs, {"units": "1", "long_name": "R of the predicted pattern"})
    hist["ug_pred"] = (("scale", "reflection"), ugs, {"units": "1/Å^2"})
    hist["thickness_nm"] = ("scale", np.array([row["t"] for row in rows]), {"units": "nm"})
    hist["r_mean_baseline"] = (
        "scale",
        np.array([row["r_mean_baseline"] for row in rows]),
        {"units": "1", "long_name": "R of predicting the mean of the training targets"},
    )
    hist["r_linear_baseline"] = (
        "scale",
        np.array([row["r_linear_baseline"] for row in rows]),
        {"units": "1", "long_name": "R of the ridge map from intensities to targets"},
    )
    hist["ridge_lambda"] = ("scale", np.array([row["ridge_lambda"] for row in rows]))
    hist["max_abs_ug"] = ("scale", max_abs, {"units": "1/Å^2"})
    hist["train_loss"] = (
        ("scale", "epoch"),
        np.stack([row["train"] for row in rows]),
        {"units": "MSE"},
    )
    hist["test_loss"] = (
        ("scale", "epoch"),
        np.stack([row["test"] for row in rows]),
        {"units": "MSE"},
    )
    hist["test_pred"] = (
        ("scale", "test_sample", "target"),
        np.stack([row["test_pred"] for row in rows]),
    )
    hist["test_true"] = (
        ("scale", "test_sample", "target"),
        np.stack([row["test_true"] for row in rows]),
    )
    hist["elapsed_s"] = ("scale", np.array([row["time"] for row in rows]), {"units": "s"})
    hist["ug_true"] = ("reflection", plan.ug_true.astype(complex), {"units": "1/Å^2"})
    elapsed = time.perf_counter() - t_start
    net = plan.net
    hist.attrs.update(
        {
            "title": "larbed Task 1 (U_g deviation)",
            "name": inputs.name,
            "model": net.model,
            "config": net.config,
            "weights": net.weights_label,
            "hidden": list(reg.hidden_sizes),
            "trainable_backbone": int(reg.trainable_backbone),
            "standardize_features": int(bool(net.standardize_features)),
            "seed": int(plan.seed),
            "n_train": int(plan.n_train),
            "n_test": int(plan.n_test),
            "epochs": plan.epochs,
            "batch_size": int(plan.batch_size),
            "learning_rate": float(plan.learning_rate),
            "thickness_true_nm": float(plan.thickness_true_nm),
            "thickness_range_nm": list(plan.t_range),
            "thickness_jitter_nm": float(plan.jitter),
            "r_stop": float(plan.r_stop),
            "r_threshold": float(plan.r_threshold),
            "ug_max": float(plan.ug_max),
            "threshold": threshold,
            **base_thresholds,
            "elapsed_s": elapsed,
            **machine_info(),
            **geo.to_attrs(),
        }
    )
    return hist
