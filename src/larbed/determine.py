"""Moved: the ``determine`` pipeline now lives in :mod:`larbed.determination`.

Names imported from here keep working for one release, with a ``DeprecationWarning``; use
``larbed.determine`` / ``larbed.DeterminationResult`` or :mod:`larbed.determination`.
"""

from ._deprecation import moved_names

__all__: list[str] = []

__getattr__ = moved_names(__name__, {
    "determine": "larbed.determination.pipeline",
    "DeterminationResult": "larbed.determination.result",
    "EXACT_FIT_R": "larbed.determination.polish",
    "POISSON_DEVIANCE_GAIN": "larbed.determination.polish",
    "SCAN_STEP_NM": "larbed.determination.starts",
    "START_ITERATIONS": "larbed.determination.starts",
    "STAGED_MIN_GROUPS": "larbed.determination.starts",
    "SUCCESS_R_NOISE_FREE": "larbed.determination.starts",
    "SUCCESS_R_NOISE_FACTOR": "larbed.determination.starts",
    "FIXED_ERROR_RTOL": "larbed.determination.result",
})
