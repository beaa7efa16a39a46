"""DICOM frame decoders: native frames (zero-copy views), JPEG-LS, lossless JPEG, DICOM RLE, and the joining of
encapsulated fragments into one frame.

Every decoder checks the size the stream declares against the frame before decoding, and delivers
(1, rows, columns, samples) arrays with RGB for 3 samples (YBR_FULL is converted).
"""

from __future__ import annotations

import itertools
import struct
import sys

import numpy as np

from ..errors import CodecUnavailableError, DecodeError
from ..formats.base import CodecSpec
from . import Decoder, imagecodecs_function
from .headers import jpeg_frame
from .jpeg2000 import ycbcr_to_rgb

_NATIVE = "<" if sys.byteorder == "little" else ">"
_ITEM = 0xE000FFFE  # (FFFE,E000) read as a little-endian uint32 of group then element
_SEQUENCE_END = 0xE0DDFFFE
_JPEGLS_SOF = frozenset({0xF7})
_LOSSLESS_SOF = frozenset({0xC3, 0xC7, 0xCB, 0xCF})


def join_items(data: bytes | memoryview) -> bytes | memoryview:
    """The payload of the encapsulated items in ``data`` (one frame's fragments), joined.

    One fragment comes back as a view (no copy). Stops at a sequence delimiter or at the end of ``data``;
    raises DecodeError when an item runs past the data or no item holds bytes.
    """
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    n = len(view)
    pos = 0
    parts: list[memoryview] = []
    while pos + 8 <= n:
        tag, length = struct.unpack_from("<II", view, pos)
        if tag == _SEQUENCE_END:
            break
        if tag != _ITEM:
            if parts:
                break  # bytes after the frame's last fragment (a read rounded up to the pixel data's end)
            raise DecodeError(f"encapsulated frame does not start with an item tag (found {tag:#010x})")
        if length == 0xFFFFFFFF or pos + 8 + length > n:
            raise DecodeError(f"fragment of {length} bytes at +{pos} runs past the frame's {n} bytes")
        if length:
            parts.append(view[pos + 8 : pos + 8 + length])
        pos += 8 + length
    if not parts:
        raise DecodeError("encapsulated frame holds no data (no fragment, or only empty ones)")
    return parts[0] if len(parts) == 1 else b"".join(parts)


class ItemFramedDecoder(Decoder):
    """Joins a frame's DICOM fragments, then hands the stream to the codec's decoder."""

    def __init__(self, inner: Decoder) -> None:
        super().__init__(inner.spec, inner.tile_shape, inner.dtype)
        self.inner = inner
        self.crops = inner.crops

    def decode(self, data: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        return self.inner.decode(join_items(data), out)

    def decode_crop(self, data: bytes | memoryview, y0: int, y1: int, x0: int, x1: int,
                    scratch: np.ndarray) -> np.ndarray | None:
        """The inner decoder's cropped decode of the joined stream (see JpegDecoder.decode_crop)."""
        return self.inner.decode_crop(join_items(data), y0, y1, x0, x1, scratch)

    def native_stream(self, data: bytes | memoryview) -> bytes | memoryview | None:
        """The inner decoder's stream of the joined fragments; None when they do not join (decode raises)."""
        try:
            joined = join_items(data)
        except DecodeError:
            return None
        return self.inner.native_stream(joined)


def _check_frame(height: int, width: int, comps: int, tile_shape: tuple[int, ...], what: str) -> None:
    _, ty, tx, cs = tile_shape
    if height != ty or width != tx or comps != cs:
        raise DecodeError(f"{what} frame is {height}x{width}x{comps}, the image's frames are {ty}x{tx}x{cs}")


def _to_rgb(spec: CodecSpec, target: np.ndarray) -> None:
    if spec.colorspace == "YCbCr" and target.shape[-1] == 3:
        ycbcr_to_rgb(target, target)


class NativeFrameDecoder(Decoder):
    """Uncompressed frames, served as views of the stored bytes (a memory map): no copy, no widening.

    Big-endian or planar frames come back as views too (non-native dtype, transposed strides); the copy
    into the output converts them. Only YBR_FULL frames are converted here, into ``out``.
    """

    zero_copy = True

    def __init__(self, spec: CodecSpec, tile_shape: tuple[int, int, int, int], dtype: np.dtype) -> None:
        super().__init__(spec, tile_shape, dtype)
        self._stored = self.dtype.newbyteorder(spec.byteorder) if self.dtype.itemsize > 1 else self.dtype
        self._nbytes = int(np.prod(tile_shape)) * self.dtype.itemsize

    def decode(self, data: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        if len(data) < self._nbytes:
            raise DecodeError(f"native frame holds {len(data)} bytes, {self._nbytes} are needed")
        tz, ty, tx, cs = self.tile_shape
        flat = np.frombuffer(data, dtype=self._stored, count=self._nbytes // self.dtype.itemsize)
        if self.spec.planar and cs > 1:
            arr = flat.reshape(tz, cs, ty, tx).transpose(0, 2, 3, 1)
        else:
            arr = flat.reshape(self.tile_shape)
        if self.spec.colorspace == "YCbCr" and cs == 3:
            out[...] = arr
            _to_rgb(self.spec, out[0])
            return out
        return arr


class BitFrameDecoder(Decoder):
    """1-bit frames (BitsAllocated 1): eight pixels a byte, the first in the lowest bit, unpacked to uint8
    0/1 into ``out`` (1, rows, columns, 1)."""

    def __init__(self, spec: CodecSpec, tile_shape: tuple[int, int, int, int], dtype: np.dtype) -> None:
        super().__init__(spec, tile_shape, dtype)
        self._pixels = int(np.prod(tile_shape))
        self._nbytes = -(-self._pixels // 8)

    def decode(self, data: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        if len(data) < self._nbytes:
            raise DecodeError(f"1-bit frame holds {len(data)} bytes, {self._nbytes} are needed")
        packed = np.frombuffer(data, dtype=np.uint8, count=self._nbytes)
        out[...] = np.unpackbits(packed, count=self._pixels, bitorder="little").reshape(self.tile_shape)
        return out


class Ybr422FrameDecoder(Decoder):
    """Native YBR_FULL_422 frames: each pair of pixels stored as Y1 Y2 Cb Cr; the chroma is repeated over the
    pair and the frame converted to RGB into ``out`` (1, rows, columns, 3)."""

    def __init__(self, spec: CodecSpec, tile_shape: tuple[int, int, int, int], dtype: np.dtype) -> None:
        super().__init__(spec, tile_shape, dtype)
        self._stored = self.dtype.newbyteorder(spec.byteorder) if self.dtype.itemsize > 1 else self.dtype
        self._values = tile_shape[1] * tile_shape[2] * 2

    def decode(self, data: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        if len(data) < self._values * self.dtype.itemsize:
            raise DecodeError(f"YBR_FULL_422 frame holds {len(data)} bytes, "
                              f"{self._values * self.dtype.itemsize} are needed")
        _, ty, tx, _ = self.tile_shape
        pairs = np.frombuffer(data, dtype=self._stored, count=self._values).reshape(ty, tx // 2, 4)
        ycc = out[0]
        ycc[:, 0::2, 0] = pairs[..., 0]
        ycc[:, 1::2, 0] = pairs[..., 1]
        for channel, value in ((1, 2), (2, 3)):
            ycc[:, 0::2, channel] = pairs[..., value]
            ycc[:, 1::2, channel] = pairs[..., value]
        ycbcr_to_rgb(ycc, ycc)
        return out


class _JpegFamilyDecoder(Decoder):
    """Frames of a JPEG-family codec decoded by one imagecodecs function into the frame: the frame header
    (``_markers``) is checked first; YBR_FULL samples are converted to RGB unless ``_stored_rgb`` says the
    stream holds RGB."""

    _codec = _function = _label = ""
    _markers: frozenset[int] = frozenset()

    def __init__(self, spec: CodecSpec, tile_shape: tuple[int, int, int, int], dtype: np.dtype) -> None:
        super().__init__(spec, tile_shape, dtype)
        self._decode = imagecodecs_function(self._codec, self._function)

    def _stored_rgb(self, data: bytes | memoryview) -> bool:
        return False

    def decode(self, data: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        precision, height, width, comps = jpeg_frame(data, self._markers)
        _check_frame(height, width, comps, self.tile_shape, self._label)
        if precision > self.dtype.itemsize * 8:
            raise DecodeError(f"{self._label} precision {precision} does not fit {self.dtype}")
        target = out[0] if comps > 1 else out[0, :, :, 0]
        try:
            self._decode(data, out=target)
        except Exception as exc:
            raise DecodeError(f"{self._label} stream is damaged: {exc}") from exc
        if not self._stored_rgb(data):
            _to_rgb(self.spec, out[0])
        return out


class JpegLsDecoder(_JpegFamilyDecoder):
    """JPEG-LS (lossless and near-lossless) frames via CharLS."""

    _codec, _function, _label, _markers = "jpegls", "jpegls_decode", "JPEG-LS", _JPEGLS_SOF


class LosslessJpegDecoder(_JpegFamilyDecoder):
    """Lossless JPEG (process 14, ITU T.81 SOF3) frames; the stream's own markers win over the header's
    photometric interpretation."""

    _codec, _function, _label, _markers = "ljpeg", "ljpeg_decode", "lossless JPEG", _LOSSLESS_SOF

    def _stored_rgb(self, data: bytes | memoryview) -> bool:
        return _stream_is_rgb(data)


def _stream_is_rgb(data: bytes | memoryview) -> bool:
    """Whether a JPEG stream says its 3 components are RGB: Adobe APP14 transform 0, or component ids R, G, B."""
    head = bytes(data[:256])
    i = head.find(b"Adobe")
    if i >= 0 and i + 11 < len(head) and head[i + 11] == 0:
        return True
    for marker in (b"\xff\xc3", b"\xff\xc7"):
        j = head.find(marker)
        if j >= 0 and j + 17 <= len(head) and head[j + 9] == 3:
            return head[j + 10 : j + 17 : 3] == b"RGB"
    return False


class DicomRleDecoder(Decoder):
    """DICOM RLE Lossless frames: one segment per sample byte, most significant byte first."""

    def __init__(self, spec: CodecSpec, tile_shape: tuple[int, int, int, int], dtype: np.dtype) -> None:
        super().__init__(spec, tile_shape, dtype)
        self._decode = imagecodecs_function("dicomrle", "dicomrle_decode")
        if self.dtype.itemsize not in (1, 2, 4):
            raise CodecUnavailableError(f"RLE frames of {self.dtype} are not supported")
        self._segments = tile_shape[3] * self.dtype.itemsize

    def decode(self, data: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        if len(data) < 64:
            raise DecodeError(f"RLE frame of {len(data)} bytes is shorter than its 64-byte header")
        header = struct.unpack_from("<16I", data, 0)
        nseg = header[0]
        if nseg != self._segments:
            raise DecodeError(f"RLE header declares {nseg} segments, the frame has {self._segments}")
        offsets = header[1 : 1 + nseg]
        if offsets[0] != 64 or any(b < a for a, b in itertools.pairwise(offsets)) or (
                offsets[-1] > len(data)):
            raise DecodeError("RLE segment offsets are out of order or past the frame")
        _, ty, tx, cs = self.tile_shape
        try:
            raw = self._decode(data, dtype=self.dtype.newbyteorder("<"))
        except Exception as exc:
            raise DecodeError(f"RLE stream is damaged: {exc}") from exc
        if len(raw) != out.nbytes:
            raise DecodeError(f"RLE frame decoded to {len(raw)} bytes, {out.nbytes} expected")
        planes = np.frombuffer(raw, dtype=self.dtype.newbyteorder("<")).reshape(cs, ty, tx)
        out[0] = planes.transpose(1, 2, 0)
        _to_rgb(self.spec, out[0])
        return out
