"""Byte-stream codecs (none, deflate, LZW, zstd, LZMA, PackBits) with TIFF predictors and byte order."""

from __future__ import annotations

import sys

import numpy as np

from ..errors import CodecUnavailableError, DecodeError
from ..formats.base import CodecSpec
from . import Decoder, imagecodecs_function

_FUNCTIONS = {
    "deflate": "zlib_decode",
    "lzw": "lzw_decode",
    "zstd": "zstd_decode",
    "lzma": "lzma_decode",
    "packbits": "packbits_decode",
}
_NATIVE = "<" if sys.byteorder == "little" else ">"


class RawDecoder(Decoder):
    """Decompresses into the tile's bytes, then undoes the predictor and swaps to native byte order."""

    def __init__(self, spec: CodecSpec, tile_shape: tuple[int, int, int, int], dtype: np.dtype) -> None:
        super().__init__(spec, tile_shape, dtype)
        self._decompress = None
        if spec.name != "none":
            self._decompress = imagecodecs_function(spec.name, _FUNCTIONS[spec.name])
        if spec.predictor not in (1, 2, 3):
            raise CodecUnavailableError(f"TIFF predictor {spec.predictor} is not supported")
        if spec.predictor == 3 and self.dtype.kind != "f":
            raise CodecUnavailableError("the floating-point predictor needs floating-point samples")
        if spec.predictor == 2 and self.dtype.kind not in "iuf":
            raise CodecUnavailableError(f"the horizontal predictor needs integer or float samples, not {self.dtype}")
        self._unpredict = None
        if spec.predictor == 2:
            self._unpredict = imagecodecs_function("delta", "delta_decode")
        elif spec.predictor == 3:
            self._unpredict = imagecodecs_function("floatpred", "floatpred_decode")
        self._swap = self.dtype.itemsize > 1 and spec.byteorder != _NATIVE
        _tz, _ty, tx, cs = tile_shape
        self._row_bytes = tx * cs * self.dtype.itemsize

    def decode(self, data: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        flat = out.reshape(-1).view(np.uint8)
        if self._decompress is None:
            n = min(len(data), flat.size)
            flat[:n] = np.frombuffer(data, dtype=np.uint8, count=n)
        else:
            try:
                n = len(self._decompress(data, out=flat))
            except Exception as exc:  # imagecodecs raises its own error classes per codec
                raise DecodeError(f"{self.spec.name} stream is damaged: {exc}") from exc
        tz, ty = out.shape[:2]
        if tz > 1:
            if n != flat.size:
                raise DecodeError(f"tile decoded to {n} bytes, expected {flat.size}")
            rows = ty
        else:
            rows = min(n // self._row_bytes, ty)
        if rows == 0:
            raise DecodeError(f"tile decoded to {n} bytes, less than one row of {self._row_bytes}")
        view = out[:, :rows]
        if self.spec.predictor == 3:
            stored = view.view(self.dtype.newbyteorder(self.spec.byteorder))
            try:
                view[...] = self._unpredict(stored, axis=-2)
            except Exception as exc:
                raise DecodeError(f"floating-point predictor failed: {exc}") from exc
            return view
        if self._swap:
            view.byteswap(inplace=True)
        if self._unpredict is not None:
            self._unpredict(view, axis=-2, out=view)
        return view
