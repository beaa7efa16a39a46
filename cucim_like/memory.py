"""Output allocation. Large outputs come from an anonymous mmap of normal pages: on first touch these fault
in far faster than the transparent huge pages NumPy asks the kernel for (measured 1.0 s vs 2.2-4.1 s for
1.5 GiB on the reference machine), and a whole-level read spends much of its time touching its output."""

from __future__ import annotations

import math
import mmap

import numpy as np

_MMAP_THRESHOLD = 32 << 20
# Batches are made on producer threads and freed by the consumer, several alive at once: from malloc they
# fragment the producers' arenas (peak RSS measured 2-11 MiB over the prefetch bound on 9 MiB batches; with
# their own maps, under it), so they get their own map from 1 MiB.
BATCH_MMAP_THRESHOLD = 1 << 20


def empty(shape: tuple[int, ...], dtype: np.dtype, mmap_from: int = _MMAP_THRESHOLD) -> np.ndarray:
    """An uninitialised C-contiguous array (CPU memory); backed by its own mmap (unmapped when the array and
    its views are gone) when ``mmap_from`` bytes (32 MiB) or larger."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < mmap_from or nbytes == 0:
        return np.empty(shape, dtype)
    buf = mmap.mmap(-1, nbytes)  # freed (munmap) when the array and its views are gone
    return np.frombuffer(buf, dtype).reshape(shape)
