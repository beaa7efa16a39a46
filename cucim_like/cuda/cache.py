"""The device tile cache: decoded tiles kept in GPU memory, LRU by bytes, with statistics.

It is the host :class:`~cucim_like.cache.TileCache` holding device arrays (any array with ``nbytes``:
``cupy.ndarray`` on the GPU path, NumPy in tests), configured the same way, in MiB.
"""

from __future__ import annotations

import threading

from ..cache import TileCache

DEFAULT_DEVICE_CAPACITY_MIB = 1024


class DeviceTileCache(TileCache):
    """LRU of decoded tiles in device memory, keyed like the host cache; ``memory_capacity`` in MiB."""

    type = "device"
    _recycles = False  # device arrays are freed to CuPy's pool, which recycles them already

    @staticmethod
    def _freeze(arr) -> None:  # device arrays have no write flag; the executor never writes cached tiles
        return None


_current: list[DeviceTileCache | None] = [None]
_lock = threading.Lock()


def device_cache(memory_capacity: float | None = None, capacity: int | None = None,
                 record_stat: bool | None = None) -> DeviceTileCache:
    """The process's device tile cache, (re)configured when arguments are given (default 1 GiB).

    ``memory_capacity`` in MiB (0 turns caching off), ``capacity`` an optional bound on tiles.
    """
    with _lock:
        cache = _current[0]
        if cache is None or memory_capacity is not None or capacity is not None:
            old = cache
            mib = memory_capacity if memory_capacity is not None else (
                old.memory_capacity / 2**20 if old is not None else DEFAULT_DEVICE_CAPACITY_MIB)
            record = old.record() if old is not None and record_stat is None else record_stat
            cache = DeviceTileCache(mib, capacity, True if record is None else record)
            if old is not None:
                old.close()
            _current[0] = cache
        elif record_stat is not None:
            cache.record(record_stat)
        return cache
