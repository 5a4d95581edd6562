"""From a pattern alone to U_g and thickness: :func:`determine` and its stages.

Modules: :mod:`~larbed.determination.pipeline` (:func:`determine`), :mod:`~larbed.determination.starts`
(refined starts, kinematic starts, explicit and network starts), :mod:`~larbed.determination.search`
(the global search), :mod:`~larbed.determination.polish` (local moves near a solution),
:mod:`~larbed.determination.result` (:class:`DeterminationResult`).
"""

from .pipeline import determine
from .result import DeterminationResult
from .search import UG_BOUND, global_search
from .starts import WEAK_FRACTION, kinematic_starts

__all__ = ["DeterminationResult", "UG_BOUND", "WEAK_FRACTION", "determine", "global_search",
           "kinematic_starts"]
