"""Moved: the figures of the network tasks now live in :mod:`larbed.plotting.learn`.

Names imported from here keep working for one release, with a ``DeprecationWarning``.
"""

from .._deprecation import moved_names

__all__: list[str] = []

__getattr__ = moved_names(__name__, {name: "larbed.plotting.learn" for name in (
    "plot_task1", "plot_task2", "loss_figure", "r_vs_scale_figure", "r_vs_iteration_figure",
    "ug_comparison_figure", "image_comparison_figure")})
