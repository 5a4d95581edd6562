"""How many threads larbed's kernels use: one setting, honoured by every kernel.

The kernels parallelise over tilts (Numba ``prange``); inside, each small eigenproblem runs with
one BLAS thread, since multithreaded BLAS on small matrices is many times slower.

The number of kernel threads is, in this order of precedence:

1. :func:`set_num_threads` (``larbed.set_num_threads(n)``; ``None`` clears it), or the
   ``threads=`` argument of the command line;
2. the environment variable ``LARBED_NUM_THREADS``;
3. Numba's current setting (``numba.set_num_threads``; by default ``NUMBA_NUM_THREADS``,
   normally the number of cores).

It cannot exceed ``NUMBA_NUM_THREADS``, which Numba fixes when it starts (larger values are
clipped, with a warning in the log).

Examples
--------
>>> import larbed
>>> larbed.set_num_threads(1)
>>> larbed.get_num_threads()
1
>>> larbed.set_num_threads(None)  # back to LARBED_NUM_THREADS or Numba's default
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Iterator

__all__ = ["ENV_VAR", "get_num_threads", "kernel_threads", "num_threads", "set_num_threads",
           "uses_kernels"]

logger = logging.getLogger(__name__)

ENV_VAR = "LARBED_NUM_THREADS"
_explicit: int | None = None


def _numba_max() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def _parse(value, source: str) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not (isinstance(value, int) or text.isdigit()) or int(text) < 1:
        raise ValueError(f"{source} must be a positive integer number of threads, got {value!r}")
    return int(text)


def set_num_threads(n: int | None) -> None:
    """Set the number of kernel threads for this process (``None``: back to the default)."""
    global _explicit
    _explicit = None if n is None else _parse(n, "the number of threads")


def num_threads() -> int:
    """The number of kernel threads in effect (see the module text)."""
    if _explicit is not None:
        n = _explicit
    elif os.environ.get(ENV_VAR, "").strip():
        n = _parse(os.environ[ENV_VAR].strip(), ENV_VAR)
    else:
        import numba

        return int(numba.get_num_threads())
    top = _numba_max()
    if n > top:
        logger.warning("%d threads asked for, but Numba was started with NUMBA_NUM_THREADS=%d; "
                       "using %d", n, top, top)
        n = top
    return n


get_num_threads = num_threads


_CONTROLLER = None


def _blas_controller():
    """One ThreadpoolController per process (building one scans the loaded libraries: ~2 ms)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


_STATE = threading.local()  # nesting depth of kernel_threads in this thread


@contextlib.contextmanager
def kernel_threads() -> Iterator[int]:
    """Run kernels with :func:`num_threads` Numba threads and one BLAS thread each; yields the count.

    Re-entrant: inside an active ``kernel_threads`` (same thread) it changes nothing. Public
    operations hold it for their whole duration (:func:`uses_kernels`): switching BLAS between one
    and several threads around every kernel call leaves OpenBLAS workers spinning beside the Numba
    workers and halves the speed of a refinement.
    """
    import numba

    depth = getattr(_STATE, "depth", 0)
    if depth:
        _STATE.depth = depth + 1
        try:
            yield numba.get_num_threads()
        finally:
            _STATE.depth = depth
        return
    n = num_threads()
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    _STATE.depth = 1
    try:
        with _blas_controller().limit(limits=1, user_api="blas"):
            yield n
    finally:
        _STATE.depth = 0
        numba.set_num_threads(before)


def uses_kernels(func):
    """Decorator: run ``func`` inside :func:`kernel_threads` (for the public entry points)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with kernel_threads():
            return func(*args, **kwargs)

    return wrapper
