"""The twelve LARBED parameter files of the thesis (Chen 2022, table 4.1) as ready-made experiments.

Each preset fixes the crystal (built-in SrTiO3 or ZnO, B = 0), the geometry (beams, tilts, tilt
range, voltage; [001] zone axis) and the thickness of the pseudo-experimental pattern, and keeps
the thesis's results (Task 1 threshold and time, Task 2 best R, thickness and time, for the CNN and
the ANN) for comparison tables. The data live in ``larbed/data/presets.json``.

Examples
--------
>>> from larbed import presets
>>> presets.names()[:3]
('SrTiO3-1', 'SrTiO3-2', 'SrTiO3-3')
>>> p = presets.load("srtio3-10")
>>> p.name, p.geometry.n_beams, p.geometry.n_tilts, p.thickness_nm
('SrTiO3-10', 69, 441, 30.0)
>>> p.thesis["CNN"]["task2_r_min"]
0.63
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType

import numpy as np
import xarray as xr

from .crystal import Crystal
from .geometry import Geometry
from .scattering import Parameterization

__all__ = ["Preset", "names", "load", "THESIS_MODELS", "THESIS_KEYS"]

logger = logging.getLogger(__name__)

#: The two networks of the thesis, keys of :attr:`Preset.thesis`.
THESIS_MODELS: tuple[str, ...] = ("CNN", "ANN")
#: Keys of each model's entry in :attr:`Preset.thesis` (times in s, thickness in nm).
THESIS_KEYS: tuple[str, ...] = (
    "task1_threshold",
    "task1_time_s",
    "task2_r_min",
    "task2_thickness_nm",
    "task2_time_s",
)


@dataclass(frozen=True, eq=False)
class Preset:
    """One parameter file: crystal, geometry, thickness and the thesis's results.

    Attributes
    ----------
    name : str
        Preset name, e.g. ``'SrTiO3-1'``.
    crystal : Crystal
        Built-in crystal, Debye-Waller B = 0.
    geometry : Geometry
        Beams and tilts ([001] zone axis).
    thickness_nm : float
        Thickness of the pseudo-experimental pattern [nm].
    thesis : Mapping
        ``{'CNN': {...}, 'ANN': {...}}`` with the keys of :data:`THESIS_KEYS`: Task 1 threshold
        (deviation scale) and time [s]; Task 2 best R, its thickness [nm] and time [s] (thesis, on a
        6-core 3.2 GHz i7).
    """

    name: str
    crystal: Crystal
    geometry: Geometry
    thickness_nm: float
    thesis: Mapping[str, Mapping[str, float]] = field(repr=False)

    def ug(self, parameterization: Parameterization = "lobato") -> xr.DataArray:
        """Structure factors U_g [1/Å²] of the preset's crystal for its geometry."""
        from .structure_factors import compute_ug

        return compute_ug(self.crystal, self.geometry, parameterization=parameterization)

    def simulate(
        self,
        dose: float | None = None,
        seed: int | np.random.Generator | None = None,
        *,
        thickness_nm: float | Sequence[float] | None = None,
        absorption: float | None = None,
        progress: bool = False,
    ) -> xr.Dataset:
        """The pseudo-experimental pattern: :func:`larbed.compute_ug` + :func:`larbed.simulate`.

        Parameters
        ----------
        dose : float, optional
            Electrons per tilt for Poisson noise; ``None`` gives the noise-free pattern.
        seed : int or numpy.random.Generator, optional
            Seed of the noise.
        thickness_nm : float or sequence of float, optional
            Thickness(es) [nm]; default the preset's :attr:`thickness_nm`.
        absorption : float, optional
            Proportional absorption κ (see :func:`larbed.simulate`).
        progress : bool
            Show a progress bar.

        Returns
        -------
        xarray.Dataset
            As :func:`larbed.simulate`, with ``attrs['preset']`` set to the preset name.
        """
        from .simulation import simulate

        thick = self.thickness_nm if thickness_nm is None else thickness_nm
        ds = simulate(
            self.geometry,
            self.ug(),
            thick,
            absorption=absorption,
            dose=dose,
            seed=seed,
            progress=progress,
        )
        ds.attrs["preset"] = self.name
        return ds

    def __repr__(self) -> str:
        g = self.geometry
        return (
            f"Preset({self.name!r}: {g.n_beams} beams × {g.n_tilts} tilts, "
            f"{g.tilt_range_mrad:g} mrad, {g.voltage_kv:g} kV, {self.thickness_nm:g} nm)"
        )


@functools.lru_cache(maxsize=1)
def _table() -> tuple[dict, ...]:
    text = resources.files("larbed.data").joinpath("presets.json").read_text(encoding="utf-8")
    return tuple(json.loads(text)["presets"])


def names() -> tuple[str, ...]:
    """Names of the twelve presets, in the order of the thesis's table.

    Examples
    --------
    >>> len(names()), names()[-1]
    (12, 'ZnO-2')
    """
    return tuple(row["name"] for row in _table())


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"preset name must be a string, got {type(name).__name__}")
    lookup = {n.lower(): n for n in names()}
    key = name.strip().lower()
    if key not in lookup:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(names())}")
    return lookup[key]


def load(name: str) -> Preset:
    """Load a preset by name (case-insensitive).

    Parameters
    ----------
    name : str
        One of :func:`names`, e.g. ``'SrTiO3-1'`` or ``'zno-2'``.

    Returns
    -------
    Preset

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid ones).
    """
    return _load(_canonical(name))


@functools.cache
def _load(name: str) -> Preset:
    row = next(r for r in _table() if r["name"] == name)
    crystal = Crystal.builtin(row["crystal"])
    geometry = Geometry(
        crystal,
        row["voltage_kv"],
        tuple(row["zone_axis"]),
        int(row["n_beams"]),
        int(row["n_tilts"]),
        row["tilt_range_mrad"],
    )
    thesis = MappingProxyType(
        {model: MappingProxyType(dict(row["thesis"][model])) for model in THESIS_MODELS}
    )
    logger.debug("loaded preset %s", name)
    return Preset(name, crystal, geometry, float(row["thickness_nm"]), thesis)
