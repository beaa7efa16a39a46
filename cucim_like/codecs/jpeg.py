"""JPEG tiles (baseline, extended, progressive, lossless; abbreviated streams with TIFF JPEGTables).

8-bit streams that libjpeg-turbo may colour-convert by itself are decoded with simplejpeg (libjpeg-turbo's
TurboJPEG API, identical pixels: 229-231 µs per 256² tile of the benchmark SVS against 234-240 µs for
imagecodecs' jpeg8_decode, both into buffers placed as memory.decode_buffer places them); streams
whose samples must stay unconverted (TIFF Photometric=RGB without a JFIF marker, as Aperio writes them),
12/16-bit streams, or any stream when simplejpeg is missing go through imagecodecs.

Where a TurboJPEG 3 library is installed (:mod:`.turbojpeg`), a tile that a read needs only part of is
decoded cropped (:meth:`JpegDecoder.decode_crop`), with pixels identical to a whole decode's. Whole tiles stay
with simplejpeg, which decodes them faster than that library (252 against 275 µs per benchmark tile) and
faster than TurboJPEG can write them straight into a whole-level output with a row pitch (326 µs, pages
already touched; decode and copy cost less).
"""

from __future__ import annotations

import numpy as np

from ..errors import CodecUnavailableError, DecodeError
from ..formats.base import CodecSpec
from . import Decoder, imagecodecs_function
from . import turbojpeg as _turbojpeg
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
        self._tj = None
        plain_8bit = self.dtype == np.uint8 and (spec.jpeg_tables is None or self._prefix is not None)
        if _simplejpeg is not None and plain_8bit:
            self._turbo = "RGB" if tile_shape[3] == 3 else "GRAY"
        if plain_8bit:
            self._tj = _turbojpeg.library()
        self.crops = self._tj is not None  # parts of tiles decode cropped (decode_crop)

    def _needs_rgb_input(self, data: bytes | memoryview) -> bool:
        # RGB samples without a JFIF marker (Aperio): libjpeg would otherwise assume YCbCr and convert
        return self.spec.colorspace == "RGB" and b"JFIF" not in bytes(data[:32])

    def _frame(self, data: bytes | memoryview) -> tuple[int, int]:
        """(precision, height) of a stream whose frame fits the tile; DecodeError otherwise."""
        precision, height, width, comps = jpeg_frame(data)
        _, ty, tx, cs = self.tile_shape
        if width != tx or not 0 < height <= ty or comps != cs:
            raise DecodeError(
                f"JPEG frame is {height}x{width}x{comps}, the tile is {ty}x{tx}x{cs}"
            )
        if (precision > 8) != (self.dtype.itemsize > 1):
            raise DecodeError(f"JPEG precision {precision} does not match {self.dtype}")
        return precision, height

    def _stream(self, data: bytes | memoryview) -> bytes | memoryview:
        """The complete stream: JPEGTables spliced in front of an abbreviated tile."""
        return self._prefix + bytes(data[2:]) if self._prefix is not None else data

    def decode_crop(self, data: bytes | memoryview, y0: int, y1: int, x0: int, x1: int,
                    scratch: np.ndarray) -> np.ndarray | None:
        """Decode rows [y0, y1) and columns [x0, x1) of the tile into ``scratch`` (a C-contiguous tile-shaped
        uint8 array); returns that part as (1, y1 - y0, x1 - x0, samples), a view into ``scratch``.

        None when this stream cannot be decoded cropped (no TurboJPEG, RGB samples, lossless, a stream
        TurboJPEG refuses) or when a crop would save little: the caller then decodes the whole tile, which
        raises for a damaged stream. Rows below the crop are never read, so damage there alone goes unseen,
        as it would by any decoder that stops at the rows it needs.
        """
        if self._tj is None:
            return None
        _, ty, width, samples = self.tile_shape
        if _crop_cost(y0, y1, (x1 - x0) / width, ty) >= _WHOLE_COST:  # not even at its narrowest
            return None
        if self._needs_rgb_input(data):
            return None
        stream = bytes(self._stream(data))  # ctypes passes bytes without a copy
        header = self._tj.header(stream)
        if isinstance(header, str):
            return None
        # the frame must be the tile's (a short last strip: fewer rows), 8-bit, DCT, with the tile's samples
        height, frame_width, precision, subsampling, colorspace, lossless = header
        if (frame_width != width or not y1 <= height <= ty or precision != 8 or lossless
                or colorspace not in _COLORSPACES[samples]):
            return None
        mcu = self._tj.mcu_width(subsampling)
        if not mcu:
            return None
        # The left edge must sit on an iMCU column. Columns at a cropped edge are upsampled without their
        # outer neighbour, so a margin (at least one column, within one iMCU) is decoded on each cut side.
        left = (x0 - 1) // mcu * mcu if x0 > 0 else 0
        right = min(width, x1 + mcu) if x1 < width else width
        if (right - left) * 4 > width * 3:
            left, right = 0, width  # cropping columns saves little and some widths decode slower than all
        if _crop_cost(y0, y1, (right - left) / width, ty) >= _WHOLE_COST:
            return None
        w, h = right - left, y1 - y0
        buf = scratch.reshape(-1)[: h * w * samples].reshape(h, w, samples)
        if self._tj.decode(stream, buf, (left, y0, w, h)) is not None:
            return None
        return buf[None, :, x0 - left : x1 - left]

    def native_stream(self, data: bytes | memoryview) -> bytes | memoryview | None:
        """The complete stream (JPEGTables spliced in) when TurboJPEG 3 may decode it: 8-bit tiles whose
        samples libjpeg may colour-convert; None for RGB-photometric streams without a JFIF marker."""
        if self._tj is None or self._needs_rgb_input(data):
            return None
        return self._stream(data)

    def decode(self, data: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        precision, height = self._frame(data)
        _, _, tx, cs = self.tile_shape
        target = out[0, :height]
        rgb_input = self._needs_rgb_input(data)
        if self._turbo is not None and precision == 8 and not rgb_input:
            try:
                _simplejpeg.decode_jpeg(self._stream(data), self._turbo, buffer=target)
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


# Cost of a cropped decode relative to TurboJPEG decoding the whole tile, fitted on 256² 4:2:0 tiles of the
# benchmark SVS (2026-11-22): rows above the crop are entropy-decoded and skipped (0.56 of a row's cost), rows
# in it are also transformed (0.94, less when columns are cropped), rows below are never read; plus a fixed
# 0.13. Full-width crops measured 155 µs for the top half, 227 µs for the bottom half, 275 µs for all rows;
# simplejpeg decodes the whole tile in about 0.92 of TurboJPEG's time, so a crop must cost less than that.
_WHOLE_COST = 0.92
# (fixed, per row above and in the crop, per cropped row times its width fraction, least width fraction); the
# native tile pool (executors/native.py) is given the same numbers
CROP_COST = (0.13, 0.52, 0.35, 0.25)
# TurboJPEG colour spaces (TJCS_RGB 0, TJCS_YCbCr 1, TJCS_GRAY 2) a tile of 3 or 1 samples may be stored in
_COLORSPACES = {3: (0, 1), 1: (2,)}


def _crop_cost(y0: int, y1: int, width_fraction: float, height: int) -> float:
    fixed, skipped, kept, least = CROP_COST
    return fixed + (skipped * y1 + kept * (y1 - y0) * max(width_fraction, least)) / height
