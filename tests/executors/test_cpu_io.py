"""The CPU executor's file I/O: reads bounded by the coalescing limit (never the whole file), region reads that
fetch only their tiles' bytes, adjacent tiles fetched together, and long-lived thread pools.

The fixture is a 1024 x 1024 RGB TIFF of 64 x 64 deflate tiles (256 tiles) of random pixels, so every tile is
about 12 KiB and the file about 3 MiB. Which bytes each tile occupies comes from tifffile (independent of
cucim_like); the reads cucim_like makes are recorded by wrapping ``FileReader.read`` and ``FileReader.view``,
and the coalescing limit the executor uses is recorded where it passes it to ``coalesce_ranges``.
"""

from __future__ import annotations

import inspect
import itertools
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

import cucim_like.executors.cpu as cpu
from cucim_like import CuImage
from cucim_like.executors.pool import thread_pool
from cucim_like.fileio import FileReader
from cucim_like.plan import coalesce_ranges

SIZE, TILE = 1024, 64
GRID = SIZE // TILE  # 16 x 16 tiles
# coalesce_ranges' own bounds: the executor passes a smaller max_size per request, never a larger one
_DEFAULTS = inspect.signature(coalesce_ranges).parameters
MAX_GAP = _DEFAULTS["max_gap"].default
MAX_SIZE_CAP = _DEFAULTS["max_size"].default


@dataclass(frozen=True)
class TiledFile:
    path: Path
    source: np.ndarray  # the pixels (y, x, c)
    offsets: np.ndarray  # tifffile's TileOffsets, row-major
    counts: np.ndarray  # tifffile's TileByteCounts
    size: int  # of the file, in bytes


@pytest.fixture(scope="module")
def tiled_file(tmp_path_factory) -> TiledFile:
    """The 16 x 16-tile deflate RGB TIFF."""
    rng = np.random.default_rng(1234)
    source = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("cpu_io") / "tiles.tif"
    tifffile.imwrite(path, source, tile=(TILE, TILE), photometric="rgb", compression="zlib", metadata=None)
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        assert page.is_tiled and int(page.compression) == 8
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        ref = page.asarray()
    np.testing.assert_array_equal(ref, source)
    assert len(offsets) == GRID * GRID
    size = path.stat().st_size
    assert size > 3_000_000  # random pixels do not compress: a few MB
    # tifffile writes the tiles one after the other in row-major order
    np.testing.assert_array_equal(offsets[1:], offsets[:-1] + counts[:-1])
    return TiledFile(path, source, offsets, counts, size)


class ReadLog:
    """Every (start, stop) of FileReader.read/.view, and the max_size of every coalesce_ranges call."""

    def __init__(self, monkeypatch) -> None:
        self.reads: list[tuple[int, int]] = []
        self.max_sizes: list[int] = []
        self._lock = threading.Lock()
        read, view = FileReader.read, FileReader.view

        def logged(fn):
            def wrapper(reader, start, stop, **kwargs):
                with self._lock:
                    self.reads.append((int(start), int(stop)))
                return fn(reader, start, stop, **kwargs)
            return wrapper

        def coalesce(*args, **kwargs):
            with self._lock:
                self.max_sizes.append(int(kwargs.get("max_size", MAX_SIZE_CAP)))
            return coalesce_ranges(*args, **kwargs)

        monkeypatch.setattr(FileReader, "read", logged(read))
        monkeypatch.setattr(FileReader, "view", logged(view))
        monkeypatch.setattr(cpu, "coalesce_ranges", coalesce)

    def clear(self) -> None:
        self.reads.clear()
        self.max_sizes.clear()

    @property
    def nbytes(self) -> int:
        return sum(stop - start for start, stop in self.reads)


def tiles_of(x: int, y: int, w: int, h: int) -> list[int]:
    """Flat indices (row-major) of the tiles a level-0 region inside the image touches."""
    return [ty * GRID + tx for ty in range(y // TILE, (y + h - 1) // TILE + 1)
            for tx in range(x // TILE, (x + w - 1) // TILE + 1)]


def covering_reads(reads: list[tuple[int, int]], start: int, stop: int) -> int:
    """How many recorded reads hold all of bytes [start, stop)."""
    return sum(1 for a, b in reads if a <= start and stop <= b)


@pytest.fixture
def log(monkeypatch):
    CuImage.cache("no_cache")  # every read_region goes to the file (conftest restores the default cache)
    return ReadLog(monkeypatch)


# -- (a) no whole-file reads -------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [1, 2])
def test_region_reads_only_its_tiles(tiled_file, log, num_workers):
    f = tiled_file
    x, y, w, h = 100, 70, 150, 90  # tiles (1..3, 1..2): six tiles, in two runs of three adjacent in the file
    img = CuImage(f.path)
    log.clear()
    got = img.read_region((x, y), (w, h), num_workers=num_workers)
    np.testing.assert_array_equal(got, f.source[y : y + h, x : x + w])
    need = tiles_of(x, y, w, h)
    assert len(need) == 6
    needed = int(f.counts[need].sum())
    assert log.reads, "no read went through FileReader"
    for t in need:  # every tile's bytes were fetched, once
        assert covering_reads(log.reads, int(f.offsets[t]), int(f.offsets[t] + f.counts[t])) == 1, f"tile {t}"
    # the two runs are more than max_gap apart in the file, so nothing between them is read
    assert f.offsets[need[3]] - (f.offsets[need[2]] + f.counts[need[2]]) > MAX_GAP
    assert log.nbytes == needed, f"read {log.nbytes} bytes for {needed} bytes of tiles (file: {f.size})"
    assert max(stop - start for start, stop in log.reads) < f.size // 50


@pytest.mark.parametrize("num_workers", [1, 2])
def test_whole_level_reads_are_bounded_and_coalesced(tiled_file, log, num_workers):
    f = tiled_file
    img = CuImage(f.path)
    log.clear()
    np.testing.assert_array_equal(img.read_region(num_workers=num_workers), f.source)
    assert len(log.max_sizes) == 1
    max_size = log.max_sizes[0]
    assert max_size <= MAX_SIZE_CAP
    largest = max(stop - start for start, stop in log.reads)
    assert largest <= max_size, f"a read of {largest} bytes exceeds the coalescing limit {max_size}"
    assert largest < f.size // 2, f"a read of {largest} bytes of a {f.size}-byte file"
    # every tile fetched exactly once, and nothing else: the tiles fill the file's data section without gaps
    for t in range(GRID * GRID):
        assert covering_reads(log.reads, int(f.offsets[t]), int(f.offsets[t] + f.counts[t])) == 1, f"tile {t}"
    assert log.nbytes == int(f.counts.sum())
    # and coalesced: as few reads as the limit allows (give or take one per read for tiles that do not fit
    # exactly)
    ntiles = GRID * GRID
    assert len(log.reads) < ntiles // 8, f"{len(log.reads)} reads for {ntiles} adjacent tiles"
    assert len(log.reads) >= -(-int(f.counts.sum()) // max_size)
    assert len(log.reads) <= 2 * -(-int(f.counts.sum()) // max_size)


# -- (c) coalescing ----------------------------------------------------------------------------------------------
def test_row_of_tiles_is_one_read(tiled_file, log):
    """A region one tile row high and the level wide: 16 tiles adjacent in the file, fetched by one read."""
    f = tiled_file
    img = CuImage(f.path)
    log.clear()
    got = img.read_region((0, 5 * TILE + 3), (SIZE, 40), num_workers=1)
    np.testing.assert_array_equal(got, f.source[5 * TILE + 3 : 5 * TILE + 43])
    need = tiles_of(0, 5 * TILE + 3, SIZE, 40)
    assert len(need) == GRID
    assert log.reads == [(int(f.offsets[need[0]]), int(f.offsets[need[-1]] + f.counts[need[-1]]))]


def test_block_of_tiles_is_one_read_per_row(tiled_file, log):
    """A 4 x 4-tile block: each row's four tiles are adjacent (one read); rows are twelve tiles (more than
    max_gap) apart, so the gaps are not read."""
    f = tiled_file
    img = CuImage(f.path)
    log.clear()
    x, y = 3 * TILE, 6 * TILE
    got = img.read_region((x, y), (4 * TILE, 4 * TILE), num_workers=1)
    np.testing.assert_array_equal(got, f.source[y : y + 4 * TILE, x : x + 4 * TILE])
    rows = [tiles_of(x, y + r * TILE, 4 * TILE, TILE) for r in range(4)]
    want = [(int(f.offsets[row[0]]), int(f.offsets[row[-1]] + f.counts[row[-1]])) for row in rows]
    assert all(b2 - e1 > MAX_GAP for (_, e1), (b2, _) in itertools.pairwise(want))
    assert sorted(log.reads) == want


# -- (b) thread pools are kept ------------------------------------------------------------------------------------
def pool_threads(workers: int) -> list[threading.Thread]:
    """Live threads named as the decode pool of ``workers`` threads names them (a re-created pool reuses the
    names, so more than ``workers`` of them means a pool was re-created while the old one's threads live)."""
    return [t for t in threading.enumerate() if t.name.startswith(f"cucim_like-decode-{workers}_")]


def test_thread_pools_are_reused(tiled_file, log, monkeypatch):
    f = tiled_file
    img = CuImage(f.path)
    workers_seen: set[threading.Thread] = set()
    decode_place = cpu._Read.decode_place

    def recording(self, tile, data, jobs):
        workers_seen.add(threading.current_thread())  # holding the Thread object: no identity is reused
        return decode_place(self, tile, data, jobs)

    monkeypatch.setattr(cpu._Read, "decode_place", recording)
    regions = [((100, 70), (150, 90)), ((0, 0), (SIZE, SIZE)), ((500, 300), (200, 200)), ((960, 960), (64, 64))]
    for n in (2, 3):  # warm up: the pools of one and two helpers and their threads exist from here on
        img.read_region(*regions[0], num_workers=n)
    pools = {1: thread_pool(1), 2: thread_pool(2)}
    threads = threading.active_count()
    # a ThreadPoolExecutor starts its threads lazily: the two pools may still add up to 1 + 2 minus those running
    allowance = sum(k - len(pool_threads(k)) for k in (1, 2))
    counts_seen = []
    for i in range(40):
        (x, y), (w, h) = regions[i % len(regions)]
        n = 2 + i % 2
        got = img.read_region((x, y), (w, h), num_workers=n)
        if i < len(regions) * 2:
            np.testing.assert_array_equal(got, f.source[y : y + h, x : x + w])
        assert thread_pool(1) is pools[1]
        assert thread_pool(2) is pools[2]
        counts_seen.append(threading.active_count())
    assert max(counts_seen) <= threads + allowance, f"threads grew from {threads}: {counts_seen}"
    assert len(pool_threads(1)) <= 1 and len(pool_threads(2)) <= 2, [t.name for t in threading.enumerate()]
    helpers = {t for t in workers_seen if t is not threading.main_thread()}
    names = sorted(t.name for t in helpers)
    # the helpers did decode (the test is not vacuous), and they are the pools' three threads, not new ones
    assert helpers, "no pool thread decoded a tile"
    assert len(helpers) <= 3, f"{len(helpers)} distinct helper threads: {names}"
    assert all(name.startswith("cucim_like-decode-") for name in names), names


def test_staging_hands_out_disjoint_aligned_arrays_within_its_limit(monkeypatch):
    """Tiles staged for a cache that copies them: distinct memory until reset, aligned as decode buffers,
    nothing past the limit (the caller then allocates)."""
    monkeypatch.setattr(cpu, "_STAGING_CHUNK", 1 << 16)
    monkeypatch.setattr(cpu, "_STAGING_MAX", 1 << 18)
    staging = cpu._Staging()
    u8 = np.dtype(np.uint8)
    got = []
    while (arr := staging.take((1, 50, 70, 3), u8)) is not None:
        arr[...] = len(got)
        got.append(arr)
    assert (1 << 17) <= len(got) * 50 * 70 * 3 <= (1 << 18)  # the limit holds, and little of it is wasted
    assert all(a.ctypes.data % 64 == 16 and a.flags.c_contiguous for a in got)
    assert all((a == i).all() for i, a in enumerate(got))  # none overwrote another
    staging.reset()
    assert staging.take((1, 50, 70, 3), u8) is not None
    assert staging.take((1, 1 << 10, 1 << 10, 3), u8) is None  # one tile past the limit
