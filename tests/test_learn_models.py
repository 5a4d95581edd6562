"""The ANN and ResNet-50 CNN (SPEC §5): sizes, weights options, cached features = same model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import larbed
from larbed.learn import models
from larbed.learn.dataset import generate_dataset

#: float32 network outputs computed along two graph layouts (cached features vs full model).
FLOAT32_RTOL = 1e-4
FLOAT32_ATOL = 1e-5
#: After training steps: Adam's normalised updates amplify those float32 differences of the
#: gradients (measured up to 4.9e-5 on outputs of ~0.15 after two epochs, CPU-dependent oneDNN
#: kernels), far below the outputs themselves.
FLOAT32_TRAINED_ATOL = 5e-4


def test_import_larbed_does_not_import_tensorflow():
    code = (
        "import sys, larbed, larbed.learn, larbed.learn.cli, larbed.cli; "
        "larbed.cli.build_parser(); "
        "print(any(m == 'tensorflow' or m.startswith('tensorflow.') or m == 'keras' for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_thesis_ann_sizes():
    # SrTiO3-1: 13 beams × 441 tilts = 5733 inputs, T = 2·20 + 1 = 41 targets
    assert models.ann_hidden_sizes(5733, 41) == (3822, 1911, 41)
    assert models.cnn_head_sizes(41) == (656, 164, 41)
    n = models.ann_weight_count(5733, 41)
    assert n == 5733 * 3822 + 3822 + 3822 * 1911 + 1911 + 1911 * 41 + 41 + 41 * 41 + 41
    with pytest.raises(ValueError, match="3 positive integer"):
        models.ann_hidden_sizes(10, 3, (4, 0, 3))


def test_offline_imagenet_without_cache_fails_fast_with_options(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(models.WeightsUnavailableError) as info:
        models.resolve_weights("imagenet")
    msg = str(info.value)
    assert (
        str(tmp_path) in msg and "weights=None" in msg and ".h5" in msg and "download=True" in msg
    )
    # a cached file is used as a local path
    cached = tmp_path / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    cached.parent.mkdir()
    cached.write_bytes(b"")
    assert models.resolve_weights("imagenet") == str(cached)
    assert models.resolve_weights("none") is None and models.resolve_weights(None) is None
    with pytest.raises(ValueError, match="does not exist"):
        models.resolve_weights(str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match=".h5"):
        bad = tmp_path / "w.bin"
        bad.write_bytes(b"")
        models.resolve_weights(str(bad))


@pytest.mark.learn
def test_regressor_imagenet_offline_raises_before_any_download(
    tmp_path, monkeypatch, small_geometry
):
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    from larbed.learn import Regressor

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    with pytest.raises(models.WeightsUnavailableError, match="weights=None"):
        Regressor("cnn", small_geometry, weights="imagenet")


@pytest.mark.learn
def test_bad_model_options(small_geometry, srtio3):
    pytest.importorskip("tensorflow")
    from larbed.learn import Regressor

    with pytest.raises(ValueError, match="unknown model"):
        Regressor("rnn", small_geometry)
    with pytest.raises(ValueError, match="batch_size"):
        Regressor("ann", small_geometry, batch_size=0)
    with pytest.raises(TypeError, match="Geometry"):
        Regressor("ann", "SrTiO3-1")
    big = larbed.Geometry(srtio3, 120, (0, 0, 1), 69, 441, 70)
    with pytest.raises(ValueError, match="hidden"):
        Regressor("ann", big, config="thesis")  # the thesis ANN at 69 × 441: 8.3e8 weights
    with pytest.raises(ValueError, match="unknown config"):
        Regressor("ann", small_geometry, config="paper")
    reg = Regressor("ann", small_geometry, hidden=(8, 4, 41))
    with pytest.raises(ValueError, match="shape"):
        reg.inputs(np.zeros((2, 13, 5)))


@pytest.mark.learn
def test_seed_fixes_initial_weights(small_geometry):
    pytest.importorskip("tensorflow")
    from larbed.learn import Regressor

    a = Regressor("ann", small_geometry, hidden=(16, 8, 41), seed=3).get_state()["weights"]
    b = Regressor("ann", small_geometry, hidden=(16, 8, 41), seed=3).get_state()["weights"]
    c = Regressor("ann", small_geometry, hidden=(16, 8, 41), seed=4).get_state()["weights"]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.learn
@pytest.mark.slow
def test_cached_features_are_the_same_model(small_geometry):
    pytest.importorskip("tensorflow")
    from larbed.learn import Regressor

    ds = generate_dataset(small_geometry, 24, seed=2, progress=False)
    x_int, y = ds.intensity.values, ds.targets.values
    kw = dict(weights=None, seed=1, hidden=(64, 32, 41), config="thesis")
    cached = Regressor("cnn", small_geometry, **kw)
    full = Regressor("cnn", small_geometry, cache_features=False, **kw)
    assert cached.uses_features and not full.uses_features
    assert cached.image_shape == (50, 50, 3)  # 5 × 5 patches of 5 px, upsampled × 2 to >= 32 px
    feats, imgs = cached.inputs(x_int), full.inputs(x_int)
    assert feats.shape == (24, 2048) and imgs.shape == (24, 50, 50, 3)
    np.testing.assert_allclose(
        cached.predict(feats), full.predict(imgs), rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL
    )
    # training the head on cached features = training the whole model with the frozen backbone
    la, _ = cached.fit(feats[:20], y[:20], 2, np.random.default_rng(0))
    lb, _ = full.fit(imgs[:20], y[:20], 2, np.random.default_rng(0))
    np.testing.assert_allclose(la, lb, rtol=FLOAT32_RTOL)
    np.testing.assert_allclose(
        cached.predict(feats), full.predict(imgs), rtol=0, atol=FLOAT32_TRAINED_ATOL
    )


@pytest.mark.learn
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside Keras
def test_local_weights_file_is_loaded(tmp_path, small_geometry):
    pytest.importorskip("tensorflow")
    from larbed.learn import Regressor

    src = Regressor("cnn", small_geometry, weights=None, seed=7)
    path = tmp_path / "resnet50_notop.weights.h5"
    src.backbone.save_weights(str(path))
    other = Regressor("cnn", small_geometry, weights=str(path), seed=8)
    for w_src, w_other in zip(
        src.backbone.get_weights(), other.backbone.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(w_src, w_other)


@pytest.mark.learn
def test_state_round_trip_is_exact(tmp_path, small_geometry):
    pytest.importorskip("tensorflow")
    from larbed.learn import Regressor

    ds = generate_dataset(small_geometry, 20, seed=3, progress=False)
    reg = Regressor("ann", small_geometry, hidden=(16, 8, 41), seed=0)
    x, y = reg.inputs(ds.intensity.values), ds.targets.values
    reg.fit(x, y, 2, np.random.default_rng(1))
    reg.save_state(tmp_path / "s.npz")
    after_a, _ = reg.fit(x, y, 2, np.random.default_rng(2))
    pred_a = reg.predict(x)
    reg.load_state(tmp_path / "s.npz")
    after_b, _ = reg.fit(x, y, 2, np.random.default_rng(2))
    np.testing.assert_array_equal(after_a, after_b)
    np.testing.assert_array_equal(pred_a, reg.predict(x))
    reg.reset()
    fresh = Regressor("ann", small_geometry, hidden=(16, 8, 41), seed=0)
    np.testing.assert_array_equal(reg.predict(x), fresh.predict(x))
