"""Header readers: the frame size a stream declares, read without decoding, checked against encoders."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest

from cucim_like.codecs.headers import j2k_size, jpeg_frame, webp_size
from cucim_like.errors import DecodeError


@pytest.mark.parametrize("shape", [(37, 53, 3), (64, 64, 1), (250, 17, 3)])
def test_jpeg_frame_matches_encoder(shape):
    data = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    stream = imagecodecs.jpeg8_encode(data if shape[2] == 3 else data[..., 0])
    assert jpeg_frame(stream) == (8, shape[0], shape[1], shape[2])
    assert jpeg_frame(memoryview(stream)) == (8, shape[0], shape[1], shape[2])


def test_jpeg_frame_in_an_abbreviated_stream():
    stream = imagecodecs.jpeg8_encode(np.zeros((16, 24, 3), np.uint8))
    # drop the DQT/DHT segments as TIFF writers do (tables live in JPEGTables)
    out, i = bytearray(stream[:2]), 2
    while stream[i + 1] != 0xDA:
        length = int.from_bytes(stream[i + 2:i + 4], "big")
        if stream[i + 1] not in (0xDB, 0xC4):
            out += stream[i:i + 2 + length]
        i += 2 + length
    out += stream[i:]
    assert jpeg_frame(bytes(out)) == (8, 16, 24, 3)


@pytest.mark.parametrize(
    "bad", [b"", b"\xff\xd8", b"\x00" * 40, b"\xff\xd8\xff\xda\x00\x02", b"\xff\xd8\xff\xe0\x00\x01"]
)
def test_jpeg_frame_refuses_garbage(bad):
    with pytest.raises(DecodeError):
        jpeg_frame(bad)


@pytest.mark.parametrize("codecformat", ["j2k", "jp2"])
def test_j2k_size_matches_encoder(codecformat):
    data = np.random.default_rng(1).integers(0, 255, (45, 70, 3), dtype=np.uint8)
    stream = imagecodecs.jpeg2k_encode(data, codecformat=codecformat, level=0)
    assert j2k_size(stream) == (45, 70, 3, 8)


def test_j2k_size_refuses_garbage():
    with pytest.raises(DecodeError):
        j2k_size(b"\x00" * 64)


@pytest.mark.parametrize("lossless", [True, False])
@pytest.mark.parametrize("channels", [3, 4])
def test_webp_size_matches_encoder(lossless, channels):
    data = np.random.default_rng(2).integers(0, 255, (33, 47, channels), dtype=np.uint8)
    stream = imagecodecs.webp_encode(data, lossless=lossless)
    assert webp_size(stream) == (33, 47)


def test_webp_size_refuses_garbage():
    with pytest.raises(DecodeError):
        webp_size(b"RIFF\x00\x00\x00\x00WEBPXXXX" + b"\x00" * 20)
