"""CuImage's cuCIM-compatible surface: properties, argument checking, pickling, threads, life cycle."""

from __future__ import annotations

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
        ({"location": (0, 0)}, cucim_like.InvalidArgumentError),
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
