"""Tile bytes for the GPU path: coalesced ranges read with kvikio (GPUDirect Storage where the system has
it, its POSIX compat mode otherwise) into one pinned host buffer per wave, since nvImageCodec takes code
streams from host memory. kvikio's thread pool splits large reads; small ones run synchronously, which is
why the planner coalesces first."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np

from ..errors import DeviceUnavailableError, FileAccessError
from ..plan import ByteRange

_configured: list[int] = []
_lock = threading.Lock()
_files: dict[str, object] = {}


def _kvikio():
    try:
        import kvikio
        import kvikio.defaults
    except ImportError as exc:
        raise DeviceUnavailableError("the CUDA path reads with kvikio: pip install kvikio-cu13 (or -cu12)") from exc
    return kvikio


def configure_threads(threads: int | None) -> None:
    """Set kvikio's I/O thread count once per process (default: one per CPU, at most 16)."""
    kvikio = _kvikio()
    want = int(threads) if threads else min(16, os.cpu_count() or 1)
    with _lock:
        if _configured and _configured[0] == want:
            return
        kvikio.defaults.set({"num_threads": want})
        _configured[:] = [want]


def _handle(path: str):
    with _lock:
        f = _files.get(path)
        if f is None:
            f = _files[path] = _kvikio().CuFile(path, "r")
        return f


def pinned_buffer(nbytes: int) -> np.ndarray:
    """``nbytes`` of page-locked host memory as a uint8 array (keeps the allocation alive)."""
    import cupy

    return np.frombuffer(cupy.cuda.alloc_pinned_memory(max(nbytes, 1)), np.uint8, nbytes)


def read_ranges_kvikio(paths: Sequence[str], ranges: Sequence[ByteRange], threads: int | None = None) -> list:
    """Bytes of each range, as memoryviews into one pinned host buffer; reads run in parallel on kvikio's
    pool. Raises FileAccessError on a short or failed read."""
    configure_threads(threads)
    total = sum(r.stop - r.start for r in ranges)
    host = pinned_buffer(total)
    views, futures, pos = [], [], 0
    for r in ranges:
        n = r.stop - r.start
        part = host[pos : pos + n]
        futures.append((r, n, _handle(paths[r.file_id]).pread(part, n, r.start)))
        views.append(memoryview(part))
        pos += n
    for r, n, fut in futures:
        try:
            got = fut.get()
        except Exception as exc:
            raise FileAccessError(f"kvikio read of bytes {r.start}-{r.stop} failed: {exc}",
                                  path=paths[r.file_id]) from exc
        if got != n:
            raise FileAccessError(f"short read: {got} of {n} bytes at {r.start}", path=paths[r.file_id])
    return views


def close_all() -> None:
    """Close every kvikio file handle this process opened."""
    with _lock:
        for f in _files.values():
            f.close()
        _files.clear()
