"""TensorFlow helpers of the training engine: thread and determinism settings, traced inference."""

from __future__ import annotations

import logging

from .models import import_keras

__all__ = ["configure_tensorflow", "default_jit", "inference_fn"]

logger = logging.getLogger(__name__)

_configured = False


def configure_tensorflow(threads: int | None = None, *, deterministic: bool = False) -> None:
    """Optional TensorFlow settings: CPU thread count and op determinism.

    Training here is reproducible without ``deterministic`` (CPU dense kernels are deterministic
    for a fixed thread count, and the batch order comes from a NumPy generator; the tests check
    it). ``deterministic=True`` calls ``tf.config.experimental.enable_op_determinism()`` (for GPUs),
    which also makes Keras switch XLA compilation off (about 1.5× slower ANN training on CPU).
    ``threads`` must be set before TensorFlow runs its first op; later calls only log a warning.
    """
    global _configured
    _, tf = import_keras()
    if deterministic and not _configured:
        tf.config.experimental.enable_op_determinism()
        _configured = True
        logger.info("TensorFlow op determinism enabled (XLA off)")
    if threads is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(int(threads))
        except RuntimeError as exc:  # already initialised
            logger.warning("could not set TensorFlow threads to %s: %s", threads, exc)


def inference_fn(model):
    """A traced ``model(x, training=False)`` accepting any batch size (one trace)."""
    _, tf = import_keras()
    spec = [tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), tf.float32)]
    return tf.function(lambda x: model(x, training=False), input_signature=spec)


def default_jit(tf) -> bool:
    try:
        from tensorflow.python.framework.config import is_op_determinism_enabled
    except ImportError:  # pragma: no cover - other TensorFlow layouts
        return not _configured
    return not is_op_determinism_enabled()


