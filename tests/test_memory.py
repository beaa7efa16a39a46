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
