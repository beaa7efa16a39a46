"""The shared-memory tile cache: shared by forked and spawned processes, keyed by file identity."""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pytest
import tifffile

from cucim_like import CuImage, preferred_memory_capacity
from cucim_like.cache import current_cache
from cucim_like.shm_cache import ENV, SharedMemoryCache


def _read_in_child(path: str, box: tuple[int, int, int, int]) -> tuple[int, int, bytes]:
    img = CuImage(path)
    out = img.read_region(box[:2], box[2:], num_workers=1)
    cache = current_cache()
    return cache.type, cache.size, out.tobytes()


def test_hits_misses_and_pixels(small_slide):
    path, levels = small_slide
    cache = CuImage.cache("shared_memory", memory_capacity=8)
    assert isinstance(cache, SharedMemoryCache) and os.environ[ENV] == cache.name
    img = CuImage(path)
    a = img.read_region((0, 0), (128, 128))
    assert (cache.hit_count, cache.miss_count, cache.size) == (0, 4, 4)
    assert cache.memory_size == 4 * 64 * 64 * 3
    b = img.read_region((0, 0), (128, 128))
    assert (cache.hit_count, cache.miss_count) == (4, 4)
    np.testing.assert_array_equal(a, levels[0][:128, :128])
    np.testing.assert_array_equal(b, levels[0][:128, :128])
    cache.clear()
    assert cache.size == 0 and cache.hit_count == 0


def test_bounded_by_bytes_oldest_out_first(small_slide):
    path, levels = small_slide
    tile = 64 * 64 * 3
    cache = CuImage.cache("shared_memory", memory_capacity=6 * tile / 2**20)
    img = CuImage(path)
    for x in range(0, 640, 64):
        np.testing.assert_array_equal(img.read_region((x, 0), (64, 64)), levels[0][:64, x:x + 64])
    assert cache.size == 6 and cache.memory_size <= cache.memory_capacity
    before = cache.miss_count
    img.read_region((0, 0), (64, 64))  # long gone
    img.read_region((576, 0), (64, 64))  # recent
    assert cache.miss_count == before + 1


def test_forked_workers_share_the_cache(small_slide):
    path, levels = small_slide
    cache = CuImage.cache("shared_memory", memory_capacity=8)
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_read_in_child, [(str(path), (0, 0, 64, 64)), (str(path), (64, 0, 64, 64))])
    assert [r[0] for r in results] == ["shared_memory"] * 2
    assert cache.size == 2 and cache.miss_count == 2
    np.testing.assert_array_equal(CuImage(path).read_region((0, 0), (128, 64)), levels[0][:64, :128])
    assert cache.hit_count == 2 and cache.miss_count == 2


def test_spawned_workers_attach_through_the_environment(small_slide):
    path, levels = small_slide
    cache = CuImage.cache("shared_memory", memory_capacity=8)
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        kind, size, data = pool.apply(_read_in_child, (str(path), (128, 64, 64, 64)))
    assert kind == "shared_memory" and size == 1
    assert np.frombuffer(data, np.uint8).reshape(64, 64, 3).tolist() == levels[0][64:128, 128:192].tolist()
    CuImage(path).read_region((128, 64), (64, 64))
    assert cache.hit_count == 1
    assert os.path.exists(f"/dev/shm/{cache.name}")  # the worker's exit did not remove it


def test_never_serves_another_file(tmp_path):
    cache = CuImage.cache("shared_memory", memory_capacity=8)
    a = np.full((64, 64, 3), 10, np.uint8)
    b = np.full((64, 64, 3), 200, np.uint8)
    pa, pb = tmp_path / "a.tif", tmp_path / "b.tif"
    tifffile.imwrite(pa, a, tile=(64, 64), photometric="rgb")
    tifffile.imwrite(pb, b, tile=(64, 64), photometric="rgb")
    assert (CuImage(pa).read_region((0, 0), (8, 8)) == 10).all()
    assert (CuImage(pb).read_region((0, 0), (8, 8)) == 200).all()
    assert cache.hit_count == 0
    tifffile.imwrite(pa, np.full((64, 64, 3), 77, np.uint8), tile=(64, 64), photometric="rgb",
                     description="rewritten")  # same path, new content
    assert (CuImage(pa).read_region((0, 0), (8, 8)) == 77).all()
    assert cache.hit_count == 0


def test_replacing_the_cache_removes_the_segment():
    cache = CuImage.cache("shared_memory", memory_capacity=1)
    name = cache.name
    CuImage.cache("per_process", memory_capacity=4)
    assert not os.path.exists(f"/dev/shm/{name}") and ENV not in os.environ


def test_preferred_memory_capacity(small_slide):
    img = CuImage(small_slide[0])
    # 11 tiles across + 1, a 224-high patch spans at most 5 tile rows of 64 (+1 in the formula)
    assert preferred_memory_capacity(img, patch_size=(224, 224)) == round((11 + 1) * (4 + 1) * 64 * 64 * 3 / 2**20)
    # values printed by cuCIM 26.10's own preferred_memory_capacity for the same arguments
    assert preferred_memory_capacity(image_size=(46000, 32914), tile_size=(256, 256), patch_size=(256, 256)) == 68
    assert preferred_memory_capacity(image_size=(20480, 26112), tile_size=(256, 256), patch_size=(224, 224)) == 30
    assert preferred_memory_capacity(image_size=(700, 500), tile_size=(64, 64), patch_size=(224, 224)) == 1
    with pytest.raises(ValueError):
        preferred_memory_capacity(patch_size=(1, 1))


def _batched_reads_in_child(path: str, seed: int) -> int:
    img = CuImage(path)
    locs = np.random.default_rng(seed).integers(0, 400, (96, 2))
    return sum(len(b) for b in img.read_region(locs, (64, 64), batch_size=8, num_workers=2, prefetch_factor=2))


def test_forked_workers_with_threads_do_not_deadlock(small_slide):
    """Right after fork, several threads of each worker use the cache at once (the DataLoader pattern)."""
    path, _ = small_slide
    cache = CuImage.cache("shared_memory", memory_capacity=2)  # small: constant eviction and insertion
    CuImage(path).read_region((0, 0), (64, 64))  # the parent has used the cache before forking
    ctx = mp.get_context("fork")
    for _ in range(3):
        with ctx.Pool(2) as pool:
            counts = pool.starmap_async(_batched_reads_in_child, [(str(path), s) for s in range(4)]).get(timeout=60)
        assert counts == [96] * 4
    assert cache.hit_count + cache.miss_count > 0


def test_get_many_finds_each_key_once_and_counts(small_slide):
    cache = CuImage.cache("shared_memory", memory_capacity=8)
    tiles = {("k", i): np.full((1, 8, 8, 3), i, np.uint8) for i in range(5)}
    cache.put_many([(key, arr, (0, 0)) for key, arr in tiles.items()])
    keys = [("k", 3), ("missing", 0), ("k", 0), ("k", 4), ("k", 9)]
    got = cache.get_many(keys)
    assert [None if g is None else int(g[0, 0, 0, 0]) for g in got] == [3, None, 0, 4, None]
    assert got[0].shape == (1, 8, 8, 3) and not got[0].flags.writeable
    assert (cache.hit_count, cache.miss_count) == (3, 2)
    assert cache.get_many([]) == []


@pytest.mark.parametrize("short", [False, True], ids=["no room", "short write"])
def test_a_full_dev_shm_leaves_tiles_uncached_instead_of_crashing(small_slide, monkeypatch, short):
    """tmpfs without room fails a write to the segment's file (where a write through a mapping would raise
    SIGBUS): the tile is not kept, and the read is right (run in a child so a crash shows as a failure)."""
    import errno

    path, levels = small_slide
    cache = CuImage.cache("shared_memory", memory_capacity=8)

    def no_room(fd, data, offset):
        if short:
            return len(data) // 2
        raise OSError(errno.ENOSPC, "No space left on device")

    def child() -> None:
        monkeypatch.setattr(os, "pwrite", no_room)
        out = CuImage(path).read_region((0, 0), (128, 128))
        os._exit(0 if np.array_equal(out, levels[0][:128, :128]) and cache.size == 0 else 3)

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's exit code is the result
        try:
            child()
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    CuImage(path).read_region((0, 0), (128, 128))  # the parent's writes were never refused
    assert cache.size == 4
