"""The two networks of the thesis (3.2–3.3), built with Keras 3 on TensorFlow.

Two configurations (``config``, see ``docs/learning.rst``):

* ``'thesis'`` — SPEC §5 exactly: raw inputs and targets, tanh on every layer including the output;
* ``'default'`` — the deviations that make the networks learn from 100 samples: the inputs and the
  targets are standardised with training-set statistics (by :class:`~larbed.learn.Regressor`), the
  output is the sum of a linear read-out (``linear_readout``, not trained by Adam but solved in
  closed form by ridge least squares, :class:`~larbed.learn.baselines.RidgeMap`) and of the tanh
  stack, whose last layer is linear and starts at zero. The ANN's default hidden sizes are
  (128, 64, N_O) instead of (2/3·N_I, 1/3·N_I, N_O).

* ANN: input N_I (the N × M intensities, beam-major) → Dense(2/3·N_I, tanh) →
  Dense(1/3·N_I, tanh) → Dense(N_O, tanh) → Dense(N_O, tanh); hidden sizes overridable.
* CNN: Keras ResNet-50 without its top (global average pooling, 2048 features), backbone frozen,
  head Dense(16T, tanh) → Dense(4T, tanh) → Dense(T, tanh) → Dense(T, tanh), T = 2M + 1 targets.
  Input: the 2-D LARBED image (:func:`larbed.image.larbed_image`, three equal channels), upsampled
  by an integer factor to at least 32 px (ResNet-50's minimum), scaled to 0…255 and passed through
  ``keras.applications.resnet50.preprocess_input``.

TensorFlow and Keras are imported inside the functions only (``import larbed.learn`` stays light).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np

from ..geometry import Geometry

__all__ = [
    "Config",
    "CONFIGS",
    "check_config",
    "ModelKind",
    "MODEL_KINDS",
    "WeightsUnavailableError",
    "import_keras",
    "imagenet_cache_path",
    "resolve_weights",
    "ann_hidden_sizes",
    "cnn_head_sizes",
    "ann_weight_count",
    "build_ann",
    "build_backbone",
    "build_head",
    "ann_inputs",
    "cnn_images",
    "RESNET_MIN_PX",
    "RESNET_FEATURES",
]

logger = logging.getLogger(__name__)

ModelKind = Literal["ann", "cnn"]
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)
Config = Literal["default", "thesis"]
CONFIGS: tuple[str, ...] = get_args(Config)
#: Hidden sizes (h1, h2) of the ANN with ``config='default'`` (h3 = N_O as in the thesis).
DEFAULT_ANN_HIDDEN = (128, 64)


def check_config(config) -> str:
    """``config`` checked against :data:`CONFIGS`."""
    if config not in CONFIGS:
        raise ValueError(f"unknown config {config!r}; choose one of {CONFIGS}")
    return str(config)

#: ResNet-50 needs images of at least 32 × 32 pixels.
RESNET_MIN_PX = 32
#: Length of ResNet-50's globally averaged feature vector.
RESNET_FEATURES = 2048
#: Epsilon of the feature standardisation (variances are floored separately, see training).
FEATURE_EPS = 1e-6
_IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


class WeightsUnavailableError(ValueError):
    """ImageNet weights were asked for but are neither cached nor allowed to be downloaded."""


def import_keras():
    """Import Keras 3 and TensorFlow (lazily); return ``(keras, tf)``.

    Raises
    ------
    ImportError
        TensorFlow/Keras are missing; the message names the ``larbed[learn]`` extra.
    """
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "larbed.learn models need TensorFlow and Keras 3; install the extra: "
            "pip install 'larbed[learn]'"
        ) from exc
    if int(keras.__version__.split(".")[0]) < 3:  # pragma: no cover
        raise ImportError(f"larbed.learn needs Keras 3, found {keras.__version__}")
    return keras, tf


def _keras_home() -> str:
    home = os.environ.get("KERAS_HOME")
    if home:
        return home
    try:
        from keras.src.backend.config import keras_home

        return keras_home()
    except ImportError:  # pragma: no cover
        return os.path.join(os.path.expanduser("~"), ".keras")


def imagenet_cache_path() -> str:
    """Where Keras caches the ResNet-50 ImageNet weights (``$KERAS_HOME/models/…_notop.h5``)."""
    return os.path.join(_keras_home(), "models", _IMAGENET_FILE)


def resolve_weights(weights, *, download: bool = False) -> str | None:
    """Turn the ``weights`` option into what ``keras.applications.ResNet50`` should load.

    Parameters
    ----------
    weights : {'imagenet', None} or path
        ``'imagenet'``: the Keras cache file (see :func:`imagenet_cache_path`); a path: a local
        ``.h5`` / ``.weights.h5`` file with ResNet-50 (no top) weights; ``None`` (or ``'none'``):
        random initialisation.
    download : bool
        With ``'imagenet'`` and no cached file, let Keras download the weights (needs internet).
        Default ``False``: fail at once with :class:`WeightsUnavailableError` instead of waiting
        for a network time-out.

    Returns
    -------
    str or None
        A file path, ``'imagenet'`` (download allowed and not cached) or ``None``.
    """
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str):
        raise TypeError(f"weights must be 'imagenet', None or a file path, got {weights!r}")
    if weights.lower() == "imagenet":
        cached = imagenet_cache_path()
        if os.path.isfile(cached):
            return cached
        if download:
            return "imagenet"
        raise WeightsUnavailableError(
            f"ImageNet weights for ResNet-50 are not in the Keras cache ({cached}) and downloading "
            "is off (download=False). Options: (1) pass weights='/path/to/" + _IMAGENET_FILE + "' "
            "(a local .h5 or .weights.h5 file, e.g. copied from a machine that has it in "
            "~/.keras/models/); (2) put that file into the cache folder above; (3) use weights=None "
            "(random backbone; CLI: --weights none); (4) allow the download with download=True "
            "(needs internet)."
        )
    if not os.path.isfile(weights):
        raise ValueError(
            f"weights file {weights!r} does not exist; use 'imagenet', None or an existing "
            ".h5/.weights.h5 file"
        )
    if not weights.endswith(".h5"):
        raise ValueError(f"weights file must be .h5 or .weights.h5, got {weights!r}")
    return weights


# ----------------------------------------------------------------------------- sizes
def _check_sizes(hidden, what: str, n: int) -> tuple[int, ...]:
    try:
        sizes = tuple(int(h) for h in hidden)
    except TypeError as exc:
        raise TypeError(f"{what} hidden sizes must be a sequence of ints, got {hidden!r}") from exc
    if (
        len(sizes) != n
        or any(h <= 0 for h in sizes)
        or any(float(h) != float(x) for h, x in zip(sizes, hidden, strict=True))
    ):
        raise ValueError(f"{what} needs {n} positive integer hidden sizes, got {hidden!r}")
    return sizes


def ann_hidden_sizes(
    n_inputs: int, n_outputs: int, hidden: Sequence[int] | None = None, config: str = "thesis"
) -> tuple[int, ...]:
    """The ANN's three hidden sizes: thesis (round(2/3·N_I), round(1/3·N_I), N_O); with
    ``config='default'`` (128, 64, N_O)."""
    if hidden is None:
        if check_config(config) == "default":
            return DEFAULT_ANN_HIDDEN + (int(n_outputs),)
        return (max(1, round(2 * n_inputs / 3)), max(1, round(n_inputs / 3)), int(n_outputs))
    return _check_sizes(hidden, "the ANN", 3)


def cnn_head_sizes(n_outputs: int, hidden: Sequence[int] | None = None) -> tuple[int, ...]:
    """The CNN head's three hidden sizes: default (16T, 4T, T)."""
    if hidden is None:
        return (16 * n_outputs, 4 * n_outputs, n_outputs)
    return _check_sizes(hidden, "the CNN head", 3)


def ann_weight_count(
    n_inputs: int, n_outputs: int, hidden: Sequence[int] | None = None, config: str = "thesis"
) -> int:
    """Number of weights and biases of the ANN (with ``config='default'`` the closed-form linear
    read-out, N_I·N_O + N_O, included)."""
    sizes = (n_inputs,) + ann_hidden_sizes(n_inputs, n_outputs, hidden, config) + (n_outputs,)
    n = int(sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True)))
    if config == "default":
        n += int(n_inputs) * int(n_outputs) + int(n_outputs)
    return n


# ----------------------------------------------------------------------------- builders
#: Name of the closed-form linear read-out layer of ``config='default'`` networks.
LINEAR_READOUT = "linear_readout"


def _dense_stack(keras, x, sizes: Sequence[int], n_outputs: int, prefix: str, config: str):
    """The tanh stack; ``'default'``: a linear last layer starting at zero, plus the frozen
    linear read-out of the stack's input."""
    inp = x
    n = len(tuple(sizes))
    for i, units in enumerate(tuple(sizes) + (n_outputs,)):
        last = i == n
        if config == "default" and last:
            x = keras.layers.Dense(
                int(units), activation=None, kernel_initializer="zeros", name=f"{prefix}_dense_{i}"
            )(x)
        else:
            x = keras.layers.Dense(int(units), activation="tanh", name=f"{prefix}_dense_{i}")(x)
    if config == "default":
        readout = keras.layers.Dense(
            int(n_outputs), kernel_initializer="zeros", name=LINEAR_READOUT
        )
        readout.trainable = False
        x = keras.layers.Add(name=f"{prefix}_sum")([readout(inp), x])
    return x


def build_ann(
    n_inputs: int, n_outputs: int, hidden: Sequence[int] | None = None, *, config: str = "default"
):
    """The ANN as an (uncompiled) ``keras.Model`` taking (batch, n_inputs) float32.

    ``config='thesis'``: SPEC §5 (tanh everywhere, raw inputs and targets). ``'default'``: it takes
    standardised intensities and returns standardised targets (the :class:`Regressor` does the
    scaling): linear read-out (frozen, set by ridge) + tanh stack with a linear, zero-initialised
    last layer.
    """
    keras, _ = import_keras()
    config = check_config(config)
    sizes = ann_hidden_sizes(n_inputs, n_outputs, hidden, config)
    inp = keras.Input((int(n_inputs),), name="intensities")
    out = _dense_stack(keras, inp, sizes, n_outputs, "ann", config)
    return keras.Model(inp, out, name="larbed_ann")


def build_head(
    n_features: int,
    n_outputs: int,
    hidden: Sequence[int] | None = None,
    *,
    standardize: bool = False,
    config: str = "default",
):
    """The CNN's regression head as a ``keras.Model`` on (batch, n_features) backbone features.

    With ``standardize`` the first layer is a frozen ``BatchNormalization`` named
    ``feature_standardize`` (inference mode, γ = 1, β = 0) whose mean and variance are set from the
    training features (:meth:`larbed.learn.training.Regressor.standardize`): a fixed affine map.
    ``config`` as :func:`build_ann` (with ``'default'`` the features come standardised already).
    """
    keras, _ = import_keras()
    config = check_config(config)
    sizes = cnn_head_sizes(n_outputs, hidden)
    inp = keras.Input((int(n_features),), name="features")
    x = inp
    if standardize:
        norm = keras.layers.BatchNormalization(epsilon=FEATURE_EPS, name="feature_standardize")
        norm.trainable = False
        x = norm(x)
    return keras.Model(
        inp, _dense_stack(keras, x, sizes, n_outputs, "head", config), name="larbed_cnn_head"
    )


def build_backbone(image_shape: Sequence[int], weights="imagenet", *, download: bool = False):
    """ResNet-50 without top, global average pooling, ``trainable = False`` (BatchNorm in inference)."""
    keras, _ = import_keras()
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or shape[2] != 3 or min(shape[:2]) < RESNET_MIN_PX:
        raise ValueError(
            f"ResNet-50 needs (H, W, 3) images with H, W >= {RESNET_MIN_PX}, got {shape}"
        )
    w = resolve_weights(weights, download=download)
    try:
        backbone = keras.applications.ResNet50(
            include_top=False, weights=w, input_shape=shape, pooling="avg"
        )
    except (ValueError, OSError) as exc:
        if w not in (None, "imagenet"):
            raise ValueError(
                f"could not load ResNet-50 (no top) weights from {w!r}: {exc}"
            ) from exc
        raise
    backbone.trainable = False
    return backbone


# ----------------------------------------------------------------------------- inputs
def ann_inputs(intensity: np.ndarray) -> np.ndarray:
    """(n, tilt, beam) intensities → (n, beam·tilt) float32, beam-major."""
    arr = np.asarray(intensity, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"intensities must be (sample, tilt, beam), got shape {arr.shape}")
    return np.ascontiguousarray(np.swapaxes(arr, 1, 2).reshape(arr.shape[0], -1))


def image_upsampling(geometry: Geometry) -> int:
    """Integer factor that brings the LARBED image to at least 32 px on its short side."""
    from ..image import beam_grid_positions

    cells = beam_grid_positions(geometry)
    size = 2 * geometry.tilt_radius + 1
    short = min((cells[:, 0].max() + 1) * size, (cells[:, 1].max() + 1) * size)
    return max(1, math.ceil(RESNET_MIN_PX / short))


def cnn_images(intensity: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(n, tilt, beam) intensities → preprocessed ResNet-50 input (n, H, W, 3) float32.

    The LARBED image ([0, 1] per pattern) is upsampled (nearest, integer factor) to ≥ 32 px,
    multiplied by 255 and passed through ``keras.applications.resnet50.preprocess_input``.
    """
    from ..image import larbed_image

    keras, _ = import_keras()
    img = larbed_image(np.asarray(intensity, dtype=float), geometry, channels=3)
    f = image_upsampling(geometry)
    if f > 1:
        img = np.repeat(np.repeat(img, f, axis=-3), f, axis=-2)
    img = img.astype(np.float32) * np.float32(255.0)
    out = keras.applications.resnet50.preprocess_input(img)
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32))
