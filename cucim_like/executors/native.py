"""The native tile pool (``_tilepool.c``): one call decodes a read's 8-bit JPEG tiles, whole or cropped, and
copies each one's needed part into the output, on the calling thread and up to ``workers - 1`` native helper
threads, with the GIL released once for the whole call.

Optional: built with the package where a C compiler is found (``setup.py``), and used only together with the
TurboJPEG 3 library of :mod:`cucim_like.codecs.turbojpeg` (whose function addresses it is given). Without
either, :func:`tile_pool` returns None and tiles go through the Python path as before. ``CUCIM_LIKE_NATIVE=0``
turns it off. A job the pool declines or fails (status not 0) is decoded again on the Python path, which
raises the typed error for a damaged stream.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import threading
from pathlib import Path

import numpy as np

from ..codecs import turbojpeg

__all__ = ["JOB", "PLACE", "TilePool", "tile_pool"]

# A helper thread stays awake (spinning) this long after its last job, so the next read of a loop of small
# reads finds it running instead of waking it (a wake-up took 51-85 µs on the reference VM)
_SPIN_US = 200


# _tilepool.c's place_t and job_t (C layout: align=True)
PLACE = np.dtype([("dst", np.uint64), ("pitch", np.int64), ("y0", np.int32), ("y1", np.int32),
                  ("x0", np.int32), ("x1", np.int32)], align=True)
"""One part of a tile to place: rows y0:y1 and columns x0:x1 of the tile, to ``dst`` (rows ``pitch`` apart)."""
JOB = np.dtype([("src", np.uint64), ("src_len", np.int64), ("places", np.uint64), ("nplaces", np.int64),
                ("tile_out", np.uint64), ("tile_w", np.int32), ("tile_h", np.int32), ("samples", np.int32),
                ("status", np.int32), ("cropped", np.int32), ("reserved", np.int32)], align=True)
"""One tile: its complete stream, its places, where to decode it whole (0: decode what the places need).
Out: ``status`` (0 done, else left for the Python path) and ``cropped``."""


class TilePool:
    """ctypes binding of ``_tilepool``: :meth:`run` an array of :data:`JOB`."""

    def __init__(self, lib: ctypes.CDLL, tj: turbojpeg.TurboJpeg) -> None:
        lib.tilepool_job_size.restype = ctypes.c_size_t
        if lib.tilepool_job_size() != JOB.itemsize:
            raise OSError("native tile pool built with another job layout")
        tjlib = tj._lib
        names = ("tj3Init", "tj3Destroy", "tj3Set", "tj3Get", "tj3DecompressHeader", "tj3SetCroppingRegion",
                 "tj3Decompress8")
        fns = (ctypes.c_void_p * len(names))(*(ctypes.cast(getattr(tjlib, n), ctypes.c_void_p).value
                                               for n in names))
        from ..codecs import jpeg

        if len(turbojpeg._MCU_WIDTH) != 7:
            raise OSError("the native tile pool knows 7 TurboJPEG subsamplings")
        mcu = (ctypes.c_int * 7)(*turbojpeg._MCU_WIDTH)
        costs = (ctypes.c_double * 5)(*jpeg.CROP_COST, jpeg._WHOLE_COST)
        lib.tilepool_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long]
        lib.tilepool_init(fns, mcu, costs, _SPIN_US)
        lib.tilepool_run.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.tilepool_run.restype = ctypes.c_int
        self._run = lib.tilepool_run
        self._lib = lib

    def run(self, jobs: np.ndarray, workers: int) -> int:
        """Run ``jobs`` (a C-contiguous array of :data:`JOB`, whose places and buffers the caller keeps alive)
        with up to ``workers`` threads; returns how many were not done (``status`` not 0). The GIL is released
        for the whole call."""
        if jobs.dtype != JOB or not jobs.flags.c_contiguous:
            raise ValueError("jobs must be a C-contiguous array of native.JOB")
        return self._run(jobs.ctypes.data, len(jobs), workers)


LIBRARY_NAME = "_tilepool"  # setup.py builds it as the extension module cucim_like.executors._tilepool


def _library_path() -> Path | None:
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"{LIBRARY_NAME}{suffix}"
        if path.is_file():
            return path
    return None


_state: list = []
_lock = threading.Lock()


def tile_pool() -> TilePool | None:
    """The process's native tile pool, loaded on first call; None when it was not built, TurboJPEG 3 is
    missing, or ``CUCIM_LIKE_NATIVE=0``."""
    if not _state:
        with _lock:
            if not _state:
                _state.append(_load())
    return _state[0]


def _load() -> TilePool | None:
    if os.environ.get("CUCIM_LIKE_NATIVE", "1") == "0":
        return None
    tj = turbojpeg.library()
    path = _library_path()
    if tj is None or path is None:
        return None
    try:
        return TilePool(ctypes.CDLL(str(path)), tj)
    except (OSError, AttributeError):
        return None


def address(buf: bytes | memoryview) -> int:
    """Address of the first byte of a contiguous buffer (bytes, or a memoryview of one)."""
    return np.frombuffer(buf, np.uint8).ctypes.data
