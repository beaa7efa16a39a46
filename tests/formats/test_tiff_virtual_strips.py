"""Big uncompressed strips are read as virtual strips: same pixels, bounded scratch, typed errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import cucim_like
from cucim_like import CuImage


@pytest.mark.parametrize(
    "shape,rows,planar",
    [((3000, 1000, 3), 3000, None), ((2999, 1000, 3), 1000, None), ((3, 3000, 1500), 3000, "separate"),
     ((3, 2000, 1500), 777, "separate"), ((2501, 2000), 2501, None)],
)
def test_virtual_strips_match_tifffile(tmp_path, shape, rows, planar):
    data = np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8)
    path = tmp_path / "strips.tif"
    kwargs = {"planarconfig": planar} if planar else {}
    tifffile.imwrite(path, data, photometric="rgb" if data.ndim == 3 else "minisblack", rowsperstrip=rows,
                     **kwargs)
    ref = tifffile.imread(path)
    ref = ref if ref.ndim == 3 else ref[..., None]
    if planar:
        ref = np.moveaxis(ref, 0, -1)
    img = CuImage(path)
    level = img.levels[0]
    assert level.decoded_tile_nbytes <= 4 << 20  # split: no strip scratch beyond 4 MiB
    np.testing.assert_array_equal(img.read_region(num_workers=2), ref)
    np.testing.assert_array_equal(img.read_region((13, 777), (500, 900)), ref[777:1677, 13:513])


def test_truncated_single_strip_is_a_typed_error(tmp_path):
    data = np.zeros((3000, 1000, 3), np.uint8)
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, data, photometric="rgb", rowsperstrip=3000)
    raw = path.read_bytes()
    with tifffile.TiffFile(path) as tf:
        end = tf.pages[0].dataoffsets[0] + 4_000_000
    path.write_bytes(raw[:end])
    img = CuImage(path)
    np.testing.assert_array_equal(img.read_region((0, 0), (100, 100)), data[:100, :100])
    with pytest.raises(cucim_like.CucimLikeError) as info:
        img.read_region((0, 2900), (10, 10))
    assert info.value.path == str(path) and info.value.level == 0
