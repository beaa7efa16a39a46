"""Output allocation: outputs of 32 MiB or more, and batches of 1 MiB or more, in maps of their own."""

from __future__ import annotations

import gc
import math
import mmap
import os
import time
import weakref

import numpy as np
import pytest

from cucim_like import memory


def _map_of(arr: np.ndarray) -> object:
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    owner = arr.base
    return owner.obj if isinstance(owner, memoryview) else owner


def test_large_outputs_have_their_own_map_small_ones_do_not():
    big = memory.empty((33, 1024, 1024), np.uint8)
    assert isinstance(_map_of(big), mmap.mmap) and big.flags.writeable and big.flags.c_contiguous
    assert not isinstance(_map_of(memory.empty((3, 1024, 1024), np.uint8)), mmap.mmap)
    batch = memory.empty((2, 1024, 1024), np.uint8, memory.BATCH_MMAP_THRESHOLD)
    assert isinstance(_map_of(batch), mmap.mmap)
    assert not isinstance(_map_of(memory.empty((16, 16, 3), np.uint8, memory.BATCH_MMAP_THRESHOLD)), mmap.mmap)
    assert memory.empty((0, 5), np.uint16, memory.BATCH_MMAP_THRESHOLD).shape == (0, 5)


def _vm_flags(arr: np.ndarray) -> set[str]:
    """The kernel's VmFlags of the mapping that holds ``arr``'s first byte (Linux only)."""
    address, found = arr.ctypes.data, None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(part, 16) for part in head.split("-"))
                found = start <= address < end
            elif found and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError("no mapping holds the array")


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps") or not hasattr(mmap, "MADV_HUGEPAGE"),
                    reason="needs Linux's smaps and MADV_HUGEPAGE")
def test_large_outputs_ask_for_huge_pages_batches_do_not(pool):
    """Huge pages spare a whole-level read the TLB misses of placing tile rows that lie pages apart."""
    assert "hg" in _vm_flags(memory.empty((33, 1024, 1024), np.uint8))
    assert "hg" not in _vm_flags(memory.empty((2, 1024, 1024), np.uint8, memory.BATCH_MMAP_THRESHOLD))


def test_mapped_outputs_are_private_to_the_process():
    """A forked child's writes stay in the child (a shared mapping would pass them to the parent, and its
    pages fault in slower)."""
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    out = memory.empty((33, 1024, 1024), np.uint8)
    out[:] = 7
    pid = os.fork()
    if pid == 0:  # child: write, then leave without running the parent's clean-up
        out[:] = 9
        os._exit(0 if int(out[0, 0, 0]) == 9 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert int(out.min()) == int(out.max()) == 7


def test_outputs_and_tile_buffers_start_16_bytes_past_a_64_byte_boundary():
    """libjpeg-turbo decodes into 32-byte aligned outputs 10-35 % slower (see memory.py)."""
    cases = [((1, 256, 256, 3), np.uint8), ((1, 64, 64, 1), np.uint16), ((7, 5), np.float64), ((3,), np.complex128)]
    for shape, dtype in cases:
        for arr in (memory.decode_buffer(shape, dtype), memory.empty(shape, dtype),
                    memory.empty(shape, dtype, memory.BATCH_MMAP_THRESHOLD)):
            assert arr.shape == shape and arr.dtype == dtype and arr.flags.c_contiguous and arr.flags.writeable
            assert arr.ctypes.data % 64 == 16
            arr[...] = 1  # the whole extent is usable
    for shape in ((33, 1024, 1024), (2, 1024, 1024)):
        big = memory.empty(shape, np.uint8, memory.BATCH_MMAP_THRESHOLD)
        assert isinstance(_map_of(big), mmap.mmap) and big.ctypes.data % 64 == 16 and big.shape == shape
        big[-1, -1, -1] = 3


# -- the output pool -----------------------------------------------------------------------------------------------
_BIG = (48, 1024, 1024)  # 48 MiB: over the pool's 32 MiB threshold


@pytest.fixture
def pool(monkeypatch):
    """A fresh pool of 128 MiB (two maps of ``_BIG``) in place of the process's one."""
    fresh = memory._OutputPool(128 << 20)
    monkeypatch.setattr(memory, "_pool", fresh)
    yield fresh
    fresh.release()


def _map_ref(arr: np.ndarray) -> weakref.ref:
    """A weak reference to the mmap behind ``arr``: dead once the map is unmapped, alive while pooled."""
    return weakref.ref(_map_of(arr))


def test_a_freed_output_map_serves_the_next_output_of_its_size_only_once_every_view_is_gone(pool):
    out = memory.empty(_BIG, np.uint8)
    first = _map_ref(out)
    out[:] = 5
    views = [out[1:], out.reshape(-1)[::2], out.view(np.uint16), np.asarray(out), out.T,
             np.lib.stride_tricks.as_strided(out, (4,), (1,)), memoryview(out)]
    del out
    gc.collect()
    assert pool.pooled_bytes() == 0  # views still use the map
    other = memory.empty(_BIG, np.uint8)
    assert _map_of(other) is not first() and int(views[0][0, 0, 0]) == 5
    del views
    gc.collect()
    assert pool.pooled_bytes() == math.prod(_BIG) + 16
    again = memory.empty(_BIG, np.uint8)
    assert _map_of(again) is first() and again.ctypes.data % 64 == 16
    assert pool.pooled_bytes() == 0  # taken out while in use
    again[:] = 1  # writable throughout: the lazily freed pages are ours again
    assert int(again.min()) == 1 and int(other.max()) == 0


def test_a_freed_output_joins_the_pool_at_once_and_a_timer_unmaps_it_when_unused(pool, monkeypatch):
    monkeypatch.setattr(memory, "_POOL_MAX_AGE_S", 0.2)
    out = memory.empty(_BIG, np.uint8)
    ref = _map_ref(out)
    del out
    assert len(pool._maps) == 1 and ref() is not None  # admitted by the finalizer, no take() needed
    deadline = time.monotonic() + 5
    while ref() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ref() is None and pool._maps == []  # unmapped by the timer: nothing else ran on the pool


def test_a_map_given_back_inside_take_is_queued_then_pooled(pool):
    """The finalizer can run while this thread holds the pool's lock (a garbage collection inside take())."""
    out = memory.empty(_BIG, np.uint8)
    ref = _map_ref(out)
    with pool._lock:
        del out
        assert len(pool._returned) == 1 and pool._maps == []
    assert pool.pooled_bytes() == math.prod(_BIG) + 16 and ref() is not None


def test_pooled_maps_serve_outputs_up_to_a_quarter_smaller_and_of_any_dtype(pool):
    out = memory.empty(_BIG, np.uint8)
    first = _map_ref(out)
    del out
    small = memory.empty((41, 1024, 1024), np.uint8)  # 15 % fewer bytes
    assert _map_of(small) is first()
    del small
    wide = memory.empty((48, 512, 1024), np.uint16)
    assert _map_of(wide) is first()
    del wide
    much_smaller = memory.empty((35, 1024, 1024), np.uint8)  # 27 % fewer: a fresh map
    assert _map_of(much_smaller) is not first() and first() is not None


def test_the_pool_keeps_to_its_capacity_count_and_age_and_can_be_emptied(pool, monkeypatch):
    outs = [memory.empty(_BIG, np.uint8) for _ in range(5)]
    refs = [_map_ref(o) for o in outs]
    del outs
    assert pool.pooled_bytes() == 2 * (math.prod(_BIG) + 16)  # 128 MiB hold two
    assert sum(r() is not None for r in refs) == 2  # the others are unmapped
    monkeypatch.setattr(pool, "capacity", 1 << 30)
    outs = [memory.empty(_BIG, np.uint8) for _ in range(7)]
    del outs
    assert pool.pooled_bytes() == 4 * (math.prod(_BIG) + 16)  # at most 4 maps
    memory.release_pool()  # acts on the process's pool: here, the fixture's
    assert pool.pooled_bytes() == 0
    out = memory.empty(_BIG, np.uint8)
    del out
    assert pool.pooled_bytes() > 0
    monkeypatch.setattr(memory, "_POOL_MAX_AGE_S", -1.0)
    assert pool.pooled_bytes() == 0  # older than the age limit: unmapped
    monkeypatch.setattr(pool, "capacity", 64 << 20)
    big = memory.empty((80, 1024, 1024), np.uint8)  # more than the whole pool: never kept
    ref = _map_ref(big)
    del big
    assert ref() is None and pool.pooled_bytes() == 0


def test_batches_and_outputs_of_a_disabled_pool_are_unmapped_when_freed(pool, monkeypatch):
    batch = memory.empty(_BIG, np.uint8, memory.BATCH_MMAP_THRESHOLD)
    ref = _map_ref(batch)
    del batch
    assert ref() is None and pool.pooled_bytes() == 0
    monkeypatch.setattr(memory, "_pool", memory._OutputPool(0))
    out = memory.empty(_BIG, np.uint8)
    assert isinstance(_map_of(out), mmap.mmap)
    ref = _map_ref(out)
    del out
    assert ref() is None


def test_capacity_from_the_environment():
    import subprocess
    import sys

    code = "from cucim_like import memory; print(memory._pool.capacity)"
    for env, expected in (("0", 0), ("64", 64 << 20), ("junk", 0)):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "CUCIM_LIKE_OUTPUT_POOL_MB": env})
        assert int(res.stdout) == expected
    default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={k: v for k, v in os.environ.items() if k != "CUCIM_LIKE_OUTPUT_POOL_MB"})
    assert 0 < int(default.stdout) <= 4 << 30


def test_a_forked_child_starts_with_an_empty_pool_and_does_not_pool_its_parents_maps(pool):
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    out = memory.empty(_BIG, np.uint8)
    out[:] = 7
    pooled = memory.empty(_BIG, np.uint8)
    del pooled
    assert pool.pooled_bytes() > 0
    pid = os.fork()
    if pid == 0:  # child: check, then leave without running the parent's clean-up
        ok = memory._pool.pooled_bytes() == 0
        out[:] = 9
        del out
        gc.collect()
        ok = ok and memory._pool.pooled_bytes() == 0
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert int(out.min()) == int(out.max()) == 7
    assert pool.pooled_bytes() > 0  # the parent's pool is untouched



# -- pooled pages hold the last output's pixels: every read must overwrite or fill all of its output -------------
@pytest.fixture
def every_output_pooled(monkeypatch):
    """Every output (not batches) goes through a fresh pool (threshold lowered to one byte)."""
    monkeypatch.setattr(memory, "_MMAP_THRESHOLD", 1)
    fresh = memory._OutputPool(1 << 30)
    monkeypatch.setattr(memory, "_pool", fresh)
    yield fresh
    fresh.release()


def _read_again_over_stale_pages(read) -> np.ndarray:
    """Read, keep a copy, scribble over the output and free it, read again into its (reused) pages."""
    first = np.asarray(read())
    want = first.copy()
    used = _map_ref(first)
    first.reshape(-1).view(np.uint8)[:] = 0xAB
    del first
    gc.collect()
    assert memory._pool.pooled_bytes() > 0
    again = np.asarray(read())
    assert _map_of(again) is used(), "the second read should reuse the first one's pages"
    np.testing.assert_array_equal(again, want)
    return again


def test_reads_over_stale_pooled_pages_fill_out_of_bounds_parts(tmp_path, every_output_pooled):
    import tifffile

    from cucim_like import CuImage
    from tests.formats import tiff_fixtures as tfx

    ref = tfx.make_image(500, 600, 3, np.uint8)
    path = tmp_path / "edge.tif"
    tifffile.imwrite(path, ref, tile=(256, 256), compression="zlib")
    with CuImage(path) as img:
        got = _read_again_over_stale_pages(lambda: img.read_region((-300, -200), (1200, 1000)))
        np.testing.assert_array_equal(got, tfx.expected_region(ref, -300, -200, 1200, 1000, 0))
        whole = _read_again_over_stale_pages(lambda: img.read_region())
        np.testing.assert_array_equal(whole, ref)


def test_reads_over_stale_pooled_pages_fill_missing_sparse_tiles(tmp_path, every_output_pooled):
    from cucim_like import CuImage
    from tests.formats import dicom_fixtures as dfx

    fixture = dfx.write_wsi(tmp_path, sparse=True, missing_tiles=[(1, 1), (4, 2), (0, 0)])
    with CuImage(fixture.paths[0]) as img:
        got = _read_again_over_stale_pages(lambda: img.read_region())
    want = fixture.levels[0][(0, 0)]
    np.testing.assert_array_equal(got, want)
    assert (got[fixture.missing_mask[0]] == fixture.fill_value).all() and fixture.missing_mask[0].any()


def test_threads_taking_and_freeing_outputs_never_share_a_live_map(pool):
    """Eight threads allocate, stamp, check and free outputs of two sizes through one pool: a map handed out
    while another thread still uses it would show the other thread's stamp."""
    from concurrent.futures import ThreadPoolExecutor

    def work(k: int) -> int:
        reused = 0
        seen: list[weakref.ref] = []  # maps this thread used; alive only while pooled or in use
        for i in range(12):
            shape = (33 + (i + k) % 2 * 8, 1024, 1024)
            out = memory.empty(shape, np.uint8)
            reused += any(r() is _map_of(out) for r in seen)
            seen.append(_map_ref(out))
            stamp = (k * 100 + i) % 251
            out[:, 0, :64] = stamp  # a little of every MiB
            time.sleep(0.001)  # let the other threads run
            assert (out[:, 0, :64] == stamp).all()
            del out
        return reused

    with ThreadPoolExecutor(8) as ex:
        reused = sum(ex.map(work, range(8)))
    assert reused > 0  # maps came back through the pool under contention
