"""Returned arrays hand over to NumPy, DLPack consumers and PyTorch without a copy."""

from __future__ import annotations

import numpy as np
import pytest

from cucim_like import CuImage


def _regions(path):
    img = CuImage(path)
    yield "small", img.read_region((0, 0), (64, 64))
    yield "batch", next(iter(img.read_region([(0, 0), (64, 64)], (32, 32), batch_size=2)))


def test_array_interface_and_dlpack_share_memory(small_slide):
    for _name, arr in _regions(small_slide[0]):
        assert "data" in arr.__array_interface__
        view = np.from_dlpack(arr)
        assert np.shares_memory(view, arr)


def test_large_outputs_share_memory_too(tmp_path):
    import tifffile

    data = np.random.default_rng(0).integers(0, 255, (2500, 4600, 3), dtype=np.uint8)  # > 32 MiB: mmap-backed
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, data, tile=(512, 512), photometric="rgb")
    out = CuImage(path).read_region(num_workers=2)
    np.testing.assert_array_equal(out, data)
    assert np.shares_memory(np.from_dlpack(out), out) and out.flags.writeable and out.flags.c_contiguous


def test_torch_from_dlpack_without_copy(small_slide):
    torch = pytest.importorskip("torch")
    path, levels = small_slide
    arr = CuImage(path).read_region((0, 0), (64, 64))
    tensor = torch.from_dlpack(arr)
    assert tensor.shape == (64, 64, 3) and tensor.dtype == torch.uint8
    assert tensor.data_ptr() == arr.__array_interface__["data"][0]
    np.testing.assert_array_equal(tensor.numpy(), levels[0][:64, :64])
