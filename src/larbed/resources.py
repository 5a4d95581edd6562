"""Memory and time before the work: estimates for simulations, Jacobians and refinements.

Large problems (thousands of beams, 10⁵ tilts) can need more memory than a machine has, or hours.
larbed estimates both before it starts: a job whose estimate exceeds the available memory is
refused with a :class:`ResourceError` that names the estimate and what makes it fit; a long one is
announced in the log and gets a progress bar.

The time model is calibrated once per process: one eigen-decomposition of a matrix of the
problem's size (at most :data:`CALIBRATION_MAX_N`, scaled as N³ beyond) is timed with one BLAS
thread, and the per-tilt work is a multiple of it (:data:`JACOBIAN_EIG_FACTOR` for the full
Jacobian, :data:`JACOBIAN_REDUCED_EIG_FACTOR` for an iteration of :func:`larbed.refine` on the
reduced kernels). The estimates are meant to within a factor of about two (measured 1.0–1.6× the
actual iteration for 37–121 beams on the real, Hermitian and absorbing paths).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from .threads import num_threads

__all__ = [
    "CostEstimate",
    "ResourceError",
    "available_memory_bytes",
    "check_memory",
    "estimate_jacobian",
    "estimate_simulation",
]

logger = logging.getLogger(__name__)

#: Calibration matrices are at most this large (time scaled as N³ beyond).
CALIBRATION_MAX_N = 96
#: One tilt of the Jacobian costs about this many eigen-decompositions (products with C and C⁻¹,
#: the divided differences and the contraction over reflections).
JACOBIAN_EIG_FACTOR = 6.0
#: An accepted Levenberg–Marquardt iteration on the reduced kernels (U part summed into the free
#: parameters; the normal equations reuse the trial's eigensystems) costs about this many
#: eigen-decompositions per tilt: measured 1.5–2.8 for 37–121 beams, with and without a
#: measurement model (``benchmarks/bench_realdata.py``: 2.3 at 121 beams × 1009 tilts).
JACOBIAN_REDUCED_EIG_FACTOR = 2.5
#: A job may use at most this fraction of the memory the system reports available.
MEMORY_FRACTION = 0.8


class ResourceError(ValueError):
    """A job would need more memory than is available (raised before any work is done)."""


@dataclass(frozen=True)
class CostEstimate:
    """Estimated peak memory [bytes] and wall time [s] of a job."""

    memory_bytes: float
    seconds: float

    def __str__(self) -> str:
        return f"{_format_bytes(self.memory_bytes)} and about {_format_seconds(self.seconds)}"


def _format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def _format_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.3g} h"
    if s >= 60:
        return f"{s / 60:.3g} min"
    return f"{s:.3g} s"


def available_memory_bytes() -> int:
    """Memory the system reports available (Linux ``MemAvailable``; else the physical memory)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 2**34


@functools.lru_cache(maxsize=8)
def _eig_seconds_at(n: int, kind: str) -> float:
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n))
    if kind != "real":
        a = a + 1j * rng.standard_normal((n, n))
    a = a + a.conj().T
    solver = np.linalg.eig if kind == "general" else np.linalg.eigh
    with threadpool_limits(limits=1, user_api="blas"):
        solver(a)  # warm up
        reps, t0 = 0, time.perf_counter()
        while reps < 3 or time.perf_counter() - t0 < 0.02:
            solver(a)
            reps += 1
    return (time.perf_counter() - t0) / reps


def _eig_seconds(n: int, kind: str) -> float:
    n0 = max(8, min(int(n), CALIBRATION_MAX_N))
    return _eig_seconds_at(n0, kind) * (n / n0) ** 3


def estimate_simulation(geometry, n_thickness: int = 1, path: str = "real",
                        n_tilts: int | None = None) -> CostEstimate:
    """Cost of :func:`larbed.simulate` for ``n_tilts`` tilts (default all) and ``n_thickness``
    thicknesses on the ``path`` eigensolver ('real', 'hermitian' or 'general')."""
    m = geometry.n_tilts if n_tilts is None else int(n_tilts)
    n = geometry.n_beams
    out = 8.0 * n_thickness * m * n
    work = 16.0 * n * n * num_threads() * (2 if path != "real" else 1)
    per_tilt = _eig_seconds(n, path) + n_thickness * 2e-9 * n * n
    return CostEstimate(3 * out + 2 * 8.0 * m * n + work, m * per_tilt / num_threads())


def estimate_jacobian(geometry, n_params: int | None = None, *, chunk_tilts: int | None = None,
                      path: str = "real", reduced: bool = False,
                      points_per_tilt: int = 1) -> CostEstimate:
    """Cost of one refinement iteration (model, Jacobian, normal equations).

    With ``chunk_tilts`` (the tilt chunk of the normal equations) memory is the chunk's Jacobian
    plus the data arrays; without, the full (tilt, beam, parameter) Jacobian that
    :func:`larbed.intensity_jacobian` returns. ``reduced``: the kernels sum the U part straight
    into the ``n_params`` free parameters (what :func:`larbed.refine` does where the parameter map
    allows it): no column per reflection and no projection onto q. ``points_per_tilt``: tilts
    computed per measured tilt (7 with a tilt spread); they multiply the per-tilt work.
    """
    m, n, p = geometry.n_tilts, geometry.n_beams, geometry.n_reflections
    n_cols = 2 * p + 2
    n_q = n_cols if n_params is None else int(n_params)
    rows = m if chunk_tilts is None else min(m, int(chunk_tilts))
    memory = 8.0 * rows * n * (n_cols + n_q) + 8.0 * n_q * n_q + 10 * 8.0 * m * n
    if reduced:
        per_tilt = JACOBIAN_REDUCED_EIG_FACTOR * _eig_seconds(n, path)
        flops = 1.0 * m * n * n_q * n_q  # JᵀJ by a symmetric rank-k update
    else:
        per_tilt = JACOBIAN_EIG_FACTOR * _eig_seconds(n, path) + 2e-9 * n * n * n_cols
        flops = 2.0 * m * n * n_q * (n_q + n_cols)  # projection onto q and JᵀJ
    per_tilt *= max(1, int(points_per_tilt))
    return CostEstimate(memory, m * per_tilt / num_threads() + flops / 5e9)


def check_memory(estimate: CostEstimate, what: str, hint: str) -> None:
    """Raise :class:`ResourceError` before the work when ``estimate`` exceeds the available memory."""
    avail = available_memory_bytes()
    if estimate.memory_bytes > MEMORY_FRACTION * avail:
        raise ResourceError(
            f"{what} would need {_format_bytes(estimate.memory_bytes)} of memory; "
            f"{_format_bytes(avail)} are available. {hint}"
        )
    if estimate.seconds > 60:
        logger.warning("%s: estimated %s", what, estimate)
