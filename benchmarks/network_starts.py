"""Network starts for ``determine``: do they solve the ZnO cases the search alone does not?

Usage::

    python benchmarks/network_starts.py [--cases zno19 zno37 ZnO-2 ZnO-1] [--starts ...]
        [--json benchmarks/results/network_starts.json] [--task2-iterations 100]

For each case (noise-free pseudo-experimental pattern of the built-in ZnO, Lobato U_g, B = 0) and
each start, :func:`larbed.determine` runs with that start only (``kinematic=False``,
``search=False``: the start and its two ±30 % variants are refined, then the final fit), so the
row shows what the start alone is worth. Starts:

``task2``
    :func:`larbed.learn.task2_start` — Task 2 (random channel, ANN, ``config="default"``,
    ``weights`` n/a) on the pattern; needs nothing but the pattern and the geometry.
``dev<s>``
    a :class:`larbed.learn.Regressor` (ANN, default config) trained on the deviation channel
    (Task 1's data: U = U_true + s·|U_true|·ε, t = t_true ± 5 nm; 100 samples) and its prediction
    for the pattern (:func:`larbed.learn.model_start`). The channel is centred on the truth, so it
    is a measure of what a network trained near the answer gives, not a determination.
``mean<s>``
    the control for ``dev<s>``: the mean of the same training targets (ignores the pattern).

The search-alone rows (kinematic starts and a 60 s search) are those of
``benchmarks/determine_geometries.py`` and ``benchmarks/determine_targets.py`` (docs/refinement.rst).
Each finished row is written to the JSON at once (a rerun skips the rows it holds), with the
distance of the start from the truth (RMS of |ΔU|/|U| over the strong U_g, after the best origin
and Friedel alignment of ``DeterminationResult.compare``), R of the start and of the result, |Δt|,
the largest relative error of the strong U_g and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import larbed

sys.path.insert(0, str(Path(__file__).parent))
from _machine import cpu_model  # noqa: E402

#: name → (crystal, zone axis, beams, tilts, range [mrad], kV, t [nm]) or a preset name
CASES = {
    "zno19": ("ZnO", (0, 0, 1), 19, 197, 30.0, 100.0, 50.0),
    "zno37": ("ZnO", (0, 0, 1), 37, 197, 30.0, 100.0, 50.0),
    "ZnO-2": "ZnO-2",
    "ZnO-1": "ZnO-1",
}
STRONG = 0.01  # |U| [1/Å²] of the strong U_g


def _case(name):
    spec = CASES[name]
    if isinstance(spec, str):
        preset = larbed.presets.load(spec)
        return preset.geometry, preset.ug(), float(preset.thickness_nm)
    xtal, za, nb, nt, tr, kv, t = spec
    crystal = larbed.Crystal.builtin(xtal)
    geo = larbed.Geometry(crystal, kv, za, nb, nt, tr)
    return geo, larbed.compute_ug(crystal, geo), t


def _deviation_start(geo, truth, t, scale, seed, mean_only):
    """(start callable, its info) from a deviation data set of scale ``scale`` around the truth."""
    from larbed.learn import Regressor, generate_dataset, model_start
    from larbed.learn.dataset import split_targets

    ds = generate_dataset(geo, 140, channel="deviation", ug0=truth, thickness0_nm=t, scale=scale,
                          seed=seed, progress=False)
    x_all, y_all = ds["intensity"].values, ds["targets"].values.astype(np.float32)
    if mean_only:
        ug, tt = split_targets(y_all[:100].mean(axis=0), (5.0, 100.0))
        return (lambda pattern, geometry, *, seed=0: (np.asarray(ug, complex), float(tt),
                                                      {"source": "mean"})), {}
    reg = Regressor("ann", geo, config="default", seed=seed)
    x = reg.inputs(x_all)
    reg.prepare(x[:100], y_all[:100])
    rng = np.random.default_rng(seed)
    train, test = reg.fit(x[:100], y_all[:100], 30, rng, x_test=x[100:], y_test=y_all[100:])
    return model_start(reg, (5.0, 100.0)), {"train_loss": float(train[-1]), "test_loss": float(test[-1])}


def _row(case, start, geo, truth, t, pattern, args):
    t0 = time.perf_counter()
    info: dict = {}
    if start == "task2":
        from larbed.learn import task2_start

        fn = task2_start("ann", iterations=args.task2_iterations)
    else:
        kind, scale = ("mean", float(start[4:])) if start.startswith("mean") else ("dev", float(start[3:]))
        fn, info = _deviation_start(geo, truth, t, scale, args.seed, kind == "mean")
    ug0, t_start, extra = fn(pattern, geo, seed=args.seed)
    t_network = time.perf_counter() - t0
    r_start = larbed.r_factor(pattern["intensity"].values,
                              larbed.simulate(geo, ug0, t_start)["intensity"].values)
    res = larbed.determine(pattern, geo, start=lambda p, g, *, seed=0: (ug0, t_start),
                           kinematic=False, search=False, progress=False, seed=args.seed)
    elapsed = time.perf_counter() - t0
    strong = np.abs(truth.values) > STRONG
    cmp = res.compare(truth, t)
    rel = cmp.relative.values[strong]
    dist = _start_distance(ug0, truth, geo, strong)
    return {"case": case, "start": start, "beams": geo.n_beams, "tilts": geo.n_tilts,
            "t_true_nm": t, "t_start_nm": t_start, "start_rms_rel": dist, "r_start": r_start,
            "r": float(res.r_factor), "dt_nm": abs(float(res.thickness_nm) - t),
            "strong_max_rel": float(np.max(rel)), "network_s": t_network, "total_s": elapsed,
            "source": extra.get("source"), "task2_r_min": extra.get("task2_r_min"), **info}


def _start_distance(ug0, truth, geo, strong):
    """RMS of |ΔU|/|U| over the strong U_g, after the best origin shift / Friedel choice."""
    from larbed.origin import align_origin

    aligned, _ = align_origin(geo, truth.values, np.asarray(ug0, complex))
    d = np.abs(np.asarray(ug0, complex) - aligned)[strong] / np.abs(aligned)[strong]
    return float(np.sqrt(np.mean(d**2)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--starts", nargs="+", default=["dev0.32", "mean0.32", "dev0.64", "mean0.64",
                                                    "task2"])
    ap.add_argument("--task2-iterations", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/network_starts.json"))
    args = ap.parse_args(argv)
    out = json.loads(args.json.read_text()) if args.json.exists() else {"rows": []}
    out.update(machine=cpu_model(), cores=os.cpu_count(),
               command="python benchmarks/network_starts.py " + " ".join(argv or sys.argv[1:]))
    done = {(r["case"], r["start"]) for r in out["rows"]}
    for case in args.cases:
        geo, truth, t = _case(case)
        pattern = larbed.simulate(geo, truth, t)
        for start in args.starts:
            if (case, start) in done:
                continue
            row = _row(case, start, geo, truth, t, pattern, args)
            row["load_average"] = os.getloadavg()
            out["rows"].append(row)
            args.json.write_text(json.dumps(out, indent=1))
            print(f"{case:6s} {start:9s} start: d={row['start_rms_rel']:.3f} R={row['r_start']:.3f} "
                  f"t={row['t_start_nm']:.1f} → R={row['r']:.2e} |Δt|={row['dt_nm']:.2g} "
                  f"max rel={row['strong_max_rel']:.2g} ({row['total_s']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
