"""Make the committed figures of the documentation (``docs/_static/*.png``).

Run from the repository root after changing anything that alters them::

    python docs/make_figures.py

The getting-started page shows the code of :func:`getting_started_pattern` and
:func:`getting_started_figure` verbatim, so what the page says is what made the picture.
"""

from __future__ import annotations

import pathlib

STATIC = pathlib.Path(__file__).resolve().parent / "_static"


def getting_started_pattern():
    """Simulate the preset SrTiO3-1: SrTiO3 [001], 13 beams, 441 tilts, 70 mrad, 120 kV, 30 nm."""
    import larbed

    preset = larbed.presets.load("SrTiO3-1")
    ug = larbed.compute_ug(preset.crystal, preset.geometry)  # Lobato f_e, U_g in 1/Å²
    pattern = larbed.simulate(preset.geometry, ug, thickness_nm=preset.thickness_nm)
    return preset.geometry, pattern


def getting_started_figure(path=STATIC / "getting_started.png"):
    """Draw the pattern as the 2-D LARBED image (one tilt disc per beam) and save it as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from larbed.image import larbed_image

    geometry, pattern = getting_started_pattern()
    image = larbed_image(pattern, geometry, channels=0)  # (H, W), scaled to [0, 1]
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.imshow(image**0.5, cmap="inferno")  # square root: the weak discs stay visible
    ax.set_title("SrTiO$_3$ [001], 13 beams, 441 tilts, 30 nm")
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version stamp: the file stays reproducible
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(getting_started_figure())
