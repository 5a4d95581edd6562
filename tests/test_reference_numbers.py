"""Reference numbers of SPEC §9 and the scattering-factor pins of data/scattering_factors/README."""

from __future__ import annotations

import numpy as np
import pytest

from larbed import (
    Crystal,
    Geometry,
    compute_ug,
    electron_wavelength,
    relativistic_gamma,
    scattering_factor,
    simulate,
    wave_number,
)
from larbed.scattering import known_elements
from larbed.testing import simulate_reference

#: Published values carry 5 decimals (λ, γ to 6): agree to half a unit in the last digit.
KINEMATICS_ATOL = 5e-7
#: f pins are quoted to 4 decimals [Å]: agree to half a unit in the last digit.
F_PIN_ATOL = 5e-5
#: SPEC §9 intensities are quoted to 5 decimals (I_100 to one significant digit, 7e-5 ± 5e-6).
INTENSITY_ATOL = 5e-6
#: U_g of a centrosymmetric cell with the origin on Sr are real; Im U is exp() round-off only.
IMAG_ATOL = 1e-15
#: Mott-Bethe: g² f(g) · 2π² a0 / Z → 1 at large g; both fits reach it within 5 % at g = 20 1/Å.
MOTT_BETHE_RTOL = 0.05
BOHR_RADIUS = 0.529177210903  # Å

# (hkl, U [1/Å²], atol = half a unit in the last quoted digit)
SRTIO3_UG = [
    ((1, 0, 0), 0.0006015, 5e-8),
    ((1, 1, 0), 0.050729, 5e-7),
    ((2, 0, 0), 0.067200, 5e-7),
    ((2, 1, 0), -0.0014078, 5e-8),
    ((2, 2, 0), 0.046380, 5e-7),
]


@pytest.fixture(scope="module")
def sto_13():
    xtal = Crystal.builtin("SrTiO3")
    geo = Geometry(xtal, 120.0, (0, 0, 1), 13, 1, 70.0)
    return xtal, geo


@pytest.fixture(scope="module")
def sto_ug_25():
    xtal = Crystal.builtin("SrTiO3")
    geo = Geometry(xtal, 120.0, (0, 0, 1), 25, 1, 70.0)
    return geo, compute_ug(xtal, geo)


def test_wavelength_and_gamma_at_120_kv():
    assert electron_wavelength(120.0) == pytest.approx(0.033492, abs=KINEMATICS_ATOL)
    assert relativistic_gamma(120.0) == pytest.approx(1.234834, abs=KINEMATICS_ATOL)
    assert wave_number(120.0) == pytest.approx(1 / electron_wavelength(120.0), rel=1e-15)
    # non-relativistic limit at low voltage: λ → h / sqrt(2 m e V) = 12.2643 / sqrt(V) Å
    assert electron_wavelength(0.001) == pytest.approx(12.2643 / np.sqrt(1.0), rel=1e-5)


@pytest.mark.parametrize(("hkl", "value", "atol"), SRTIO3_UG)
def test_srtio3_structure_factors(sto_ug_25, hkl, value, atol):
    geo, ug = sto_ug_25
    h, k, l = hkl
    # every symmetry-equivalent reflection in the list (4mm: ±h, ±k, swapped) carries the value
    equivalents = {(h, k, l), (k, h, l), (-h, k, l), (h, -k, l), (k, -h, l), (-k, h, l)}
    hkl_rows = [tuple(r) for r in geo.reflection_hkl.tolist()]
    found = [
        i for i, r in enumerate(hkl_rows) if r in equivalents or tuple(-x for x in r) in equivalents
    ]
    assert len(found) >= 2, f"{hkl}: expected its 4mm-equivalent Friedel pairs, found {found}"
    np.testing.assert_allclose(ug.values[found].real, value, rtol=0, atol=atol)
    np.testing.assert_allclose(ug.values[found].imag, 0.0, rtol=0, atol=IMAG_ATOL)


def test_srtio3_u000(sto_ug_25):
    _, ug = sto_ug_25
    assert ug.attrs["u0"] == pytest.approx(0.18467, abs=5e-6)


def test_srtio3_zone_axis_intensities(sto_13):
    xtal, geo = sto_13
    ug = compute_ug(xtal, geo)
    ds = simulate(geo, ug, 30.0)  # t = 300 Å
    labels = geo.beam_labels()
    intensity = ds.intensity.isel(tilt=0).values
    shells = {
        (0, 0, 0): 0.10209,
        (1, 1, 0): 0.15887,
        (2, 0, 0): 0.06554,
        (1, 0, 0): 7e-5,
    }
    for hkl, expected in shells.items():
        shell = [
            i for i, row in enumerate(geo.hkl.tolist()) if sorted(map(abs, row)) == sorted(hkl)
        ]
        assert len(shell) == (1 if hkl == (0, 0, 0) else 4), labels
        np.testing.assert_allclose(intensity[shell], expected, rtol=0, atol=INTENSITY_ATOL)
    # the plain NumPy reference gives the same numbers
    np.testing.assert_allclose(
        simulate_reference(geo, ug, 30.0)[0, 0], intensity, rtol=0, atol=1e-12
    )


# ----------------------------------------------------------------------------- scattering factors
LOBATO_F0 = {"H": 0.5292, "O": 2.0291, "Ti": 8.7797, "Zn": 6.0656, "Rb": 11.7826, "Sr": 13.1099}
KIRKLAND_F0 = {"O": 1.9897, "Ti": 8.7400, "Sr": 13.0552}
LOBATO_F1 = {"O": 0.5427, "Sr": 1.7420}


@pytest.mark.parametrize(("symbol", "value"), LOBATO_F0.items())
def test_lobato_f0_pins(symbol, value):
    assert float(scattering_factor(symbol, 0.0)) == pytest.approx(value, abs=F_PIN_ATOL)


@pytest.mark.parametrize(("symbol", "value"), KIRKLAND_F0.items())
def test_kirkland_f0_pins(symbol, value):
    f = float(scattering_factor(symbol, 0.0, "kirkland"))
    assert f == pytest.approx(value, abs=F_PIN_ATOL)


@pytest.mark.parametrize(("symbol", "value"), LOBATO_F1.items())
def test_lobato_f_at_g1_pins(symbol, value):
    assert float(scattering_factor(symbol, 1.0)) == pytest.approx(value, abs=F_PIN_ATOL)


def test_rb_and_sr_rows_are_not_swapped():
    # the swap seen in another package: Rb (Z=37) must scatter less than Sr (Z=38) at every g
    g = np.linspace(0.0, 6.0, 61)
    for table in ("lobato", "kirkland"):
        assert np.all(scattering_factor("Rb", g, table) < scattering_factor("Sr", g, table))


@pytest.mark.parametrize("table", ["lobato", "kirkland"])
def test_every_row_has_the_mott_bethe_tail_of_its_element(table):
    elements = known_elements(table)
    assert len(elements) == 103 and elements[0] == "H" and elements[-1] == "Lr"
    g = 20.0
    z = np.arange(1, 104)
    f = np.array([float(scattering_factor(e, g, table)) for e in elements])
    ratio = f * g**2 * 2 * np.pi**2 * BOHR_RADIUS / z
    np.testing.assert_allclose(ratio, 1.0, rtol=MOTT_BETHE_RTOL)


def test_scattering_factor_shape_and_monotonic_decay():
    g = np.array([[0.0, 0.5], [1.0, 2.0]])
    f = scattering_factor("Sr", g)
    assert f.shape == (2, 2)
    assert np.all(np.diff(f.ravel()) < 0)  # f_e(g) falls with g
