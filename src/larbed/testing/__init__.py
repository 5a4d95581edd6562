"""Testing helpers: slow, obviously-correct references (:mod:`~larbed.testing.reference`) and shared
assertions (:mod:`~larbed.testing.assertions`), for larbed's own tests and for users' tests."""

from .assertions import assert_patterns_allclose
from .reference import (
    extinction_distance,
    kinematic_intensity,
    propagate,
    simulate_expm,
    simulate_reference,
    structure_matrices,
    two_beam_intensity,
)

__all__ = [
    "assert_patterns_allclose",
    "extinction_distance",
    "kinematic_intensity",
    "propagate",
    "simulate_expm",
    "simulate_reference",
    "structure_matrices",
    "two_beam_intensity",
]
