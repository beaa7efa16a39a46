"""JPEG tiles (baseline, extended, lossless; abbreviated streams with TIFF JPEGTables) via libjpeg-turbo."""

from __future__ import annotations

import numpy as np

from ..errors import CodecUnavailableError, DecodeError
from ..formats.base import CodecSpec
from . import Decoder, imagecodecs_function
from .headers import jpeg_frame


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
        self._out_colorspace = "RGB" if tile_shape[3] == 3 else None

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
        if cs == 1:
            target = target.reshape(height, tx)
        colorspace = None
        if self.spec.colorspace == "RGB" and b"JFIF" not in bytes(data[:32]):
            colorspace = "RGB"  # RGB samples without a JFIF marker (Aperio): do not convert from YCbCr
        try:
            self._decode(
                data,
                tables=self._tables,
                colorspace=colorspace,
                outcolorspace=self._out_colorspace,
                out=target,
            )
        except Exception as exc:
            raise DecodeError(f"JPEG stream is damaged: {exc}") from exc
        return out[:, :height]
