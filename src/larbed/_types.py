"""The string options of larbed, as ``typing.Literal`` aliases defined once.

Each alias comes with a tuple of its values (``WEIGHTS``, ``SCAN_METRICS``, …) that the functions
validate against and the tests iterate over.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "CHANNELS",
    "EIGEN_PATHS",
    "MODEL_KINDS",
    "PARAMETERIZATIONS",
    "RANDOM_PRIORS",
    "SCAN_METRICS",
    "SCHEDULERS",
    "START_NAMES",
    "STRUCTURE_KINDS",
    "WARNING_KINDS",
    "WEIGHTS",
    "Channel",
    "EigenPath",
    "ModelKind",
    "Parameterization",
    "RandomPrior",
    "ScanMetric",
    "Scheduler",
    "StartName",
    "StructureKind",
    "WarningKind",
    "Weights",
]

#: Scattering-factor tables (Lobato & Van Dyck 2014; Kirkland 2010).
Parameterization = Literal["lobato", "kirkland"]
#: Priors of random U_g: uniform ±range (thesis) or random atom arrangements.
RandomPrior = Literal["uniform", "physical"]
#: Weights of least squares: Poisson when a dose is known ('auto'), Poisson, a variance model
#: σ² = a + b·I fitted to the residuals (normalised data without a dose), or none.
Weights = Literal["auto", "poisson", "variance", "none"]
#: Agreement measure of a thickness scan.
ScanMetric = Literal["r_factor", "chi2"]
#: Eigensolver of a structure matrix: real symmetric, complex Hermitian, general (absorbing).
EigenPath = Literal["real", "hermitian", "general"]
#: Kinds of :class:`larbed.FitWarning`.
WarningKind = Literal["bound", "chi2", "r_factor", "not_converged", "undetermined", "symmetry"]
#: Structure parameters :func:`larbed.refine_structure` can refine (per site, or all sites).
StructureKind = Literal["xyz", "b_iso", "u_aniso", "occupancy", "b_global"]
#: Starts of :func:`larbed.determine` given by name.
StartName = Literal["search", "task2", "model"]
#: Training-data channels of :mod:`larbed.learn`.
Channel = Literal["random", "deviation"]
#: Dask schedulers of the local data generation.
Scheduler = Literal["synchronous", "threads", "processes"]
#: The two networks of the thesis.
ModelKind = Literal["ann", "cnn"]

PARAMETERIZATIONS: tuple[str, ...] = get_args(Parameterization)
RANDOM_PRIORS: tuple[str, ...] = get_args(RandomPrior)
WEIGHTS: tuple[str, ...] = get_args(Weights)
SCAN_METRICS: tuple[str, ...] = get_args(ScanMetric)
EIGEN_PATHS: tuple[str, ...] = get_args(EigenPath)
WARNING_KINDS: tuple[str, ...] = get_args(WarningKind)
START_NAMES: tuple[str, ...] = get_args(StartName)
STRUCTURE_KINDS: tuple[str, ...] = get_args(StructureKind)
CHANNELS: tuple[str, ...] = get_args(Channel)
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)
