"""Real DICOM files written by other software (../shared/data; each test skips when its file is absent).

Expected pixels come from pydicom's own decoders (``pixel_array``), highdicom's total pixel matrix, and
OpenSlide's DICOM reader: independent of ours.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cucim_like import CuImage
from cucim_like.errors import CucimLikeError
from tests.conftest import shared_file

pydicom = pytest.importorskip("pydicom")

VOLUME_FILES = [
    "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "examples_jpeg2k.dcm", "SC_rgb_rle_16bit_2frame.dcm", "dicom_test_image.dcm",
]


@pytest.mark.parametrize("name", VOLUME_FILES)
def test_volume_file_equals_pydicom(name):
    path = shared_file(f"dicom-volume/{name}")
    ds = pydicom.dcmread(path)
    ref = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        ref = ref[np.newaxis]
    with CuImage(path) as img:
        assert img.is_volume
        assert img.dims == ("ZYX" if ds.SamplesPerPixel == 1 else "ZYXC")
        assert img.shape == list(ref.shape)
        got = img.read_region()
    assert got.dtype == ref.dtype  # stored values, no widening
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_mr_codecs_decode_equal_to_native(name):
    native = CuImage(shared_file("dicom-volume/MR_small.dcm")).read_region()
    np.testing.assert_array_equal(CuImage(shared_file(f"dicom-volume/{name}")).read_region(), native)


def test_ct_geometry_and_rescale():
    path = shared_file("dicom-volume/CT_small.dcm")
    ds = pydicom.dcmread(path)
    img = CuImage(path)
    assert img.origin == pytest.approx([float(v) for v in ds.ImagePositionPatient])
    assert img.spacing("YX") == pytest.approx([float(v) for v in ds.PixelSpacing])
    assert img.spacing_units("ZYX") == ["mm", "mm", "mm"]
    row, col = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
    direction = np.array(img.direction)
    np.testing.assert_allclose(direction[:, 0], row)
    np.testing.assert_allclose(direction[:, 1], col)
    np.testing.assert_allclose(direction[:, 2], np.cross(row, col))
    hu = img.read_region((0, 0, 0), (128, 128, 1), rescale=True)
    assert hu.dtype == np.float32
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(hu[0], expected, rtol=1e-6)


def test_ct_series_sorted_by_position_not_name(tmp_path):
    directory = shared_file("dicom-volume/ct-series-5")
    files = sorted(p for p in directory.iterdir() if p.is_file())
    datasets = [pydicom.dcmread(p) for p in files]
    row = np.array(datasets[0].ImageOrientationPatient[:3], float)
    col = np.array(datasets[0].ImageOrientationPatient[3:], float)
    normal = np.cross(row, col)
    order = sorted(range(len(datasets)), key=lambda i: float(np.dot(np.array(datasets[i].ImagePositionPatient,
                                                                                 float), normal)))
    ref = np.stack([datasets[i].pixel_array for i in order])
    for opened in (directory, files, list(reversed(files))):
        img = CuImage(opened)
        assert img.shape == list(ref.shape)
        np.testing.assert_array_equal(img.read_region(), ref)
        assert img.spacing("Z")[0] == pytest.approx(2.5, abs=1e-3)
        assert img.origin == pytest.approx([float(v) for v in datasets[order[0]].ImagePositionPatient])
    # a sub-volume: (x, y, z) location, (w, h, d) size -> (d, h, w)
    np.testing.assert_array_equal(img.read_region((3, 4, 1), (5, 6, 3)), ref[1:4, 4:10, 3:8])


def test_ct_series_with_a_missing_slice_is_refused(tmp_path):
    directory = shared_file("dicom-volume/ct-series-5")
    files = sorted(p for p in directory.iterdir() if p.is_file())
    positions = {p: float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in files}
    middle = sorted(files, key=positions.get)[2]
    for p in files:
        if p != middle:
            shutil.copy(p, tmp_path / p.name)
    with pytest.raises(CucimLikeError, match="irregular slice spacing"):
        CuImage(tmp_path)


def test_dicom_wsi_native_tiles_equal_highdicom():
    highdicom = pytest.importorskip("highdicom")
    for name in ("sm_image.dcm", "sm_image_grayscale.dcm"):
        path = shared_file(f"dicom-wsi/{name}")
        ref = highdicom.imread(str(path)).get_total_pixel_matrix()
        img = CuImage(path)
        assert img.metadata["cucim"]["format"] == "dicom"
        assert not img.is_volume
        got = img.read_region((0, 0), (ref.shape[1], ref.shape[0]))
        np.testing.assert_array_equal(got.reshape(ref.shape), ref)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        assert img.spacing("YX") == pytest.approx([float(v) * 1000 for v in spacing])
        assert img.spacing_units("YX") == ["micrometer", "micrometer"]


def test_boxes_split_over_two_files_equals_openslide():
    openslide = pytest.importorskip("openslide")
    path = shared_file("openslide-python/boxes_0.dcm")
    shared_file("openslide-python/boxes_1.dcm")
    slide = openslide.OpenSlide(str(path))
    img = CuImage(path)
    assert img.resolutions["level_dimensions"] == tuple(slide.level_dimensions)
    w, h = slide.level_dimensions[0]
    ref = np.asarray(slide.read_region((0, 0), 0, (w, h)))[..., :3]
    np.testing.assert_array_equal(img.read_region((0, 0), (w, h)), ref)
    assert set(slide.associated_images) <= img.associated_images
    for name in slide.associated_images:
        expected = np.asarray(slide.associated_images[name].convert("RGB"))
        np.testing.assert_array_equal(img.associated_image(name), expected)
    # opened from the other file of the series, or as a directory holding both, it is the same image
    for other in (shared_file("openslide-python/boxes_1.dcm"), path.parent):
        np.testing.assert_array_equal(CuImage(other).read_region((0, 0), (w, h)), ref)
