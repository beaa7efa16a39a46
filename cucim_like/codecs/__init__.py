"""Tile decoders, looked up by name in a registry that imports nothing until a codec is first used.

A missing codec (imagecodecs built without it, an optional package not installed) fails at read time with
:class:`~cucim_like.errors.CodecUnavailableError`, never at import or open.
"""

from __future__ import annotations

import importlib
import threading
from abc import ABC, abstractmethod

import numpy as np

from ..errors import CodecUnavailableError
from ..formats.base import CodecSpec, Level

__all__ = ["Decoder", "available_codecs", "get_decoder", "register_codec"]

# name -> "module:Class", resolved on first use
_REGISTRY: dict[str, str] = {
    "none": "cucim_like.codecs.raw:RawDecoder",
    "deflate": "cucim_like.codecs.raw:RawDecoder",
    "lzw": "cucim_like.codecs.raw:RawDecoder",
    "zstd": "cucim_like.codecs.raw:RawDecoder",
    "lzma": "cucim_like.codecs.raw:RawDecoder",
    "packbits": "cucim_like.codecs.raw:RawDecoder",
    "jpeg": "cucim_like.codecs.jpeg:JpegDecoder",
    "jpeg2000": "cucim_like.codecs.jpeg2000:Jpeg2000Decoder",
    "webp": "cucim_like.codecs.webp:WebpDecoder",
    "dicom-native": "cucim_like.codecs.dicom:NativeFrameDecoder",
    "dicom-bits": "cucim_like.codecs.dicom:BitFrameDecoder",
    "dicom-ybr422": "cucim_like.codecs.dicom:Ybr422FrameDecoder",
    "jpegls": "cucim_like.codecs.dicom:JpegLsDecoder",
    "ljpeg": "cucim_like.codecs.dicom:LosslessJpegDecoder",
    "dicomrle": "cucim_like.codecs.dicom:DicomRleDecoder",
    "precomputed-raw": "cucim_like.codecs.precomputed:PrecomputedRawDecoder",
    "precomputed-jpeg": "cucim_like.codecs.precomputed:PrecomputedJpegDecoder",
    "compressed_segmentation": "cucim_like.codecs.precomputed:CompressedSegmentationDecoder",
    "fpzip": "cucim_like.codecs.fpzip:FpzipDecoder",
    "kempressed": "cucim_like.codecs.fpzip:KempressedDecoder",
}
_lock = threading.Lock()


class Decoder(ABC):
    """Decodes one tile's compressed bytes into a caller's array.

    ``tile_shape`` is (tz, ty, tx, samples) and ``dtype`` the native dtype of decoded samples (CPU memory).
    ``strided_out``: ``decode`` also accepts a strided ``out`` (a box of the caller's output), so whole tiles
    are decoded straight into place. ``crops``: :meth:`decode_crop` can decode part of a tile.
    """

    strided_out = False
    crops = False

    def __init__(self, spec: CodecSpec, tile_shape: tuple[int, int, int, int], dtype: np.dtype) -> None:
        self.spec = spec
        self.tile_shape = tile_shape
        self.dtype = np.dtype(dtype)

    @abstractmethod
    def decode(self, data: bytes | memoryview, out: np.ndarray) -> np.ndarray:
        """Decode ``data`` into ``out`` (C-contiguous, ``tile_shape``, ``dtype``).

        Returns ``out`` or a leading part of it along y when the stream holds fewer rows (a short last strip).
        Raises :class:`~cucim_like.errors.DecodeError` on any damaged or mismatching stream; never allocates
        more than a bounded multiple of the tile's size.
        """

    def decode_crop(self, data: bytes | memoryview, y0: int, y1: int, x0: int, x1: int,
                    scratch: np.ndarray) -> np.ndarray | None:
        """Rows [y0, y1) and columns [x0, x1) of the tile, decoded into ``scratch`` (C-contiguous,
        ``tile_shape``, ``dtype``), as a (1, y1 - y0, x1 - x0, samples) view of it; or None when this decoder or
        this stream cannot crop, or a crop would not pay (the caller then decodes the whole tile)."""
        return None

    def native_stream(self, data: bytes | memoryview) -> bytes | memoryview | None:
        """The complete 8-bit JPEG stream of this tile for the native tile pool (executors.native), or None
        when this decoder or this stream is not for it (the tile then goes through :meth:`decode`)."""
        return None


def register_codec(name: str, target: str) -> None:
    """Register (or replace) the decoder class for ``name`` as "module:Class"; imported on first use."""
    with _lock:
        _REGISTRY[name] = target


def available_codecs() -> list[str]:
    """Names of the registered codecs (whether their libraries are installed is checked on use)."""
    return sorted(_REGISTRY)


def _load(name: str) -> type[Decoder]:
    target = _REGISTRY.get(name)
    if target is None:
        raise CodecUnavailableError(f"no decoder is registered for codec {name!r}")
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise CodecUnavailableError(f"codec {name!r} needs a package that is not installed: {exc}") from exc


def get_decoder(level: Level) -> Decoder:
    """The decoder for a level's tiles, built once per level and kept on it."""
    if level._decoder:
        return level._decoder[0]
    with _lock:
        if not level._decoder:
            cls = _load(level.codec.name)
            decoder = cls(level.codec, level.decoded_tile_shape, level.dtype)
            if level.codec.framing == "dicom-items":
                from .dicom import ItemFramedDecoder

                decoder = ItemFramedDecoder(decoder)
            level._decoder.append(decoder)
    return level._decoder[0]


def imagecodecs_function(codec: str, name: str):
    """``imagecodecs.<name>``, or CodecUnavailableError naming the codec when this build lacks it."""
    try:
        import imagecodecs
    except ImportError as exc:  # pragma: no cover - core dependency
        raise CodecUnavailableError(f"codec {codec!r} needs imagecodecs, which is not installed") from exc
    fn = getattr(imagecodecs, name, None)
    if fn is None:
        raise CodecUnavailableError(f"codec {codec!r}: this imagecodecs build has no {name}")
    # imagecodecs exposes unavailable codecs as stubs that raise on call; check the codec's flag
    flag = getattr(imagecodecs, name.split("_")[0].upper(), None)
    if flag is not None and getattr(flag, "available", True) is False:
        raise CodecUnavailableError(f"codec {codec!r}: imagecodecs was built without {name.split('_')[0]}")
    return fn
