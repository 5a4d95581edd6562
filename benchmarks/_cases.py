"""Benchmark cases shared by the pytest-benchmark suite and ``run_ratios.py``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache

import numba
import numpy as np
from threadpoolctl import threadpool_limits

import larbed
from _reference import intensities as reference_intensities
from larbed import presets
from larbed.origin import REAL_RTOL
from larbed.testing import simulate_reference, structure_matrices

#: Common phase that makes every U_g complex (still Hermitian; intensities change).
COMPLEX_PHASE = 0.3
#: The thickness series: 51 thicknesses, 5 … 105 nm.
SERIES_NM = np.arange(5.0, 106.0, 2.0)
#: larbed and the NumPy baseline agree to this (absolute, intensities ≤ 1); both are exact methods.
AGREEMENT_ATOL = 1e-10

IMPLEMENTATIONS = ("reference", "larbed", "larbed_1thread")


@dataclass(frozen=True)
class Case:
    preset: str
    ug_kind: str  # "real" or "complex"
    series: bool = False

    @property
    def id(self) -> str:
        return f"{self.preset}-{self.ug_kind}" + ("-51t" if self.series else "")


CASES = (
    Case("SrTiO3-10", "real"),
    Case("SrTiO3-10", "complex"),
    Case("SrTiO3-1", "real"),
    Case("SrTiO3-1", "complex"),
    Case("ZnO-2", "real"),
    Case("ZnO-2", "complex"),
    Case("SrTiO3-10", "real", series=True),
    Case("SrTiO3-10", "complex", series=True),
)


@dataclass
class Inputs:
    case: Case
    geometry: larbed.Geometry
    ug: object
    thickness_nm: object
    offdiag: np.ndarray
    diag: np.ndarray
    thickness_a: np.ndarray

    @property
    def shape(self) -> str:
        g = self.geometry
        t = len(np.atleast_1d(self.thickness_nm))
        return f"{g.n_beams} × {g.n_tilts}" + (f" × {t} t" if t > 1 else "")


@cache
def build(case: Case) -> Inputs:
    """Geometry, U_g and the baseline's matrices for a case (built once)."""
    p = presets.load(case.preset)
    ug = p.ug()
    if case.ug_kind == "complex":
        ug = ug.copy(data=ug.values * np.exp(1j * COMPLEX_PHASE))
    elif case.ug_kind != "real":
        raise ValueError(f"ug_kind must be 'real' or 'complex', got {case.ug_kind!r}")
    thickness = SERIES_NM if case.series else p.thickness_nm
    mats = structure_matrices(p.geometry, ug) / (2.0 * p.geometry.k0)  # (M, N, N) complex
    idx = np.arange(p.geometry.n_beams)
    diag = np.ascontiguousarray(mats[:, idx, idx].real)
    off = mats[0].copy()
    off[idx, idx] = 0.0
    if case.ug_kind == "real":
        # compute_ug leaves round-off imaginary parts (exp(-2πi g·r)); larbed's rule for "real"
        if np.abs(off.imag).max() > REAL_RTOL * np.abs(off).max():
            raise ValueError(f"{case.preset}: U_g are not real")
        off = np.ascontiguousarray(off.real)
    thick_a = np.atleast_1d(np.asarray(thickness, dtype=float)) * 10.0
    return Inputs(case, p.geometry, ug, thickness, off, diag, thick_a)


def run(impl: str, inp: Inputs) -> np.ndarray:
    """One call of an implementation; returns intensities (T, M, N).

    Call it inside :func:`one_blas_thread` (``larbed.simulate`` limits BLAS itself, and pays for
    that on every call; the reference does not).
    """
    if impl == "reference":  # the caller holds one_blas_thread() around the timing
        return reference_intensities(inp.offdiag, inp.diag, inp.thickness_a)
    if impl == "larbed":
        out = larbed.simulate(inp.geometry, inp.ug, inp.thickness_nm).intensity.values
    elif impl == "larbed_1thread":
        before = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            out = larbed.simulate(inp.geometry, inp.ug, inp.thickness_nm).intensity.values
        finally:
            numba.set_num_threads(before)
    else:
        raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLEMENTATIONS}")
    return out if out.ndim == 3 else out[None]


def one_blas_thread():
    """Context manager: BLAS/LAPACK limited to one thread (entered once, outside the timings)."""
    return threadpool_limits(limits=1, user_api="blas")


@cache
def expected(case: Case) -> np.ndarray:
    """Independent per-tilt reference of :mod:`larbed.testing` (T, M, N), for correctness."""
    inp = build(case)
    return simulate_reference(inp.geometry, inp.ug, inp.thickness_nm)


def check(impl: str, case: Case, result: np.ndarray) -> None:
    want = expected(case)
    err = float(np.max(np.abs(result - want)))
    if result.shape != want.shape or not err <= AGREEMENT_ATOL:
        raise AssertionError(f"{impl} on {case.id}: max |ΔI| = {err:.3g} > {AGREEMENT_ATOL}")


def median_time(func, repeat: int, min_time: float = 0.0) -> float:
    """Median wall time [s] of ``repeat`` calls (more while their sum is below ``min_time``)."""
    times: list[float] = []
    while len(times) < repeat or sum(times) < min_time:
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
        if len(times) >= 10 * repeat:
            break
    return float(np.median(times))


def markdown_table(rows: list[dict]) -> str:
    """Markdown table of median times [ms] and ratios reference / larbed."""
    lines = [
        "| case | U_g | beams × tilts | NumPy reference [ms] | larbed [ms] | larbed, 1 thread [ms] "
        "| ratio | ratio, 1 thread |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref, lb, l1 = r["reference"], r["larbed"], r.get("larbed_1thread")
        one = f"{1e3 * l1:.1f}" if l1 else "–"
        ratio1 = f"{ref / l1:.1f}×" if l1 else "–"
        lines.append(
            f"| {r['preset']} | {r['ug']} | {r['shape']} | {1e3 * ref:.1f} | {1e3 * lb:.1f} "
            f"| {one} | **{ref / lb:.1f}×** | {ratio1} |"
        )
    return "\n".join(lines)


def rst_table(rows: list[dict]) -> str:
    """The same table as :func:`markdown_table` as an RST list-table (for docs/benchmarks.rst)."""
    head = [
        "case",
        "U_g",
        "beams × tilts",
        "NumPy reference [ms]",
        "larbed [ms]",
        "larbed, 1 thread [ms]",
        "ratio",
        "ratio, 1 thread",
    ]
    body = []
    for r in rows:
        ref, lb, l1 = r["reference"], r["larbed"], r.get("larbed_1thread")
        body.append(
            [
                r["preset"],
                r["ug"],
                r["shape"],
                f"{1e3 * ref:.1f}",
                f"{1e3 * lb:.1f}",
                f"{1e3 * l1:.1f}" if l1 else "–",
                f"**{ref / lb:.1f}×**",
                f"{ref / l1:.1f}×" if l1 else "–",
            ]
        )
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [head, *body]:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    return "\n".join(lines)
