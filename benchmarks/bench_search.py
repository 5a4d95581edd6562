"""The global search of ``determine``: scipy's differential evolution against larbed's own loop.

Usage::

    python benchmarks/bench_search.py [--seeds 0 1 2] [--budget 60] [--cases small SrTiO3-2 SrTiO3-8]
        [--json results.json]

Both engines run DE/rand/1/bin (mutation dithered in [0.5, 1), crossover 0.7, deferred updating)
from the same initial population (seeded), on the same objective (thickness-optimised R on a tilt
subset), with the same probes (every 5 generations the 3 best new members are refined; a probe
that reaches R ≤ 1e-3 stops the search) and the same time budget. The engines alternate per seed,
so drifts of a shared machine hit both alike. Reported per case and engine: how many seeds reached
the solution, the median time and objective evaluations to get there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import larbed
from larbed.determination.search import ENGINES, global_search
from larbed.determination.starts import START_ITERATIONS, refine_start
from larbed.symmetry import groups_from_operations, pattern_operations

sys.path.insert(0, str(Path(__file__).parent))
from _machine import cpu_model  # noqa: E402

#: A probe reached the solution (noise-free data).
SOLVED_R = 1e-3


def _case(name: str):
    if name == "small":
        crystal = larbed.Crystal.builtin("SrTiO3")
        geo = larbed.Geometry(crystal, 120, (0, 0, 1), 9, 49, 70)
        return geo, larbed.simulate(geo, larbed.compute_ug(crystal, geo), 20.0).intensity.values
    preset = larbed.presets.load(name)
    return preset.geometry, preset.simulate().intensity.values


def run_one(geo, inten, engine: str, seed: int, budget: float) -> dict:
    groups = groups_from_operations(geo, pattern_operations(inten, geo))
    t0 = time.perf_counter()
    solved_at = []

    def probe(values) -> bool:
        out = refine_start(inten, geo, values, groups, (5.0, 100.0), START_ITERATIONS, None)
        if out["r_factor"] <= SOLVED_R and not solved_at:
            solved_at.append(time.perf_counter() - t0)
        return out["r_factor"] <= SOLVED_R

    res = global_search(inten, geo, groups, seed=seed, time_budget_s=budget, probe=probe,
                        engine=engine)
    return {"engine": engine, "seed": seed, "solved": bool(solved_at),
            "time_s": solved_at[0] if solved_at else time.perf_counter() - t0,
            "evaluations": int(res["evaluations"]), "generations": int(res["generations"]),
            "best_search_r": float(res["energies"][0]), "stopped": res["stopped"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["small", "SrTiO3-2", "SrTiO3-8"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = []
    for name in args.cases:
        geo, inten = _case(name)
        for seed in args.seeds:
            order = ENGINES if seed % 2 == 0 else ENGINES[::-1]
            for engine in order:
                row = {"case": name, **run_one(geo, inten, engine, seed, args.budget)}
                rows.append(row)
                print(f"  {name} seed {seed} {engine}: solved={row['solved']} "
                      f"t={row['time_s']:.1f} s evals={row['evaluations']}", flush=True)
    print(f"\nglobal search engines — {cpu_model()}, budget {args.budget:g} s, seeds {args.seeds}\n")
    print("| case | engine | solved | median time to solution [s] | median evaluations |")
    print("|---|---|---:|---:|---:|")
    for name in args.cases:
        for engine in ENGINES:
            sel = [r for r in rows if r["case"] == name and r["engine"] == engine]
            ok = [r for r in sel if r["solved"]]
            t = f"{np.median([r['time_s'] for r in ok]):.1f}" if ok else "–"
            e = f"{np.median([r['evaluations'] for r in ok]):.0f}" if ok else "–"
            print(f"| {name} | {engine} | {len(ok)}/{len(sel)} | {t} | {e} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "budget_s": args.budget,
                                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
