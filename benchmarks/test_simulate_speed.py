"""larbed.simulate against the plain NumPy baseline, in one run (issue 2, "Speed").

Each case times three implementations on the same inputs (built in fixtures, outside the timing):

* ``reference`` — stacked matrices, ``numpy.linalg.eigh`` on the stack, matmul propagation, one
  BLAS thread (``benchmarks/_reference.py``);
* ``larbed`` — the public ``larbed.simulate`` call (validation, matrices, Numba kernel over all
  cores, xarray result);
* ``larbed_1thread`` — the same with one Numba thread (a per-core comparison).

Before timing, one warm-up call compiles the kernels and its result is checked against the
independent per-tilt reference of :mod:`larbed.testing` (agreement to 1e-10). Median times go into
``benchmark.extra_info`` and, at the end of the session, into a table of ratios reference / larbed.

Run: ``nox -s benchmarks`` or ``pytest benchmarks --benchmark-only``.
"""

from __future__ import annotations

import pytest

from _cases import CASES, IMPLEMENTATIONS, build, check, run


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.id)
def inputs(request):
    return build(request.param)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_simulate_speed(benchmark, inputs, impl, timings):
    case = inputs.case
    check(impl, case, run(impl, inputs))  # warm-up: compiles kernels, checks correctness
    benchmark.group = case.id
    benchmark.extra_info.update({"case": case.id, "impl": impl, "shape": inputs.shape})
    benchmark.pedantic(run, args=(impl, inputs), rounds=7, iterations=1, warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing timed
        return
    median = benchmark.stats.stats.median
    row = timings.setdefault(
        case.id, {"preset": case.preset, "ug": case.ug_kind, "shape": inputs.shape}
    )
    row[impl] = median
    benchmark.extra_info["median_s"] = median
    if impl != "reference" and "reference" in row:
        benchmark.extra_info["ratio_reference_over_this"] = row["reference"] / median
