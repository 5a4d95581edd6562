"""Result objects of Task 1 and Task 2: xarray Datasets plus the numbers the thesis reports."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from ..geometry import Geometry
from ..structure_factors import input_ug

__all__ = [
    "TaskInputs",
    "Task1Result",
    "Task2Result",
    "save_results_dataset",
    "load_results_dataset",
]

logger = logging.getLogger(__name__)


@dataclass
class TaskInputs:
    """A (pseudo-)experimental pattern and what is known about it.

    Attributes
    ----------
    pattern : xarray.Dataset or array_like
        The experimental pattern: a Dataset with ``intensity`` (tilt, beam), or an array of that shape.
    geometry : Geometry
        Its geometry.
    ug_true : xarray.DataArray or array_like, optional
        The true U_g [1/Å²] (needed by Task 1; Task 2 uses it only for comparisons).
    thickness_true_nm : float, optional
        The true thickness [nm] (needed by Task 1).
    name : str
        A label for files and tables.
    """

    pattern: object
    geometry: Geometry
    ug_true: object = None
    thickness_true_nm: float | None = None
    name: str = "pattern"

    def intensity(self) -> np.ndarray:
        """The experimental intensities (tilt, beam) as float64, validated against the geometry."""
        pat = self.pattern
        if isinstance(pat, xr.Dataset):
            if "intensity" not in pat:
                raise ValueError("pattern Dataset has no 'intensity' variable")
            pat = pat["intensity"]
        if isinstance(pat, xr.DataArray):
            if "thickness" in pat.dims:
                raise ValueError("pattern has a thickness series; select one thickness first")
            pat = pat.transpose("tilt", "beam").values
        arr = np.asarray(pat, dtype=float)
        g = self.geometry
        if arr.shape != (g.n_tilts, g.n_beams):
            raise ValueError(
                f"pattern has shape {arr.shape} but the geometry needs ({g.n_tilts}, {g.n_beams}) "
                "(tilt, beam); wrong geometry?"
            )
        if not np.all(np.isfinite(arr)) or np.sum(arr) <= 0:
            raise ValueError("pattern intensities must be finite with a positive sum")
        return arr

    def pattern_dataset(self) -> xr.Dataset:
        """The pattern as a labelled Dataset (tilt, beam)."""
        from ..schema import pattern_coords

        ds = xr.Dataset(coords=pattern_coords(self.geometry))
        ds["intensity"] = (("tilt", "beam"), self.intensity(), {"units": "1"})
        ds.attrs.update(self.geometry.to_attrs())
        return ds


def save_results_dataset(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Write a results Dataset to netCDF (complex variables split exactly, see :mod:`larbed.io`)."""
    from ..io import write_netcdf

    write_netcdf(ds, path, "learn-result")


def load_results_dataset(path: str | os.PathLike) -> xr.Dataset:
    """Read a file written by :func:`save_results_dataset` (or a ``Task*Result.save``)."""
    from ..io import read_netcdf

    return read_netcdf(path)


def _labelled_ug(geometry: Geometry, values: np.ndarray, source: str) -> xr.DataArray:
    da = input_ug(geometry, np.asarray(values, dtype=complex))
    da.attrs["source"] = source
    return da


@dataclass
class TaskResult:
    """What Task 1 and Task 2 results share: the history Dataset and the inputs."""

    history: xr.Dataset
    inputs: TaskInputs = field(repr=False)

    @property
    def name(self) -> str:
        return str(self.history.attrs.get("name", self.inputs.name))

    @property
    def model(self) -> str:
        return str(self.history.attrs["model"])

    @property
    def elapsed_s(self) -> float:
        """Wall time of the whole task (all resumed parts together) [s]."""
        return float(self.history.attrs["elapsed_s"])


@dataclass
class Task1Result(TaskResult):
    """Task 1 (U_g deviation): one row per deviation scale.

    Attributes
    ----------
    history : xarray.Dataset
        Over ``scale`` (and ``epoch``, ``reflection``, ``test_sample``, ``target``):
        ``r_factor``, ``ug_pred`` (complex), ``thickness_nm``, ``max_abs_ug``, ``train_loss``,
        ``test_loss``, ``test_pred``/``test_true`` (network output on the test set), ``elapsed_s``;
        ``ug_true``. Attributes: settings, ``threshold``, ``elapsed_s``.
    inputs : TaskInputs
    """


    @property
    def threshold(self) -> float:
        """Largest scale with R < r_threshold and max|U_pred| < ug_max (NaN if none)."""
        return float(self.history.attrs["threshold"])

    def summary(self) -> dict:
        """The thesis-table numbers: name, model, threshold, elapsed_s, last scale and its R."""
        h = self.history
        return {
            "name": self.name,
            "model": self.model,
            "threshold": self.threshold,
            "elapsed_s": self.elapsed_s,
            "scales_run": int(h.sizes["scale"]),
            "r_at_smallest_scale": float(h.r_factor[0]),
        }

    def save(self, out_dir: str | os.PathLike) -> str:
        """Write ``task1_<name>_<model>.nc`` into ``out_dir``; return its path."""
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(os.fspath(out_dir), f"task1_{self.name}_{self.model}.nc")
        save_results_dataset(self.history, path)
        return path

    def plot(self, out_dir: str | os.PathLike) -> list[str]:
        """PNG figures (loss curves, R vs scale, predicted vs true U_g) in ``out_dir``."""
        from ..plotting.learn import plot_task1

        return plot_task1(self, out_dir)


@dataclass
class Task2Result(TaskResult):
    """Task 2 (U_g determination): one row per loop iteration.

    Attributes
    ----------
    history : xarray.Dataset
        Over ``iteration`` (and ``loop_epoch``, ``epoch``, ``reflection``): ``r_factor``,
        ``ug_pred`` (complex), ``thickness_nm``, ``scale``, ``train_loss`` (iteration, loop_epoch),
        ``test_loss`` (after each iteration's last epoch), ``iteration_s``; ``init_train_loss`` and
        ``init_test_loss`` (epoch) of the initial training; ``ug_true`` when known. Attributes:
        settings, ``r_min``, ``best_iteration``, ``elapsed_s``.
    inputs : TaskInputs
    """


    @property
    def best_iteration(self) -> int:
        """Iteration of the smallest R."""
        return int(np.nanargmin(self.history.r_factor.values))

    @property
    def r_min(self) -> float:
        """Smallest R of the predictions."""
        return float(np.nanmin(self.history.r_factor.values))

    @property
    def r_first(self) -> float:
        """R of the first prediction (right after the initial training)."""
        return float(self.history.r_factor.values[0])

    @property
    def best_ug(self) -> xr.DataArray:
        """U_g of the best prediction [1/Å²], labelled like :func:`larbed.compute_ug`."""
        vals = self.history.ug_pred.isel(iteration=self.best_iteration).values
        return _labelled_ug(self.inputs.geometry, vals, "learn.task2")

    @property
    def thickness_nm(self) -> float:
        """Thickness of the best prediction [nm]."""
        return float(self.history.thickness_nm.values[self.best_iteration])

    def best_pattern(self) -> xr.Dataset:
        """The pattern simulated from the best prediction."""
        from ..simulation import simulate

        return simulate(self.inputs.geometry, self.best_ug, self.thickness_nm)

    def summary(self) -> dict:
        """The thesis-table numbers: name, model, r_min, thickness_nm, elapsed_s, r_first."""
        return {
            "name": self.name,
            "model": self.model,
            "r_min": self.r_min,
            "thickness_nm": self.thickness_nm,
            "elapsed_s": self.elapsed_s,
            "r_first": self.r_first,
            "best_iteration": self.best_iteration,
        }

    def save(self, out_dir: str | os.PathLike) -> list[str]:
        """Write the history and the best U_g as netCDF into ``out_dir``; return the paths."""
        from ..io import save_ug

        os.makedirs(out_dir, exist_ok=True)
        base = os.path.join(os.fspath(out_dir), f"task2_{self.name}_{self.model}")
        save_results_dataset(self.history, base + ".nc")
        save_ug(self.best_ug, base + "_best_ug.nc")
        return [base + ".nc", base + "_best_ug.nc"]

    def plot(self, out_dir: str | os.PathLike) -> list[str]:
        """PNG figures (losses, R and thickness vs iteration, U_g, images) in ``out_dir``."""
        from ..plotting.learn import plot_task2

        return plot_task2(self, out_dir)
