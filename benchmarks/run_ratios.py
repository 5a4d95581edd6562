"""Print a markdown table of larbed.simulate vs the plain NumPy reference (median times, ratios).

Usage::

    python benchmarks/run_ratios.py [--repeat 9] [--cases SrTiO3-10-real ...] [--format rst]

The implementations are timed round-robin (reference, larbed, larbed with one thread, then again),
so slow drifts of a shared machine hit them alike; the table shows median times. Every
implementation is first run once (kernels compiled) and checked against the independent reference
of :mod:`larbed.testing`. Same cases as ``pytest benchmarks --benchmark-only``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _cases import (  # noqa: E402
    CASES,
    IMPLEMENTATIONS,
    build,
    check,
    markdown_table,
    one_blas_thread,
    rst_table,
    run,
)
from _machine import cpu_model  # noqa: E402


def measure(case, repeat: int, implementations=IMPLEMENTATIONS) -> dict:
    """Median wall time [s] per implementation for one case (round-robin timing)."""
    inputs = build(case)
    for impl in implementations:
        check(impl, case, run(impl, inputs))  # compile + correctness
    times: dict[str, list[float]] = {impl: [] for impl in implementations}
    for _ in range(repeat):
        for impl in implementations:
            t0 = time.perf_counter()
            run(impl, inputs)
            times[impl].append(time.perf_counter() - t0)
    row = {"preset": case.preset, "ug": case.ug_kind, "shape": inputs.shape, "case": case.id}
    row.update({impl: float(np.median(t)) for impl, t in times.items()})
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=9, help="timed rounds per implementation")
    parser.add_argument(
        "--cases", nargs="+", metavar="ID", help=f"subset of {[c.id for c in CASES]}"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--format", choices=("markdown", "rst"), default="markdown", help="table format"
    )
    args = parser.parse_args(argv)
    cases = CASES
    if args.cases:
        known = {c.id.lower(): c for c in CASES}
        unknown = [c for c in args.cases if c.lower() not in known]
        if unknown:
            parser.error(f"unknown case(s) {unknown}; choose from {list(known)}")
        cases = tuple(known[c.lower()] for c in args.cases)
    import numba

    rows = []
    load_before = os.getloadavg()[0]
    with one_blas_thread():
        for case in cases:
            rows.append(measure(case, args.repeat))
            print(f"  measured {case.id}", file=sys.stderr, flush=True)
    cpu = cpu_model()
    load = (load_before, os.getloadavg()[0])
    print(
        f"larbed vs plain NumPy reference — {cpu}, {os.cpu_count()} CPUs, "
        f"{numba.get_num_threads()} Numba threads, median of {args.repeat}; "
        f"1-min load average {load[0]:.1f} before, {load[1]:.1f} after\n"
    )
    table = markdown_table(rows)
    print(rst_table(rows) if args.format == "rst" else table)
    if args.json:
        for r in rows:
            r["ratio"] = r["reference"] / r["larbed"]
            r["ratio_1thread"] = r["reference"] / r["larbed_1thread"]
        Path(args.json).write_text(
            json.dumps(
                {"cpu": cpu, "cpus": os.cpu_count(), "load": load, "rows": rows, "table": table},
                indent=1,
            ),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
