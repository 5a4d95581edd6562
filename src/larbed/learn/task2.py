"""Task 2 (U_g determination) with per-iteration checkpoints and exact resume."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from .._checkpoint import (
    atomic_dir,
    fingerprint,
    load_npz,
    read_json,
    save_npz,
    write_json,
    write_text,
)
from .._random import check_seed
from ._common import (
    KEY_T2_DATA,
    KEY_T2_TRAIN,
    LOOP_EPOCHS,
    NetworkSettings,
    TaskPlan,
    baselines_for,
    check_common_settings,
    machine_info,
    resolve_inputs,
)
from .chunks import CHUNK_DIR_SUFFIX
from .dataset import (
    THICKNESS_JITTER_NM,
    generate_dataset,
    resolve_reference,
)
from .models import check_config
from .results import Task2Result
from .task2_loop import DEFAULT_KEYS, DEFAULT_SAMPLES, iterate
from .training import BATCH_SIZE, LEARNING_RATE, Regressor

__all__ = ["run_task2"]

logger = logging.getLogger(__name__)


_CKPT = "task2_checkpoint"
#: The initial (random) data set in the checkpoint folder.
_DATA_SET = "random_set.nc"
#: What each iteration records.
_RECORD_KEYS = ("r", "ug", "t", "scale", "train", "test", "time")


@dataclass(frozen=True)
class _Task2Plan(TaskPlan):
    """A Task 2 run: the shared settings, the loop's and the make-unique references ``ref``."""

    scale0: float
    decay: float
    loop_epochs: int
    prior: str
    ref: tuple[int, int]
    dose: float | None
    samples: int = 1


@dataclass
class _State:
    """What the loop changes: training set (float32 copies), history so far, next iteration."""

    x: np.ndarray
    y: np.ndarray
    rec: dict[str, list]
    init_train: np.ndarray
    init_test: np.ndarray
    start: int
    elapsed_before: float
    baselines: dict

    def __post_init__(self) -> None:
        self.x = np.array(self.x, dtype=np.float32)
        self.y = np.array(self.y, dtype=np.float32)


def _checkpoint_config(plan: _Task2Plan) -> dict:
    """The settings a checkpoint records; a run resumes only a checkpoint with the same ones."""
    net = plan.net
    config = dict(
        name=plan.inputs.name,
        model=net.model,
        config=net.config,
        weights=net.weights_label,
        hidden=net.hidden,
        trainable_backbone=net.trainable_backbone,
        standardize_features=net.standardize_features,
        seed=plan.seed,
        scale0=plan.scale0,
        decay=plan.decay,
        n_train=plan.n_train,
        n_test=plan.n_test,
        epochs=plan.epochs,
        loop_epochs=plan.loop_epochs,
        batch_size=plan.batch_size,
        learning_rate=plan.learning_rate,
        prior=plan.prior,
        thickness_range_nm=plan.t_range,
        thickness_jitter_nm=plan.jitter,
        reference=list(plan.ref),
        dose=plan.dose,
        samples_per_iteration=plan.samples,
        geometry=plan.geometry.to_attrs(),
        exp_sha256=fingerprint(np.ascontiguousarray(plan.i_exp)),
    )
    return json.loads(json.dumps(config, sort_keys=True, default=str))


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
    config: str = "default",
    weights="imagenet",
    hidden: Sequence[int] | None = None,
    trainable_backbone: bool = False,
    standardize_features: bool = False,
    seed: int = 0,
    iterations: int = 100,
    scale0: float = 5.0,
    decay: float = 0.99,
    samples_per_iteration: int | None = None,
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
    train ``loop_epochs`` more epochs from the current weights. That is the loop of
    ``config="thesis"`` (SPEC §6). With ``config="default"`` ``samples_per_iteration`` new samples
    (16 unless given) are drawn around the best
    candidate so far (the predictions, the earlier samples and, at iteration 0, the mean training
    U_g at its own and at 20 thicknesses over the range), with an adaptive scale (0.3 at first,
    ×1.5 after a sample that beat every candidate, ×0.9 otherwise, within [0.01, ``scale0``];
    ``decay`` is not used) and a thickness jitter shrunk in proportion below scale 0.3; the
    sample then takes the best of its thickness, 20 thicknesses over the range and 9 within ± the
    jitter (one thickness series: a profile over t, as the mean U_g at iteration 0); all of them
    replace training samples (the next ones in turn, mod ``n_train``) before the iteration's
    training, and the best of them is the iteration's sample; each
    iteration records the better of its prediction and its best sample (``r_prediction`` and
    ``r_sample`` record both). Every R is that of a simulated candidate against the experimental
    pattern; the true U_g is never used.

    Parameters
    ----------
    preset_or_inputs : str, Preset, TaskInputs or tuple
        See :func:`resolve_inputs`.
    model : {'cnn', 'ann'}
    config : {'default', 'thesis'}
        As :func:`run_task1`.
    weights, hidden, trainable_backbone, standardize_features, seed, n_train, n_test, batch_size, learning_rate
        As :func:`run_task1`.
    iterations : int
        Loop iterations (= predictions).
    scale0, decay : float
        Deviation scale of iteration i: scale0 · decay^i.
    samples_per_iteration : int, optional
        New training samples simulated per iteration: 16 with ``config="default"`` when not given;
        ``config="thesis"`` allows only 1 (SPEC §6).
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
    ep = check_common_settings(model, n_train, n_test, epochs, thickness_range_nm)
    check_seed(seed, integer=True)
    _check_loop_settings(iterations, loop_epochs, checkpoint_every, scale0, decay)
    check_config(config)
    samples = _check_samples(samples_per_iteration, config)
    inputs = resolve_inputs(preset_or_inputs, dose=dose)
    plan = _Task2Plan(
        inputs=inputs,
        net=NetworkSettings(
            model, weights, hidden, trainable_backbone, standardize_features, config
        ),
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
        t_range=tuple(float(x) for x in thickness_range_nm),
        jitter=thickness_jitter_nm,
        ref=resolve_reference(inputs.geometry, reference),
        dose=dose,
        download=download,
        samples=samples,
    )
    config = _checkpoint_config(plan)
    reg = plan.regressor()
    x_exp = reg.inputs(plan.i_exp)
    ckpt_dir = None if out_dir is None else os.path.join(os.fspath(out_dir), _CKPT)
    state = None
    if ckpt_dir is not None and resume:
        state = _resume(ckpt_dir, config, reg, f"{inputs.name} {model}")
    if state is None:
        state = _fresh_start(plan, reg, ckpt_dir, client, progress)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=iterations,
        initial=min(state.start, iterations),
        desc=f"task2 {inputs.name} {model}",
        unit="it",
        disable=not progress,
    )
    t_seg = time.perf_counter()
    for i in range(state.start, iterations):
        record = iterate(plan, reg, x_exp, state, i)
        bar.update(1)
        bar.set_postfix(R=f"{record['r']:.3f}", best=f"{min(state.rec['r']):.3f}")
        if ckpt_dir is not None and ((i + 1) % checkpoint_every == 0 or i == iterations - 1):
            _save_progress(ckpt_dir, i + 1, reg, state, config, t_start)
        if callback is not None:
            callback(i, record)
    bar.close()
    logger.info("task2 loop segment: %.1f s", time.perf_counter() - t_seg)
    elapsed = state.elapsed_before + time.perf_counter() - t_start
    hist = _history(plan, state, config, list(reg.hidden_sizes), iterations, elapsed)
    return Task2Result(hist, inputs)


def _check_samples(samples, config: str) -> int:
    """``samples_per_iteration`` checked: DEFAULT_SAMPLES (default configuration) or 1 (thesis's,
    the only value it allows) when None."""
    if samples is None:
        return DEFAULT_SAMPLES if config == "default" else 1
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"samples_per_iteration must be a positive integer, got {samples!r}")
    if config == "thesis" and samples != 1:
        raise ValueError(
            "samples_per_iteration must be 1 with config='thesis' (SPEC §6: one new sample per "
            f"iteration), got {samples}; use config='default' for more"
        )
    return int(samples)


def _check_loop_settings(iterations, loop_epochs, checkpoint_every, scale0, decay) -> None:
    """Check the loop arguments of :func:`run_task2`."""
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


def _resume(ckpt_dir: str, config: dict, reg: Regressor, label: str) -> _State | None:
    """The state of the checkpoint in ``ckpt_dir``, its weights and optimizer loaded into ``reg``;
    None when there is no checkpoint. Refuses one made with other settings."""
    state = _read_checkpoint(ckpt_dir)
    if state is None:
        return None
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
    logger.info("task2: resuming %s at iteration %d from %s", label, start, target)
    baselines = dict(meta.get("baselines", {}))
    return _State(x, y, rec, init_train, init_test, start, elapsed_before, baselines)


def _clear_checkpoint(folder: str) -> None:
    """Delete what a Task 2 run writes into ``folder``: the ``state_*`` folders, ``LATEST``, the
    initial data set with its chunk checkpoints and ``*.part`` leftovers of interrupted writes.
    Other files stay; a missing folder is created."""
    os.makedirs(folder, exist_ok=True)
    ours = ("LATEST", _DATA_SET, _DATA_SET + CHUNK_DIR_SUFFIX)
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        is_dir = os.path.isdir(path) and not os.path.islink(path)
        if name in ours or name.endswith(".part") or (name.startswith("state_") and is_dir):
            if is_dir:
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


def _fresh_start(
    plan: _Task2Plan, reg: Regressor, ckpt_dir: str | None, client, progress
) -> _State:
    """Start afresh: simulate the random initial data set (kept in ``ckpt_dir``) and train on it."""
    if ckpt_dir is not None:
        _clear_checkpoint(ckpt_dir)
    ds = generate_dataset(
        plan.geometry,
        plan.n_train + plan.n_test,
        channel="random",
        prior=plan.prior,
        thickness_range_nm=plan.t_range,
        reference=plan.ref,
        seed=np.random.SeedSequence(plan.seed, spawn_key=(KEY_T2_DATA,)),
        client=client,
        progress=progress,
        path=None if ckpt_dir is None else os.path.join(ckpt_dir, _DATA_SET),
    )
    x = reg.inputs(ds["intensity"].values)
    y = ds["targets"].values.astype(np.float32)
    baselines = baselines_for(plan, ds["intensity"].values[: plan.n_train], ds["targets"].values[: plan.n_train])
    seeds = np.random.SeedSequence(plan.seed, spawn_key=(KEY_T2_TRAIN,))
    init_train, init_test = plan.fit_from_start(reg, x, y, seeds)
    keys = _RECORD_KEYS + (DEFAULT_KEYS if plan.net.config == "default" else ())
    rec: dict[str, list] = {k: [] for k in keys}
    return _State(x, y, rec, init_train, init_test, 0, 0.0, baselines)


def _save_progress(
    ckpt_dir: str, completed: int, reg: Regressor, state: _State, config: dict, t_start: float
) -> None:
    """Checkpoint after ``completed`` iterations (``t_start``: this segment's start)."""
    hist = {k: np.asarray(v) for k, v in state.rec.items()}
    hist.update(init_train=state.init_train, init_test=state.init_test)
    meta = {
        "config": config,
        "completed": completed,
        "baselines": state.baselines,
        "elapsed_s": state.elapsed_before + time.perf_counter() - t_start,
    }
    _write_checkpoint(ckpt_dir, completed, reg, state.x, state.y, hist, meta)


def _history(
    plan: _Task2Plan, state: _State, config: dict, hidden: list, iterations: int, elapsed: float
) -> xr.Dataset:
    """The result Dataset: one entry per iteration, the initial training and the settings."""
    rec, geo, inputs = state.rec, plan.geometry, plan.inputs
    n_it = len(rec["r"])
    if n_it == 0:
        raise ValueError("iterations=0: nothing was predicted")
    hist = xr.Dataset(
        coords={
            "iteration": ("iteration", np.arange(n_it)),
            "loop_epoch": ("loop_epoch", np.arange(1, plan.loop_epochs + 1)),
            "epoch": ("epoch", np.arange(1, plan.epochs + 1)),
            "reflection": ("reflection", np.arange(geo.n_reflections)),
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
    if "r_sample" in rec:
        hist["r_prediction"] = ("iteration", np.asarray(rec["r_pred"], float), {"units": "1"})
        hist["r_sample"] = ("iteration", np.asarray(rec["r_sample"], float), {"units": "1"})
        hist["ug_sample"] = (
            ("iteration", "reflection"),
            np.asarray(rec["ug_sample"], complex),
            {"units": "1/Å^2"},
        )
        hist["thickness_sample_nm"] = (
            "iteration",
            np.asarray(rec["t_sample"], float),
            {"units": "nm"},
        )
    hist["init_train_loss"] = ("epoch", np.asarray(state.init_train, float), {"units": "MSE"})
    hist["init_test_loss"] = ("epoch", np.asarray(state.init_test, float), {"units": "MSE"})
    if inputs.ug_true is not None:
        hist["ug_true"] = ("reflection", inputs.ug_true.values.astype(complex), {"units": "1/Å^2"})
    r_all = hist.r_factor.values
    best = int(np.argmin(r_all))
    hist.attrs.update(
        {
            "title": "larbed Task 2 (U_g determination)",
            **{k: v for k, v in config.items() if k not in ("geometry", "exp_sha256")},
            "hidden": hidden,
            "iterations": int(iterations),
            "thickness_true_nm": float("nan")
            if inputs.thickness_true_nm is None
            else float(inputs.thickness_true_nm),
            "r_min": float(r_all[best]),
            # baselines trained on the initial (random) training set, see larbed.learn.baselines
            **{k: float(v) for k, v in state.baselines.items()},
            "best_iteration": best,
            "best_thickness_nm": float(hist.thickness_nm.values[best]),
            "elapsed_s": elapsed,
            **machine_info(),
            **geo.to_attrs(),
        }
    )
    return hist
