"""The per-process tile cache: hits and misses that really count, LRU bounded by bytes, shared by images."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import cucim_like
from cucim_like import CuImage


def test_repeated_region_hits(small_slide):
    path, levels = small_slide
    cache = CuImage.cache("per_process", memory_capacity=16)
    img = CuImage(path)
    first = img.read_region((0, 0), (128, 128))
    assert (cache.hit_count, cache.miss_count) == (0, 4)
    assert cache.size == 4 and cache.memory_size == 4 * 64 * 64 * 3
    second = img.read_region((0, 0), (128, 128))
    assert (cache.hit_count, cache.miss_count) == (4, 4)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(second, levels[0][:128, :128])


def test_cache_is_shared_across_images_of_the_same_file(small_slide):
    path, _ = small_slide
    cache = CuImage.cache("per_process", memory_capacity=16)
    CuImage(path).read_region((8, 8), (32, 32))
    CuImage(path).read_region((8, 8), (32, 32))
    assert cache.hit_count == 1


def test_lru_bounded_by_bytes(small_slide):
    path, levels = small_slide
    tile_bytes = 64 * 64 * 3
    cache = CuImage.cache("per_process", memory_capacity=10 * tile_bytes / 2**20)
    img = CuImage(path)
    for x in range(0, 640, 64):  # part of each of ten tiles of the first tile row
        img.read_region((x, 0), (32, 32))
    assert cache.size == 10
    img.read_region((0, 64), (32, 32))  # one more: the least recently used goes
    assert cache.size == 10 and cache.memory_size <= cache.memory_capacity
    before = cache.miss_count
    img.read_region((0, 0), (32, 32))
    assert cache.miss_count == before + 1  # evicted
    np.testing.assert_array_equal(img.read_region((576, 0), (64, 64)), levels[0][:64, 576:640])


def test_no_cache_counts_misses_and_holds_nothing(small_slide):
    cache = CuImage.cache("no_cache")
    img = CuImage(small_slide[0])
    img.read_region((0, 0), (64, 64))
    img.read_region((0, 0), (64, 64))
    assert cache.type == "no_cache" and cache.size == 0 and cache.hit_count == 0 and cache.miss_count == 2


def test_record_off_stops_counting(small_slide):
    cache = CuImage.cache("per_process", memory_capacity=8, record_stat=False)
    CuImage(small_slide[0]).read_region((0, 0), (32, 32))
    assert cache.miss_count == 0 and cache.size == 1
    cache.record(True)
    CuImage(small_slide[0]).read_region((0, 0), (32, 32))
    assert cache.hit_count == 1


def test_cache_without_arguments_returns_current():
    cache = CuImage.cache("per_process", memory_capacity=3)
    assert CuImage.cache() is cache and cache.memory_capacity == 3 * 2**20


def test_cached_tiles_are_read_only_and_results_independent(small_slide):
    CuImage.cache("per_process", memory_capacity=16)
    img = CuImage(small_slide[0])
    a = img.read_region((0, 0), (64, 64))
    a[:] = 0
    b = img.read_region((0, 0), (64, 64))
    np.testing.assert_array_equal(b, small_slide[1][0][:64, :64])


def test_large_reads_do_not_flush_the_cache(small_slide):
    cache = CuImage.cache("per_process", memory_capacity=0.1)
    img = CuImage(small_slide[0])
    img.read_region((0, 0), (32, 32))
    img.read_region()  # 88 tiles, far more than half the capacity: not inserted
    assert cache.size == 1


def test_tiles_read_whole_are_cached_from_their_second_read(small_slide):
    path, levels = small_slide
    cache = CuImage.cache("per_process", memory_capacity=16)
    img = CuImage(path)
    for _ in range(2):  # decoded straight into the output, then into the output and a cached copy
        np.testing.assert_array_equal(img.read_region((64, 0), (64, 64)), levels[0][:64, 64:128])
        assert cache.hit_count == 0
    assert cache.size == 1
    third = img.read_region((64, 0), (64, 64))
    assert (cache.hit_count, cache.miss_count) == (1, 2)
    np.testing.assert_array_equal(third, levels[0][:64, 64:128])
    third[:] = 0  # the cached copy is not the caller's array
    np.testing.assert_array_equal(img.read_region((64, 0), (64, 64)), levels[0][:64, 64:128])


def test_whole_tile_reads_are_remembered_for_a_bounded_number_of_tiles(small_slide):
    path, _ = small_slide
    cache = CuImage.cache("per_process", memory_capacity=0.05)  # 256 remembered keys at least
    img = CuImage(path)
    img.read_region((0, 0), (64, 64))
    for i in range(300):  # other tiles' keys push the first one out
        cache.admit_whole(("other", i))
    img.read_region((0, 0), (64, 64))
    assert cache.size == 0
    assert len(cache._seen_whole) <= max(256, 4 * cache.capacity)


def test_partial_tiles_are_kept_only_when_asked_again_within_half_the_capacity():
    """A partial tile's second request keeps it only when fewer than ``capacity // 2`` other partial tiles
    were declined in between: farther apart, it would be overwritten before being read again."""
    cache = cucim_like.cache.TileCache(memory_capacity=64, capacity=1000)  # window: 500 keys
    assert not cache.admit_part("near")
    for i in range(499):
        cache.admit_part(("other", i))
    assert cache.admit_part("near")
    assert not cache.admit_part("far")
    for i in range(500):
        cache.admit_part(("more", i))
    assert not cache.admit_part("far")  # forgotten: remembered again, kept on a next, nearer request
    assert cache.admit_part("far")
    assert not cache.admit_whole("near") and cache.admit_whole("near")  # whole tiles keep their own window
    off = cucim_like.cache.TileCache(memory_capacity=0)
    assert not off.admit_part("x") and not off.admit_part("x")


def test_unknown_cache_type():
    with pytest.raises(cucim_like.InvalidArgumentError):
        CuImage.cache("bogus")


def _tile(value: int, shape=(1, 64, 64, 3)) -> np.ndarray:
    from cucim_like.memory import decode_buffer

    arr = decode_buffer(shape, np.uint8)
    arr[...] = value
    return arr


def test_evicted_tiles_nobody_holds_are_handed_back_once():
    shape, u8 = (1, 64, 64, 3), np.dtype(np.uint8)
    cache = cucim_like.cache.TileCache(memory_capacity=2 * 64 * 64 * 3 / 2**20)  # two 64² RGB tiles
    cache.put(0, _tile(0))
    cache.put(1, _tile(1))
    held = cache.get(0)  # a reader still copying from tile 0
    view = cache.get(1)[0, :8, :8]  # a reader holding only a view of tile 1
    cache.put(2, _tile(2))  # evicts 0
    cache.put(3, _tile(3))  # evicts 1
    assert cache.take_spare(shape, u8) is None and (held == 0).all() and (view == 1).all()
    del held, view
    cache.put(4, _tile(4))  # evicts 2: only the cache held it
    spare = cache.take_spare(shape, u8)
    assert spare is not None and spare.flags.writeable and (spare == 2).all()
    assert spare.ctypes.data % 64 == 16
    assert cache.take_spare(shape, u8) is None
    assert cache.take_spare((1, 32, 32, 3), u8) is None


def test_only_memory_allocated_for_decoding_is_reused():
    """Arrays over a caller's memory, a copy or a map stay theirs after eviction."""
    shape, u8 = (1, 64, 64, 3), np.dtype(np.uint8)
    cache = cucim_like.cache.TileCache(memory_capacity=64 * 64 * 3 / 2**20)  # one tile
    backing = bytearray(64 * 64 * 3)
    makers = [lambda: np.frombuffer(backing, np.uint8).reshape(shape), lambda: np.zeros(shape, np.uint8),
              lambda: np.frombuffer(bytes(64 * 64 * 3), np.uint8).reshape(shape),
              lambda: np.frombuffer(bytearray(64 * 64 * 3), np.uint8).reshape(shape)]
    for make in makers:  # each array is referred to by the cache alone once put
        cache.put("a", make())
        cache.put("b", _tile(0))  # evicts "a"
        assert cache.take_spare(shape, u8) is None
        cache.clear()


def test_spares_of_shapes_no_longer_asked_for_age_out():
    u8 = np.dtype(np.uint8)
    cache = cucim_like.cache.TileCache(memory_capacity=64 * 64 * 3 / 2**20)
    for i in range(6):  # short edge tiles, then full ones
        cache.put(i, _tile(i, (1, 10 + i, 64, 3)))
    for i in range(6, 12):
        cache.put(i, _tile(i))
    assert cache.take_spare((1, 64, 64, 3), u8) is not None


def test_reads_through_a_small_cache_from_many_threads_stay_exact(small_slide):
    """A tiny cache evicts on almost every insert, so decodes keep reusing evicted tiles' memory while other
    threads read cached tiles: every region must still equal the reference."""
    import threading

    path, levels = small_slide
    padded = np.zeros((1000, 1200, 3), np.uint8)
    padded[250:750, 250:950] = levels[0]
    rng = np.random.default_rng(11)
    boxes = [(int(rng.integers(-40, 690)), int(rng.integers(-40, 490)), int(rng.integers(1, 150)),
              int(rng.integers(1, 150))) for _ in range(300)]
    errors: list[str] = []
    try:
        CuImage.cache("per_process", memory_capacity=12 * 64 * 64 * 3 / 2**20)  # 12 tiles
        img = CuImage(path)

        def work(indices):
            for i in indices:
                x, y, w, h = boxes[i]
                got = img.read_region((x, y), (w, h), num_workers=2)
                if not np.array_equal(got, padded[y + 250:y + 250 + h, x + 250:x + 250 + w]):
                    errors.append(f"region {boxes[i]} differs")

        threads = [threading.Thread(target=work, args=(range(k, 300, 6),)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert CuImage.cache().hit_count > 0
    finally:
        CuImage.cache("per_process", memory_capacity=64)
    assert not errors, errors[:5]


_RSS_AFTER_REPLACING = r"""
import threading
import numpy as np
from cucim_like import CuImage
from cucim_like.memory import decode_buffer

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

cache = CuImage.cache("per_process", memory_capacity=256)
pins = []

def fill(first):  # as decode threads do: tiles from the thread's malloc arena, small blocks that stay between
    np.empty(300_000, np.uint8)  # freed at once: glibc then serves blocks of this size from its heaps
    for i in range(first, first + 300):
        tile = decode_buffer((1, 256, 256, 3), np.uint8)
        tile[:] = i % 251
        cache.put(("t", i), tile)
        pins.append(np.ones(512, np.int64))

threads = [threading.Thread(target=fill, args=(k * 300,)) for k in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
full = rss()
CuImage.cache("no_cache")
print(full, rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm; glibc's malloc_trim")
def test_replacing_a_full_cache_hands_its_memory_back():
    out = subprocess.run([sys.executable, "-c", _RSS_AFTER_REPLACING], capture_output=True, text=True, check=True)
    full, after = (int(v) for v in out.stdout.split())
    assert full - after > 80 * 2**20, (full, after)  # most of the ~110 MiB of tiles left the process
