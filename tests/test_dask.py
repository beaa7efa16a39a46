"""to_dask: tile-aligned chunks read by the engine, threaded and on a dask.distributed LocalCluster."""

from __future__ import annotations

import numpy as np
import pytest

from cucim_like import CuImage

da = pytest.importorskip("dask.array")


def test_threaded_scheduler_equals_reference(small_slide):
    path, levels = small_slide
    arr = CuImage(path).to_dask(level=0, chunks=(64, 128, 3))
    assert arr.shape == (500, 700, 3) and arr.dtype == np.uint8
    assert arr.chunks[0][0] == 64 and arr.chunks[1][0] == 128
    np.testing.assert_array_equal(arr.compute(scheduler="threads"), levels[0])
    np.testing.assert_array_equal(arr[37:300, 101:555].compute(scheduler="threads"), levels[0][37:300, 101:555])


def test_default_chunks_are_tile_aligned(small_slide):
    path, levels = small_slide
    arr = CuImage(path).to_dask(level=1)
    assert all(c % 64 == 0 for c in arr.chunks[0][:-1]) and all(c % 64 == 0 for c in arr.chunks[1][:-1])
    np.testing.assert_array_equal(arr.compute(scheduler="threads"), levels[1])


def test_local_cluster_reduction_equals_in_process(small_slide):
    distributed = pytest.importorskip("distributed")
    path, levels = small_slide
    arr = CuImage(path).to_dask(level=0, chunks=(128, 128, 3))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        total = client.compute(arr.astype(np.int64).sum(axis=(0, 1))).result()
        mean = client.compute(arr.mean()).result()
    in_process = CuImage(path).read_region(num_workers=2)
    np.testing.assert_array_equal(total, in_process.astype(np.int64).sum(axis=(0, 1)))
    np.testing.assert_array_equal(total, levels[0].astype(np.int64).sum(axis=(0, 1)))
    assert mean == pytest.approx(levels[0].mean())


def test_read_level_region_uses_level_pixels(small_slide):
    path, levels = small_slide
    out = CuImage(path).read_level_region((10, 20), (30, 40), level=1)
    assert out.shape == (1, 40, 30, 3)
    np.testing.assert_array_equal(out[0], levels[1][20:60, 10:40])


def test_missing_dask_is_a_typed_import_error(small_slide, monkeypatch):
    import sys

    import cucim_like

    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError) as info:
        CuImage(small_slide[0]).to_dask()
    assert isinstance(info.value, cucim_like.OptionalDependencyError) and "dask" in str(info.value)


def test_dask_of_a_dicom_volume_follows_its_dims_and_series(tmp_path):
    from tests.formats import dicom_fixtures as dfx

    fx = dfx.write_volume_series(tmp_path / "mixed", shape=(4, 20, 16), second_series=True)
    img = CuImage([str(p) for p in fx.paths], series_uid=fx.series_uid)
    arr = img.to_dask()
    assert arr.shape == tuple(img.shape) == fx.volume.shape
    np.testing.assert_array_equal(arr.compute(), fx.volume)
    np.testing.assert_array_equal(arr[1:3, 5:9].compute(), fx.volume[1:3, 5:9])
