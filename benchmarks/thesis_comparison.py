"""The thesis, side by side (issue 3): Task 1 and Task 2 with both networks on the presets.

Usage::

    python benchmarks/thesis_comparison.py --presets SrTiO3-1 SrTiO3-2 --models cnn ann \\
        --weights none --out comparison/           # runs, results, plots, rows.json, table
    python benchmarks/thesis_comparison.py --out comparison/ --table-only --format rst

Every finished run is appended to ``<out>/rows.json`` at once; a rerun skips the runs already
there, so the comparison can be built in pieces (``--presets all`` for the twelve). Each run's
netCDF results and PNG figures land in ``<out>/<preset>/<model>/``.

ImageNet weights: ``--weights imagenet`` needs the ResNet-50 file in the Keras cache (or pass a
file path); on a machine without internet and without that file use ``--weights none`` (random,
frozen backbone) and say so next to the numbers (the table records the weights used).

ANN size: the thesis ANN (hidden 2/3·N_I, 1/3·N_I, N_O) has ~N_I²/2 weights and its training is
memory-bound (Adam reads and writes ~16 bytes per weight per step; 2650 steps per Task 2). Above
``--ann-max-weights`` (default 1.2e8 weights: ~2 GB with Adam's state, roughly 4× the SrTiO3-1 run
time) a reduced ANN with hidden sizes ``--ann-reduced`` (default 2048, 1024, N_O) runs instead, and
the table says so. SrTiO3-6/7 (13 × 1009 → 1.5e8), ZnO-1 (95 × 197 → 3.1e8), ZnO-2 (97 × 253 → 5.4e8)
and SrTiO3-10 (69 × 441 → 8.3e8) are above it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from _machine import cpu_model

THESIS_COLUMNS = (
    "task1_threshold",
    "task1_time_s",
    "task2_r_min",
    "task2_thickness_nm",
    "task2_time_s",
)


def _ann_hidden(preset, max_weights: float, reduced: tuple[int, int]):
    from larbed.learn.models import ann_hidden_sizes, ann_weight_count

    g = preset.geometry
    n_in, n_out = g.n_beams * g.n_tilts, 2 * g.n_reflections + 1
    thesis = ann_weight_count(n_in, n_out)
    if thesis <= max_weights:
        return None, f"thesis {ann_hidden_sizes(n_in, n_out)}", thesis
    hidden = (reduced[0], reduced[1], n_out)
    note = f"reduced {hidden} (thesis {ann_hidden_sizes(n_in, n_out)}: {thesis:.2g} weights)"
    return hidden, note, ann_weight_count(n_in, n_out, hidden)


def _load_rows(path: Path) -> list[dict]:
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))["rows"]
    return []


def _save_rows(path: Path, rows: list[dict]) -> None:
    info = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "rows": rows,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def run(args) -> None:
    from larbed import presets
    from larbed.cli.learn import parse_weights
    from larbed.learn import run_task1, run_task2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.json"
    rows = _load_rows(rows_path)
    done = {(r["preset"], r["model"], r["task"], r.get("config", "thesis")) for r in rows}
    names = presets.names() if args.presets == ["all"] else args.presets
    weights = parse_weights(args.weights)
    for name in names:
        preset = presets.load(name)
        for model in args.models:
            hidden, note, n_weights = (None, "head (16T, 4T, T)", None)
            if model == "ann" and args.config == "default":
                note = "(128, 64, T) + ridge read-out"
            elif model == "ann":
                hidden, note, n_weights = _ann_hidden(
                    preset, args.ann_max_weights, tuple(args.ann_reduced)
                )
            run_dir = out / preset.name / model / args.config
            for task in args.tasks:
                key = (preset.name, model, task, args.config)
                if key in done:
                    print(f"skip {key} (already in {rows_path})", flush=True)
                    continue
                common = dict(
                    weights=weights,
                    hidden=hidden,
                    seed=args.seed,
                    progress=not args.no_progress,
                    config=args.config,
                )
                load0 = os.getloadavg()[0]
                t0 = time.perf_counter()
                if task == 1:
                    res = run_task1(preset, model, out_dir=run_dir, **common)
                    h = res.history
                    row = {
                        "threshold": res.threshold,
                        "time_s": res.elapsed_s,
                        "scales": int(h.sizes["scale"]),
                        "r_first_scale": float(h.r_factor.values[0]),
                        "r_mean_baseline_first_scale": float(h.r_mean_baseline.values[0]),
                        "r_linear_baseline_first_scale": float(h.r_linear_baseline.values[0]),
                        "threshold_mean_baseline": h.attrs["threshold_mean_baseline"],
                        "threshold_linear_baseline": h.attrs["threshold_linear_baseline"],
                        "r_factor": [float(v) for v in h.r_factor.values],
                        "r_mean_baseline": [float(v) for v in h.r_mean_baseline.values],
                        "r_linear_baseline": [float(v) for v in h.r_linear_baseline.values],
                    }
                else:
                    res = run_task2(
                        preset, model, iterations=args.iterations, out_dir=run_dir, **common
                    )
                    row = {
                        "r_min": res.r_min,
                        "r_first": res.r_first,
                        "thickness_nm": res.thickness_nm,
                        "time_s": res.elapsed_s,
                        "iterations": int(res.history.sizes["iteration"]),
                        "r_mean_baseline": res.history.attrs["r_mean_baseline"],
                        "r_linear_baseline": res.history.attrs["r_linear_baseline"],
                    }
                res.save(run_dir)
                if not args.no_plots:
                    res.plot(run_dir)
                row.update(
                    preset=preset.name,
                    model=model,
                    task=task,
                    config=args.config,
                    command=" ".join(sys.argv),
                    network=note,
                    weights=str(args.weights),
                    ann_weights=n_weights,
                    wall_s=time.perf_counter() - t0,
                    load_before=load0,
                    load_after=os.getloadavg()[0],
                    beams=preset.geometry.n_beams,
                    tilts=preset.geometry.n_tilts,
                )
                rows.append(row)
                _save_rows(rows_path, rows)
                print(
                    f"done {key}: "
                    + ", ".join(
                        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in row.items()
                        if k not in ("preset", "model", "task", "command")
                        and not isinstance(v, list)
                    ),
                    flush=True,
                )


def _fmt(v, spec):
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    return format(v, spec)


_BASELINE_KEYS = {
    1: (
        "r_mean_baseline_first_scale",
        "r_linear_baseline_first_scale",
        "threshold_mean_baseline",
        "threshold_linear_baseline",
    ),
    2: ("r_mean_baseline", "r_linear_baseline"),
}


def _fill_baselines(rows: list[dict]) -> list[dict]:
    """Rows measured before the baselines existed get them from a row of the same preset and task
    (the baselines depend only on the data sets, i.e. on preset, task and seed — not on the model
    or the config), marked ``baselines_from``."""
    out = []
    for r in rows:
        keys = _BASELINE_KEYS[r["task"]]
        if all(k in r for k in keys):
            out.append(r)
            continue
        donor = next(
            (
                d
                for d in rows
                if d["preset"] == r["preset"]
                and d["task"] == r["task"]
                and all(k in d for k in keys)
            ),
            None,
        )
        if donor is None:
            out.append(r)
            continue
        out.append({**r, **{k: donor[k] for k in keys}, "baselines_from": donor.get("config")})
    return out


def table(rows: list[dict], fmt: str = "md") -> str:
    """One line per preset, model and config: ours [baselines] / thesis for every column."""
    from larbed import presets

    rows = _fill_baselines(rows)
    by = {}
    for r in rows:
        by.setdefault((r["preset"], r["model"], r.get("config", "thesis")), {})[r["task"]] = r
    header = [
        "preset",
        "model",
        "config",
        "network",
        "T1 R(s=0.01) [mean, ridge]",
        "T1 threshold [mean, ridge] / thesis",
        "T1 time s",
        "T2 R_min [mean, ridge] / thesis",
        "T2 t nm",
        "T2 time s",
    ]
    lines = []
    order = {n: i for i, n in enumerate(presets.names())}
    for (name, model, config), tasks in sorted(
        by.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1], kv[0][2])
    ):
        th = presets.load(name).thesis[model.upper()]
        t1, t2 = tasks.get(1, {}), tasks.get(2, {})
        any_row = t1 or t2
        lines.append(
            [
                name,
                model.upper(),
                config,
                any_row["network"] + ("" if model == "ann" else f", weights {any_row['weights']}"),
                f"{_fmt(t1.get('r_first_scale'), '.2g')} "
                f"[{_fmt(t1.get('r_mean_baseline_first_scale'), '.2g')}, "
                f"{_fmt(t1.get('r_linear_baseline_first_scale'), '.2g')}]",
                f"{_fmt(t1.get('threshold'), 'g')} [{_fmt(t1.get('threshold_mean_baseline'), 'g')}, "
                f"{_fmt(t1.get('threshold_linear_baseline'), 'g')}] / {th['task1_threshold']:g}",
                f"{_fmt(t1.get('time_s'), '.0f')} / {th['task1_time_s']:.0f}",
                f"{_fmt(t2.get('r_min'), '.3f')} [{_fmt(t2.get('r_mean_baseline'), '.3f')}, "
                f"{_fmt(t2.get('r_linear_baseline'), '.3f')}] / {th['task2_r_min']:.3f}",
                f"{_fmt(t2.get('thickness_nm'), '.1f')} / {th['task2_thickness_nm']:.1f}",
                f"{_fmt(t2.get('time_s'), '.0f')} / {th['task2_time_s']:.0f}",
            ]
        )
    if fmt == "md":
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(x) for x in col) for col in zip(header, *lines, strict=True)]
    sep = "  ".join("=" * w for w in widths)
    out = [sep, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), sep]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    out.append(sep)
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Task 1 and Task 2 on the presets next to the thesis (SPEC §7)."
    )
    p.add_argument(
        "--presets", nargs="+", default=["SrTiO3-1", "SrTiO3-2"], help="preset names or 'all'"
    )
    p.add_argument("--models", nargs="+", default=["cnn", "ann"], choices=["cnn", "ann"])
    p.add_argument("--tasks", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    p.add_argument("--weights", default="imagenet", help="CNN weights: imagenet | none | PATH")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", choices=["default", "thesis"], default="default")
    p.add_argument("--iterations", type=int, default=100, help="Task 2 iterations")
    p.add_argument(
        "--ann-max-weights", type=float, default=1.2e8, help="above this, run the reduced ANN"
    )
    p.add_argument("--ann-reduced", type=int, nargs=2, default=[2048, 1024], metavar=("H1", "H2"))
    p.add_argument("--out", default="thesis_comparison", help="output folder")
    p.add_argument(
        "--table-only", action="store_true", help="only print the table of <out>/rows.json"
    )
    p.add_argument("--format", choices=["md", "rst"], default="md")
    p.add_argument(
        "--merge",
        nargs="+",
        default=[],
        metavar="JSON",
        help="with --table-only: also show the rows of these files (e.g. earlier runs)",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not args.table_only:
        run(args)
    rows_path = Path(args.out) / "rows.json"
    rows = _load_rows(rows_path)
    for extra in args.merge:
        rows = _load_rows(Path(extra)) + rows
    if not rows:
        print("no results yet", file=sys.stderr)
        return 1
    text = table(rows, args.format)
    (Path(args.out) / f"table.{args.format}").write_text(text + "\n", encoding="utf-8")
    print(f"{cpu_model()}, {os.cpu_count()} CPUs")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
