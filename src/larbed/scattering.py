"""Electron atomic scattering factors f_e(g) from published parameterisations.

The parameter tables ship as package data (``larbed/data/*.json``):

* ``'lobato'`` — I. Lobato & D. Van Dyck, Acta Cryst. A70 (2014) 636 (default);
* ``'kirkland'`` — E. J. Kirkland, *Advanced Computing in Electron Microscopy*, 2nd ed. (2010),
  Appendix C.

``g`` is the length of the scattering vector, g = 2 sin θ / λ [1/Å], and f_e is in Å.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import numpy as np

from ._types import PARAMETERIZATIONS, Parameterization

__all__ = ["Parameterization", "PARAMETERIZATIONS", "scattering_factor", "known_elements"]



@cache
def _table(parameterization: str) -> dict[str, np.ndarray]:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"unknown scattering-factor parameterization {parameterization!r}; "
            f"choose one of {PARAMETERIZATIONS}"
        )
    text = resources.files("larbed.data").joinpath(f"{parameterization}.json").read_text()
    raw = json.loads(text)
    return {symbol: np.asarray(params, dtype=float) for symbol, params in raw.items()}


def known_elements(parameterization: Parameterization = "lobato") -> tuple[str, ...]:
    """Element symbols the parameterisation covers (H … Lr)."""
    return tuple(_table(parameterization))


def normalize_symbol(symbol: str) -> str:
    """Canonical element symbol ('sr' → 'Sr', 'O2-' → 'O'); raises ValueError if unknown."""
    if not isinstance(symbol, str):
        raise TypeError(f"element symbol must be a string, got {type(symbol).__name__}")
    letters = "".join(ch for ch in symbol.strip() if ch.isalpha())
    canon = letters[:1].upper() + letters[1:].lower()
    if canon not in _table("lobato"):
        raise ValueError(f"unknown element {symbol!r}")
    return canon


def _lobato(params: np.ndarray, g2: np.ndarray) -> np.ndarray:
    a, b = params[0][:, None], params[1][:, None]
    bg2 = b * g2[None, :]
    return np.sum(a * (2.0 + bg2) / (1.0 + bg2) ** 2, axis=0)


def _kirkland(params: np.ndarray, g2: np.ndarray) -> np.ndarray:
    a, b, c, d = (p[:, None] for p in params)
    return np.sum(a / (g2[None, :] + b) + c * np.exp(-d * g2[None, :]), axis=0)


def scattering_factor(
    symbol: str, g: float | np.ndarray, parameterization: Parameterization = "lobato"
) -> np.ndarray:
    """Electron scattering factor of a neutral atom.

    Parameters
    ----------
    symbol : str
        Element symbol, e.g. ``'Sr'``.
    g : float or array_like
        Scattering-vector length g = 2 sin θ / λ [1/Å]; must be ≥ 0.
    parameterization : {'lobato', 'kirkland'}
        Which published fit to use.

    Returns
    -------
    numpy.ndarray
        f_e(g) [Å], same shape as ``g``.

    Examples
    --------
    >>> float(scattering_factor("O", 0.0).round(4))
    2.0291
    """
    table = _table(parameterization)
    params = table[normalize_symbol(symbol)]
    g = np.asarray(g, dtype=float)
    if np.any(~np.isfinite(g)) or np.any(g < 0):
        raise ValueError("g must be finite and non-negative [1/Å]")
    g2 = np.atleast_1d(g).ravel() ** 2
    f = _lobato(params, g2) if parameterization == "lobato" else _kirkland(params, g2)
    return f.reshape(g.shape)
