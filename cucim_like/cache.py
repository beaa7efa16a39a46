"""Decoded-tile caches shared by every open image of a process, bounded by bytes, with real statistics."""

from __future__ import annotations

import enum
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from .errors import InvalidArgumentError
from .memory import return_freed_memory

MiB = 1024 * 1024
DEFAULT_MEMORY_CAPACITY_MIB = 64


class CacheType(str, enum.Enum):
    """Kinds of tile cache, as cuCIM's ``cucim.clara.cache.CacheType``; each also equals its string
    (``CacheType.PerProcess == "per_process"``)."""

    NoCache = "no_cache"
    PerProcess = "per_process"
    SharedMemory = "shared_memory"

    def __str__(self) -> str:  # the same on every Python version, as cuCIM prints it
        return f"CacheType.{self.name}"


class TilePart:
    """A kept part of a 2-D tile: ``arr`` (1, h, w, samples) holds the tile's rows ``origin[0]`` onwards and
    columns ``origin[1]`` onwards (what a batch iterator's patches need of it, see
    :class:`cucim_like.plan.TileUses`)."""

    __slots__ = ("arr", "nbytes", "origin")

    def __init__(self, arr: np.ndarray, origin: tuple[int, int]) -> None:
        self.arr, self.origin, self.nbytes = arr, (int(origin[0]), int(origin[1])), int(arr.nbytes)


WHOLE = (0, 0)  # the origin of a whole tile

_TRIM_BYTES = 64 * MiB  # clearing at least this much hands freed heap memory back (memory.return_freed_memory)


class TileCache:
    """LRU of decoded tiles (read-only NumPy arrays), keyed by (file identity, level, tile).

    ``memory_capacity`` is in bytes (attribute) and MiB (constructor, as in cuCIM); ``capacity`` bounds the
    number of tiles. Statistics count only while ``record()`` is on (the default).
    """

    type: CacheType | str = CacheType.PerProcess
    # put() keeps the array it is given (False), or a copy (True: the executor may hand it memory it uses again)
    copies_on_put = False
    # Evicted tiles nobody holds are kept (a few) and handed back by take_spare() for the next decode: fresh
    # memory for every inserted tile page-faults ~48 times per 256² RGB tile, which cost 6-8 % of random
    # 512² reads on the reference VM.
    _recycles = True
    _SPARES = 4

    def __init__(self, memory_capacity: float = DEFAULT_MEMORY_CAPACITY_MIB, capacity: int | None = None,
                 record_stat: bool = True) -> None:
        if memory_capacity < 0 or (capacity is not None and capacity < 0):
            raise InvalidArgumentError("cache capacities must not be negative")
        self.memory_capacity = int(memory_capacity * MiB)
        # Without an explicit tile count, only bytes bound the cache; ``capacity`` then reports an estimate
        # in 256² RGB tiles, as cuCIM does.
        self._item_limit = int(capacity) if capacity is not None else None
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._seen_whole: OrderedDict[Hashable, None] = OrderedDict()  # see admit_whole
        self._seen_part: OrderedDict[Hashable, None] = OrderedDict()  # see admit_part
        self._spares: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._record = bool(record_stat)
        self.hit_count = 0
        self.miss_count = 0

    # -- cuCIM's ImageCache surface --------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of tiles held."""
        return len(self._items)

    @property
    def memory_size(self) -> int:
        """Bytes held."""
        return self._bytes

    @property
    def capacity(self) -> int:
        """Tiles the cache may hold (an estimate in 256² RGB tiles when only bytes were configured)."""
        if self._item_limit is not None:
            return self._item_limit
        return self.memory_capacity // (256 * 256 * 3)

    @property
    def free_memory(self) -> int:
        return max(0, self.memory_capacity - self.memory_size)

    def record(self, value: bool | None = None) -> bool:
        """Turn statistics on/off (with a value) or tell whether they are on (without)."""
        if value is not None:
            self._record = bool(value)
        return self._record

    def reserve(self, memory_capacity: float, capacity: int | None = None) -> None:
        """Grow (never shrink) the capacity, in MiB / tiles."""
        with self._lock:
            self.memory_capacity = max(self.memory_capacity, int(memory_capacity * MiB))
            if capacity is not None and self._item_limit is not None:
                self._item_limit = max(self._item_limit, int(capacity))

    def clear(self) -> None:
        """Drop every tile (their memory goes back to the system when it was a lot)."""
        with self._lock:
            held = self._bytes + sum(arr.nbytes for arr in self._spares)
            self._items.clear()
            self._seen_whole.clear()
            self._seen_part.clear()
            self._spares.clear()
            self._bytes = 0
            self.hit_count = self.miss_count = 0
        if held >= _TRIM_BYTES:
            return_freed_memory()

    def close(self) -> None:
        """Release what the cache holds (called when another cache replaces it)."""
        self.clear()

    @property
    def config(self) -> dict:
        return {"type": str.__str__(self.type), "memory_capacity": self.memory_capacity // MiB,
                "capacity": self.capacity, "record_stat": self.record()}

    def __repr__(self) -> str:
        return (f"<TileCache {str.__str__(self.type)} {self.size} tiles, {self._bytes / MiB:.1f}/"
                f"{self.memory_capacity / MiB:.0f} MiB, hits={self.hit_count} misses={self.miss_count}>")

    # -- engine side -----------------------------------------------------------------------------------------
    def get(self, key: Hashable) -> np.ndarray | TilePart | None:
        """The tile under ``key`` (a :class:`TilePart` where only a part was kept), or None."""
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
            if self._record:
                if arr is None:
                    self.miss_count += 1
                else:
                    self.hit_count += 1
            return arr

    def get_many(self, keys: Sequence[Hashable]) -> list[np.ndarray | TilePart | None]:
        """:meth:`get` for each of ``keys``, in order (one lock, or one look-up pass, for all)."""
        return [self.get(key) for key in keys]

    def use_many(self, keys: Sequence[Hashable], use: Callable[[int, np.ndarray, tuple[int, int]], bool]
                 ) -> list[bool]:
        """Call ``use(i, tile, origin)`` for each ``keys[i]`` the cache holds: ``tile`` is the tile, or the part
        of it kept (rows from ``origin[0]``, columns from ``origin[1]``; (0, 0) for a whole tile), read-only
        and valid only during the call (a shared-memory cache hands a view of its memory). ``use`` returns
        whether it could use it (a part may lack what the read needs: a miss). Returns which were used."""
        with self._lock:
            items = self._items
            entries = [items.get(key) for key in keys]
            for key, entry in zip(keys, entries, strict=True):
                if entry is not None:
                    items.move_to_end(key)
        found = [entry is not None and bool(use(i, entry.arr, entry.origin) if type(entry) is TilePart
                                            else use(i, entry, WHOLE))
                 for i, entry in enumerate(entries)]
        if self._record:
            hits = sum(found)
            with self._lock:
                self.hit_count += hits
                self.miss_count += len(keys) - hits
        return found

    def put_many(self, items: Sequence[tuple[Hashable, np.ndarray, tuple[int, int]]]) -> None:
        """:meth:`put` for each (key, tile, origin) of ``items``."""
        for key, arr, origin in items:
            self.put(key, arr, origin)

    def put(self, key: Hashable, arr: np.ndarray, origin: tuple[int, int] = WHOLE) -> None:
        """Keep ``arr``: a decoded tile, or (a 2-D tile's) part of it from row ``origin[0]`` and column
        ``origin[1]`` on when ``origin`` is given (see :meth:`use_many`)."""
        nbytes = arr.nbytes
        if nbytes > self.memory_capacity or self._item_limit == 0:
            return
        self._freeze(arr)
        entry = arr if origin == WHOLE else TilePart(arr, origin)  # a bare array starts at (0, 0)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = entry
            self._bytes += nbytes
            limit = self._item_limit
            while self._bytes > self.memory_capacity or (limit is not None and len(self._items) > limit):
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes
                # Reused only if nothing else refers to it or to its memory: a reader holds the tile, or a
                # view of it (whose base is the owner), while it copies; an evicted tile cannot be found again.
                if self._recycles and _is_decode_buffer(evicted) and _refcounts(evicted) == _UNSHARED:
                    self._spares.append(evicted)
                    if len(self._spares) > self._SPARES:  # oldest first: shapes no longer asked for age out
                        del self._spares[0]
                del evicted

    def take_spare(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """A writable array of ``shape``/``dtype`` that an eviction freed (its pages already mapped), or None."""
        with self._lock:
            for i, arr in enumerate(self._spares):
                if arr.shape == shape and arr.dtype == dtype:
                    del self._spares[i]
                    arr.flags.writeable = True
                    return arr
        return None

    def has_room(self, nbytes: int) -> bool:
        """Whether a tile of ``nbytes`` would fit without evicting one (bytes and tile count)."""
        limit = self._item_limit
        return self.free_memory >= nbytes and (limit is None or self.size < limit)

    def admit_part(self, key: Hashable) -> bool:
        """Whether a tile a read needs only part of, arriving while the cache is full, is decoded whole and
        kept: on its second request while its key is among the last ``capacity // 2`` (at least 256) such
        tiles declined (the first request is decoded cropped).

        Two requests farther apart than that say the tile would be overwritten before a third: admitting it
        would evict a tile about to be read again, and cost a whole decode instead of a cropped one. Measured
        on the benchmark slide, 2000 random 224² patches touching 4669 tiles, a 256 MiB cache (1365 tiles),
        passes 2-4: 0.51-0.57 s against 0.76-0.87 s with a window of ``4 * capacity``, 0.69-0.73 s with no
        cache.
        """
        return self._second_request(key, self._seen_part, max(256, self.capacity // 2))

    def admit_whole(self, key: Hashable) -> bool:
        """Whether a tile decoded straight into a caller's output (a frame, a chunk, a tile read whole) earns a
        copy in the cache: on its second request while its key is still remembered, not on its first.

        A tile read whole was handed over complete, so only a repeated read of it gains from a copy, and the copy
        (fresh memory) costs more than the rest of a frame read's overhead. The keys of the last
        ``4 * capacity`` (at least 256) such tiles are remembered.
        """
        return self._second_request(key, self._seen_whole, max(256, 4 * self.capacity))

    def _second_request(self, key: Hashable, seen: OrderedDict[Hashable, None], window: int) -> bool:
        """True when ``key`` is in ``seen`` (and forgets it), else remembers it there, keeping the last
        ``window`` keys."""
        if self.memory_capacity == 0 or self._item_limit == 0:
            return False
        with self._lock:
            if key in seen:
                del seen[key]
                return True
            seen[key] = None
            while len(seen) > window:
                seen.popitem(last=False)
            return False

    @staticmethod
    def _freeze(arr: np.ndarray) -> None:
        arr.flags.writeable = False


def _refcounts(tile: np.ndarray) -> tuple[int, int]:
    """sys.getrefcount of ``tile`` and of the memory owner behind it."""
    return sys.getrefcount(tile), sys.getrefcount(tile.base)


def _refcounts_of_an_unshared_tile() -> tuple[int, int]:
    """What :func:`_refcounts` reports, in this interpreter, for a tile held by one local variable of its
    caller and nothing else (the numbers differ between Python versions: 3.14 passes locals as borrowed
    references). TileCache.put checks an evicted tile with the same call from a local variable."""
    owner = np.empty(2, np.uint8)
    tile = owner[1:]
    del owner
    return _refcounts(tile)


_UNSHARED = _refcounts_of_an_unshared_tile()


def _is_decode_buffer(tile: np.ndarray) -> bool:
    """Whether ``tile`` is a view of memory NumPy allocated for a decode (memory.decode_buffer: a 1-D uint8
    owner), not of a caller's memory, a map or a copy (those are never reused)."""
    if type(tile) is not np.ndarray:  # a TilePart, or another kind of entry
        return False
    owner = tile.base
    return type(owner) is np.ndarray and owner.flags.owndata and owner.ndim == 1 and owner.dtype == np.uint8


class NoCache(TileCache):
    """A cache that holds nothing (``CuImage.cache("no_cache")``); it still counts misses."""

    type = CacheType.NoCache

    def __init__(self, memory_capacity: float = 0, capacity: int | None = 0, record_stat: bool = True) -> None:
        super().__init__(0, 0, record_stat)

    def put(self, key: Hashable, arr: np.ndarray, origin: tuple[int, int] = WHOLE) -> None:
        return None


_current: list[TileCache | None] = [None]
_current_lock = threading.Lock()

_KINDS = ("per_process", "no_cache", "nocache", "shared_memory")


def current_cache() -> TileCache:
    """The process-wide cache every read goes through.

    On first use in a process it is the shared-memory cache named by ``$CUCIM_LIKE_SHM_CACHE`` (set by the
    process that configured it, so spawned workers attach), else a per-process cache of 64 MiB.
    """
    cache = _current[0]
    if cache is None:
        with _current_lock:
            cache = _current[0]
            if cache is None:
                from .shm_cache import attach_from_environment

                cache = _current[0] = attach_from_environment() or TileCache()
    return cache


def preferred_memory_capacity(img=None, image_size=None, tile_size=None, patch_size=(256, 256),
                              bytes_per_pixel: int = 3) -> int:
    """MiB a cache needs to hold the tiles touched by patches read row by row across an image (cuCIM's helper).

    ``img`` (a CuImage) supplies the level-0 size, tile size and bytes per pixel when the others are not
    given; sizes are (w, h). Enough for one row of patches plus one row of tiles, so a row-by-row scan
    decodes each tile once.
    """
    if img is not None:
        level0 = img.levels[0]
        image_size = image_size or (level0.width, level0.height)
        tile_size = tile_size or (level0.tile_shape[2], level0.tile_shape[1])
        bytes_per_pixel = level0.shape[3] * level0.dtype.itemsize
    tile_size = tile_size or (256, 256)
    if image_size is None or patch_size is None:
        raise InvalidArgumentError("give img or image_size, and patch_size")
    (iw, _ih), (tw, th), (_pw, ph) = image_size, tile_size, patch_size
    if min(iw, tw, th, ph) <= 0:
        raise InvalidArgumentError("sizes must be positive")
    across = -(-iw // tw) + 1
    down = -(-ph // th) + 1
    return int(across * down * tw * th * bytes_per_pixel / MiB + 0.5)


def configure_cache(kind: str | None = None, memory_capacity: float | None = None, capacity: int | None = None,
                    record_stat: bool | None = None) -> TileCache:
    """Replace the process-wide cache (cuCIM's ``CuImage.cache(type, memory_capacity=MiB, ...)``).

    With no arguments, return the current cache unchanged.
    """
    old = current_cache()
    if kind is None and memory_capacity is None and capacity is None and record_stat is None:
        return old
    kind = (kind or old.type).lower()
    if kind not in _KINDS:
        raise InvalidArgumentError(f"unknown cache type {kind!r}; choose per_process, shared_memory or no_cache")
    mib = memory_capacity if memory_capacity is not None else DEFAULT_MEMORY_CAPACITY_MIB
    record = old.record() if record_stat is None else record_stat
    with _current_lock:
        if kind == "shared_memory":
            from .shm_cache import ENV, SharedMemoryCache

            cache: TileCache = SharedMemoryCache(mib, capacity, record)
            os.environ[ENV] = cache.name  # worker processes (fork or spawn) attach through this
        else:
            cache = NoCache(0, 0, record) if kind in ("no_cache", "nocache") else TileCache(mib, capacity, record)
            from .shm_cache import ENV

            os.environ.pop(ENV, None)
        _current[0] = cache
    old.close()
    return cache
