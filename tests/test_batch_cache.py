"""Batch iterators and the tile cache: what a first pass keeps, and the shared-memory cache's tiles decoded in
place. Pixels are compared with tifffile's decoding of the same JPEG TIFF."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cucim_like import CuImage
from cucim_like.cache import TilePart
from cucim_like.errors import CucimLikeError
from cucim_like.executors import cpu, native
from cucim_like.shm_cache import SharedMemoryCache
from tests.formats import tiff_fixtures as tfx

TILE = (64, 96)  # (h, w): 18432 bytes decoded
TILE_BYTES = TILE[0] * TILE[1] * 3
MiB = 2**20


@pytest.fixture(params=["native pool", "python"])
def decode_path(request, monkeypatch):
    """Which way JPEG tiles are decoded: the native tile pool (skipped where it is not built) or Python."""
    if request.param == "python":
        monkeypatch.setattr(native, "tile_pool", lambda: None)
    elif native.tile_pool() is None:
        pytest.skip("the native tile pool is not built here")
    return request.param


@pytest.fixture(scope="module")
def jpeg_slide(tmp_path_factory):
    image = tfx.make_image(384, 576, 3, "uint8", seed=11)  # 6 x 6 tiles
    path = tmp_path_factory.mktemp("batch_cache") / "j.tif"
    tifffile.imwrite(path, image, tile=TILE, compression="jpeg", photometric="rgb")
    return path, tifffile.imread(path)


def _in_tile(ty: int, tx: int, dy: int = 8, dx: int = 8) -> tuple[int, int]:
    """(x, y) of a 32 x 32 patch inside tile (ty, tx): it touches that tile only, and only part of it."""
    return tx * TILE[1] + dx, ty * TILE[0] + dy


# batches of two patches; tiles (0, 0) and (1, 1) are needed by two batches each, five others by one
_LOCATIONS = [_in_tile(0, 0), _in_tile(0, 1), _in_tile(1, 1), _in_tile(2, 2),
              _in_tile(0, 0, 20, 30), _in_tile(3, 3), _in_tile(1, 1, 16, 40), _in_tile(4, 4), _in_tile(5, 5)]


def _read_all(path, locations, batch_size=2):
    img = CuImage(path)
    return np.concatenate(list(img.read_region(locations, (32, 32), batch_size=batch_size, num_workers=1)))


def _expected(ref, locations):
    return np.stack([ref[y:y + 32, x:x + 32] for x, y in locations])


@pytest.mark.parametrize("kind", ["per_process", "shared_memory"])
def test_a_first_pass_keeps_only_tiles_a_later_batch_needs_when_not_all_fit(jpeg_slide, kind):
    path, ref = jpeg_slide
    cache = CuImage.cache(kind, memory_capacity=5 * TILE_BYTES / MiB)  # 5 of the 7 tiles touched
    try:
        np.testing.assert_array_equal(_read_all(path, _LOCATIONS), _expected(ref, _LOCATIONS))
        assert cache.size == 2  # tiles (0, 0) and (1, 1), kept at their first batch
        assert cache.hit_count == 2  # and found by their second
    finally:
        CuImage.cache("no_cache")


@pytest.mark.parametrize("kind", ["per_process", "shared_memory"])
def test_of_a_tile_a_later_batch_needs_only_the_part_the_patches_need_is_kept(jpeg_slide, kind, decode_path):
    path, ref = jpeg_slide
    cache = CuImage.cache(kind, memory_capacity=5 * TILE_BYTES / MiB)  # 5 of the 7 tiles touched
    try:
        first = _read_all(path, _LOCATIONS)
        # tile (0, 0): patches at rows 8-40 x columns 8-40 and rows 20-52 x columns 30-62 of it; tile (1, 1):
        # rows 8-40 x columns 8-40 and rows 16-48 x columns 40-72
        assert cache.size == 2 and cache.memory_size == (44 * 54 + 40 * 64) * 3
        img = CuImage(path)
        part = cache.get(cache_key(img, 0))
        assert isinstance(part, TilePart) and part.origin == (8, 8) and part.arr.shape == (1, 44, 54, 3)
        np.testing.assert_array_equal(part.arr[0], ref[8:52, 8:62])
        part = cache.get(cache_key(img, 7))  # tile (1, 1) of a 6-tile-wide grid
        assert isinstance(part, TilePart) and part.origin == (8, 8)
        np.testing.assert_array_equal(part.arr[0], ref[TILE[0] + 8:TILE[0] + 48, TILE[1] + 8:TILE[1] + 72])
        hits = cache.hit_count
        again = _read_all(path, _LOCATIONS)  # the same patches again: both parts serve all four of theirs
        assert cache.hit_count == hits + 4
        np.testing.assert_array_equal(first, _expected(ref, _LOCATIONS))
        np.testing.assert_array_equal(again, first)
        misses = cache.miss_count
        out = img.read_region((0, 0), (32, 32), num_workers=1)  # rows 0-32 of tile (0, 0): not in its part
        np.testing.assert_array_equal(out, ref[:32, :32])
        assert cache.miss_count == misses + 1
    finally:
        CuImage.cache("no_cache")


@pytest.mark.parametrize("kind", ["per_process", "shared_memory"])
def test_a_first_pass_keeps_every_tile_when_all_fit(jpeg_slide, kind):
    path, ref = jpeg_slide
    cache = CuImage.cache(kind, memory_capacity=8 * TILE_BYTES / MiB)
    try:
        first = _read_all(path, _LOCATIONS)
        assert cache.size == 7 and cache.hit_count == 2
        again = _read_all(path, _LOCATIONS)  # a second pass: every tile from the cache
        assert (cache.hit_count, cache.miss_count) == (2 + 9, 7)  # all 9 look-ups of the batches hit
        np.testing.assert_array_equal(first, _expected(ref, _LOCATIONS))
        np.testing.assert_array_equal(again, first)
    finally:
        CuImage.cache("no_cache")


def test_single_reads_keep_partial_tiles_while_the_cache_has_room(jpeg_slide):
    path, ref = jpeg_slide
    cache = CuImage.cache("per_process", memory_capacity=5 * TILE_BYTES / MiB)
    try:
        img = CuImage(path)
        for x, y in _LOCATIONS[:3]:  # no future known: kept while there is room, as before
            np.testing.assert_array_equal(img.read_region((x, y), (32, 32), num_workers=1), ref[y:y + 32, x:x + 32])
        assert cache.size == 3
    finally:
        CuImage.cache("no_cache")


def _resident_bytes(address: int) -> int | None:
    """Bytes of this process's mapping holding ``address`` that are mapped in (Rss in /proc/self/smaps)."""
    try:
        lines = open("/proc/self/smaps").read().splitlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "Rss:":
            return int(line.split()[1]) * 1024
    return None


def test_shared_memory_tiles_go_through_the_file_and_are_found_again(jpeg_slide):
    """The writer copies tiles into the ring through the segment's file: it maps no ring page for that."""
    path, ref = jpeg_slide
    cache = CuImage.cache("shared_memory", memory_capacity=128 * TILE_BYTES / MiB)
    try:
        img = CuImage(path)
        assert cache.take_spare((1, *TILE, 3), np.dtype(np.uint8)) is None
        first = img.read_region((40, 30), (200, 150), num_workers=1)  # 9 tiles, partly
        assert cache.size == 9
        resident = _resident_bytes(cache._ring.ctypes.data)
        if resident is not None:
            assert resident <= -(-cache._ring_offset // 4096) * 4096  # the header and index pages only
        again = img.read_region((40, 30), (200, 150), num_workers=1)
        assert cache.hit_count == 9
        np.testing.assert_array_equal(first, ref[30:180, 40:240])
        np.testing.assert_array_equal(again, first)
        hit = cache.get(cache_key(img, 0))
        assert hit is not None and not hit.flags.writeable
        np.testing.assert_array_equal(hit[0], ref[:TILE[0], :TILE[1]])
    finally:
        CuImage.cache("no_cache")


def cache_key(img: CuImage, tile: int) -> tuple:
    return (img._file_keys[0], 0, tile)


def test_tiles_staged_for_a_shared_cache_are_let_go_when_decoding_fails(jpeg_slide, monkeypatch, decode_path):
    """The staging memory of a read into a cache that copies is freed even when the read raises."""
    path, _ = jpeg_slide

    def fail(*args, **kwargs):
        raise CucimLikeError("failed on purpose")

    if decode_path == "python":
        monkeypatch.setattr(cpu._Read, "place", fail)  # after the tile was decoded into staging memory
    else:
        monkeypatch.setattr(native.TilePool, "run", fail)
    CuImage.cache("shared_memory", memory_capacity=128 * TILE_BYTES / MiB)  # room: tiles are kept whole
    try:
        with pytest.raises(CucimLikeError):
            CuImage(path).read_region((8, 8), (100, 80), num_workers=1)  # 4 tiles, each partly
        assert len(cpu._staging.chunk) == 0 and not cpu._staging.outgrown
    finally:
        CuImage.cache("no_cache")


def test_the_ring_coming_round_drops_the_oldest_tiles_only():
    cache = SharedMemoryCache(memory_capacity=80 * TILE_BYTES / MiB, capacity=200)  # an index for them all
    try:
        shape = (1, *TILE, 3)
        for i in range(100):  # the ring holds 80: the first 20 are overwritten
            cache.put(("tile", i), np.full(shape, i, np.uint8))
        assert [cache.get(("tile", i)) is not None for i in (0, 19, 20, 99)] == [False, False, True, True]
        assert all((cache.get(("tile", i)) == i).all() for i in range(20, 100))
        assert cache.size == 80
    finally:
        cache.close()


def test_the_part_kept_holds_what_the_patches_of_every_sharing_process_need(jpeg_slide):
    path, ref = jpeg_slide
    p1, p2, p3 = _in_tile(0, 0), _in_tile(0, 0, 30, 60), _in_tile(0, 0, 20, 30)
    o = [_in_tile(2, 2), _in_tile(3, 3), _in_tile(4, 4), _in_tile(5, 5), _in_tile(1, 4), _in_tile(2, 5),
         _in_tile(5, 1)]
    everyone = [p1, o[0], p2, o[1], p3, o[2], o[3], o[4], o[5], o[6]]  # batches of two
    mine = everyone[:2] + everyone[4:6] + everyone[8:]  # this process reads batches 0, 2 and 4
    cache = CuImage.cache("per_process", memory_capacity=4 * TILE_BYTES / MiB)  # less than the 5 tiles touched
    try:
        img = CuImage(path)
        alone = np.concatenate(list(img.read_region(mine, (32, 32), batch_size=2, num_workers=1)))
        part = cache.get(cache_key(img, 0))
        assert part.origin == (8, 8) and part.arr.shape == (1, 44, 54, 3)  # p1 and p3: rows 8-52, columns 8-62
        cache.clear()
        batches = img.read_region(mine, (32, 32), batch_size=2, num_workers=1)
        batches.tile_uses.share(everyone)
        shared = np.concatenate(list(batches))
        part = cache.get(cache_key(img, 0))
        assert part.origin == (8, 8) and part.arr.shape == (1, 54, 84, 3)  # and p2's rows 30-62, columns 60-92
        np.testing.assert_array_equal(part.arr[0], ref[8:62, 8:92])
        hits = cache.hit_count
        theirs = img.read_region(p2, (32, 32), num_workers=1)  # what another process would read: from the part
        assert cache.hit_count == hits + 1
        np.testing.assert_array_equal(alone, _expected(ref, mine))
        np.testing.assert_array_equal(shared, alone)
        np.testing.assert_array_equal(theirs, ref[p2[1]:p2[1] + 32, p2[0]:p2[0] + 32])
    finally:
        CuImage.cache("no_cache")
