"""Cropped JPEG decoding (TurboJPEG 3): regions that need parts of tiles decode only those parts, with the
pixels of a whole decode, checked against imagecodecs decoding each tile whole. Every test runs on the Python
path and on the native tile pool (executors.native), which must crop, cache and fall back alike."""

from __future__ import annotations

import random

import imagecodecs
import numpy as np
import pytest
import tifffile

import cucim_like
from cucim_like import CuImage
from cucim_like.codecs import get_decoder, turbojpeg
from cucim_like.codecs import jpeg as jpeg_codec
from cucim_like.executors import native
from cucim_like.memory import decode_buffer
from tests.formats import tiff_fixtures as tfx

requires_turbojpeg = pytest.mark.skipif(turbojpeg.library() is None, reason="no TurboJPEG 3 library installed")

H, W = 200, 232
# (subsampling argument of jpeg8_encode, samples); the iMCU widths are 8, 16, 16, 8 and 32 pixels
_TIFF_SUBSAMPLING = {"444": (1, 1), "422": (2, 1), "420": (2, 2), "411": (4, 1)}  # YCbCrSubSampling tag
SUBSAMPLINGS = [("444", 3), ("422", 3), ("420", 3), ("440", 3), ("411", 3), (None, 1)]


def _tiled_jpeg(path, samples: int, subsampling: str | None, tile=(64, 96), tables: bool = False):
    """A tiled JPEG TIFF of (H, W, samples) and its reference: every tile decoded whole by imagecodecs."""
    arr = tfx.make_image(H, W, samples, "uint8", seed=7)
    encode = {"level": 85} | ({"subsampling": subsampling} if subsampling else {})
    with tifffile.TiffWriter(path) as tw:
        if tables:
            tfx.write_jpeg_tables_page(tw, arr, tile, photometric="ycbcr" if samples == 3 else "minisblack",
                                       encode=encode, subsampling=_TIFF_SUBSAMPLING.get(subsampling))
            streams = None
        else:
            streams = [bytes(imagecodecs.jpeg8_encode(t[..., 0] if samples == 1 else t, **encode))
                       for t in tfx.iter_tiles(arr, *tile)]
            tw.write(iter(streams), shape=arr.shape if samples > 1 else arr.shape[:2], dtype=np.uint8,
                     tile=tile, compression=7, photometric="rgb" if samples == 3 else "minisblack")
    if streams is None:  # with JPEGTables: tifffile decodes the tiles (imagecodecs, whole tiles)
        ref = tifffile.imread(path)
        return ref.reshape(H, W, samples)
    ref = np.zeros((-(-H // tile[0]) * tile[0], -(-W // tile[1]) * tile[1], samples), np.uint8)
    cols = -(-W // tile[1])
    for i, s in enumerate(streams):
        ty, tx = divmod(i, cols)
        dec = imagecodecs.jpeg8_decode(s).reshape(tile[0], tile[1], samples)
        ref[ty * tile[0] : (ty + 1) * tile[0], tx * tile[1] : (tx + 1) * tile[1]] = dec
    return ref[:H, :W]


def _regions(rng: random.Random, n: int) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) regions: random, plus single columns and rows at and beside iMCU and tile edges."""
    out = [(rng.randrange(-20, W), rng.randrange(-20, H), rng.randrange(1, 120), rng.randrange(1, 120))
           for _ in range(n)]
    out += [(x, 5, 1, 50) for x in (0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 95, 96, 97, W - 1)]
    out += [(3, y, 60, 1) for y in (0, 1, 63, 64, 65, H - 1)]
    return out


@pytest.fixture(autouse=True, params=["python", "native"])
def tile_path(request, monkeypatch):
    """Reads go through the Python path (the native pool turned off) or through the native pool."""
    if request.param == "python":
        monkeypatch.setattr(native, "_state", [None])
    elif native.tile_pool() is None:
        pytest.skip("the native tile pool is not built here")
    return request.param


class _Spy:
    """Counts tiles decoded cropped: decode_crop calls that decoded a part (not those that declined), and
    native jobs that did."""

    def __init__(self, monkeypatch) -> None:
        self.parts = 0
        original = jpeg_codec.JpegDecoder.decode_crop

        def spy(decoder, *args):
            part = original(decoder, *args)
            self.parts += part is not None
            return part

        monkeypatch.setattr(jpeg_codec.JpegDecoder, "decode_crop", spy)
        run = native.TilePool.run

        def spy_run(pool, jobs, workers):
            left = run(pool, jobs, workers)
            self.parts += int(((jobs["status"] == 0) & (jobs["cropped"] != 0)).sum())
            return left

        monkeypatch.setattr(native.TilePool, "run", spy_run)


@requires_turbojpeg
@pytest.mark.parametrize("tables", [False, True], ids=["complete", "jpegtables"])
@pytest.mark.parametrize(("subsampling", "samples"), SUBSAMPLINGS, ids=[s or "gray" for s, _ in SUBSAMPLINGS])
def test_cropped_reads_equal_whole_tile_decodes(tmp_path, monkeypatch, subsampling, samples, tables):
    if tables and samples == 3 and subsampling not in _TIFF_SUBSAMPLING:
        pytest.skip("TIFF's YCbCrSubSampling cannot say 4:4:0")
    ref = _tiled_jpeg(tmp_path / "t.tif", samples, subsampling, tables=tables)
    spy = _Spy(monkeypatch)
    CuImage.cache("no_cache")
    img = CuImage(tmp_path / "t.tif")
    rng = random.Random(f"{subsampling}-{tables}")
    for x, y, w, h in _regions(rng, 40):
        got = img.read_region((x, y), (w, h))
        want = np.zeros((h, w, samples), np.uint8)
        ys, xs = slice(max(y, 0), min(y + h, H)), slice(max(x, 0), min(x + w, W))
        if ys.stop > ys.start and xs.stop > xs.start:
            want[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x] = ref[ys, xs]
        tfx.assert_close(got, want, 0, f"region {(x, y, w, h)}")
    assert spy.parts > 50, "the regions were not decoded cropped"


@requires_turbojpeg
def test_nearly_whole_parts_are_decoded_whole(tmp_path):
    """A crop that would cost about as much as a whole decode is declined (the whole tile is decoded)."""
    _tiled_jpeg(tmp_path / "t.tif", 3, "420", tile=(64, 64))
    decoder = get_decoder(CuImage(tmp_path / "t.tif").levels[0])

    tif = tifffile.TiffFile(tmp_path / "t.tif")
    page = tif.pages[0]
    tif.filehandle.seek(page.dataoffsets[0])
    data = tif.filehandle.read(page.databytecounts[0])
    tif.close()
    scratch = decode_buffer((1, 64, 64, 3), np.uint8)
    whole = imagecodecs.jpeg8_decode(data)
    assert decoder.decode_crop(data, 0, 63, 0, 64, scratch) is None  # all rows but one
    assert decoder.decode_crop(data, 1, 64, 1, 64, scratch) is None
    part = decoder.decode_crop(data, 0, 16, 0, 64, scratch)  # the top quarter
    np.testing.assert_array_equal(part[0], whole[:16])
    part = decoder.decode_crop(data, 40, 64, 50, 60, scratch)  # a corner
    np.testing.assert_array_equal(part[0], whole[40:, 50:60])


def test_without_turbojpeg_reads_fall_back_to_whole_tiles(tmp_path, monkeypatch):
    ref = _tiled_jpeg(tmp_path / "t.tif", 3, "420")
    monkeypatch.setattr(turbojpeg, "_state", [None])
    CuImage.cache("no_cache")
    img = CuImage(tmp_path / "t.tif")
    for x, y, w, h in _regions(random.Random(3), 10):
        if x >= 0 and y >= 0 and x + w <= W and y + h <= H:
            tfx.assert_close(img.read_region((x, y), (w, h)), ref[y : y + h, x : x + w], 0, "fallback region")
    tfx.assert_close(img.read_region(), ref, 0, "fallback whole level")


@requires_turbojpeg
def test_a_stream_without_tables_is_refused_after_one_with_them(tmp_path):
    """libjpeg keeps the last stream's tables; a tile lacking its own must not decode with another's."""
    tiles = [bytes(imagecodecs.jpeg8_encode(tfx.make_image(64, 64, 3, "uint8", seed=i), level=90))
             for i in range(4)]
    tiles[3] = tfx.split_jpeg(tiles[3])[1]
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, iter(tiles), shape=(128, 128, 3), dtype=np.uint8, tile=(64, 64), compression=7,
                     photometric="rgb")
    CuImage.cache("no_cache")
    img = CuImage(path)
    for location, size in (((0, 0), (128, 128)), ((10, 10), (100, 100)), ((60, 60), (8, 8))):
        with pytest.raises(cucim_like.DecodeError) as info:
            img.read_region(location, size, num_workers=1)
        assert info.value.tile == (1, 1)


@requires_turbojpeg
def test_partial_tiles_enter_a_full_cache_on_their_second_request(tmp_path, monkeypatch):
    _tiled_jpeg(tmp_path / "t.tif", 3, "420", tile=(64, 64))
    spy = _Spy(monkeypatch)
    tile_bytes = 64 * 64 * 3
    cache = CuImage.cache("per_process", memory_capacity=2 * tile_bytes / 2**20)
    img = CuImage(tmp_path / "t.tif")
    img.read_region((10, 10), (20, 20))  # parts of two tiles while the cache has room: decoded whole, kept
    img.read_region((70, 10), (20, 20))
    assert cache.size == 2 and spy.parts == 0
    img.read_region((130, 10), (20, 20))  # part of a tile, cache full: cropped, not kept
    assert spy.parts == 1 and cache.size == 2 and cache.miss_count == 3
    img.read_region((130, 10), (20, 20))  # asked again: decoded whole and kept
    assert spy.parts == 1 and cache.size == 2
    img.read_region((131, 11), (5, 5))
    assert cache.hit_count == 1 and spy.parts == 1
    cache = CuImage.cache("per_process", memory_capacity=64)
    img.read_region((130, 10), (20, 20))  # room in the cache: decoded whole and kept at once
    assert spy.parts == 1 and cache.size == 1


@requires_turbojpeg
@pytest.mark.parametrize("fragments", [1, 3])
@pytest.mark.parametrize("samples", [3, 1])
def test_cropped_dicom_frames_equal_whole_frame_decodes(tmp_path, monkeypatch, samples, fragments):
    from tests.formats import dicom_fixtures as dfx

    fx = dfx.write_wsi(tmp_path, codec="jpeg", size=(200, 136), tile=(64, 48), levels=1, samples=samples,
                       fragments_per_frame=fragments)
    ref = fx.levels[0][(0, 0)]  # imagecodecs' decode of every stored frame
    h0, w0 = ref.shape[:2]
    spy = _Spy(monkeypatch)
    CuImage.cache("no_cache")
    img = CuImage(tmp_path)
    rng = random.Random(samples * 10 + fragments)
    for _ in range(30):
        w, h = rng.randrange(1, 80), rng.randrange(1, 80)
        x, y = rng.randrange(0, w0 - w + 1), rng.randrange(0, h0 - h + 1)
        got = img.read_region((x, y), (w, h))
        tfx.assert_close(got.reshape(h, w, -1), ref[y : y + h, x : x + w].reshape(h, w, -1), 0, f"{(x, y, w, h)}")
    assert spy.parts > 20


@requires_turbojpeg
def test_a_cache_full_by_tile_count_crops_partial_tiles(tmp_path, monkeypatch):
    _tiled_jpeg(tmp_path / "t.tif", 3, "420", tile=(64, 64))
    spy = _Spy(monkeypatch)
    cache = CuImage.cache("per_process", memory_capacity=64, capacity=1)  # bytes to spare, one tile
    img = CuImage(tmp_path / "t.tif")
    img.read_region((10, 10), (20, 20))
    assert cache.size == 1 and spy.parts == 0
    img.read_region((70, 10), (20, 20))  # full by count: cropped, the first tile stays
    assert cache.size == 1 and spy.parts == 1
    img.read_region((11, 11), (5, 5))
    assert cache.hit_count == 1


@requires_turbojpeg
def test_shared_memory_cache_keeps_partial_tiles_until_its_ring_wraps_then_on_second_request(tmp_path,
                                                                                             monkeypatch):
    _tiled_jpeg(tmp_path / "t.tif", 3, "420", tile=(64, 64))
    spy = _Spy(monkeypatch)
    tile_bytes = 64 * 64 * 3
    cache = CuImage.cache("shared_memory", memory_capacity=2 * tile_bytes / 2**20)
    try:
        img = CuImage(tmp_path / "t.tif")
        img.read_region((10, 10), (20, 20))  # the ring has room: decoded whole, kept
        img.read_region((70, 10), (20, 20))
        assert spy.parts == 0 and cache.size == 2
        img.read_region((130, 10), (20, 20))  # would overwrite: cropped
        assert spy.parts == 1
        img.read_region((130, 10), (20, 20))  # second request: decoded whole, kept
        assert spy.parts == 1
        hits = cache.hit_count
        img.read_region((131, 11), (5, 5))
        assert cache.hit_count == hits + 1 and spy.parts == 1
    finally:
        CuImage.cache("no_cache")


@requires_turbojpeg
def test_cropped_strips_including_a_short_last_strip(tmp_path, monkeypatch):
    arr = tfx.make_image(H, W, 3, "uint8", seed=5)
    path = tmp_path / "strips.tif"
    with tifffile.TiffWriter(path) as tw:  # 48-row strips: the last one holds 8 rows
        tfx.write_jpeg_tables_page(tw, arr, None, photometric="ycbcr", encode={"level": 85}, rowsperstrip=48)
    ref = tifffile.imread(path)
    spy = _Spy(monkeypatch)
    CuImage.cache("no_cache")
    img = CuImage(path)
    for x, y, w, h in [(5, 190, 100, 10), (0, 195, W, 5), (100, 150, 50, 45), (17, 3, 30, 20)]:
        tfx.assert_close(img.read_region((x, y), (w, h)), ref[y : y + h, x : x + w], 0, f"{(x, y, w, h)}")
    assert spy.parts >= 4


@requires_turbojpeg
def test_library_loads_without_importing_the_wheels_module_and_skips_a_bad_path():
    import subprocess
    import sys

    code = ("import sys; from cucim_like.codecs import turbojpeg as t; lib = t.library(); "
            "print(lib is not None, 'turbojpeg' in sys.modules)")
    env = {**__import__("os").environ, "CUCIM_LIKE_TURBOJPEG": "/nonexistent/libturbojpeg.so"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True", "False"]


def _tiff_of_streams(path, streams: list[bytes], samples: int, tile=(64, 96), photometric: str = "rgb") -> None:
    tifffile.imwrite(path, iter(streams), shape=(H, W, samples) if samples > 1 else (H, W), dtype=np.uint8,
                     tile=tile, compression=7, photometric=photometric)


def _reference(streams: list[bytes], samples: int, tile=(64, 96), **decode) -> np.ndarray:
    """The image as imagecodecs decodes each tile whole."""
    cols = -(-W // tile[1])
    ref = np.zeros((-(-H // tile[0]) * tile[0], cols * tile[1], samples), np.uint8)
    for i, s in enumerate(streams):
        ty, tx = divmod(i, cols)
        ref[ty * tile[0] : (ty + 1) * tile[0], tx * tile[1] : (tx + 1) * tile[1]] = (
            imagecodecs.jpeg8_decode(s, **decode).reshape(tile[0], tile[1], samples))
    return ref[:H, :W]


def _check_regions(img, ref, n: int = 25) -> None:
    rng = random.Random(11)
    for _ in range(n):
        w, h = rng.randrange(1, 90), rng.randrange(1, 90)
        x, y = rng.randrange(0, W - w + 1), rng.randrange(0, H - h + 1)
        tfx.assert_close(img.read_region((x, y), (w, h)), ref[y : y + h, x : x + w], 0, f"{(x, y, w, h)}")


@requires_turbojpeg
def test_progressive_tiles_are_cropped_with_the_pixels_of_a_whole_decode(tmp_path, monkeypatch):
    import io

    from PIL import Image

    arr = tfx.make_image(H, W, 3, "uint8", seed=9)
    streams = []
    for t in tfx.iter_tiles(arr, 64, 96):
        out = io.BytesIO()
        Image.fromarray(t).save(out, "JPEG", quality=85, progressive=True)
        streams.append(out.getvalue())
    assert b"\xff\xc2" in streams[0]  # SOF2: progressive
    _tiff_of_streams(tmp_path / "p.tif", streams, 3)
    spy = _Spy(monkeypatch)
    CuImage.cache("no_cache")
    _check_regions(CuImage(tmp_path / "p.tif"), _reference(streams, 3))
    assert spy.parts > 20


@requires_turbojpeg
def test_lossless_and_unconverted_rgb_tiles_are_decoded_whole(tmp_path, monkeypatch):
    arr = tfx.make_image(H, W, 3, "uint8", seed=4)
    spy = _Spy(monkeypatch)
    CuImage.cache("no_cache")
    # lossless JPEG (SOF3): TurboJPEG cannot crop it; the whole decode is exact
    lossless = [bytes(imagecodecs.jpeg8_encode(t, lossless=True)) for t in tfx.iter_tiles(arr, 64, 96)]
    _tiff_of_streams(tmp_path / "ll.tif", lossless, 3)
    _check_regions(CuImage(tmp_path / "ll.tif"), arr, 10)
    # RGB samples without a JFIF marker (Aperio 33005 style): libjpeg must not colour-convert them
    path = tmp_path / "rgb.tif"
    with tifffile.TiffWriter(path) as tw:
        tfx.write_jpeg_tables_page(tw, arr, (64, 96), photometric="rgb", drop_app=True,
                                   encode={"level": 90, "colorspace": "RGB", "outcolorspace": "RGB"})
    _check_regions(CuImage(path), tifffile.imread(path), 10)
    assert spy.parts == 0
