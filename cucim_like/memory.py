"""Output allocation. Large outputs come from their own private anonymous mmap, asking the kernel for
transparent huge pages (``MADV_HUGEPAGE``; the kernel may decline). A whole-level read places each decoded tile
row by row into an output whose rows are far apart (60 KB for the benchmark slide's level 0): with 4 KiB pages
every row of every tile lands on another page, and the TLB misses (costly in a VM) add about 30 µs to each 256²
tile. Measured on the reference VM, the 1.5 GiB level 0 of the benchmark slide, fresh processes alternating,
reads 2-4 of each: 1.30-1.43 s with huge pages, 1.41-1.52 s without; the first read 3.30-3.49 s against
3.51-4.05 s.

The map of a large output (not a batch) whose array and every view of it are gone goes to a small pool, so that
the next output of about its size (the next whole level, the next slide's) reuses pages that are already in
place instead of faulting fresh ones in: touching 1.5 GiB of fresh memory took 4.0-4.5 s on the reference VM,
of pooled memory 0.17 s. Pooled maps are ``MADV_FREE``: the kernel takes their pages back whenever it needs
memory (they then fault in afresh). The pool holds at most ``CUCIM_LIKE_OUTPUT_POOL_MB`` (default: an eighth of
the machine's memory, at most 4 GiB; 0 turns it off) in at most 4 maps, and unmaps a map 30 s after it came
back unless an output took it; :func:`release_pool` empties it now. The array's ``.base`` chain is not a
reference that keeps a map out of the pool: hold the array or a view of it. (Batches stay out: pooled ones
would add to the live ones' peak memory, which their prefetch bound promises. They keep 4 KiB pages: each
patch is contiguous, and 2000 224² patches took as long with huge pages.)
"""

from __future__ import annotations

import ctypes
import functools
import math
import mmap
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

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


def empty(shape: tuple[int, ...], dtype: np.dtype, mmap_from: int | None = None) -> np.ndarray:
    """An uninitialised C-contiguous array (CPU memory) starting 16 bytes past a 64-byte boundary; backed by
    its own mmap when ``mmap_from`` bytes (default 32 MiB) or larger: unmapped when the array and its views are
    gone, or, for outputs (``mmap_from`` not given), kept in the output pool for the next output of about its
    size (see above)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < (_MMAP_THRESHOLD if mmap_from is None else mmap_from) or nbytes == 0:
        return decode_buffer(shape, dtype)
    size = nbytes + _DECODE_OFFSET
    if mmap_from is None and _pool.capacity:
        raw = _pool.take(size)
    else:
        raw = np.frombuffer(_new_map(size, huge=mmap_from is None), np.uint8)  # unmapped with its last view
    return raw[_DECODE_OFFSET:size].view(dtype).reshape(shape)


def _new_map(size: int, huge: bool) -> mmap.mmap:
    """A fresh anonymous map of ``size`` bytes, private: copy-on-write after fork like any array; with
    ``huge``, transparent huge pages asked for (see above)."""
    mm = mmap.mmap(-1, size, flags=_PRIVATE) if _PRIVATE else mmap.mmap(-1, size)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if huge and advice is not None:
        try:
            mm.madvise(advice)
        except OSError:  # pragma: no cover - a kernel without transparent huge pages
            pass
    return mm


def decode_skip(address: int) -> int:
    """Bytes to skip from ``address`` (at most 63) for a decoder's output to start 16 bytes past a 64-byte
    boundary (see above)."""
    return (_DECODE_OFFSET - address) % _DECODE_ALIGN


def decode_buffer(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array (CPU memory) for a decoder to write a tile into, its data 16 bytes
    past a 64-byte boundary (see above)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + _DECODE_ALIGN, np.uint8)
    start = (_DECODE_OFFSET - raw.ctypes.data) % _DECODE_ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


_POOL_MAX_AGE_S = 30.0
_POOL_MAX_MAPS = 4
_POOL_SLACK = 1.25  # a pooled map serves an output of up to 25 % fewer bytes


def _default_pool_bytes() -> int:
    env = os.environ.get("CUCIM_LIKE_OUTPUT_POOL_MB")
    if env is not None:
        try:
            return max(0, int(env)) << 20
        except ValueError:
            return 0
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not POSIX
        return 0
    return min(ram // 8, 4 << 30)


class _OutputPool:
    """Maps of large outputs that no array uses any more, kept for the next output of about their size.

    An output is a view of a uint8 array over its map, and so are all views of that output (NumPy points every
    view at the first array of the chain that has a non-array base); when that array is gone, so are they, and
    its finalizer gives the map back. The finalizer may run in any thread, inside a garbage collection, even
    while this thread holds the pool's lock (inside :meth:`take`): it then only queues the map, and the next
    call under the lock admits it. A timer thread unmaps maps that stay unused for ``_POOL_MAX_AGE_S``.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._maps: list[tuple[float, mmap.mmap]] = []  # (time given back, map), oldest first
        self._returned: deque[tuple[float, mmap.mmap]] = deque(maxlen=_POOL_MAX_MAPS)
        self._timer: threading.Timer | None = None

    def take(self, size: int) -> np.ndarray:
        """A writable uint8 array of ``size`` bytes or a little more over a pooled map, else a new private one."""
        found = None
        with self._lock:
            dropped = self._admit_returned()
            fits = [(len(m), i) for i, (_, m) in enumerate(self._maps) if size <= len(m) <= size * _POOL_SLACK]
            if fits:
                found = self._maps.pop(min(fits)[1])[1]
        del dropped  # unmapped outside the lock
        mm = found if found is not None else _new_map(size, huge=True)
        raw = np.frombuffer(mm, np.uint8)
        fin = weakref.finalize(raw, self._give_back, mm, os.getpid())
        fin.atexit = False
        return raw

    def _give_back(self, mm: mmap.mmap, pid: int) -> None:
        """Finalizer of an output's base array: its pages become free for the kernel to take (they stay in
        place, and fault in afresh only if it did), and the map joins the pool. A forked child drops its
        parent's maps (their pages are copy-on-write: cheaper to fault fresh ones in than to copy these)."""
        if pid != os.getpid() or len(mm) > self.capacity:
            return
        advice = getattr(mmap, "MADV_FREE", None)
        if advice is not None:
            try:
                mm.madvise(advice)
            except OSError:  # pragma: no cover - kernels before 4.5
                pass
        self._returned.append((time.monotonic(), mm))
        del mm
        if self._lock.acquire(blocking=False):  # not while this thread is inside take()
            try:
                dropped = self._admit_returned()
            finally:
                self._lock.release()
            del dropped

    def _admit_returned(self) -> list[tuple[float, mmap.mmap]]:
        """Under the lock: pool the returned maps, keep the newest within the bounds, and arm the timer that
        unmaps stale ones. Returns the maps dropped, for the caller to release outside the lock."""
        now = time.monotonic()
        while self._returned:
            self._maps.append(self._returned.popleft())
        self._maps.sort(key=lambda e: e[0])
        kept: list[tuple[float, mmap.mmap]] = []
        dropped: list[tuple[float, mmap.mmap]] = []
        total = 0
        for entry in reversed(self._maps):  # newest first
            fresh = now - entry[0] < _POOL_MAX_AGE_S
            if fresh and len(kept) < _POOL_MAX_MAPS and total + len(entry[1]) <= self.capacity:
                kept.append(entry)
                total += len(entry[1])
            else:
                dropped.append(entry)
        self._maps = kept[::-1]
        if self._maps and self._timer is None:
            timer = threading.Timer(max(0.01, self._maps[0][0] + _POOL_MAX_AGE_S - now), self._expire)
            timer.daemon = True
            self._timer = timer
            timer.start()
        return dropped

    def _expire(self) -> None:
        with self._lock:
            self._timer = None
            dropped = self._admit_returned()
        del dropped

    def release(self) -> None:
        with self._lock:
            self._returned.clear()
            dropped, self._maps = self._maps, []
        del dropped

    def pooled_bytes(self) -> int:
        with self._lock:
            dropped = self._admit_returned()
            total = sum(len(m) for _, m in self._maps)
        del dropped
        return total

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._returned = deque(maxlen=_POOL_MAX_MAPS)
        self._maps = []  # the parent's: copy-on-write pages here
        self._timer = None  # the parent's timer thread is not in this process


_pool = _OutputPool(_default_pool_bytes())


def release_pool() -> None:
    """Unmap the pooled maps of freed large outputs now (they are otherwise kept up to 30 s for reuse)."""
    _pool.release()


def _pool_after_fork_in_child() -> None:
    _pool.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool_after_fork_in_child)


@functools.cache
def libc_function(name: str, argtypes: tuple, restype: object) -> Callable | None:
    """The C library's function ``name`` with its ctypes signature set, resolved once; None off Linux or where
    the library has no such function."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = list(argtypes), restype
    return fn


def return_freed_memory() -> None:
    """Hand freed heap memory back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    Tiles of a dropped cache are freed into the C heap, which keeps what other allocations pin in place: a
    process that had a 1 GiB cache kept about 850 MiB resident after replacing it, and each DataLoader worker it
    forked then copied those page tables (measured: 0.8-1.1 s per 2000-patch run against 0.77-0.93 s after a
    trim)."""
    trim = libc_function("malloc_trim", (ctypes.c_size_t,), ctypes.c_int)
    if trim is not None:
        trim(0)
