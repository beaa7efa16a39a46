"""A decoded-tile cache in POSIX shared memory, shared by the processes of a DataLoader (fork or spawn).

Layout of the segment: a header (counters, the write position), an index of fixed-size entries (a hash table
with linear probing), and a ring of tile bytes. New tiles are appended to the ring; the oldest are overwritten
first (FIFO eviction, bounded by bytes). An entry is valid while the ring has not wrapped over its bytes.
Every access holds a ``flock`` on the segment's file (one descriptor per process) plus a thread lock.

Worker processes find the segment through the ``CUCIM_LIKE_SHM_CACHE`` environment variable that the
configuring process sets, so spawned workers attach on their first read. Keys name a file by
(device, inode, size, mtime), so a tile of another file, or of a rewritten file, is never served.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from multiprocessing import shared_memory

import numpy as np

from .cache import CacheType, MiB, TileCache
from .errors import InvalidArgumentError

ENV = "CUCIM_LIKE_SHM_CACHE"
_MAGIC = 0x4C4D484D4943_5543  # arbitrary tag
_HEADER = 4096
_ENTRY = np.dtype([("digest", "V16"), ("pos", "<i8"), ("nbytes", "<i8"), ("shape", "<i4", (4,)),
                   ("dtype", "S8"), ("used", "<i8")])  # 64 bytes
_PROBES = 16
_MIN_TILE = 16 * 1024
# header fields (int64 each): magic, ring capacity, buckets, head, hits, misses, record
_H_MAGIC, _H_CAP, _H_BUCKETS, _H_HEAD, _H_HITS, _H_MISSES, _H_RECORD = range(7)


def _digest(key: Hashable) -> bytes:
    return hashlib.blake2b(repr(key).encode(), digest_size=16).digest()


class SharedMemoryCache(TileCache):
    """``CuImage.cache("shared_memory", memory_capacity=MiB)``: one cache for all processes of a job."""

    type = CacheType.SharedMemory

    def __init__(self, memory_capacity: float = 64, capacity: int | None = None, record_stat: bool = True,
                 *, name: str | None = None) -> None:
        if name is None:
            if memory_capacity <= 0:
                raise InvalidArgumentError("a shared-memory cache needs a positive memory_capacity")
            ring = int(memory_capacity * MiB)
            buckets = max(64, int(capacity) * 2 if capacity else ring // _MIN_TILE)
            size = _HEADER + buckets * _ENTRY.itemsize + ring
            self._shm = shared_memory.SharedMemory(create=True, size=size)
            self._owner = os.getpid()
            atexit.register(self._remove_at_exit)
            header = np.ndarray((8,), np.int64, self._shm.buf)
            header[:] = 0
            header[_H_CAP], header[_H_BUCKETS], header[_H_RECORD] = ring, buckets, int(record_stat)
            header[_H_MAGIC] = _MAGIC
        else:
            self._shm = shared_memory.SharedMemory(name=name)
            self._owner = -1
            _untrack(self._shm)
            header = np.ndarray((8,), np.int64, self._shm.buf)
            if header[_H_MAGIC] != _MAGIC:
                raise InvalidArgumentError(f"shared memory {name!r} is not a cucim_like cache")
        self._header = header
        self.memory_capacity = int(header[_H_CAP])
        self._buckets = int(header[_H_BUCKETS])
        self._item_limit = None
        self._index = np.ndarray((self._buckets,), _ENTRY, self._shm.buf, offset=_HEADER)
        self._ring = np.ndarray((self.memory_capacity,), np.uint8, self._shm.buf,
                                offset=_HEADER + self._buckets * _ENTRY.itemsize)
        if name is None:
            self._index[:] = np.zeros(1, _ENTRY)
        self._fd = -1
        self._tlock = threading.Lock()
        # keys of partial tiles this process decoded cropped (TileCache.admit_part): a second request keeps one
        self._lock = threading.Lock()
        self._seen_whole: OrderedDict[Hashable, None] = OrderedDict()
        _LIVE.add(self)

    # -- process-wide attachment ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._shm.name

    def _after_fork_in_child(self) -> None:
        # The child starts with one thread: give it its own lock descriptor (flock would not exclude parent
        # and child through a shared one) and a fresh thread lock, before any thread can race for them.
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = -1
        self._tlock = threading.Lock()
        self._lock = threading.Lock()

    class _Locked:
        """Holds the thread lock, then an exclusive flock on this process's descriptor of the segment."""

        def __init__(self, cache: SharedMemoryCache) -> None:
            self.cache = cache
            self.fd = -1

        def __enter__(self):
            cache = self.cache
            cache._tlock.acquire()
            try:
                if cache._fd < 0:
                    cache._fd = os.open(f"/dev/shm/{cache._shm.name.lstrip('/')}", os.O_RDONLY)
                self.fd = cache._fd
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except BaseException:
                cache._tlock.release()
                raise

        def __exit__(self, *exc):
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                self.cache._tlock.release()

    def _locked(self) -> SharedMemoryCache._Locked:
        return SharedMemoryCache._Locked(self)

    # -- statistics ------------------------------------------------------------------------------------------
    @property
    def hit_count(self) -> int:  # type: ignore[override]
        return int(self._header[_H_HITS])

    @hit_count.setter
    def hit_count(self, value: int) -> None:
        self._header[_H_HITS] = value

    @property
    def miss_count(self) -> int:  # type: ignore[override]
        return int(self._header[_H_MISSES])

    @miss_count.setter
    def miss_count(self, value: int) -> None:
        self._header[_H_MISSES] = value

    def record(self, value: bool | None = None) -> bool:
        if value is not None:
            self._header[_H_RECORD] = int(bool(value))
        return bool(self._header[_H_RECORD])

    def _valid(self) -> np.ndarray:
        head = int(self._header[_H_HEAD])
        idx = self._index
        return (idx["used"] != 0) & (idx["pos"] + self.memory_capacity >= head)

    @property
    def size(self) -> int:
        return int(self._valid().sum())

    @property
    def memory_size(self) -> int:
        return int(self._index["nbytes"][self._valid()].sum())

    def take_spare(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        return None  # tiles are copied into the segment; nothing to hand back

    def reserve(self, memory_capacity: float, capacity: int | None = None) -> None:
        """The segment's size is fixed at creation; configure a new cache to grow it."""
        if int(memory_capacity * MiB) > self.memory_capacity:
            raise InvalidArgumentError("a shared-memory cache cannot grow; configure a new one")

    def clear(self) -> None:
        with self._locked():
            self._index[:] = np.zeros(1, _ENTRY)
            self._header[_H_HITS] = self._header[_H_MISSES] = 0

    @property
    def config(self) -> dict:
        return {**super().config, "name": self.name}

    # -- engine side -----------------------------------------------------------------------------------------
    def _slots(self, digest: bytes) -> list[int]:
        start = int.from_bytes(digest[:8], "little") % self._buckets
        return [(start + i) % self._buckets for i in range(min(_PROBES, self._buckets))]

    def get(self, key: Hashable) -> np.ndarray | None:
        digest = _digest(key)
        with self._locked():
            head = int(self._header[_H_HEAD])
            record = bool(self._header[_H_RECORD])
            for slot in self._slots(digest):
                entry = self._index[slot]
                if not entry["used"]:
                    break
                if entry["digest"].tobytes() == digest and int(entry["pos"]) + self.memory_capacity >= head:
                    start = int(entry["pos"]) % self.memory_capacity
                    n = int(entry["nbytes"])
                    shape = tuple(int(v) for v in entry["shape"] if v > 0)
                    arr = np.frombuffer(self._ring[start:start + n].tobytes(), np.dtype(entry["dtype"].decode()))
                    if record:
                        self._header[_H_HITS] += 1
                    arr = arr.reshape(shape)
                    arr.flags.writeable = False
                    return arr
            if record:
                self._header[_H_MISSES] += 1
        return None

    def put(self, key: Hashable, arr: np.ndarray) -> None:
        n = arr.nbytes
        if n > self.memory_capacity or arr.ndim > 4:
            return
        digest = _digest(key)
        data = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        with self._locked():
            head = int(self._header[_H_HEAD])
            pos = head
            if pos % self.memory_capacity + n > self.memory_capacity:  # never wrap inside a tile
                pos = (pos // self.memory_capacity + 1) * self.memory_capacity
            self._header[_H_HEAD] = pos + n
            start = pos % self.memory_capacity
            self._ring[start:start + n] = data
            slots = self._slots(digest)
            target = None
            oldest, oldest_pos = slots[0], None
            for slot in slots:
                entry = self._index[slot]
                if not entry["used"] or entry["digest"].tobytes() == digest:
                    target = slot
                    break
                if int(entry["pos"]) + self.memory_capacity < pos + n:  # overwritten: reusable
                    target = slot
                    break
                if oldest_pos is None or entry["pos"] < oldest_pos:
                    oldest, oldest_pos = slot, int(entry["pos"])
            slot = oldest if target is None else target
            shape = np.zeros(4, np.int32)
            shape[: arr.ndim] = arr.shape
            self._index[slot] = (digest, pos, n, shape, arr.dtype.str.encode(), 1)

    def has_room(self, nbytes: int) -> bool:
        """Whether the ring has never wrapped (a tile of ``nbytes`` overwrites none); reads only the header."""
        return int(self._header[_H_HEAD]) + nbytes <= self.memory_capacity

    def admit_whole(self, key: Hashable) -> bool:
        """Always: other processes may want the tile, and ``put`` copies into memory that is already mapped."""
        return True

    # -- life cycle ------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Detach; the creating process also removes the segment."""
        _LIVE.discard(self)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._index = self._ring = self._header = None  # type: ignore[assignment]
        try:
            self._shm.close()
        except BufferError:  # pragma: no cover - a view still alive
            return
        if self._owner == os.getpid():
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass

    def _remove_at_exit(self) -> None:
        if self._owner == os.getpid() and self._header is not None:
            self.close()

    def __repr__(self) -> str:
        return (f"<SharedMemoryCache {self.name} {self.size} tiles, {self.memory_size / MiB:.1f}/"
                f"{self.memory_capacity / MiB:.0f} MiB, hits={self.hit_count} misses={self.miss_count}>")


_LIVE: weakref.WeakSet[SharedMemoryCache] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for cache in list(_LIVE):
        cache._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _untrack(shm: shared_memory.SharedMemory) -> None:
    """Attaching must not make this process remove the segment at exit (Python < 3.13 tracks attachments)."""
    try:
        from multiprocessing import resource_tracker

        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - tracker internals differ across versions
        pass


def attach_from_environment() -> SharedMemoryCache | None:
    """The cache named by ``$CUCIM_LIKE_SHM_CACHE`` (set by the configuring process), if any."""
    name = os.environ.get(ENV)
    if not name:
        return None
    try:
        return SharedMemoryCache(name=name)
    except (FileNotFoundError, InvalidArgumentError):
        return None
