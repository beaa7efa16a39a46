"""tissue_locations: patches on stained tissue, none on glass; Otsu threshold."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import cucim_like
from cucim_like import CuImage
from cucim_like.tissue import otsu_threshold, tissue_locations


@pytest.fixture(scope="module")
def two_island_slide(tmp_path_factory):
    """White glass with two pink rectangles; a 4x pyramid level."""
    rng = np.random.default_rng(0)
    img = np.full((1024, 1536, 3), 240, np.uint8)
    img += rng.integers(0, 8, img.shape, dtype=np.uint8)
    img[128:512, 256:768] = (220, 120, 170)
    img[600:1000, 1000:1400] = (150, 80, 160)
    path = tmp_path_factory.mktemp("tissue") / "islands.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(128, 128), compression="deflate", photometric="rgb")
        tw.write(img[::4, ::4].copy(), tile=(128, 128), compression="deflate", photometric="rgb")
    return path, img


def _tissue_fraction(img, x, y, w, h):
    patch = img[y:y + h, x:x + w].astype(int)
    return ((patch.max(axis=2) - patch.min(axis=2)) > 40).mean()


def test_patches_lie_on_tissue_and_cover_it(two_island_slide):
    path, img = two_island_slide
    locs = tissue_locations(CuImage(path), (64, 64), level=0, min_tissue=0.5)
    assert locs.dtype == np.int64 and locs.shape[1] == 2 and len(locs) > 0
    for x, y in locs:
        assert _tissue_fraction(img, x, y, 64, 64) >= 0.4
    # every grid patch fully inside an island is proposed
    grid = {(x, y) for x in range(0, 1536 - 63, 64) for y in range(0, 1024 - 63, 64)}
    full = {(x, y) for x, y in grid if _tissue_fraction(img, x, y, 64, 64) == 1.0}
    assert full <= {tuple(p) for p in locs.tolist()}


def test_level_and_stride(two_island_slide):
    path, img = two_island_slide
    slide = CuImage(path)
    locs = tissue_locations(slide, 32, level=1, stride=16, min_tissue=1.0)
    assert len(locs) > 0
    assert (locs % 4 == 0).all()  # level-0 coordinates of level-1 pixels
    for x, y in locs:
        assert _tissue_fraction(img, x, y, 128, 128) >= 0.9
    patches = np.concatenate(list(slide.read_region(locs, (32, 32), level=1, batch_size=16)))
    assert patches.shape == (len(locs), 32, 32, 3)


def test_min_tissue_zero_returns_the_whole_grid(two_island_slide):
    path, _ = two_island_slide
    locs = tissue_locations(CuImage(path), (256, 256), min_tissue=0.0)
    assert len(locs) == 6 * 4


def test_otsu_splits_two_modes():
    values = np.concatenate([np.full(1000, 0.1), np.full(500, 0.7)])
    t = otsu_threshold(values)
    assert 0.1 < t < 0.7


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"size": (10, -1)}, {"stride": 0}, {"min_tissue": 1.5},
                                    {"level": 7}])
def test_bad_arguments(two_island_slide, kwargs):
    call = {"size": 64, **kwargs}
    with pytest.raises(cucim_like.InvalidArgumentError):
        tissue_locations(CuImage(two_island_slide[0]), **call)


def _grid_inside(box, size=64, width=1536, height=1024):
    """Level-0 grid patches of ``size`` lying wholly inside ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    return {(x, y) for x in range(0, width - size + 1, size) for y in range(0, height - size + 1, size)
            if x >= x0 and y >= y0 and x + size <= x1 and y + size <= y1}


def test_threshold_overrides_otsu_and_a_higher_one_keeps_less(two_island_slide):
    """HSV saturation (max - min) / max: glass at most 7/247 < 0.03, island 1 (220, 120, 170) 100/220 = 0.455,
    island 2 (150, 80, 160) 80/160 = 0.5. Raising the threshold past each level drops exactly that tissue."""
    path, _ = two_island_slide
    slide = CuImage(path)
    island1 = _grid_inside((256, 128, 768, 512))
    island2 = _grid_inside((1000, 600, 1400, 1000))
    assert len(island1) == 48 and len(island2) == 25

    def kept(threshold, min_tissue=1.0):
        locs = tissue_locations(slide, 64, threshold=threshold, min_tissue=min_tissue)
        return {tuple(p) for p in locs.tolist()}

    both, only2, none = kept(0.3), kept(0.48), kept(0.55)
    assert both == island1 | island2
    assert only2 == island2
    assert none == set()
    assert kept(None) == both  # Otsu falls between glass and stain
    # a threshold below the glass's saturation takes (nearly) every pixel as tissue: with min_tissue 0.5 every
    # grid patch qualifies
    assert len(kept(0.0, min_tissue=0.5)) == 24 * 16
