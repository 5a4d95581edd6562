"""Refinement of the crystal itself: atoms, Debye–Waller factors, occupancies, hybrid U_g.

* :func:`refine_structure` — least squares of the structure parameters (coordinates, B or U^ij,
  occupancies, an overall B), the thickness and chosen free low-order U_g against a pattern, under
  the space group's constraints, with exact derivatives by the chain rule;
* :class:`StructureResult` — the refined crystal, parameters with standard errors and
  correlations, U_g and their X-ray equivalents (Mott–Bethe), CIF output.

Modules: :mod:`~larbed.structure.model` (U_g and ∂U_g/∂p of the sites),
:mod:`~larbed.structure.parameters` (the parameter map, ``free`` / ``free_ug`` parsing),
:mod:`~larbed.structure.api` (:func:`refine_structure`), :mod:`~larbed.structure.result`,
:mod:`~larbed.structure.cif` (CIF with standard uncertainties).
"""

from .api import refine_structure
from .result import StructureResult

__all__ = ["StructureResult", "refine_structure"]
