"""The tilt spread of the measurement model: a disc of incident directions averaged at each tilt."""

from __future__ import annotations

import math

import numpy as np
import pytest

import larbed
from larbed import Measurement
from larbed.measurement import average_spread, disc_rule
from larbed.refinement.jacobian import ForwardModel
from larbed.refinement.measured import MeasuredModel


def _disc_moment(i: int, j: int) -> float:
    """Mean of x^i y^j over the unit disc."""
    if i % 2 or j % 2:
        return 0.0
    a, b = i // 2, j // 2
    dfact = lambda k: math.prod(range(2 * k - 1, 0, -2))  # noqa: E731  (2k − 1)!!
    return dfact(a) * dfact(b) / (2 ** (a + b) * math.factorial(a + b + 1))


def test_disc_rule_is_exact_to_degree_five():
    nodes, weights = disc_rule()
    assert weights.sum() == pytest.approx(1.0, abs=1e-15)
    x, y = nodes.T
    for deg in range(6):
        for i in range(deg + 1):
            assert np.sum(weights * x**i * y**(deg - i)) == pytest.approx(
                _disc_moment(i, deg - i), abs=1e-15), (i, deg - i)
    # degree 6 is beyond it: the rule is what it claims, no more
    assert abs(np.sum(weights * x**6) - _disc_moment(6, 0)) > 1e-3


def test_spread_pattern_is_the_mean_over_a_disc_of_tilts(srtio3, geo, ug):
    rho = 1.5
    got = larbed.simulate(geo, ug, 30.0, measurement=Measurement.with_values(
        tilt_spread_mrad=rho)).intensity.values
    nodes, weights = disc_rule()
    # the 7 points, each a plain simulation at shifted tilts
    manual = sum(w * larbed.simulate(larbed.Geometry(
        srtio3, 120, (0, 0, 1), 13, tilts_mrad=geo.tilt_mrad + rho * u), ug, 30.0).intensity.values
        for u, w in zip(nodes, weights, strict=True))
    np.testing.assert_allclose(got, manual, rtol=0, atol=1e-13)
    # a dense polar average over the disc (Gauss–Legendre in r², 24 × 32 points)
    r2, wr = np.polynomial.legendre.leggauss(24)
    r = np.sqrt(0.5 * (r2 + 1.0))
    phi = np.arange(32) * 2 * np.pi / 32
    pts = (rho * r[:, None, None] * np.stack([np.cos(phi), np.sin(phi)], 1)[None]).reshape(-1, 2)
    wts = np.repeat(0.5 * wr, 32) / 32
    dense = larbed.simulation.simulate_spread(
        geo, ug, 30.0, (geo.tilt_mrad[:, None] + pts[None]).reshape(-1, 2), wts).intensity.values
    plain = larbed.simulate(geo, ug, 30.0).intensity.values
    effect = np.abs(dense - plain).max()
    assert effect > 1e-3  # the spread matters at this radius
    assert np.abs(got - dense).max() < 0.02 * effect
    # Σ_b I stays 1 without absorption
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)


def test_average_spread_groups_points_tilt_by_tilt():
    vals = np.arange(2 * 3 * 4 * 2, dtype=float).reshape(2, 12, 2)  # (thickness, 4 tilts·3, beams)
    w = np.array([0.5, 0.25, 0.25])
    got = average_spread(vals, w)
    assert got.shape == (2, 4, 2)
    np.testing.assert_allclose(got[1, 2], w @ vals[1, 6:9])


SPREAD_FORMS = [
    Measurement(scale="per_tilt", background="smooth", tilt_map="affine", tilt_spread="disc"),
    Measurement(scale="global", background="flat", tilt_spread="disc"),
    Measurement(scale="none", absorption="proportional", tilt_map="shift", tilt_spread="disc"),
]


@pytest.mark.parametrize("meas", SPREAD_FORMS, ids=lambda m: m.describe())
def test_spread_jacobian_matches_finite_differences(srtio3, meas, check_jacobian):
    rng = np.random.default_rng(3)
    geo = larbed.Geometry(srtio3, 120, (0, 0, 1), 9, tilts_mrad=rng.uniform(-40, 40, (6, 2)))
    ug = larbed.compute_ug(srtio3, geo)
    p = geo.n_reflections
    absorbing = meas.absorption != "none"
    core = ForwardModel(geo, float(ug.attrs["u0"]), absorbing, absorbing)
    data = larbed.simulate(geo, ug, 20.0).intensity.values
    model = MeasuredModel(core, meas, data)
    xm = meas.start_vector(geo) + rng.normal(0, 0.01, meas.n_parameters(geo))
    xm[-1] = 2.0  # ρ [mrad]
    x = np.concatenate([ug.values.real, np.zeros(p), [20.0], [0.05] if absorbing else [], xm])
    inten, jac = check_jacobian(model, x, [0, 3, *range(2 * p, model.n_x)])
    # rows of the normal equations' chunks give the same numbers as the whole
    part, jpart = model.jacobian(x, slice(2, 5))
    np.testing.assert_allclose(part, inten[2:5], rtol=0, atol=1e-14)
    np.testing.assert_allclose(jpart, jac[2:5], rtol=0, atol=1e-12 * np.abs(jac).max())


def test_refine_recovers_the_tilt_spread(geo, ug):
    """Dose 1e5, ρ = 2.5 mrad with a per-tilt scale, a background and a tilt shift: ρ within
    3 standard errors (started at the default 1 mrad), t within 0.5 nm, χ² ≈ 1."""
    truth = Measurement.with_values(background=0.003, tilt_offset_mrad=[0.4, -0.2],
                                    tilt_spread_mrad=2.5)
    pattern = larbed.simulate(geo, ug, 30.0, measurement=truth, dose=1e5, seed=4)
    fit = Measurement(scale="per_tilt", background="flat", tilt_map="shift", tilt_spread="disc")
    res = larbed.refine(pattern, geo, ug * 1.02, 29.0, measurement=fit, real=True,
                        symmetry="crystal", progress=False)
    m = res.measurement
    assert m.attrs["tilt_spread_form"] == "disc"
    assert abs(float(m.tilt_spread_mrad) - 2.5) < 3 * float(m.tilt_spread_mrad_error)
    assert float(m.tilt_spread_mrad_error) < 0.5
    assert abs(res.thickness_nm - 30.0) < 0.5
    assert res.chi2 == pytest.approx(1.0, abs=0.2)
    # without the spread in the model the same data fit worse
    plain = larbed.refine(pattern, geo, ug * 1.02, 29.0, real=True, symmetry="crystal",
                          progress=False, measurement=Measurement(
                              scale="per_tilt", background="flat", tilt_map="shift"))
    assert plain.chi2 > 1.5 * res.chi2


def test_spread_round_trips_through_a_result_file(tmp_path, geo, ug):
    from larbed.refinement.result import RefinementResult

    truth = Measurement.with_values(background=0.001, tilt_spread_mrad=2.0)
    pattern = larbed.simulate(geo, ug, 30.0, measurement=truth)
    res = larbed.refine(pattern, geo, ug, 30.0, real=True, symmetry="crystal", progress=False,
                        max_iter=3, measurement=Measurement(background="flat", tilt_spread="disc",
                                                            values=truth.values))
    assert float(res.measurement.tilt_spread_mrad) == pytest.approx(2.0, abs=1e-6)
    assert res.r_factor < 1e-8
    larbed.save_pattern(res.to_dataset(), tmp_path / "r.nc")
    back = RefinementResult.from_dataset(larbed.load_pattern(tmp_path / "r.nc"))
    assert back.measurement.attrs["tilt_spread_form"] == "disc"
    assert float(back.measurement.tilt_spread_mrad) == float(res.measurement.tilt_spread_mrad)
    # a file written before the tilt spread existed (four forms) still reads
    ds = res.to_dataset()
    ds = ds.drop_vars([v for v in ds.data_vars if "tilt_spread" in v])
    ds.attrs["measurement_forms"] = list(ds.attrs["measurement_forms"])[:4]
    old = RefinementResult.from_dataset(ds)
    assert old.measurement.attrs["tilt_spread_form"] == "none"
    assert old.measurement.attrs["background_form"] == "flat"
    ds.attrs["measurement_forms"] = ["none"] * 2
    with pytest.raises(ValueError, match="measurement_forms has 2 entries"):
        RefinementResult.from_dataset(ds)


def test_thickness_scan_starts_from_the_spread(geo, ug):
    meas = Measurement.with_values(background=0.002, tilt_spread_mrad=3.0)
    pattern = larbed.simulate(geo, ug, 31.0, measurement=meas)
    scan = larbed.thickness_scan(pattern, geo, ug, np.arange(28.0, 34.0, 0.5), measurement=meas)
    assert scan.attrs["best_thickness_nm"] == 31.0 and scan.attrs["best_value"] < 1e-12


@pytest.mark.parametrize("kwargs, match", [
    ({"tilt_spread_mrad": 0.0}, "tilt_spread_mrad must be > 0"),
    ({"tilt_spread_mrad": -1.0}, "tilt_spread_mrad must be > 0"),
    ({"tilt_spread_mrad": np.nan}, "NaN"),
])
def test_bad_tilt_spread(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Measurement.with_values(**kwargs)


def test_bad_tilt_spread_form_and_cli_spec():
    from larbed.cli.determine import parse_measurement

    with pytest.raises(ValueError, match="tilt_spread='gauss'"):
        Measurement(tilt_spread="gauss")
    m = parse_measurement("scale=per_tilt,tilt_spread=disc")
    assert m.tilt_spread == "disc" and m.n_parameters(None) == 1
    assert m.labels(None) == ["tilt spread ρ [mrad]"]
    with pytest.raises(ValueError, match="tilt_spread"):
        parse_measurement("spread=disc")


def test_cli_refine_with_a_tilt_spread(tmp_path, srtio3, capsys):
    from larbed.cli import main

    rng = np.random.default_rng(2)
    geo = larbed.Geometry(srtio3, 120, (0, 0, 1), 13, tilts_mrad=rng.uniform(-40, 40, (50, 2)))
    truth = Measurement(scale="per_tilt", tilt_spread="disc",
                        values=Measurement.with_values(tilt_spread_mrad=3.0).values)
    pattern = larbed.simulate(geo, larbed.compute_ug(srtio3, geo), 25.0, measurement=truth)
    csv = tmp_path / "p.csv"
    larbed.write_csv(pattern, csv)
    code = main(["refine", "--pattern", str(csv), "--crystal", "SrTiO3", "--voltage", "120",
                 "--zone-axis", "0", "0", "1", "--measurement", "scale=per_tilt,tilt_spread=disc",
                 "--out", str(tmp_path / "out"), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "tilt_spread=disc" in text
    line = next(ln for ln in text.splitlines() if "tilt_spread_mrad:" in ln)
    assert float(line.split(":")[1].split("±")[0]) == pytest.approx(3.0, abs=0.01)


def test_simulate_spread_rejects_bad_points_and_weights(geo, ug):
    from larbed.simulation import simulate_spread

    pts = np.repeat(geo.tilt_mrad, 2, axis=0)
    with pytest.raises(ValueError, match="sum to 1"):
        simulate_spread(geo, ug, 30.0, pts, [0.5, 0.6])
    with pytest.raises(ValueError, match="sum to 1"):
        simulate_spread(geo, ug, 30.0, pts, [1.5, -0.5])
    with pytest.raises(ValueError, match="points_mrad must be 49 × 2"):
        simulate_spread(geo, ug, 30.0, pts[:-1], [0.5, 0.5])
    bad = pts.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        simulate_spread(geo, ug, 30.0, bad, [0.5, 0.5])
    # two coincident points per tilt with weights ½, ½ are the plain pattern
    np.testing.assert_allclose(simulate_spread(geo, ug, 30.0, pts, [0.5, 0.5]).intensity.values,
                               larbed.simulate(geo, ug, 30.0).intensity.values, atol=1e-13)
