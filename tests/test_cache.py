"""The per-process tile cache: hits and misses that really count, LRU bounded by bytes, shared by images."""

from __future__ import annotations

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


def test_unknown_cache_type():
    with pytest.raises(cucim_like.InvalidArgumentError):
        CuImage.cache("bogus")
