"""``larbed task1`` and ``larbed task2``: the thesis's two tasks from the command line.

Registered in :data:`larbed.cli.app.SUBCOMMANDS` as ``"larbed.cli.learn:register"``. This module
imports no TensorFlow; the task functions do, when a command runs.
"""

from __future__ import annotations

import logging
import os

__all__ = ["register", "parse_weights", "format_table"]

logger = logging.getLogger(__name__)


def parse_weights(text: str | None):
    """CLI ``--weights``: ``imagenet`` (Keras cache), ``none`` (random backbone) or a file path."""
    if text is None:
        return "imagenet"
    low = text.strip().lower()
    if low == "none":
        return None
    if low == "imagenet":
        return "imagenet"
    return text


def _hidden(text: str | None):
    if text is None:
        return None
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError as exc:
        raise ValueError(f"--hidden needs three integers like 2048,1024,41, got {text!r}") from exc
    if len(sizes) != 3:
        raise ValueError(f"--hidden needs three integers like 2048,1024,41, got {text!r}")
    return sizes


def _common(p) -> None:
    p.add_argument("preset", help="preset name (see 'larbed presets'), case-insensitive")
    p.add_argument("--model", choices=("cnn", "ann"), default="cnn", help="network (default cnn)")
    p.add_argument(
        "--config",
        choices=("default", "thesis"),
        default="default",
        help="'thesis': SPEC §5 exactly; 'default': standardised inputs/targets, closed-form "
        "linear read-out + tanh stack with linear output (docs/learning.rst)",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (netCDF results, PNG plots)"
    )
    p.add_argument(
        "--weights",
        default="imagenet",
        metavar="imagenet|none|PATH",
        help="ResNet-50 weights for the CNN: 'imagenet' (from the Keras cache), 'none' (random) or a "
        ".h5/.weights.h5 file (default imagenet)",
    )
    p.add_argument(
        "--download", action="store_true", help="let Keras download ImageNet weights if not cached"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--hidden", metavar="H1,H2,H3", help="hidden sizes (ANN) or head sizes (CNN)")
    p.add_argument(
        "--standardize-features",
        action="store_true",
        help="CNN: standardise backbone features (not in the thesis)",
    )
    p.add_argument("--n-train", type=int, default=100, help="training samples (default 100)")
    p.add_argument("--n-test", type=int, default=40, help="test samples (default 40)")
    p.add_argument("--epochs", type=int, help="training epochs (default 20 CNN / 30 ANN)")
    p.add_argument("--dose", type=float, help="electrons per tilt: Poisson noise on the pattern")
    p.add_argument("--no-plots", action="store_true", help="write no PNG figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers) -> None:
    """Add the ``task1`` and ``task2`` subcommands."""
    p1 = subparsers.add_parser(
        "task1",
        help="Task 1 (U_g deviation): how far may training data lie from the truth?",
        description="Train on U_g deviated from the truth at scales 0.01·2^k until R >= 0.5 "
        "(thesis chapter 4); write results and plots into --out.",
    )
    _common(p1)
    p1.add_argument(
        "--scales", type=float, nargs="+", metavar="S", help="deviation scales (default 0.01·2^k)"
    )
    p1.set_defaults(func=_run_task1)

    p2 = subparsers.add_parser(
        "task2",
        help="Task 2 (U_g determination): iterative training towards the pattern",
        description="Train on random U_g, then iterate: predict, deviate, simulate, replace, retrain "
        "(thesis chapter 4). Checkpoints every iteration into --out and resumes from there.",
    )
    _common(p2)
    p2.add_argument("--iterations", type=int, default=100, help="loop iterations (default 100)")
    p2.add_argument("--scale0", type=float, default=5.0, help="initial deviation scale (default 5)")
    p2.add_argument(
        "--decay", type=float, default=0.99, help="scale factor per iteration (default 0.99)"
    )
    p2.add_argument(
        "--samples",
        type=int,
        default=None,
        help="new samples per iteration (default 16 with --config default; thesis: 1)",
    )
    p2.add_argument(
        "--prior",
        choices=("uniform", "physical"),
        default="uniform",
        help="prior of the random initial data (default uniform ±0.2)",
    )
    p2.add_argument(
        "--no-resume", action="store_true", help="start afresh even if --out holds a checkpoint"
    )
    p2.set_defaults(func=_run_task2)


def _kwargs(args) -> dict:
    return {
        "config": args.config,
        "weights": parse_weights(args.weights),
        "download": bool(args.download),
        "seed": args.seed,
        "hidden": _hidden(args.hidden),
        "standardize_features": bool(args.standardize_features),
        "n_train": args.n_train,
        "n_test": args.n_test,
        "epochs": args.epochs,
        "dose": args.dose,
        "progress": not args.no_progress,
    }


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table; ``columns`` are (key, header, format spec)."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        line = []
        for key, _, spec in columns:
            val = row.get(key)
            line.append(
                "—" if val is None or (isinstance(val, float) and val != val) else format(val, spec)
            )
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _thesis(preset: str, model: str) -> dict:
    from .. import presets

    try:
        return dict(presets.load(preset).thesis[model.upper()])
    except (ValueError, KeyError):
        return {}


def _check_out(path: str) -> None:
    from .._checkpoint import check_writable

    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot create {path!r}: its parent folder does not exist")
    check_writable(path)  # one-line error before the work, not after it


def _run_task1(args) -> int:
    from ..learn.tasks import run_task1

    _check_out(args.out)
    res = run_task1(
        args.preset, model=args.model, scales=args.scales, out_dir=args.out, **_kwargs(args)
    )
    written = [res.save(args.out)]
    if not args.no_plots:
        written += res.plot(args.out)
    h = res.history
    rows = [
        {"scale": float(s), "r": float(r), "t": float(t), "umax": float(u), "time": float(e),
         "rm": float(rm), "rl": float(rl)}
        for s, r, t, u, e, rm, rl in zip(
            h.scale.values,
            h.r_factor.values,
            h.thickness_nm.values,
            h.max_abs_ug.values,
            h.elapsed_s.values,
            h.r_mean_baseline.values,
            h.r_linear_baseline.values,
            strict=True,
        )
    ]
    print(
        f"Task 1 {res.name} ({args.model.upper()}, {args.config} config, "
        f"weights={h.attrs['weights']}, seed {args.seed})"
    )
    print(
        format_table(
            rows,
            [
                ("scale", "scale", "g"),
                ("r", "R", ".4f"),
                ("rm", "R mean bl.", ".4f"),
                ("rl", "R ridge bl.", ".4f"),
                ("t", "t [nm]", ".1f"),
                ("umax", "max|U| [1/Å²]", ".3f"),
                ("time", "time [s]", ".1f"),
            ],
        )
    )
    th = _thesis(res.name, args.model)
    print(
        f"threshold: {res.threshold:g} (thesis {th.get('task1_threshold', '—')}); "
        f"time {res.elapsed_s:.1f} s (thesis {th.get('task1_time_s', '—')} s on 6 cores)"
    )
    for path in written:
        print(f"wrote {path}")
    return 0


def _run_task2(args) -> int:
    from ..learn.tasks import run_task2

    _check_out(args.out)
    res = run_task2(
        args.preset,
        model=args.model,
        iterations=args.iterations,
        scale0=args.scale0,
        decay=args.decay,
        samples_per_iteration=args.samples,
        prior=args.prior,
        out_dir=args.out,
        resume=not args.no_resume,
        **_kwargs(args),
    )
    written = res.save(args.out)
    if not args.no_plots:
        written += res.plot(args.out)
    th = _thesis(res.name, args.model)
    row = {
        **res.summary(),
        "r_mean": res.history.attrs.get("r_mean_baseline"),
        "r_lin": res.history.attrs.get("r_linear_baseline"),
        "thesis_r": th.get("task2_r_min"),
        "thesis_t": th.get("task2_thickness_nm"),
        "thesis_s": th.get("task2_time_s"),
    }
    print(
        f"Task 2 {res.name} ({args.model.upper()}, {args.config} config, weights={res.history.attrs['weights']}, seed {args.seed}, "
        f"{res.history.sizes['iteration']} iterations)"
    )
    print(
        format_table(
            [row],
            [
                ("r_first", "R first", ".3f"),
                ("r_min", "R_min", ".3f"),
                ("r_mean", "R mean bl.", ".3f"),
                ("r_lin", "R ridge bl.", ".3f"),
                ("best_iteration", "best it.", "d"),
                ("thickness_nm", "t [nm]", ".1f"),
                ("elapsed_s", "time [s]", ".1f"),
                ("thesis_r", "thesis R_min", ".3f"),
                ("thesis_t", "thesis t", ".1f"),
                ("thesis_s", "thesis s", ".0f"),
            ],
        )
    )
    for path in written:
        print(f"wrote {path}")
    return 0
