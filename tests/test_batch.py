"""Batched read_region: iterator semantics, pixels, shared tiles, prefetch bounds, abandonment, errors."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
import tifffile

import cucim_like
from cucim_like import CuImage


def _expected(level0: np.ndarray, locations, size, fill=0):
    pad = 300
    h, w = level0.shape[:2]
    padded = np.full((h + 2 * pad, w + 2 * pad, level0.shape[2]), fill, level0.dtype)
    padded[pad:pad + h, pad:pad + w] = level0
    return np.stack([padded[y + pad:y + pad + size[1], x + pad:x + pad + size[0]] for x, y in locations])


LOCS = [(0, 0), (10, 20), (600, 400), (-20, -30), (650, 480), (300, 100), (64, 64)]


@pytest.mark.parametrize(
    "locations",
    [
        LOCS,
        np.array(LOCS, np.int64),
        np.array(LOCS, np.int32),
        np.array(LOCS, np.int16).reshape(-1),
        [v for xy in LOCS for v in xy],
        (xy for xy in LOCS),
        tuple(np.array(LOCS).clip(0).astype(np.uint16)),
    ],
    ids=["list", "int64", "int32", "int16-flat", "flat-list", "generator", "uint16-tuple"],
)
def test_batches_match_reference(small_slide, locations, request):
    path, levels = small_slide
    expected_locs = np.array(LOCS).clip(0) if "uint16" in request.node.name else np.array(LOCS)
    it = CuImage(path).read_region(locations, (50, 40), batch_size=3, num_workers=2)
    assert len(it) == 3
    batches = list(it)
    assert [b.shape for b in batches] == [(3, 40, 50, 3), (3, 40, 50, 3), (1, 40, 50, 3)]
    np.testing.assert_array_equal(np.concatenate(batches), _expected(levels[0], expected_locs, (50, 40)))


def test_drop_last_and_len(small_slide):
    it = CuImage(small_slide[0]).read_region(LOCS, (32, 32), batch_size=3, drop_last=True)
    assert len(it) == 2
    assert sum(1 for _ in it) == 2


def test_batches_are_independent_arrays(small_slide):
    path, levels = small_slide
    batches = list(CuImage(path).read_region(LOCS[:4], (16, 16), batch_size=2))
    assert batches[0] is not batches[1] and not np.shares_memory(batches[0], batches[1])
    batches[0][:] = 0
    np.testing.assert_array_equal(batches[1], _expected(levels[0], LOCS[2:4], (16, 16)))


def _owner(arr: np.ndarray) -> object:
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    owner = arr.base
    return owner.obj if isinstance(owner, memoryview) else owner


def test_large_batches_have_their_own_memory(small_slide):
    """Batches of 1 MiB or more are backed by their own map (returned to the system when dropped): still
    writable, independent arrays that NumPy, DLPack and pickle take; smaller ones come from malloc."""
    import mmap
    import pickle

    path, levels = small_slide
    locs = [(0, 0), (100, 50), (300, 200), (400, 10)]
    small = next(iter(CuImage(path).read_region(locs, (16, 16), batch_size=4)))
    assert not isinstance(_owner(small), mmap.mmap)
    big, again = CuImage(path).read_region(locs * 2, (400, 400), batch_size=4)  # 1.92 MB each
    assert isinstance(_owner(big), mmap.mmap) and big.flags.writeable and big.flags.c_contiguous
    assert not np.shares_memory(big, again)
    for i, (x, y) in enumerate(locs):
        want = np.zeros((400, 400, 3), np.uint8)
        h, w = min(400, 500 - y), min(400, 700 - x)
        want[:h, :w] = levels[0][y:y + h, x:x + w]
        np.testing.assert_array_equal(big[i], want)
    np.testing.assert_array_equal(np.from_dlpack(big), big)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(big)), big)
    big[:] = 1  # the caller's to change
    np.testing.assert_array_equal(again[0][:100, :100], levels[0][:100, :100])


def test_buf_receives_each_batch(small_slide):
    path, levels = small_slide
    buf = np.empty((2, 16, 16, 3), np.uint8)
    got = []
    for batch in CuImage(path).read_region(LOCS[:3], (16, 16), batch_size=2, buf=buf):
        assert np.shares_memory(batch, buf)
        got.append(batch.copy())
    np.testing.assert_array_equal(np.concatenate(got), _expected(levels[0], LOCS[:3], (16, 16)))


def test_a_callable_buf_gives_each_batch_its_array_and_batches_are_still_decoded_ahead(small_slide):
    path, _ = small_slide
    level0 = tifffile.imread(path, key=0)
    asked, arrays = [], []

    def give(n: int) -> np.ndarray | None:
        asked.append(n)
        if n == 1:
            return None  # the short last batch: a new array
        arrays.append(np.empty((n, 16, 16, 3), np.uint8))
        return arrays[-1]

    it = CuImage(path).read_region(LOCS, (16, 16), batch_size=3, buf=give, prefetch_factor=2)
    first = next(it)
    deadline = time.monotonic() + 5
    while len(asked) < 3 and time.monotonic() < deadline:  # batches 2 and 3 are under way before being asked for
        time.sleep(0.01)
    assert sorted(asked) == [1, 3, 3]
    got = [first, *it]
    assert len(asked) == 3
    shared = [[i for i, a in enumerate(arrays) if np.shares_memory(g, a)] for g in got]
    assert sorted(shared[:2]) == [[0], [1]] and shared[2] == []
    np.testing.assert_array_equal(np.concatenate(got), _expected(level0, LOCS, (16, 16)))


@pytest.mark.parametrize("wrong", [np.empty((3, 16, 16, 3), np.uint16), np.empty((2, 16, 16, 3), np.uint8),
                                   np.empty((3, 16, 16, 3), np.uint8)[:, ::-1], (1, 2)])
def test_a_callable_buf_giving_a_wrong_array_fails_at_that_batch(small_slide, wrong):
    it = CuImage(small_slide[0]).read_region(LOCS, (16, 16), batch_size=3, buf=lambda n: wrong)
    with pytest.raises(cucim_like.InvalidArgumentError, match="buf must be"):
        next(it)


@pytest.mark.parametrize("location", [(30, 40), [(30, 40)], np.array([30, 40], np.int32)])
def test_a_callable_buf_asks_for_batches_even_of_one_patch(small_slide, location):
    path, _ = small_slide
    given = np.empty((1, 16, 16, 3), np.uint8)
    got = list(CuImage(path).read_region(location, (16, 16), buf=lambda n: given if n == 1 else None))
    assert len(got) == 1 and got[0].shape == (1, 16, 16, 3) and np.shares_memory(got[0], given)
    np.testing.assert_array_equal(got[0], _expected(tifffile.imread(path, key=0), [(30, 40)], (16, 16)))


def test_shuffle_is_deterministic_and_a_permutation(small_slide):
    path, levels = small_slide
    locs = np.random.default_rng(1).integers(0, 400, (20, 2))
    img = CuImage(path)
    a = img.read_region(locs, (8, 8), batch_size=4, shuffle=True, seed=5)
    b = img.read_region(locs, (8, 8), batch_size=4, shuffle=True, seed=5)
    c = img.read_region(locs, (8, 8), batch_size=4, shuffle=True, seed=6)
    assert np.array_equal(a.order, b.order) and not np.array_equal(a.order, c.order)
    assert sorted(a.order.tolist()) == list(range(20))
    np.testing.assert_array_equal(np.concatenate(list(a)), _expected(levels[0], locs[a.order], (8, 8)))


def test_tiles_shared_by_a_batch_are_decoded_once(small_slide):
    cache = CuImage.cache("no_cache")
    locs = [(1, 1), (5, 9), (20, 30), (40, 2)]  # all inside tile (0, 0)
    list(CuImage(small_slide[0]).read_region(locs, (16, 16), batch_size=4))
    assert cache.miss_count == 1


def _decoding_threads(path, **kwargs) -> set[str]:
    """Names of the threads that decoded tiles of a 96-patch batched read."""
    CuImage.cache("no_cache")
    names = set()
    lock = threading.Lock()

    def progress(n):
        with lock:
            names.add(threading.current_thread().name)
        time.sleep(0.001)  # slow tiles: every thread that may take part gets work, however loaded the machine

    locs = [(x, y) for x in range(0, 600, 50) for y in range(0, 400, 50)]
    for _ in CuImage(path).read_region(locs, (100, 100), batch_size=48, progress=progress, **kwargs):
        pass
    return names


def test_batches_share_the_workers_between_the_batches_decoded_at_once(small_slide):
    """``num_workers`` threads decode in all: with two batches in flight, 2 workers mean one thread per batch
    (no hand-offs inside a batch); 6 workers mean 3 per batch, 2 of them from the decode pool, which is not the
    producers' pool (decode helpers queued behind busy producers would run nothing)."""
    two = _decoding_threads(small_slide[0], num_workers=2, prefetch_factor=2)
    assert not any(name.startswith("cucim_like-decode-") for name in two)
    six = _decoding_threads(small_slide[0], num_workers=6, prefetch_factor=2)
    assert any(name.startswith("cucim_like-batch-") for name in six)
    assert any(name.startswith("cucim_like-decode-2") for name in six)
    # nothing decoded ahead: each batch is read on the caller's thread with all the workers
    inline = _decoding_threads(small_slide[0], num_workers=2, prefetch_factor=0)
    assert any(name.startswith("cucim_like-decode-1") for name in inline)
    assert not any(name.startswith("cucim_like-batch-") for name in inline)


def test_one_worker_decodes_one_batch_at_a_time(small_slide):
    """num_workers=1 means one decoding thread, also while batches are decoded ahead (in a DataLoader's worker
    processes, a second thread each would oversubscribe the cores)."""
    names = _decoding_threads(small_slide[0], num_workers=1, prefetch_factor=2)
    assert len(names) == 1 and next(iter(names)).startswith("cucim_like-batch-1"), names


class _TileLog:
    """A progress callback that records the tiles finished, from any thread; ``delay`` seconds a tile."""

    def __init__(self, delay: float = 0.0) -> None:
        self.tiles: list[int] = []
        self.lock = threading.Lock()
        self.delay = delay

    def __call__(self, n: int) -> None:
        with self.lock:
            self.tiles.append(n)
        time.sleep(self.delay * n)

    def total(self) -> int:
        with self.lock:
            return sum(self.tiles)


def test_prefetch_is_bounded(small_slide):
    CuImage.cache("no_cache")
    progress = _TileLog()
    locs = [(x * 64 + 1, 1) for x in range(10)]  # one tile per patch, one patch per batch
    it = CuImage(small_slide[0]).read_region(locs, (8, 8), batch_size=1, prefetch_factor=2, progress=progress)
    next(it)
    time.sleep(0.3)
    assert progress.total() <= 1 + 2
    it.close()


def test_abandoned_iterators_leak_no_threads(small_slide):
    img = CuImage(small_slide[0])
    locs = np.random.default_rng(0).integers(0, 400, (200, 2))
    for it in [img.read_region(locs, (64, 64), batch_size=8)]:  # warm the pools up
        next(it)
    del it
    gc.collect()
    baseline = threading.active_count()
    for _ in range(20):
        for _batch in img.read_region(locs, (64, 64), batch_size=8, prefetch_factor=3):
            break
    gc.collect()
    time.sleep(0.2)
    assert threading.active_count() <= baseline


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": -2},
        {"prefetch_factor": -1},
        {"num_workers": -1},
        {"size": (701, 10)},
        {"location": []},
        {"location": np.zeros((3, 3), np.int64)},
        {"location": np.zeros((4, 2), np.float32)},
        {"location": [(1, 2), (3,)]},
        {"buf": np.empty((2, 5, 5, 3), np.uint8)},
    ],
)
def test_bad_batch_arguments_fail_before_work(small_slide, kwargs):
    call = {"location": LOCS, "size": (10, 10), "batch_size": 2, **kwargs}
    with pytest.raises(ValueError) as info:
        CuImage(small_slide[0]).read_region(**call)
    assert isinstance(info.value, cucim_like.CucimLikeError)


def test_corrupt_tile_fails_at_its_batch(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (128, 256, 3), dtype=np.uint8)
    path = tmp_path / "corrupt.tif"
    tifffile.imwrite(path, data, tile=(64, 64), compression="deflate", photometric="rgb")
    with tifffile.TiffFile(path) as tf:
        offset = tf.pages[0].dataoffsets[2]  # tile (0, 2)
    raw = bytearray(path.read_bytes())
    raw[offset:offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(raw))
    locs = [(1, 1), (70, 1), (140, 1), (1, 70)]  # batch 3 holds tile (0, 2)
    it = CuImage(path).read_region(locs, (8, 8), batch_size=1, prefetch_factor=2)
    first, second = next(it), next(it)
    np.testing.assert_array_equal(first[0], data[1:9, 1:9])
    np.testing.assert_array_equal(second[0], data[1:9, 70:78])
    with pytest.raises(cucim_like.DecodeError) as info:
        next(it)
    assert info.value.tile == (0, 2) and info.value.level == 0
    with pytest.raises(StopIteration):
        next(it)


def test_single_location_list_returns_an_array(small_slide):
    path, levels = small_slide
    out = CuImage(path).read_region([(10, 20)], (30, 30))
    assert isinstance(out, np.ndarray) and out.shape == (30, 30, 3)
    np.testing.assert_array_equal(out, levels[0][20:50, 10:40])
    it = CuImage(path).read_region([(10, 20)], (30, 30), batch_size=2)
    (batch,) = list(it)
    assert batch.shape == (1, 30, 30, 3)


def test_batch_on_level_1_uses_level0_coordinates(small_slide):
    path, levels = small_slide
    batches = list(CuImage(path).read_region([(100, 60), (0, 0)], (20, 10), level=1, batch_size=2))
    np.testing.assert_array_equal(batches[0][0], levels[1][30:40, 50:70])
    np.testing.assert_array_equal(batches[0][1], levels[1][0:10, 0:20])


def _abandon_by_del(img, locs, kwargs):
    it = img.read_region(locs, (8, 8), **kwargs)
    next(it)
    del it
    gc.collect()


def _abandon_by_exception(img, locs, kwargs):
    class ConsumerError(Exception):
        pass

    def consume():
        for _batch in img.read_region(locs, (8, 8), **kwargs):
            raise ConsumerError

    with pytest.raises(ConsumerError):
        consume()


@pytest.mark.parametrize("abandon", [_abandon_by_del, _abandon_by_exception], ids=["del-gc", "exception"])
def test_abandoning_an_iterator_stops_its_remaining_work(small_slide, abandon):
    """The first batch needs one tile (its 40 patches share it); the next two, decoded ahead, need 40 tiles
    each. Abandoning the iterator after the first batch (``del`` then gc, or an exception out of the consumer's
    ``for`` loop, which drops the loop's iterator) must stop those: with a slow progress callback (20 ms a tile)
    far fewer than the 81 tiles of the three batches get decoded, and none after. num_workers=4 gives each
    batch in flight two decode threads that take the tiles one at a time (the next test covers one thread)."""
    CuImage.cache("no_cache")
    progress = _TileLog(delay=0.02)

    first = [(1 + i, 1 + i) for i in range(40)]  # all in tile (0, 0)
    rest = [(tx * 64 + 1, ty * 64 + 1) for ty in range(8) for tx in range(11)][1:81]  # one tile each
    kwargs = {"batch_size": 40, "prefetch_factor": 2, "num_workers": 4, "progress": progress}
    abandon(CuImage(small_slide[0]), first + rest, kwargs)
    time.sleep(0.3)
    settled = progress.total()
    time.sleep(0.3)
    assert progress.total() == settled  # nothing decoded any more
    # the first batch's tile, and a few tiles of each prefetched batch (begun while the first one ran; slack
    # for a loaded machine), against 81 without cancellation
    assert 1 <= settled <= 1 + 2 * 8


def test_abandoning_stops_a_running_batch_between_tiles_of_one_read(small_slide, monkeypatch):
    """batch.py promises that abandoning an iterator "stops the running one between tiles". With one decode
    thread per batch (num_workers=2, two batches in flight) the 40 tiles of a batch are read as two coalesced
    ranges of ~20 tiles; decoding is slowed to 20 ms a tile, so work left in a range after the abandonment
    shows as tiles still being decoded afterwards."""
    from cucim_like.executors import cpu

    CuImage.cache("no_cache")
    decoded = []
    original = cpu._Read.decode_place

    def slow_decode_place(self, tile, data, jobs):
        original(self, tile, data, jobs)
        decoded.append(tile)
        time.sleep(0.02)

    monkeypatch.setattr(cpu._Read, "decode_place", slow_decode_place)
    first = [(1 + i, 1 + i) for i in range(40)]  # all in tile (0, 0)
    rest = [(tx * 64 + 1, ty * 64 + 1) for ty in range(8) for tx in range(11)][1:81]
    it = CuImage(small_slide[0]).read_region(first + rest, (8, 8), batch_size=40, prefetch_factor=2, num_workers=2)
    next(it)
    del it
    gc.collect()
    time.sleep(0.1)  # a tile being decoded when the iterator went may finish
    settled = len(decoded)
    time.sleep(0.6)
    assert len(decoded) == settled
