"""Structure factors: ComputeUg, RandomUg, InputUg, normalisation, matrix, origin shift."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

import larbed
from larbed import (
    Crystal,
    Geometry,
    compute_ug,
    input_ug,
    normalize_ug,
    random_ug,
    relativistic_gamma,
    scattering_factor,
    shift_origin,
)
from larbed.structure_factors import structure_factor, ug_matrix

#: Same formula, different summation order: agreement to double-precision round-off.
FORMULA_RTOL = 1e-13
#: Values that should be bit-for-bit copies (conjugation, lookups) compared with no tolerance.
EXACT = 0.0
#: Forbidden reflections come out as exp() round-off (~1e-17 1/Å²); compare them absolutely.
FORBIDDEN_ATOL = 1e-15
#: Lobato and Kirkland fits agree to a few per cent for light and medium elements at g < 1.5 1/Å.
TABLES_RTOL = 0.05


@cache
def zno() -> Crystal:
    return Crystal(
        (3.2498, 3.2498, 5.2066, 90, 90, 120),
        [
            ("Zn", (1 / 3, 2 / 3, 0), 1.0, 0.6),
            ("Zn", (2 / 3, 1 / 3, 0.5), 1.0, 0.6),
            ("O", (1 / 3, 2 / 3, 0.3819), 0.9, 0.6),
            ("O", (2 / 3, 1 / 3, 0.8819), 0.9, 0.6),
        ],
        name="ZnO-dw",
    )


@cache
def sto_geometry(n_beams: int = 13) -> Geometry:
    return Geometry(Crystal.builtin("SrTiO3"), 120.0, (0, 0, 1), n_beams, 1, 70.0)


@cache
def zno_geometry() -> Geometry:
    return Geometry(zno(), 100.0, (1, 0, 0), 9, 1, 30.0)  # non-centrosymmetric projection


def _direct_ug(xtal: Crystal, hkl, voltage_kv: float) -> np.ndarray:
    """SPEC §2 written out atom by atom, reflection by reflection."""
    gamma = relativistic_gamma(voltage_kv)
    rec = xtal.reciprocal_vectors
    out = []
    for h in np.asarray(hkl, dtype=float):
        g = np.linalg.norm(h @ rec)
        total = 0j
        for atom in xtal.atoms:
            f = float(scattering_factor(atom.symbol, g))
            phase = np.exp(-2j * np.pi * np.dot(h, atom.position))
            total += atom.occupancy * f * np.exp(-atom.b_iso * g * g / 4) * phase
        out.append(gamma / (np.pi * xtal.volume) * total)
    return np.array(out)


# ----------------------------------------------------------------------------- ComputeUg
def test_compute_ug_is_the_spec_formula():
    geo = zno_geometry()
    ug = compute_ug(zno(), geo)
    expected = _direct_ug(zno(), geo.reflection_hkl, 100.0)
    assert np.abs(expected.imag).max() > 1e-3  # a genuinely complex case
    np.testing.assert_allclose(ug.values, expected, rtol=FORMULA_RTOL)
    assert ug.attrs["u0"] == pytest.approx(_direct_ug(zno(), [[0, 0, 0]], 100.0)[0].real)
    assert ug.attrs["units"] == "1/Å^2" and ug.dims == ("reflection",)
    np.testing.assert_array_equal(
        np.stack([ug.h, ug.k, ug.l], axis=1), geo.reflection_hkl
    )  # labelled by hkl
    np.testing.assert_allclose(np.stack([ug.gx, ug.gy], axis=1), geo.reflection_xy)


def test_friedel_law_and_centrosymmetry():
    hkl = np.array([[1, 0, 1], [1, 1, 2], [2, -1, 3], [0, 0, 1]])
    u_plus = structure_factor(zno(), hkl, 100.0)
    u_minus = structure_factor(zno(), -hkl, 100.0)
    np.testing.assert_allclose(u_minus, np.conj(u_plus), rtol=FORMULA_RTOL)  # U_-g = U_g*
    # SrTiO3 with the origin on Sr (an inversion centre): every U_g real
    sto = Crystal.builtin("SrTiO3")
    u = structure_factor(sto, np.array([[1, 2, 3], [2, 0, 1], [3, 1, 1]]), 120.0)
    assert np.abs(u.imag).max() < 1e-12 * np.abs(u).max()  # round-off of exp(-2πi g·r)


def test_structure_factor_scales_with_gamma():
    hkl = np.array([[1, 1, 0], [2, 0, 0]])
    sto = Crystal.builtin("SrTiO3")
    ratio = structure_factor(sto, hkl, 300.0) / structure_factor(sto, hkl, 120.0)
    np.testing.assert_allclose(
        ratio, relativistic_gamma(300.0) / relativistic_gamma(120.0), rtol=FORMULA_RTOL
    )


def test_parameterizations_differ_but_agree_roughly():
    geo = sto_geometry(25)
    lob = compute_ug(geo.crystal, geo)
    kir = compute_ug(geo.crystal, geo, parameterization="kirkland")
    assert lob.attrs["parameterization"] == "lobato" and kir.attrs["parameterization"] == "kirkland"
    strong = np.abs(lob.values) > 0.01
    assert np.any(lob.values != kir.values)
    np.testing.assert_allclose(kir.values[strong], lob.values[strong], rtol=TABLES_RTOL)


# ----------------------------------------------------------------------------- RandomUg
def test_random_ug_uniform_prior():
    geo = sto_geometry(25)
    a = random_ug(geo, seed=42)
    b = random_ug(geo, seed=42)
    c = random_ug(geo, seed=43)
    np.testing.assert_array_equal(a.values, b.values)  # reproducible
    assert np.all(a.values != c.values)
    vals = np.concatenate([random_ug(geo, seed=s).values for s in range(20)])
    for part in (vals.real, vals.imag):
        assert np.all(np.abs(part) <= 0.2)
        assert part.max() > 0.18 and part.min() < -0.18  # fills the thesis range ±0.2
        assert abs(part.mean()) < 0.02  # centred (n = 20·56, σ_mean ≈ 0.0035)
    narrow = random_ug(geo, seed=1, ug_range=0.01)
    assert np.all(np.abs(narrow.values.real) <= 0.01) and np.all(np.abs(narrow.values.imag) <= 0.01)


def test_random_ug_physical_prior_is_a_real_crystal():
    geo = sto_geometry(25)
    ug = random_ug(geo, seed=7, prior="physical", n_atoms=3, elements=("O", "Ti"))
    assert ug.attrs["u0"] > 0
    # each U_g is bounded by all atoms scattering in phase: |U_g| ≤ γ/(πΩ) Σ f_max(|g|)
    g = np.linalg.norm(geo.reflection_g, axis=1)
    f_max = scattering_factor("Ti", g)
    bound = geo.gamma / (np.pi * geo.crystal.volume) * 3 * f_max
    assert np.all(np.abs(ug.values) <= bound * (1 + 1e-12))
    assert np.abs(ug.values).max() < 0.2  # smaller than the uniform prior, like real crystals
    np.testing.assert_array_equal(
        ug.values, random_ug(geo, seed=7, prior="physical", n_atoms=3, elements=("O", "Ti")).values
    )


# ----------------------------------------------------------------------------- InputUg
def test_input_ug_from_mapping_and_array():
    geo = sto_geometry()
    truth = random_ug(geo, seed=3)
    # mapping keyed partly by -g (conjugated on the way in) and partly by strings
    mapping = {}
    for i, (hkl, v) in enumerate(zip(geo.reflection_hkl.tolist(), truth.values, strict=True)):
        if i % 3 == 0:
            mapping[tuple(-x for x in hkl)] = np.conj(v)
        elif i % 3 == 1:
            mapping[" ".join(map(str, hkl))] = v
        else:
            mapping[tuple(hkl)] = v
    np.testing.assert_allclose(input_ug(geo, mapping).values, truth.values, rtol=0, atol=EXACT)
    np.testing.assert_array_equal(input_ug(geo, truth.values).values, truth.values)
    np.testing.assert_array_equal(input_ug(geo, list(truth.values)).values, truth.values)
    # both g and -g given consistently is fine
    both = {(1, 0, 0): 0.01 + 0.02j, (-1, 0, 0): 0.01 - 0.02j}
    filled = input_ug(geo, both, fill_missing=0.0)
    assert filled.values[0] == 0.01 + 0.02j
    assert np.count_nonzero(filled.values) == 1


def test_input_ug_missing_reflections():
    geo = sto_geometry()
    with pytest.raises(ValueError, match="19 reflections have no value"):
        input_ug(geo, {(1, 0, 0): 0.01})
    with pytest.raises(ValueError, match="does not enter"):
        input_ug(geo, {(7, 0, 0): 0.01}, fill_missing=0)


# ----------------------------------------------------------------------------- normalisation
def test_normalize_ug_makes_hermitian_by_averaging():
    geo = zno_geometry()
    truth = compute_ug(zno(), geo)
    mat = ug_matrix(geo, truth)
    np.testing.assert_allclose(normalize_ug(geo, mat).values, truth.values, rtol=0, atol=1e-17)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=mat.shape) + 1j * rng.normal(size=mat.shape)
    out = normalize_ug(geo, mat + 1e-3 * noise)
    # by hand: mean over all (n, m) mapping to pair p of U_nm (sign +1) or U_nm* (sign −1)
    noisy = mat + 1e-3 * noise
    for p in range(geo.n_reflections):
        plus = noisy[(geo.pair_index == p) & (geo.pair_sign > 0)]
        minus = np.conj(noisy[(geo.pair_index == p) & (geo.pair_sign < 0)])
        assert out.values[p] == pytest.approx(np.mean(np.concatenate([plus, minus])), abs=1e-15)
    # the result is Hermitian by construction
    herm = ug_matrix(geo, out)
    np.testing.assert_array_equal(herm, np.conj(herm.T))


def test_normalize_ug_from_signed_mapping():
    geo = sto_geometry(5)  # reflections 100, 010, 110, 1-10, 200, 020
    values = {(1, 0, 0): 0.02 + 0.01j, (-1, 0, 0): 0.04 + 0.03j}
    values.update({tuple(h): 0.05 for h in geo.reflection_hkl.tolist()[1:]})
    out = normalize_ug(geo, values)
    # U_100 := mean(U_100, conj(U_-100)) = mean(0.02+0.01j, 0.04-0.03j)
    assert out.values[0] == pytest.approx(0.03 - 0.01j, abs=1e-16)
    np.testing.assert_allclose(out.values[1:], 0.05)


# ----------------------------------------------------------------------------- matrix
def test_ug_matrix_elements():
    geo = zno_geometry()
    ug = compute_ug(zno(), geo)
    mat = ug_matrix(geo, ug)
    np.testing.assert_array_equal(np.diag(mat), 0.0)
    np.testing.assert_array_equal(mat, np.conj(mat.T))
    diffs = (geo.hkl[:, None, :] - geo.hkl[None, :, :]).reshape(-1, 3)
    direct = structure_factor(zno(), diffs, 100.0).reshape(geo.n_beams, geo.n_beams)
    off = ~np.eye(geo.n_beams, dtype=bool)
    np.testing.assert_allclose(mat[off], direct[off], rtol=FORMULA_RTOL)


# ----------------------------------------------------------------------------- origin shift
def test_shift_origin_equals_moving_the_atoms():
    geo = zno_geometry()
    r0 = np.array([0.37, -0.52, 1.1])  # Cartesian [Å]
    shifted = shift_origin(geo, compute_ug(zno(), geo), r0)
    frac = r0 @ np.linalg.inv(zno().lattice_vectors)
    moved = Crystal(
        zno().cell,
        [
            (a.symbol, tuple(np.asarray(a.position) - frac), a.occupancy, a.b_iso)
            for a in zno().atoms
        ],
    )
    np.testing.assert_allclose(
        shifted.values, compute_ug(moved, geo).values, rtol=FORMULA_RTOL * 10, atol=FORBIDDEN_ATOL
    )
    # two components: the in-plane frame (x, y) of the geometry
    in_plane = shift_origin(geo, compute_ug(zno(), geo), r0 @ geo.frame[:2].T)
    along_zone = shift_origin(geo, compute_ug(zno(), geo), (r0 @ geo.frame[2]) * geo.frame[2])
    np.testing.assert_allclose(
        in_plane.values, shifted.values, rtol=FORMULA_RTOL * 10, atol=FORBIDDEN_ATOL
    )
    # a shift along the zone axis changes no ZOLZ U_g
    np.testing.assert_allclose(
        along_zone.values, compute_ug(zno(), geo).values, rtol=1e-12, atol=FORBIDDEN_ATOL
    )


def test_input_ug_matches_labelled_values_by_hkl():
    geo = sto_geometry()
    ug = random_ug(geo, seed=9)
    reordered = ug.isel(reflection=slice(None, None, -1))
    np.testing.assert_array_equal(input_ug(geo, reordered).values, ug.values)
    # same count, other reflections (another zone axis): refused, not silently relabelled
    other = Geometry(geo.crystal, 120.0, (1, 0, 0), 13, 1, 70.0)
    assert other.n_reflections == geo.n_reflections
    with pytest.raises(ValueError, match="does not enter the structure matrix"):
        input_ug(geo, compute_ug(geo.crystal, other))


def test_beams_no_ug_couples_to_000_are_named(caplog):
    """Si [110] with 15 beams of the F-centred cell: the 8 mixed-parity hkl are coupled to 000 by
    no U_g and stay dark at every tilt; compute_ug says so. SrTiO3 (primitive) has none."""
    from larbed.structure_factors import dark_beams

    si = larbed.Crystal((5.431,) * 3 + (90, 90, 90), [("Si", (0, 0, 0))], space_group="F d -3 m",
                        name="Si")
    geo = larbed.Geometry(si, 200, (1, 1, 0), 15, 49, 30)
    with caplog.at_level("WARNING"):
        ug = larbed.compute_ug(si, geo)
    dark = dark_beams(geo, ug.values)
    intensity = larbed.simulate(geo, ug, 40.0).intensity.values
    np.testing.assert_array_equal(dark, np.flatnonzero(intensity.max(axis=0) < 1e-9))
    assert dark.size == 8 and all(np.sum(geo.hkl[i] % 2) % 3 for i in dark)  # mixed parity
    assert any("8 of the 15 beams" in r.getMessage() for r in caplog.records)
    sto = larbed.Crystal.builtin("SrTiO3")
    g = larbed.Geometry(sto, 120, (0, 0, 1), 21, 13, 50)
    assert dark_beams(g, larbed.compute_ug(sto, g).values).size == 0
