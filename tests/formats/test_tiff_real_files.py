"""Real TIFF slides written by other software (../shared/data; each test skips when its file is absent).

Expected pixels come from tifffile's decode of the same pages, or from the PNG that openslide-python ships as
boxes.tiff's reference. JPEG tiles are decoded by the same libjpeg-turbo in tifffile (through imagecodecs), so
they must agree within 1 (normally exactly; see test_tiff_matrix's module docstring).
"""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
import tifffile

import cucim_like
from cucim_like import CuImage
from tests.conftest import shared_file
from tests.formats import tiff_fixtures as tfx

LOSSY_TOL = 1


def _tifffile_associated(path) -> dict[str, np.ndarray]:
    """tifffile's decode of the associated images, by the names its SVS series parser gives them."""
    with tifffile.TiffFile(path) as tf:
        return {s.name.lower(): s.asarray() for s in tf.series[1:]}


# -- CMU-1-Small-Region.svs: Aperio, 240x240 JPEG tiles with JPEGTables -------------------------------------------
@pytest.fixture(scope="module")
def cmu():
    path = shared_file("tiff/CMU-1-Small-Region.svs")
    return path, tfx.tifffile_page(path, 0)


def test_cmu_metadata(cmu):
    path, _ = cmu
    img = CuImage(path)
    assert img.vendor == "aperio"
    assert float(img.metadata["aperio"]["MPP"]) == pytest.approx(0.499)
    assert img.spacing() == pytest.approx([0.499, 0.499, 1.0])
    assert img.spacing_units() == ["micrometer", "micrometer", "color"]
    assert img.shape == [2967, 2220, 3]
    assert img.resolutions["level_count"] == 1
    assert img.resolutions["level_dimensions"] == ((2220, 2967),)
    assert img.resolutions["level_tile_sizes"] == ((240, 240),)
    assert img.associated_images == {"label", "macro", "thumbnail"}


def test_cmu_associated_images(cmu):
    path, _ = cmu
    img = CuImage(path)
    refs = _tifffile_associated(path)
    assert set(refs) == {"label", "macro", "thumbnail"}
    for name, ref in refs.items():
        tfx.assert_close(img.associated_image(name), ref, LOSSY_TOL, name)
    with pytest.raises(cucim_like.UnknownAssociatedImageError):
        img.associated_image("barcode")


def test_cmu_regions(cmu):
    path, ref = cmu
    img = CuImage(path)
    height, width = ref.shape[:2]
    for x, y, w, h in tfx.regions(width, height, 240, 240, seed=7, n_random=12):
        w, h = min(w, 600), min(h, 600)
        got = img.read_region((x, y), (w, h), num_workers=2)
        tfx.assert_close(got, tfx.expected_region(ref, x, y, w, h, 255), LOSSY_TOL, f"region {(x, y, w, h)}")


def test_cmu_whole_level(cmu):
    path, ref = cmu
    tfx.assert_close(CuImage(path).read_region(), ref, LOSSY_TOL, "whole level")


# -- openslide-python fixtures -------------------------------------------------------------------------------------
def test_boxes_tiff_levels():
    path = shared_file("openslide-python/boxes.tiff")
    png = shared_file("openslide-python/boxes.png")
    img = CuImage(path)
    with tifffile.TiffFile(path) as tf:
        refs = [tfx.as_yxc(p.asarray(), int(p.samplesperpixel)) for p in tf.pages]
    assert len(refs) == 4
    res = img.resolutions
    assert res["level_count"] == 4
    dims = tuple((r.shape[1], r.shape[0]) for r in refs)
    assert res["level_dimensions"] == dims == ((300, 250), (150, 125), (75, 62), (37, 31))
    w0, h0 = dims[0]
    assert res["level_downsamples"] == pytest.approx([(w0 / w + h0 / h) / 2 for w, h in dims])
    expected0 = imagecodecs.png_decode(png.read_bytes())[..., :3]
    tfx.assert_close(img.read_region(), expected0, 0, "level 0 vs boxes.png")
    for i, ref in enumerate(refs):
        tfx.assert_close(img.read_region(level=i), ref, 0, f"level {i} vs tifffile")
        h, w = ref.shape[:2]
        got = img.read_region((0, 0), (w + 5, h + 5), level=i)
        tfx.assert_close(got, tfx.expected_region(ref, 0, 0, w + 5, h + 5, 0), 0, f"level {i} past its edge")


def test_small_svs():
    path = shared_file("openslide-python/small.svs")
    img = CuImage(path)
    assert img.vendor == "aperio"
    assert img.shape == [16, 16, 3]
    tfx.assert_close(img.read_region(), tfx.tifffile_page(path, 0), LOSSY_TOL, "small.svs")
    got = img.read_region((8, 8), (16, 16))
    tfx.assert_close(got, tfx.expected_region(tfx.tifffile_page(path, 0), 8, 8, 16, 16, 255), LOSSY_TOL,
                     "small.svs past its edge")
    for name, ref in _tifffile_associated(path).items():
        tfx.assert_close(img.associated_image(name), ref, LOSSY_TOL, name)


def test_unreadable_svs_opens_but_read_fails_cleanly():
    path = shared_file("openslide-python/unreadable.svs")
    img = CuImage(path)  # the headers are fine
    assert img.vendor == "aperio"
    assert img.resolutions["level_dimensions"] == ((16, 16),)
    for workers in (1, 2):
        with pytest.raises(cucim_like.CucimLikeError):
            img.read_region((0, 0), (16, 16), num_workers=workers)
    # outside the slide no tile is decoded: still fine
    assert (img.read_region((100, 100), (4, 4)) == 255).all()


def test_unopenable_tiff_is_refused():
    path = shared_file("openslide-python/unopenable.tiff")
    with pytest.raises(cucim_like.CucimLikeError):
        CuImage(path)


# -- an OME-TIFF with Z and C planes stored as big-endian int8 strips ------------------------------------------------
def test_multi_channel_z_series_first_plane():
    """The OME z-stack opens as a volume; its first channel at z 0 is page 0 (test_tiff_volumes checks all)."""
    path = shared_file("tiff/multi-channel-z-series.ome.tif")
    img = CuImage(path)
    ref = tfx.tifffile_page(path, 0)
    assert img.dtype == np.int8
    assert img.dims == "ZYXC"
    first = img.read_region((0, 0, 0), (ref.shape[1], ref.shape[0], 1), c=0)[0]
    tfx.assert_close(first[..., None], ref, 0, "first plane")
    part = img.read_region((400, 150, 0), (60, 30, 1), c=[0])[0]
    tfx.assert_close(part, tfx.expected_region(ref, 400, 150, 60, 30, 0), 0, "first plane past the corner")
