"""Stream preparation and nvImageCodec batch decoding (its CPU backend here; the GPU one under ``gpu``),
checked against imagecodecs."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest

from cucim_like.codecs.headers import jpeg_frame
from cucim_like.cuda import nvdecode
from cucim_like.errors import DecodeError
from cucim_like.formats.base import CodecSpec, Level
from tests.formats import tiff_fixtures as tfx

from .conftest import requires_gpu

pytest.importorskip("nvidia.nvimgcodec", reason="nvImageCodec is not installed")


def _level(codec: CodecSpec, dtype="uint8", samples=3, tile=(64, 64)) -> Level:
    grid = np.zeros((1, 1, 1, 1), np.int64)
    return Level(0, (1, *tile, samples), (1, *tile), np.dtype(dtype), 1.0, codec, grid, grid)


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def backend(request):
    if request.param == "gpu":
        requires_gpu()
    return request.param


def _host(image) -> np.ndarray:
    return np.asarray(image.cpu())


def test_batch_maps_failures_to_none_and_keeps_the_rest(backend):
    level = _level(CodecSpec("jpeg", colorspace="YCbCr"))
    pixels = [tfx.make_image(64, 64, 3, "uint8", seed=i) for i in range(3)]
    streams = [bytes(imagecodecs.jpeg8_encode(p, level=92)) for p in pixels]
    abbreviated = tfx.split_jpeg(streams[1])[1]
    prepared = [nvdecode.prepare_stream(level, s) for s in (streams[0], abbreviated, streams[2])]
    images = nvdecode.decode_batch(prepared, None, backend=backend)
    assert images[1] is None  # no tables: nothing to decode with
    for i in (0, 2):
        diff = np.abs(_host(images[i]).astype(int) - imagecodecs.jpeg8_decode(streams[i]).astype(int))
        assert diff.max() <= (1 if backend == "cpu" else 8), diff.max()


def test_tables_are_merged_into_abbreviated_tiles(backend):
    pixels = tfx.make_image(64, 64, 3, "uint8", seed=5)
    full = bytes(imagecodecs.jpeg8_encode(pixels, level=90))
    tables, abbreviated = tfx.split_jpeg(full)
    level = _level(CodecSpec("jpeg", jpeg_tables=tables, colorspace="YCbCr"))
    prepared = nvdecode.prepare_stream(level, abbreviated)
    assert prepared.data.startswith(tables[:-2]) and jpeg_frame(prepared.data)[1:] == (64, 64, 3)
    image = nvdecode.decode_batch([prepared], None, backend=backend)[0]
    diff = np.abs(_host(image).astype(int) - imagecodecs.jpeg8_decode(full).astype(int))
    assert diff.max() <= (1 if backend == "cpu" else 8)


def test_rgb_samples_are_decoded_unconverted(backend):
    """TIFF Photometric=RGB JPEG (no JFIF, Adobe transform 0): the samples are RGB, not YCbCr."""
    pixels = tfx.make_image(64, 64, 3, "uint8", seed=6)
    stream = bytes(imagecodecs.jpeg8_encode(pixels, level=95, colorspace="RGB", outcolorspace="RGB"))
    level = _level(CodecSpec("jpeg", colorspace="RGB"))
    prepared = nvdecode.prepare_stream(level, stream)
    assert prepared.params.color_spec == "UNCHANGED"
    got = _host(nvdecode.decode_batch([prepared], None, backend=backend)[0]).astype(int)
    want = imagecodecs.jpeg8_decode(stream, colorspace="RGB", outcolorspace="RGB").astype(int)
    assert np.abs(got - want).max() <= (1 if backend == "cpu" else 8)


def test_regions_decode_part_of_a_tile(backend):
    pixels = tfx.make_image(64, 64, 3, "uint8", seed=7)
    stream = bytes(imagecodecs.jpeg8_encode(pixels, level=92))
    prepared = nvdecode.prepare_stream(_level(CodecSpec("jpeg", colorspace="YCbCr")), stream)
    image = nvdecode.decode_batch([prepared], [(8, 16, 40, 56)], backend=backend)[0]
    full = imagecodecs.jpeg8_decode(stream).astype(int)
    got = _host(image).astype(int)
    assert got.shape == (32, 40, 3)
    assert np.abs(got - full[8:40, 16:56]).max() <= (1 if backend == "cpu" else 8)


def test_jpeg2000_16_bit_keeps_its_depth(backend):
    pixels = tfx.make_image(64, 64, 1, "uint16", seed=8)
    stream = bytes(imagecodecs.jpeg2k_encode(pixels[..., 0], level=0, codecformat="J2K"))
    level = _level(CodecSpec("jpeg2000"), dtype="uint16", samples=1)
    prepared = nvdecode.prepare_stream(level, stream)
    assert prepared.params.any_depth
    got = _host(nvdecode.decode_batch([prepared], None, backend=backend)[0])
    assert got.dtype == np.uint16 and np.array_equal(got[..., 0], pixels[..., 0])


def test_headers_are_checked_against_the_tile():
    level = _level(CodecSpec("jpeg", colorspace="YCbCr"))
    small = bytes(imagecodecs.jpeg8_encode(tfx.make_image(32, 64, 3, "uint8")))
    assert nvdecode.prepare_stream(level, small).rows == 32  # a short last strip is fine
    wide = bytes(imagecodecs.jpeg8_encode(tfx.make_image(64, 96, 3, "uint8")))
    with pytest.raises(DecodeError, match="the tile is 64x64x3"):
        nvdecode.prepare_stream(level, wide)
    with pytest.raises(DecodeError):
        nvdecode.prepare_stream(level, b"\xff\xd8\x00\x00garbage")
    gray = bytes(imagecodecs.jpeg8_encode(tfx.make_image(64, 64, 1, "uint8")[..., 0]))
    with pytest.raises(DecodeError):
        nvdecode.prepare_stream(level, gray)


def test_streams_the_gpu_does_not_take_go_to_the_cpu():
    level = _level(CodecSpec("jpeg", colorspace="YCbCr"), samples=1)
    lossless = bytes(imagecodecs.ljpeg_encode(tfx.make_image(64, 64, 1, "uint8")[..., 0]))
    assert nvdecode.prepare_stream(level, lossless) is None
    assert not nvdecode.gpu_decodable(_level(CodecSpec("zstd")))
    assert not nvdecode.gpu_decodable(_level(CodecSpec("jpeg", predictor=2)))
    assert not nvdecode.gpu_decodable(_level(CodecSpec("jpeg"), dtype="uint16"))
    assert nvdecode.gpu_decodable(_level(CodecSpec("jpeg2000"), dtype="uint16", samples=1))
    assert nvdecode.gpu_decodable(_level(CodecSpec("jpeg")))
