"""Space groups, structure parameters and refine_structure (issue 11): physics, targets, bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import larbed
from larbed import Crystal, Geometry, compute_ug, refine_structure, simulate
from larbed.spacegroup import SpaceGroup, ug_ties
from larbed.structure.model import SiteModel
from larbed.structure.parameters import StructureMap, select_parameters
from larbed.structure_factors import structure_factor

#: Electrons per tilt of the noisy patterns (the issue's target dose).
DOSE = 1e5
#: |refined − true| ≤ this many standard errors (the issue's criterion).
N_SIGMA = 3.0
#: The hybrid target: σ of the free U_110, U_200 at most this fraction of their values.
UG_SIGMA_RTOL = 2e-3
#: The bonding change put on U_110 and U_200 of the synthetic SrTiO3 (the issue's +1 %).
BONDING_CHANGE = 0.01
#: Room-temperature B of SrTiO3 [Å²] (SPEC §9): Sr, Ti, O.
B_SRTIO3 = {"Sr1": 0.41, "Ti1": 0.32, "O1": 0.63}
#: Noise-free data and the exact model: the fit ends at round-off, far below this R.
EXACT_R = 1e-8
#: Analytic ∂U_g/∂p vs central differences of step FD_STEP: agreement (relative to max |∂U|).
FD_STEP = 1e-6
FD_RTOL = 1e-6
#: A coordinate perturbation of the issue's test [Å].
SHIFT_ANGSTROM = 0.05
#: Rutile TiO2 (P4₂/mnm): O on (x, x, 0) — one free coordinate, in the (001) projection plane.
RUTILE_CELL = (4.594, 4.594, 2.959, 90, 90, 90)
RUTILE_X = 0.305


def _rutile(x=RUTILE_X, b=(0.4, 0.5)):
    return Crystal(RUTILE_CELL, [("Ti", (0, 0, 0), 1.0, b[0]), ("O", (x, x, 0), 1.0, b[1])],
                   space_group="P 42/m n m", name="rutile")


def _bumped(crystal, geometry, reflections, factor):
    """IAM U_g of ``crystal`` with the symmetry families of ``reflections`` scaled by ``factor``."""
    ug = compute_ug(crystal, geometry)
    vals = ug.values.copy()
    hkl = geometry.reflection_hkl
    wanted = {tuple(r) for r in reflections}
    for tie in ug_ties(crystal.space_group, hkl):
        if any(tuple(hkl[m]) in wanted or tuple(-hkl[m]) in wanted for m in tie.members):
            vals[list(tie.members)] *= factor
    return ug.copy(data=vals)


# --------------------------------------------------------------------------- space groups


def test_builtins_carry_their_space_groups_and_asymmetric_units():
    sto, zno = Crystal.builtin("SrTiO3"), Crystal.builtin("ZnO")
    assert (sto.space_group.number, zno.space_group.number) == (221, 186)
    assert [(s.label, s.multiplicity) for s in sto.sites] == [("Sr1", 1), ("Ti1", 1), ("O1", 3)]
    assert [(s.label, s.multiplicity) for s in zno.sites] == [("Zn1", 2), ("O1", 2)]
    # SrTiO3: every coordinate fixed by symmetry; ZnO: z only (the polar axis)
    assert all(s.coordinates.shape[1] == 0 for s in sto.sites)
    assert [s.coordinate_pivots for s in zno.sites] == [(2,), (2,)]


def test_space_group_by_number_and_name_complete_the_cell():
    by_name = _rutile()
    by_number = Crystal(RUTILE_CELL, [("Ti", (0, 0, 0)), ("O", (RUTILE_X, RUTILE_X, 0))],
                        space_group=136)
    assert len(by_name.atoms) == len(by_number.atoms) == 6  # Ti 2a + O 4f
    o1 = by_name.sites[1]
    assert o1.multiplicity == 4 and o1.coordinate_pivots == (0,)
    np.testing.assert_allclose(o1.coordinates[:, 0], [1, 1, 0])  # x = y moves together
    # the same structure factors as the explicitly listed cell
    full = Crystal(RUTILE_CELL, [(a.symbol, a.position, 1.0, a.b_iso) for a in by_name.atoms])
    hkl = [(1, 1, 0), (2, 1, 1), (1, 0, 1), (3, 1, 0)]
    np.testing.assert_allclose(structure_factor(by_name, hkl, 200), structure_factor(full, hkl, 200),
                               rtol=1e-12, atol=1e-15)


def test_cif_with_space_group_reads_the_asymmetric_unit(tmp_path):
    path = tmp_path / "rutile.cif"
    path.write_text("\n".join([
        "data_rutile", "_cell_length_a 4.594", "_cell_length_b 4.594", "_cell_length_c 2.959",
        "_cell_angle_alpha 90", "_cell_angle_beta 90", "_cell_angle_gamma 90",
        "_symmetry_space_group_name_H-M 'P 42/m n m'",
        "loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x",
        "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_B_iso_or_equiv",
        "Ti1 Ti 0 0 0 0.4", "O1 O 0.305 0.305 0 0.5", ""]))
    xtal = Crystal.from_cif(path)
    assert xtal.space_group.number == 136
    assert [(s.label, s.multiplicity) for s in xtal.sites] == [("Ti1", 2), ("O1", 4)]
    np.testing.assert_allclose([a.b_iso for a in xtal.atoms], [0.4] * 2 + [0.5] * 4, rtol=1e-6)


def test_space_group_bad_input():
    with pytest.raises(ValueError, match="unknown space group"):
        SpaceGroup.from_spec("P 7 q")
    with pytest.raises(ValueError, match="1-230"):
        SpaceGroup.from_spec(231)
    with pytest.raises(ValueError, match="does not fit the cell"):
        Crystal((4.0, 4.0, 5.0, 90, 90, 90), [("Si", (0, 0, 0))], space_group="P m -3 m")


# --------------------------------------------------------------------------- ∂U_g/∂p


@pytest.mark.parametrize("crystal", ["rutile_aniso", "triclinic"])
def test_structure_factor_derivatives_match_central_differences(crystal, make_crystal):
    if crystal == "triclinic":
        xtal = make_crystal("triclinic")
        aniso = {"O2"}
    else:
        base = _rutile()
        xtal = Crystal(base.cell, [base.atoms[0], larbed.Atom("O", base.atoms[2].position, 0.9,
                                                              0.0, (0.008, 0.008, 0.005, 0.002, 0, 0))],
                       space_group=base.space_group)
        aniso = set()
    geo = Geometry(xtal, 200, (0, 0, 1), 21, 5, 30)
    model = SiteModel(xtal, geo, aniso=aniso)
    u0, jac = model.evaluate(model.p0)
    # the site model reproduces the independent-atom U_g of the whole cell
    np.testing.assert_allclose(u0, structure_factor(xtal, geo.reflection_hkl, 200), rtol=1e-10,
                               atol=1e-14)
    fd = np.zeros_like(jac)
    for i in range(model.n_raw):
        step = np.zeros(model.n_raw)
        step[i] = FD_STEP
        fd[:, i] = (model.evaluate(model.p0 + step, False)[0]
                    - model.evaluate(model.p0 - step, False)[0]) / (2 * FD_STEP)
    assert np.max(np.abs(fd - jac)) <= FD_RTOL * np.max(np.abs(jac))


def test_structure_map_dx_is_the_derivative_of_x():
    xtal = _rutile()
    geo = Geometry(xtal, 200, (0, 0, 1), 21, 5, 30)
    model = SiteModel(xtal, geo)
    chosen, _ = select_parameters(None, model, geo.zone_axis)
    select = np.zeros((model.n_raw, len(chosen)))
    select[chosen, np.arange(len(chosen))] = 1.0
    from larbed.structure.parameters import free_ug_groups

    smap = StructureMap(model, geo, select, free_ug_groups([(1, 1, 0)], geo, xtal), 20.0, True,
                        None, False)
    q = smap.q0 + 1e-3 * np.arange(smap.n_q)
    fd = np.stack([(smap.x(q + e * FD_STEP) - smap.x(q - e * FD_STEP)) / (2 * FD_STEP)
                   for e in np.eye(smap.n_q)], axis=1)
    np.testing.assert_allclose(smap.dx(q), fd, atol=FD_RTOL * np.max(np.abs(fd)))
    np.testing.assert_allclose(smap.q(smap.x(q)), q, rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------- the targets


@pytest.mark.slow
def test_hybrid_srtio3_recovers_b_and_bonding_ug_within_3_sigma():
    """The issue's target: B = (0.41, 0.32, 0.63) Å², U_110 and U_200 +1 % from the IAM, dose 1e5,
    13 beams × 441 tilts: B and the two U_g within 3σ, σ(U) ≤ 0.2 % (reached: ≈ 0.012 %)."""
    truth = Crystal.builtin("SrTiO3", debye_waller=True)
    geo = Geometry(truth, 120, (0, 0, 1), 13, 441, 70)
    ug_true = _bumped(truth, geo, [(1, 1, 0), (2, 0, 0)], 1 + BONDING_CHANGE)
    pattern = simulate(geo, ug_true, 30.0, dose=DOSE, seed=1)
    res = refine_structure(pattern, geo, Crystal.builtin("SrTiO3"), 29.5,
                           free_ug=[(1, 1, 0), (2, 0, 0)], progress=False)
    cmp = res.compare(truth, ug_true, 30.0)
    assert set(res.labels) == {"B(Sr1)", "B(Ti1)", "B(O1)", "Re U(1 1 0)", "Re U(2 0 0)", "t"}
    assert float(cmp.z.max()) <= N_SIGMA, cmp.to_dataframe()
    rel = res.free_ug.error.values.real / np.abs(res.free_ug.value.values)
    assert np.all(rel <= UG_SIGMA_RTOL), rel
    # the data see the bonding change: it is many σ away from the IAM
    assert np.all(np.abs(res.free_ug.change.values.real) / rel > 10)
    assert res.trustworthy and 0.8 < res.chi2 < 1.2
    for site, b in B_SRTIO3.items():
        value, error = res.value(f"B({site})")
        assert abs(value - b) <= N_SIGMA * error
    assert np.isnan(res.r_free)


def test_in_plane_coordinate_refines_back_noise_free_and_within_3_sigma_at_dose():
    truth = _rutile()
    dx = SHIFT_ANGSTROM / (RUTILE_CELL[0] * np.sqrt(2))  # x = y: the move is along [110]
    start = _rutile(RUTILE_X + dx)
    geo = Geometry(truth, 200, (0, 0, 1), 21, 49, 50)
    ug = compute_ug(truth, geo)
    exact = refine_structure(simulate(geo, ug, 25.0), geo, start, 24.0, progress=False)
    assert exact.r_factor <= EXACT_R
    assert exact.value("x(O1)")[0] == pytest.approx(RUTILE_X, abs=1e-9)
    assert exact.crystal.atoms[2].position[0] == pytest.approx(RUTILE_X, abs=1e-9)
    noisy = refine_structure(simulate(geo, ug, 25.0, dose=DOSE, seed=5), geo, start, 24.0,
                             progress=False)
    z = noisy.compare(truth, None, 25.0).z
    assert float(z.max()) <= N_SIGMA, noisy.compare(truth, None, 25.0).to_dataframe()


def test_anisotropic_displacements_and_occupancy_refine_back_noise_free():
    """Rutile O with U^ij (U11 = U22, U12 allowed by the site symmetry m.mm) and occupancy 0.9,
    from an isotropic, fully occupied start: the in-plane U^ij and the occupancy come back;
    U33 (along the zone axis) enters no ZOLZ U_g and is held, with a warning."""
    u6 = (0.009, 0.009, 0.006, 0.003, 0.0, 0.0)
    truth = Crystal(RUTILE_CELL, [larbed.Atom("Ti", (0, 0, 0), 1.0, 0.4),
                                  larbed.Atom("O", (RUTILE_X, RUTILE_X, 0), 0.9, 0.0, u6)],
                    space_group="P 42/m n m")
    geo = Geometry(truth, 200, (0, 0, 1), 21, 49, 50)
    res = refine_structure(simulate(geo, compute_ug(truth, geo), 25.0), geo, _rutile(0.30, (0.4, 0.6)),
                           24.5, free=["xyz", "b_iso(Ti1)", "u_aniso(O1)", "occupancy(O1)"],
                           progress=False)
    assert res.labels == ["x(O1)", "B(Ti1)", "U11(O1)", "U12(O1)", "occ(O1)", "t"]
    assert "U33(O1)" in res.fixed and any(w.kind == "undetermined" for w in res.warnings)
    assert res.r_factor <= EXACT_R
    cmp = res.compare(truth, None, 25.0)
    np.testing.assert_allclose(cmp.found.values, cmp.true.values, rtol=1e-9)
    o = res.crystal.atoms[2]
    np.testing.assert_allclose(np.array(o.u_aniso)[[0, 1, 3]], [0.009, 0.009, 0.003], rtol=1e-9)
    assert o.occupancy == pytest.approx(0.9, rel=1e-9)


def test_anisotropic_displacements_within_3_sigma_at_dose():
    """The same refinement at dose 1e5, pooled over three seeds: the in-plane U^ij, the
    occupancy, x, B(Ti) and t within 3σ for ≥ 95 % of the values (18 in all); U33 stays held."""
    u6 = (0.009, 0.009, 0.006, 0.003, 0.0, 0.0)
    truth = Crystal(RUTILE_CELL, [larbed.Atom("Ti", (0, 0, 0), 1.0, 0.4),
                                  larbed.Atom("O", (RUTILE_X, RUTILE_X, 0), 0.9, 0.0, u6)],
                    space_group="P 42/m n m")
    geo = Geometry(truth, 200, (0, 0, 1), 21, 49, 50)
    ug = compute_ug(truth, geo)
    z = []
    for seed in (1, 2, 3):
        res = refine_structure(simulate(geo, ug, 25.0, dose=DOSE, seed=seed), geo,
                               _rutile(0.30, (0.4, 0.6)), 24.5,
                               free=["xyz", "b_iso(Ti1)", "u_aniso(O1)", "occupancy(O1)"],
                               progress=False)
        assert "U33(O1)" in res.fixed
        cmp = res.compare(truth, None, 25.0)
        assert cmp.sizes["parameter"] == 6 and np.all(np.isfinite(cmp.error.values))
        assert np.all(cmp.error.values < 0.1 * np.maximum(np.abs(cmp.true.values), 1e-3))
        z += list(cmp.z.values)
    assert np.mean(np.asarray(z) <= N_SIGMA) >= 0.95, z
    assert 0.2 < np.sqrt(np.mean(np.square(z))) < 2.0, z  # errors neither tiny nor inflated


#: At dose 1e5 R on held-out tilts is the noise floor like R on the fitted ones (few parameters);
#: on 10 held-out tilts it scatters by ~±10 % (0.88–1.08 over three seeds): allow ±3 of that.
R_FREE_BAND = (0.7, 1.4)


def test_r_free_on_held_out_tilts():
    truth = _rutile()
    geo = Geometry(truth, 200, (0, 0, 1), 21, 49, 50)
    ug = compute_ug(truth, geo)
    exact = refine_structure(simulate(geo, ug, 25.0), geo, _rutile(0.3), 24.5, holdout=0.2,
                             progress=False)
    assert exact.r_free <= EXACT_R and exact.r_factor <= EXACT_R
    noisy = refine_structure(simulate(geo, ug, 25.0, dose=DOSE, seed=4), geo, _rutile(0.3), 24.5,
                             holdout=0.2, seed=1, progress=False)
    held = noisy.refinement.holdout_tilts  # not in the fit; R on them is r_free
    assert len(held) == round(0.2 * 49) == len(set(held.tolist()))
    fit = noisy.refinement.fit
    r_held = (np.abs(fit.observed.values[held] - fit.intensity.values[held]).sum()
              / fit.observed.values[held].sum())
    assert noisy.r_free == pytest.approx(r_held, rel=1e-12)
    assert noisy.refinement.r_free == pytest.approx(noisy.r_free, rel=1e-12)
    assert R_FREE_BAND[0] <= noisy.r_free / noisy.r_factor <= R_FREE_BAND[1]
    for bad in (-0.1, 0.6, float("nan")):
        with pytest.raises(ValueError, match="holdout"):
            refine_structure(simulate(geo, ug, 25.0), geo, truth, 25.0, holdout=bad, progress=False)


def test_p1_crystal_refines_with_a_symmetry_warning_and_the_origin_as_gauge():
    truth = _rutile()
    p1 = Crystal(truth.cell, [(a.symbol, a.position, a.occupancy, a.b_iso) for a in truth.atoms])
    geo = Geometry(truth, 200, (0, 0, 1), 13, 29, 50)
    res = refine_structure(simulate(geo, compute_ug(truth, geo), 25.0), geo, p1, 24.5,
                           free=["xyz"], progress=False)
    assert "symmetry" in [w.kind for w in res.warnings]
    assert res.r_factor <= EXACT_R
    # every z along [001] is held and reported; the in-plane ones were refined
    assert {f"z({s.label})" for s in p1.sites} <= set(res.fixed)
    assert {f"x({s.label})" for s in p1.sites} <= set(res.labels)


def test_zno_001_cannot_see_u_along_c_it_is_fixed_with_a_warning(caplog):
    truth = Crystal.builtin("ZnO", debye_waller=True)
    geo = Geometry(truth, 100, (0, 0, 1), 19, 29, 30)
    pattern = simulate(geo, compute_ug(truth, geo), 50.0)
    with caplog.at_level(logging.WARNING, logger="larbed.structure.api"):
        res = refine_structure(pattern, geo, Crystal.builtin("ZnO"), 49.0, free=["xyz", "b_iso"],
                               progress=False)
    assert {"z(Zn1)", "z(O1)"} <= set(res.fixed)
    assert "z(O1)" not in res.labels  # not returned with a meaningless error
    assert any(w.kind == "undetermined" and "z(O1)" in str(w) for w in res.warnings)
    assert "z(O1)" in caplog.text
    assert res.r_factor <= EXACT_R and res.thickness_nm == pytest.approx(50.0, abs=1e-6)
    # the default (free=None) reports them too
    default = refine_structure(pattern, geo, Crystal.builtin("ZnO"), 49.0, progress=False)
    assert {"z(Zn1)", "z(O1)"} <= set(default.fixed)


def test_result_crystal_parameters_xray_and_cif(tmp_path):
    truth = _rutile()
    geo = Geometry(truth, 200, (0, 0, 1), 21, 49, 50)
    ug = compute_ug(truth, geo)
    res = refine_structure(simulate(geo, ug, 25.0, dose=DOSE, seed=2), geo, _rutile(0.3), 24.5,
                           free_ug=1, progress=False)
    ds = res.parameters
    for label in res.labels:
        name = label.replace("(", "_").replace(")", "").replace(" ", "_")
        assert name in ds and f"{name}_error" in ds
    corr = ds.correlation.values
    np.testing.assert_allclose(np.diag(corr), 1.0)
    assert np.all(np.abs(corr) <= 1 + 1e-9)
    # the lowest allowed shell of rutile [001] is {110} (h00 with h odd is forbidden)
    assert list(res.free_ug.label.values) == ["1 1 0"]
    # X-ray equivalents: F_X(g) < number of electrons per cell (ΣZ = 2·22 + 4·8 = 76) and > 0
    fx = res.xray.values
    i110 = geo.reflection_labels().index("1 1 0")
    assert 0 < fx[i110].real < 76 and np.all(np.isfinite(res.xray_error.values))
    path = res.to_cif(tmp_path / "out.cif")
    text = open(path, encoding="utf-8").read()
    assert "_atom_site_fract_x" in text and "P 42/m n m" in text
    back = Crystal.from_cif(path)
    assert back.space_group.number == 136 and len(back.atoms) == 6
    assert back.atoms[2].position[0] == pytest.approx(res.value("x(O1)")[0], abs=1e-4)
    assert "(" in text.split("O1 O ")[1].split()[0]  # x(O1) written with its s.u.


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def sto_case():
    truth = Crystal.builtin("SrTiO3")
    geo = Geometry(truth, 120, (0, 0, 1), 9, 13, 70)
    return truth, geo, simulate(geo, compute_ug(truth, geo), 20.0)


def test_free_as_a_mapping_fix_and_tie(sto_case):
    truth, geo, pattern = sto_case
    res = refine_structure(pattern, geo, Crystal.builtin("SrTiO3", debye_waller=True), 20.0,
                           free={"Sr1": "b_iso", "O1": ["b_iso"]}, fix=["t"], progress=False)
    assert res.labels == ["B(Sr1)", "B(O1)"] and res.thickness_nm == 20.0
    tied = refine_structure(pattern, geo, Crystal.builtin("SrTiO3", debye_waller=True), 20.0,
                            tie=[("B(Sr1)", "B(Ti1)")], progress=False)
    assert tied.labels == ["B(Sr1)", "B(O1)", "t"]  # one value for both sites
    assert tied.r_factor <= EXACT_R  # the truth (B = 0 everywhere) is in the tied model
    assert tied.crystal.atoms[0].b_iso == pytest.approx(tied.crystal.atoms[1].b_iso, abs=1e-12)
    with pytest.raises(ValueError, match="mix parameter kinds"):
        refine_structure(pattern, geo, truth, 20.0, free=["b_iso", "occupancy(O1)"],
                         tie=[("B(Sr1)", "occ(O1)")], progress=False)


def test_bad_input_symmetry_fixed_parameters(sto_case):
    truth, geo, pattern = sto_case
    with pytest.raises(ValueError, match="fixes every coordinate of Sr1"):
        refine_structure(pattern, geo, truth, 20.0, free=["xyz(Sr1)"], progress=False)
    with pytest.raises(ValueError, match="fixes every coordinate of every site"):
        refine_structure(pattern, geo, truth, 20.0, free=["xyz"], progress=False)
    with pytest.raises(ValueError, match="fixed by the space group"):
        refine_structure(pattern, geo, truth, 20.0, fix=["x(O1)"], progress=False)
    with pytest.raises(ValueError, match="unknown parameter kind"):
        refine_structure(pattern, geo, truth, 20.0, free=["position"], progress=False)
    with pytest.raises(ValueError, match="no site"):
        refine_structure(pattern, geo, truth, 20.0, free=["b_iso(Xx9)"], progress=False)
    with pytest.raises(ValueError, match="degenerate"):
        refine_structure(pattern, geo, truth, 20.0, free=["b_iso", "b_global"], progress=False)


def test_bad_input_forbidden_free_ug():
    truth = _rutile()
    geo = Geometry(truth, 200, (0, 0, 1), 13, 13, 50)
    with pytest.raises(ValueError, match="forbidden reflection"):
        refine_structure(simulate(geo, compute_ug(truth, geo), 20.0), geo, truth, 20.0,
                         free_ug=[(1, 0, 0)], progress=False)


def test_bad_input_occupancy_outside_unit_interval():
    with pytest.raises(ValueError, match="occupancy"):
        Crystal((4, 4, 4, 90, 90, 90), [("Si", (0, 0, 0), 1.2)], space_group=221)
    with pytest.raises(ValueError, match="occupancy"):
        Crystal((4, 4, 4, 90, 90, 90), [("Si", (0, 0, 0), -0.1)])


def test_bad_input_crystal_and_geometry_with_different_cells(sto_case):
    truth, geo, pattern = sto_case
    other = Crystal((3.95, 3.95, 3.95, 90, 90, 90), [(a.symbol, a.position) for a in truth.atoms],
                    space_group=221)
    with pytest.raises(ValueError, match="differs from the geometry's"):
        refine_structure(pattern, geo, other, 20.0, progress=False)
    with pytest.raises(TypeError, match="larbed.Crystal"):
        refine_structure(pattern, geo, "SrTiO3", 20.0, progress=False)


def test_measurement_argument_must_be_a_measurement(sto_case):
    truth, geo, pattern = sto_case
    with pytest.raises(TypeError, match="larbed.Measurement"):
        refine_structure(pattern, geo, truth, 20.0, measurement=object(), progress=False)
    one_tilt = Geometry(truth, 120, (0, 0, 1), 9, tilts_mrad=[[3.0, 4.0]])
    with pytest.raises(ValueError, match="per_beam.*at least 2 measured tilts"):
        refine_structure(simulate(one_tilt, compute_ug(truth, one_tilt), 20.0), one_tilt, truth, 20.0,
                         measurement=larbed.Measurement(background="per_beam"), progress=False)


#: The measurement of the structure-with-measurement tests: scale, flat background, affine map.
MEAS_TRUE = {"scale": 0.8, "background": 0.003,
             "tilt_matrix": np.array([[1.01, 0.004], [-0.004, 0.995]]),
             "tilt_offset_mrad": np.array([0.6, -0.4])}


@pytest.mark.parametrize("dose", [None, DOSE], ids=["noise-free", "dose-1e5"])
def test_structure_and_measurement_refined_together(dose):
    """B of every site, t, the scale, background and tilt map jointly: exact without noise; at
    dose 1e5 the truth within 3σ for ≥ 95 % of the parameters (pooled over two seeds)."""
    truth = Crystal.builtin("SrTiO3", debye_waller=True)
    geo = Geometry(truth, 120, (0, 0, 1), 13, 49, 60)
    fit = larbed.Measurement(scale="global", background="flat", tilt_map="affine")
    pulls = []
    for seed in (3, 4) if dose else (0,):
        pattern = simulate(geo, compute_ug(truth, geo), 30.0, seed=seed, dose=dose,
                           measurement=larbed.Measurement.with_values(**MEAS_TRUE))
        res = refine_structure(pattern, geo, Crystal.builtin("SrTiO3"), 28.5, measurement=fit,
                               progress=False)
        m = res.measurement
        assert m.attrs["tilt_map_form"] == "affine" and "A_xy" in res.labels
        assert res.parameters["c_x_mrad"].attrs["units"] == "mrad"
        if dose is None:
            assert res.r_factor < EXACT_R
            for site, b in B_SRTIO3.items():
                assert res.value(f"B({site})")[0] == pytest.approx(b, abs=1e-9)
            for name, value in MEAS_TRUE.items():
                np.testing.assert_allclose(m[name].values, value, rtol=0, atol=1e-9)
            continue
        assert abs(res.thickness_nm - 30.0) < 0.5
        pulls += [(res.value(f"B({s})")[0] - b) / res.value(f"B({s})")[1] for s, b in B_SRTIO3.items()]
        pulls.append((res.thickness_nm - 30.0) / res.thickness_error_nm)
        for name, value in MEAS_TRUE.items():
            pulls += list(np.ravel((m[name].values - value) / m[f"{name}_error"].values))
    if dose:
        assert len(pulls) == 2 * 12
        assert np.mean(np.abs(pulls) < N_SIGMA) >= 0.95


# --------------------------------------------------------------------------- potential maps

#: Fourier analysis of the synthesised map returns its coefficients to round-off.
MAP_RTOL = 1e-10


def test_potential_map_is_the_fourier_synthesis_of_the_ug():
    from larbed.potential import VOLT_ANGSTROM2, potential_map, projected_atoms

    xtal = Crystal.builtin("SrTiO3", debye_waller=True)
    geo = Geometry(xtal, 120, (0, 0, 1), 25, 1, 10)
    ug = compute_ug(xtal, geo)
    n = 16
    vmap = potential_map(geo, ug, n=n, cells=1, absorption=0.1)
    assert VOLT_ANGSTROM2 == pytest.approx(150.412, rel=1e-5)  # h²/(2 m₀ e) [V·Å²]
    # analysis: V_g = mean over the cell of V(r) exp(−2πi g·r); g = m1 b1 + m2 b2 on the projected
    # cell's reciprocal basis
    coeff = np.fft.fft2(vmap.potential.values) / n**2
    m = np.rint(np.linalg.solve(geo.reflection_basis.T, geo.reflection_xy.T).T).astype(int)
    for i, (m1, m2) in enumerate(m):
        expected = VOLT_ANGSTROM2 / geo.gamma * ug.values[i]
        assert coeff[m1 % n, m2 % n] == pytest.approx(expected, rel=MAP_RTOL, abs=1e-12)
    np.testing.assert_allclose(vmap.absorptive.values, 0.1 * vmap.potential.values)
    # projected along [001]: Sr columns at (0, 0), Ti+O at (½, ½), O at (½, 0); (¼, 0) is empty
    v = vmap.potential.values
    sr, tio, o, empty = v[0, 0], v[n // 2, n // 2], v[n // 2, 0], v[n // 4, 0]
    assert min(sr, tio) > o > empty
    marks = projected_atoms(geo, xtal)
    assert ("Ti", 0.5, 0.5) in [(s, round(u, 9), round(v, 9)) for s, u, v in marks]


def test_potential_plots_return_figures():
    from larbed.plotting import plot_potential, plot_structure_potential

    truth = _rutile()
    geo = Geometry(truth, 200, (0, 0, 1), 21, 13, 50)
    ug = compute_ug(truth, geo)
    fig = plot_potential(geo, ug, crystal=truth, reference=ug * 0.99, absorption=0.05, n=8)
    assert len(fig.axes) == 6  # three maps with their colour bars
    res = refine_structure(simulate(geo, ug, 20.0), geo, truth, 20.0, free_ug=1, progress=False)
    assert len(plot_structure_potential(res, n=8).axes) == 4
    with pytest.raises(ValueError, match="grid points"):
        plot_potential(geo, ug, n=1)


# --------------------------------------------------------------------------- composition start

#: Wyckoff sets (multiplicity, free coordinates) of International Tables vol. A, letters a, b, …
WYCKOFF = {
    "P 63 m c": [(2, 1), (2, 1), (6, 2), (12, 3)],
    "P 42/m n m": [(2, 0), (2, 0), (4, 0), (4, 0), (4, 1), (4, 1), (4, 1), (8, 1), (8, 2), (8, 2),
                   (16, 3)],
    "F d -3 m": [(8, 0), (8, 0), (16, 0), (16, 0), (32, 1), (48, 1), (96, 1), (96, 2), (192, 3)],
    "P 21/c": [(2, 0)] * 4 + [(4, 3)],
}


@pytest.mark.parametrize("name", list(WYCKOFF))
def test_wyckoff_sets_match_the_international_tables(name):
    from larbed.structure.composition import wyckoff_sets

    sets = wyckoff_sets(SpaceGroup.from_spec(name))
    assert sorted((w.multiplicity, w.n_free) for w in sets) == sorted(WYCKOFF[name])


def test_composition_bad_input_and_formulae():
    from larbed.structure.composition import check_composition, parse_composition

    group = SpaceGroup.from_spec("P63mc")
    assert check_composition({"zn": 2, "O": 2}, group) == {"Zn": 2, "O": 2}
    assert parse_composition("Zn2O2") == {"Zn": 2, "O": 2}
    with pytest.raises(ValueError, match="does not fit the cell and space group P 63 m c"):
        check_composition({"Zn": 3, "O": 2}, group)  # 3 is no sum of 2, 6, 12
    with pytest.raises(ValueError, match="positive whole number"):
        check_composition({"Zn": 0, "O": 2}, group)
    with pytest.raises(ValueError, match="unknown element"):
        check_composition({"Qq": 2}, group)
    with pytest.raises(TypeError, match="mapping"):
        check_composition("Zn2O2", group)
    with pytest.raises(ValueError, match="not a formula"):
        parse_composition("Zn2-O2")
    # Pm-3m has two one-fold sites only: three different one-atom elements do not fit
    with pytest.raises(ValueError, match="does not fit"):
        check_composition({"Sr": 1, "Ti": 1, "Ba": 1}, SpaceGroup.from_spec(221))


@pytest.fixture(scope="module")
def zno_small():
    truth = Crystal.builtin("ZnO", debye_waller=True)
    geo = Geometry(truth, 100, (0, 0, 1), 31, 49, 30)
    return truth, geo, simulate(geo, compute_ug(truth, geo), 40.0)


def test_composition_start_finds_wurtzite_from_the_formula(zno_small):
    from larbed.structure.composition import composition_start

    truth, geo, pattern = zno_small
    res = composition_start(pattern, geo, {"Zn": 2, "O": 2})
    assert res.r_factor <= EXACT_R and res.thickness_nm == pytest.approx(40.0, abs=1e-6)
    # Zn and O share the (⅓, ⅔) columns, B found; z along c is not determined and is reported
    for site, b in (("Zn1", 0.6), ("O1", 0.6)):
        assert res.value(f"B({site})")[0] == pytest.approx(b, abs=1e-6)
    xy = {a.symbol: np.round(np.mod(a.position[:2], 1), 6) for a in res.crystal.asymmetric_unit}
    assert {tuple(v) for v in xy.values()} <= {(round(1 / 3, 6), round(2 / 3, 6)),
                                               (round(2 / 3, 6), round(1 / 3, 6))}
    assert {"z(Zn1)", "z(O1)"} <= set(res.fixed)


@pytest.mark.slow
def test_determine_and_cli_with_a_composition(zno_small, tmp_path, capsys):
    truth, geo, pattern = zno_small
    res = larbed.determine(pattern, geo, composition={"Zn": 2, "O": 2}, search=False,
                           progress=False)
    assert res.crystal is not None and res.structure.r_factor <= EXACT_R
    assert res.r_factor <= EXACT_R and abs(res.thickness_nm - 40.0) <= 1e-3
    with pytest.raises(ValueError, match="do not give start"):
        larbed.determine(pattern, geo, composition={"Zn": 2, "O": 2}, start=res.ug)
    path = tmp_path / "zno.nc"
    larbed.save_pattern(pattern, path)
    out = tmp_path / "out"
    from larbed import cli

    code = cli.main(["determine", "--pattern", str(path), "--composition", "Zn2O2",
                            "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "structure (P 63 m c" in text and (out / "structure.cif").exists()
    assert Crystal.from_cif(out / "structure.cif").space_group.number == 186


def test_structure_normal_equations_through_the_reduced_kernels_are_exact():
    """The structure map's skeleton lets the kernels give ∂I/∂x in real arithmetic, ∂x/∂q applied
    after: the same JᵀWJ and Jᵀr as the full Jacobian mapped chunk by chunk (hybrid U_g and a
    measurement model included, away from the start)."""
    from larbed.refinement.jacobian import WeightedProblem
    from larbed.structure.api import _build

    truth = Crystal.builtin("SrTiO3", debye_waller=True)
    geo = Geometry(truth, 120, (0, 0, 1), 13, 49, 60)
    pattern = simulate(geo, compute_ug(truth, geo), 30.0, measurement=larbed.Measurement.with_values(
        **MEAS_TRUE))
    su = _build(pattern, geo, Crystal.builtin("SrTiO3"), 29.0, free=None, free_ug=[(1, 1, 0)],
                fix=None, tie=None, refine_thickness=True, weights="none", dose=None,
                absorption=None, refine_absorption=False, parameterization="lobato", max_iter=5,
                measurement=larbed.Measurement(scale="per_tilt", background="smooth",
                                               tilt_map="affine"))
    prob = WeightedProblem(su.model, su.smap, su.exp, su.weights_for(None))
    assert prob.reduced
    q = su.smap.q0 + 0.01 * np.random.default_rng(0).normal(size=su.smap.n_q)
    _, inten, hess, grad = prob.normal_equations(q)
    su.model.core.reduction, su.model.core._kept = None, None  # the full complex Jacobian
    prob.reduced = False
    _, inten_full, hess_full, grad_full = prob.normal_equations(q)
    np.testing.assert_allclose(inten, inten_full, rtol=0, atol=1e-13)
    np.testing.assert_allclose(hess, hess_full, rtol=0, atol=1e-10 * np.abs(hess_full).max())
    np.testing.assert_allclose(grad, grad_full, rtol=0, atol=1e-10 * np.abs(grad_full).max())
