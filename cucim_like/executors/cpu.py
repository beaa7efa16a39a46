"""The CPU executor, the reference one: positional reads, a thread pool decoding with imagecodecs, placement.

Tiles a plan needs are looked up in the tile cache; the rest are sorted by file offset and coalesced into
reads. Large requests make one work item per coalesced read (read + decode + place), one in flight per thread,
so memory stays bounded; small requests read inline and make each tile its own item, so the cores share even a
four-tile region. The calling thread works too. Decoding and copying release the GIL.

JPEG tiles that TurboJPEG 3 can decode go to the native tile pool instead, where it is built (:mod:`.native`):
one call per read, or per group of coalesced reads, decodes and places them all; what it leaves comes back here.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from ..cache import WHOLE, TileCache
from ..codecs import Decoder, get_decoder
from ..errors import CorruptFileError, CucimLikeError, DecodeError
from ..fileio import FileReader
from ..formats.base import Level, compressed_tile_limit
from ..memory import decode_buffer, decode_skip
from ..plan import ByteRange, Plan, TileJob, TileUses, box_slices, coalesce_ranges
from . import native
from .pool import thread_pool

_SMALL_REQUEST_TILES = 64

Progress = Callable[[int], None]


def tile_coords(level: Level, tile: int) -> tuple[int, ...]:
    """Grid coordinates of a flat tile index: (ty, tx) for plain 2-D levels, else (plane, tz, ty, tx)."""
    coords = np.unravel_index(tile, level.grid)
    coords = tuple(int(c) for c in coords)
    return coords[2:] if level.planes == 1 and level.grid[1] == 1 else coords


class _Scratch(threading.local):
    def __init__(self) -> None:
        self.arrays: dict[tuple, np.ndarray] = {}

    def get(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        key = (shape, dtype.str)
        arr = self.arrays.get(key)
        if arr is None:
            if len(self.arrays) >= 2:  # a thread serves one or two tile shapes at a time
                self.arrays.clear()
            arr = self.arrays[key] = decode_buffer(shape, dtype)
        return arr


_scratch = _Scratch()


class _Staging(threading.local):
    """This thread's memory for the tiles a read hands to a cache that copies what it is given
    (``TileCache.copies_on_put``): a few large arrays handed out a piece at a time, freed at :meth:`reset`
    once the tiles are put. Large arrays get huge pages (numpy asks for them from 4 MiB), so their memory
    costs a page fault per 2 MiB instead of per 4 KiB. At most ``_STAGING_MAX`` bytes; past that, None.

    Measured (a DataLoader's first pass, 2 workers, a fresh 1 GiB shared-memory cache that keeps the tiles
    whole): 1.35 s with the tiles staged here, against 1.51 s decoding them into the ring's own memory, mapped
    for them; keeping the arrays for the next read instead measured the same as freeing them."""

    def __init__(self) -> None:
        self.chunk, self.used = _EMPTY, 0
        self.outgrown: list[np.ndarray] = []  # chunks filled during this read, still in use until reset

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """An uninitialised C-contiguous array of ``shape``/``dtype`` (CPU, 16 bytes past a 64-byte boundary, as
        :func:`cucim_like.memory.decode_buffer`), valid until :meth:`reset`; None past the limit."""
        nbytes = math.prod(shape) * dtype.itemsize
        need = nbytes + 64
        if self.used + need > len(self.chunk):
            held = sum(len(c) for c in self.outgrown) + (len(self.chunk) if self.used else 0)
            if held + need > _STAGING_MAX:
                return None
            if self.used:
                self.outgrown.append(self.chunk)
            self.chunk = np.empty(min(_STAGING_MAX - held, max(need, _STAGING_CHUNK, 2 * len(self.chunk))), np.uint8)
            self.used = 0
        start = self.used + decode_skip(self.chunk.ctypes.data + self.used)
        self.used = start + nbytes
        return self.chunk[start:start + nbytes].view(dtype).reshape(shape)

    def reset(self) -> None:
        """Everything handed out is free again."""
        self.chunk, self.used = _EMPTY, 0
        self.outgrown.clear()


_EMPTY = np.empty(0, np.uint8)
_staging = _Staging()
# a read's tiles for such a cache are staged in chunks of at least _STAGING_CHUNK bytes, at most _STAGING_MAX
# bytes a thread (beyond that they get memory of their own)
_STAGING_CHUNK = 4 << 20
_STAGING_MAX = 64 << 20


def _union(jobs: list[TileJob], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the smallest box of a 2-D tile of ``shape`` holding every job's source box."""
    y0, y1, x0, x1 = shape[1], 0, shape[2], 0
    for _, (_, (sy0, sy1), (sx0, sx1), _), _ in jobs:
        y0, y1, x0, x1 = min(y0, sy0), max(y1, sy1), min(x0, sx0), max(x1, sx1)
    return y0, y1, x0, x1


def _within(jobs: list[TileJob], origin: tuple[int, int], shape: tuple[int, ...]) -> list[TileJob] | None:
    """``jobs`` with their source boxes moved into a part of a 2-D tile, ``shape`` (1, h, w, c) from row
    ``origin[0]`` and column ``origin[1]`` of the tile on; None when a job needs more than the part holds."""
    oy, ox = origin
    h, w = shape[1], shape[2]
    moved = []
    for tile, (z, (sy0, sy1), (sx0, sx1), c), dst in jobs:
        if sy0 < oy or sx0 < ox or sy1 - oy > h or sx1 - ox > w:
            return None
        moved.append(TileJob(tile, (z, (sy0 - oy, sy1 - oy), (sx0 - ox, sx1 - ox), c), dst))
    return moved


class _Read:
    """State of one executed plan (shared by its tasks; each task writes disjoint output boxes)."""

    def __init__(self, path: str, readers: Sequence[FileReader], level: Level, out: np.ndarray,
                 cache: TileCache | None, file_keys: Sequence[object], insert: bool,
                 reuse: TileUses | None = None) -> None:
        self.path = path
        self.reuse = reuse
        self.readers = readers
        self.level = level
        self.out = out
        self.cache = cache
        self.file_keys = file_keys
        self.insert = insert
        try:
            self.decoder: Decoder = get_decoder(level)
        except CucimLikeError as exc:
            raise type(exc)(exc.message, path=path, level=level.index) from exc
        self.store = level.chunk_store
        self.file_ids = None
        if self.store is None:
            self.offsets, self.lengths, self.file_ids = flat_tile_table(level, path)
        # decoders that hand back views of the stored bytes (native DICOM frames) read from a memory map
        self.zero_copy = bool(getattr(self.decoder, "zero_copy", False))
        if self.zero_copy:
            self.insert = False  # the page cache holds such tiles already
        self.crops = self.decoder.crops
        self.pool = native.tile_pool() if self.crops and self._packed_output() else None

    def _packed_output(self) -> bool:
        """Whether output rows hold packed uint8 pixels of the tile's samples (what the native pool writes)."""
        out = self.out
        samples = self.decoder.tile_shape[3]
        return (out.dtype == np.uint8 and out.ndim == 4 and out.shape[3] == samples
                and out.strides[3] == 1 and out.strides[2] == samples and out.flags.writeable)

    def file_of(self, tile: int) -> int:
        return int(self.file_ids[tile]) if self.file_ids is not None else 0

    def cache_key(self, tile: int) -> tuple:
        level = self.level
        key = self.file_keys[self.file_of(tile)]
        if level.variant:
            return (key, level.index, level.variant, tile)
        return (key, level.index, tile)

    def place(self, tile_arr: np.ndarray, jobs: list[TileJob], tile: int) -> None:
        out = self.out
        depth, rows = tile_arr.shape[0], tile_arr.shape[1]
        for _, src, dst in jobs:
            (sz0, sz1), (sy0, sy1), (sx0, sx1), (sc0, sc1) = src
            (dz0, dz1), (dy0, dy1), (dx0, dx1), (dc0, dc1) = dst
            if depth < sz1 or rows < sy1:
                raise DecodeError(
                    f"tile holds {rows} rows, {sy1} are needed",
                    path=self.path, level=self.level.index, tile=tile_coords(self.level, tile),
                )
            out[dz0:dz1, dy0:dy1, dx0:dx1, dc0:dc1] = tile_arr[sz0:sz1, sy0:sy1, sx0:sx1, sc0:sc1]

    def place_cached(self, tiles: list[int], jobs_by_tile: dict[int, list[TileJob]]) -> list[int]:
        """Place the tiles the cache holds, whole or the part the jobs need (one look-up for all); returns the
        others, in order."""
        tile_shape = self.decoder.tile_shape

        def place(i: int, hit: np.ndarray, origin: tuple[int, int]) -> bool:
            jobs = jobs_by_tile[tiles[i]]
            if origin != WHOLE or hit.shape != tile_shape:  # a part, or a short tile: what does it hold?
                jobs = _within(jobs, origin, hit.shape)
                if jobs is None:
                    return False
            self.place(hit, jobs, tiles[i])
            return True

        found = self.cache.use_many([self.cache_key(t) for t in tiles], place)
        return [tile for tile, hit in zip(tiles, found, strict=True) if not hit]

    def direct_target(self, jobs: list[TileJob], shape: tuple[int, ...]) -> np.ndarray | None:
        """The output view a tile of decoded ``shape`` can be decoded straight into: when its one job copies
        the whole tile to a C-contiguous part of the output (a frame of a volume, full-width strips, a whole
        chunk). None otherwise."""
        if len(jobs) != 1 or self.zero_copy:
            return None
        _, src, dst = jobs[0]
        for (a, b), n in zip(src, shape, strict=True):
            if a != 0 or b != n:
                return None
        view = self.out[box_slices(dst)]
        return view if view.flags.c_contiguous or getattr(self.decoder, "strided_out", False) else None

    def kept_box(self, tile: int, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
        """(y0, y1, x0, x1) of a tile of decoded ``shape`` that a read needs only part of, to decode and keep in
        the cache; None: not kept. The whole tile while the cache has room; when the read knows its future
        (``reuse``), only a tile a later batch needs again, and only the part the batches need of it (of a 2-D
        tile); and the whole tile on the second request of a tile whose key the cache still remembers."""
        if not self.insert:
            return None
        cache, reuse = self.cache, self.reuse
        whole = (0, shape[1], 0, shape[2])
        if reuse is None:
            if cache.has_room(self.level.decoded_tile_nbytes):
                return whole
        else:
            box = reuse.boxes.get(tile % len(reuse.counts))
            if box is not None:
                _, (y0, y1), (x0, x1) = box
                part = (y0, y1, x0, x1) if shape[0] == 1 else whole
                nbytes = shape[0] * (part[1] - part[0]) * (part[3] - part[2]) * shape[3] * self.level.dtype.itemsize
                if cache.has_room(nbytes):
                    return part
        return whole if cache.admit_part(self.cache_key(tile)) else None

    def cache_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """A tile buffer for the cache: for a cache that copies what it is given, this thread's staging memory
        (free again at ``_staging.reset()``, once put); else one an eviction freed, or a new one, to keep."""
        dtype = self.level.dtype
        buf = _staging.take(shape, dtype) if self.cache.copies_on_put else self.cache.take_spare(shape, dtype)
        return buf if buf is not None else decode_buffer(shape, dtype)

    def decode_cropped(self, tile: int, data: bytes | memoryview, jobs: list[TileJob],
                       shape: tuple[int, ...]) -> bool:
        """Decode only the part of a 2-D tile the jobs need (and the part of it to keep, see :meth:`kept_box`)
        and place it; False when they need it whole, when it is decoded whole for the cache, or when the
        decoder declines."""
        if shape != self.decoder.tile_shape or shape[0] != 1:
            return False
        y0, y1, x0, x1 = _union(jobs, shape)
        whole = (0, shape[1], 0, shape[2])
        if (y0, y1, x0, x1) == whole:
            return False
        keep = self.kept_box(tile, shape)
        if keep == whole:
            return False
        if keep is not None:
            y0, y1, x0, x1 = min(y0, keep[0]), max(y1, keep[1]), min(x0, keep[2]), max(x1, keep[3])
        try:
            part = self.decoder.decode_crop(data, y0, y1, x0, x1, _scratch.get(shape, self.level.dtype))
        except CucimLikeError as exc:
            raise DecodeError(exc.message, path=self.path, level=self.level.index,
                              tile=tile_coords(self.level, tile)) from exc
        if part is None:
            return False
        self.place(part, _within(jobs, (y0, x0), part.shape), tile)
        if keep is not None:  # (a cache that copies takes the part from the scratch memory it was decoded into)
            kept = part if self.cache.copies_on_put else self.cache_buffer(part.shape)
            if kept is not part:
                kept[...] = part
            self.cache.put(self.cache_key(tile), kept, (y0, x0))
        return True

    def decode_place(self, tile: int, data: bytes | memoryview, jobs: list[TileJob]) -> None:
        try:
            self._decode_place(tile, data, jobs)
        finally:
            _staging.reset()  # a tile staged for a cache that copies it is put by now, or dropped with an error

    def _decode_place(self, tile: int, data: bytes | memoryview, jobs: list[TileJob]) -> None:
        level = self.level
        shape = level.tile_extent(tile)
        direct = self.direct_target(jobs, shape)
        if direct is None and self.crops and self.decode_cropped(tile, data, jobs, shape):
            return
        if direct is not None:
            buf = direct
        elif self.insert:
            buf = self.cache_buffer(shape)
        else:
            buf = _scratch.get(shape, level.dtype)
        try:
            arr = self.decoder.decode(data, buf)
        except CucimLikeError as exc:
            raise DecodeError(exc.message, path=self.path, level=level.index,
                              tile=tile_coords(level, tile)) from exc
        if direct is None or arr.shape != direct.shape or not np.may_share_memory(arr, direct):
            self.place(arr, jobs, tile)  # decoded elsewhere, or a short tile decoded in place (place raises)
        if self.insert and self.cache is not None:
            key = self.cache_key(tile)
            if direct is None:
                self.cache.put(key, arr)
            elif self.cache.admit_whole(key):  # decoded into the output: copied only when read again
                self.cache.put(key, arr.copy())

    def decode_native(self, items: list[tuple[int, memoryview]], jobs_by_tile: dict[int, list[TileJob]],
                      workers: int) -> list[tuple[int, memoryview]]:
        """Decode and place what the native pool takes of ``items`` ((tile, bytes)) in one call with up to
        ``workers`` threads; returns the items left for the Python path (not for the pool, or failed there)."""
        level, decoder, out = self.level, self.decoder, self.out
        shape = decoder.tile_shape
        _, ty, tx, samples = shape
        base = out.ctypes.data
        sz_, sy_, sx_, _ = out.strides
        jobs: list[tuple] = []
        places: list[tuple] = []
        taken: list[tuple[tuple[int, memoryview], np.ndarray | None]] = []
        rest: list[tuple[int, memoryview]] = []
        keep = []
        insert = self.insert
        for item in items:
            tile, data = item
            first = len(places)
            y0, y1, x0, x1 = ty, 0, tx, 0  # the union of the parts
            for _, ((sz0, _), (sy0, sy1), (sx0, sx1), (sc0, sc1)), ((dz0, _), (dy0, _), (dx0, _), _) in (
                    jobs_by_tile[tile]):
                if sz0 != 0 or sc0 != 0 or sc1 != samples:
                    break
                places.append((base + dz0 * sz_ + dy0 * sy_ + dx0 * sx_, sy_, sy0, sy1, sx0, sx1))
                y0, y1, x0, x1 = min(y0, sy0), max(y1, sy1), min(x0, sx0), max(x1, sx1)
            else:
                full = y0 == 0 and x0 == 0 and y1 == ty and x1 == tx
                stream = decoder.native_stream(data) if level.tile_extent(tile) == shape else None
                if stream is not None:
                    whole = kept = None  # the tile decoded whole into cache memory, or a part copied there
                    box = ((0, ty, 0, tx) if full else self.kept_box(tile, shape)) if insert else None
                    if box == (0, ty, 0, tx):
                        whole = self.cache_buffer(shape)
                    elif box is not None:  # one more place: the part to keep, C-contiguous
                        ky0, ky1, kx0, kx1 = box
                        kept = self.cache_buffer((1, ky1 - ky0, kx1 - kx0, samples))
                        places.append((kept.ctypes.data, (kx1 - kx0) * samples, ky0, ky1, kx0, kx1))
                    jobs.append((native.address(stream), len(stream), first, len(places) - first,
                                 whole.ctypes.data if whole is not None else 0, tx, ty, samples, 0, 0, 0))
                    keep.append(stream)
                    taken.append((item, whole, kept, box))
                    continue
            del places[first:]
            rest.append(item)
        if not taken:
            return rest
        place_arr = np.array(places, dtype=native.PLACE)
        job_arr = np.array(jobs, dtype=native.JOB)
        job_arr["places"] = place_arr.ctypes.data + job_arr["places"] * native.PLACE.itemsize
        try:
            self.pool.run(job_arr, workers)
            status = job_arr["status"].tolist()
            to_cache = []
            for (item, whole, kept, box), st in zip(taken, status, strict=True):
                if st != 0:
                    rest.append(item)
                elif whole is not None:
                    to_cache.append((self.cache_key(item[0]), whole, WHOLE))
                elif kept is not None:  # (the output was placed from elsewhere)
                    to_cache.append((self.cache_key(item[0]), kept, (box[0], box[2])))
            if to_cache:
                self.cache.put_many(to_cache)
        finally:
            _staging.reset()
        return rest

    def read_range(self, rng: ByteRange) -> memoryview:
        reader = self.readers[rng.file_id]
        try:
            if self.zero_copy:
                return reader.view(rng.start, rng.stop, level=self.level.index)
            return memoryview(reader.read(rng.start, rng.stop, level=self.level.index))
        except CucimLikeError as exc:
            if len(rng.tiles) != 1 or exc.tile is not None:
                raise
            raise type(exc)(exc.message, path=exc.path, level=exc.level,
                            tile=tile_coords(self.level, rng.tiles[0])) from exc

    def tile_bytes(self, rng: ByteRange, buf: memoryview, tile: int) -> memoryview:
        start = int(self.offsets[tile]) - rng.start
        return buf[start : start + int(self.lengths[tile])]

    def run_range(self, rng: ByteRange, jobs_by_tile: dict[int, list[TileJob]],
                  cancel: threading.Event | None = None) -> int:
        """Read one coalesced range and decode its tiles; stops between tiles once ``cancel`` is set."""
        buf = self.read_range(rng)
        done = 0
        for tile in rng.tiles:
            if cancel is not None and cancel.is_set():
                break
            self.decode_place(tile, self.tile_bytes(rng, buf, tile), jobs_by_tile[tile])
            done += 1
        return done


def flat_tile_table(level: Level, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The level's (offsets, lengths, file_ids) flattened by tile index; errors of a lazy table name ``path``."""
    try:
        return level.flat_table
    except CucimLikeError as exc:
        raise type(exc)(exc.message, path=exc.path or path, level=level.index, tile=exc.tile) from exc


def check_tile_ranges(level: Level, path: str, readers: Sequence[FileReader], offsets: np.ndarray,
                      lengths: np.ndarray, file_ids: np.ndarray | None, tiles: list[int]) -> None:
    """Refuse tiles whose offset/length lie outside their file or exceed a bounded expansion of the tile."""
    limit = compressed_tile_limit(level.decoded_tile_nbytes)
    if len(tiles) <= _SMALL_REQUEST_TILES:  # plain Python is quicker than NumPy for a handful
        for tile in tiles:
            off, ln = int(offsets[tile]), int(lengths[tile])
            fsize = readers[int(file_ids[tile]) if file_ids is not None else 0].size
            if off < 0 or ln < 0 or off > fsize - ln or ln > limit:
                raise CorruptFileError(
                    f"tile bytes {off}+{ln} lie outside the file or exceed the tile's bounded size",
                    path=path, level=level.index, tile=tile_coords(level, tile),
                )
        return
    t = np.asarray(tiles, dtype=np.int64)
    off = offsets[t]
    ln = lengths[t]
    sizes = np.array([r.size for r in readers], dtype=np.int64)
    fsize = sizes[file_ids[t]] if file_ids is not None else sizes[0]
    bad = (off < 0) | (ln < 0) | (off > fsize - ln) | (ln > limit)
    if bad.any():
        i = int(np.argmax(bad))
        raise CorruptFileError(
            f"tile bytes {int(off[i])}+{int(ln[i])} lie outside the file or exceed the tile's bounded size",
            path=path, level=level.index, tile=tile_coords(level, int(t[i])),
        )


def execute(
    plan: Plan,
    level: Level,
    out: np.ndarray,
    *,
    path: str,
    readers: Sequence[FileReader],
    file_keys: Sequence[object],
    fill: float,
    workers: int,
    cache: TileCache | None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    reuse: TileUses | None = None,
) -> np.ndarray:
    """Run ``plan`` on the CPU into ``out`` (shape ``plan.out_shape``, the level's dtype); returns ``out``.

    When ``cancel`` is set, remaining tiles are skipped (the output is then incomplete; the caller knows).
    ``reuse`` (a batch iterator's :class:`cucim_like.plan.TileUses`): tiles needed by one batch only are not
    kept just because the cache has room, and of the others only the part the batches need.
    """
    for box in plan.fills:
        out[box_slices(box)] = fill
    jobs_by_tile: dict[int, list[TileJob]] = defaultdict(list)
    for job in plan.jobs:
        jobs_by_tile[job.tile].append(job)
    tiles = list(jobs_by_tile)
    insert = cache is not None and len(tiles) * level.decoded_tile_nbytes <= cache.memory_capacity // 2
    state = _Read(path, readers, level, out, cache, file_keys, insert, reuse)
    if state.store is not None:
        return _execute_chunks(state, jobs_by_tile, tiles, fill, workers, progress, cancel)

    todo: list[int] = []
    for tile in tiles:
        if state.lengths[tile] == 0:  # sparse file: missing tile
            for job in jobs_by_tile[tile]:
                out[box_slices(job.dst)] = fill
        else:
            todo.append(tile)
    if cache is not None and todo:
        todo = state.place_cached(todo, jobs_by_tile)
    if progress is not None and len(todo) < len(tiles):
        progress(len(tiles) - len(todo))
    if not todo:
        return out
    check_tile_ranges(level, path, readers, state.offsets, state.lengths, state.file_ids, todo)

    if len(todo) <= _SMALL_REQUEST_TILES:
        lengths = state.lengths
        total = 0
        for t in todo:
            total += int(lengths[t])
    else:
        total = int(state.lengths[np.asarray(todo)].sum())
    workers = max(1, min(workers, len(todo)))
    max_size = int(min(4 << 20, max(256 << 10, total // (4 * workers))))
    ranges = coalesce_ranges(todo, state.offsets, state.lengths, state.file_ids, max_size=max_size)

    def decode_one(item: tuple) -> int:
        tile, data = item
        state.decode_place(tile, data, jobs_by_tile[tile])
        return 1

    if state.pool is not None:
        _execute_native(state, ranges, max_size, jobs_by_tile, workers, decode_one, progress, cancel)
    elif len(todo) <= _SMALL_REQUEST_TILES and len(ranges) < 2 * workers:
        # Few reads: fetch inline, then decode every tile as its own work item.
        items: list[tuple] = []
        for rng in ranges:
            buf = state.read_range(rng)
            for tile in rng.tiles:
                items.append((tile, state.tile_bytes(rng, buf, tile)))
        parallel_for(items, decode_one, workers, progress, cancel)
    else:
        parallel_for(ranges, lambda rng: state.run_range(rng, jobs_by_tile, cancel), workers, progress, cancel)
    return out


def _execute_native(state: _Read, ranges: list[ByteRange], group_bytes: int, jobs_by_tile: dict[int, list[TileJob]],
                    workers: int, decode_one: Callable[[object], int], progress: Progress | None,
                    cancel: threading.Event | None) -> None:
    """Read the ranges in groups of about ``group_bytes`` (the coalescing limit: a quarter of the request's
    bytes per thread, 256 KiB to 4 MiB) and hand each group's tiles to the native pool in one call; tiles it
    leaves (not for it, or failed there) go through the Python path, group by group. The compressed bytes held
    at once stay as bounded as on the Python path, where each thread holds one coalesced read."""
    group: list[ByteRange] = []
    size = 0
    for i, rng in enumerate(ranges):
        group.append(rng)
        size += rng.stop - rng.start
        if size < group_bytes and i + 1 < len(ranges):
            continue
        if cancel is not None and cancel.is_set():
            return
        items: list[tuple] = []
        for r in group:
            buf = state.read_range(r)
            for tile in r.tiles:
                items.append((tile, state.tile_bytes(r, buf, tile)))
        left = state.decode_native(items, jobs_by_tile, workers)
        if progress is not None and len(left) < len(items):
            progress(len(items) - len(left))
        if left:
            parallel_for(left, decode_one, workers, progress, cancel)
        group, size = [], 0


def _execute_chunks(state: _Read, jobs_by_tile: dict[int, list[TileJob]], tiles: list[int], fill: float,
                    workers: int, progress: Progress | None, cancel: threading.Event | None) -> np.ndarray:
    """Tiles kept under keys (chunk files, shards): each work item fetches one chunk from the level's store,
    decodes and places it. A chunk the store does not have is ``fill`` (the store raises instead when the
    user asked for ``missing="raise"``)."""
    out, level = state.out, state.level
    todo = state.place_cached(tiles, jobs_by_tile) if state.cache is not None else tiles
    if progress is not None and len(todo) < len(tiles):
        progress(len(tiles) - len(todo))

    def fetch_decode(tile: int) -> int:
        try:
            data = state.store.get(tile)
        except CucimLikeError as exc:
            raise type(exc)(exc.message, path=exc.path or state.path, level=level.index,
                            tile=tile_coords(level, tile)) from exc
        if data is None:
            for job in jobs_by_tile[tile]:
                out[box_slices(job.dst)] = fill
        else:
            state.decode_place(tile, data, jobs_by_tile[tile])
        return 1

    parallel_for(todo, fetch_decode, max(1, min(workers, len(todo))), progress, cancel)
    return out


def parallel_for(items: Sequence, fn: Callable[[object], int], workers: int, progress: Progress | None,
                 cancel: threading.Event | None = None) -> None:
    """Call ``fn`` on every item with ``workers`` threads: the caller plus ``workers - 1`` pool threads, all
    taking the next item from a shared cursor (one item in flight per thread bounds memory). ``fn`` returns
    the tiles it finished, passed to ``progress`` from the thread that did them. The first error stops the
    remaining items; it is raised once every thread has returned, so nothing writes to the output after."""
    lock = threading.Lock()
    cursor = iter(items)
    errors: list[BaseException] = []

    def work() -> None:
        while True:
            with lock:
                if errors or (cancel is not None and cancel.is_set()):
                    return
                item = next(cursor, _DONE)
            if item is _DONE:
                return
            try:
                done = fn(item)
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                return
            if progress is not None:
                progress(done)

    helpers = min(workers, len(items)) - 1
    pool = thread_pool(helpers) if helpers > 0 else None
    futures = [pool.submit(work) for _ in range(helpers)] if pool is not None else []
    try:
        work()
    finally:
        for fut in futures:
            if not fut.cancel():  # a helper that never started has nothing left to do
                fut.result()
    if errors:
        raise errors[0]


_DONE = object()
