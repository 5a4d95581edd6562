"""Task 2 over several seeds: the spread of R_min, and its mean beside the thesis's.

The default Task 2 loop is a random search: a single run's R_min depends on its seed, and even on
the floating-point rounding of the machine (the same seed gives a different search once any
candidate's R differs in the last digits). This benchmark runs :func:`larbed.learn.run_task2` for
each preset and seed and reports R_min per run, the mean and the range per preset, and the
thesis's value. Finished runs are kept in the JSON file, so an interrupted series resumes.

    python benchmarks/task2_seeds.py --presets SrTiO3-1 SrTiO3-2 --seeds 0 1 2 \
        --json benchmarks/results/task2_seeds.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _machine import cpu_model  # noqa: E402


def _summary(runs: dict, thesis: dict) -> dict:
    """Per preset: the R_min of every seed, their mean, min and max, and the thesis's R_min."""
    out = {}
    for key, run in runs.items():
        preset, _ = key.split("/")
        out.setdefault(preset, []).append(run["r_min"])
    return {
        p: {
            "r_min": vals,
            "mean": float(np.mean(vals)),
            "min": float(np.min(vals)),
            "max": float(np.max(vals)),
            "thesis": thesis.get(p),
            "mean_met": bool(np.mean(vals) <= thesis[p]) if p in thesis else None,
        }
        for p, vals in out.items()
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["SrTiO3-1"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--model", choices=("ann", "cnn"), default="ann")
    parser.add_argument("--config", choices=("default", "thesis"), default="default")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--samples", type=int, default=None,
                        help="samples per iteration (default: run_task2's)")
    parser.add_argument("--prior", choices=("uniform", "physical"), default="uniform",
                        help="random channel of the initial training set (see larbed.random_ug)")
    parser.add_argument("--json", type=Path, default=None, help="results file (resumed if present)")
    args = parser.parse_args(argv)

    from larbed import presets
    from larbed.learn import run_task2

    result = {"runs": {}}
    if args.json is not None and args.json.exists():
        result = json.loads(args.json.read_text())
    runs = result.setdefault("runs", {})
    thesis = {}
    for name in args.presets:
        preset = presets.load(name)
        thesis[name] = float(preset.thesis[args.model.upper()]["task2_r_min"])
        for seed in args.seeds:
            key = f"{name}/{seed}"
            if key in runs:
                continue
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            res = run_task2(preset, args.model, config=args.config, seed=seed,
                            iterations=args.iterations, progress=False,
                            samples_per_iteration=args.samples, prior=args.prior,
                            **({"weights": None} if args.model == "cnn" else {}))
            runs[key] = {
                "r_min": float(res.r_min),
                "thickness_nm": float(res.thickness_nm),
                "thickness_true_nm": float(preset.thickness_nm),
                "time_s": time.perf_counter() - t0,
                "load_before": load0,
                "load_after": os.getloadavg()[0],
                "samples_per_iteration": int(res.history.attrs["samples_per_iteration"]),
                "prior": args.prior,
            }
            h = res.history
            if "r_prediction" in h:  # default loop: what the network's own predictions reached
                runs[key]["r_prediction_min"] = float(h.r_prediction.min())
                runs[key]["prediction_best_iterations"] = int(
                    (h.r_prediction.values <= h.r_sample.values).sum()
                )
            print(f"{key}: R_min {res.r_min:.3f}, t {res.thickness_nm:.1f} nm "
                  f"(truth {preset.thickness_nm:g}), {runs[key]['time_s']:.0f} s", flush=True)
            result.update(
                what=f"Task 2, {args.model}, config={args.config!r}, {args.iterations} iterations:"
                " R_min per preset/seed",
                command="python benchmarks/task2_seeds.py " + " ".join(argv or sys.argv[1:]),
                machine=f"{cpu_model()}, {os.cpu_count()} cores",
                date=datetime.date.today().isoformat(),
            )
            result["thesis"] = {**result.get("thesis", {}), **thesis}
            result["summary"] = _summary(runs, result["thesis"])
            if args.json is not None:
                args.json.write_text(json.dumps(result, indent=1) + "\n")
    summary = _summary(runs, {**result.get("thesis", {}), **thesis})
    print(f"{'preset':10s} {'R_min per seed':28s} {'mean':>6s} {'thesis':>6s}")
    for p, row in summary.items():
        vals = " ".join(f"{v:.3f}" for v in row["r_min"])
        th = "—" if row["thesis"] is None else f"{row['thesis']:.3f}"
        print(f"{p:10s} {vals:28s} {row['mean']:6.3f} {th:>6s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
