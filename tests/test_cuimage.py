"""CuImage's cuCIM-compatible surface: properties, argument checking, pickling, threads, life cycle."""

from __future__ import annotations

import os
import pickle
import threading

import numpy as np
import pytest

import cucim_like
from cucim_like import CuImage


def test_properties(small_slide):
    path, _ = small_slide
    with CuImage(path) as img:
        assert img.shape == [500, 700, 3]
        assert img.dims == "YXC" and img.ndim == 3
        assert img.dtype == np.uint8 and img.typestr == "|u1"
        assert img.size() == [500, 700, 3] and img.size("XY") == [700, 500]
        res = img.resolutions
        assert res["level_count"] == 2
        assert res["level_dimensions"] == ((700, 500), (350, 250))
        assert res["level_downsamples"] == (1.0, 2.0)
        assert res["level_tile_sizes"] == ((64, 64), (64, 64))
        assert img.channel_names == ["R", "G", "B"]
        assert img.spacing() == [1.0, 1.0, 1.0] and img.spacing_units() == ["", "", "color"]
        assert img.associated_images == set()
        meta = img.metadata["cucim"]
        assert meta["shape"] == [500, 700, 3] and meta["resolutions"]["level_count"] == 2
        assert str(path) in repr(img)


def test_read_matches_reference_with_level0_coordinates(small_slide):
    path, levels = small_slide
    img = CuImage(path)
    np.testing.assert_array_equal(img.read_region((10, 20), (100, 50)), levels[0][20:70, 10:110])
    # level 1: location in level-0 pixels
    np.testing.assert_array_equal(img.read_region((100, 60), (80, 40), level=1), levels[1][30:70, 50:130])
    np.testing.assert_array_equal(img.read_region(level=1), levels[1])


@pytest.mark.parametrize(
    "location,size",
    [
        (np.array([10, 20]), np.array([100, 50])),
        (np.array([10, 20], np.int32), (100, 50)),
        ([np.int64(10), np.uint16(20)], [np.int8(100), 50]),
        ((x for x in (10, 20)), (100, 50)),
    ],
)
def test_numpy_and_other_integer_sequences_are_accepted(small_slide, location, size):
    path, levels = small_slide
    out = CuImage(path).read_region(location, size)
    np.testing.assert_array_equal(out, levels[0][20:70, 10:110])


@pytest.mark.parametrize(
    "kwargs,exc",
    [
        ({"location": (0, 0), "size": (0, 10)}, cucim_like.InvalidArgumentError),
        ({"location": (0, 0), "size": (-5, 10)}, cucim_like.InvalidArgumentError),
        ({"location": (0, 0), "size": (10, 10), "level": 2}, cucim_like.LevelError),
        ({"location": (0, 0), "size": (10, 10), "level": -1}, cucim_like.LevelError),
        ({"location": (0.5, 0), "size": (10, 10)}, cucim_like.InvalidArgumentError),
        ({"location": (0, 0), "size": (10.0, 10)}, cucim_like.InvalidArgumentError),
        ({"location": ("a", 0), "size": (10, 10)}, cucim_like.InvalidArgumentError),
        ({"location": (0, 0, 0), "size": (10, 10)}, cucim_like.InvalidArgumentError),
        ({"location": [(0, 0), (1, 2, 3)], "size": (10, 10)}, cucim_like.InvalidArgumentError),
        ({"location": [], "size": (10, 10)}, cucim_like.InvalidArgumentError),
        ({"location": np.array([0.0, 1.0]), "size": (10, 10)}, cucim_like.InvalidArgumentError),
        ({"location": (0, 0), "size": (10, 10), "level": 1.0}, cucim_like.InvalidArgumentError),
        ({"location": (0, 0), "size": (10, 10), "num_workers": -1}, cucim_like.InvalidArgumentError),
        ({"location": (0, 0), "size": (10, 10), "device": "cuda"}, cucim_like.DeviceUnavailableError),
    ],
)
def test_bad_arguments_raise_typed_value_errors(small_slide, kwargs, exc):
    img = CuImage(small_slide[0])
    with pytest.raises(exc) as info:
        img.read_region(**kwargs)
    assert isinstance(info.value, cucim_like.CucimLikeError)
    if exc is not cucim_like.DeviceUnavailableError:
        assert isinstance(info.value, ValueError)


def test_positional_arguments_follow_cucims_order(small_slide):
    """cuCIM: read_region(location, size, level, num_workers, batch_size, drop_last, prefetch_factor, shuffle,
    seed, device, buf, shm_name)."""
    path, levels = small_slide
    img = CuImage(path)
    np.testing.assert_array_equal(img.read_region((10, 20), (30, 40), 0, 2), levels[0][20:60, 10:40])
    locs = [(0, 0), (64, 0), (128, 64)]
    batches = list(img.read_region(locs, (16, 16), 0, 1, 2, True))  # 1 worker, batch 2, drop_last
    assert [b.shape for b in batches] == [(2, 16, 16, 3)]
    np.testing.assert_array_equal(batches[0][1], levels[0][0:16, 64:80])
    shuffled = list(img.read_region(locs, (16, 16), 0, 1, 3, False, 2, True, 5))
    again = list(img.read_region(locs, (16, 16), 0, 1, 3, False, 2, True, 5))
    np.testing.assert_array_equal(shuffled[0], again[0])
    buf = np.zeros((8, 8, 3), np.uint8)
    img.read_region((1, 2), (8, 8), 0, 1, 1, False, 2, False, 0, "cpu", buf)
    np.testing.assert_array_equal(buf, levels[0][2:10, 1:9])


def test_location_and_size_default_as_in_cucim(small_slide):
    """A missing location is the level's origin; a missing size is the level's (w, h)."""
    path, levels = small_slide
    img = CuImage(path)
    np.testing.assert_array_equal(img.read_region(size=(30, 20)), levels[0][:20, :30])
    np.testing.assert_array_equal(img.read_region(size=(30, 20), level=1), levels[1][:20, :30])
    out = img.read_region(location=(650, 480))  # level-sized region from there: mostly fill
    assert out.shape == (500, 700, 3)
    np.testing.assert_array_equal(out[:20, :50], levels[0][480:, 650:])
    assert (out[20:] == 0).all() and (out[:, 50:] == 0).all()
    np.testing.assert_array_equal(img.read_region(location=(100, 60), level=1)[:40, :80], levels[1][30:70, 50:130])


def test_cucim_compatible_surface(small_slide):
    path, _ = small_slide
    img = CuImage(os.fsencode(path))  # cuCIM opens bytes paths too
    assert img.path == str(path) and img.is_loaded
    assert img.size("ZYX") == [500, 700] and img.size("XYZ") == [700, 500]  # absent axes left out, as cuCIM
    assert img.spacing("XYQ") == [1.0, 1.0, 1.0] and img.spacing_units("CQ") == ["color", ""]
    img.close()
    assert not img.is_loaded
    assert cucim_like.is_available() and cucim_like.is_available("clara")
    assert not cucim_like.is_available("skimage")
    from cucim_like.clara import CuImage as ClaraCuImage
    from cucim_like.clara.cache import CacheType, ImageCache, preferred_memory_capacity

    assert ClaraCuImage is CuImage and preferred_memory_capacity is cucim_like.preferred_memory_capacity
    assert CuImage.device_cache() is cucim_like.device_cache()
    try:
        cache = CuImage.cache(CacheType.PerProcess, memory_capacity=8)
        assert isinstance(cache, ImageCache)
        assert cache.type == CacheType.PerProcess == "per_process" and str(cache.type) == "CacheType.PerProcess"
        assert cache.config["type"] == "per_process" and cache.config["memory_capacity"] == 8
        assert CuImage.cache("no_cache").type == CacheType.NoCache
        shm = CuImage.cache("shared_memory", memory_capacity=1)
        assert shm.type == CacheType.SharedMemory and shm.config["type"] == "shared_memory"
        assert shm.config["record_stat"] is True and shm.free_memory == 2**20
    finally:
        CuImage.cache("per_process", memory_capacity=64)


def test_level_error_is_an_index_and_value_error(small_slide):
    with pytest.raises(IndexError) as info:
        CuImage(small_slide[0]).read_region((0, 0), (1, 1), level=5)
    assert isinstance(info.value, ValueError) and "level 5" in str(info.value)


def test_fill_outside_and_override(small_slide):
    path, levels = small_slide
    img = CuImage(path)
    out = img.read_region((-10, 490), (30, 20))
    assert (out[:, :10] == 0).all() and (out[10:] == 0).all()
    np.testing.assert_array_equal(out[:10, 10:], levels[0][490:500, 0:20])
    out = img.read_region((690, -5), (20, 10), fill=17)
    assert (out[:5] == 17).all() and (out[:, 10:] == 17).all()
    np.testing.assert_array_equal(out[5:, :10], levels[0][0:5, 690:700])


@pytest.mark.parametrize("fill", [300, -1, 1.5, float("nan"), "white", None.__class__])
def test_fill_must_fit_the_dtype(small_slide, fill):
    with pytest.raises(cucim_like.InvalidArgumentError):
        CuImage(small_slide[0]).read_region((-2, -2), (4, 4), fill=fill)


def test_buf_receives_the_pixels(small_slide):
    path, levels = small_slide
    buf = np.zeros((50, 100, 3), np.uint8)
    out = CuImage(path).read_region((10, 20), (100, 50), buf=buf)
    assert out.base is buf or out is buf or np.shares_memory(out, buf)
    np.testing.assert_array_equal(buf, levels[0][20:70, 10:110])
    with pytest.raises(cucim_like.InvalidArgumentError):
        CuImage(path).read_region((0, 0), (10, 10), buf=np.zeros((10, 10, 3), np.uint16))


@pytest.mark.parametrize("workers", [0, 1, 2, 5])
def test_whole_level_any_worker_count(small_slide, workers):
    path, levels = small_slide
    np.testing.assert_array_equal(CuImage(path).read_region(num_workers=workers), levels[0])


def test_concurrent_reads_equal_reference(small_slide):
    path, levels = small_slide
    img = CuImage(path)
    rng = np.random.default_rng(3)
    boxes = [(int(rng.integers(-50, 700)), int(rng.integers(-50, 500)), int(rng.integers(1, 200)),
              int(rng.integers(1, 200))) for _ in range(200)]
    padded = np.zeros((500 + 500, 700 + 500, 3), np.uint8)  # reference with 250 px of fill on every side
    padded[250:750, 250:950] = levels[0]
    serial = [padded[y + 250:y + 250 + h, x + 250:x + 250 + w] for x, y, w, h in boxes]
    results: dict[int, np.ndarray] = {}
    errors = []

    def work(indices):
        try:
            for i in indices:
                x, y, w, h = boxes[i]
                results[i] = img.read_region((x, y), (w, h), num_workers=2)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(range(k, 200, 8),)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(200):
        np.testing.assert_array_equal(results[i], serial[i])


def test_pickle_reopens_by_path(small_slide):
    path, levels = small_slide
    img = pickle.loads(pickle.dumps(CuImage(path)))
    np.testing.assert_array_equal(img.read_region((0, 0), (64, 64)), levels[0][:64, :64])


def test_close_and_context_manager(small_slide):
    img = CuImage(small_slide[0])
    with img:
        img.read_region((0, 0), (4, 4))
    with pytest.raises(cucim_like.InvalidArgumentError, match="closed"):
        img.read_region((0, 0), (4, 4))
    assert "closed" in repr(img)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        CuImage(tmp_path / "nope.svs")
    assert isinstance(info.value, cucim_like.CucimLikeError) and "nope.svs" in str(info.value)
    assert isinstance(info.value, ValueError)  # what cuCIM raises for a missing file
    with pytest.raises(cucim_like.UnsupportedFormatError):
        CuImage(tmp_path)
    (tmp_path / "x.svs").write_bytes(b"hello, not an image")
    with pytest.raises(cucim_like.UnsupportedFormatError):
        CuImage(tmp_path / "x.svs")


def test_unknown_associated_image_is_key_error(small_slide):
    with pytest.raises(KeyError) as info:
        CuImage(small_slide[0]).associated_image("label")
    assert isinstance(info.value, cucim_like.UnknownAssociatedImageError)
    assert "label" in str(info.value)


def test_errors_pickle_with_their_fields():
    err = cucim_like.DecodeError("bad", path="/x", level=1, tile=(2, 3))
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.path, back.level, back.tile) == (cucim_like.DecodeError, "/x", 1, (2, 3))
    assert "tile=(2, 3)" in str(back)


def test_progress_counts_every_tile(small_slide):
    done = []
    CuImage(small_slide[0]).read_region(num_workers=2, progress=done.append)
    assert sum(done) == 8 * 11


def test_coord_sys_of_a_dicom_volume_is_lps(tmp_path):
    """DICOM's patient frame is LPS (x to the patient's left, y posterior, z head): ``coord_sys`` says "LPS", and
    origin and direction are given in it as stored (ImagePositionPatient / ImageOrientationPatient), with no
    flip of x and y as a RAS frame would need."""
    from tests.formats import dicom_fixtures as dfx

    orientation = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # sagittal: rows along +y, columns along -z, slices along -x
    fx = dfx.write_volume_series(tmp_path / "ct", shape=(4, 12, 10), orientation=orientation,
                                 origin=(-30.0, 12.5, 40.0))
    with CuImage(tmp_path / "ct") as img:
        assert img.coord_sys == "LPS"
        assert img.metadata["cucim"]["coord_sys"] == "LPS"
        assert img.origin == pytest.approx(fx.positions[0].tolist(), abs=1e-4)
        np.testing.assert_allclose(np.array(img.direction), fx.direction.T, atol=1e-6)
        assert img.spacing_units() == ["mm", "mm", "mm"]


@pytest.mark.parametrize("loc", [(101, 61), (-3, -5), (-1, 999), (1399, 0), (0, -21)])
def test_one_location_maps_to_a_level_as_a_batch_of_locations_does(small_slide, loc):
    """A plain (x, y) of Python ints takes a path without NumPy; it must land where an array or a batch does
    (level-0 coordinates floor-divided by the downsample, negatives included)."""
    path, levels = small_slide
    img = CuImage(path)
    one = img.read_region(loc, (20, 10), level=1)
    x, y = (v // 2 for v in loc)
    want = np.zeros((10, 20, 3), np.uint8)
    h, w = levels[1].shape[:2]
    ys, xs = slice(max(y, 0), max(min(y + 10, h), 0)), slice(max(x, 0), max(min(x + 20, w), 0))
    want[ys.start - y:ys.stop - y, xs.start - x:xs.stop - x] = levels[1][ys, xs]
    np.testing.assert_array_equal(one, want)
    np.testing.assert_array_equal(img.read_region(np.array(loc), (20, 10), level=1), want)
    np.testing.assert_array_equal(next(iter(img.read_region([loc, loc], (20, 10), level=1, batch_size=2)))[1], want)
