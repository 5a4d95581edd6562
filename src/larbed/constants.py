"""Physical constants and relativistic electron kinematics.

All lengths are in Ångström, voltages in kilovolts.
"""

from __future__ import annotations

import math

__all__ = ["electron_wavelength", "relativistic_gamma", "wave_number"]

# CODATA 2018 values (SI).
PLANCK = 6.62607015e-34  # J s
ELECTRON_MASS = 9.1093837015e-31  # kg
ELEMENTARY_CHARGE = 1.602176634e-19  # C
SPEED_OF_LIGHT = 299792458.0  # m / s


def _check_voltage(voltage_kv: float) -> float:
    v = float(voltage_kv)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"voltage_kv must be a positive finite number, got {voltage_kv!r}")
    return v


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength.

    Parameters
    ----------
    voltage_kv : float
        Accelerating voltage [kV].

    Returns
    -------
    float
        Wavelength λ = h / sqrt(2 m0 e V (1 + eV / 2 m0 c²)) [Å].

    Examples
    --------
    >>> round(electron_wavelength(120.0), 6)
    0.033492
    """
    v = _check_voltage(voltage_kv) * 1e3
    energy = ELEMENTARY_CHARGE * v
    p = math.sqrt(
        2 * ELECTRON_MASS * energy * (1 + energy / (2 * ELECTRON_MASS * SPEED_OF_LIGHT**2))
    )
    return PLANCK / p * 1e10


def wave_number(voltage_kv: float) -> float:
    """Electron wave number K = 1/λ [1/Å] (no factor 2π)."""
    return 1.0 / electron_wavelength(voltage_kv)


def relativistic_gamma(voltage_kv: float) -> float:
    """Lorentz factor γ = 1 + eV / (m0 c²) (dimensionless).

    Examples
    --------
    >>> round(relativistic_gamma(120.0), 6)
    1.234834
    """
    v = _check_voltage(voltage_kv) * 1e3
    return 1.0 + ELEMENTARY_CHARGE * v / (ELECTRON_MASS * SPEED_OF_LIGHT**2)
