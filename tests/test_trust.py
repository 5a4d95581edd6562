"""No silent wrong answers: warnings from fits, errors before fits, counts, doses, threads, memory."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import larbed
from larbed.metrics import expected_noise_r
from larbed.refinement import api as refine_api
from larbed.refinement import jacobian as refine_jacobian
from larbed.refinement import parameters as refine_parameters
from larbed.refinement import refine
from larbed.refinement import solver as refine_solver
from larbed.trust import FitWarning, fit_quality_warnings, untrustworthy

#: An exact fit of noise-free data: R at round-off.
EXACT_R = 1e-8


@pytest.fixture(scope="module")
def case(srtio3):
    geo = larbed.Geometry(srtio3, 120, (0, 0, 1), 9, 29, 60)
    return geo, larbed.compute_ug(srtio3, geo)


# ------------------------------------------------------------------------------ warning objects
def test_fit_warning_is_a_string_with_a_kind():
    w = FitWarning("bound", "t at 0.1 nm")
    assert w == "t at 0.1 nm" and w.kind == "bound" and w.untrustworthy
    back = pickle.loads(pickle.dumps(w))
    assert back == w and back.kind == "bound"
    assert not FitWarning("undetermined", "x").untrustworthy
    assert untrustworthy([FitWarning("undetermined", "x"), FitWarning("chi2", "y")])
    assert not untrustworthy([FitWarning("undetermined", "x")])
    with pytest.raises(ValueError, match="unknown warning kind"):
        FitWarning("nonsense", "x")


def test_quality_thresholds():
    assert fit_quality_warnings(0.01, 1.1, 0.01) == []
    kinds = [w.kind for w in fit_quality_warnings(0.05, 2.5, 0.01)]
    assert kinds == ["chi2", "r_factor"]
    assert fit_quality_warnings(0.05, 2.5, 0.01, chi2_max=3, r_noise_factor=6) == []
    assert [w.kind for w in fit_quality_warnings(2e-3, None, None)] == ["r_factor"]
    assert fit_quality_warnings(2e-3, None, None, r_max=1e-2) == []


def test_expected_noise_r_matches_monte_carlo():
    rng = np.random.default_rng(4)
    inten = rng.dirichlet(np.full(9, 0.4), size=400)
    for dose in (20.0, 1e3, 1e5):
        mc = np.mean([np.abs(rng.poisson(inten * dose) / dose - inten).sum() / inten.sum()
                      for _ in range(20)])
        assert expected_noise_r(inten, dose) == pytest.approx(mc, rel=0.02)


# ------------------------------------------------------------------------------ refine warnings
def test_exact_fit_has_no_warnings(case):
    geo, ug = case
    res = refine(larbed.simulate(geo, ug, 25.0), geo, ug * 1.03, 24.5, progress=False)
    assert res.r_factor < EXACT_R and res.warnings == [] and res.trustworthy


def test_wrong_model_with_a_dose_is_flagged(case):
    """Data with absorption fitted without it: χ² and R far above the noise."""
    geo, ug = case
    data = larbed.simulate(geo, ug, 25.0, absorption=0.1, dose=1e5, seed=0)
    res = refine(data, geo, ug, 25.0, progress=False, max_iter=20)
    kinds = {w.kind for w in res.warnings}
    assert {"chi2", "r_factor"} <= kinds and not res.trustworthy
    relaxed = refine(data, geo, ug, 25.0, progress=False, max_iter=20, chi2_max=1e9,
                     r_noise_factor=1e9)
    assert not {"chi2", "r_factor"} & {w.kind for w in relaxed.warnings}


def test_noisy_fit_of_the_right_model_is_not_flagged(case):
    geo, ug = case
    data = larbed.simulate(geo, ug, 25.0, dose=1e5, seed=3)
    res = refine(data, geo, ug, 25.0, progress=False)
    assert res.chi2 < 2 and res.trustworthy, res.warnings


def test_thickness_at_its_lower_bound_is_flagged(case):
    geo, ug = case
    data = larbed.simulate(geo, ug, 0.03)
    res = refine(data, geo, ug, 0.5, progress=False, refine_reflections=[])
    assert res.thickness_nm == pytest.approx(refine_parameters.MIN_THICKNESS_NM)
    assert "bound" in {w.kind for w in res.warnings} and not res.trustworthy


def test_undetermined_combinations_are_named_and_kept_at_the_start(srtio3):
    """One tilt on the zone axis: 13 intensities but only 4 distinct ones (000, {100}, {110},
    {200}) for 8 symmetry-tied U_g and t; the fit is exact, and what it cannot see is reported."""
    geo = larbed.Geometry(srtio3, 120, (0, 0, 1), 13, 1, 70)
    ug = larbed.compute_ug(srtio3, geo)
    data = larbed.simulate(geo, ug, 30.0)
    start = ug * (1 + 0.02 * np.cos(np.arange(geo.n_reflections)))
    res = refine(data, geo, start, 29.5, symmetry="crystal", progress=False)
    assert res.r_factor < EXACT_R
    kinds = [w.kind for w in res.warnings]
    assert kinds == ["undetermined"] and res.trustworthy
    assert "Re U(" in res.warnings[0] and "kept at their start" in res.warnings[0]
    assert np.sum(np.isinf(res.ug_error.values.real)) >= 2
    # what the fit could not see stayed at the start: without that step the fit drifts along it
    from larbed.symmetry import symmetry_groups

    groups = symmetry_groups(geo, "crystal")

    def q_of(r, t):
        return np.array([r.values[g.members[0][0]].real for g in groups] + [t])

    q0 = q_of(start, 29.5)
    import unittest.mock

    with unittest.mock.patch.object(refine_api, "restore_undetermined", lambda *a, **k: None):
        drifted = refine(data, geo, start, 29.5, symmetry="crystal", progress=False)
    kept = np.linalg.norm(q_of(res.ug, res.thickness_nm) - q0)
    drift = np.linalg.norm(q_of(drifted.ug, drifted.thickness_nm) - q0)
    assert kept < 0.1 * drift


def test_null_directions_are_named():
    hess = np.diag([4.0, 1.0, 1.0])
    hess[1:, 1:] = 1.0  # p1 − p2 is not determined
    cov, null = refine_solver.covariance(hess, np.zeros((3, 0)))
    assert null.shape == (3, 1)
    assert np.isinf(cov[1, 1]) and np.isfinite(cov[0, 0])
    (text,) = refine_solver.describe_null(null, ["a", "b", "c"])
    assert text in ("b − c", "c − b")


# ------------------------------------------------------------------------------ errors before fits
def test_pattern_without_diffraction_is_an_error(case):
    geo, ug = case
    flat = larbed.simulate(geo, ug, 0.0)
    with pytest.raises(ValueError, match="no diffracted intensity"):
        refine(flat, geo, ug, 10.0, progress=False)
    with pytest.raises(ValueError, match="no diffracted intensity"):
        larbed.determine(flat, geo, progress=False)


def test_more_parameters_than_data_is_an_error(srtio3):
    geo = larbed.Geometry(srtio3, 120, (0, 0, 1), 13, 1, 50)  # 13 intensities, 41 parameters
    ug = larbed.compute_ug(srtio3, geo) * np.exp(0.2j)
    with pytest.raises(ValueError, match="free parameters but only 13"):
        refine(larbed.simulate(geo, ug, 20.0), geo, ug, 20.0, progress=False)


# ------------------------------------------------------------------------------ counts and doses
def test_raw_counts_are_rejected_with_a_hint(case, tmp_path):
    geo, ug = case
    ds = larbed.simulate(geo, ug, 25.0, dose=1e4, seed=0)
    counts = ds.copy()
    counts["intensity"] = np.round(ds.intensity * 1e4)
    counts.attrs["dose"] = "none"
    with pytest.raises(ValueError, match="raw counts.*counts=True"):
        refine(counts, geo, ug, 25.0, progress=False)
    scaled = ds.copy()
    scaled["intensity"] = ds.intensity * 3.7  # not integers, but sums of 3.7
    with pytest.raises(ValueError, match="per-tilt sums"):
        refine(scaled, geo, ug, 25.0, progress=False)
    # sums below 1 are fine (absorption, missing beams)
    refine(larbed.simulate(geo, ug, 25.0, absorption=0.05), geo, ug, 25.0, absorption=0.05,
           progress=False)


def test_noisy_sums_above_one_are_accepted(case):
    geo, ug = case
    ds = larbed.simulate(geo, ug, 25.0, dose=50, seed=1)  # sums scatter by ±0.14
    assert ds.intensity.sum("beam").max() > 1.05
    refine(ds, geo, ug, 25.0, progress=False, max_iter=2)


def test_counts_true_normalises_and_keeps_the_dose(case, tmp_path):
    geo, ug = case
    ds = larbed.simulate(geo, ug, 25.0, dose=2e4, seed=5)
    table = ds.copy()
    rng = np.random.default_rng(0)
    per_tilt = rng.uniform(0.5, 2.0, geo.n_tilts) * 2e4  # a beam current that drifts
    table["intensity"] = ("tilt", "beam"), rng.poisson(ds.intensity_noise_free.values * per_tilt[:, None]).astype(float)
    path = tmp_path / "counts.csv"
    larbed.write_csv(table, path)
    with pytest.raises(ValueError, match="counts"):
        refine(larbed.read_csv(path, geo), geo, ug, 25.0, progress=False)
    data = larbed.read_csv(path, geo, counts=True)
    np.testing.assert_allclose(data.intensity.sum("beam"), 1.0, rtol=1e-12)
    np.testing.assert_allclose(data.dose.values, table.intensity.sum("beam").values)
    res = refine(data, geo, ug, 25.0, progress=False)
    assert res.weights == "poisson" and res.chi2 < 2 and res.trustworthy
    # the same through netCDF
    nc = tmp_path / "counts.nc"
    larbed.save_pattern(table, nc)
    back = larbed.load_pattern(nc, counts=True)
    np.testing.assert_array_equal(back.intensity.values, data.intensity.values)


# ------------------------------------------------------------------------------ resources
def test_chunked_normal_equations_equal_the_full_jacobian(case, monkeypatch):
    geo, ug = case
    data = larbed.simulate(geo, ug, 25.0).intensity.values
    full = refine(data, geo, ug * 1.04, 24.0, progress=False, max_iter=3)
    monkeypatch.setattr(refine_jacobian, "JACOBIAN_CHUNK_BYTES", 1)  # one tilt per chunk
    chunked = refine(data, geo, ug * 1.04, 24.0, progress=False, max_iter=3)
    np.testing.assert_allclose(chunked.ug.values, full.ug.values, rtol=1e-9, atol=1e-14)
    scale = np.abs(full.covariance.values).max()
    np.testing.assert_allclose(chunked.covariance.values, full.covariance.values, rtol=1e-7,
                               atol=1e-9 * scale)


def test_finished_refinement_is_reused(case, tmp_path):
    geo, ug = case
    data = larbed.simulate(geo, ug, 25.0, dose=1e5, seed=1)
    path = tmp_path / "r.json"
    first = refine(data, geo, ug * 1.02, 24.0, checkpoint=path, progress=False)
    assert json.loads(path.read_text())["finished"]
    again = refine(data, geo, ug * 1.02, 24.0, checkpoint=path, progress=False)
    np.testing.assert_array_equal(again.ug.values, first.ug.values)
    np.testing.assert_array_equal(again.ug_error.values, first.ug_error.values)
    assert again.thickness_nm == first.thickness_nm and again.chi2 == first.chi2
    assert again.n_iterations == first.n_iterations
    with pytest.raises(ValueError, match="another pattern or other settings"):
        refine(data, geo, ug * 1.05, 24.0, checkpoint=path, progress=False)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        refine(data, geo, ug * 1.02, 24.0, checkpoint=path, progress=False)


def test_intensity_jacobian_refuses_what_does_not_fit(srtio3, monkeypatch):
    from larbed import resources

    geo = larbed.Geometry(srtio3, 120, (0, 0, 1), 69, 1009, 70)
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 2**28)
    with pytest.raises(resources.ResourceError, match="would need .* of memory; 256 MiB are available.*refine"):
        larbed.intensity_jacobian(geo, larbed.compute_ug(srtio3, geo), 30.0)


def test_many_beams_build_quickly_and_correctly(srtio3):
    geo = larbed.Geometry(srtio3, 120, (0, 0, 1), 2000, 1, 70)
    hkl = geo.reflection_hkl
    assert len({tuple(h) for h in hkl.tolist()}) == len(hkl)  # one per Friedel pair
    # every off-diagonal element points to g_n − g_m or its negative
    diff = geo.hkl[5] - geo.hkl[17]
    q, sgn = geo.pair_index[5, 17], geo.pair_sign[5, 17]
    np.testing.assert_array_equal(sgn * hkl[q], diff)


# ------------------------------------------------------------------------------ threads
def test_thread_setting_is_honoured_by_the_kernels(case, monkeypatch):
    import numba

    from larbed import threads

    geo, ug = case
    seen = []
    real = numba.set_num_threads

    def spy(n):
        seen.append(n)
        real(n)

    monkeypatch.setattr(numba, "set_num_threads", spy)
    larbed.set_num_threads(1)
    try:
        larbed.simulate(geo, ug, 20.0)
        refine(larbed.simulate(geo, ug, 20.0), geo, ug, 20.0, progress=False, max_iter=1)
        assert seen and seen[0] == 1 and set(seen[::2]) == {1}
        assert threads.num_threads() == 1
    finally:
        larbed.set_num_threads(None)
    with pytest.raises(ValueError, match="positive integer"):
        larbed.set_num_threads(0)


def test_thread_environment_variable():
    code = "import larbed; print(larbed.get_num_threads())"
    env = {**os.environ, "LARBED_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "1"
    env["LARBED_NUM_THREADS"] = "lots"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "LARBED_NUM_THREADS" in bad.stderr


def test_thickness_scan_in_tilt_chunks_equals_the_direct_scan(case, monkeypatch):
    geo, ug = case
    data = larbed.simulate(geo, ug, 31.0)
    direct = larbed.thickness_scan(data, geo, ug, np.arange(20, 40, 0.5))
    monkeypatch.setattr(refine_jacobian, "SCAN_CHUNK_BYTES", 8 * 40 * 9 * 3)  # three tilts per chunk
    chunked = larbed.thickness_scan(data, geo, ug, np.arange(20, 40, 0.5))
    np.testing.assert_allclose(chunked.values, direct.values, rtol=1e-10, atol=1e-13)
    assert chunked.attrs["best_thickness_nm"] == direct.attrs["best_thickness_nm"] == 31.0


def test_large_refinement_runs_in_bounded_memory(srtio3):
    """125 000 tilts × 69 beams would need 35 GB as one Jacobian; the chunked normal equations
    keep refine within the data arrays plus one chunk (estimate checked, not run: it takes long)."""
    from larbed import resources

    geo = larbed.Geometry(srtio3, 120, (0, 0, 1), 69, 1, 70)
    big = type("G", (), {"n_tilts": 125_000, "n_beams": 69, "n_reflections": geo.n_reflections})()
    full = resources.estimate_jacobian(big)
    chunk = max(1, refine_jacobian.JACOBIAN_CHUNK_BYTES // (8 * 69 * (2 * (2 * geo.n_reflections + 2) + 4)))
    chunked = resources.estimate_jacobian(big, chunk_tilts=chunk)
    assert full.memory_bytes > 30e9 and chunked.memory_bytes < 2e9


def test_iteration_estimate_follows_the_reduced_kernels(case, caplog):
    """The reduced kernels have no column per reflection: their estimate does not grow with the
    reflections, is below the full Jacobian's, scales with the points of a tilt spread, and is the
    one refine logs."""
    import logging

    from larbed import resources

    geo, ug = case
    few = type("G", (), {"n_tilts": 1000, "n_beams": 61, "n_reflections": 200})()
    many = type("G", (), {"n_tilts": 1000, "n_beams": 61, "n_reflections": 2000})()
    red = resources.estimate_jacobian(few, 40, reduced=True)
    assert resources.estimate_jacobian(many, 40, reduced=True).seconds == red.seconds
    assert resources.estimate_jacobian(many, 40).seconds > 3 * red.seconds
    one = resources.estimate_jacobian(few, 1, reduced=True)  # JᵀJ negligible: per-tilt work only
    seven = resources.estimate_jacobian(few, 1, reduced=True, points_per_tilt=7)
    assert 6.99 * one.seconds < seven.seconds <= 7 * one.seconds
    data = larbed.simulate(geo, ug, 30.0)
    with caplog.at_level(logging.INFO, logger="larbed.refinement.api"):
        larbed.refine(data, geo, ug, 29.0, real=True, symmetry="crystal", max_iter=1,
                      progress=False, log_warnings=False)
    line = next(r.getMessage() for r in caplog.records if "per iteration" in r.getMessage())
    est = resources.estimate_jacobian(geo, int(line.split(" free parameters")[0].split()[-1]),
                                      reduced=True)
    assert f"about {est.seconds:.3g} s" in line


def test_fit_stopped_while_moving_is_flagged_not_converged(case, tmp_path):
    """A refinement cut off by max_iter while t and U_g still move by many standard errors says
    so (untrustworthy), also when the finished run is reused from its checkpoint; run to
    convergence, the same fit has no such warning."""
    from larbed.trust import drift_warning

    geo, ug = case
    data = larbed.simulate(geo, ug, 30.0, dose=1e5, seed=0)
    kw = dict(real=True, symmetry="crystal", progress=False, log_warnings=False, poisson_passes=0)
    cut = larbed.refine(data, geo, ug * 1.1, 27.0, max_iter=3, checkpoint=tmp_path / "c.json", **kw)
    flag = [w for w in cut.warnings if w.kind == "not_converged"]
    assert len(flag) == 1 and flag[0].untrustworthy and "t by" in flag[0] and "max_iter=3" in flag[0]
    assert not cut.trustworthy and not cut.converged
    again = larbed.refine(data, geo, ug * 1.1, 27.0, max_iter=3, checkpoint=tmp_path / "c.json", **kw)
    assert "reused from the checkpoint" in again.message and not again.converged
    third = larbed.refine(data, geo, ug * 1.1, 27.0, max_iter=3, checkpoint=tmp_path / "c.json", **kw)
    assert third.message == again.message and third.message.count("reused") == 1
    moving = [w.split(" while ")[1] for w in again.warnings if w.kind == "not_converged"]
    assert moving == [flag[0].split(" while ")[1]]
    done = larbed.refine(data, geo, ug * 1.1, 27.0, max_iter=100, **kw)
    assert done.converged and not [w for w in done.warnings if w.kind == "not_converged"]
    # the rule itself: judged only after a max_iter stop, in standard errors, inf not judged
    recent = [np.zeros(3), np.array([0.5, 10.0, 0.1])]
    sigma = np.array([0.1, np.inf, 1.0])
    w = drift_warning(recent, sigma, ["a", "b", "t"], "stopped after max_iter=5 iterations")
    assert w.kind == "not_converged" and "a by 0.5 (5 σ)" in w and "b by" not in w and "t by" not in w
    assert drift_warning(recent, sigma * 10, ["a", "b", "t"], "stopped after max_iter=5") is None
    assert drift_warning(recent, sigma, ["a", "b", "t"], "converged") is None


def test_kernel_threads_is_reentrant_and_holds_blas_at_one_thread():
    from threadpoolctl import threadpool_info

    from larbed.threads import kernel_threads

    def blas():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    with kernel_threads():
        assert blas() == {1}
        with kernel_threads():
            assert blas() == {1}
        assert blas() == {1}  # the inner exit changed nothing


def test_pattern_of_forbidden_beams_only_says_so():
    """MgO [111], 7 beams: 000 and the six {1 0 -1}, all absent in an F-centred cell (U_g = 0)."""
    mgo = larbed.Crystal((4.212, 4.212, 4.212, 90, 90, 90), [("Mg", (0, 0, 0)), ("O", (0.5, 0.5, 0.5))],
                         space_group="F m -3 m")
    geo = larbed.Geometry(mgo, 80, (1, 1, 1), 7, 13, 30)
    ug = larbed.compute_ug(mgo, geo)
    with pytest.raises(ValueError, match=r"no diffracted intensity.*forbidden reflections.*n_beams"):
        refine(larbed.simulate(geo, ug, 30.0), geo, ug, 30.0, progress=False)


def test_reduced_chi2_counts_only_informative_data():
    """χ² ≈ 1 for a correct model at Poisson noise also where beams are forbidden (Si [110]: 8 of
    15 beams of the F-centred cell carry nothing) and under an analytic per-tilt scale (one
    degree of freedom per tilt); before, these gave 0.5 and 0.9."""
    si = larbed.Crystal((5.431,) * 3 + (90, 90, 90), [("Si", (0, 0, 0))], space_group="F d -3 m")
    geo = larbed.Geometry(si, 200, (1, 1, 0), 15, 49, 30)
    ug = larbed.compute_ug(si, geo)
    kw = dict(progress=False, log_warnings=False)
    chi2 = [larbed.refine(larbed.simulate(geo, ug, 40.0, dose=1e6, seed=s), geo, ug * 1.02, 39.0,
                          **kw).chi2 for s in range(3)]
    assert 0.85 < np.mean(chi2) < 1.3  # 1.05–1.16 over four sets of three seeds
    xtal = larbed.Crystal.builtin("SrTiO3")
    geo = larbed.Geometry(xtal, 120, (0, 0, 1), 9, 197, 70)
    ug = larbed.compute_ug(xtal, geo)
    clean = larbed.simulate(geo, ug, 30.0).intensity.values
    chi2 = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        data = rng.poisson(clean * 1e6) / 1e6 * rng.uniform(0.7, 1.3, (geo.n_tilts, 1))
        chi2.append(larbed.refine(data, geo, ug * 1.02, 29.0, dose=1e6, **kw,
                                  measurement=larbed.Measurement(scale="per_tilt")).chi2)
    assert 0.94 < np.mean(chi2) < 1.08  # 0.97–1.01 over three sets of four seeds


def test_unphysical_ug_of_a_false_minimum_are_flagged():
    """Five of 21 simulated beams recorded over a narrow disc (30 mrad): the fit runs off to
    |U_g| of thousands of 1/Å² where unrecorded beams couple (R 3e-3); that is flagged 'bound'
    (untrustworthy), naming them. A closer start on a wide disc converges, unflagged."""
    from larbed.trust import UNPHYSICAL_FACTOR

    xtal = larbed.Crystal.builtin("SrTiO3")
    full = larbed.Geometry(xtal, 120, (0, 0, 1), 21, 49, 30)
    geo = larbed.Geometry(xtal, 120, (0, 0, 1), 21, 49, 30,
                          recorded=[tuple(h) for h in full.hkl[:5].tolist()])
    ug = larbed.compute_ug(xtal, geo)
    kw = dict(symmetry="crystal", progress=False, log_warnings=False)
    bad = larbed.refine(larbed.simulate(geo, ug, 30.0), geo, ug * 1.05, 32.0, **kw)
    limit = UNPHYSICAL_FACTOR * np.abs(ug.values).max()
    assert np.abs(bad.ug.values).max() > limit
    flag = [w for w in bad.warnings if w.kind == "bound" and "independent-atom" in w]
    assert len(flag) == 1 and not bad.trustworthy and "U(" in flag[0]
    # all 21 beams but the same narrow disc: U(4 2 0) still runs off (0.7 1/Å², R 3e-3)
    narrow = larbed.refine(larbed.simulate(full, ug, 30.0), full, ug * 1.05, 32.0, **kw)
    assert any(w.kind == "bound" and "U(4 2 0)" in w for w in narrow.warnings)
    wide = larbed.Geometry(xtal, 120, (0, 0, 1), 21, 197, 100)
    data = larbed.simulate(wide, ug, 30.0)
    good = larbed.refine(data, wide, ug * 1.02, 30.5, **kw)
    assert good.trustworthy and good.r_factor < 1e-8 and not good.warnings
    # from farther away even the wide disc runs off; the warning's advice (set them back to
    # the start and refine again) reaches the solution
    off = larbed.refine(data, wide, ug * 1.05, 32.0, **kw)
    assert any(w.kind == "bound" and "set them back" in w for w in off.warnings)
    vals = off.ug.values.copy()
    runaway = np.abs(vals) > limit
    vals[runaway] = ug.values[runaway] * 1.05
    again = larbed.refine(data, wide, off.ug.copy(data=vals), off.thickness_nm, **kw)
    assert again.r_factor < 1e-8 and abs(again.thickness_nm - 30.0) < 1e-6 and not again.warnings
