"""Output allocation. Large outputs come from a private anonymous mmap of normal pages: on first touch these
fault in faster than the transparent huge pages NumPy asks the kernel for, and than a shared mapping (Python's
``mmap`` default, which is shared memory). A whole-level read spends much of its time touching its output;
measured on the reference machine for the 1.5 GiB level 0 of the benchmark slide, first read in a process:
1.9-2.2 s private, 2.8-3.1 s shared, 3.1-3.6 s from NumPy (alternating processes)."""

from __future__ import annotations

import math
import mmap

import numpy as np

_MMAP_THRESHOLD = 32 << 20
# Batches are made on producer threads and freed by the consumer, several alive at once: from malloc they
# fragment the producers' arenas (peak RSS measured 2-11 MiB over the prefetch bound on 9 MiB batches; with
# their own maps, under it), so they get their own map from 1 MiB.
BATCH_MMAP_THRESHOLD = 1 << 20
_PRIVATE = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)  # 0 where mmap takes no flags


# libjpeg-turbo decodes measurably slower into an output that starts on a 32-byte boundary (likely 4K
# aliasing with its own 32-byte aligned row buffers; not traced further), per 256² RGB tile, output at
# 0 / 32 / other multiples of 4 mod 64: DICOM benchmark slide with simplejpeg 268-283 / 308-312 / 227-242 µs;
# benchmark SVS with simplejpeg 254 / 271 / 229-231 µs, with imagecodecs 354 / 377 / 234-240 µs. JPEG-LS
# (CharLS) does not care. Tile buffers and outputs therefore start 16 bytes past a 64-byte boundary.
_DECODE_ALIGN, _DECODE_OFFSET = 64, 16


def empty(shape: tuple[int, ...], dtype: np.dtype, mmap_from: int = _MMAP_THRESHOLD) -> np.ndarray:
    """An uninitialised C-contiguous array (CPU memory) starting 16 bytes past a 64-byte boundary; backed by
    its own mmap (unmapped when the array and its views are gone) when ``mmap_from`` bytes (32 MiB) or larger."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < mmap_from or nbytes == 0:
        return decode_buffer(shape, dtype)
    # private: copy-on-write after fork like any array; freed (munmap) when the array and its views are gone
    size = nbytes + _DECODE_OFFSET
    buf = mmap.mmap(-1, size, flags=_PRIVATE) if _PRIVATE else mmap.mmap(-1, size)
    return np.frombuffer(buf, dtype, offset=_DECODE_OFFSET, count=math.prod(shape)).reshape(shape)


def decode_buffer(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array (CPU memory) for a decoder to write a tile into, its data 16 bytes
    past a 64-byte boundary (see above)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + _DECODE_ALIGN, np.uint8)
    start = (_DECODE_OFFSET - raw.ctypes.data) % _DECODE_ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)
