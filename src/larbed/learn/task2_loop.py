"""The two Task 2 loops of :func:`larbed.learn.run_task2`: one iteration each.

``config="thesis"`` is SPEC §6 (a deviation of scale 5·0.99^i of the last prediction);
``config="default"`` draws the new sample around the best candidate so far with an adaptive scale
(see :func:`run_task2`). ``plan`` and ``state`` are the run's plan and mutable state (training set
and history) from :mod:`larbed.learn.task2`; ``reg`` its :class:`~larbed.learn.Regressor`.
"""

from __future__ import annotations

import time

import numpy as np

from ..metrics import r_factor
from ..origin import make_unique_ug_vector
from ..simulation import simulate_array
from ._common import KEY_T2_ITER, predict_and_score
from .baselines import mean_baseline_targets
from .dataset import deviate_ug, split_targets
from .targets import make_targets

__all__ = ["DEFAULT_KEYS", "DEFAULT_SAMPLES", "iterate"]

#: What the default configuration records in addition: R of the network's own prediction and of
#: the new (simulated) training sample of each iteration.
DEFAULT_KEYS = ("r_pred", "r_sample", "ug_sample", "t_sample")

#: Default configuration: the deviation scale of the first iteration (relative to |U_g|) ...
DEFAULT_START_SCALE = 0.3
#: ... multiplied by this after a sample that beat the best candidate so far ...
DEFAULT_GROW = 1.5
#: ... and by this after one that did not; clipped to [DEFAULT_MIN_SCALE, scale0].
DEFAULT_SHRINK = 0.9
DEFAULT_MIN_SCALE = 0.01
#: Default configuration, iteration 0: the mean of the training U_g is also tried at this many
#: thicknesses spread over the thickness range.
DEFAULT_THICKNESS_GRID = 20
#: ... and each sample at the best of its own thickness, that grid and this many thicknesses within
#: ± the thickness jitter of its own.
DEFAULT_LOCAL_GRID = 9
#: Default configuration: new samples drawn (and put into the training set) per iteration.
DEFAULT_SAMPLES = 16


def iterate(plan, reg, x_exp: np.ndarray, state, i: int) -> dict:
    """One loop iteration (the thesis's, or the default configuration's :func:`_iterate_default`)."""
    if plan.net.config == "default":
        return _iterate_default(plan, reg, x_exp, state, i)
    return _iterate_thesis(plan, reg, x_exp, state, i)


def _best_so_far(state):
    """(R, U_g, t) of the best candidate recorded so far (None before the first iteration)."""
    rec = state.rec
    if not rec["r"]:
        return None
    k = int(np.argmin(rec["r"]))
    return rec["r"][k], np.asarray(rec["ug"][k], complex), float(rec["t"][k])


def _default_scale(plan, state) -> float:
    """The default configuration's adaptive deviation scale for the next sample: the previous one
    × DEFAULT_GROW when the previous sample beat every candidate before it, × DEFAULT_SHRINK when
    not; DEFAULT_START_SCALE at first. Computed from the history alone (exact resume)."""
    rec = state.rec
    hi = plan.scale0
    if not rec["scale"]:
        return float(min(DEFAULT_START_SCALE, hi))
    prev = rec["scale"][-1]
    improved = rec["r_sample"][-1] <= min(rec["r"])  # the last sample is the best so far
    s = prev * (DEFAULT_GROW if improved else DEFAULT_SHRINK)
    return float(np.clip(s, min(DEFAULT_MIN_SCALE, hi), hi))


def _record(state, **values) -> None:
    """Append one iteration's values to the history ``state.rec`` (one list per key)."""
    for key, val in values.items():
        state.rec[key].append(val)


def _replace_and_train(plan, reg, state, slot: int, samples,
                       rng) -> tuple[np.ndarray, np.ndarray]:
    """Put the new samples, (U_g, t [nm], pattern) each, in place of training samples ``slot``,
    ``slot`` + 1, … (mod n_train) and train ``loop_epochs`` epochs from the current weights:
    (train, test) losses."""
    n, x, y = plan.n_train, state.x, state.y
    x_new = reg.inputs(np.stack([smp[2] for smp in samples]))  # one batch (CNN: one backbone call)
    for j, (ug_new, t_new, _) in enumerate(samples):
        x[(slot + j) % n] = x_new[j]
        y[(slot + j) % n] = make_targets(ug_new, t_new)
    return reg.fit(
        x[:n], y[:n], plan.loop_epochs, rng, x_test=x[n:], y_test=y[n:], test_every_epoch=False
    )


def _profile_thickness(plan, ug, t0: float, jitter: float) -> tuple[float, float, np.ndarray]:
    """(R, t [nm], pattern) of U_g at the best of the thicknesses t0, a grid of
    DEFAULT_THICKNESS_GRID over the range and DEFAULT_LOCAL_GRID within ± ``jitter`` of t0: one
    thickness series (one decomposition per tilt for all of them)."""
    lo, hi = plan.t_range
    local = t0 + np.linspace(-1.0, 1.0, DEFAULT_LOCAL_GRID) * max(jitter, 0.1)
    t_all = np.clip(np.concatenate([[t0], np.linspace(lo, hi, DEFAULT_THICKNESS_GRID), local]),
                    lo, hi)
    sims = simulate_array(plan.geometry, ug, t_all)
    r_all = [r_factor(plan.i_exp, sim) for sim in sims]
    k = int(np.argmin(r_all))
    return float(r_all[k]), float(t_all[k]), sims[k]


def _draw_sample(plan, ug_c, t_c: float, s: float, rng) -> tuple:
    """(R, U_g, t [nm], pattern) of one new sample around (``ug_c``, ``t_c``): U_g deviated with
    scale ``s``, the thickness jittered (the jitter shrinks with the scale), made unique, then
    at its best thickness (:func:`_profile_thickness`)."""
    ug = deviate_ug(ug_c, s, rng)
    lo, hi = plan.t_range
    jit = plan.jitter * min(1.0, s / DEFAULT_START_SCALE)
    t = float(np.clip(t_c + rng.uniform(-jit, jit), lo, hi))
    ug = make_unique_ug_vector(ug, plan.geometry, reference=plan.ref)
    r, t, pattern = _profile_thickness(plan, ug, t, jit)
    return r, ug, t, pattern


def _iterate_default(
    plan, reg, x_exp: np.ndarray, state, i: int
) -> dict:
    """Default-configuration iteration ``i``: predict (U, t) and simulate it; draw the new sample
    around the best candidate so far (prediction, earlier samples, at i = 0 also the mean of the
    training targets) with the adaptive scale of :func:`_default_scale`; simulate it; replace the
    training sample i (mod n_train); train ``loop_epochs`` epochs. The
    iteration's candidate is the better of the prediction and the sample (both R from their own
    simulation against the experimental pattern only)."""
    t0 = time.perf_counter()
    geo, n = plan.geometry, plan.n_train
    ug_p, t_p, r_p = predict_and_score(reg, x_exp, geo, plan.i_exp, plan.t_range)
    new = [(r_p, ug_p, t_p)]  # this iteration's candidates
    if i == 0:  # the training set is still the initial random one
        ug_m, t_m = split_targets(mean_baseline_targets(state.y[:n]), plan.t_range)
        ug_m = np.asarray(ug_m, complex)
        r_m, t_m, _ = _profile_thickness(plan, ug_m, float(t_m), plan.jitter)
        new.append((r_m, ug_m, t_m))
    best = _best_so_far(state)
    _, ug_c, t_c = min(new + ([best] if best is not None else []), key=lambda c: c[0])
    rng = np.random.default_rng(np.random.SeedSequence(plan.seed, spawn_key=(KEY_T2_ITER, i)))
    s = _default_scale(plan, state)
    draws = [_draw_sample(plan, ug_c, t_c, s, rng) for _ in range(plan.samples)]
    train, test = _replace_and_train(
        plan, reg, state, i * plan.samples, [d[1:] for d in draws], rng
    )
    r_s, ug_new, t_new, _ = min(draws, key=lambda d: d[0])
    # the iteration's candidate: the best of the prediction, the sample and (i = 0) the mean
    r, ug, t = min(new + [(r_s, np.asarray(ug_new, complex), t_new)], key=lambda c: c[0])
    _record(state, r=r, ug=ug, t=t, scale=s, train=train, test=test[-1],
            time=time.perf_counter() - t0, r_pred=r_p, r_sample=r_s,
            ug_sample=np.asarray(ug_new, complex), t_sample=t_new)
    return {"r": r, "thickness_nm": t, "scale": s, "ug": ug, "r_prediction": r_p}


def _iterate_thesis(
    plan, reg, x_exp: np.ndarray, state, i: int
) -> dict:
    """Iteration ``i``: predict (U, t) and its R; replace training sample i (mod n_train) by a
    deviation of the prediction; train ``loop_epochs`` epochs. Appends to ``state.rec`` and
    returns the callback's record."""
    t0 = time.perf_counter()
    geo = plan.geometry
    ug_p, t_p, r = predict_and_score(reg, x_exp, geo, plan.i_exp, plan.t_range)
    rng = np.random.default_rng(np.random.SeedSequence(plan.seed, spawn_key=(KEY_T2_ITER, i)))
    s = plan.scale0 * plan.decay**i
    ug_new = deviate_ug(ug_p, s, rng)
    lo, hi = plan.t_range
    t_new = float(np.clip(t_p + rng.uniform(-plan.jitter, plan.jitter), lo, hi))
    ug_new = make_unique_ug_vector(ug_new, geo, reference=plan.ref)
    i_new = simulate_array(geo, ug_new, t_new)
    train, test = _replace_and_train(plan, reg, state, i, [(ug_new, t_new, i_new)], rng)
    _record(state, r=r, ug=ug_p, t=t_p, scale=s, train=train, test=test[-1],
            time=time.perf_counter() - t0)
    return {"r": r, "thickness_nm": t_p, "scale": s, "ug": ug_p}
