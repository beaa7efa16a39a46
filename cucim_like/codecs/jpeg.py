"""JPEG tiles (baseline, extended, progressive, lossless; abbreviated streams with TIFF JPEGTables).

8-bit streams that libjpeg-turbo may colour-convert by itself are decoded with simplejpeg (libjpeg-turbo's
TurboJPEG API, identical pixels: 229-231 µs per 256² tile of the benchmark SVS against 234-240 µs for
imagecodecs' jpeg8_decode, both into buffers placed as memory.decode_buffer places them); streams
whose samples must stay unconverted (TIFF Photometric=RGB without a JFIF marker, as Aperio writes them),
12/16-bit streams, or any stream when simplejpeg is missing go through imagecodecs.
"""

from __future__ import annotations

import numpy as np

from ..errors import CodecUnavailableError, DecodeError
from ..formats.base import CodecSpec
from . import Decoder, imagecodecs_function
from .headers import jpeg_frame

try:  # optional accelerator; imagecodecs covers everything it does
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - exercised when simplejpeg is not installed
    _simplejpeg = None


class JpegDecoder(Decoder):
    """Decodes to RGB (3 samples) or gray (1 sample); RGB-photometric streams are left unconverted."""

    def __init__(self, spec: CodecSpec, tile_shape: tuple[int, int, int, int], dtype: np.dtype) -> None:
        super().__init__(spec, tile_shape, dtype)
        if tile_shape[0] != 1:
            raise CodecUnavailableError("JPEG tiles must be 2-D")
        if tile_shape[3] not in (1, 3):
            raise CodecUnavailableError(f"JPEG tiles with {tile_shape[3]} samples are not supported")
        self._decode = imagecodecs_function("jpeg", "jpeg8_decode")
        self._tables = spec.jpeg_tables
        # TIFF JPEGTables is a stream SOI, tables, EOI: an abbreviated tile becomes complete as
        # tables-without-EOI + tile-without-SOI.
        self._prefix = spec.jpeg_tables[:-2] if spec.jpeg_tables and spec.jpeg_tables.endswith(b"\xff\xd9") else None
        self._out_colorspace = "RGB" if tile_shape[3] == 3 else None
        self._turbo = None
        if _simplejpeg is not None and self.dtype == np.uint8 and (spec.jpeg_tables is None or self._prefix):
            self._turbo = "RGB" if tile_shape[3] == 3 else "GRAY"

    def _needs_rgb_input(self, data: bytes | memoryview) -> bool:
        # RGB samples without a JFIF marker (Aperio): libjpeg would otherwise assume YCbCr and convert
        return self.spec.colorspace == "RGB" and b"JFIF" not in bytes(data[:32])

    def decode(self, data: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        precision, height, width, comps = jpeg_frame(data)
        _, ty, tx, cs = self.tile_shape
        if width != tx or not 0 < height <= ty or comps != cs:
            raise DecodeError(
                f"JPEG frame is {height}x{width}x{comps}, the tile is {ty}x{tx}x{cs}"
            )
        if (precision > 8) != (self.dtype.itemsize > 1):
            raise DecodeError(f"JPEG precision {precision} does not match {self.dtype}")
        target = out[0, :height]
        rgb_input = self._needs_rgb_input(data)
        if self._turbo is not None and precision == 8 and not rgb_input:
            stream = self._prefix + bytes(data[2:]) if self._prefix is not None else data
            try:
                _simplejpeg.decode_jpeg(stream, self._turbo, buffer=target)
                return out[:, :height]
            except (ValueError, RuntimeError):
                pass  # strict TurboJPEG refuses some recoverable streams: let imagecodecs decide below
        if cs == 1:
            target = target.reshape(height, tx)
        try:
            self._decode(
                data,
                tables=self._tables,
                colorspace="RGB" if rgb_input else None,
                outcolorspace=self._out_colorspace,
                out=target,
            )
        except Exception as exc:
            raise DecodeError(f"JPEG stream is damaged: {exc}") from exc
        return out[:, :height]
