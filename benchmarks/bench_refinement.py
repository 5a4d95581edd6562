"""One exact Jacobian against central finite differences, in the same run (issue 4, "Targets").

Usage::

    python benchmarks/bench_refinement.py [--preset SrTiO3-10] [--repeat 5] [--fd-columns all|N]
                                          [--json out.json]

Times, on the preset's pattern (69 beams × 441 tilts for SrTiO3-10, real U_g, t = 30 nm):

* ``exact`` — :func:`larbed.refinement.intensity_jacobian` (all ∂I/∂Re U_g, ∂I/∂Im U_g, ∂I/∂t;
  Numba kernel over all cores, one BLAS thread per worker, xarray result), median of ``--repeat``
  after one compiling call;
* ``finite differences`` — central differences through :func:`larbed.simulate`, two simulations per
  parameter (2P + 1 parameters). ``--fd-columns N`` times N columns and extrapolates (stated in the
  output); the default times every column.

It also checks that the two agree (max |exact − FD| relative to max |exact|) and prints the ratio
FD time / exact time. Thread counts: Numba uses ``NUMBA_NUM_THREADS`` (default: all CPUs); set
``NUMBA_NUM_THREADS=2`` to reproduce the 2-core target.
"""

from __future__ import annotations

import argparse
import json
import time

import numba
import numpy as np

import larbed
from _machine import cpu_model
from larbed.refinement import intensity_jacobian

TARGET_S = 2.0


def finite_difference_columns(geo, ug, t, columns, h_u=1e-6, h_t=1e-5):
    """Central differences of the pattern for the given parameter columns (Re…, Im…, t)."""
    p = geo.n_reflections
    out = []
    for c in columns:
        if c == 2 * p:
            plus = larbed.simulate(geo, ug, t + h_t).intensity.values
            minus = larbed.simulate(geo, ug, t - h_t).intensity.values
            out.append((plus - minus) / (2 * h_t))
            continue
        d = np.zeros(p, complex)
        d[c % p] = h_u if c < p else 1j * h_u
        plus = larbed.simulate(geo, ug.copy(data=ug.values + d), t).intensity.values
        minus = larbed.simulate(geo, ug.copy(data=ug.values - d), t).intensity.values
        out.append((plus - minus) / (2 * h_u))
    return np.stack(out, axis=2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="SrTiO3-10")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--fd-columns", default="all", help="'all' or a number of columns to time")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    preset = larbed.presets.load(args.preset)
    geo, ug, t = preset.geometry, preset.ug(), preset.thickness_nm
    p = geo.n_reflections
    n_cols = 2 * p + 1

    intensity_jacobian(geo, ug, t)  # compile
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        jac = intensity_jacobian(geo, ug, t)
        times.append(time.perf_counter() - t0)
    exact_s = float(np.median(times))
    exact = np.concatenate(
        [jac.d_real.values, jac.d_imag.values, jac.d_thickness.values[..., None]], axis=2
    )

    larbed.simulate(geo, ug, t)  # compile
    if args.fd_columns == "all":
        columns = np.arange(n_cols)
    else:
        rng = np.random.default_rng(0)
        columns = np.sort(rng.choice(n_cols, size=min(int(args.fd_columns), n_cols), replace=False))
    t0 = time.perf_counter()
    fd = finite_difference_columns(geo, ug, t, columns)
    fd_s_measured = time.perf_counter() - t0
    fd_s = fd_s_measured * n_cols / len(columns)
    err = float(np.max(np.abs(fd - exact[:, :, columns])) / np.max(np.abs(exact)))

    info = {
        "preset": preset.name,
        "shape": f"{geo.n_beams} beams × {geo.n_tilts} tilts, {n_cols} parameters",
        "cpu": cpu_model(),
        "numba_threads": numba.get_num_threads(),
        "exact_s": exact_s,
        "fd_s": fd_s,
        "fd_columns_timed": int(len(columns)),
        "fd_extrapolated": bool(len(columns) < n_cols),
        "ratio_fd_over_exact": fd_s / exact_s,
        "max_rel_difference": err,
        "target_s": TARGET_S,
        "target_met": exact_s <= TARGET_S,
    }
    print(
        f"{info['preset']}: {info['shape']}; {info['cpu']}, Numba threads {info['numba_threads']}, "
        f"one BLAS thread per worker"
    )
    print("| method | time [s] |")
    print("|---|---|")
    print(f"| exact Jacobian (median of {args.repeat}) | {exact_s:.3f} |")
    extra = f" (timed {len(columns)} columns, extrapolated)" if info["fd_extrapolated"] else ""
    print(f"| central finite differences{extra} | {fd_s:.1f} |")
    print(
        f"ratio FD / exact: {info['ratio_fd_over_exact']:.0f}×; "
        f"max |exact − FD| / max |exact| = {err:.1e}; "
        f"target ≤ {TARGET_S} s: {'met' if info['target_met'] else 'MISSED'}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
