"""Shared fixtures and test-run settings.

Hypothesis profiles (pick one with the ``HYPOTHESIS_PROFILE`` environment variable):

* ``ci`` (default): derandomized — the same examples on every run and machine — and no per-example
  deadline (Numba compiles on first call, and the CI machine is shared). No example database.
* ``dev``: random examples with the database on, for hunting new counterexamples locally.
"""

from __future__ import annotations

import functools
import os

import pytest
from hypothesis import HealthCheck, settings

import larbed

# Plots in tests never need a display (conftest runs before any test module imports pyplot).
os.environ.setdefault("MPLBACKEND", "Agg")

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: The small test geometry: SrTiO3 [001] at 120 kV, 13 beams (000, {100}, {110}, {200}) and 13
#: tilts (disc radius 2) over 70 mrad — big enough to have 20 Friedel pairs, cheap to simulate.
SMALL_VOLTAGE_KV = 120.0
SMALL_ZONE_AXIS = (0, 0, 1)
SMALL_N_BEAMS = 13
SMALL_N_TILTS = 13
SMALL_TILT_RANGE_MRAD = 70.0


@pytest.fixture(scope="session")
def srtio3() -> larbed.Crystal:
    """Built-in SrTiO3 (a = 3.905 Å, B = 0), SPEC §9."""
    return larbed.Crystal.builtin("SrTiO3")


@pytest.fixture(scope="session")
def zno() -> larbed.Crystal:
    """Built-in wurtzite ZnO (a = 3.2498 Å, c = 5.2066 Å, u = 0.3819, B = 0), SPEC §9."""
    return larbed.Crystal.builtin("ZnO")


@pytest.fixture(scope="session")
def geo(srtio3) -> larbed.Geometry:
    """SrTiO3 [001], 120 kV, 13 beams × 49 tilts, 60 mrad tilt radius: the measurement-model tests'
    geometry (a module may define its own ``geo``)."""
    return larbed.Geometry(srtio3, 120, (0, 0, 1), 13, 49, 60)


@pytest.fixture(scope="session")
def ug(srtio3, geo):
    """Computed U_g of SrTiO3 for :func:`geo` [1/Å²]."""
    return larbed.compute_ug(srtio3, geo)


@pytest.fixture(scope="session")
def small_geometry(srtio3) -> larbed.Geometry:
    """SrTiO3 [001], 120 kV, 13 beams × 13 tilts, 70 mrad tilt radius."""
    return larbed.Geometry(
        srtio3,
        SMALL_VOLTAGE_KV,
        SMALL_ZONE_AXIS,
        SMALL_N_BEAMS,
        SMALL_N_TILTS,
        SMALL_TILT_RANGE_MRAD,
    )


@pytest.fixture(scope="session")
def small_ug(srtio3, small_geometry):
    """ComputeUg of SrTiO3 (Lobato) for :func:`small_geometry` — real, 20 reflections [1/Å²]."""
    return larbed.compute_ug(srtio3, small_geometry)


#: A low-symmetry crystal for the kernel tests (three elements, no special positions).
TRICLINIC = ((4.1, 5.3, 6.2, 81.0, 97.0, 104.0),
             [("Si", (0.1, 0.2, 0.3), 1.0, 0.5), ("O", (0.6, 0.15, 0.8)), ("Mg", (0.33, 0.71, 0.45), 0.7)])


@functools.cache
def _crystal(name: str) -> larbed.Crystal:
    if name == "triclinic":
        return larbed.Crystal(*TRICLINIC, name="triclinic")
    return larbed.Crystal.builtin(name)


@functools.cache
def _geometry(crystal: str, zone_axis, n_beams, n_tilts, tilt_range_mrad, voltage_kv,
              tilt_center_mrad) -> larbed.Geometry:
    return larbed.Geometry(_crystal(crystal), voltage_kv, zone_axis, n_beams, n_tilts,
                           tilt_range_mrad, tilt_center_mrad=tilt_center_mrad)


@pytest.fixture(scope="session")
def make_crystal():
    """Crystal by name, built once: ``'SrTiO3'``, ``'ZnO'`` (builtins) or ``'triclinic'``."""
    return _crystal


@pytest.fixture(scope="session")
def make_geometry():
    """Geometry factory (built once per argument set): ``make_geometry(crystal_name,
    zone_axis=(0, 0, 1), n_beams=13, n_tilts=49, tilt_range_mrad=70, voltage_kv=120,
    tilt_center_mrad=(0, 0))``."""

    def make(crystal: str = "SrTiO3", zone_axis=(0, 0, 1), n_beams: int = 13, n_tilts: int = 49,
             tilt_range_mrad: float = 70.0, voltage_kv: float = 120.0, tilt_center_mrad=(0.0, 0.0)):
        return _geometry(crystal, tuple(zone_axis), n_beams, n_tilts, float(tilt_range_mrad),
                         float(voltage_kv), tuple(float(v) for v in tilt_center_mrad))

    return make


@pytest.fixture(scope="session")
def small_case(make_geometry):
    """(geometry, true U_g, noise-free pattern): SrTiO3 [001], 9 beams (12 U_g, 5 symmetry
    groups), 49 tilts over 70 mrad, 20 nm — the case of the determine tests."""
    geo = make_geometry(n_beams=9, n_tilts=49)
    truth = larbed.compute_ug(geo.crystal, geo)
    return geo, truth, larbed.simulate(geo, truth, 20.0)


@pytest.fixture(scope="session")
def check_jacobian():
    """check(model, x, columns): model.jacobian(x) against central differences of
    model.intensities on the given x columns (1e-5 of each column's largest entry), and its
    intensities against model.intensities(x)."""
    import numpy as np

    def check(model, x, columns):
        inten, jac = model.jacobian(x)
        np.testing.assert_allclose(inten, model.intensities(x), rtol=0, atol=1e-13)
        for k in columns:
            h = 1e-6 * max(1.0, abs(x[k]))
            a, b = x.copy(), x.copy()
            a[k] += h
            b[k] -= h
            fd = (model.intensities(a) - model.intensities(b)) / (2 * h)
            scale = max(np.max(np.abs(jac[:, :, k])), 1e-10)
            assert np.max(np.abs(fd - jac[:, :, k])) < 1e-5 * scale, k
        return inten, jac

    return check
