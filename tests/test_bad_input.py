"""Bad input raises ValueError/TypeError with a message that names the problem."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from larbed import (
    Crystal,
    Geometry,
    compute_ug,
    determine,
    input_ug,
    normalize_ug,
    random_ug,
    refine,
    scattering_factor,
    shift_origin,
    simulate,
)


@cache
def sto() -> Crystal:
    return Crystal.builtin("SrTiO3")


@cache
def geo13() -> Geometry:
    return Geometry(sto(), 120.0, (0, 0, 1), 13, 5, 20.0)


@cache
def ug13():
    return compute_ug(sto(), geo13())


# ----------------------------------------------------------------------------- thickness
@pytest.mark.parametrize(
    ("thickness", "exc", "match"),
    [
        (-1.0, ValueError, r"thickness_nm must be >= 0"),
        ([10.0, -0.5], ValueError, r"thickness_nm must be >= 0"),
        (float("nan"), ValueError, r"thickness_nm must be finite"),
        ([5.0, np.inf], ValueError, r"thickness_nm must be finite"),
        ([], ValueError, r"non-empty"),
        ([[1.0, 2.0]], ValueError, r"1-D"),
        ("30", TypeError, r"thickness_nm must be a real number"),
        (1 + 2j, TypeError, r"thickness_nm must be a real number"),
    ],
)
def test_bad_thickness(thickness, exc, match):
    with pytest.raises(exc, match=match):
        simulate(geo13(), ug13(), thickness)


# ----------------------------------------------------------------------------- U_g
def test_nan_ug():
    bad = ug13().values.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values at positions \[3\]"):
        simulate(geo13(), bad, 10.0)
    with pytest.raises(ValueError, match="NaN"):
        simulate(geo13(), ug13().copy(data=bad), 10.0)
    with pytest.raises(ValueError, match="NaN"):
        input_ug(geo13(), {(1, 0, 0): complex("nan")}, fill_missing=0.0)
    with pytest.raises(ValueError, match=r"U_g at \(0, 1, 0\) is NaN"):
        simulate(
            geo13(),
            {
                tuple(h): (np.nan if i == 1 else 0.01)
                for i, h in enumerate(geo13().reflection_hkl.tolist())
            },
            10.0,
        )


def test_non_hermitian_ug_mapping():
    values = {(1, 0, 0): 0.01 + 0.02j, (-1, 0, 0): 0.01 + 0.02j}  # must be conjugates
    with pytest.raises(ValueError, match=r"not Hermitian at \(-1, 0, 0\)"):
        input_ug(geo13(), values, fill_missing=0.0)
    with pytest.raises(ValueError, match="not Hermitian"):
        simulate(geo13(), {**values, **{tuple(h): 0.01 for h in geo13().reflection_hkl[1:]}}, 10.0)


@pytest.mark.parametrize("shape", [(19,), (21,), (20, 1), (13, 13)])
def test_wrong_ug_shape(shape):
    with pytest.raises(ValueError, match=r"shape \(20,\)"):
        simulate(geo13(), np.full(shape, 0.01 + 0j), 10.0)


def test_ug_from_another_geometry():
    other = Geometry(sto(), 120.0, (0, 0, 1), 25, 1, 20.0)
    with pytest.raises(ValueError, match=r"this geometry needs \(20,\) values over 'reflection'"):
        simulate(geo13(), compute_ug(sto(), other), 10.0)
    # same number of reflections, different (h, k, l): another zone axis
    rotated = Geometry(sto(), 120.0, (1, 0, 0), 13, 1, 20.0)
    assert rotated.n_reflections == geo13().n_reflections
    with pytest.raises(ValueError, match=r"reflections \(h, k, l\) do not match"):
        simulate(geo13(), compute_ug(sto(), rotated), 10.0)


def test_non_numeric_ug():
    with pytest.raises(TypeError, match="numeric"):
        simulate(geo13(), np.array(["a"] * 20), 10.0)


def test_ug_mapping_with_unknown_or_malformed_reflection():
    with pytest.raises(ValueError, match=r"reflection \(9, 9, 0\) does not enter"):
        input_ug(geo13(), {(9, 9, 0): 0.1}, fill_missing=0.0)
    with pytest.raises(ValueError, match=r"reflection key must be \(h, k, l\)"):
        input_ug(geo13(), {(1, 0): 0.1}, fill_missing=0.0)


# ----------------------------------------------------------------------------- simulate options
@pytest.mark.parametrize("dose", [-10.0, 0.0, float("nan")])
def test_bad_dose(dose):
    with pytest.raises(ValueError, match="dose must be a positive number"):
        simulate(geo13(), ug13(), 10.0, dose=dose)


@pytest.mark.parametrize("absorption", [-0.1, float("inf")])
def test_bad_absorption(absorption):
    with pytest.raises(ValueError, match="absorption"):
        simulate(geo13(), ug13(), 10.0, absorption=absorption)


@pytest.mark.parametrize("geometry", [None, "SrTiO3", {"n_beams": 13}, 13])
def test_wrong_type_for_geometry(geometry):
    with pytest.raises(TypeError, match="geometry must be a larbed.Geometry"):
        simulate(geometry, ug13(), 10.0)
    with pytest.raises(TypeError, match="geometry must be a larbed.Geometry"):
        compute_ug(sto(), geometry)


def test_wrong_type_for_crystal():
    with pytest.raises(TypeError, match="crystal must be a larbed.Crystal"):
        Geometry("SrTiO3", 120.0, (0, 0, 1), 13, 1, 20.0)
    with pytest.raises(TypeError, match="crystal must be a larbed.Crystal"):
        compute_ug("SrTiO3", geo13())


# ----------------------------------------------------------------------------- crystals
def test_unknown_element():
    with pytest.raises(ValueError, match="unknown element 'Xx'"):
        Crystal((4, 4, 4, 90, 90, 90), [("Xx", (0, 0, 0))])
    with pytest.raises(ValueError, match="unknown element 'Qq'"):
        scattering_factor("Qq", 0.5)
    with pytest.raises(TypeError, match="element symbol must be a string"):
        Crystal((4, 4, 4, 90, 90, 90), [(26, (0, 0, 0))])


def test_unknown_parameterization():
    with pytest.raises(
        ValueError, match=r"unknown scattering-factor parameterization 'doyle'.*lobato"
    ):
        compute_ug(sto(), geo13(), parameterization="doyle")
    with pytest.raises(ValueError, match="unknown scattering-factor parameterization"):
        scattering_factor("O", 0.5, "peng")


@pytest.mark.parametrize(
    ("cell", "match"),
    [
        ((4, 4, 4), r"cell must be 6 finite numbers"),
        ((4, 4, 4, 90, 90, float("nan")), r"cell must be 6 finite numbers"),
        ((4, -4, 4, 90, 90, 90), r"cell lengths must be positive"),
        ((4, 4, 0, 90, 90, 90), r"cell lengths must be positive"),
        ((4, 4, 4, 90, 180, 90), r"cell angles must be in \(0, 180\)"),
        ((4, 4, 4, 0, 90, 90), r"cell angles must be in \(0, 180\)"),
        ((4, 4, 4, 10, 10, 100), r"give no valid \(positive-volume\) cell"),
        ((4, 4, 4, 120, 120, 120), r"give no valid \(positive-volume\) cell"),
    ],
)
def test_bad_cell(cell, match):
    with pytest.raises(ValueError, match=match):
        Crystal(cell, [("O", (0, 0, 0))])


@pytest.mark.parametrize(
    ("atom", "exc", "match"),
    [
        (("O", (0, 0)), ValueError, "atom position must be 3 finite"),
        (("O", (0, 0, np.nan)), ValueError, "atom position must be 3 finite"),
        (("O", (0, 0, 0), 1.5), ValueError, r"occupancy must be in \[0, 1\]"),
        (("O", (0, 0, 0), -0.1), ValueError, r"occupancy must be in \[0, 1\]"),
        (("O", (0, 0, 0), 1.0, -0.2), ValueError, "Debye-Waller B must be finite and >= 0"),
        ("O", TypeError, r"each atom must be \(symbol, \(x, y, z\)"),
        (("O",), TypeError, r"each atom must be \(symbol, \(x, y, z\)"),
    ],
)
def test_bad_atom(atom, exc, match):
    with pytest.raises(exc, match=match):
        Crystal((4, 4, 4, 90, 90, 90), [atom])


def test_no_atoms_and_unknown_builtin():
    with pytest.raises(ValueError, match="at least one atom"):
        Crystal((4, 4, 4, 90, 90, 90), [])
    with pytest.raises(ValueError, match="unknown built-in crystal 'Si'; choose 'SrTiO3' or 'ZnO'"):
        Crystal.builtin("Si")


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"zone_axis": (0, 0, 0)}, ValueError, r"zone_axis \(0, 0, 0\) is not a direction"),
        ({"zone_axis": (1, 0)}, ValueError, r"zone_axis must be 3 integers"),
        ({"zone_axis": (0.5, 0, 1)}, ValueError, r"zone_axis must be 3 integers"),
        ({"n_beams": 1}, ValueError, r"n_beams must be at least 2"),
        ({"n_beams": 0}, ValueError, r"n_beams must be at least 2"),
        ({"n_beams": 12.5}, TypeError, r"n_beams must be an integer"),
        ({"n_beams": 10**6}, ValueError, r"n_beams=1000000 is more than larbed simulates"),
        ({"n_tilts": 440}, ValueError, r"nearest valid counts: \[.*441"),
        ({"n_tilts": 13.0}, TypeError, r"n_tilts must be an integer"),
        ({"voltage_kv": -120}, ValueError, r"voltage_kv must be a positive finite number"),
        ({"voltage_kv": float("nan")}, ValueError, r"voltage_kv must be a positive finite number"),
        ({"tilt_range_mrad": -5}, ValueError, r"tilt_range_mrad must be positive"),
        ({"tilt_range_mrad": 0}, ValueError, r"tilt_range_mrad must be positive"),
        ({"tilt_range_mrad": 2000}, ValueError, r"beyond the small-angle geometry"),
        ({"tilt_center_mrad": (1.0,)}, ValueError, r"tilt_center_mrad must be 2 finite numbers"),
        # recorded: a pair was a numpy reshape error, [] gave a geometry fitting nothing, and
        # (0.5, 0, 0) was silently truncated to 000
        ({"recorded": [(0, 0)]}, ValueError, r"recorded must be a non-empty list of \(h, k, l\)"),
        ({"recorded": []}, ValueError, r"recorded must be a non-empty list"),
        ({"recorded": [(0, 0, 0), (0.5, 0, 0)]}, ValueError, r"integer \(h, k, l\), got \[\[0.5"),
        ({"recorded": [("a", "b", "c")]}, TypeError, r"recorded must be \(h, k, l\) integers"),
    ],
)
def test_bad_geometry(kwargs, exc, match):
    args = {
        "zone_axis": (0, 0, 1),
        "n_beams": 13,
        "n_tilts": 13,
        "tilt_range_mrad": 20.0,
        "voltage_kv": 120.0,
    }
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        Geometry(sto(), **args)


# ----------------------------------------------------------------------------- other helpers
def test_bad_random_ug_options():
    with pytest.raises(ValueError, match=r"unknown prior 'gaussian'; choose one of"):
        random_ug(geo13(), seed=0, prior="gaussian")
    with pytest.raises(ValueError, match="ug_range must be positive"):
        random_ug(geo13(), seed=0, ug_range=-0.1)
    with pytest.raises(ValueError, match="n_atoms must be >= 1"):
        random_ug(geo13(), seed=0, prior="physical", n_atoms=0)


def test_bad_scattering_vector():
    with pytest.raises(ValueError, match="g must be finite and non-negative"):
        scattering_factor("O", -0.1)
    with pytest.raises(ValueError, match="g must be finite and non-negative"):
        scattering_factor("O", [0.1, np.nan])


def test_bad_shift_and_normalization_shapes():
    with pytest.raises(ValueError, match=r"shift must be finite \[Å\], got \[nan, 0.0\]"):
        shift_origin(geo13(), ug13(), (np.nan, 0.0))  # gave NaN U_g
    with pytest.raises(ValueError, match=r"shift must have 2 or 3 components"):
        shift_origin(geo13(), ug13(), (1.0, 2.0, 3.0, 4.0))
    with pytest.raises(ValueError, match=r"U_g matrix must have shape \(13, 13\)"):
        normalize_ug(geo13(), np.zeros((12, 12)))
    with pytest.raises(ValueError, match=r"no value given for reflections"):
        normalize_ug(geo13(), {(1, 0, 0): 0.1})


def test_compute_ug_with_a_crystal_of_another_cell():
    """U_g of a crystal whose cell is not the geometry's were computed at the wrong |g|, silently."""
    geo = Geometry(sto(), 120, (0, 0, 1), 13, 1, 70)
    other = Crystal((4.2, 4.2, 4.2, 90, 90, 90), [("Mg", (0, 0, 0)), ("O", (0.5, 0.5, 0.5))])
    with pytest.raises(ValueError, match=r"cell \(4.2, 4.2, 4.2, 90.0, 90.0, 90.0\) differs from"):
        compute_ug(other, geo)
    same_cell = Crystal(sto().cell, [("Sr", (0, 0, 0))])  # another structure on the same lattice
    assert compute_ug(same_cell, geo).shape == (geo.n_reflections,)


# ----------------------------------------------------------------------------- stopping limits
@pytest.mark.parametrize("ftol", [-1e-10, float("nan"), "1e-10", True])
def test_refine_rejects_a_bad_ftol(ftol):
    pattern = simulate(geo13(), ug13(), 30.0)
    with pytest.raises(ValueError, match=r"ftol must be a finite number >= 0"):
        refine(pattern, geo13(), ug13(), 30.0, ftol=ftol, progress=False)


@pytest.mark.parametrize("name", ["search_time_s", "polish_time_s"])
@pytest.mark.parametrize("value", [-5.0, float("inf"), "90"])
def test_determine_rejects_a_bad_time_budget(name, value):
    pattern = simulate(geo13(), ug13(), 30.0)
    with pytest.raises(ValueError, match=rf"{name} must be a finite number of seconds >= 0"):
        determine(pattern, geo13(), progress=False, **{name: value})


# ----------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("seed", [1.5, "7", True])
def test_a_seed_that_is_not_an_integer_is_named(seed):
    """numpy's own error ("SeedSequence expects int or sequence of ints") did not say which
    argument was wrong."""
    with pytest.raises(TypeError, match=r"seed must be a non-negative integer"):
        simulate(geo13(), ug13(), 30.0, dose=1e4, seed=seed)
    pattern = simulate(geo13(), ug13(), 30.0)
    with pytest.raises(TypeError, match=r"seed must be a non-negative integer"):
        refine(pattern, geo13(), ug13(), 30.0, holdout=0.2, seed=seed, progress=False)
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0"):
        determine(pattern, geo13(), seed=seed, progress=False)


def test_a_negative_seed_is_named():
    with pytest.raises(ValueError, match=r"seed must be >= 0, got -1"):
        simulate(geo13(), ug13(), 30.0, dose=1e4, seed=-1)


def test_seeds_numpy_accepts_still_work():
    a = simulate(geo13(), ug13(), 30.0, dose=1e4, seed=np.int64(3)).intensity.values
    b = simulate(geo13(), ug13(), 30.0, dose=1e4, seed=3).intensity.values
    c = simulate(geo13(), ug13(), 30.0, dose=1e4,
                 seed=np.random.default_rng(3)).intensity.values
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(b, c)


def test_wrong_types_name_the_argument():
    geo = geo13()
    ug = compute_ug(geo.crystal, geo)
    data = simulate(geo, ug, 30.0)
    with pytest.raises(ValueError, match="holdout"):
        refine(data, geo, ug, 30.0, holdout="x", progress=False)
    with pytest.raises(TypeError, match="absorption"):
        simulate(geo, ug, 30.0, absorption="x")
    assert simulate(geo, ug, 30.0, absorption=np.float64(0.05)).attrs["absorption"] == 0.05
