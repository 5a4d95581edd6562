"""Random generators from user seeds, with one clear error for a seed numpy cannot use."""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["check_seed", "rng_from"]


def check_seed(seed, name: str = "seed", *, integer: bool = False):
    """``seed`` if it is a usable seed: a non-negative integer, or (unless ``integer``, for
    seeds that must be stored and replayed) None (fresh entropy), a
    :class:`numpy.random.SeedSequence` or a :class:`numpy.random.Generator`.

    Raises
    ------
    TypeError
        For any other type (float, str, bool, …), naming ``name``.
    ValueError
        For a negative integer.
    """
    if not integer and (seed is None or isinstance(
            seed, (np.random.SeedSequence, np.random.Generator))):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        kinds = "a non-negative integer" + ("" if integer else ", None or a numpy SeedSequence")
        raise TypeError(f"{name} must be {kinds}, got {seed!r} ({type(seed).__name__})")
    if seed < 0:
        raise ValueError(f"{name} must be >= 0, got {seed}")
    return int(seed)


def rng_from(seed, name: str = "seed") -> np.random.Generator:
    """:func:`numpy.random.default_rng` of a seed checked by :func:`check_seed`."""
    return np.random.default_rng(check_seed(seed, name))
