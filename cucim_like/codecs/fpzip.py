"""fpzip and kempressed chunks (neuroglancer precomputed float32 volumes), decoded safely.

The ``fpzip`` library reads past its buffer, divides by zero and sizes its output by the stream's header when a
stream is damaged. So: (1) the header is parsed here, in Python, with fpzip's own range decoder (a few dozen
bytes, every read bounded) and must declare float32 and exactly the chunk's dimensions before anything else
happens; (2) the payload is decoded in a child process (:mod:`cucim_like.codecs.isolation`) into a buffer of
exactly the chunk's size, and the decoder must consume exactly the stream's bytes; a crash, a refusal or a
length mismatch is a DecodeError.

``kempressed`` is fpzip of ``2.0 + data`` with the z and channel axes swapped; decoded as cloud-volume does
(``swapaxes(fpzip_decompress(b), 3, 2) - 2.0``, in float32).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

from ..errors import CodecUnavailableError, DecodeError
from ..formats.base import CodecSpec
from . import Decoder
from .isolation import decoder_pool
from .precomputed import place_channel_major

_MAGIC = (ord("f"), ord("p"), ord("z"), 0)
_VERSION = (0x0110, 1)  # format version written by fpzip 1.3 (FPZ_MAJ_VERSION, FPZ_MIN_VERSION)
_M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class FpzipHeader:
    """What an fpzip stream declares: type (0 float, 1 double), precision (0 = full) and nx, ny, nz, nf."""

    type: int
    precision: int
    nx: int
    ny: int
    nz: int
    nf: int


class _RangeDecoder:
    """fpzip's range decoder, enough of it for the header: uniform symbols of up to 32 bits."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.low = 0
        self.range = _M32
        self.code = 0
        self._get(4)

    def _get(self, n: int) -> None:
        for _ in range(n):
            if self.pos >= len(self.data):
                raise DecodeError("fpzip stream ends inside its header")
            self.code = ((self.code << 8) | self.data[self.pos]) & _M32
            self.low = (self.low << 8) & _M32
            self.pos += 1

    def _normalize(self) -> None:
        while not ((self.low ^ ((self.low + self.range) & _M32)) >> 24):
            self._get(1)
            self.range = (self.range << 8) & _M32
        if not (self.range >> 16):
            self._get(2)
            self.range = (-self.low) & _M32

    def _shift(self, bits: int) -> int:
        self.range >>= bits
        if self.range == 0:
            raise DecodeError("fpzip header is damaged (empty range)")
        value = ((self.code - self.low) & _M32) // self.range
        if value >> bits:
            raise DecodeError("fpzip header is damaged (value out of range)")
        self.low = (self.low + self.range * value) & _M32
        self._normalize()
        return value

    def uint(self, bits: int) -> int:
        if bits > 16:
            low = self._shift(16)
            return low + (self._shift(bits - 16) << 16)
        return self._shift(bits)


def read_fpzip_header(data: bytes | memoryview) -> FpzipHeader:
    """The header of an fpzip stream; DecodeError when it is not one, or is cut short or damaged."""
    rd = _RangeDecoder(bytes(data[:64]))  # the header takes 28 bytes
    if tuple(rd.uint(8) for _ in range(4)) != _MAGIC:
        raise DecodeError("not an fpzip stream (bad magic)")
    version = (rd.uint(16), rd.uint(8))
    if version != _VERSION:
        raise DecodeError(f"fpzip format version {version[0]:#x}.{version[1]} is not supported")
    kind, precision = rd.uint(1), rd.uint(7)
    nx, ny, nz, nf = (rd.uint(32) for _ in range(4))
    return FpzipHeader(kind, precision, nx, ny, nz, nf)


def _library() -> str:
    spec = importlib.util.find_spec("fpzip")
    if spec is None or not spec.origin:
        raise CodecUnavailableError("fpzip chunks need the fpzip package (pip install fpzip)")
    return spec.origin


class FpzipDecoder(Decoder):
    """``fpzip`` chunks: float32 (x, y, z, c) arrays, x fastest. Decoded into ``out`` (z, y, x, c)."""

    swap_z_channel = False
    strided_out = True

    def __init__(self, spec: CodecSpec, tile_shape: tuple[int, int, int, int], dtype: np.dtype) -> None:
        super().__init__(spec, tile_shape, dtype)
        if self.dtype != np.float32:
            raise DecodeError(f"{spec.name} chunks hold float32, not {self.dtype}")
        self._lib = _library()

    def expected_dims(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(nx, ny, nz, nf) the stream must declare for a chunk of ``shape`` (z, y, x, c)."""
        tz, ty, tx, c = shape
        return (tx, ty, c, tz) if self.swap_z_channel else (tx, ty, tz, c)

    def decode(self, data: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        header = read_fpzip_header(data)
        dims = self.expected_dims(out.shape)
        found = (header.nx, header.ny, header.nz, header.nf)
        if header.type != 0 or found != dims:
            kind = "float32" if header.type == 0 else "float64"
            raise DecodeError(f"{self.spec.name} stream declares {kind} {found} (x, y, z, c); the chunk is "
                              f"float32 {dims}")
        if header.precision not in range(2, 33) and header.precision != 0:
            raise DecodeError(f"fpzip precision {header.precision} is not valid for float32")
        nx, ny, nz, nf = dims
        with decoder_pool().decode("fpzip", self._lib, data, out.nbytes, dims) as view:
            values = np.frombuffer(view, np.float32, out.size).reshape(nf, nz, ny, nx)
            try:
                self._place(values, out)
            finally:
                del values
        return out

    def _place(self, values: np.ndarray, out: np.ndarray) -> None:
        """``values`` (nf, nz, ny, nx) as decoded -> ``out`` (z, y, x, c)."""
        place_channel_major(values, out)


class KempressedDecoder(FpzipDecoder):
    """``kempressed``: fpzip of (x, y, c, z) arrays holding ``2.0 + data``; out = values - 2.0 in float32."""

    swap_z_channel = True

    def _place(self, values: np.ndarray, out: np.ndarray) -> None:
        # values (z, c, y, x) -> (z, y, x, c); float32 - float32 keeps cloud-volume's rounding bit for bit
        np.subtract(values.transpose(0, 2, 3, 1), np.float32(2.0), out=out)
