"""Geometry: beams (ZOLZ reflections), tilts, reflections (Friedel pairs), frame (SPEC §1, §3)."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from larbed import Crystal, Geometry
from larbed.geometry import circle_tilt_count, valid_tilt_counts

#: Lengths and angles built from the lattice agree with closed forms to round-off.
GEOMETRY_RTOL = 1e-12
#: Beams are sorted by |g| rounded to 1e-6 1/Å (documented tie tolerance).
SHELL_TOL = 1e-6


@cache
def sto() -> Crystal:
    return Crystal.builtin("SrTiO3")


@cache
def triclinic() -> Crystal:
    return Crystal((4.1, 5.3, 6.2, 81.0, 97.0, 104.0), [("Si", (0.1, 0.2, 0.3))], name="tri")


def _shell_set(max_g2: int) -> set[tuple[int, int, int]]:
    r = int(np.ceil(np.sqrt(max_g2)))
    return {
        (h, k, 0) for h in range(-r, r + 1) for k in range(-r, r + 1) if h * h + k * k <= max_g2
    }


# ----------------------------------------------------------------------------- beams
@pytest.mark.parametrize(
    ("n_beams", "max_g2", "shells"),
    [
        (13, 4, ["000", "100", "110", "200"]),
        (25, 8, ["000", "100", "110", "200", "210", "220"]),
        (69, 20, None),  # up to {420}
    ],
)
def test_srtio3_001_beam_shells(n_beams, max_g2, shells):
    geo = Geometry(sto(), 120.0, (0, 0, 1), n_beams, 1, 70.0)
    hkl = [tuple(r) for r in geo.hkl.tolist()]
    assert hkl[0] == (0, 0, 0)
    assert len(set(hkl)) == n_beams
    assert set(hkl) == _shell_set(max_g2)  # complete shells, nothing beyond
    g2 = np.sum(geo.hkl**2, axis=1)
    assert np.all(np.diff(g2) >= 0)  # sorted by |g|
    if shells is not None:
        labels = ["".join(str(x) for x in sorted(map(abs, r), reverse=True)) for r in hkl]
        assert list(dict.fromkeys(labels)) == shells
    if n_beams == 69:
        assert (4, 2, 0) in hkl and (2, 4, 0) in hkl and (5, 0, 0) not in hkl


def test_beam_order_within_a_shell_is_by_azimuth_from_x():
    geo = Geometry(sto(), 120.0, (0, 0, 1), 25, 1, 70.0)
    assert geo.hkl[:5].tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]]
    glen = np.round(np.linalg.norm(geo.g_xy, axis=1), 6)
    angle = np.mod(np.arctan2(geo.g_xy[:, 1], geo.g_xy[:, 0]), 2 * np.pi)
    for value in np.unique(glen[1:]):
        shell = np.flatnonzero(glen == value)
        assert np.all(np.diff(angle[shell]) > 0)
    # a partial shell keeps the first beams in that order (n_beams = 2 → 000 and 100)
    assert Geometry(sto(), 120.0, (0, 0, 1), 2, 1, 70.0).hkl.tolist() == [[0, 0, 0], [1, 0, 0]]


@pytest.mark.parametrize(
    ("crystal", "zone", "n_beams"),
    [
        ("SrTiO3", (1, 1, 0), 15),
        ("SrTiO3", (1, 1, 1), 13),
        ("ZnO", (0, 0, 1), 19),
        ("ZnO", (1, 0, 0), 9),
        ("triclinic", (1, -1, 2), 11),
    ],
)
def test_beams_are_the_shortest_zolz_reflections(crystal, zone, n_beams):
    xtal = triclinic() if crystal == "triclinic" else Crystal.builtin(crystal)
    geo = Geometry(xtal, 120.0, zone, n_beams, 1, 50.0)
    assert np.all(geo.hkl @ np.asarray(zone) == 0)  # Weiss zone law
    g = geo.hkl @ xtal.reciprocal_vectors
    np.testing.assert_allclose(geo.g_cart, g, rtol=GEOMETRY_RTOL, atol=1e-15)
    glen = np.linalg.norm(g, axis=1)
    assert np.all(np.diff(np.round(glen, 6)) >= 0)
    # brute force: no ZOLZ reflection left out is shorter than the longest beam
    r = 6
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    zolz = grid[grid @ np.asarray(zone) == 0]
    chosen = {tuple(x) for x in geo.hkl.tolist()}
    left_out = np.array([h for h in zolz.tolist() if tuple(h) not in chosen])
    shortest_left = np.linalg.norm(left_out @ xtal.reciprocal_vectors, axis=1).min()
    assert shortest_left >= glen.max() - SHELL_TOL
    # in-plane: g has no component along the zone axis; g_xy carries its full length
    zone_cart = np.asarray(zone, dtype=float) @ xtal.lattice_vectors
    np.testing.assert_allclose(g @ zone_cart, 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(geo.g_xy, axis=1), glen, rtol=GEOMETRY_RTOL)


def test_zno_first_shell_is_hexagonal():
    zno = Crystal.builtin("ZnO")
    geo = Geometry(zno, 100.0, (0, 0, 1), 7, 1, 30.0)
    glen = np.linalg.norm(geo.g_xy[1:], axis=1)
    np.testing.assert_allclose(glen, 2 / (np.sqrt(3) * 3.2498), rtol=GEOMETRY_RTOL)
    angles = np.degrees(np.arctan2(geo.g_xy[1:, 1], geo.g_xy[1:, 0]))
    expected = np.radians([0, 60, 120, 180, 240, 300])
    np.testing.assert_allclose(np.exp(1j * np.radians(angles)), np.exp(1j * expected), atol=1e-12)


def test_frame_is_orthonormal_and_right_handed():
    for xtal, zone in [
        (sto(), (1, 1, 1)),
        (triclinic(), (1, -1, 2)),
        (Crystal.builtin("ZnO"), (0, 0, 1)),
    ]:
        geo = Geometry(xtal, 120.0, zone, 7, 1, 50.0)
        f = geo.frame
        np.testing.assert_allclose(f @ f.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(f) == pytest.approx(1.0, abs=1e-12)
        z = np.asarray(zone, dtype=float) @ xtal.lattice_vectors
        np.testing.assert_allclose(f[2], z / np.linalg.norm(z), atol=1e-12)
        # x points along beam 1 (the shortest reflection chosen as x axis)
        assert geo.g_xy[1, 1] == pytest.approx(0.0, abs=1e-12) and geo.g_xy[1, 0] > 0


# ----------------------------------------------------------------------------- tilts
@pytest.mark.parametrize(
    ("radius", "count"), [(8, 197), (9, 253), (12, 441), (16, 797), (18, 1009)]
)
def test_tilt_counts_of_the_thesis(radius, count):
    assert circle_tilt_count(radius) == count
    assert valid_tilt_counts()[count] == radius
    geo = Geometry(sto(), 120.0, (0, 0, 1), 5, count, 70.0)
    assert geo.tilt_radius == radius and geo.n_tilts == count == len(geo.tilt_mrad)
    ij = geo.tilt_ij
    assert np.all(np.sum(ij**2, axis=1) <= radius**2)
    assert len({tuple(x) for x in ij.tolist()}) == count
    # radius r is the tilt range, and k_t = θ K
    assert np.linalg.norm(geo.tilt_mrad, axis=1).max() == pytest.approx(70.0, rel=GEOMETRY_RTOL)
    np.testing.assert_allclose(geo.tilt_mrad, ij / radius * 70.0, rtol=GEOMETRY_RTOL)
    np.testing.assert_allclose(geo.k_t, geo.tilt_mrad * 1e-3 * geo.k0, rtol=GEOMETRY_RTOL)


def test_tilt_order_and_centre():
    geo = Geometry(sto(), 120.0, (0, 0, 1), 5, 13, 20.0, tilt_center_mrad=(3.0, -4.0))
    ij = geo.tilt_ij
    # ordered by j, then i (documented)
    assert np.all(np.lexsort((ij[:, 0], ij[:, 1])) == np.arange(len(ij)))
    np.testing.assert_allclose(geo.tilt_mrad.mean(axis=0), (3.0, -4.0), atol=1e-12)
    assert Geometry(sto(), 120.0, (0, 0, 1), 5, 1, 20.0).tilt_mrad.tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize(("n_tilts", "nearest"), [(440, 441), (200, 197), (10, 13)])
def test_invalid_tilt_count_names_nearest_valid_counts(n_tilts, nearest):
    with pytest.raises(
        ValueError, match=rf"n_tilts={n_tilts}.*nearest valid counts: \[.*\b{nearest}\b"
    ):
        Geometry(sto(), 120.0, (0, 0, 1), 5, n_tilts, 70.0)


def test_excitation_diagonal_formula():
    geo = Geometry(triclinic(), 200.0, (0, 0, 1), 9, 13, 40.0)
    kg = geo.k_t @ geo.g_xy.T
    expected = -(2 * kg + np.sum(geo.g_cart**2, axis=1)[None, :])
    np.testing.assert_allclose(geo.excitation_diagonal, expected, rtol=GEOMETRY_RTOL, atol=1e-15)


# ----------------------------------------------------------------------------- reflections
@pytest.mark.parametrize(
    ("crystal", "zone", "n_beams", "n_pairs"),
    [
        ("SrTiO3", (0, 0, 1), 13, 20),
        ("SrTiO3", (0, 0, 1), 25, None),
        ("ZnO", (0, 0, 1), 13, None),
        ("triclinic", (1, -1, 2), 9, None),
    ],
)
def test_reflections_are_exactly_the_friedel_pairs_of_beam_differences(
    crystal, zone, n_beams, n_pairs
):
    xtal = triclinic() if crystal == "triclinic" else Crystal.builtin(crystal)
    geo = Geometry(xtal, 120.0, zone, n_beams, 1, 50.0)
    diffs = {tuple(a - b) for i, a in enumerate(geo.hkl) for j, b in enumerate(geo.hkl) if i != j}
    pairs = {max(d, tuple(-x for x in d)) for d in diffs}
    refl = [tuple(r) for r in geo.reflection_hkl.tolist()]
    assert len(refl) == len(set(refl)) == geo.n_reflections
    # one entry per Friedel pair: never both g and -g
    assert not any(tuple(-x for x in r) in set(refl) for r in refl)
    assert {max(r, tuple(-x for x in r)) for r in refl} == pairs
    assert (0, 0, 0) not in refl
    if n_pairs is not None:
        assert geo.n_reflections == n_pairs
    # the (n, m) → reflection map reproduces g_n - g_m with the right sign
    n = geo.n_beams
    for i in range(n):
        assert geo.pair_index[i, i] == -1
        for j in range(n):
            if i != j:
                p, s = geo.pair_index[i, j], geo.pair_sign[i, j]
                assert s in (1, -1)
                assert tuple(s * geo.reflection_hkl[p]) == tuple(geo.hkl[i] - geo.hkl[j])
    # Hermitian structure: (m, n) maps to the same pair with the opposite sign
    off = ~np.eye(n, dtype=bool)
    np.testing.assert_array_equal(geo.pair_index[off], geo.pair_index.T[off])
    np.testing.assert_array_equal(geo.pair_sign[off], -geo.pair_sign.T[off])
    np.testing.assert_allclose(
        geo.reflection_g, geo.reflection_hkl @ xtal.reciprocal_vectors, rtol=GEOMETRY_RTOL
    )


def test_srtio3_13_beam_reflection_list():
    geo = Geometry(sto(), 120.0, (0, 0, 1), 13, 1, 70.0)
    shells = sorted({tuple(sorted(map(abs, r), reverse=True)) for r in geo.reflection_hkl.tolist()})
    assert shells == [
        (1, 0, 0),
        (1, 1, 0),
        (2, 0, 0),
        (2, 1, 0),
        (2, 2, 0),
        (3, 0, 0),
        (3, 1, 0),
        (4, 0, 0),
    ]
    assert geo.reflection_labels()[:3] == ["1 0 0", "0 1 0", "1 1 0"]


# ----------------------------------------------------------------------------- identity
def test_attrs_round_trip_and_determinism():
    geo = Geometry(triclinic(), 200.0, (1, -1, 2), 9, 13, 40.0, tilt_center_mrad=(1.5, -2.0))
    back = Geometry.from_attrs(geo.to_attrs())
    assert back == geo
    for name in ("hkl", "g_xy", "tilt_mrad", "reflection_hkl", "pair_index", "pair_sign"):
        np.testing.assert_array_equal(getattr(back, name), getattr(geo, name))
    assert geo != Geometry(
        triclinic(), 200.0, (1, -1, 2), 9, 13, 41.0, tilt_center_mrad=(1.5, -2.0)
    )
    with pytest.raises(ValueError, match="missing"):
        Geometry.from_attrs({"voltage_kv": 120})


def test_arrays_are_read_only():
    geo = Geometry(sto(), 120.0, (0, 0, 1), 5, 5, 10.0)
    with pytest.raises(ValueError):
        geo.hkl[0, 0] = 3
    with pytest.raises(ValueError):
        geo.k_t[0, 0] = 1.0
