"""Output allocation: outputs of 32 MiB or more, and batches of 1 MiB or more, in maps of their own."""

from __future__ import annotations

import mmap

import numpy as np

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


def test_mapped_outputs_are_private_to_the_process():
    """A forked child's writes stay in the child (a shared mapping would pass them to the parent, and its
    pages fault in slower)."""
    import os

    import pytest

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
