"""Baselines (mean and ridge), the two configurations and bad input to the networks (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest

import larbed
from larbed.learn import TaskInputs, generate_dataset, split_targets
from larbed.learn.baselines import RidgeMap, mean_baseline_targets

#: A noise-free linear map with more samples than features is recovered to round-off of the
#: smallest ridge parameter tried (1e-8·trace(K)/n).
LINEAR_RECOVERY_ATOL = 1e-5
#: R is recomputed here exactly as the task does it (same simulation): float round-off only.
R_RTOL = 1e-9


def test_ridge_recovers_a_linear_map_and_ignores_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)) * np.array([0.05, 1, 10, 1, 1, 1, 1, 0.1])  # scales over decades
    w = rng.normal(size=(8, 3))
    y = x @ w + np.array([0.1, -2.0, 3.0])
    ridge = RidgeMap.fit(x, y)
    x_new = rng.normal(size=(5, 8))
    np.testing.assert_allclose(ridge.predict(x_new), x_new @ w + [0.1, -2.0, 3.0],
                               atol=LINEAR_RECOVERY_ATOL)
    # targets that do not depend on x: cross-validation picks heavy shrinkage → about the mean
    y_noise = rng.normal(size=(60, 3))
    noise = RidgeMap.fit(x, y_noise)
    assert noise.lam > 100 * ridge.lam
    spread = np.abs(noise.predict(x_new) - y_noise.mean(axis=0)).max()
    assert spread < 0.5 * y_noise.std(axis=0).min()
    with pytest.raises(ValueError, match="finite"):
        RidgeMap.fit(np.where(x > 2, np.nan, x), y)


pytestmark = pytest.mark.learn


@pytest.fixture(scope="module")
def inputs13(small_geometry, small_ug):
    # SrTiO3 [001], 13 beams × 13 tilts, 30 nm: the strong 110 and 200 beams depend on t
    return TaskInputs(larbed.simulate(small_geometry, small_ug, 30.0), small_geometry, small_ug,
                      30.0, "small")


def _r(geo, i_exp, targets):
    ug, t = split_targets(targets, (5.0, 100.0))
    return larbed.r_factor(i_exp, larbed.simulate(geo, ug, float(t)))


@pytest.mark.slow
@pytest.mark.parametrize("config", ["default", "thesis"])
def test_task1_baselines_are_the_r_of_their_predictions(inputs13, config):
    pytest.importorskip("tensorflow")
    from larbed.learn import run_task1
    from larbed.learn._common import KEY_T1_DATA

    scales = [0.01, 0.64]
    res = run_task1(inputs13, "ann", config=config, hidden=(32, 16, 41), scales=scales, seed=0, r_stop=2.0,
                    epochs=5, progress=False)
    h = res.history
    assert h.attrs["config"] == config
    geo, i_exp = inputs13.geometry, inputs13.pattern
    for k, s in enumerate(scales):
        ds = generate_dataset(geo, 140, channel="deviation", ug0=inputs13.ug_true.values,
                              thickness0_nm=30.0, scale=s,
                              seed=np.random.SeedSequence(0, spawn_key=(KEY_T1_DATA, k)),
                              progress=False)
        y = ds.targets.values[:100]
        # the mean baseline is the R of predicting the mean training target, nothing else
        assert float(h.r_mean_baseline[k]) == pytest.approx(
            _r(geo, i_exp, mean_baseline_targets(y)), rel=R_RTOL)
        x = np.swapaxes(ds.intensity.values[:100], 1, 2).reshape(100, -1)
        lin = RidgeMap.fit(x, y).predict(
            inputs13.intensity().T.reshape(1, -1))[0]
        assert float(h.r_linear_baseline[k]) == pytest.approx(_r(geo, i_exp, lin), rel=R_RTOL)
    # physics: at 1 % deviation the intensities respond linearly to U_g and t, so the ridge map
    # reads the thickness (±5 nm jitter) that the mean cannot: far below the mean baseline
    assert h.r_linear_baseline.values[0] < 0.2 * h.r_mean_baseline.values[0]
    if config == "default":
        # the default network starts from that linear read-out: it beats the mean baseline
        assert h.r_factor.values[0] < 0.2 * h.r_mean_baseline.values[0]
    assert np.isfinite(h.attrs["threshold_mean_baseline"])


def test_task2_records_baselines_of_its_initial_set(inputs13):
    pytest.importorskip("tensorflow")
    from larbed.learn import run_task2
    from larbed.learn._common import KEY_T2_DATA
    from larbed.learn.dataset import resolve_reference

    res = run_task2(inputs13, "ann", hidden=(32, 16, 41), iterations=2, n_train=20, n_test=5,
                    epochs=2, loop_epochs=1, progress=False)
    a = res.history.attrs
    assert a["config"] == "default"
    ds = generate_dataset(inputs13.geometry, 25, channel="random",
                          reference=resolve_reference(inputs13.geometry, None),
                          seed=np.random.SeedSequence(0, spawn_key=(KEY_T2_DATA,)), progress=False)
    mean = mean_baseline_targets(ds.targets.values[:20])
    assert a["r_mean_baseline"] == pytest.approx(_r(inputs13.geometry, inputs13.pattern, mean),
                                                 rel=R_RTOL)
    assert np.isfinite(a["r_linear_baseline"])


def test_bad_input_to_a_regressor(tmp_path, small_geometry, srtio3):
    pytest.importorskip("tensorflow")
    from larbed.learn import Regressor, model_start

    ds = generate_dataset(small_geometry, 12, seed=1, progress=False)
    reg = Regressor("ann", small_geometry, hidden=(8, 4, 41))
    x, y = reg.inputs(ds.intensity.values), ds.targets.values
    bad = x.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        reg.fit(bad, y, 1, np.random.default_rng(0))
    y_bad = y.copy()
    y_bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        reg.prepare(x, y_bad)
    reg.fit(x, y, 1, np.random.default_rng(0))
    # a checkpoint of other settings: other hidden sizes
    reg.save_state(tmp_path / "a.npz")
    other = Regressor("ann", small_geometry, hidden=(16, 4, 41))
    with pytest.raises(ValueError, match="do not match this ANN"):
        other.load_state(tmp_path / "a.npz")
    # the same number of beams and tilts but another tilt range: refused by the network start
    wide = larbed.Geometry(srtio3, small_geometry.voltage_kv, (0, 0, 1), 13, 13, 100)
    start = model_start(reg)
    pat = larbed.simulate(wide, larbed.compute_ug(srtio3, wide), 30.0)
    with pytest.raises(ValueError, match="another geometry"):
        start(pat, wide)
    ug, t, info = start(larbed.simulate(small_geometry, larbed.compute_ug(srtio3, small_geometry),
                                        30.0), small_geometry)
    assert ug.shape == (small_geometry.n_reflections,) and 5 <= t <= 100
    with pytest.raises(ValueError, match="shape"):
        reg.predict(np.zeros((2, 7)))


def test_default_network_starts_as_the_ridge_map_and_thesis_is_spec(small_geometry):
    pytest.importorskip("tensorflow")
    from larbed.learn import Regressor
    from larbed.learn.models import LINEAR_READOUT, ann_weight_count, build_ann

    ds = generate_dataset(small_geometry, 30, seed=4, progress=False)
    reg = Regressor("ann", small_geometry, hidden=(16, 8, 41))
    x, y = reg.inputs(ds.intensity.values), ds.targets.values
    reg.fit(x[:24], y[:24], 0, np.random.default_rng(0))  # 0 epochs: standardise + read-out only
    ridge = RidgeMap.fit(x[:24].astype(float), y[:24])
    # float32 network against the float64 ridge: agreement to a small fraction of the spread
    spread = np.where(y[:24].std(axis=0) > 0, y[:24].std(axis=0), 1.0)  # some targets constant
    err = np.abs(reg.predict(x[24:]) - ridge.predict(x[24:].astype(float))) / spread
    assert err.max() < 1e-2
    assert not reg.model.get_layer(LINEAR_READOUT).trainable
    # the thesis configuration is SPEC §5: tanh on every layer, no read-out, thesis sizes
    thesis = build_ann(13 * 13, 41, config="thesis")
    assert [lay.activation.__name__ for lay in thesis.layers[1:]] == ["tanh"] * 4
    assert thesis.count_params() == ann_weight_count(13 * 13, 41)
    assert all(lay.name != LINEAR_READOUT for lay in thesis.layers)
