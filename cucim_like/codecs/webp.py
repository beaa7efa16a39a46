"""WebP tiles (TIFF compression 50001) via libwebp."""

from __future__ import annotations

import numpy as np

from ..errors import CodecUnavailableError, DecodeError
from ..formats.base import CodecSpec
from . import Decoder, imagecodecs_function
from .headers import webp_size


class WebpDecoder(Decoder):
    """Decodes 8-bit RGB or RGBA tiles; the stream's size must match the tile's."""

    def __init__(self, spec: CodecSpec, tile_shape: tuple[int, int, int, int], dtype: np.dtype) -> None:
        super().__init__(spec, tile_shape, dtype)
        if tile_shape[0] != 1 or tile_shape[3] not in (3, 4) or self.dtype != np.uint8:
            raise CodecUnavailableError("WebP tiles must be 2-D 8-bit RGB or RGBA")
        self._decode = imagecodecs_function("webp", "webp_decode")

    def decode(self, data: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        # the last strip of a striped image holds fewer rows than the tile: decode into its leading rows
        height, width = webp_size(data)
        _, ty, tx, _ = self.tile_shape
        if width != tx or not 0 < height <= ty:
            raise DecodeError(f"WebP image is {height}x{width}, the tile is {ty}x{tx}")
        try:
            self._decode(data, hasalpha=self.tile_shape[3] == 4, out=out[0, :height])
        except Exception as exc:
            raise DecodeError(f"WebP stream is damaged or not {self.tile_shape[1:]}: {exc}") from exc
        return out[:, :height]
