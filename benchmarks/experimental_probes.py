"""What more physics could explain of the experimental SrTiO3 misfit: per-tilt probes.

Usage::

    python benchmarks/experimental_probes.py [--data ../shared/data/experimental/sto120kv]
        [--out bench-sto120kv] [--json benchmarks/results/experimental_probes.json]

Starts from the refinement of ``benchmarks/experimental_sto120kv.py`` (the same settings and
checkpoint in ``--out``: a finished run there is reused, otherwise it is refined here) and asks
how much of the residual each candidate mechanism can take up when it is given one free value
*per tilt* — an upper bound on what the mechanism explains:

* ``tilt_jitter``: an own tilt shift δ_t (2 per tilt; Gauss–Newton on central differences);
* ``thickness``: an own thickness t_t (a wedge or a beam wandering over the crystal), from a
  thickness series around the refined t;
* ``per_tilt_background``: an own flat background level β_t (linear least squares with the
  per-tilt scale).

and, with one global value each (a grid; U_g, t and the measurement model stay as refined, so
the gain is a lower bound of what a refit with the mechanism would reach):

* ``convergence``: the model averaged over a ring of radius ρ around each tilt (8 points) plus
  the centre, half the weight each: to second order the mean over a uniform disc of radius ρ
  (beam convergence, or a spread of tilts within one exposure);
* ``neighbour_blur``: I'(m) = (1 − w) I(m) + w · mean of I over the tilt's nearest neighbours in
  the tilt lattice (a point spread of the detector or the intensity integration over tilts);
* ``afterglow``: I'(m) = (1 − a) I(m) + a I(m − 1) along the file's tilt order where consecutive
  tilts are neighbours (the rows are in the original order, a raster: a detector lag between
  exposures would show as this);
* ``thickness_average``: the model averaged over a uniform range of thicknesses t ± δ (a wedge
  or a thickness distribution within the illuminated area, the same for every tilt);
* ``diffuse_copy``: I' = (1 − f) I + f · (I averaged over a Gaussian of tilts of width σ) — a
  fraction of the electrons scattered once more, inelastically, by a few mrad (plasmon losses in
  energy-unfiltered data), which would show as a halo around the bands;
* ``detector_response``: I' ∝ (I + B)^γ before the per-tilt scale (a nonlinear detector);
* ``residual_structure``: no fit — per |g| shell, how much the residuals of neighbouring tilts
  correlate (white counting noise: 0) and the shell's relative misfit.

For each, R before and after, and how much of the per-tilt values a smooth (polynomial, degree
≤ 3) function of the tilt explains: a physical mechanism (a distortion of the tilt coils, a
thickness wedge) is smooth over the disc, fitted noise or misfit is not. The data are read from
``--data`` (not part of the repository); the script exits 2 when they are missing.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

import larbed
from larbed import Measurement

sys.path.insert(0, str(Path(__file__).parent))
from _machine import cpu_model, report  # noqa: E402
from experimental_sto120kv import parser, start  # noqa: E402

#: Central-difference step of the tilt derivatives [mrad].
TILT_STEP_MRAD = 0.05
#: Largest tilt change of one Gauss–Newton step [mrad].
MAX_STEP_MRAD = 1.0
#: Thickness series of the per-tilt thickness probe: refined t ± this [nm], step THICKNESS_STEP_NM.
THICKNESS_SPAN_NM = 5.0
THICKNESS_STEP_NM = 0.1


def _r(data, model) -> float:
    return float(np.abs(data - model).sum() / data.sum())


def _smooth_fraction(tilts: np.ndarray, values: np.ndarray, degree: int = 3) -> float:
    """Fraction of the variance of ``values`` (n_tilts,) a polynomial of the tilt explains."""
    x, y = ((tilts - tilts.mean(axis=0)) / np.ptp(tilts, axis=0).max()).T
    basis = np.stack([x**i * y**j for i in range(degree + 1) for j in range(degree + 1 - i)], 1)
    coef, *_ = np.linalg.lstsq(basis, values, rcond=None)
    return float(1.0 - np.var(values - basis @ coef) / np.var(values))


class Probe:
    """The refined model, split into its parts: I_dyn at the true tilts, background, scale."""

    def __init__(self, res, geometry, data, measurement: Measurement):
        self.res, self.geometry, self.data = res, geometry, data
        m = res.measurement
        self.theta = geometry.tilt_mrad @ m.tilt_matrix.values.T + m.tilt_offset_mrad.values
        a, b = measurement.background_terms(geometry)
        self.background = np.einsum("k,kt,kb->tb", np.atleast_1d(m.background.values), a, b)

    def dynamical(self, tilts, thickness_nm=None):
        geo = larbed.Geometry(self.geometry.crystal, self.geometry.voltage_kv,
                              self.geometry.zone_axis, self.geometry.n_beams, tilts_mrad=tilts)
        t = self.res.thickness_nm if thickness_nm is None else thickness_nm
        return larbed.simulate(geo, self.res.ug, t).intensity.values

    def measured(self, dyn):
        m = dyn + self.background
        return m * (self.data.sum(axis=-1) / m.sum(axis=-1))[..., None]

    def tilt_jitter(self, iterations: int = 4) -> dict:
        d, h = self.data, TILT_STEP_MRAD
        delta = np.zeros_like(self.theta)
        for _ in range(iterations):
            th = self.theta + delta
            dyn = self.dynamical(th)
            s = (d.sum(1) / (dyn + self.background).sum(1))[:, None]
            grads = [(self.dynamical(th + e) - self.dynamical(th - e)) / (2 * h)
                     for e in (np.array([h, 0.0]), np.array([0.0, h]))]
            jac = np.stack([s * g for g in grads], axis=2)
            r = d - s * (dyn + self.background)
            step = np.linalg.solve(np.einsum("mni,mnj->mij", jac, jac) + 1e-12 * np.eye(2),
                                   np.einsum("mni,mn->mi", jac, r)[..., None])[..., 0]
            delta += np.clip(step, -MAX_STEP_MRAD, MAX_STEP_MRAD)
        r_after = _r(d, self.measured(self.dynamical(self.theta + delta)))
        radius = np.linalg.norm(self.geometry.tilt_mrad - self.geometry.tilt_mrad.mean(0), axis=1)
        return {"free_values": 2 * len(delta), "r_after": r_after,
                "rms_shift_mrad": np.sqrt((delta**2).mean(axis=0)).tolist(),
                "median_shift_inner_half_mrad": float(np.median(np.linalg.norm(
                    delta[radius < np.median(radius)], axis=1))),
                "median_shift_outer_half_mrad": float(np.median(np.linalg.norm(
                    delta[radius >= np.median(radius)], axis=1))),
                "smooth_fraction": [_smooth_fraction(self.geometry.tilt_mrad, delta[:, k])
                                    for k in range(2)]}

    def thickness(self) -> dict:
        t0 = self.res.thickness_nm
        ts = np.arange(t0 - THICKNESS_SPAN_NM, t0 + THICKNESS_SPAN_NM + 1e-9, THICKNESS_STEP_NM)
        model = self.measured(self.dynamical(self.theta, ts))  # (n_t, M, N)
        err = np.abs(self.data[None] - model).sum(axis=2)
        best = ts[np.argmin(err, axis=0)]
        return {"free_values": len(best), "r_after": float(err.min(axis=0).sum() / self.data.sum()),
                "thickness_nm_percentiles_5_50_95": np.percentile(best, [5, 50, 95]).tolist(),
                "thickness_std_nm": float(best.std()),
                "smooth_fraction": _smooth_fraction(self.geometry.tilt_mrad, best)}

    def per_tilt_background(self, fit) -> dict:
        out = np.empty_like(self.data)
        levels = np.empty(len(out))
        for t in range(len(out)):
            basis = np.stack([fit[t], np.ones_like(fit[t])], axis=1)
            coef, *_ = np.linalg.lstsq(basis, self.data[t], rcond=None)
            out[t], levels[t] = basis @ coef, coef[1]
        return {"free_values": len(levels), "r_after": _r(self.data, out),
                "level_percentiles_5_50_95": np.percentile(levels, [5, 50, 95]).tolist(),
                "smooth_fraction": _smooth_fraction(self.geometry.tilt_mrad, levels)}


#: Radii of the convergence probe [mrad], blur weights of the neighbour and afterglow probes.
CONVERGENCE_MRAD = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
BLUR_WEIGHTS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def _best_of(trials: dict) -> dict:
    """The grid value with the lowest R, and R at every grid value."""
    best = min(trials, key=trials.get)
    return {"free_values": 1, "best": best, "r_after": trials[best],
            "r_at": {str(k): v for k, v in trials.items()}}


def convergence(probe) -> dict:
    """R with the model averaged over a disc of tilts around each one (radius grid)."""
    dyn0 = probe.dynamical(probe.theta)
    trials = {}
    for rho in CONVERGENCE_MRAD:
        phi = np.arange(8) * np.pi / 4
        ring = rho * np.stack([np.cos(phi), np.sin(phi)], 1)
        avg = dyn0 / 2 + sum(probe.dynamical(probe.theta + d) for d in ring) / 16
        trials[rho] = _r(probe.data, probe.measured(avg))
    return _best_of(trials)


def _neighbours(tilts: np.ndarray, step: float) -> list[np.ndarray]:
    """For every tilt, the indices of the others within 1.3 lattice steps."""
    dist = np.linalg.norm(tilts[:, None] - tilts[None], axis=2)
    return [np.flatnonzero((row > 0) & (row < 1.3 * step)) for row in dist]


def neighbour_blur(probe) -> dict:
    """R with each tilt's model mixed with the mean of its lattice neighbours (weight grid)."""
    tilts = probe.geometry.tilt_mrad
    steps = np.linalg.norm(np.diff(tilts, axis=0), axis=1)
    nb = _neighbours(tilts, float(np.median(steps)))
    dyn = probe.dynamical(probe.theta)
    mean_nb = np.stack([dyn[i].mean(0) if len(i) else dyn[m] for m, i in enumerate(nb)])
    trials = {w: _r(probe.data, probe.measured((1 - w) * dyn + w * mean_nb))
              for w in BLUR_WEIGHTS}
    out = _best_of(trials)
    out["median_neighbours"] = float(np.median([len(i) for i in nb]))
    return out


def afterglow(probe) -> dict:
    """R with a fraction of the previous exposure (file order) added to each tilt's model."""
    tilts = probe.geometry.tilt_mrad
    steps = np.linalg.norm(np.diff(tilts, axis=0), axis=1)
    follows = np.concatenate([[False], steps < 1.3 * np.median(steps)])
    dyn = probe.dynamical(probe.theta)
    prev = np.where(follows[:, None], np.roll(dyn, 1, axis=0), dyn)
    trials = {a: _r(probe.data, probe.measured((1 - a) * dyn + a * prev)) for a in BLUR_WEIGHTS}
    out = _best_of(trials)
    out["consecutive_neighbours"] = float(follows.mean())
    return out


#: Half-widths δ [nm] of the thickness average; (σ [mrad], fraction f) of the diffuse copy;
#: exponents γ of the detector response.
THICKNESS_HALF_WIDTHS_NM = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0)
DIFFUSE_SIGMA_MRAD = (3.0, 6.0, 10.0, 15.0)
DIFFUSE_FRACTIONS = (0.05, 0.1, 0.2, 0.3)
RESPONSE_EXPONENTS = (0.8, 0.9, 0.95, 1.05, 1.1, 1.2, 1.3)


def thickness_average(probe) -> dict:
    """R with the model averaged over t ± δ (uniform, 0.5 nm steps; half-width grid)."""
    t0 = probe.res.thickness_nm
    ts = t0 + np.arange(-max(THICKNESS_HALF_WIDTHS_NM), max(THICKNESS_HALF_WIDTHS_NM) + 1e-9, 0.5)
    dyn = probe.dynamical(probe.theta, ts)
    trials = {d: _r(probe.data, probe.measured(dyn[np.abs(ts - t0) <= d + 1e-9].mean(axis=0)))
              for d in THICKNESS_HALF_WIDTHS_NM}
    return _best_of(trials)


def diffuse_copy(probe) -> dict:
    """R with a fraction f of the model replaced by its average over a Gaussian of tilts (width
    σ, sampled on a hexagonal grid of step σ/2 out to 2.5σ)."""
    ij = np.array([(i, j) for i in range(-6, 7) for j in range(-6, 7)], float)
    grid = np.stack([ij[:, 0] + 0.5 * ij[:, 1], ij[:, 1] * np.sqrt(3) / 2], axis=1)
    dyn = probe.dynamical(probe.theta)
    trials = {}
    for sigma in DIFFUSE_SIGMA_MRAD:
        pts = grid * sigma / 2
        radius = np.linalg.norm(pts, axis=1)
        pts, w = pts[radius <= 2.5 * sigma], np.exp(-0.5 * (radius[radius <= 2.5 * sigma] / sigma) ** 2)
        wide = sum(wi * probe.dynamical(probe.theta + d) for d, wi in zip(pts, w / w.sum(), strict=True))
        for f in DIFFUSE_FRACTIONS:
            trials[(sigma, f)] = _r(probe.data, probe.measured((1 - f) * dyn + f * wide))
    out = _best_of(trials)
    out["best"] = {"sigma_mrad": out["best"][0], "fraction": out["best"][1]}
    return out


def detector_response(probe) -> dict:
    """R with the model (I + B)^γ normalised per tilt (exponent grid)."""
    m = np.clip(probe.dynamical(probe.theta) + probe.background, 0.0, None)
    trials = {}
    for g in RESPONSE_EXPONENTS:
        mg = m**g
        trials[g] = _r(probe.data, mg * (probe.data.sum(axis=1) / mg.sum(axis=1))[:, None])
    return _best_of(trials)


#: |g| shell edges of the residual-structure probe [1/Å].
SHELL_EDGES = (0.0, 0.01, 0.4, 0.6, 0.9, 1.2, 1.45, 2.0)


def residual_structure(probe) -> dict:
    """Per |g| shell: the correlation of the fit's residuals between neighbouring tilts (white
    counting noise gives 0) and the shell's relative misfit; no fitting."""
    from larbed.refinement.realdata import residual_correlation

    resid = probe.data - probe.res.fit.intensity.values
    rows = np.arange(probe.geometry.n_tilts)
    out = {}
    for lo, hi in zip(SHELL_EDGES[:-1], SHELL_EDGES[1:], strict=True):
        cols = (probe.geometry.g_abs >= lo) & (probe.geometry.g_abs < hi)
        rho, pairs = residual_correlation(probe.geometry, np.where(cols, resid, np.nan), rows)
        out[f"{lo}-{hi} 1/A"] = {"beams": int(cols.sum()), "neighbour_correlation": rho,
                                 "relative_misfit": float(np.abs(resid[:, cols]).sum()
                                                          / probe.data[:, cols].sum()),
                                 "mean_intensity": float(probe.data[:, cols].mean())}
    return {"free_values": 0, "r_after": _r(probe.data, probe.res.fit.intensity.values),
            "by_shell": out}


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--max-iter", type=int, default=60)
    ap.add_argument("--probes", nargs="+", choices=sorted(PROBES), default=sorted(PROBES),
                    help="the probes to run (default all)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    st = start(args, max_iter=args.max_iter)
    if st is None:
        return 2
    geometry, res, csv = st.geometry, st.result, st.csv
    data = st.pattern.intensity.values
    probe = Probe(res, geometry, data, st.measurement)
    r0 = _r(data, res.fit.intensity.values)
    result = {"machine": cpu_model(), "data": str(csv), "r_refined": r0,
              "thickness_nm": res.thickness_nm,
              "r_model_check": _r(data, probe.measured(probe.dynamical(probe.theta)))}
    for name in args.probes:
        logging.info("probe %s", name)
        out = (probe.per_tilt_background(res.fit.intensity.values)
               if name == "per_tilt_background" else PROBES[name](probe))
        out["r_ratio"] = out["r_after"] / r0
        result[name] = out
    result["total_s"] = time.perf_counter() - t0
    result["command"] = "python benchmarks/experimental_probes.py " + " ".join(argv or sys.argv[1:])
    report(result, args.json)
    return 0


#: Every probe by name (``per_tilt_background`` also takes the refined fit).
PROBES = {"tilt_jitter": Probe.tilt_jitter, "thickness": Probe.thickness,
          "per_tilt_background": Probe.per_tilt_background, "convergence": convergence,
          "neighbour_blur": neighbour_blur, "afterglow": afterglow,
          "thickness_average": thickness_average, "diffuse_copy": diffuse_copy,
          "detector_response": detector_response, "residual_structure": residual_structure}


if __name__ == "__main__":
    raise SystemExit(main())
