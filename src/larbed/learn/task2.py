"""Task 2 (U_g determination) with per-iteration checkpoints and exact resume."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence

import numpy as np
import xarray as xr

from .._checkpoint import atomic_dir, load_npz, read_json, save_npz, write_json, write_text
from ..origin import choose_reference_reflections, make_unique_ug_vector
from ..simulation import simulate
from ..structure_factors import compute_ug
from ._common import (
    _KEY_T2_DATA,
    _KEY_T2_ITER,
    _KEY_T2_TRAIN,
    LOOP_EPOCHS,
    _check_common,
    _machine,
    _predict,
    _weights_label,
    resolve_inputs,
)
from .dataset import THICKNESS_JITTER_NM, deviate_ug, generate_dataset, make_targets
from .results import Task2Result
from .training import BATCH_SIZE, LEARNING_RATE, Regressor

__all__ = ["run_task2"]

logger = logging.getLogger(__name__)


_CKPT = "task2_checkpoint"


def _config_for_checkpoint(**kw) -> dict:
    return json.loads(json.dumps(kw, sort_keys=True, default=str))


def _write_checkpoint(
    folder: str, iteration: int, reg: Regressor, x, y, hist: dict, meta: dict
) -> None:
    name = f"state_{iteration:05d}"
    with atomic_dir(os.path.join(folder, name)) as tmp:
        reg.save_state(os.path.join(tmp, "model.npz"))
        save_npz(os.path.join(tmp, "train.npz"), x=x, y=y)
        save_npz(os.path.join(tmp, "history.npz"), **hist)
        write_json(os.path.join(tmp, "meta.json"), meta)
    write_text(os.path.join(folder, "LATEST"), name)
    for old in os.listdir(folder):
        if old.startswith("state_") and old != name:
            shutil.rmtree(os.path.join(folder, old), ignore_errors=True)


def _read_checkpoint(folder: str):
    latest = os.path.join(folder, "LATEST")
    if not os.path.exists(latest):
        return None
    with open(latest, encoding="utf-8") as fh:
        target = os.path.join(folder, fh.read().strip())
    meta = read_json(os.path.join(target, "meta.json"))
    if meta is None:
        raise ValueError(f"task 2 checkpoint {target!r} is unreadable; delete it or start afresh")
    train = load_npz(os.path.join(target, "train.npz"))
    x, y = train["x"], train["y"]
    hist = load_npz(os.path.join(target, "history.npz"))
    return target, meta, x, y, hist


def run_task2(
    preset_or_inputs,
    model: str = "cnn",
    *,
    weights="imagenet",
    hidden: Sequence[int] | None = None,
    trainable_backbone: bool = False,
    standardize_features: bool = False,
    seed: int = 0,
    iterations: int = 100,
    scale0: float = 5.0,
    decay: float = 0.99,
    n_train: int = 100,
    n_test: int = 40,
    epochs: int | None = None,
    loop_epochs: int = LOOP_EPOCHS,
    batch_size: int = BATCH_SIZE,
    learning_rate: float = LEARNING_RATE,
    prior: str = "uniform",
    thickness_range_nm: Sequence[float] = (5.0, 100.0),
    thickness_jitter_nm: float = THICKNESS_JITTER_NM,
    reference=None,
    dose: float | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = True,
    checkpoint_every: int = 1,
    callback: Callable[[int, dict], None] | None = None,
    progress: bool = True,
    client=None,
    download: bool = False,
) -> Task2Result:
    """Task 2, U_g determination: iterative training towards the experimental pattern.

    Train on ``n_train`` random samples (RandomUg, made unique; ``n_test`` more for the test loss),
    then ``iterations`` times: predict (U, t) for the experimental pattern and record its R; add a
    deviation of scale s_i = ``scale0``·``decay``^i to U (U + s|U|(ε_r + iε_i)) and
    ±``thickness_jitter_nm`` to t; make unique; simulate; replace training sample i (mod n_train);
    train ``loop_epochs`` more epochs from the current weights.

    Parameters
    ----------
    preset_or_inputs : str, Preset, TaskInputs or tuple
        See :func:`resolve_inputs`.
    model : {'cnn', 'ann'}
    weights, hidden, trainable_backbone, standardize_features, seed, n_train, n_test, batch_size, learning_rate
        As :func:`run_task1`.
    iterations : int
        Loop iterations (= predictions).
    scale0, decay : float
        Deviation scale of iteration i: scale0 · decay^i.
    epochs : int, optional
        Initial training epochs (default 20 CNN / 30 ANN).
    loop_epochs : int
        Epochs per iteration (thesis 5).
    prior : {'uniform', 'physical'}
        Prior of the random initial data set (thesis: uniform ±0.2).
    thickness_range_nm, thickness_jitter_nm
        Thickness range (random draw and clipping) and jitter [nm].
    reference : optional
        make-unique references (default: by the rule, from the geometry crystal's ComputeUg).
    dose : float, optional
        Poisson noise of the pseudo-experimental pattern (presets only).
    out_dir : path, optional
        Checkpoint folder: the initial data set and, every ``checkpoint_every`` iterations, the
        weights, optimizer state, training set and history (``task2_checkpoint/``).
    resume : bool
        Continue from a checkpoint in ``out_dir`` made with the same settings (``iterations`` may
        differ, so a run can be extended). Gives the same result as an uninterrupted run.
    checkpoint_every : int
        Checkpoint interval [iterations].
    callback : callable, optional
        ``callback(iteration, record)`` after each iteration (and its checkpoint); an exception
        raised there stops the run (the checkpoint survives).
    progress : bool
        Progress bars.
    client : dask.distributed.Client, optional
        Simulate the initial data set on this cluster.
    download : bool
        Allow Keras to download ImageNet weights.

    Returns
    -------
    Task2Result

    Examples
    --------
    ::

        res = run_task2("SrTiO3-1", model="cnn", weights=None, seed=0)  # ~30 s on 2 cores
        res.r_min, res.thickness_nm, res.elapsed_s, res.best_ug
    """
    t_start = time.perf_counter()
    ep = _check_common(model, n_train, n_test, epochs, thickness_range_nm)
    for name, val in (
        ("iterations", iterations),
        ("loop_epochs", loop_epochs),
        ("checkpoint_every", checkpoint_every),
    ):
        if (
            isinstance(val, bool)
            or not isinstance(val, (int, np.integer))
            or val < (0 if name == "iterations" else 1)
        ):
            raise ValueError(f"{name} must be a positive integer, got {val!r}")
    if not (math.isfinite(scale0) and scale0 >= 0 and math.isfinite(decay) and decay > 0):
        raise ValueError(f"scale0 must be >= 0 and decay > 0, got {scale0}, {decay}")
    inputs = resolve_inputs(preset_or_inputs, dose=dose)
    geo = inputs.geometry
    i_exp = inputs.intensity()
    t_range = tuple(float(x) for x in thickness_range_nm)
    if reference is None:
        ref = choose_reference_reflections(compute_ug(geo.crystal, geo))
    else:
        ref = make_unique_ug_vector(
            np.ones(geo.n_reflections, complex), geo, reference=reference, return_shift=True
        )[2]
    config = _config_for_checkpoint(
        name=inputs.name,
        model=model,
        weights=_weights_label(model, weights),
        hidden=hidden,
        trainable_backbone=trainable_backbone,
        standardize_features=standardize_features,
        seed=seed,
        scale0=scale0,
        decay=decay,
        n_train=n_train,
        n_test=n_test,
        epochs=ep,
        loop_epochs=loop_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        prior=prior,
        thickness_range_nm=t_range,
        thickness_jitter_nm=thickness_jitter_nm,
        reference=list(ref),
        dose=dose,
        geometry=geo.to_attrs(),
        exp_sum=float(np.sum(i_exp)),
        exp_hash=float(np.sum(i_exp * np.arange(1, i_exp.size + 1).reshape(i_exp.shape))),
    )
    reg = Regressor(
        model,
        geo,
        hidden=hidden,
        weights=weights,
        trainable_backbone=trainable_backbone,
        standardize_features=standardize_features,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
        download=download,
    )
    x_exp = reg.inputs(i_exp)
    ckpt_dir = None if out_dir is None else os.path.join(os.fspath(out_dir), _CKPT)
    state = _read_checkpoint(ckpt_dir) if (ckpt_dir is not None and resume) else None
    m = geo.n_reflections
    if state is not None:
        target, meta, x, y, saved = state
        if meta["config"] != config:
            diff = sorted(k for k in config if meta["config"].get(k) != config[k])
            raise ValueError(
                f"checkpoint in {ckpt_dir!r} was made with other settings ({', '.join(diff)}); "
                "use another out_dir, resume=False, or the same settings"
            )
        reg.load_state(os.path.join(target, "model.npz"))
        start = int(meta["completed"])
        elapsed_before = float(meta["elapsed_s"])
        init_train, init_test = saved.pop("init_train"), saved.pop("init_test")
        rec = {k: list(v) for k, v in saved.items()}
        logger.info(
            "task2: resuming %s %s at iteration %d from %s", inputs.name, model, start, target
        )
    else:
        if ckpt_dir is not None:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            os.makedirs(ckpt_dir)
        ds = generate_dataset(
            geo,
            n_train + n_test,
            channel="random",
            prior=prior,
            thickness_range_nm=t_range,
            reference=ref,
            seed=np.random.SeedSequence(seed, spawn_key=(_KEY_T2_DATA,)),
            client=client,
            progress=progress,
            path=None if ckpt_dir is None else os.path.join(ckpt_dir, "random_set.nc"),
        )
        x = reg.inputs(ds["intensity"].values)
        y = ds["targets"].values.astype(np.float32)
        reg.standardize(x[:n_train])
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_KEY_T2_TRAIN,)))
        init_train, init_test = reg.fit(
            x[:n_train], y[:n_train], ep, rng, x_test=x[n_train:], y_test=y[n_train:]
        )
        start, elapsed_before = 0, 0.0
        rec = {k: [] for k in ("r", "ug", "t", "scale", "train", "test", "time")}
    x = np.array(x, dtype=np.float32)
    y = np.array(y, dtype=np.float32)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=iterations,
        initial=min(start, iterations),
        desc=f"task2 {inputs.name} {model}",
        unit="it",
        disable=not progress,
    )
    t_seg = time.perf_counter()
    for i in range(start, iterations):
        t0 = time.perf_counter()
        ug_p, t_p, r = _predict(reg, x_exp, geo, i_exp, t_range)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_KEY_T2_ITER, i)))
        s = scale0 * decay**i
        ug_new = deviate_ug(ug_p, s, rng)
        t_new = float(
            np.clip(t_p + rng.uniform(-thickness_jitter_nm, thickness_jitter_nm), *t_range)
        )
        ug_new = make_unique_ug_vector(ug_new, geo, reference=ref)
        i_new = simulate(geo, ug_new, t_new)["intensity"].values
        j = i % n_train
        x[j] = reg.inputs(i_new)[0]
        y[j] = make_targets(ug_new, t_new)
        train, test = reg.fit(
            x[:n_train],
            y[:n_train],
            loop_epochs,
            rng,
            x_test=x[n_train:],
            y_test=y[n_train:],
            test_every_epoch=False,
        )
        for key, val in (
            ("r", r),
            ("ug", ug_p),
            ("t", t_p),
            ("scale", s),
            ("train", train),
            ("test", test[-1]),
            ("time", time.perf_counter() - t0),
        ):
            rec[key].append(val)
        bar.update(1)
        bar.set_postfix(R=f"{r:.3f}", best=f"{min(rec['r']):.3f}")
        last = i == iterations - 1
        if ckpt_dir is not None and ((i + 1) % checkpoint_every == 0 or last):
            hist = {k: np.asarray(v) for k, v in rec.items()}
            hist.update(init_train=init_train, init_test=init_test)
            meta = {
                "config": config,
                "completed": i + 1,
                "elapsed_s": elapsed_before + time.perf_counter() - t_start,
            }
            _write_checkpoint(ckpt_dir, i + 1, reg, x, y, hist, meta)
        if callback is not None:
            callback(i, {"r": r, "thickness_nm": t_p, "scale": s, "ug": ug_p})
    bar.close()
    logger.info("task2 loop segment: %.1f s", time.perf_counter() - t_seg)
    elapsed = elapsed_before + time.perf_counter() - t_start

    n_it = len(rec["r"])
    if n_it == 0:
        raise ValueError("iterations=0: nothing was predicted")
    hist = xr.Dataset(
        coords={
            "iteration": ("iteration", np.arange(n_it)),
            "loop_epoch": ("loop_epoch", np.arange(1, loop_epochs + 1)),
            "epoch": ("epoch", np.arange(1, ep + 1)),
            "reflection": ("reflection", np.arange(m)),
            "reflection_label": ("reflection", np.array(geo.reflection_labels())),
        }
    )
    hist["r_factor"] = ("iteration", np.asarray(rec["r"], float), {"units": "1"})
    hist["ug_pred"] = (
        ("iteration", "reflection"),
        np.asarray(rec["ug"], complex),
        {"units": "1/Å^2"},
    )
    hist["thickness_nm"] = ("iteration", np.asarray(rec["t"], float), {"units": "nm"})
    hist["scale"] = ("iteration", np.asarray(rec["scale"], float), {"units": "1"})
    hist["train_loss"] = (
        ("iteration", "loop_epoch"),
        np.asarray(rec["train"], float),
        {"units": "MSE"},
    )
    hist["test_loss"] = ("iteration", np.asarray(rec["test"], float), {"units": "MSE"})
    hist["iteration_s"] = ("iteration", np.asarray(rec["time"], float), {"units": "s"})
    hist["init_train_loss"] = ("epoch", np.asarray(init_train, float), {"units": "MSE"})
    hist["init_test_loss"] = ("epoch", np.asarray(init_test, float), {"units": "MSE"})
    if inputs.ug_true is not None:
        hist["ug_true"] = ("reflection", inputs.ug_true.values.astype(complex), {"units": "1/Å^2"})
    r_all = hist.r_factor.values
    best = int(np.argmin(r_all))
    hist.attrs.update(
        {
            "title": "larbed Task 2 (U_g determination)",
            **{k: v for k, v in config.items() if k not in ("geometry", "exp_sum", "exp_hash")},
            "hidden": list(reg.hidden_sizes),
            "iterations": int(iterations),
            "thickness_true_nm": float("nan")
            if inputs.thickness_true_nm is None
            else float(inputs.thickness_true_nm),
            "r_min": float(r_all[best]),
            "best_iteration": best,
            "best_thickness_nm": float(hist.thickness_nm.values[best]),
            "elapsed_s": elapsed,
            **_machine(),
            **geo.to_attrs(),
        }
    )
    return Task2Result(hist, inputs)
