"""The ``Dataset.larbed`` accessor, registered by ``import larbed``."""

from __future__ import annotations

import numpy as np
import pytest

import larbed
from larbed.image import larbed_image


@pytest.fixture(scope="module")
def pattern(small_geometry, small_ug):
    return larbed.simulate(small_geometry, small_ug * np.exp(0.2j), 25.0)


def test_geometry_and_ug_survive_a_file(tmp_path, pattern, small_geometry, small_ug):
    larbed.save_pattern(pattern, tmp_path / "p.nc")
    back = larbed.load_pattern(tmp_path / "p.nc")
    for ds in (pattern, back):
        assert ds.larbed.geometry == small_geometry
        assert np.array_equal(ds.larbed.geometry.hkl, small_geometry.hkl)
        assert np.array_equal(ds.larbed.ug.values, small_ug.values * np.exp(0.2j))
        assert np.array_equal(ds.larbed.ug.h.values, small_geometry.reflection_hkl[:, 0])


def test_image_and_r_factor(pattern, small_geometry, small_ug):
    img = pattern.larbed.image(channels=3)
    assert np.array_equal(img, larbed_image(pattern.intensity, small_geometry, channels=3))
    assert img.shape[-1] == 3 and img.max() == 1.0
    assert pattern.larbed.r_factor(pattern) == 0.0
    other = larbed.simulate(small_geometry, small_ug, 25.0)
    r = pattern.larbed.r_factor(other)
    expected = np.abs(pattern.intensity - other.intensity).sum() / pattern.intensity.sum()
    assert r == pytest.approx(float(expected), rel=1e-14)
    assert r > 0.01  # the phase 0.2 rad changes the pattern visibly


def test_errors(pattern):
    bare = pattern.drop_attrs()
    with pytest.raises(ValueError, match="do not describe a larbed geometry"):
        _ = bare.larbed.geometry
    with pytest.raises(ValueError, match="no variable 'ug'"):
        _ = pattern.drop_vars("ug").larbed.ug
    with pytest.raises(ValueError, match="no variable 'counts'"):
        pattern.larbed.image(variable="counts")
