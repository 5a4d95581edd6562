"""Crystal: lattice geometry, built-in structures, CIF import."""

from __future__ import annotations

import math

import numpy as np
import pytest

from larbed import Crystal, Geometry, compute_ug
from larbed.structure_factors import structure_factor

#: CIF and built-in describe the same atoms; U_g differ only by float round-off of positions.
CIF_UG_ATOL = 1e-10
#: Lattice identities (a·a* = 1, volume formula) hold to double-precision round-off.
LATTICE_RTOL = 1e-12
#: B = 8π² U_iso: exact up to the decimal digits a CIF stores.
B_RTOL = 1e-9

SRTIO3_CIF = """\
data_SrTiO3_cif
_cell_length_a 3.905
_cell_length_b 3.905
_cell_length_c 3.905
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P m -3 m'
_space_group_IT_number 221
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
{extra_header}
Sr1 Sr2+ 0 0 0 1 {u_sr}
Ti1 Ti4+ 0.5 0.5 0.5 1 {u_ti}
O1 O2- 0.5 0.5 0 {occ_o} {u_o}
"""

ZNO_CIF = """\
data_ZnO
_cell_length_a 3.2498
_cell_length_b 3.2498
_cell_length_c 5.2066
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 120
_symmetry_space_group_name_H-M 'P 63 m c'
_space_group_IT_number 186
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Zn1 Zn 0.333333333333 0.666666666667 0
O1 O 0.333333333333 0.666666666667 0.3819
"""


def write_sto_cif(tmp_path, u_sr="", u_ti="", u_o="", occ_o="1", extra_header=""):
    path = tmp_path / "srtio3.cif"
    path.write_text(
        SRTIO3_CIF.format(u_sr=u_sr, u_ti=u_ti, u_o=u_o, occ_o=occ_o, extra_header=extra_header)
    )
    return path


def _sorted_atoms(xtal: Crystal):
    return sorted((a.symbol, *np.round(a.position, 9)) for a in xtal.atoms)


# ----------------------------------------------------------------------------- lattice
def test_triclinic_lattice_identities():
    cell = (4.1, 5.3, 6.2, 81.0, 97.0, 104.0)
    xtal = Crystal(cell, [("Si", (0, 0, 0))])
    real, rec = xtal.lattice_vectors, xtal.reciprocal_vectors
    np.testing.assert_allclose(real @ rec.T, np.eye(3), atol=LATTICE_RTOL)  # a_i·a*_j = δ_ij
    np.testing.assert_allclose(np.linalg.norm(real, axis=1), cell[:3], rtol=LATTICE_RTOL)

    def angle(u, v):
        return math.degrees(math.acos(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)))

    assert angle(real[1], real[2]) == pytest.approx(cell[3], rel=LATTICE_RTOL)
    assert angle(real[0], real[2]) == pytest.approx(cell[4], rel=LATTICE_RTOL)
    assert angle(real[0], real[1]) == pytest.approx(cell[5], rel=LATTICE_RTOL)
    ca, cb, cg = (math.cos(math.radians(x)) for x in cell[3:])
    volume = math.prod(cell[:3]) * math.sqrt(1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg)
    assert xtal.volume == pytest.approx(volume, rel=LATTICE_RTOL)
    # conventions of the module docstring: a along x, b in the xy plane
    assert real[0, 1] == 0 and real[0, 2] == 0 and real[1, 2] == 0


def test_builtin_structures_match_spec():
    sto = Crystal.builtin("SrTiO3")
    assert sto.cell == (3.905, 3.905, 3.905, 90.0, 90.0, 90.0)
    assert sto.volume == pytest.approx(3.905**3, rel=LATTICE_RTOL)
    assert [a.symbol for a in sto.atoms] == ["Sr", "Ti", "O", "O", "O"]
    assert all(a.b_iso == 0 for a in sto.atoms)
    zno = Crystal.builtin("zno")  # case-insensitive
    assert zno.volume == pytest.approx(math.sqrt(3) / 2 * 3.2498**2 * 5.2066, rel=LATTICE_RTOL)
    o_z = sorted(a.position[2] for a in zno.atoms if a.symbol == "O")
    assert o_z == pytest.approx([0.3819, 0.8819])
    warm = Crystal.builtin("SrTiO3", debye_waller=True)
    assert {a.symbol: a.b_iso for a in warm.atoms} == {"Sr": 0.41, "Ti": 0.32, "O": 0.63}
    assert {a.b_iso for a in Crystal.builtin("ZnO", debye_waller=True).atoms} == {0.6}


def test_attrs_round_trip():
    xtal = Crystal(
        (4.1, 5.3, 6.2, 81.0, 97.0, 104.0),
        [("Si", (0.1, 0.2, 0.3), 0.75, 0.5), ("O", (0.6, 0.15, 0.8))],
        name="toy",
    )
    back = Crystal.from_attrs(xtal.to_attrs())
    assert back.name == "toy" and back.cell == xtal.cell
    assert back.atoms == xtal.atoms
    # bit-for-bit, also for positions like 1/3 (a saved pattern must rebuild the same U_g)
    zno = Crystal.builtin("ZnO", debye_waller=True)
    assert Crystal.from_attrs(zno.to_attrs()).atoms == zno.atoms


def test_crystals_compare_by_value():
    """Crystal equality was identity: a crystal read back from a file, or the same built-in
    loaded twice, compared unequal."""
    zno = Crystal.builtin("ZnO", debye_waller=True)
    assert Crystal.builtin("ZnO", debye_waller=True) == zno
    assert Crystal.from_attrs(zno.to_attrs()) == zno
    assert Crystal.from_attrs(zno.to_attrs()).space_group.name == "P 63 m c"
    assert zno != Crystal.builtin("ZnO")  # other B
    assert zno != Crystal.builtin("SrTiO3")
    assert Crystal.builtin("SrTiO3") != "SrTiO3"


def test_debye_waller_and_occupancy_enter_structure_factor():
    hkl = np.array([[1, 0, 0], [1, 1, 0], [2, 1, 3]])
    b, occ = 0.8, 0.6
    bare = Crystal((4.0, 4.0, 4.0, 90, 90, 90), [("Ti", (0.1, 0.2, 0.3))])
    dressed = Crystal((4.0, 4.0, 4.0, 90, 90, 90), [("Ti", (0.1, 0.2, 0.3), occ, b)])
    g2 = np.sum((hkl / 4.0) ** 2, axis=1)
    np.testing.assert_allclose(
        structure_factor(dressed, hkl, 120.0),
        occ * np.exp(-b * g2 / 4) * structure_factor(bare, hkl, 120.0),
        rtol=1e-14,
    )


# ----------------------------------------------------------------------------- CIF
def test_cif_srtio3_equals_builtin(tmp_path):
    xtal = Crystal.from_cif(write_sto_cif(tmp_path))
    builtin = Crystal.builtin("SrTiO3")
    assert len(xtal.atoms) == 5  # 1 Sr + 1 Ti + 3 O from the asymmetric unit
    assert _sorted_atoms(xtal) == _sorted_atoms(builtin)
    assert xtal.cell == pytest.approx(builtin.cell)
    geo = Geometry(builtin, 120.0, (0, 0, 1), 25, 1, 70.0)
    ug_cif, ug_builtin = compute_ug(xtal, geo), compute_ug(builtin, geo)
    np.testing.assert_allclose(ug_cif.values, ug_builtin.values, rtol=0, atol=CIF_UG_ATOL)
    assert ug_cif.attrs["u0"] == pytest.approx(ug_builtin.attrs["u0"], abs=CIF_UG_ATOL)
    # off the [001] zone too (all three O sites matter for general hkl)
    hkl = np.array([[1, 2, 3], [2, 0, 1], [3, 1, 1]])
    np.testing.assert_allclose(
        structure_factor(xtal, hkl, 120.0),
        structure_factor(builtin, hkl, 120.0),
        rtol=0,
        atol=CIF_UG_ATOL,
    )


def test_cif_zno_equals_builtin(tmp_path):
    path = tmp_path / "zno.cif"
    path.write_text(ZNO_CIF)
    xtal = Crystal.from_cif(path)
    builtin = Crystal.builtin("ZnO")
    assert len(xtal.atoms) == 4
    hkl = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 2], [1, 1, 2], [2, -1, 3]])
    np.testing.assert_allclose(
        structure_factor(xtal, hkl, 100.0),
        structure_factor(builtin, hkl, 100.0),
        rtol=0,
        atol=1e-6,  # the CIF gives 1/3, 2/3 to 12 decimals
    )


def test_cif_u_iso_converted_to_b(tmp_path):
    path = write_sto_cif(
        tmp_path,
        u_sr="0.0052",
        u_ti="0.0041",
        u_o="0.0080",
        extra_header="_atom_site_U_iso_or_equiv",
    )
    xtal = Crystal.from_cif(path)
    b = {a.symbol: a.b_iso for a in xtal.atoms}
    for symbol, u in {"Sr": 0.0052, "Ti": 0.0041, "O": 0.0080}.items():
        assert b[symbol] == pytest.approx(8 * math.pi**2 * u, rel=B_RTOL)


def test_cif_b_iso_read(tmp_path):
    path = write_sto_cif(
        tmp_path, u_sr="0.41", u_ti="0.32", u_o="0.63", extra_header="_atom_site_B_iso_or_equiv"
    )
    xtal = Crystal.from_cif(path)
    b = {a.symbol: a.b_iso for a in xtal.atoms}
    assert b == pytest.approx({"Sr": 0.41, "Ti": 0.32, "O": 0.63}, rel=B_RTOL)
    warm = Crystal.builtin("SrTiO3", debye_waller=True)
    geo = Geometry(warm, 120.0, (0, 0, 1), 13, 1, 70.0)
    np.testing.assert_allclose(
        compute_ug(xtal, geo).values, compute_ug(warm, geo).values, rtol=0, atol=CIF_UG_ATOL
    )


def test_cif_occupancy(tmp_path):
    xtal = Crystal.from_cif(write_sto_cif(tmp_path, occ_o="0.5"))
    occ = {a.symbol: [] for a in xtal.atoms}
    for a in xtal.atoms:
        occ[a.symbol].append(a.occupancy)
    assert occ == {"Sr": [1.0], "Ti": [1.0], "O": [0.5, 0.5, 0.5]}
    # U_0 is linear in the occupancies: half the oxygen is half the oxygen's share
    geo = Geometry(xtal, 120.0, (0, 0, 1), 5, 1, 70.0)
    full = compute_ug(Crystal.builtin("SrTiO3"), geo).attrs["u0"]
    no_o = compute_ug(
        Crystal(xtal.cell, [(a.symbol, a.position) for a in xtal.atoms if a.symbol != "O"]), geo
    ).attrs["u0"]
    assert compute_ug(xtal, geo).attrs["u0"] == pytest.approx((full + no_o) / 2, rel=1e-12)


ANISO_CIF = """\
data_aniso
_cell_length_a 5.1
_cell_length_b 6.3
_cell_length_c 7.2
_cell_angle_alpha 90
_cell_angle_beta 104.5
_cell_angle_gamma 90
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_adp_type
Sr1 Sr 0.1 0.2 0.3 Uani
loop_
_atom_site_aniso_label
_atom_site_aniso_U_11
_atom_site_aniso_U_22
_atom_site_aniso_U_33
_atom_site_aniso_U_12
_atom_site_aniso_U_13
_atom_site_aniso_U_23
Sr1 0.011 0.015 0.020 0.000 0.004 0.000
"""


def test_cif_anisotropic_u_becomes_b_equivalent(tmp_path):
    path = tmp_path / "aniso.cif"
    path.write_text(ANISO_CIF)
    xtal = Crystal.from_cif(path)
    assert len(xtal.atoms) == 1
    # independent route: U_cart = A N U N Aᵀ (A: lattice vectors as columns, N = diag|a*_i|)
    u = np.array([[0.011, 0, 0.004], [0, 0.015, 0], [0.004, 0, 0.020]])
    a_cols = xtal.lattice_vectors.T
    n = np.diag(np.linalg.norm(xtal.reciprocal_vectors, axis=1))
    u_eq = np.trace(a_cols @ n @ u @ n @ a_cols.T) / 3
    assert xtal.atoms[0].b_iso == pytest.approx(8 * math.pi**2 * u_eq, rel=B_RTOL)
    assert u_eq != pytest.approx(np.trace(u) / 3, rel=1e-3)  # the cell is really oblique


def test_bad_cif_raises_value_error(tmp_path):
    garbage = tmp_path / "garbage.cif"
    garbage.write_text("this is not a CIF file\n loop_ loop_ ;;;\n")
    with pytest.raises(ValueError, match="garbage.cif"):
        Crystal.from_cif(garbage)
    no_atoms = tmp_path / "no_atoms.cif"
    no_atoms.write_text(
        "data_x\n_cell_length_a 4\n_cell_length_b 4\n_cell_length_c 4\n"
        "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"
    )
    with pytest.raises(ValueError, match="no atom sites"):
        Crystal.from_cif(no_atoms)
    no_cell = tmp_path / "no_cell.cif"
    no_cell.write_text(
        "data_x\nloop_\n_atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n"
        "_atom_site_fract_z\nSr1 0 0 0\n"
    )
    with pytest.raises(ValueError, match="no unit cell"):
        Crystal.from_cif(no_cell)
    with pytest.raises(FileNotFoundError, match="no CIF file"):
        Crystal.from_cif(tmp_path / "missing.cif")


def test_cif_listing_symmetry_equivalent_sites_is_merged(tmp_path, caplog):
    """All three O of SrTiO3 listed although Pm-3m generates them from one: no doubled atoms."""
    extra = "O2 O2- 0.5 0 0.5 1\nO3 O2- 0 0.5 0.5 1"
    path = tmp_path / "dup.cif"
    text = SRTIO3_CIF.format(u_sr="", u_ti="", u_o="", occ_o="1", extra_header="")
    path.write_text(text + extra + "\n")
    with caplog.at_level("WARNING", logger="larbed.crystal"):
        xtal = Crystal.from_cif(path)
    assert _sorted_atoms(xtal) == _sorted_atoms(Crystal.builtin("SrTiO3"))
    assert "duplicate atoms" in caplog.text
    geo = Geometry(xtal, 120.0, (0, 0, 1), 13, 1, 70.0)
    np.testing.assert_allclose(compute_ug(xtal, geo).values,
                               compute_ug(Crystal.builtin("SrTiO3"), geo).values, atol=CIF_UG_ATOL)


def test_site_occupancies_above_one_are_rejected():
    cell = (4.0, 4.0, 4.0, 90, 90, 90)
    with pytest.raises(ValueError, match=r"occupancies sum to 1.3 > 1"):
        Crystal(cell, [("Sr", (0, 0, 0), 0.7), ("Ba", (0, 0, 0), 0.6)])
    with pytest.raises(ValueError, match="occupancies sum to 2"):  # the same atom twice
        Crystal(cell, [("Sr", (0, 0, 0)), ("Sr", (1.0, 0, 0))])  # equal modulo the lattice
    mixed = Crystal(cell, [("Sr", (0, 0, 0), 0.5), ("Ba", (0, 0, 0), 0.5), ("O", (0.5, 0.5, 0.5))])
    assert len(mixed.atoms) == 3


CU_CIF_BY_NUMBER = """data_Cu
_cell_length_a 3.615
_cell_length_b 3.615
_cell_length_c 3.615
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
{group}
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
{symbol}1 {symbol} 0 0 0
"""


@pytest.mark.parametrize("tag", ["_space_group_IT_number", "_symmetry_Int_Tables_number"])
def test_cif_with_only_the_space_group_number_is_completed(tmp_path, tag):
    """A CIF naming its group by number alone was read as P1 (one Cu atom, a primitive cube)."""
    path = tmp_path / "cu.cif"
    path.write_text(CU_CIF_BY_NUMBER.format(group=f"{tag} 225", symbol="Cu"))
    xtal = Crystal.from_cif(path)
    assert xtal.space_group is not None and xtal.space_group.name == "F m -3 m"
    assert len(xtal.atoms) == 4
    geo = Geometry(xtal, 200.0, (0, 0, 1), 5, 1, 70.0)
    ug = compute_ug(xtal, geo)
    assert abs(ug.sel(reflection=(ug.h == 1) & (ug.k == 0)).values[0]) < CIF_UG_ATOL  # fcc: 100 absent


def test_cif_number_with_several_settings_warns_and_bad_number_raises(tmp_path, caplog):
    path = tmp_path / "si.cif"
    path.write_text(CU_CIF_BY_NUMBER.format(group="_space_group_IT_number 227", symbol="Si"))
    with caplog.at_level("WARNING", logger="larbed.crystal"):
        xtal = Crystal.from_cif(path)
    assert xtal.space_group.name == "F d -3 m:1" and len(xtal.atoms) == 8
    assert "only the space-group number 227" in caplog.text
    path.write_text(CU_CIF_BY_NUMBER.format(group="_space_group_IT_number 999", symbol="Cu"))
    with pytest.raises(ValueError, match="space-group number 999 is not in 1-230"):
        Crystal.from_cif(path)


@pytest.mark.parametrize(("xyz", "n_atoms", "warns"), [("0 0 0", 16, True), ("0.125 0.125 0.125", 8, False)])
def test_cif_without_origin_choice_warns_when_the_other_makes_fewer_atoms(tmp_path, caplog, xyz,
                                                                          n_atoms, warns):
    """'F d -3 m' alone is origin choice 2 (gemmi); Si listed at 0 0 0 (origin choice 1) then gave
    16 atoms 1.92 Å apart, silently."""
    path = tmp_path / "si.cif"
    text = CU_CIF_BY_NUMBER.format(group="_symmetry_space_group_name_H-M 'F d -3 m'", symbol="Si")
    path.write_text(text.replace("3.615", "5.431").replace("Si 0 0 0", f"Si {xyz}"))
    with caplog.at_level("WARNING", logger="larbed.crystal"):
        xtal = Crystal.from_cif(path)
    assert xtal.space_group.name == "F d -3 m:2" and len(xtal.atoms) == n_atoms
    assert ("without its origin choice" in caplog.text) == warns
    if warns:
        assert "F d -3 m:1 the sites make 8 atoms" in caplog.text
