"""Speed of the learning tasks (issue 3, "Speed"): Task 2 on SrTiO3-1 per model, and the CNN's
cached-feature head training against training the same model with images through the frozen
backbone, in one run.

Usage::

    pytest benchmarks/bench_learn.py --benchmark-only        # pytest-benchmark
    python benchmarks/bench_learn.py [--skip-task2] [--json out.json]   # plain table

Target (issue 3): Task 2 on SrTiO3-1 (13 beams × 441 tilts, thesis defaults: 140 random samples,
100 iterations, 20/30 initial epochs, 5 epochs per iteration, batch 20) in at most 60 s per model
on the 2-core build machine, ``weights=None`` for the CNN (ImageNet weights cannot be downloaded
there). The thesis needed 1127 s (CNN) and 952 s (ANN) on 6 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pytest

from _machine import cpu_model

TARGET_S = 60.0
PRESET = "SrTiO3-1"


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return float("nan")


def task2(model: str, config: str = "default") -> dict:
    """One Task 2 run on SrTiO3-1 (thesis settings otherwise); its wall time and results."""
    from larbed.learn import run_task2

    load0 = _load()
    t0 = time.perf_counter()
    res = run_task2(PRESET, model=model, config=config, weights=None, seed=0, progress=False)
    wall = time.perf_counter() - t0
    return {
        "case": f"task2 {PRESET} {model} config={config}",
        "config": config,
        "model": model,
        "r_mean_baseline": res.history.attrs["r_mean_baseline"],
        "r_linear_baseline": res.history.attrs["r_linear_baseline"],
        "seconds": wall,
        "elapsed_s": res.elapsed_s,
        "r_min": res.r_min,
        "r_first": res.r_first,
        "thickness_nm": res.thickness_nm,
        "load_before": load0,
        "load_after": _load(),
    }


class HeadTraining:
    """One Task 2 loop iteration's training (5 epochs, 100 samples, batch 20) of the CNN, two ways."""

    def __init__(self):
        from larbed import presets
        from larbed.learn import Regressor, generate_dataset

        geo = presets.load(PRESET).geometry
        ds = generate_dataset(geo, 100, seed=0, progress=False)
        self.y = ds.targets.values.astype(np.float32)
        # the thesis configuration: the comparison is about the frozen backbone, not the head
        kw = dict(weights=None, seed=0, config="thesis")
        self.cached = Regressor("cnn", geo, **kw)
        self.full = Regressor("cnn", geo, cache_features=False, **kw)
        self.images = self.full.inputs(ds.intensity.values)
        self.features = self.cached.features(self.images)
        # warm-up: trace and compile both training functions before timing
        self.cached.fit(self.features, self.y, 1, np.random.default_rng(0))
        self.full.fit(self.images, self.y, 1, np.random.default_rng(0))

    def run_cached(self):
        return self.cached.fit(self.features, self.y, 5, np.random.default_rng(1))

    def run_full(self):
        return self.full.fit(self.images, self.y, 5, np.random.default_rng(1))


# ----------------------------------------------------------------------------- pytest-benchmark
@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def head(tf):
    return HeadTraining()


@pytest.mark.parametrize("config", ["default", "thesis"])
@pytest.mark.parametrize("model", ["cnn", "ann"])
def test_task2_srtio3_1(benchmark, tf, model, config):
    out = benchmark.pedantic(task2, args=(model, config), rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    assert np.isfinite(out["r_min"]) and out["r_min"] <= out["r_first"]


def test_cnn_loop_training_cached_features(benchmark, head):
    losses, _ = benchmark.pedantic(head.run_cached, rounds=3, iterations=1)
    assert np.all(np.isfinite(losses))


def test_cnn_loop_training_images_through_frozen_backbone(benchmark, head):
    losses, _ = benchmark.pedantic(head.run_full, rounds=1, iterations=1)
    assert np.all(np.isfinite(losses))


# ----------------------------------------------------------------------------- script
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--skip-task2", action="store_true", help="only the head-training comparison"
    )
    parser.add_argument("--models", nargs="+", default=["cnn", "ann"], choices=["cnn", "ann"])
    parser.add_argument("--json", help="write the rows as JSON here")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["default", "thesis"],
        choices=["default", "thesis"],
        help="Task 2 configurations; with both, the time ratio default/thesis of the same run "
        "is printed (the thesis config is the reference measured alongside)",
    )
    args = parser.parse_args(argv)
    rows = []
    head = HeadTraining()
    for name, fn, rounds in (
        ("cached features", head.run_cached, 3),
        ("images, frozen backbone", head.run_full, 1),
    ):
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        rows.append(
            {
                "case": f"CNN loop training (5 epochs × 100 samples): {name}",
                "seconds": float(np.median(times)),
            }
        )
    if not args.skip_task2:
        for model in args.models:
            for config in args.configs:
                rows.append(task2(model, config))
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, load average {_load():.2f}")
    for row in rows:
        extra = ""
        if "r_min" in row:
            ok = "meets" if row["seconds"] <= TARGET_S else "misses"
            extra = (
                f"  R_first {row['r_first']:.3f}  R_min {row['r_min']:.3f}  t {row['thickness_nm']:.1f} nm"
                f"  ({ok} the {TARGET_S:g} s target; load {row['load_before']:.1f} → {row['load_after']:.1f})"
            )
        print(f"{row['case']:<62} {row['seconds']:8.2f} s{extra}")
    ratio = rows[1]["seconds"] / rows[0]["seconds"]
    print(f"cached features are {ratio:.0f}× faster per loop iteration")
    ratios = {}
    for model in args.models:
        by = {r["config"]: r for r in rows if r.get("model") == model}
        if {"default", "thesis"} <= set(by):
            ratios[model] = by["default"]["seconds"] / by["thesis"]["seconds"]
            print(
                f"Task 2 {model.upper()}: default config takes {ratios[model]:.3f}× the time of "
                f"the thesis config measured in this run"
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "cpu": cpu_model(),
                    "cpus": os.cpu_count(),
                    "command": "python benchmarks/bench_learn.py " + " ".join(argv or sys.argv[1:]),
                    "rows": rows,
                    "task2_time_ratio_default_over_thesis": ratios,
                },
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
