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


def empty(shape: tuple[int, ...], dtype: np.dtype, mmap_from: int = _MMAP_THRESHOLD) -> np.ndarray:
    """An uninitialised C-contiguous array (CPU memory); backed by its own mmap (unmapped when the array and
    its views are gone) when ``mmap_from`` bytes (32 MiB) or larger."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < mmap_from or nbytes == 0:
        return np.empty(shape, dtype)
    # private: copy-on-write after fork like any array; freed (munmap) when the array and its views are gone
    buf = mmap.mmap(-1, nbytes, flags=_PRIVATE) if _PRIVATE else mmap.mmap(-1, nbytes)
    return np.frombuffer(buf, dtype).reshape(shape)
