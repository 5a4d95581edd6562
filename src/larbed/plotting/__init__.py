"""Pictures with matplotlib (non-interactive; every function returns a ``Figure``).

:mod:`~larbed.plotting.pattern`: patterns as 2-D LARBED images, thickness series, fit comparisons;
:mod:`~larbed.plotting.determination`: U_g with error bars and refinement histories;
:mod:`~larbed.plotting.realdata`: fits to measured data (per-beam residuals, background, tilts);
:mod:`~larbed.plotting.learn`: the figures of the network tasks;
:mod:`~larbed.plotting.potential`: projected-potential maps (Fourier synthesis of U_g).
"""

from .determination import plot_refinement_history, plot_ug
from .pattern import (
    INTENSITY_LABEL,
    LOG_FLOOR,
    MAX_SERIES_PANELS,
    compare_patterns,
    pattern_image,
    plot_pattern,
    plot_thickness_series,
)
from .potential import plot_potential, plot_structure_potential
from .realdata import plot_background, plot_fit_images, plot_tilt_map

__all__ = ["INTENSITY_LABEL", "LOG_FLOOR", "MAX_SERIES_PANELS", "compare_patterns", "pattern_image",
           "plot_background", "plot_fit_images", "plot_pattern", "plot_potential",
           "plot_refinement_history", "plot_structure_potential", "plot_thickness_series",
           "plot_tilt_map", "plot_ug"]
