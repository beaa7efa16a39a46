"""Neuroglancer precomputed chunk encodings: raw, jpeg and compressed_segmentation (fpzip and kempressed are in
:mod:`cucim_like.codecs.fpzip`).

A chunk stores its voxels x fastest, then y, z and channel: as a C-ordered array that is (c, z, y, x); the
decoders write them into ``out`` (z, y, x, c), whose shape is the chunk's (edge chunks are clipped). Every
stream is checked against that shape before anything is allocated or written.
"""

from __future__ import annotations

import numpy as np

from ..errors import DecodeError
from ..formats.base import CodecSpec
from . import Decoder, imagecodecs_function
from .headers import jpeg_frame

try:  # optional accelerator, as in codecs.jpeg
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - exercised when simplejpeg is not installed
    _simplejpeg = None


def place_channel_major(values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Copy ``values`` (c, z, y, x) into ``out`` (z, y, x, c)."""
    if out.shape[3] == 1:
        out[..., 0] = values[0]
    else:
        out[...] = values.transpose(1, 2, 3, 0)
    return out


class PrecomputedRawDecoder(Decoder):
    """``raw``: the voxels as little-endian samples, x fastest; the byte count must match the chunk exactly."""

    strided_out = True

    def decode(self, data: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        tz, ty, tx, c = out.shape
        want = out.size * self.dtype.itemsize
        if len(data) != want:
            raise DecodeError(f"raw chunk holds {len(data)} bytes; a {tx}x{ty}x{tz}x{c} chunk of {self.dtype} "
                              f"takes {want}")
        values = np.frombuffer(data, self.dtype.newbyteorder("<")).reshape(c, tz, ty, tx)
        return place_channel_major(values, out)


class PrecomputedJpegDecoder(Decoder):
    """``jpeg``: uint8 chunks of 1 or 3 channels as one JPEG image whose rows, concatenated, are the voxels in
    x, y, z order (any width x height with as many pixels as the chunk has voxels)."""

    def decode(self, data: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        tz, ty, tx, c = out.shape
        precision, height, width, comps = jpeg_frame(data)
        if precision != 8 or comps != c or height * width != tz * ty * tx:
            raise DecodeError(f"JPEG frame is {width}x{height}x{comps} at {precision} bits; the chunk is "
                              f"{tx}x{ty}x{tz} voxels of {c} uint8 channel(s)")
        target = out.reshape(height, width, c)  # out is C-contiguous: a view, decoded into directly
        if _simplejpeg is not None:
            try:
                _simplejpeg.decode_jpeg(bytes(data), "RGB" if c == 3 else "GRAY", buffer=target)
                return out
            except (ValueError, RuntimeError):
                pass  # strict TurboJPEG refuses some recoverable streams: imagecodecs decides
        decode = imagecodecs_function("jpeg", "jpeg8_decode")
        try:
            decode(data, outcolorspace="RGB" if c == 3 else None,
                   out=target if c == 3 else target.reshape(height, width))
        except Exception as exc:
            raise DecodeError(f"JPEG stream is damaged: {exc}") from exc
        return out


_CSEG_BITS = (0, 1, 2, 4, 8, 16, 32)


class CompressedSegmentationDecoder(Decoder):
    """``compressed_segmentation`` (uint32/uint64 labels): per channel, a grid of blocks, each a lookup table
    of labels and the voxels' indexes into it packed at 0-32 bits. Decoded with NumPy, every offset checked
    against the stream's length, so a damaged chunk raises DecodeError and reads nothing outside it."""

    strided_out = True

    def __init__(self, spec: CodecSpec, tile_shape: tuple[int, int, int, int], dtype: np.dtype) -> None:
        super().__init__(spec, tile_shape, dtype)
        if self.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            raise DecodeError(f"compressed_segmentation holds uint32 or uint64, not {self.dtype}")
        if spec.block_shape is None or min(spec.block_shape) <= 0:
            raise DecodeError("compressed_segmentation needs a positive block size")
        self.block = spec.block_shape  # (bx, by, bz)

    def decode(self, data: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        tz, ty, tx, c = out.shape
        if len(data) % 4 or len(data) < 4 * c:
            raise DecodeError(f"compressed_segmentation chunk of {len(data)} bytes is not whole 32-bit words "
                              f"or shorter than its {c} channel offsets")
        words = np.frombuffer(data, "<u4")
        for ch in range(c):
            base = int(words[ch])
            out[..., ch] = self._channel(words, base, (tz, ty, tx))
        return out

    def _channel(self, words: np.ndarray, base: int, shape: tuple[int, int, int]) -> np.ndarray:
        n = len(words)
        bx, by, bz = self.block
        tz, ty, tx = shape
        gx, gy, gz = -(-tx // bx), -(-ty // by), -(-tz // bz)
        nblocks = gx * gy * gz
        if base > n - 2 * nblocks:
            raise DecodeError(f"channel data at word {base} with {nblocks} block headers runs past the "
                              f"chunk's {n} words")
        headers = words[base : base + 2 * nblocks].reshape(gz, gy, gx, 2).astype(np.int64)
        table = base + (headers[..., 0] & 0xFFFFFF)
        bits = headers[..., 0] >> 24
        values_at = base + headers[..., 1]
        if not np.isin(bits, _CSEG_BITS).all():
            raise DecodeError(f"block bit widths {sorted(set(bits.ravel().tolist()) - set(_CSEG_BITS))} are not "
                              "0, 1, 2, 4, 8, 16 or 32")
        # every block's packed indexes must lie inside the stream
        block_voxels = bx * by * bz
        ends = values_at + (block_voxels * bits + 31) // 32
        if (ends[bits > 0] > n).any():
            raise DecodeError("a block's packed label indexes run past the end of the chunk")
        # voxel -> block and position inside the block (x fastest)
        z, y, x = np.arange(tz), np.arange(ty), np.arange(tx)
        bzi, byi, bxi = z // bz, y // by, x // bx
        inner = (((z % bz) * by)[:, None, None] + (y % by)[None, :, None]) * bx + (x % bx)[None, None, :]
        vox_bits = bits[bzi[:, None, None], byi[None, :, None], bxi[None, None, :]]
        vox_table = table[bzi[:, None, None], byi[None, :, None], bxi[None, None, :]]
        vox_values = values_at[bzi[:, None, None], byi[None, :, None], bxi[None, None, :]]
        bitpos = inner * vox_bits
        word_at = np.where(vox_bits > 0, vox_values + (bitpos >> 5), 0)
        packed = words[word_at].astype(np.int64)
        mask = (np.int64(1) << vox_bits) - 1
        index = (packed >> (bitpos & 31)) & mask
        wide = self.dtype.itemsize // 4
        entry = vox_table + index * wide
        if (entry > n - wide).any():
            raise DecodeError("a label index points past the end of the chunk")
        if wide == 1:
            return words[entry]
        return words[entry].astype(np.uint64) | (words[entry + 1].astype(np.uint64) << np.uint64(32))

