"""Training engine: one network (ANN or CNN) with the thesis's loop, reproducible and resumable.

:class:`Regressor` owns a compiled Keras model and trains it with its own batch loop
(``train_on_batch`` over a permutation drawn from a NumPy generator the caller passes in). Nothing
depends on Keras's internal shuffling, so given the same weights, optimizer state and generator the
training is bit-for-bit the same — which is what lets Task 2 resume from a checkpoint.

With a frozen ResNet-50 (the default CNN) the backbone is a fixed function: every image's features
are computed once (:meth:`Regressor.inputs`) and only the head is trained on them. This is the same
model as backbone + head trained with the backbone frozen (BatchNorm in inference mode), only
without recomputing the backbone on every batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from .._checkpoint import load_npz, save_npz
from ..geometry import Geometry
from ._tf import configure_tensorflow, default_jit, inference_fn
from .baselines import RidgeMap, standardizer
from .models import (
    LINEAR_READOUT,
    MODEL_KINDS,
    RESNET_FEATURES,
    ann_hidden_sizes,
    ann_inputs,
    ann_weight_count,
    build_ann,
    build_backbone,
    build_head,
    check_config,
    cnn_head_sizes,
    cnn_images,
    import_keras,
)

__all__ = ["Regressor", "LEARNING_RATE", "BATCH_SIZE", "configure_tensorflow"]

logger = logging.getLogger(__name__)

#: Adam learning rate (thesis Table 3.2).
LEARNING_RATE = 1e-3
#: Batch size (thesis Table 3.2).
BATCH_SIZE = 20
_FEATURE_BATCH = 32
#: XLA-compile the training step only for models at least this large (compiling costs ~2 s and
#: pays off only for big dense layers such as the thesis ANN: ~1.5× faster steps).
XLA_MIN_PARAMS = 5_000_000
#: Refuse ANNs with more weights than this (the thesis ANN at 69 beams × 441 tilts has 8.3e8,
#: ~13 GB with Adam's state, and hours per run on a workstation CPU): pass smaller ``hidden``.
ANN_MAX_WEIGHTS = 250_000_000
#: Floor of the feature variances in :meth:`Regressor.standardize` (fraction of their mean).
FEATURE_VAR_FLOOR = 1e-2
def _shape_summary(shapes) -> str:
    return "[" + ", ".join("×".join(str(d) for d in s) or "()" for s in shapes[:4]) + (
        ", …]" if len(shapes) > 4 else "]")


def _cnn_image_shape(geometry: Geometry) -> tuple[int, int, int]:
    return tuple(cnn_images(np.zeros((1, geometry.n_tilts, geometry.n_beams)), geometry).shape[1:])  # type: ignore[return-value]


class Regressor:
    """A thesis network with a deterministic, checkpointable training loop.

    Parameters
    ----------
    kind : {'ann', 'cnn'}
        The network (thesis 3.2–3.3).
    geometry : Geometry
        Pattern geometry (fixes input and output sizes).
    hidden : sequence of 3 ints, optional
        Hidden sizes: ANN default (2/3·N_I, 1/3·N_I, N_O); CNN head default (16T, 4T, T).
    weights : {'imagenet', None} or path
        ResNet-50 weights (CNN only); see :func:`larbed.learn.models.resolve_weights`.
    trainable_backbone : bool
        Train ResNet-50 end to end (CNN only). Default ``False``: frozen, features cached.
    cache_features : bool
        With a frozen backbone, compute features once (default). ``False`` runs every batch through
        the frozen backbone: the same model, much slower (for benchmarks and checks).
    learning_rate : float
        Adam learning rate.
    batch_size : int
        Training batch size.
    seed : int
        Seeds the weight initialisation (``keras.utils.set_random_seed``).
    download : bool
        Allow Keras to download ImageNet weights when they are not cached.
    standardize_features : bool
        CNN only: standardise each backbone feature with the mean and variance of the training
        features (a frozen affine layer at the head's input, set by :meth:`standardize`). Not in
        the thesis, off by default. A randomly initialised backbone (``weights=None``) gives
        features that vary by only a few per cent between patterns, so without it the head mostly
        learns the mean target; with it the head sees every (random) feature and over-fits 100
        samples (see the docs for measured effects).
    jit_compile : bool, optional
        XLA-compile the training step. Default: for models with at least ``XLA_MIN_PARAMS``
        trainable parameters (about 1.5× faster thesis-size ANN on CPU), unless op determinism is
        enabled (Keras then refuses XLA).
    config : {'default', 'thesis'}
        ``'thesis'``: SPEC §5 exactly (raw intensities or features in, raw targets out, tanh on
        every layer). ``'default'``: inputs and targets standardised with the statistics of the
        first training set (:meth:`prepare`), a linear read-out solved by ridge least squares at
        every :meth:`fit` plus the tanh stack with a linear last layer trained by Adam on what the
        read-out leaves; losses are then in standardised target units. See ``docs/learning.rst``.
    """

    def __init__(
        self,
        kind: str,
        geometry: Geometry,
        *,
        hidden: Sequence[int] | None = None,
        weights="imagenet",
        trainable_backbone: bool = False,
        cache_features: bool = True,
        learning_rate: float = LEARNING_RATE,
        batch_size: int = BATCH_SIZE,
        seed: int = 0,
        download: bool = False,
        jit_compile: bool | None = None,
        standardize_features: bool = False,
        config: str = "default",
    ):
        if kind not in MODEL_KINDS:
            raise ValueError(f"unknown model {kind!r}; choose one of {MODEL_KINDS}")
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be a larbed.Geometry, got {type(geometry).__name__}")
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, (int, np.integer))
            or batch_size <= 0
        ):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not (np.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        config = check_config(config)
        keras, tf = import_keras()
        keras.utils.set_random_seed(int(seed))
        self.config = config
        self.kind = kind
        self.geometry = geometry
        self.batch_size = int(batch_size)
        self.n_outputs = 2 * geometry.n_reflections + 1
        self.trainable_backbone = bool(trainable_backbone) and kind == "cnn"
        self.backbone = None
        if kind == "ann":
            n_in = geometry.n_beams * geometry.n_tilts
            self.hidden_sizes = ann_hidden_sizes(n_in, self.n_outputs, hidden, config)
            n_w = ann_weight_count(n_in, self.n_outputs, hidden, config)
            if n_w > ANN_MAX_WEIGHTS:
                raise ValueError(
                    f"the ANN for {geometry.n_beams} beams × {geometry.n_tilts} tilts with hidden sizes "
                    f"{self.hidden_sizes} has {n_w:.3g} weights (> {ANN_MAX_WEIGHTS:.0e}; about "
                    f"{16 * n_w / 1e9:.0f} GB with Adam state): pass smaller hidden=(h1, h2, h3), "
                    f"e.g. (2048, 1024, {self.n_outputs})"
                )
            self.model = build_ann(n_in, self.n_outputs, self.hidden_sizes, config=config)
            self.uses_features = False
        else:
            self.image_shape = _cnn_image_shape(geometry)
            self.backbone = build_backbone(self.image_shape, weights, download=download)
            self.hidden_sizes = cnn_head_sizes(self.n_outputs, hidden)
            self.head = build_head(
                RESNET_FEATURES,
                self.n_outputs,
                self.hidden_sizes,
                standardize=standardize_features and config == "thesis",
                config=config,
            )
            self.uses_features = not self.trainable_backbone and bool(cache_features)
            if self.trainable_backbone:
                self.backbone.trainable = True
            if self.uses_features:
                self.model = self.head
            else:
                self.model = keras.Model(
                    self.backbone.input, self.head(self.backbone.output), name="larbed_cnn"
                )
        self.jit_compile = self._choose_jit(tf) if jit_compile is None else bool(jit_compile)
        self.model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=float(learning_rate)),
            loss="mse",
            jit_compile=self.jit_compile,
        )
        self._step_fn = None
        self._predict_fn = None
        self._features_fn = None
        n_x = int(self.model.inputs[0].shape[-1]) if self.uses_features or kind == "ann" else 0
        #: (x_mean, x_std, y_mean, y_scale) of ``config='default'``; identity until :meth:`prepare`
        self.scaler = [
            np.zeros(n_x),
            np.ones(n_x),
            np.zeros(self.n_outputs),
            np.ones(self.n_outputs),
        ]
        self.prepared = config == "thesis"
        #: the ridge parameter of the last read-out fit (``config='default'``)
        self.ridge_lambda = float("nan")
        self.model.optimizer.build(self.model.trainable_variables)
        self._initial_state = self.get_state()

    def _choose_jit(self, tf) -> bool:
        big = sum(int(np.prod(v.shape)) for v in self.model.trainable_variables) >= XLA_MIN_PARAMS
        return big and default_jit(tf)

    def prepare(self, x: np.ndarray, y: np.ndarray) -> None:
        """Set what the first training set fixes: for ``config='default'`` the input and target
        standardisation (mean, floored standard deviation; constant targets keep scale 1); for
        ``'thesis'`` the optional CNN feature standardisation (:meth:`standardize`)."""
        x = self._checked(x, "inputs")
        y = self._checked(y, "targets")
        if self.config == "thesis":
            self.standardize(x)
            return
        if self.kind == "cnn" and not self.uses_features:
            raise ValueError("config='default' needs cached features (a frozen backbone)")
        x_mean, x_std = standardizer(x)
        y_mean = y.astype(float).mean(axis=0)
        y_std = y.astype(float).std(axis=0)
        y_scale = np.where(y_std > 1e-12 * max(float(y_std.max()), 1e-300), y_std, 1.0)
        self.scaler = [x_mean, x_std, y_mean, y_scale]
        self.prepared = True

    def _checked(self, arr, what: str) -> np.ndarray:
        arr = np.asarray(arr)
        if not np.all(np.isfinite(arr)):
            bad = int(np.sum(~np.isfinite(arr)))
            raise ValueError(
                f"training {what} contain {bad} NaN or infinite values; check the simulated "
                "patterns and targets (a failed simulation, a bad U_g or thickness)"
            )
        return arr

    def _x(self, x) -> np.ndarray:
        """Inputs as the Keras model takes them (standardised with ``config='default'``)."""
        x = np.asarray(x, dtype=np.float32)
        if self.config == "thesis":
            return x
        if x.ndim != 2 or x.shape[1] != len(self.scaler[0]):
            raise ValueError(
                f"inputs must have shape (n, {len(self.scaler[0])}), got {x.shape}; were they made "
                "by this Regressor's inputs() (same model and geometry)?"
            )
        return ((x - self.scaler[0]) / self.scaler[1]).astype(np.float32)

    def _y(self, y) -> np.ndarray:
        y = np.asarray(y, dtype=np.float32)
        if self.config == "thesis":
            return y
        return ((y - self.scaler[2]) / self.scaler[3]).astype(np.float32)

    def _fit_readout(self, z: np.ndarray, yz: np.ndarray) -> None:
        """Solve the linear read-out on standardised (z, yz) by ridge (λ by leave-one-out)."""
        ones = np.ones(z.shape[1])
        ridge = RidgeMap.fit(z, yz, x_mean=np.zeros(z.shape[1]), x_std=ones,
                             y_scale=np.ones(yz.shape[1]))
        self.ridge_lambda = ridge.lam
        layer = self.model.get_layer(LINEAR_READOUT)
        layer.set_weights([ridge.weights.astype(np.float32), ridge.bias.astype(np.float32)])

    def standardize(self, x: np.ndarray) -> None:
        """Set the CNN head's feature standardisation from training inputs ``x`` (no-op for the ANN).

        ``x`` are what :meth:`inputs` returns (features, or images without cached features).
        Variances are floored at ``FEATURE_VAR_FLOOR`` × their mean so that features that are
        (almost) constant over the training set are not blown up.
        """
        if self.kind != "cnn":
            return
        try:
            layer = self.head.get_layer("feature_standardize")
        except ValueError:
            return
        feats = np.asarray(x, np.float32) if self.uses_features else self.features(x)
        if feats.ndim != 2 or feats.shape[1] != RESNET_FEATURES:
            raise ValueError(
                f"standardize needs (n, {RESNET_FEATURES}) features, got {feats.shape}"
            )
        mean = feats.astype(float).mean(axis=0)
        var = feats.astype(float).var(axis=0)
        var = np.maximum(var, FEATURE_VAR_FLOOR * max(float(var.mean()), 1e-30))
        ones = np.ones(RESNET_FEATURES, np.float32)
        layer.set_weights(
            [ones, np.zeros_like(ones), mean.astype(np.float32), var.astype(np.float32)]
        )

    # ------------------------------------------------------------------ inputs
    def images(self, intensity: np.ndarray) -> np.ndarray:
        """Preprocessed ResNet-50 images of (n, tilt, beam) intensities (CNN only)."""
        if self.kind != "cnn":
            raise ValueError("images are the CNN's input; the ANN takes flattened intensities")
        return cnn_images(intensity, self.geometry)

    def inputs(self, intensity: np.ndarray) -> np.ndarray:
        """What the trainable model takes for (n, tilt, beam) intensities.

        ANN: flattened intensities; CNN with cached features: backbone features (n, 2048);
        otherwise preprocessed images.
        """
        arr = np.asarray(intensity, dtype=float)
        g = self.geometry
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[1:] != (g.n_tilts, g.n_beams):
            raise ValueError(
                f"intensities must have shape (n, {g.n_tilts}, {g.n_beams}) (sample, tilt, beam), "
                f"got {np.shape(intensity)}"
            )
        if self.kind == "ann":
            return ann_inputs(arr)
        imgs = self.images(arr)
        if not self.uses_features:
            return imgs
        return self.features(imgs)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Frozen-backbone features (n, 2048) float32 of preprocessed images."""
        if self.backbone is None:
            raise ValueError("the ANN has no backbone")
        images = np.asarray(images, dtype=np.float32)
        if self._features_fn is None:
            self._features_fn = inference_fn(self.backbone)
        out = [
            np.asarray(self._features_fn(images[lo : lo + _FEATURE_BATCH]), dtype=np.float32)
            for lo in range(0, len(images), _FEATURE_BATCH)
        ]
        return np.concatenate(out) if out else np.zeros((0, RESNET_FEATURES), np.float32)

    # ------------------------------------------------------------------ train / predict
    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        epochs: int,
        rng: np.random.Generator,
        *,
        x_test: np.ndarray | None = None,
        y_test: np.ndarray | None = None,
        test_every_epoch: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Train ``epochs`` epochs (MSE, Adam) on a fresh permutation per epoch from ``rng``.

        Returns
        -------
        (train_loss, test_loss) : two float arrays of length ``epochs``
            Mean batch loss per epoch; test loss after each epoch (NaN where not evaluated: with
            ``test_every_epoch=False`` only the last epoch is evaluated).
        """
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        x = self._checked(x, "inputs")
        y = self._checked(y, "targets")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(
                f"need matching, non-empty inputs and targets, got {len(x)} and {len(y)}"
            )
        if not self.prepared:
            self.prepare(x, y)
        x = self._x(x)
        y = self._y(y)
        if self.config == "default":
            self._fit_readout(x, y)
        train = np.full(epochs, np.nan)
        test = np.full(epochs, np.nan)
        n = len(x)
        bs = min(self.batch_size, n)
        perms = [rng.permutation(n) for _ in range(epochs)]
        n_full = (n // bs) * bs
        fused = n_full == n and not (x_test is not None and test_every_epoch)
        if fused and epochs:
            # every batch of every epoch in one TensorFlow call
            idx = np.concatenate(perms).reshape(-1, bs)
            losses = self._run_steps(x, y, idx).reshape(epochs, -1)
            train[:] = losses.mean(axis=1)
            if x_test is not None:
                test[-1] = self.evaluate(x_test, y_test)
            return train, test
        for epoch, perm in enumerate(perms):
            parts = [self._run_steps(x, y, perm[:n_full].reshape(-1, bs)) * bs]
            if n_full < n:
                parts.append(self._run_steps(x, y, perm[n_full:][None, :]) * (n - n_full))
            train[epoch] = float(np.concatenate(parts).sum()) / n
            if x_test is not None and (test_every_epoch or epoch == epochs - 1):
                test[epoch] = self.evaluate(x_test, y_test)
        return train, test

    def _run_steps(self, x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Adam steps on the batches x[idx[s]] (s = 0, 1, …) in one call; the batch losses."""
        if self._step_fn is None:
            self._step_fn = self._make_step_fn()
        out = self._step_fn(x, y, np.ascontiguousarray(idx, dtype=np.int32))
        return np.asarray(out, dtype=float)

    def _make_step_fn(self):
        keras, tf = import_keras()
        model = self.model
        optimizer = model.optimizer
        variables = model.trainable_variables
        mse = keras.losses.MeanSquaredError()

        def steps(x, y, idx):
            n_steps = tf.shape(idx)[0]
            losses = tf.TensorArray(tf.float32, size=n_steps)
            for s in tf.range(n_steps):
                xb = tf.gather(x, idx[s])
                yb = tf.gather(y, idx[s])
                with tf.GradientTape() as tape:
                    loss = mse(yb, model(xb, training=True))
                grads = tape.gradient(loss, variables)
                optimizer.apply(grads, variables)
                losses = losses.write(s, loss)
            return losses.stack()

        spec = [
            tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), tf.float32),
            tf.TensorSpec((None, self.n_outputs), tf.float32),
            tf.TensorSpec((None, None), tf.int32),
        ]
        return tf.function(steps, jit_compile=self.jit_compile, input_signature=spec)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> float:
        """MSE loss on (x, y) (inference mode), in the units the network is trained in (raw
        targets for ``config='thesis'``, standardised ones for ``'default'``)."""
        pred = self.predict(x)
        err = pred - np.asarray(y, np.float32).astype(float)
        if self.config == "default":
            err = err / self.scaler[3]
        return float(np.mean(err**2))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Network output (n, 2M + 1) as float64 in target units (inference mode)."""
        if self._predict_fn is None:
            self._predict_fn = inference_fn(self.model)
        out = np.asarray(self._predict_fn(self._x(x)), dtype=float)
        if self.config == "default":
            out = out * self.scaler[3] + self.scaler[2]
        return out

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, list[np.ndarray]]:
        """Copies of the trainable model's weights and the optimizer's variables."""
        return {
            "weights": [np.array(w.numpy()) for w in self.model.weights],
            "optimizer": [np.array(v.numpy()) for v in self.model.optimizer.variables],
            "scaler": [np.array(a, dtype=float) for a in self.scaler],
        }

    def set_state(self, state: dict[str, list[np.ndarray]]) -> None:
        """Restore :meth:`get_state` output exactly."""
        for what, variables in (
            ("weights", self.model.weights),
            ("optimizer", self.model.optimizer.variables),
        ):
            values = state[what]
            shapes = [tuple(v.shape) for v in variables]
            given = [tuple(np.shape(v)) for v in values]
            if shapes != given:
                raise ValueError(
                    f"the saved {what} do not match this {self.kind.upper()} "
                    f"({self.config} config, hidden {self.hidden_sizes}, {self.geometry.n_beams} "
                    f"beams × {self.geometry.n_tilts} tilts): {len(given)} arrays "
                    f"{_shape_summary(given)} against {len(shapes)} {_shape_summary(shapes)}; "
                    "load a state saved by a Regressor of the same settings"
                )
        for var, value in zip(self.model.weights, state["weights"], strict=True):
            var.assign(value)
        for var, value in zip(self.model.optimizer.variables, state["optimizer"], strict=True):
            var.assign(value)
        scaler = state.get("scaler")
        if scaler is not None:
            if [np.shape(a) for a in scaler] != [np.shape(a) for a in self.scaler]:
                raise ValueError("the saved standardisation does not match this model")
            self.scaler = [np.array(a, dtype=float) for a in scaler]
            self.prepared = self.config == "thesis" or bool(
                np.any(self.scaler[1] != 1.0) or np.any(self.scaler[3] != 1.0)
                or np.any(self.scaler[0] != 0.0) or np.any(self.scaler[2] != 0.0)
            )

    def reset(self) -> None:
        """Back to the initial weights and a fresh optimizer (as just after construction)."""
        self.set_state(self._initial_state)

    def save_state(self, path: str | os.PathLike) -> None:
        """Write weights and optimizer state to an ``.npz`` file (exact, atomic rename)."""
        state = self.get_state()
        arrays = {f"w{i:04d}": w for i, w in enumerate(state["weights"])}
        arrays.update({f"o{i:04d}": v for i, v in enumerate(state["optimizer"])})
        arrays.update({f"s{i:04d}": v for i, v in enumerate(state["scaler"])})
        save_npz(path, **arrays)

    def load_state(self, path: str | os.PathLike) -> None:
        """Read a file written by :meth:`save_state`."""
        z = load_npz(path)
        w = [z[k] for k in sorted(k for k in z if k.startswith("w"))]
        o = [z[k] for k in sorted(k for k in z if k.startswith("o"))]
        sc = [z[k] for k in sorted(k for k in z if k.startswith("s"))]
        self.set_state({"weights": w, "optimizer": o, "scaler": sc or None})

    def full_model(self):
        """The complete Keras model (for the CNN: backbone + head, images in)."""
        if self.kind == "ann" or not self.uses_features:
            return self.model
        keras, _ = import_keras()
        return keras.Model(self.backbone.input, self.head(self.backbone.output), name="larbed_cnn")

    def check_geometry(self, geometry: Geometry) -> None:
        """Raise ``ValueError`` unless ``geometry`` is the one this network was built for (the same
        beams, tilts, voltage, zone axis and crystal: same input positions mean the same physics)."""
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be a larbed.Geometry, got {type(geometry).__name__}")
        mine, theirs = self.geometry.to_attrs(), geometry.to_attrs()
        diff = sorted(k for k in set(mine) | set(theirs) if str(mine.get(k)) != str(theirs.get(k)))
        if diff:
            raise ValueError(
                f"this {self.kind.upper()} was trained for another geometry "
                f"({self.geometry.n_beams} beams × {self.geometry.n_tilts} tilts); the pattern's "
                f"differs in {', '.join(diff)}: train a network for this geometry"
            )

    def count_trainable(self) -> int:
        """Number of trainable parameters."""
        return int(sum(int(np.prod(v.shape)) for v in self.model.trainable_variables))
