"""The CUDA executor: the CPU executor's plans, run as fetch -> batch decode -> one placement launch per wave.

1. Tiles already in the device cache become slots at once; missing tiles (byte count 0, absent chunks) and
   the plan's out-of-level boxes become fill boxes.
2. The rest go in waves of at most ``wave_tiles`` tiles (bounding device memory for a whole-level read):
   the wave's coalesced ranges are read (kvikio on the GPU), each tile's stream is prepared and checked, and
   nvImageCodec decodes the wave in one call per decode-parameter group. Tiles it does not take (other
   codecs, 12-bit/lossless JPEG, chunk stores) or could not decode are decoded by the CPU decoders on the
   thread pool and uploaded; a tile that fails there too is a DecodeError naming it.
3. One placement launch per wave copies every job's box into the output, converting colour and applying
   the output transform on the way.

With ``roi=True`` (patch batches), a tile used by a single job is decoded only over that job's box.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..cache import TileCache
from ..codecs import get_decoder
from ..errors import CucimLikeError, DecodeError
from ..executors.cpu import check_tile_ranges, flat_tile_table, parallel_for, tile_coords
from ..fileio import FileReader
from ..formats.base import Level
from ..plan import Plan, TileJob, coalesce_ranges
from .nvdecode import PreparedStream, decode_batch, gpu_decodable, prepare_stream
from .placement import ResolvedTransform, fill_table, job_table

_NO_JOBS = np.empty((0, 13), np.int32)
_NO_FILLS = np.empty((0, 8), np.int32)


class CachedTile:
    """A decoded tile in the device cache and whether its samples are still YCbCr (JPEG 2000 33003)."""

    __slots__ = ("arr", "nbytes", "ycbcr")

    def __init__(self, arr: Any, ycbcr: bool) -> None:
        self.arr, self.ycbcr, self.nbytes = arr, ycbcr, int(arr.nbytes)


class _Wave:
    """Decoded tiles of one wave: slot arrays, their jobs, and whether their samples are still YCbCr."""

    def __init__(self) -> None:
        self.slots: list[Any] = []
        self.jobs: dict[bool, list[TileJob]] = defaultdict(list)  # ycbcr -> jobs (tile field = slot index)

    def add(self, arr: Any, jobs: Sequence[TileJob], ycbcr: bool, origin: tuple[int, int] = (0, 0)) -> None:
        slot = len(self.slots)
        self.slots.append(arr)
        oy, ox = origin
        for _, src, dst in jobs:
            (sz0, sz1), (sy0, sy1), (sx0, sx1), c = src
            self.jobs[ycbcr].append(TileJob(slot, ((sz0, sz1), (sy0 - oy, sy1 - oy), (sx0 - ox, sx1 - ox), c), dst))


class CudaRead:
    """One executed plan on a backend (see module docstring)."""

    def __init__(self, plan: Plan, level: Level, *, path: str, readers: Sequence[FileReader],
                 file_keys: Sequence[object], fill: float, transform: ResolvedTransform, backend: Any,
                 cache: TileCache | None, workers: int, roi: bool = False, zdiv: int = 1,
                 wave_tiles: int | None = None, progress: Callable[[int], None] | None = None) -> None:
        self.plan, self.level, self.path, self.readers = plan, level, path, readers
        self.file_keys, self.fill, self.transform, self.backend = file_keys, fill, transform, backend
        self.cache, self.workers, self.roi, self.zdiv = cache, workers, roi, zdiv
        from . import OPTIONS

        self.wave_tiles = int(wave_tiles or OPTIONS["wave_tiles"])
        self.progress = progress
        self.store = level.chunk_store
        self.file_ids = None
        if self.store is None:
            self.offsets, self.lengths, self.file_ids = flat_tile_table(level, path)
        self.gpu = gpu_decodable(level)

    # -- helpers ---------------------------------------------------------------------------------------------
    def coords(self, tile: int) -> tuple[int, ...]:
        return tile_coords(self.level, tile)

    def cache_key(self, tile: int) -> tuple:
        fid = int(self.file_ids[tile]) if self.file_ids is not None else 0
        return ("device", self.file_keys[fid], self.level.index, self.level.variant, tile)

    def cpu_decode(self, tile: int, data: bytes | memoryview | None) -> np.ndarray:
        level = self.level
        buf = np.empty(level.tile_extent(tile), level.dtype)
        try:
            return get_decoder(level).decode(data, buf)
        except CucimLikeError as exc:
            raise DecodeError(exc.message, path=self.path, level=level.index, tile=self.coords(tile)) from exc

    def check_rows(self, arr: Any, jobs: Sequence[TileJob], tile: int, origin: tuple[int, int]) -> None:
        rows = arr.shape[1] + origin[0]
        for _, src, _ in jobs:
            if src[1][1] > rows:
                raise DecodeError(f"tile holds {rows} rows, {src[1][1]} are needed", path=self.path,
                                  level=self.level.index, tile=self.coords(tile))

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self) -> Any:
        self.out = self.backend.empty(self.transform.out_shape(self.plan.out_shape, self.zdiv),
                                      self.transform.dtype)
        jobs_by_tile: dict[int, list[TileJob]] = defaultdict(list)
        for job in self.plan.jobs:
            jobs_by_tile[job.tile].append(job)
        fills = list(self.plan.fills)
        cached = _Wave()
        todo: list[int] = []
        for tile, jobs in jobs_by_tile.items():
            if self.store is None and self.lengths[tile] == 0:
                fills.extend(job.dst for job in jobs)
                continue
            hit = self.cache.get(self.cache_key(tile)) if self.cache is not None else None
            if hit is not None:
                cached.add(hit.arr, jobs, hit.ycbcr)
            else:
                todo.append(tile)
        if self.store is None:
            check_tile_ranges(self.level, self.path, self.readers, self.offsets, self.lengths, self.file_ids, todo)
        self.place(cached, fill_table(fills) if fills else _NO_FILLS)
        # The placement kernel reads a wave's tiles after place() returns: each wave (the cached one too: the
        # cache may evict its tiles meanwhile) stays referenced until its work is done, checked before the
        # wave after next is placed, and at the end.
        in_flight: list[tuple[Any, _Wave]] = [(self.backend.fence(), cached)]
        if self.progress is not None and len(todo) < len(jobs_by_tile):
            self.progress(len(jobs_by_tile) - len(todo))
        insert = self.cache is not None and len(todo) * self.level.decoded_tile_nbytes <= self.cache.memory_capacity
        waves = [todo[i : i + self.wave_tiles] for i in range(0, len(todo), self.wave_tiles)]
        # the next wave's bytes are read while this one decodes and places (one wave ahead: bounded memory)
        pending = _prefetch_pool().submit(self.fetch, waves[0]) if waves else None
        try:
            for i, tiles in enumerate(waves):
                data = pending.result()
                pending = _prefetch_pool().submit(self.fetch, waves[i + 1]) if i + 1 < len(waves) else None
                wave = self.decode_wave(tiles, data, jobs_by_tile, insert)
                if len(in_flight) == 2:
                    self.backend.wait(in_flight.pop(0)[0])
                self.place(wave, _NO_FILLS)
                in_flight.append((self.backend.fence(), wave))
                if self.progress is not None:
                    self.progress(len(tiles))
        finally:
            if pending is not None:
                pending.cancel() or pending.exception()  # an abandoned read finishes before the call returns
            for fence, _ in in_flight:
                self.backend.wait(fence)
        return self.out

    def place(self, wave: _Wave, fills: np.ndarray) -> None:
        groups = [(ycbcr, jobs) for ycbcr, jobs in wave.jobs.items() if jobs]
        if not groups and len(fills):
            groups = [(False, [])]
        for i, (ycbcr, jobs) in enumerate(groups):
            table = job_table(jobs) if jobs else _NO_JOBS
            self.backend.place(wave.slots, table, fills if i == 0 else _NO_FILLS, self.out, self.fill,
                               self.transform, ycbcr, self.zdiv)

    def fetch(self, tiles: list[int]) -> dict[int, bytes | memoryview | None]:
        """Compressed bytes of ``tiles`` (None: a chunk the store does not have)."""
        if self.store is not None:
            data: dict[int, bytes | memoryview | None] = {}
            for tile in tiles:
                try:
                    data[tile] = self.store.get(tile)
                except CucimLikeError as exc:
                    raise type(exc)(exc.message, path=exc.path or self.path, level=self.level.index,
                                    tile=self.coords(tile)) from exc
            return data
        ranges = coalesce_ranges(tiles, self.offsets, self.lengths, self.file_ids)
        views = self.backend.read_ranges(self.readers, ranges, self.level.index)
        data = {}
        for rng, buf in zip(ranges, views, strict=True):
            for tile in rng.tiles:
                start = int(self.offsets[tile]) - rng.start
                data[tile] = buf[start : start + int(self.lengths[tile])]
        return data

    def region_of(self, jobs: list[TileJob], tile: int) -> tuple[int, int, int, int] | None:
        """(y0, x0, y1, x1) to decode when only one job's part of the tile is needed (``roi``)."""
        if not self.roi or len(jobs) != 1:
            return None
        _, (_, (y0, y1), (x0, x1), _), _ = jobs[0]
        _, ty, tx, _ = self.level.tile_extent(tile)
        return None if (y0, x0, y1, x1) == (0, 0, ty, tx) else (y0, x0, y1, x1)

    def decode_wave(self, tiles: list[int], data: dict[int, bytes | memoryview | None],
                    jobs_by_tile: dict[int, list[TileJob]], insert: bool) -> _Wave:
        wave = _Wave()
        cpu_tiles: list[int] = []
        groups: dict[Any, list[tuple[int, PreparedStream]]] = defaultdict(list)
        for tile in tiles:
            raw = data[tile]
            if raw is None:  # absent chunk: the store already said fill is wanted
                continue
            stream = None
            if self.gpu:
                try:
                    stream = prepare_stream(self.level, raw)
                except CucimLikeError as exc:
                    raise DecodeError(exc.message, path=self.path, level=self.level.index,
                                      tile=self.coords(tile)) from exc
            if stream is None:
                cpu_tiles.append(tile)
            else:
                groups[stream.params].append((tile, stream))
        for params, members in groups.items():
            regions = [self.region_of(jobs_by_tile[t], t) for t, _ in members]
            images = decode_batch([s for _, s in members], regions if any(regions) else None,
                                  backend=self.backend.decoder, device_id=self.backend.device_id,
                                  cuda_stream=self.backend.cuda_stream)
            for (tile, _), image, region in zip(members, images, regions, strict=True):
                if image is None:  # nvImageCodec could not: the CPU decoder decodes it or names the damage
                    cpu_tiles.append(tile)
                    continue
                arr = self.backend.from_image(image)
                origin = (region[0], region[1]) if region is not None else (0, 0)
                self.check_rows(arr, jobs_by_tile[tile], tile, origin)
                wave.add(arr, jobs_by_tile[tile], params.ycbcr, origin)
                if insert and region is None:
                    self.cache.put(self.cache_key(tile), CachedTile(arr, params.ycbcr))
        absent = [job.dst for t in tiles if data[t] is None for job in jobs_by_tile[t]]
        if absent:
            self.place(_Wave(), fill_table(absent))
        if cpu_tiles:
            decoded: dict[int, np.ndarray] = {}

            def decode_one(tile: int) -> int:
                decoded[tile] = self.cpu_decode(tile, data[tile])
                return 1

            parallel_for(cpu_tiles, decode_one, max(1, min(self.workers, len(cpu_tiles))), None)
            for tile in cpu_tiles:
                arr = self.backend.upload(decoded[tile])
                self.check_rows(arr, jobs_by_tile[tile], tile, (0, 0))
                wave.add(arr, jobs_by_tile[tile], False)
                if insert:
                    self.cache.put(self.cache_key(tile), CachedTile(arr, False))
        return wave


_prefetch: list[ThreadPoolExecutor] = []
_prefetch_lock = threading.Lock()


def _prefetch_pool() -> ThreadPoolExecutor:
    """The threads that read the next wave's bytes (kvikio splits each read further on its own pool)."""
    with _prefetch_lock:
        if not _prefetch:
            _prefetch.append(ThreadPoolExecutor(max_workers=4, thread_name_prefix="cucim_like-cuda-io"))
        return _prefetch[0]


def execute(plan: Plan, level: Level, **kwargs: Any) -> Any:
    """Run ``plan`` on ``kwargs["backend"]``; returns the output array in the transform's layout and dtype
    (shape ``transform.out_shape(plan.out_shape, zdiv)``), on the backend's device."""
    read = CudaRead(plan, level, **kwargs)
    with read.backend.activate():
        return read.run()
