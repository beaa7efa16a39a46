"""Native DICOM frames stored other than one value per sample: 1-bit frames (BitsAllocated 1: segmentations,
single-bit secondary capture) and YBR_FULL_422 (two pixels as Y1 Y2 Cb Cr), read against pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.pixels import pack_bits  # noqa: E402
from pydicom.uid import (  # noqa: E402
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

import cucim_like  # noqa: E402
from cucim_like import CuImage  # noqa: E402

SINGLE_BIT_SC = "1.2.840.10008.5.1.4.1.1.7.1"  # Multi-frame Single Bit Secondary Capture Image Storage


def _capture_dataset(sop_class: str, transfer_syntax: str, frames: int, rows: int, columns: int) -> Dataset:
    """A secondary-capture dataset with its file meta, UIDs and frame geometry; pixel attributes are the
    caller's."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    return ds


def write_bits(path: Path, frames: np.ndarray, transfer_syntax: str = ExplicitVRLittleEndian,
               samples: int = 1) -> Path:
    """A multi-frame 1-bit file of ``frames`` (n, rows, columns) 0/1 values, packed as DICOM packs them."""
    n, rows, cols = frames.shape
    ds = _capture_dataset(SINGLE_BIT_SC, transfer_syntax, n, rows, cols)
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.PixelData = pack_bits(frames.reshape(-1))
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def _frames(n: int, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, rows, cols)) < 0.3).astype(np.uint8)


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
@pytest.mark.parametrize(("n", "rows", "cols"), [(5, 16, 24), (3, 8, 9), (1, 7, 5)])
def test_bit_frames_match_pydicom(tmp_path, ts, n, rows, cols):
    frames = _frames(n, rows, cols, seed=rows)
    path = write_bits(tmp_path / "bits.dcm", frames, ts)
    want = pydicom.dcmread(path).pixel_array.reshape(n, rows, cols)
    np.testing.assert_array_equal(want, frames)  # the writer packs what pydicom unpacks
    img = CuImage(path)
    assert img.dtype == np.uint8
    whole = np.asarray(img.read_region())
    np.testing.assert_array_equal(whole.reshape(n, rows, cols), want)
    k = n // 2
    one = np.asarray(img.read_region(location=(1, 2, k), size=(cols - 1, rows - 2, 1)))
    np.testing.assert_array_equal(one.reshape(rows - 2, cols - 1), want[k, 2:, 1:])


def test_bit_frames_read_through_a_batch_and_the_cache(tmp_path):
    frames = _frames(12, 16, 16, seed=3)
    path = write_bits(tmp_path / "bits.dcm", frames)
    CuImage.cache("per_process", memory_capacity=4)
    img = CuImage(path)
    for _ in range(3):  # the whole frame read again: decoded into the output, then cached, then a hit
        np.testing.assert_array_equal(np.asarray(img.read_region((0, 0, 7), (16, 16, 1))).reshape(16, 16),
                                      frames[7])
    assert CuImage.cache().hit_count >= 1
    batch = next(iter(img.read_region([(0, 0, 1), (4, 4, 9)], (8, 8, 1), batch_size=2)))
    np.testing.assert_array_equal(batch.reshape(2, 8, 8), np.stack([frames[1, :8, :8], frames[9, 4:12, 4:12]]))


def test_bit_frames_off_byte_boundaries_big_endian_or_several_samples_are_refused(tmp_path):
    with pytest.raises(cucim_like.UnsupportedFormatError, match="byte"):
        CuImage(write_bits(tmp_path / "odd.dcm", _frames(3, 3, 5)))  # 15-pixel frames: frame 1 starts mid-byte
    with pytest.raises(cucim_like.UnsupportedFormatError, match="little endian"):
        CuImage(write_bits(tmp_path / "be.dcm", _frames(2, 8, 8), ExplicitVRBigEndian))
    with pytest.raises(cucim_like.CorruptFileError, match="samples"):
        CuImage(write_bits(tmp_path / "rgb.dcm", _frames(2, 8, 8), samples=3))


def test_truncated_bit_frames_are_a_typed_error(tmp_path):
    path = write_bits(tmp_path / "bits.dcm", _frames(4, 16, 16))
    raw = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[:-40])  # the last frame's 32 bytes and more are gone
    with pytest.raises(cucim_like.CorruptFileError):
        CuImage(tmp_path / "cut.dcm").read_region()


SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def write_ybr422(path: Path, rgb: np.ndarray, transfer_syntax: str = ExplicitVRLittleEndian,
                 columns: int | None = None) -> tuple[Path, np.ndarray]:
    """A native YBR_FULL_422 file from ``rgb`` (n, rows, columns, 3) uint8; returns it and the stored values
    (n, rows, columns // 2, 4) = Y1 Y2 Cb Cr, chroma averaged over each pair."""
    n, rows, cols, _ = rgb.shape
    x = rgb.astype(np.float64)
    y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    cb = 128 - 0.168736 * x[..., 0] - 0.331264 * x[..., 1] + 0.5 * x[..., 2]
    cr = 128 + 0.5 * x[..., 0] - 0.418688 * x[..., 1] - 0.081312 * x[..., 2]
    stored = np.empty((n, rows, cols // 2, 4), np.float64)
    stored[..., 0], stored[..., 1] = y[..., 0::2], y[..., 1::2]
    stored[..., 2] = (cb[..., 0::2] + cb[..., 1::2]) / 2
    stored[..., 3] = (cr[..., 0::2] + cr[..., 1::2]) / 2
    stored = np.clip(np.rint(stored), 0, 255).astype(np.uint8)
    ds = _capture_dataset(SECONDARY_CAPTURE, transfer_syntax, n, rows, columns or cols)
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path, stored


def _ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """Full-range BT.601 in float64, for the reference (the library works in float32)."""
    cb, cr = cb - 128.0, cr - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_ybr_full_422_frames_match_the_stored_values_and_pydicom(tmp_path, ts):
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (3, 12, 20, 3), dtype=np.uint8)
    path, stored = write_ybr422(tmp_path / "ybr422.dcm", rgb, ts)
    s = stored.astype(np.float64)
    y = np.empty((3, 12, 20))
    y[..., 0::2], y[..., 1::2] = s[..., 0], s[..., 1]
    cb, cr = np.repeat(s[..., 2], 2, axis=-1), np.repeat(s[..., 3], 2, axis=-1)
    want = _ycbcr_to_rgb(y, cb, cr)
    img = CuImage(path)
    assert img.shape == [3, 12, 20, 3] and img.dtype == np.uint8
    got = np.asarray(img.read_region())
    assert np.abs(got.astype(int) - want).max() <= 1  # float32 against float64 rounding
    part = np.asarray(img.read_region(location=(3, 2, 1), size=(15, 9, 2)))
    np.testing.assert_array_equal(part, got[1:3, 2:11, 3:18])
    ref = pydicom.dcmread(path).pixel_array  # pydicom converts YBR_FULL_422 to RGB
    assert ref.shape == got.shape
    assert np.abs(ref.astype(int) - got).max() <= 1


def test_ybr_full_422_with_odd_columns_is_a_typed_error(tmp_path):
    rgb = np.zeros((1, 4, 6, 3), np.uint8)
    path, _ = write_ybr422(tmp_path / "odd.dcm", rgb, columns=5)
    with pytest.raises(cucim_like.CorruptFileError, match="even"):
        CuImage(path)
