"""Cropped 8-bit JPEG decoding through libjpeg-turbo's TurboJPEG 3 API, called with ctypes.

A read that needs only part of a tile decodes only that part (TurboJPEG's cropping region: rows below it are
never decoded, rows above it are entropy-decoded and skipped, columns outside it are not transformed).
Neither simplejpeg nor imagecodecs offers this.

The library is found, on first use, at ``$CUCIM_LIKE_TURBOJPEG`` (a path), else in the ``turbojpeg`` wheel's
bundled copy (installed with cucim_like where that wheel exists; it is never imported), else as the system's
``libturbojpeg`` when that has the version 3 API. Without one, :func:`library` returns None and JPEG tiles are
decoded whole by simplejpeg/imagecodecs as before. TurboJPEG reports every error through return codes (its
own ``setjmp``), so a damaged stream gives an error code here, never a jump through Python frames. ctypes
releases the GIL for each call.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["TurboJpeg", "library"]

# TurboJPEG 3 constants (turbojpeg.h)
_INIT_DECOMPRESS = 1
_PARAM_SUBSAMP, _PARAM_WIDTH, _PARAM_HEIGHT, _PARAM_PRECISION, _PARAM_COLORSPACE = 4, 5, 6, 7, 8
_PARAM_SCANLIMIT, _PARAM_LOSSLESS = 13, 15
_PIXEL_FORMAT = {3: 0, 1: 6}  # samples -> TJPF_RGB, TJPF_GRAY
# iMCU width in pixels per TJSAMP (444, 422, 420, GRAY, 440, 411, 441): a crop's left edge must be a multiple
_MCU_WIDTH = (8, 16, 16, 8, 8, 32, 8)
# Progressive streams may hold any number of scans; a tile needs few (libjpeg-turbo's own tools allow 500)
_SCAN_LIMIT = 500


class _Region(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int), ("h", ctypes.c_int)]



def _candidates() -> Iterator[str]:
    """Library paths to try, in order; the system search (which runs ``ldconfig``) only when needed."""
    env = os.environ.get("CUCIM_LIKE_TURBOJPEG")
    if env:
        yield env
    # the wheel's bundled copy (Linux: auditwheel puts it in ``turbojpeg.libs`` beside the module); found
    # without importing the module, nor importlib.metadata (12 ms) unless that layout is not there
    spec = importlib.util.find_spec("turbojpeg")
    if spec is not None and spec.origin:
        found = sorted(Path(spec.origin).parent.glob("turbojpeg.libs/libturbojpeg*.so*"))
        yield from (str(p) for p in found)
        if not found:
            from importlib import metadata

            for f in metadata.files("turbojpeg") or []:
                name = Path(str(f)).name
                if name.startswith("libturbojpeg") and ".so" in name:
                    yield str(f.locate())
    import ctypes.util  # runs ldconfig: only when no bundled copy loaded

    system = ctypes.util.find_library("turbojpeg")
    if system:
        yield system


def _load() -> TurboJpeg | None:
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if all(hasattr(lib, n) for n in ("tj3Init", "tj3SetCroppingRegion", "tj3Decompress8")):
            return TurboJpeg(lib, path)
    return None


_state: list = []
_state_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _state_lock
    _state_lock = threading.Lock()  # a thread of the parent may have held it while loading


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def library() -> TurboJpeg | None:
    """The process's TurboJPEG 3 binding, loaded on first call; None when no such library is installed."""
    if not _state:
        with _state_lock:
            if not _state:
                _state.append(_load())
    return _state[0]


class _Handle:
    """One decompressor, for one stream on one thread (TurboJPEG handles are not thread-safe)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self.ptr = lib.tj3Init(_INIT_DECOMPRESS)
        if not self.ptr:
            raise MemoryError("tj3Init failed")
        lib.tj3Set(self.ptr, _PARAM_SCANLIMIT, _SCAN_LIMIT)

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self._lib.tj3Destroy(self.ptr)
            self.ptr = None


class TurboJpeg:
    """ctypes binding of the TurboJPEG 3 calls a tile decode needs: :meth:`header`, then :meth:`decode` of
    the same stream on the same thread."""

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        self.path = path
        c_void_p, c_int, c_size_t = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        lib.tj3Init.restype = c_void_p
        lib.tj3Init.argtypes = [c_int]
        lib.tj3Destroy.argtypes = [c_void_p]
        lib.tj3Destroy.restype = None
        lib.tj3Set.argtypes = [c_void_p, c_int, c_int]
        lib.tj3Get.argtypes = [c_void_p, c_int]
        lib.tj3DecompressHeader.argtypes = [c_void_p, ctypes.c_char_p, c_size_t]
        lib.tj3SetCroppingRegion.argtypes = [c_void_p, _Region]
        lib.tj3Decompress8.argtypes = [c_void_p, ctypes.c_char_p, c_size_t, c_void_p, c_int, c_int]
        lib.tj3GetErrorStr.restype = ctypes.c_char_p
        lib.tj3GetErrorStr.argtypes = [c_void_p]
        self._lib = lib
        self._local = threading.local()

    def _handle(self) -> int:
        h = getattr(self._local, "handle", None)
        if h is None:
            raise RuntimeError("TurboJpeg.decode before header() on this thread")
        return h.ptr

    def _error(self, handle: int) -> str:
        msg = self._lib.tj3GetErrorStr(handle)
        return msg.decode("utf-8", "replace") if msg else "unknown TurboJPEG error"

    def header(self, stream: bytes) -> tuple[int, int, int, int, int, int] | str:
        """(height, width, precision, subsampling, colorspace, lossless) of a complete stream, or the error.

        Each stream gets a fresh decompressor (about 1 µs): libjpeg keeps the tables of the last stream it read
        (abbreviated streams rely on that), so a reused one would decode a stream that lacks tables with those
        of another tile, maybe of another file, where a fresh one refuses it.
        """
        self._local.handle = None  # the previous stream's decompressor goes first
        self._local.handle = _Handle(self._lib)
        h = self._local.handle.ptr
        lib = self._lib
        if lib.tj3DecompressHeader(h, stream, len(stream)) != 0:
            return self._error(h)
        return (lib.tj3Get(h, _PARAM_HEIGHT), lib.tj3Get(h, _PARAM_WIDTH), lib.tj3Get(h, _PARAM_PRECISION),
                lib.tj3Get(h, _PARAM_SUBSAMP), lib.tj3Get(h, _PARAM_COLORSPACE), lib.tj3Get(h, _PARAM_LOSSLESS))

    @staticmethod
    def mcu_width(subsampling: int) -> int:
        """Crop alignment of a stream's subsampling (0 when it cannot be cropped)."""
        return _MCU_WIDTH[subsampling] if 0 <= subsampling < len(_MCU_WIDTH) else 0

    def decode(self, stream: bytes, out: np.ndarray, crop: tuple[int, int, int, int]) -> str | None:
        """Decode region ``crop`` = (x, y, w, h) of ``stream`` (after :meth:`header` on this thread), its x a
        multiple of :meth:`mcu_width`, into ``out``: (h, w, samples) uint8 with packed pixels (rows may be
        strided). Returns None, or the library's error message.
        """
        h = self._handle()
        lib = self._lib
        rows, cols, samples = out.shape
        if out.strides[1:] != (samples, 1) or samples not in _PIXEL_FORMAT or not out.flags.writeable:
            raise ValueError("TurboJPEG output must be writable (h, w, samples) uint8 with packed pixels")
        # the library writes the region's size: it must be exactly ``out``'s, inside the image
        height, width = lib.tj3Get(h, _PARAM_HEIGHT), lib.tj3Get(h, _PARAM_WIDTH)
        x, y, w, hh = crop
        if (hh, w) != (rows, cols) or x < 0 or y < 0 or x + w > width or y + hh > height:
            raise ValueError(f"TurboJPEG output {rows}x{cols} does not match the region {crop} of {height}x{width}")
        if lib.tj3SetCroppingRegion(h, _Region(*crop)) != 0:
            return self._error(h)
        if lib.tj3Decompress8(h, stream, len(stream), out.ctypes.data, out.strides[0], _PIXEL_FORMAT[samples]):
            return self._error(h)
        return None
