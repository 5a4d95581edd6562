"""Shared pieces of the two tasks: inputs, settings, defaults, seeds, prediction and checks."""

from __future__ import annotations

import datetime
import logging
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import xarray as xr

from ..geometry import Geometry
from ..metrics import r_factor
from ..schema import check_ug, extract_ug
from ..simulation import simulate_array
from .dataset import split_targets
from .models import MODEL_KINDS
from .results import TaskInputs
from .training import Regressor

logger = logging.getLogger(__name__)

#: Initial training epochs (thesis Table 3.2).
EPOCHS = {"cnn": 20, "ann": 30}
#: Epochs per Task 2 loop iteration (thesis Table 3.2).
LOOP_EPOCHS = 5
#: Task 1 stops once R reaches this value (thesis 3.3.1).
R_STOP = 0.5
#: Task 1 threshold criterion: R below this … (thesis 4.1.3)
R_THRESHOLD = 0.3
#: … and max |U_pred| below this [1/Å²].
UG_MAX = 0.2
# SeedSequence spawn keys, one per purpose
KEY_T1_DATA, KEY_T1_TRAIN, KEY_T2_DATA, KEY_T2_TRAIN, KEY_T2_ITER = 11, 12, 21, 22, 23


def default_scales(n: int = 13) -> list[float]:
    """Deviation scales 0.01·2^k, k = 0 … n-1 (0.01 … 40.96 for n = 13)."""
    return [0.01 * 2.0**k for k in range(n)]


def resolve_inputs(
    preset_or_inputs, *, dose: float | None = None, noise_seed: int = 0
) -> TaskInputs:
    """Accept a preset name, a :class:`~larbed.presets.Preset`, a :class:`TaskInputs` or a tuple
    ``(pattern, geometry[, ug_true[, thickness_true_nm]])``.

    For presets the pattern is the noise-free pseudo-experimental one (or Poisson noise with
    ``dose`` electrons per tilt and seed ``noise_seed``).
    """
    from .. import presets

    obj = preset_or_inputs
    if isinstance(obj, str):
        obj = presets.load(obj)
    if isinstance(obj, presets.Preset):
        pattern = obj.simulate(dose=dose, seed=noise_seed)
        return TaskInputs(pattern, obj.geometry, obj.ug(), obj.thickness_nm, obj.name)
    if isinstance(obj, TaskInputs):
        inputs = obj
    elif isinstance(obj, tuple) and 2 <= len(obj) <= 4:
        inputs = TaskInputs(*obj)
    else:
        raise TypeError(
            "preset_or_inputs must be a preset name, a Preset, a TaskInputs or a tuple "
            f"(pattern, geometry[, ug_true[, thickness_true_nm]]); got {type(obj).__name__}"
        )
    if not isinstance(inputs.geometry, Geometry):
        raise TypeError(f"geometry must be a larbed.Geometry, got {type(inputs.geometry).__name__}")
    inputs.intensity()  # validates shape against the geometry
    if inputs.ug_true is None and isinstance(inputs.pattern, xr.Dataset) and "ug" in inputs.pattern:
        inputs.ug_true = extract_ug(inputs.pattern)
        t = inputs.pattern.attrs.get("thickness_nm")
        if inputs.thickness_true_nm is None and isinstance(t, (int, float)):
            inputs.thickness_true_nm = float(t)
    if inputs.ug_true is not None:
        inputs.ug_true = check_ug(inputs.geometry, inputs.ug_true)
    return inputs


def check_common_settings(model, n_train, n_test, epochs, thickness_range_nm) -> int:
    """Check the arguments both tasks share; return the number of initial training epochs."""
    if model not in MODEL_KINDS:
        raise ValueError(f"unknown model {model!r}; choose one of {MODEL_KINDS}")
    for name, val in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val <= 0:
            raise ValueError(f"{name} must be a positive integer, got {val!r}")
    ep = EPOCHS[model] if epochs is None else epochs
    if isinstance(ep, bool) or not isinstance(ep, (int, np.integer)) or ep <= 0:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    lo, hi = np.asarray(thickness_range_nm, dtype=float)
    if not (0 < lo <= hi):
        raise ValueError(
            f"thickness_range_nm must be (low, high) with 0 < low <= high, got {thickness_range_nm}"
        )
    return int(ep)


def machine_info() -> dict:
    """Cores, platform, processor, TensorFlow/Keras versions and the time, for result attrs."""
    try:
        import keras
        import tensorflow as tf

        versions = f"tensorflow {tf.__version__}, keras {keras.__version__}"
    except ImportError:  # pragma: no cover
        versions = "n/a"
    return {
        "machine_cpus": os.cpu_count() or 0,
        "machine_platform": platform.platform(),
        "machine_processor": platform.processor() or platform.machine(),
        "software": versions,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def baselines_for(plan: TaskPlan, x_train_intensity: np.ndarray, y_train: np.ndarray) -> dict:
    """R of the mean and the linear baseline trained on (intensities (n, tilt, beam), targets) for
    the experimental pattern of ``plan`` (see :mod:`larbed.learn.baselines`)."""
    from .baselines import baseline_r_factors

    arr = np.asarray(x_train_intensity, dtype=float)
    x = np.swapaxes(arr, 1, 2).reshape(len(arr), -1)  # beam-major, like the ANN's input
    x_exp = plan.i_exp.T.reshape(-1)
    return baseline_r_factors(x, y_train, x_exp, plan.geometry, plan.i_exp, plan.t_range)


def predict_and_score(
    reg: Regressor, x_exp: np.ndarray, geometry: Geometry, i_exp: np.ndarray, t_range
):
    """Predict (U_g, t [nm]) for the experimental pattern, simulate it and return (U_g, t, R)."""
    out = reg.predict(x_exp)[0]
    ug, t = split_targets(out, t_range)
    sim = simulate_array(geometry, ug, float(t))
    return ug, float(t), r_factor(i_exp, sim)


@dataclass(frozen=True)
class NetworkSettings:
    """Which network a task trains: ``model`` and the ``weights``, ``hidden``,
    ``trainable_backbone``, ``standardize_features`` and ``config`` arguments of :func:`run_task1`."""

    model: str
    weights: object
    hidden: Sequence[int] | None
    trainable_backbone: bool
    standardize_features: bool
    config: str = "default"

    @property
    def weights_label(self) -> str:
        """How ``weights`` is recorded in results: ``'n/a'`` (ANN), ``'none'`` or the name/path."""
        if self.model != "cnn":
            return "n/a"
        return "none" if self.weights is None else os.fspath(self.weights)


@dataclass(frozen=True)
class TaskPlan:
    """The checked inputs and settings both tasks run with (the arguments of :func:`run_task1`).

    ``epochs`` is the resolved number of initial training epochs, ``t_range`` the thickness range
    [nm] and ``jitter`` the thickness jitter [nm].
    """

    inputs: TaskInputs
    net: NetworkSettings
    seed: int
    n_train: int
    n_test: int
    epochs: int
    batch_size: int
    learning_rate: float
    t_range: tuple[float, ...]
    jitter: float
    download: bool

    @property
    def geometry(self) -> Geometry:
        """The geometry of the experimental pattern."""
        return self.inputs.geometry

    @cached_property
    def i_exp(self) -> np.ndarray:
        """The experimental intensities (tilt, beam)."""
        return self.inputs.intensity()

    def regressor(self) -> Regressor:
        """A new :class:`Regressor` with these settings."""
        net = self.net
        return Regressor(
            net.model,
            self.geometry,
            hidden=net.hidden,
            weights=net.weights,
            trainable_backbone=net.trainable_backbone,
            standardize_features=net.standardize_features,
            config=net.config,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            seed=self.seed,
            download=self.download,
        )

    def fit_from_start(self, reg: Regressor, x, y, seed_sequence):
        """Standardise on the first ``n_train`` samples of (x, y), train ``epochs`` epochs with the
        generator of ``seed_sequence``, test on the rest; return (train, test) loss per epoch."""
        n = self.n_train
        reg.prepare(x[:n], y[:n])
        rng = np.random.default_rng(seed_sequence)
        return reg.fit(x[:n], y[:n], self.epochs, rng, x_test=x[n:], y_test=y[n:])
