"""Batched patch reading: an iterator of (B, H, W, C) arrays with bounded prefetch.

Each batch is one plan (regions stacked along z, see :func:`cucim_like.plan.plan_batch`), so a tile shared by
patches of a batch is read and decoded once. At most ``prefetch_factor`` batches are decoded ahead of the
consumer; abandoning the iterator (``break``, ``del``, garbage collection, an exception) cancels the queued
batches and stops the running one between tiles.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .errors import InvalidArgumentError
from .executors.pool import thread_pool
from .plan import TileUses, tile_boxes, tile_uses

if TYPE_CHECKING:
    from concurrent.futures import Future

    from .cache import TileCache
    from .formats.base import Level

# Batches run on a small shared pool of producer threads (each batch then fans its tiles out to the decode
# pool): iterators own no threads, so none can leak.
_PRODUCERS = 2

# (starts, caller's buf (an array, or a callable giving one per batch) or None, cancel event, decode threads for
# this batch) -> batch
RunBatch = Callable[[np.ndarray, np.ndarray | Callable[[int], np.ndarray | None] | None, threading.Event, int],
                    np.ndarray]


class _Cancelled(Exception):
    pass


class BatchIterator:
    """Iterates over batches of patches; ``len()`` is the number of batches.

    Each item is a new NumPy array (B, H, W, C) (or (B, D, H, W, C) for volumes), the last one shorter unless
    ``drop_last``, or a view of the caller's ``buf`` when one was given (then nothing is decoded ahead), or the
    array a callable ``buf(n)`` gave for the batch (batches are then decoded ahead as without ``buf``).
    """

    def __init__(self, starts: np.ndarray, batch_size: int, drop_last: bool, prefetch_factor: int,
                 shuffle: bool, seed: int, run_batch: RunBatch,
                 buf: np.ndarray | Callable[[int], np.ndarray | None] | None = None,
                 workers: int = 1) -> None:
        self._starts = starts
        self.tile_uses: BatchTileUses | None = None  # what the batches need of each tile (set by read_region)
        order = np.arange(len(starts))
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(starts))
        n = len(order)
        count = n // batch_size if drop_last else -(-n // batch_size)
        self._batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(count)]
        self._run = run_batch
        self._buf = buf
        self._prefetch = 0 if buf is not None and not callable(buf) else prefetch_factor
        # ``workers`` decode threads in all: shared by the batches decoded at the same time (measured with
        # 2 workers, 2000 224² patches: one thread per batch on 2 producers 1.54 s, both threads on every
        # batch 1.62 s, medians of 8; fewer threads, fewer hand-offs). With one worker, one batch at a time:
        # in a DataLoader's worker, the worker processes are the parallelism.
        at_once = max(1, min(_PRODUCERS, self._prefetch, workers))
        self._batch_workers = max(1, workers // at_once)
        self._producers = at_once
        self._next = 0
        self._submitted = 0
        self._queue: deque[Future] = deque()
        self._cancel = threading.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> BatchIterator:
        return self

    @property
    def order(self) -> np.ndarray:
        """Indices into the given locations, in the order patches are delivered."""
        return np.concatenate(self._batches) if self._batches else np.empty(0, np.int64)

    def _task(self, index: int) -> Callable[[], np.ndarray]:
        # The task holds the pieces it needs, not the iterator, so dropping the iterator collects it.
        starts, run, cancel, buf = self._starts[self._batches[index]], self._run, self._cancel, self._buf
        workers = self._batch_workers

        def task() -> np.ndarray:
            if cancel.is_set():
                raise _Cancelled
            return run(starts, buf, cancel, workers)

        return task

    def _fill_queue(self) -> None:
        pool = thread_pool(self._producers, "batch")
        while self._submitted < len(self._batches) and len(self._queue) < self._prefetch:
            self._queue.append(pool.submit(self._task(self._submitted)))
            self._submitted += 1

    def __next__(self) -> np.ndarray:
        if self._closed or self._next >= len(self._batches):
            self.close()
            raise StopIteration
        try:
            if not self._queue:
                self._fill_queue()  # the first call: this batch and the next ones go to the producers
            if self._queue:
                fut = self._queue.popleft()
                self._fill_queue()
                result = fut.result()
            else:  # nothing decoded ahead: this batch is read here
                result = self._task(self._next)()
        except BaseException:
            self.close()
            raise
        self._next += 1
        return result

    def close(self) -> None:
        """Stop: cancel queued batches, stop the running one between tiles. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._cancel.set()
        for fut in self._queue:
            fut.cancel()
        self._queue.clear()

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BatchTileUses:
    """What a batch iterator knows of its future: which tiles more than one of its batches needs, and which
    part of each.

    While the tile cache has room, a tile a read needs only part of is decoded whole and kept (:mod:`.cache`).
    When the iterator's tiles do not all fit in the cache, only a tile a later batch needs again is kept, and
    only the part the iterator's patches need of it (:attr:`cucim_like.plan.TileUses.boxes`), decoded
    cropped: :meth:`reuse` hands the executor that knowledge then, and None (keep what there is room for) when
    they fit, so that a second pass over the same patches finds them all. Measured on the benchmark slide,
    2000 random 224² patches (4669 tiles), a fresh 256 MiB cache: first pass 0.84-0.95 s keeping every tile
    while there is room, against 0.73 s with no cache. Keeping parts rather than whole tiles (a DataLoader,
    2 workers, the shared-memory cache): the first pass wrote 149 MiB instead of 200 MiB of fresh shared
    memory and took 0.75-0.81 s against 0.81 s; later passes found as many tiles (0.49-0.51 s, as before).
    Working that out delays a worker's first batch: the counts (1.2 ms for 1000 patches) and the boxes of the
    568 tiles kept, over all 2000 patches (2.4 ms; 9.5 ms when they were bounded for every tile of any
    patch): the first batch with a fresh shared-memory cache in 60 ms instead of 71 ms (41 ms with no cache).
    """

    def __init__(self, level: Level, starts: np.ndarray, extent: tuple[int, int, int], batch_size: int,
                 level_starts: Callable[[object], np.ndarray]) -> None:
        self._level, self._starts, self._extent, self._batch_size = level, starts, extent, batch_size
        self._level_starts = level_starts  # read_region's locations -> (n, 3) starts in the level's pixels
        self.order: np.ndarray | None = None  # delivery order (indices into starts), set by the iterator's maker
        self._lock = threading.Lock()
        self._uses: TileUses | None = None
        self._everyone: np.ndarray | None = None  # starts of every process's patches (share)
        self._touched = -1  # bytes of the decoded tiles the batches touch; -1 until counted

    def share(self, locations: object) -> None:
        """Take into account the patches of every process that reads into one shared cache at the same time:
        ``locations`` (as ``read_region``'s) of all their patches, this iterator's included. The part kept of a
        tile this iterator's later batches need then holds what every process's patches need of it, so that the
        others find it too. Before the first batch only."""
        starts = self._level_starts(locations)
        with self._lock:
            self._everyone, self._touched = starts, -1

    def reuse(self, cache: TileCache | None) -> TileUses | None:
        """The batches' :class:`cucim_like.plan.TileUses` when ``cache`` cannot hold every tile they touch,
        else None; counted on first use."""
        if cache is None or cache.memory_capacity <= 0:
            return None
        with self._lock:
            if self._touched < 0:
                level = self._level
                starts = self._starts if self.order is None else self._starts[self.order]
                args = (level.shape, level.tile_shape, starts, self._extent, self._batch_size)
                uses = tile_uses(*args, boxes=False)  # the boxes only when the tiles do not all fit
                tiles = 0 if uses is None else int(np.count_nonzero(uses.counts)) * level.planes
                self._touched = tiles * level.decoded_tile_nbytes
                if uses is not None and self._touched > cache.memory_capacity:
                    # what every process's patches need of the tiles more than one of these batches needs
                    needs = starts if self._everyone is None else self._everyone
                    boxes = tile_boxes(level.shape, level.tile_shape, needs, self._extent,
                                       np.flatnonzero(uses.counts > 1))
                    uses = TileUses(uses.counts, boxes)
                self._uses = uses
        return None if self._uses is None or self._touched <= cache.memory_capacity else self._uses


def check_batch_arguments(batch_size: object, prefetch_factor: object) -> tuple[int, int]:
    if type(batch_size) is int and type(prefetch_factor) is int and batch_size > 0 and prefetch_factor >= 0:
        return batch_size, prefetch_factor  # the common case, fast
    from .arguments import as_int

    b = as_int(batch_size, "batch_size")
    p = as_int(prefetch_factor, "prefetch_factor")
    if b <= 0:
        raise InvalidArgumentError(f"batch_size must be positive, got {b}")
    if p < 0:
        raise InvalidArgumentError(f"prefetch_factor must be >= 0, got {p}")
    return b, p
