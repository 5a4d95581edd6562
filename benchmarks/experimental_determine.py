"""``determine`` on the experimental SrTiO3 pattern, started from the computed U_g.

Usage::

    python benchmarks/experimental_determine.py [--data ../shared/data/experimental/sto120kv]
        [--json results.json]

The start is the independent-atom U_g (Lobato, B of SPEC §9); no kinematic starts, no global
search, no perturbed variants, no weak-U_g polish (the start is physical); the measurement model
and the hold-out of ``benchmarks/experimental_sto120kv.py``. Reports the time, R, R_free and t.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import larbed
from larbed import Measurement

sys.path.insert(0, str(Path(__file__).parent))
from _machine import cpu_model, report  # noqa: E402
from experimental_sto120kv import DEFAULT_DATA  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--max-iter", type=int, default=60)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    csv = args.data / "sto120kv.csv"
    if not csv.exists():
        print(f"the experimental data are not at {csv}: give --data", file=sys.stderr)
        return 2
    crystal = larbed.Crystal.builtin("SrTiO3", debye_waller=True)
    geometry = larbed.Geometry.from_csv(csv, crystal, voltage_kv=120, zone_axis=(0, 0, 1))
    pattern = larbed.read_csv(csv, geometry)
    t0 = time.perf_counter()
    res = larbed.determine(pattern, geometry, start=larbed.compute_ug(crystal, geometry),
                           kinematic=False, search=False, n_perturbed=0, polish_weak=False,
                           symmetry="crystal", thickness_range_nm=(5.0, 30.0),
                           max_iter=args.max_iter, holdout=0.1, progress=False,
                           measurement=Measurement(scale="per_tilt", background="smooth",
                                                   tilt_map="affine"))
    out = {"machine": cpu_model(), "seconds": time.perf_counter() - t0, "r_factor": res.r_factor,
           "r_free": res.r_free, "thickness_nm": res.thickness_nm,
           "thickness_error_nm": res.thickness_error_nm,
           "command": "python benchmarks/experimental_determine.py " + " ".join(argv or sys.argv[1:])}
    report(out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
