"""determine: U_g and thickness from a pattern alone; checkpoints, Dask, CLI (issue 4)."""

from __future__ import annotations

import glob
import importlib
import os

import numpy as np
import pytest

import larbed
from larbed.cli import main
from larbed.metrics import poisson_deviance

# ``larbed.determine`` is the function; the module is reached through importlib
starts = importlib.import_module("larbed.determination.starts")
polish = importlib.import_module("larbed.determination.polish")

#: Noise-free data and the exact model: a found solution fits to round-off.
EXACT_R = 1e-6
#: Thickness found to this [nm].
THICKNESS_ATOL_NM = 0.05
#: Strong U_g (|U| > 0.01 1/Å²) found to this relative accuracy after aligning the origin.
STRONG_RTOL = 1e-6
#: Truth within 3 standard errors for at least this fraction of the parameters (12 here).
COVERAGE_3SIGMA = 0.9
#: A resumed run reproduces the uninterrupted one to round-off.
SAME_ANSWER_ATOL = 1e-12


@pytest.fixture(scope="module")
def small(small_case):
    return small_case


def test_determine_from_pattern_alone(small):
    geo, truth, data = small
    # kinematic=False: the global search alone (the kinematic starts are tested below)
    res = larbed.determine(data, geo, progress=False, search_time_s=60, kinematic=False)
    assert res.r_factor < EXACT_R
    assert abs(res.thickness_nm - 20.0) < THICKNESS_ATOL_NM
    assert not any(s.startswith("kinematic") for s in res.history.start_source.values)
    cmp = res.compare(truth, 20.0)
    strong = np.abs(cmp.true.values) > 0.01
    assert np.max(cmp.relative.values[strong]) < STRONG_RTOL
    assert len(res.symmetry) == 8  # 4mm detected in the pattern
    assert res.ug.dims == ("reflection",) and {"h", "k", "l", "gx", "gy"} <= set(res.ug.coords)
    assert "start_r_factor" in res.history and "refine_r_factor" in res.history


def test_determine_noisy_pattern_reaches_noise_floor(small):
    geo, truth, _ = small
    data = larbed.simulate(geo, truth, 20.0, dose=1e5, seed=2)
    res = larbed.determine(data, geo, progress=False, search_time_s=60)
    r_truth = larbed.r_factor(data.intensity, data.intensity_noise_free)
    assert res.r_factor <= 1.1 * r_truth
    assert res.refinement.weights == "poisson"
    cmp = res.compare(truth)
    z = np.r_[cmp.z_real.values, cmp.z_imag.values]
    z = z[np.isfinite(z)]  # Im U_g are fixed (real, centrosymmetric)
    assert len(z) == geo.n_reflections
    assert np.mean(z <= 3) >= COVERAGE_3SIGMA


def test_interrupted_determine_resumes(tmp_path, small, monkeypatch):
    geo, truth, data = small
    start = truth * (1 + np.random.default_rng(3).uniform(-0.2, 0.2, truth.size))
    kwargs = dict(start=start, search=False, n_perturbed=3, progress=False)
    reference = larbed.determine(data, geo, out_dir=tmp_path / "ref", **kwargs)

    real = starts.refine_start
    calls = {"n": 0}

    def failing(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kw)

    monkeypatch.setattr(starts, "refine_start", failing)
    with pytest.raises(KeyboardInterrupt):
        larbed.determine(data, geo, out_dir=tmp_path / "run", **kwargs)
    done = glob.glob(os.path.join(tmp_path, "run", "determine_checkpoint", "start_*.json"))
    assert len(done) == 2  # the two finished starts survived

    counted = {"n": 0}

    def counting(*args, **kw):
        counted["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(starts, "refine_start", counting)
    resumed = larbed.determine(data, geo, out_dir=tmp_path / "run", **kwargs)
    assert counted["n"] == 2  # only the two unfinished starts ran again
    assert abs(resumed.thickness_nm - reference.thickness_nm) < SAME_ANSWER_ATOL
    np.testing.assert_allclose(resumed.ug.values, reference.ug.values, atol=SAME_ANSWER_ATOL)
    assert resumed.r_factor < EXACT_R


def test_changed_settings_do_not_resume(tmp_path, small):
    geo, truth, data = small
    larbed.determine(data, geo, start=truth, search=False, n_perturbed=0, progress=False,
                     out_dir=tmp_path)
    with pytest.raises(ValueError, match="other data or settings"):
        larbed.determine(data, geo, start=truth, search=False, n_perturbed=1, progress=False,
                         out_dir=tmp_path)


def test_result_save_plot_and_compare(tmp_path, small):
    geo, truth, data = small
    res = larbed.determine(data, geo, start=truth * 1.1, search=False, progress=False)
    paths = res.save(tmp_path) + res.plot(tmp_path, ug_true=truth)
    assert all(os.path.getsize(p) > 0 for p in paths)
    back = larbed.load_pattern(os.path.join(tmp_path, "determine_result.nc"))
    np.testing.assert_allclose(back.intensity.values, res.refinement.fit.intensity.values)
    shifted = larbed.shift_origin(geo, truth, (1.1, 0.3))  # the truth in another origin
    cmp = res.compare(shifted)
    assert np.nanmax(cmp.relative.values[np.abs(truth.values) > 0.01]) < STRONG_RTOL
    # the CLI table: an exact fit's σ are round-off, so |Δ|/σ is not printed
    from larbed.cli.determine import format_ug_table

    text = format_ug_table(res, truth)
    assert "exact fit" in text and len(text.splitlines()) == geo.n_reflections + 3
    noisy = larbed.determine(larbed.simulate(geo, truth, 20.0, dose=1e5, seed=4), geo, start=truth,
                             search=False, n_perturbed=0, progress=False)
    assert "exact fit" not in format_ug_table(noisy, truth)


def test_determine_bad_input(small):
    geo, truth, data = small
    with pytest.raises(ValueError, match="start"):
        larbed.determine(data, geo, start="random", progress=False)
    with pytest.raises(ValueError, match="thickness_range"):
        larbed.determine(data, geo, thickness_range_nm=(50, 10), progress=False)
    with pytest.raises(ValueError, match="Regressor"):
        larbed.determine(data, geo, start="model", model="ann", progress=False)
    bad = data.intensity.values.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        larbed.determine(bad, geo, progress=False)
    with pytest.raises(ValueError, match="no start"):
        larbed.determine(data, geo, search=False, kinematic=False, progress=False)


@pytest.mark.slow
def test_determine_with_dask_client_matches_sequential(small):
    distributed = pytest.importorskip("dask.distributed")
    geo, truth, data = small
    start = truth * (1 + np.random.default_rng(5).uniform(-0.2, 0.2, truth.size))
    kwargs = dict(start=start, search=False, n_perturbed=2, progress=False)
    seq = larbed.determine(data, geo, **kwargs)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=None) as client:
        par = larbed.determine(data, geo, client=client, **kwargs)
    np.testing.assert_allclose(par.ug.values, seq.ug.values, atol=SAME_ANSWER_ATOL)
    assert par.r_factor < EXACT_R


def test_cli_determine_pattern_file(tmp_path, small, capsys):
    geo, truth, data = small
    path = tmp_path / "pattern.nc"
    larbed.save_pattern(data, path)
    out = tmp_path / "out"
    code = main(["determine", "--pattern", str(path), "--out", str(out), "--no-progress",
                 "--search-time", "60"])
    text = capsys.readouterr().out
    assert code == 0
    assert "thickness: 20.000" in text and "true 20 nm" in text
    assert "1 1 0" in text  # the U_g table
    for name in ("determine_result.nc", "ug.nc", "pattern_vs_fit.png", "ug.png"):
        assert (out / name).exists()


def test_cli_determine_errors(tmp_path, capsys):
    assert main(["determine"]) == 2
    assert "PRESET" in capsys.readouterr().err
    csv = tmp_path / "x.csv"
    csv.write_text("h,k,l,tilt_x_mrad,tilt_y_mrad,intensity\n")
    assert main(["determine", "--pattern", str(csv)]) == 2
    assert "--geometry-from" in capsys.readouterr().err
    assert main(["determine", "--pattern", str(tmp_path / "missing.nc")]) == 2


@pytest.mark.slow
@pytest.mark.learn
def test_determine_with_task2_network_start(small):
    pytest.importorskip("tensorflow")
    geo, truth, data = small
    res = larbed.determine(
        data, geo, start="task2", model="ann", n_perturbed=1, progress=False, search_time_s=60,
        task2_iterations=2, task2_kwargs={"n_train": 8, "n_test": 4, "epochs": 2, "hidden": (16, 8, 8)},
    )
    assert res.r_factor < EXACT_R
    assert res.history.attrs["source"] == "task2-ann"
    assert any(s.startswith("task2") for s in res.history.start_source.values)


def test_kinematic_start_reaches_solution_without_search(small):
    geo, truth, data = small
    res = larbed.determine(data, geo, search=False, n_starts=1, progress=False)
    assert res.history.start_source.values[0].startswith("kinematic")  # best start
    assert res.r_factor < EXACT_R
    assert abs(res.thickness_nm - 20.0) < THICKNESS_ATOL_NM
    cmp = res.compare(truth, 20.0)
    strong = np.abs(cmp.true.values) > 0.01
    assert np.max(cmp.relative.values[strong]) < STRONG_RTOL


def test_poisson_polish_leaves_a_false_symmetry_centre(srtio3):
    """A fit around the pseudo-centre (½, 0) of SrTiO3 [001] (only the strong h + k even U_g obey
    4mm there) is a false minimum that unweighted R hardly separates from the right one; the Poisson
    polish moves the origin and ends at the lower deviance with reduced χ² ≈ 1."""
    from larbed.symmetry import symmetrize, symmetry_groups

    geo = larbed.Geometry(srtio3, 120, (0, 0, 1), 13, 113, 70)
    truth = larbed.compute_ug(srtio3, geo).values
    data = larbed.simulate(geo, truth, 15.0, dose=1e5, seed=1)
    groups = symmetry_groups(geo, "crystal")
    shift = np.linalg.inv(geo.reflection_basis) @ np.array([0.5, 0.0])
    false_start = symmetrize(truth * np.exp(2j * np.pi * (geo.reflection_xy @ shift)), groups)
    false_fit = larbed.refine(data, geo, false_start, 15.0, symmetry=groups, progress=False)
    inten = data.intensity.values
    dev_false = poisson_deviance(inten, false_fit.fit.intensity.values, 1e5)
    out = polish.polish_poisson(data, inten, geo, false_fit, groups, 1e5, 100, 120.0, None, False)
    dev = poisson_deviance(inten, out.fit.intensity.values, 1e5)
    assert dev < dev_false - polish.POISSON_DEVIANCE_GAIN
    assert out.chi2 < 1.3 < false_fit.chi2
    cmp_truth = larbed.refine(data, geo, truth, 15.0, symmetry=groups, progress=False)
    assert abs(out.r_factor - cmp_truth.r_factor) < 1e-6 * cmp_truth.r_factor


def test_poisson_deviance():
    obs = np.array([[0.5, 0.3, 0.2], [0.6, 0.4, 0.0]])
    assert poisson_deviance(obs, obs, 1e4) == pytest.approx(0.0, abs=1e-9)
    fit = obs * 1.01 + 1e-4
    d = poisson_deviance(obs, fit, 1e4)
    y, mu = 1e4 * obs, 1e4 * fit
    expected = 2 * np.sum(mu - y + np.where(y > 0, y * np.log(np.where(y > 0, y, 1) / mu), 0))
    assert d == pytest.approx(expected, rel=1e-12) and d > 0


def test_undetermined_imaginary_part_keeps_the_real_error_and_saves():
    """σ = inf (an undetermined combination) made ug_error NaN + inf·j, and its saved copy differ
    from it (NaN ≠ NaN). With the origin moved by a general phase, Re and Im mix: both are inf."""
    gan = larbed.Crystal((3.189, 3.189, 5.185, 90, 90, 120),
                         [("Ga", (0.33333, 0.66667, 0)), ("N", (0.33333, 0.66667, 0.377))],
                         space_group="P 63 m c")  # rounded coordinates: Im U_g ~ 1e-6, not 0
    geo = larbed.Geometry(gan, 120, (0, 0, 1), 13, 13, 40)
    truth = larbed.compute_ug(gan, geo)
    res = larbed.determine(larbed.simulate(geo, truth, 30.0), geo, start=truth * 1.02, search=False,
                           kinematic=False, n_perturbed=0, polish_weak=False, symmetry="crystal",
                           progress=False)
    assert "undetermined" in {w.kind for w in res.warnings}
    err = res.ug_error.values
    assert np.any(np.isinf(err.imag)) and not np.any(np.isnan(err.real) | np.isnan(err.imag))
    back = type(res).from_dataset(res.to_dataset(), geo)
    np.testing.assert_array_equal(back.ug_error.values, err)


def test_search_bound_follows_heavy_crystals():
    """The default search bound is 0.1 1/Å² for the presets (SrTiO3, ZnO) and 1.4 × the largest
    independent-atom |U_g| for heavy crystals, whose strong U_g exceed 0.1 (Au U_200 at 200 kV)."""
    from larbed.determination.search import UG_BOUND, default_ug_bound

    for name in ("SrTiO3-2", "ZnO-1"):
        assert default_ug_bound(larbed.presets.load(name).geometry) == UG_BOUND == 0.1
    au = larbed.Crystal((4.078,) * 3 + (90, 90, 90), [("Au", (0, 0, 0))], space_group="F m -3 m")
    geo = larbed.Geometry(au, 200, (0, 0, 1), 21, 49, 30)
    strongest = np.abs(larbed.compute_ug(au, geo).values).max()
    assert strongest > 0.15 and default_ug_bound(geo) == pytest.approx(1.4 * strongest)
