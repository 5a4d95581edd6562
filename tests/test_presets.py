"""The twelve presets equal the parameter files of SPEC §7."""

from __future__ import annotations

import numpy as np
import pytest

import larbed
from larbed import presets
from larbed.geometry import valid_tilt_counts

# SPEC §7, copied by hand: name, beams, tilts, t nm, range mrad, kV,
# T1 thr CNN/ANN, T1 s CNN/ANN, T2 R_min CNN/ANN, T2 t nm CNN/ANN, T2 s CNN/ANN
SPEC_TABLE = """
SrTiO3-1 | 13 | 441 | 30 | 70 | 120 | 5.12/5.12 | 4031/3077 | 0.303/0.423 | 55.5/52.4 | 1127/952
SrTiO3-2 | 13 | 441 | 30 | 100 | 120 | 5.12/5.12 | 4655/3820 | 0.197/0.219 | 36.8/52.9 | 1174/1064
SrTiO3-3 | 13 | 441 | 15 | 100 | 120 | 5.12/5.12 | 4386/4071 | 0.215/0.176 | 55.9/51.3 | 1223/1729
SrTiO3-4 | 13 | 797 | 30 | 70 | 120 | 5.12/5.12 | 9295/12243 | 0.397/0.353 | 55.6/55.4 | 1891/2271
SrTiO3-5 | 13 | 797 | 30 | 40 | 120 | 5.12/5.12 | 7504/8291 | 0.515/0.510 | 53.0/51.7 | 1737/3411
SrTiO3-6 | 13 | 1009 | 30 | 100 | 120 | 5.12/1.28 | 14697/6269 | 0.221/0.177 | 48.6/47.5 | 2071/4881
SrTiO3-7 | 13 | 1009 | 15 | 100 | 120 | 5.12/5.12 | 9152/13773 | 0.199/0.169 | 48.3/49.3 | 2027/4234
SrTiO3-8 | 25 | 441 | 30 | 70 | 120 | 5.12/5.12 | 3657/11794 | 0.505/0.479 | 47.7/48.6 | 1554/1658
SrTiO3-9 | 25 | 441 | 15 | 100 | 120 | 5.12/5.12 | 5135/4328 | 0.301/0.262 | 55.5/55.1 | 1630/2561
SrTiO3-10 | 69 | 441 | 30 | 70 | 120 | 5.12/5.12 | 3986/5216 | 0.630/0.711 | 51.6/55.6 | 2771/10459
ZnO-1 | 95 | 197 | 50 | 30 | 100 | 10.24/10.24 | 2104/7777 | 0.495/0.531 | 47.2/46.8 | 1424/3317
ZnO-2 | 97 | 253 | 50 | 80 | 60 | 10.24/2.56 | 3060/6420 | 0.666/0.713 | 52.3/54.2 | 3122/6293
"""


def _spec_rows():
    for line in SPEC_TABLE.strip().splitlines():
        cells = [c.strip() for c in line.split("|")]
        yield cells


@pytest.mark.parametrize("cells", list(_spec_rows()), ids=lambda c: c[0])
def test_preset_equals_spec_table(cells):
    name, beams, tilts, t_nm, rng, kv = cells[:6]
    p = presets.load(name)
    assert p.name == name
    assert p.crystal.name == name.split("-")[0]
    assert all(atom.b_iso == 0.0 for atom in p.crystal.atoms)
    g = p.geometry
    assert (g.n_beams, g.n_tilts) == (int(beams), int(tilts))
    assert g.hkl.shape == (int(beams), 3)
    assert g.tilt_mrad.shape == (int(tilts), 2)
    assert p.thickness_nm == float(t_nm)
    assert g.tilt_range_mrad == float(rng)
    assert np.hypot(*g.tilt_mrad.T).max() == pytest.approx(float(rng), rel=1e-12)
    assert g.voltage_kv == float(kv)
    assert g.zone_axis == (0, 0, 1)
    assert g.n_tilts in valid_tilt_counts()
    assert g.n_tilts in (197, 253, 441, 797, 1009)
    for i, model in enumerate(presets.THESIS_MODELS):
        thesis = p.thesis[model]
        values = [float(c.split("/")[i]) for c in cells[6:]]
        assert [thesis[k] for k in presets.THESIS_KEYS] == values


def test_names_order_and_lookup():
    assert presets.names() == tuple(c[0] for c in _spec_rows())
    assert presets.load("srtio3-1") is presets.load("SrTiO3-1")
    assert presets.load(" ZNO-2 ").name == "ZnO-2"


def test_srtio3_beams_and_zno_crystal():
    # SPEC §1: 13 beams = 000 + {100} + {110} + {200}
    hkl = presets.load("SrTiO3-1").geometry.hkl
    shells = sorted({int(h * h + k * k) for h, k, _ in hkl.tolist()})
    assert shells == [0, 1, 2, 4]
    zno = presets.load("ZnO-1").crystal
    assert zno.cell == pytest.approx((3.2498, 3.2498, 5.2066, 90, 90, 120))


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown preset 'SrTiO3-11'; valid presets: SrTiO3-1, "):
        presets.load("SrTiO3-11")
    with pytest.raises(ValueError, match="ZnO-2"):
        presets.load("GaAs-1")
    with pytest.raises(TypeError, match="must be a string"):
        presets.load(3)


def test_thesis_results_are_read_only():
    p = presets.load("ZnO-2")
    with pytest.raises(TypeError):
        p.thesis["CNN"]["task2_r_min"] = 0.0  # type: ignore[index]
    with pytest.raises(AttributeError):
        p.thickness_nm = 1.0  # type: ignore[misc]


def test_preset_simulate_equals_direct_call():
    p = presets.load("SrTiO3-1")
    ds = p.simulate()
    direct = larbed.simulate(p.geometry, larbed.compute_ug(p.crystal, p.geometry), 30.0)
    assert np.array_equal(ds.intensity.values, direct.intensity.values)
    assert ds.attrs["preset"] == "SrTiO3-1"
    noisy_a = p.simulate(dose=1e4, seed=5)
    noisy_b = p.simulate(dose=1e4, seed=5)
    assert np.array_equal(noisy_a.intensity.values, noisy_b.intensity.values)
    assert np.array_equal(noisy_a.intensity_noise_free.values, direct.intensity.values)
    # counts: dose·I is an integer everywhere
    counts = noisy_a.intensity.values * 1e4
    assert np.array_equal(np.round(counts), np.round(counts, 6))
    series = p.simulate(thickness_nm=[15.0, 30.0])
    assert np.array_equal(series.intensity.sel(thickness=30.0).values, direct.intensity.values)
