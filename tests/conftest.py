"""Shared fixtures and test-run settings.

Hypothesis profiles (pick one with the ``HYPOTHESIS_PROFILE`` environment variable):

* ``ci`` (default): derandomized — the same examples on every run and machine — and no per-example
  deadline (Numba compiles on first call, and the CI machine is shared). No example database.
* ``dev``: random examples with the database on, for hunting new counterexamples locally.
"""

from __future__ import annotations

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
