"""Training-data generation: seeded, chunk-independent, Dask-parallel, checkpointed (SPEC §3, §6)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import larbed
from larbed.learn import dataset as dmod
from larbed.learn import generate_dataset, load_dataset, split_targets

#: make-unique moves phases only: |U| after it equals |U| before to round-off.
MODULUS_RTOL = 1e-12
#: Intensities re-simulated from the stored U_g and thickness agree to round-off.
INTENSITY_ATOL = 1e-12

N = 10


@pytest.fixture(scope="module")
def ds_ref(small_geometry):
    return generate_dataset(small_geometry, N, seed=5, chunk_size=3, progress=False)


def test_layout_targets_and_stored_patterns(small_geometry, ds_ref):
    m = small_geometry.n_reflections
    assert dict(ds_ref.intensity.sizes) == {"sample": N, "tilt": 13, "beam": 13}
    assert ds_ref.targets.dims == ("sample", "target") and ds_ref.sizes["target"] == 2 * m + 1
    y = ds_ref.targets.values
    np.testing.assert_array_equal(y[:, :m], ds_ref.ug.values.real)
    np.testing.assert_array_equal(y[:, m : 2 * m], ds_ref.ug.values.imag)
    # thickness target is t [Å] / 1000 = t [nm] / 100
    np.testing.assert_allclose(y[:, -1], ds_ref.thickness_nm.values * 10 / 1000, rtol=1e-15)
    assert np.all((ds_ref.thickness_nm >= 5) & (ds_ref.thickness_nm <= 100))
    assert np.all(np.abs(ds_ref.ug.values.real) <= 0.2 * np.sqrt(2))
    ug, t = split_targets(y)
    np.testing.assert_allclose(ug, ds_ref.ug.values, atol=0)
    for i in (0, N - 1):  # each stored pattern is the simulation of its stored (U_g, t)
        sim = larbed.simulate(small_geometry, ds_ref.ug.values[i], float(t[i])).intensity.values
        np.testing.assert_allclose(ds_ref.intensity.values[i], sim, atol=INTENSITY_ATOL)


def test_samples_are_unique_with_the_crystal_references(small_geometry, ds_ref):
    assert ds_ref.attrs["unique_reference"] == ["1 1 0", "1 -1 0"]
    idx = [2, 3]  # 1 1 0 and 1 -1 0 in the geometry's reflection order
    assert [list(small_geometry.reflection_hkl[i]) for i in idx] == [[1, 1, 0], [1, -1, 0]]
    np.testing.assert_allclose(np.angle(ds_ref.ug.values[:, idx]), 0.0, atol=1e-12)


def test_independent_of_chunking_and_scheduler(small_geometry, ds_ref):
    other = generate_dataset(
        small_geometry, N, seed=5, chunk_size=N, scheduler="threads", progress=False
    )
    np.testing.assert_array_equal(other.intensity.values, ds_ref.intensity.values)
    np.testing.assert_array_equal(other.ug.values, ds_ref.ug.values)
    # a prefix of a larger set is the smaller set (per-sample seeds)
    longer = generate_dataset(small_geometry, N + 3, seed=5, chunk_size=4, progress=False)
    np.testing.assert_array_equal(longer.ug.values[:N], ds_ref.ug.values)
    different = generate_dataset(small_geometry, N, seed=6, progress=False)
    assert not np.allclose(different.ug.values, ds_ref.ug.values)


@pytest.mark.slow
def test_same_with_a_dask_cluster(small_geometry, ds_ref):
    distributed = pytest.importorskip("dask.distributed")
    with (
        distributed.LocalCluster(
            processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        on_cluster = generate_dataset(
            small_geometry, N, seed=5, chunk_size=4, client=client, progress=False
        )
    np.testing.assert_array_equal(on_cluster.intensity.values, ds_ref.intensity.values)
    np.testing.assert_array_equal(on_cluster.ug.values, ds_ref.ug.values)


def test_deviation_channel(small_geometry, small_ug):
    u0 = small_ug.values.copy()
    u0[0] = 0.0  # a forbidden reflection must stay forbidden
    s = 0.5
    ds = generate_dataset(
        small_geometry,
        8,
        channel="deviation",
        ug0=u0,
        thickness0_nm=30.0,
        scale=s,
        thickness_jitter_nm=2.0,
        seed=1,
        progress=False,
    )
    u = ds.ug.values
    assert np.all(u[:, 0] == 0)
    # |U| ≤ |U0| (1 + s·√2) (offset s|U0|(ε_r + iε_i), |ε| ≤ 1; make-unique keeps |U|)
    assert np.all(np.abs(u) <= np.abs(u0) * (1 + s * np.sqrt(2)) * (1 + MODULUS_RTOL))
    assert np.all(np.abs(ds.thickness_nm.values - 30.0) <= 2.0)
    tiny = generate_dataset(
        small_geometry,
        4,
        channel="deviation",
        ug0=small_ug,
        thickness0_nm=30.0,
        scale=0.0,
        thickness_jitter_nm=0.0,
        progress=False,
    )
    np.testing.assert_allclose(
        tiny.ug.values, np.broadcast_to(small_ug.values, (4, u0.size)), atol=1e-15
    )


def test_netcdf_round_trip_and_reuse(tmp_path, small_geometry, ds_ref):
    path = tmp_path / "set.nc"
    ds = generate_dataset(small_geometry, N, seed=5, chunk_size=3, progress=False, path=path)
    assert os.path.exists(path) and not os.path.exists(str(path) + ".chunks")
    back = load_dataset(path)
    np.testing.assert_array_equal(back.ug.values, ds_ref.ug.values)
    np.testing.assert_array_equal(back.intensity.values, ds.intensity.values)
    assert back.ug.dtype == np.complex128
    # same settings: loaded, not recomputed; other settings: refused
    again = generate_dataset(small_geometry, N, seed=5, chunk_size=7, progress=False, path=path)
    np.testing.assert_array_equal(again.targets.values, ds_ref.targets.values)
    with pytest.raises(ValueError, match="different data set"):
        generate_dataset(small_geometry, N, seed=6, progress=False, path=path)


def test_interrupted_generation_resumes_from_chunks(tmp_path, small_geometry, ds_ref, monkeypatch):
    calls = []
    real = dmod._simulate_chunk

    def flaky(geometry, spec, lo, hi):
        calls.append(lo)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(geometry, spec, lo, hi)

    monkeypatch.setattr(dmod, "_simulate_chunk", flaky)
    path = tmp_path / "set.nc"
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(small_geometry, N, seed=5, chunk_size=3, progress=False, path=path)
    chunks = [c for c in os.listdir(str(path) + ".chunks") if c.startswith("chunk_")]
    saved = {int(c.split("_")[1]) for c in chunks}
    assert len(saved) == 2  # the two chunks finished before the interruption
    calls.clear()

    def counting(geometry, spec, lo, hi):
        calls.append(lo)
        return real(geometry, spec, lo, hi)

    monkeypatch.setattr(dmod, "_simulate_chunk", counting)
    ds = generate_dataset(small_geometry, N, seed=5, chunk_size=3, progress=False, path=path)
    assert sorted(calls) == sorted({0, 3, 6, 9} - saved)  # only the unfinished chunks ran again
    np.testing.assert_array_equal(ds.intensity.values, ds_ref.intensity.values)


def test_bad_inputs(small_geometry, srtio3, small_ug):
    with pytest.raises(ValueError, match="n must be > 0"):
        generate_dataset(small_geometry, 0, progress=False)
    with pytest.raises(TypeError, match="integer"):
        generate_dataset(small_geometry, 2.5, progress=False)
    with pytest.raises(ValueError, match="unknown channel"):
        generate_dataset(small_geometry, 2, channel="computed", progress=False)
    with pytest.raises(ValueError, match="needs ug0"):
        generate_dataset(small_geometry, 2, channel="deviation", progress=False)
    other = larbed.Geometry(srtio3, 120, (0, 0, 1), 5, 13, 70)
    with pytest.raises(ValueError, match="shape"):
        generate_dataset(
            other, 2, channel="deviation", ug0=small_ug.values, thickness0_nm=30, progress=False
        )
    with pytest.raises(TypeError, match="Geometry"):
        generate_dataset("SrTiO3-1", 2, progress=False)
    with pytest.raises(ValueError, match="thickness_range_nm"):
        generate_dataset(small_geometry, 2, thickness_range_nm=(50, 10), progress=False)
    with pytest.raises(ValueError, match="unknown prior"):
        generate_dataset(small_geometry, 2, prior="gaussian", progress=False)
    with pytest.raises(ValueError, match="scale"):
        generate_dataset(
            small_geometry,
            2,
            channel="deviation",
            ug0=small_ug,
            thickness0_nm=3,
            scale=-1,
            progress=False,
        )
