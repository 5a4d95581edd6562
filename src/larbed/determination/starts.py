"""Starts of :func:`larbed.determine`: refined candidates, kinematic starts, network and user starts.

A start is refined by a thickness scan plus constrained least squares (:func:`refine_start`);
:class:`StartRun` keeps the refined starts of one run and their checkpoints.

Explicit starts come from the user: a U_g vector, or a callable
``start(pattern, geometry, *, seed) -> (ug, thickness_nm or None)`` (a third element, a dict of
information, is recorded when given). The names ``'task2'`` and ``'model'`` stand for the network
starts of :mod:`larbed.learn` and are resolved by :func:`resolve_start` — the one place where the
physics core reaches into ``larbed.learn``, lazily, so that TensorFlow is imported only when a
network start is asked for.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np

from .._checkpoint import read_json, write_json
from ..geometry import Geometry
from ..refinement import refine, thickness_scan
from ..simulation import simulate
from ..structure_factors import input_ug
from ..symmetry import SymmetryGroup
from ..threads import uses_kernels
from ..trust import R_MAX_NOISE_FREE
from .search import SEARCH_STEP_NM, Objective

__all__ = ["CONTINUATION_ITERATIONS", "CONTINUATION_STEPS", "SCAN_STEP_NM", "STAGED_MIN_GROUPS",
           "STAGES", "START_ITERATIONS", "SUCCESS_R_NOISE_FACTOR", "SUCCESS_R_NOISE_FREE", "WEAK_FRACTION",
           "StartRun", "kinematic_starts", "refine_continuation", "refine_from", "refine_staged",
           "refine_start", "resolve_start", "start_values"]

logger = logging.getLogger(__name__)

#: Thickness grid step of the start scans [nm].
SCAN_STEP_NM = 0.5
#: From this many symmetry groups on, each start is refined in stages: the reflections up to these
#: quantiles of |g| (the others held at the start), then all.
STAGED_MIN_GROUPS = 30
STAGES = (0.3, 0.6, 1.0)
#: Data-continuation steps and iterations per step of :func:`refine_continuation`.
CONTINUATION_STEPS = 8
CONTINUATION_ITERATIONS = 12
#: Refinement iterations of each multi-start candidate (per stage).
START_ITERATIONS = 40
#: Groups with |U| below this fraction of the largest are "weak" (zero in kinematic starts; tried
#: at zero and negated by the polish).
WEAK_FRACTION = 0.1
#: A refinement counts as having reached the solution when R is below this (noise-free data) …
SUCCESS_R_NOISE_FREE = R_MAX_NOISE_FREE
#: … or below this multiple of the expected Poisson floor of R (data with a dose).
SUCCESS_R_NOISE_FACTOR = 1.5

StartFn = Callable[..., tuple]


def resolve_start(start, model, *, iterations: int, task2_kwargs: dict | None,
                  thickness_range_nm, out_dir, progress: bool):
    """(kind, callable or None): ``'search'`` → (None, None); ``'task2'`` / ``'model'`` → the
    :mod:`larbed.learn` start (imported here, lazily); a callable → ('callable', it)."""
    if callable(start):
        return "callable", start
    if start == "search":
        return None, None
    learn = importlib.import_module("larbed.learn")  # the physics core's only route to learn
    if start == "task2":
        return "task2", learn.task2_start(
            model, iterations=iterations, thickness_range_nm=tuple(thickness_range_nm),
            out_dir=None if out_dir is None else os.path.join(out_dir, "task2"), progress=progress,
            **(task2_kwargs or {}))
    return "model", learn.model_start(model)


def start_settings(fn) -> object:
    """What identifies a callable start in a run's fingerprint."""
    settings = getattr(fn, "settings", None)
    if settings is not None:
        return settings
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def call_start(fn, pattern_ds, geometry: Geometry, seed: int, path: str | None):
    """(U_g values, thickness or None, info) of a callable start; checkpointed in ``path``."""
    saved = read_json(path) if path else None
    if saved is None:
        out = fn(pattern_ds, geometry, seed=seed)
        if not isinstance(out, tuple) or len(out) not in (2, 3):
            raise TypeError("a start must return (ug, thickness_nm or None) or (ug, thickness_nm, info)")
        vals = np.asarray(getattr(out[0], "values", out[0]), complex)
        if vals.shape != (geometry.n_reflections,) or not np.all(np.isfinite(vals)):
            raise ValueError(f"the start returned U_g of shape {vals.shape}; the geometry needs "
                             f"({geometry.n_reflections},) finite values")
        info = dict(out[2]) if len(out) == 3 else {}
        saved = {"real": vals.real.tolist(), "imag": vals.imag.tolist(),
                 "t": None if out[1] is None else float(out[1]), **info}
        if path:
            write_json(path, saved)
    info = {k: v for k, v in saved.items() if k not in ("real", "imag", "t")}
    return np.asarray(saved["real"]) + 1j * np.asarray(saved["imag"]), saved["t"], info


def refine_staged(intensity, geometry: Geometry, start, thickness_nm: float,
                   groups: Sequence[SymmetryGroup], max_iter: int, measurement=None):
    """Constrained least squares; for many groups low orders first (:data:`STAGES`).

    With many U_g, those that couple only distant beams are hardly seen by the data; refined from
    the start together with the rest they wander off to unphysical values and least squares stalls
    (ZnO-1 from truth ±10 %: R = 0.008 after 150 iterations, some |U| ~ 1 1/Å²). Refining the
    lower-order ones first and then all reaches the solution (R = 3e-14 in 21 iterations).
    """
    stages = (1.0,) if len(groups) < STAGED_MIN_GROUPS else STAGES
    glen = np.linalg.norm(geometry.reflection_xy, axis=1)
    res = None
    for frac in stages:
        mask = None if frac >= 1.0 else glen <= np.quantile(glen, frac) + 1e-9
        res = refine(intensity, geometry, start, thickness_nm, symmetry=list(groups), weights="none",
                     max_iter=max_iter, progress=False, log_warnings=False, refine_reflections=mask,
                     measurement=_continued(measurement, res))
        start, thickness_nm = res.ug, res.thickness_nm
    return res


def _continued(measurement, res):
    """The measurement model, starting from the values an earlier refinement ``res`` found."""
    if measurement is None or res is None or res.measurement is None:
        return measurement
    values = res.measurement[[v for v in res.measurement.data_vars if not v.endswith("_error")]]
    return dataclasses.replace(measurement, values=values)


def refine_continuation(intensity, geometry: Geometry, start, thickness_nm: float,
                         groups: Sequence[SymmetryGroup], max_iter: int, measurement=None):
    """Least squares along a path of data: I_λ = (1 − λ) I(start) + λ I_exp, λ → 1.

    At λ = 0 the start fits exactly; each step refines from the previous solution, so the fit
    follows the data to the measured pattern instead of jumping into the nearest false minimum.
    It reaches the solution from farther than direct least squares: ZnO-2 (97 beams, 101 U_g
    groups, 60 kV, 50 nm) from truth ±30 % and t 3 % off, 8 steps of 12 iterations and 60 final
    ones: R = 4e-14, where staged least squares from the same U_g ends at R = 0.17.
    """
    ug = input_ug(geometry, start)
    inten0 = simulate(geometry, ug, thickness_nm).intensity.values
    t = thickness_nm
    for lam in np.linspace(1.0 / CONTINUATION_STEPS, 1.0, CONTINUATION_STEPS)[:-1]:
        target = (1.0 - lam) * inten0 + lam * intensity
        res = refine(target, geometry, ug, t, symmetry=list(groups), weights="none",
                     max_iter=CONTINUATION_ITERATIONS, progress=False, log_warnings=False)
        ug, t = res.ug, res.thickness_nm
    return refine(intensity, geometry, ug, t, symmetry=list(groups), weights="none",
                  max_iter=max_iter, progress=False, log_warnings=False, measurement=measurement)


def refine_start(intensity: np.ndarray, geometry: Geometry, values: np.ndarray,
                  groups: Sequence[SymmetryGroup], thickness_range_nm, max_iter: int,
                  continuation_r: float | None = None, measurement=None) -> dict:
    """Thickness scan + constrained least squares from one start (picklable for Dask).

    With ``continuation_r``, a result above that R is followed by :func:`refine_continuation`
    from the same start (the better of the two is kept).
    """
    lo, hi = thickness_range_nm
    start = input_ug(geometry, values)
    scan = thickness_scan(intensity, geometry, start, np.arange(lo, hi + 1e-9, SCAN_STEP_NM),
                          measurement=measurement)
    res = refine_staged(intensity, geometry, start, scan.attrs["best_thickness_nm"], groups, max_iter,
                        measurement)
    if continuation_r is not None and res.r_factor > continuation_r:
        cont = refine_continuation(intensity, geometry, start, scan.attrs["best_thickness_nm"],
                                    groups, max_iter, measurement)
        logger.info("determine: data continuation from the same start: R = %.3g (direct: %.3g)",
                    cont.r_factor, res.r_factor)
        if cont.r_factor < res.r_factor:
            res = cont
    return {"ug_real": res.ug.values.real.tolist(), "ug_imag": res.ug.values.imag.tolist(),
            "thickness_nm": res.thickness_nm, "r_factor": res.r_factor,
            "scan_r": float(scan.attrs["best_value"]), "scan_thickness_nm": scan.attrs["best_thickness_nm"],
            "iterations": res.n_iterations}


def refine_from(intensity: np.ndarray, geometry: Geometry, values: np.ndarray, thickness_nm: float,
                 groups: Sequence[SymmetryGroup], max_iter: int, measurement=None) -> dict:
    res = refine_staged(intensity, geometry, input_ug(geometry, values), thickness_nm, groups, max_iter,
                        measurement)
    return {"ug_real": res.ug.values.real.tolist(), "ug_imag": res.ug.values.imag.tolist(),
            "thickness_nm": res.thickness_nm, "r_factor": res.r_factor, "scan_r": float("nan"),
            "scan_thickness_nm": thickness_nm, "iterations": res.n_iterations}


def group_magnitudes(intensity: np.ndarray, geometry: Geometry, groups: Sequence[SymmetryGroup]):
    """Kinematic size of each group's U_g: sqrt of the tilt-averaged intensity of its beams."""
    mean = np.asarray(intensity, float).mean(axis=0)
    beam = {tuple(h): b for b, h in enumerate(geometry.hkl.tolist())}
    out = np.zeros(len(groups))
    for i, g in enumerate(groups):
        vals = []
        for q, _ in g.members:
            h = tuple(int(x) for x in geometry.reflection_hkl[q])
            for hh in (h, tuple(-x for x in h)):
                if hh in beam:
                    vals.append(mean[beam[hh]])
        out[i] = np.sqrt(max(np.mean(vals), 0.0)) if vals else 0.0
    return out


@uses_kernels
def kinematic_starts(intensity: np.ndarray, geometry: Geometry, groups: Sequence[SymmetryGroup], *,
                     thickness_range_nm=(5.0, 100.0), tilts: int = 100, n_out: int = 2,
                     weak_fraction: float = WEAK_FRACTION, sweeps: int = 2,
                     scales: Sequence[float] = tuple(np.geomspace(0.08, 0.8, 13)),
                     progress: bool = False) -> list[np.ndarray]:
    """Starts from the beams' mean intensities: |U_g| ∝ sqrt(mean_k I_g(k)), signs by descent.

    In the kinematic limit the tilt-averaged intensity of beam g grows as |U_g|², so the mean
    intensities give the sizes of the U_g up to a common factor (dynamical scattering blurs them to
    within a factor of ~2, and weak reflections come out too large: they are set to zero). The
    factor is scanned, then every group's sign is flipped in turn (strongest first, ``sweeps``
    times) and kept when the thickness-optimised R on ``tilts`` tilts decreases. With many beams
    this lands in the basin of least squares where a random search in tens of dimensions does not
    (SrTiO3 [001], 69 beams, 38 real parameters). Imaginary parts start at zero.

    progress : bool
        Show a progress bar over the sign flips.

    Returns
    -------
    list of ndarray
        Up to ``n_out`` U_g vectors (n_reflections,) [1/Å²], best first.
    """
    inten = np.asarray(intensity, float)
    if inten.shape != (geometry.n_tilts, geometry.n_beams):
        raise ValueError(f"intensity must have shape (n_tilts, n_beams) = "
                         f"{(geometry.n_tilts, geometry.n_beams)}, got {inten.shape}")
    if not np.all(np.isfinite(inten)) or np.any(inten < 0):
        raise ValueError("intensity must be finite and non-negative (NaN, inf or negative values found)")
    lo, hi = (float(v) for v in thickness_range_nm)
    if not (0 < lo < hi) or not np.isfinite(hi):
        raise ValueError(f"thickness_range_nm must be (low, high) with 0 < low < high, got {thickness_range_nm}")
    thick = np.arange(lo, hi + 1e-9, SEARCH_STEP_NM)
    stride = max(1, -(-geometry.n_tilts // tilts)) if tilts else 1
    obj = Objective(geometry, inten, groups, thick, np.arange(0, geometry.n_tilts, stride))
    size = group_magnitudes(inten, geometry, groups)
    if not np.any(size > 0):
        return []
    size = np.where(size >= weak_fraction * size.max(), size, 0.0)
    # parameter vector: real part of every group (imaginary parts, where free, start at zero)
    real_col = np.array([not is_im for _, _, is_im in obj.cols])
    col_group = np.cumsum(real_col) - 1
    base = np.where(real_col, size[col_group], 0.0)
    outs = []
    from tqdm.auto import tqdm

    n_flips = min(n_out, len(scales)) * sweeps * int(np.count_nonzero(base))
    bar = tqdm(total=len(scales) + n_flips, desc="kinematic starts", unit="eval", leave=False,
               disable=not progress)
    scored = sorted(((obj(c * base), c) for c in scales), key=lambda x: x[0])
    bar.update(len(scales))
    for _, c in scored[:n_out]:
        z = c * base
        best = obj(z)
        order = [j for j in np.argsort(-np.abs(z)) if z[j] != 0]
        for _ in range(sweeps):
            changed = False
            for j in order:
                z[j] = -z[j]
                e = obj(z)
                bar.update(1)
                if e < best:
                    best, changed = e, True
                else:
                    z[j] = -z[j]
            if not changed:
                break
        logger.info("kinematic start: scale %.3g, R = %.3g after sign descent", c, best)
        outs.append((best, obj.values(z)))
    bar.close()
    return [v for _, v in sorted(outs, key=lambda x: x[0])]


class StartRun:
    """The state of one determine run: settings, checkpoints, the refined starts so far."""

    def __init__(self, inten, geometry, groups, dose, success_r, ckpt, client, progress, rng,
                 max_iter_start: int = START_ITERATIONS, measurement=None):
        self.inten, self.geometry, self.groups, self.dose = inten, geometry, groups, dose
        self.success_r, self.ckpt, self.client, self.progress = success_r, ckpt, client, progress
        self.rng = rng
        self.results: dict[str, dict] = {}
        self.max_iter_start = max_iter_start
        self.measurement = measurement

    def path(self, name: str) -> str | None:
        return os.path.join(self.ckpt, name) if self.ckpt else None

    def _load(self, key: str):
        return read_json(self.path(f"start_{key}.json")) if self.ckpt else None

    def _store(self, key: str, out: dict) -> None:
        out["source"] = key
        self.results[key] = out
        if self.ckpt:
            write_json(self.path(f"start_{key}.json"), out)

    def run(self, cands, thickness_range, continuation: bool = False) -> None:
        """Thickness scan + least squares from each (key, values) not refined before."""
        todo = []
        for key, vals in cands:
            saved = self._load(key)
            if saved is not None:
                self.results[key] = saved
            else:
                todo.append((key, vals))
        if not todo:
            return
        cont_r = self.success_r if continuation else None
        args = [(self.inten, self.geometry, v, self.groups, tuple(thickness_range),
                 self.max_iter_start, cont_r, self.measurement) for _, v in todo]
        if self.client is not None:
            from dask.distributed import as_completed

            futures = {self.client.submit(refine_start, *a, pure=False): k
                       for (k, _), a in zip(todo, args, strict=True)}
            outs = ((futures[f], f.result()) for f in as_completed(futures))
        else:
            outs = ((k, refine_start(*a)) for (k, _), a in zip(todo, args, strict=True))
        from tqdm.auto import tqdm

        for key, out in tqdm(outs, total=len(todo), desc="starts", unit="start", leave=False,
                             disable=not self.progress or len(todo) < 2):
            self._store(key, out)
            logger.info("determine: start %s -> R = %.3g, t = %.2f nm", key, out["r_factor"],
                        out["thickness_nm"])

    def try_from(self, key, values, thickness) -> dict:
        saved = self._load(key)
        if saved is not None:
            self.results[key] = saved
            return saved
        out = refine_from(self.inten, self.geometry, values, thickness, self.groups, self.max_iter_start,
                          self.measurement)
        self._store(key, out)
        return out

    def best(self, prefix: str | None = None):
        pool = [r for k, r in self.results.items() if prefix is None or k.startswith(prefix)]
        return min(pool, key=lambda r: r["r_factor"]) if pool else None

    def solved(self, b) -> bool:
        return b is not None and b["r_factor"] <= self.success_r


def start_values(r: dict) -> np.ndarray:
    return np.asarray(r["ug_real"]) + 1j * np.asarray(r["ug_imag"])
