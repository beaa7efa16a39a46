"""JPEG 2000 tiles (TIFF 34712, Aperio 33003 YCbCr and 33005 RGB) via OpenJPEG."""

from __future__ import annotations

import numpy as np

from ..errors import CodecUnavailableError, DecodeError
from ..formats.base import CodecSpec
from . import Decoder, imagecodecs_function
from .headers import j2k_size


def ycbcr_to_rgb(ycc: np.ndarray, out: np.ndarray) -> None:
    """Full-range BT.601 YCbCr (as JPEG/JFIF) to RGB, rounded and clipped to ``out``'s integer dtype."""
    maxval = np.iinfo(out.dtype).max
    half = (maxval + 1) / 2
    y = ycc[..., 0].astype(np.float32)
    cb = ycc[..., 1].astype(np.float32) - half
    cr = ycc[..., 2].astype(np.float32) - half
    rgb = np.empty(ycc.shape, np.float32)
    rgb[..., 0] = y + 1.402 * cr
    rgb[..., 1] = y - 0.344136 * cb - 0.714136 * cr
    rgb[..., 2] = y + 1.772 * cb
    np.clip(np.rint(rgb, out=rgb), 0, maxval, out=rgb)
    out[...] = rgb


class Jpeg2000Decoder(Decoder):
    """Decodes to the tile's samples; ``colorspace="YCbCr"`` (Aperio 33003) is converted to RGB."""

    def __init__(self, spec: CodecSpec, tile_shape: tuple[int, int, int, int], dtype: np.dtype) -> None:
        super().__init__(spec, tile_shape, dtype)
        if tile_shape[0] != 1:
            raise CodecUnavailableError("JPEG 2000 tiles must be 2-D")
        self._decode = imagecodecs_function("jpeg2000", "jpeg2k_decode")

    def decode(self, data: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        height, width, comps, bits = j2k_size(data)
        _, ty, tx, cs = self.tile_shape
        if width != tx or not 0 < height <= ty or comps != cs:
            raise DecodeError(f"JPEG 2000 image is {height}x{width}x{comps}, the tile is {ty}x{tx}x{cs}")
        if bits > self.dtype.itemsize * 8:
            raise DecodeError(f"JPEG 2000 samples of {bits} bits do not fit {self.dtype}")
        target = out[0, :height]
        if cs == 1:
            target = target.reshape(height, tx)
        try:
            self._decode(data, out=target)
        except Exception as exc:
            raise DecodeError(f"JPEG 2000 stream is damaged: {exc}") from exc
        if self.spec.colorspace == "YCbCr" and cs == 3:
            ycbcr_to_rgb(target, target)
        return out[:, :height]
