"""Starts and the global search of determine: kinematic starts, staged and continued refinement,
and both differential-evolution engines."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import larbed
from larbed.determination.search import ENGINES, global_search
from larbed.symmetry import groups_from_operations, pattern_operations

starts = importlib.import_module("larbed.determination.starts")

#: Noise-free data and the exact model: a found solution fits to round-off.
EXACT_R = 1e-6
#: Thickness found to this [nm].
THICKNESS_ATOL_NM = 0.05


@pytest.fixture(scope="module")
def small(small_case):
    return small_case


@pytest.mark.parametrize("engine", ENGINES)
def test_both_engines_reach_the_solution(small, engine):
    """The search alone (no kinematic starts), probed by refinements, finds the solution."""
    geo, truth, data = small
    inten = data.intensity.values
    groups = groups_from_operations(geo, pattern_operations(inten, geo))
    hits = []

    def probe(values) -> bool:
        out = starts.refine_start(inten, geo, values, groups, (5.0, 60.0), 40, None)
        hits.append(out["r_factor"])
        return out["r_factor"] < EXACT_R

    res = global_search(inten, geo, groups, thickness_range_nm=(5.0, 60.0), seed=3,
                        time_budget_s=120, probe=probe, engine=engine)
    assert res["stopped"] == "probe reached the solution" and min(hits) < EXACT_R
    assert res["engine"] == engine and res["population"].shape[1] == geo.n_reflections
    assert np.all(np.diff(res["history"]) <= 1e-15)  # the best R never gets worse


@pytest.mark.parametrize("engine", ENGINES)
def test_search_keeps_its_seeds_and_budget(small, engine):
    geo, truth, data = small
    inten = data.intensity.values
    groups = groups_from_operations(geo, pattern_operations(inten, geo))
    res = global_search(inten, geo, groups, seed=0, time_budget_s=0.0, init=[truth.values],
                        engine=engine)
    assert res["stopped"].startswith("time budget") and res["generations"] == 1
    # the truth was seeded: it is the best member (up to the bounds' clipping: |U| < 0.1)
    assert res["energies"][0] < 1e-6
    with pytest.raises(ValueError, match="unknown search engine"):
        global_search(inten, geo, groups, engine="nelder-mead")


def test_staged_refinement_refines_low_orders_first(small, monkeypatch):
    """Many groups: low-order reflections first, then all (ZnO needs it; forced here)."""
    geo, truth, data = small
    monkeypatch.setattr(starts, "STAGED_MIN_GROUPS", 1)
    seen = []
    real_refine = starts.refine

    def spy(*args, refine_reflections=None, **kw):
        seen.append(None if refine_reflections is None else int(np.sum(refine_reflections)))
        return real_refine(*args, refine_reflections=refine_reflections, **kw)

    monkeypatch.setattr(starts, "refine", spy)
    groups = [larbed.symmetry.SymmetryGroup(((i, 1),), False) for i in range(geo.n_reflections)]
    start = truth * (1 + np.random.default_rng(2).uniform(-0.2, 0.2, truth.size))
    res = starts.refine_staged(data, geo, start, 20.5, groups, 40)
    assert seen[-1] is None and seen[0] < seen[1] < geo.n_reflections  # growing sets, then all
    assert res.r_factor < EXACT_R


def test_kinematic_magnitudes_separate_strong_from_weak(srtio3):
    """sqrt of the tilt-averaged beam intensity ranks |U_g|: h + k even (strong) above odd (weak)."""
    from larbed.determination.starts import group_magnitudes, kinematic_starts
    from larbed.symmetry import symmetry_groups

    geo = larbed.Geometry(srtio3, 120, (0, 0, 1), 25, 49, 70)
    truth = larbed.compute_ug(srtio3, geo).values
    data = larbed.simulate(geo, truth, 25.0).intensity.values
    groups = symmetry_groups(geo, "crystal")
    size = group_magnitudes(data, geo, groups)
    true_size = np.array([abs(truth[g.members[0][0]]) for g in groups])
    is_beam = size > 0  # reflections that are beams; the others have no intensity of their own
    strong, weak = is_beam & (true_size > 0.01), is_beam & (true_size < 0.005)
    assert strong.sum() >= 3 and weak.sum() >= 2
    assert size[strong].min() > 5 * size[weak].max()
    starts = kinematic_starts(data, geo, groups, thickness_range_nm=(5, 60))
    assert 1 <= len(starts) <= 2 and starts[0].shape == (geo.n_reflections,)
    assert np.all(starts[0].imag == 0)  # real starts; the weak groups at zero
    weak_refl = [g.members[0][0] for g, w in zip(groups, weak, strict=True) if w]
    assert np.all(starts[0][weak_refl] == 0)
    with pytest.raises(ValueError, match="shape"):
        kinematic_starts(data[:, :9], geo, groups)
    bad = data.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        kinematic_starts(bad, geo, groups)
    with pytest.raises(ValueError, match="thickness_range"):
        kinematic_starts(data, geo, groups, thickness_range_nm=(60, 5))


def test_data_continuation_widens_the_basin(srtio3):
    """From U_g ±50 % and t 4 nm off, direct least squares stalls in a false minimum (R ~ 0.3);
    following the data from the start's own pattern reaches the solution's basin."""
    from larbed.structure_factors import input_ug
    from larbed.symmetry import symmetry_groups

    geo = larbed.Geometry(srtio3, 120, (0, 0, 1), 13, 113, 70)
    truth = larbed.compute_ug(srtio3, geo).values
    data = larbed.simulate(geo, truth, 40.0).intensity.values
    groups = symmetry_groups(geo, "crystal")
    rng = np.random.default_rng(11)
    start = truth.copy()
    for g in groups:
        idx = [q for q, _ in g.members]
        start[idx] *= 1 + 0.5 * rng.uniform(-1, 1)
    direct = starts.refine_staged(data, geo, input_ug(geo, start), 44.0, groups, 40)
    cont = starts.refine_continuation(data, geo, start, 44.0, groups, 40)
    assert direct.r_factor > 0.1
    assert cont.r_factor < 1e-2 and abs(cont.thickness_nm - 40.0) < THICKNESS_ATOL_NM
    # _refine_start (thickness scan first) keeps the better of direct and continued fits
    out = starts.refine_start(data, geo, start, groups, (30.0, 60.0), 40, continuation_r=1e-3)
    assert out["r_factor"] < 1e-2
