"""DICOM gaps: MONOCHROME1 stored values, one frame of a large native multi-frame file (bytes touched, memory
map, Python memory), and encapsulated frames read through positional reads.

Files are written at test time (tests/formats/dicom_fixtures.py, pydicom); expected pixels come from pydicom's
decoders where it has one, else from the fixtures' stored values.
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pydicom
import pytest

from cucim_like import CuImage
from cucim_like.fileio import FileReader
from tests.formats import dicom_fixtures as dfx

LARGE_FRAMES, SIDE = 1000, 64
FRAME_NBYTES = SIDE * SIDE * 2  # uint16


@pytest.fixture(autouse=True)
def _no_tile_cache():
    """Each read decodes (the tile cache would otherwise answer repeated reads)."""
    CuImage.cache("no_cache")


def _pydicom_frames(path) -> np.ndarray:
    """pydicom's stored values (n, rows, cols); pydicom does not invert MONOCHROME1."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    return arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[np.newaxis]


def _pydicom_decodes(transfer_syntax: str) -> bool:
    from pydicom.pixels import get_decoder

    return get_decoder(transfer_syntax).is_available


def _as_monochrome1(path) -> None:
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(path)


# -- (a) MONOCHROME1: stored values, not inverted -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_monochrome1_native_multiframe_reads_stored_values(tmp_path, dtype):
    path = tmp_path / "mono1.dcm"
    stored = dfx.write_native_multiframe(path, frames=5, rows=20, cols=24, dtype=dtype)
    _as_monochrome1(path)
    ref = _pydicom_frames(path)
    np.testing.assert_array_equal(ref, stored)  # pydicom agrees with what was written
    with CuImage(path) as img:
        assert img.metadata["dicom"]["photometric_interpretation"] == "MONOCHROME1"
        got = img.read_region()
        frame = img.read_region((3, 2, 4), (10, 12, 1))
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(frame[0], ref[4, 2:14, 3:13])
    info = np.iinfo(dtype)
    assert not np.array_equal(got, (info.max + info.min - ref.astype(np.int64)).astype(dtype))  # not inverted


def test_monochrome1_native_series_reads_stored_values(tmp_path):
    fx = dfx.write_volume_series(tmp_path / "cr", shape=(3, 16, 20), dtype="uint16", shuffle_names=False)
    for p in fx.paths:
        _as_monochrome1(p)
    ref = np.stack([_pydicom_frames(p)[0] for p in fx.paths])
    np.testing.assert_array_equal(ref, fx.volume)
    with CuImage(tmp_path / "cr") as img:
        np.testing.assert_array_equal(img.read_region(), ref)


@pytest.mark.parametrize("codec,bits", [("rle", 8), ("rle", 16), ("jpegls", 8), ("jpegls", 16)])
def test_monochrome1_encapsulated_reads_stored_values(tmp_path, codec, bits):
    path = tmp_path / f"mono1-{codec}.dcm"
    stored = dfx.write_encapsulated_multiframe(path, frames=4, rows=32, cols=24, codec=codec, bits=bits,
                                               photometric="MONOCHROME1", offset_table="bot")
    assert pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation == "MONOCHROME1"
    ts = dfx.TRANSFER_SYNTAX[codec]
    if _pydicom_decodes(ts):  # RLE always; JPEG-LS with pyjpegls or pylibjpeg-libjpeg installed
        np.testing.assert_array_equal(_pydicom_frames(path), stored)
    with CuImage(path) as img:
        got = img.read_region()
        part = img.read_region((5, 7, 1), (12, 20, 2))
    assert got.dtype == stored.dtype
    np.testing.assert_array_equal(got, stored)
    np.testing.assert_array_equal(part, stored[1:3, 7:27, 5:17])
    top = (1 << bits) - 1
    assert not np.array_equal(got, top - stored)  # not inverted


# -- (b) one frame of a large native multi-frame file ---------------------------------------------------------------
@pytest.fixture(scope="module")
def large_native(tmp_path_factory):
    """1000 frames of 64 x 64 uint16 (8 MB of Pixel Data, the last element of the file) and the frames."""
    path = tmp_path_factory.mktemp("large") / "native-1000.dcm"
    frames = dfx.write_native_multiframe(path, frames=LARGE_FRAMES, rows=SIDE, cols=SIDE, dtype=np.uint16)
    return path, frames


def _recording(monkeypatch, calls: list, raise_on_read: type[Exception] | None = None) -> None:
    """Record every FileReader.read/.view byte range as (kind, start, stop); optionally make read raise."""
    read, view = FileReader.read, FileReader.view

    def rec_read(self, start, stop, **kwargs):
        calls.append(("read", start, stop))
        if raise_on_read is not None:
            raise raise_on_read(f"FileReader.read({start}, {stop}) was called")
        return read(self, start, stop, **kwargs)

    def rec_view(self, start, stop, **kwargs):
        calls.append(("view", start, stop))
        return view(self, start, stop, **kwargs)

    monkeypatch.setattr(FileReader, "read", rec_read)
    monkeypatch.setattr(FileReader, "view", rec_view)


def test_one_frame_of_a_large_native_file_touches_one_frame(large_native, monkeypatch):
    path, frames = large_native
    ref = pydicom.dcmread(path).pixel_array[500]
    np.testing.assert_array_equal(ref, frames[500])
    # native Pixel Data is the file's last element and holds exactly the frames: frame 500's bytes are here
    pixel_start = path.stat().st_size - LARGE_FRAMES * FRAME_NBYTES
    frame_range = (pixel_start + 500 * FRAME_NBYTES, pixel_start + 501 * FRAME_NBYTES)
    calls: list = []
    _recording(monkeypatch, calls)
    with CuImage(path) as img:
        assert img.shape == [LARGE_FRAMES, SIDE, SIDE]
        out = img.read_region((0, 0, 500), (SIDE, SIDE, 1))
    np.testing.assert_array_equal(out[0], ref)
    assert calls, "the frame was not read through the file reader"
    touched = sum(stop - start for _, start, stop in calls)
    assert touched <= 2 * FRAME_NBYTES  # about one frame, not the 8 MB of Pixel Data
    assert any(start <= frame_range[0] and frame_range[1] <= stop for _, start, stop in calls)


# -- (c) native frames come from the memory map, encapsulated ones from positional reads -------------------------------
class _ReadCalled(Exception):
    pass


def test_native_frames_are_served_from_the_memory_map(large_native, monkeypatch):
    path, frames = large_native
    calls: list = []
    _recording(monkeypatch, calls, raise_on_read=_ReadCalled)
    with CuImage(path) as img:
        np.testing.assert_array_equal(img.read_region((0, 0, 123), (SIDE, SIDE, 1))[0], frames[123])
        np.testing.assert_array_equal(img.read_region((10, 20, 998), (30, 40, 2)), frames[998:1000, 20:60, 10:40])
    assert calls and {kind for kind, _, _ in calls} == {"view"}


@pytest.mark.parametrize("codec", ["rle", "jpegls"])
def test_encapsulated_frames_go_through_positional_reads(tmp_path, monkeypatch, codec):
    path = tmp_path / f"{codec}.dcm"
    stored = dfx.write_encapsulated_multiframe(path, frames=6, rows=SIDE, cols=SIDE, codec=codec, bits=16,
                                               offset_table="bot")
    calls: list = []
    _recording(monkeypatch, calls)
    with CuImage(path) as img:
        np.testing.assert_array_equal(img.read_region((0, 0, 4), (SIDE, SIDE, 1))[0], stored[4])
    assert calls and {kind for kind, _, _ in calls} == {"read"}
    monkeypatch.undo()
    _recording(monkeypatch, [], raise_on_read=_ReadCalled)
    with CuImage(path) as img, pytest.raises(_ReadCalled):
        img.read_region((0, 0, 2), (SIDE, SIDE, 1))


# -- (d) Python memory of reading one frame -----------------------------------------------------------------------
# Bound: the output (64 x 64 uint16 = 8 KiB) plus 1 MiB. That leaves room for what one frame's read legitimately
# allocates on the Python heap - the frame's encoded bytes (at most the 8 KiB frame, or a few KiB of JPEG 2000),
# a decode buffer of one frame, the frame index built on first use (two int64 arrays of 1000 entries = 16 KiB),
# pydicom/NumPy bookkeeping - while any read of the whole Pixel Data (8 MB native, > 3 MB of JPEG 2000 here) or a
# copy of the file would exceed it several times over. Memory-mapped pages are not Python allocations: a native
# frame viewed in the map costs nothing here.
_SLACK = 1 << 20


def _peak_of_one_frame_read(path, warm_path, z: int) -> tuple[np.ndarray, int]:
    """(frame z, peak traced Python memory of the first read from a freshly opened ``path``, which also builds
    the frame index); ``warm_path``, a small file of the same kind, is read first so that imports, thread pools
    and decoder set-up are not counted."""
    with CuImage(warm_path) as warm:
        warm.read_region((0, 0, 0), (SIDE, SIDE, 1), num_workers=1)
    gc.collect()
    img = CuImage(path)
    try:
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            out = img.read_region((0, 0, z), (SIDE, SIDE, 1), num_workers=1)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        img.close()
    return out, peak


def test_peak_memory_of_one_native_frame(large_native, tmp_path):
    path, frames = large_native
    warm = tmp_path / "warm.dcm"
    dfx.write_native_multiframe(warm, frames=2, rows=SIDE, cols=SIDE, dtype=np.uint16)
    out, peak = _peak_of_one_frame_read(path, warm, 500)
    np.testing.assert_array_equal(out[0], frames[500])
    assert peak <= out.nbytes + _SLACK, f"reading one 8 KiB frame peaked at {peak / 2**20:.2f} MiB"


@pytest.fixture(scope="module")
def large_jpeg2000(tmp_path_factory):
    """600 frames of 64 x 64 uint16, lossless JPEG 2000 with a Basic Offset Table; with the frames."""
    path = tmp_path_factory.mktemp("j2k") / "j2k-600.dcm"
    frames = dfx.write_encapsulated_multiframe(path, frames=600, rows=SIDE, cols=SIDE, codec="jpeg2000", bits=16,
                                               offset_table="bot")
    return path, frames


def test_peak_memory_of_one_jpeg2000_frame(large_jpeg2000, tmp_path):
    path, frames = large_jpeg2000
    assert path.stat().st_size > 3 * _SLACK  # loading all the Pixel Data would break the bound several times
    warm = tmp_path / "warm.dcm"
    dfx.write_encapsulated_multiframe(warm, frames=2, rows=SIDE, cols=SIDE, codec="jpeg2000", bits=16,
                                      offset_table="bot")
    out, peak = _peak_of_one_frame_read(path, warm, 300)
    np.testing.assert_array_equal(out[0], frames[300])
    if _pydicom_decodes(dfx.TRANSFER_SYNTAX["jpeg2000"]):
        np.testing.assert_array_equal(out[0], pydicom.pixels.pixel_array(path, index=300))
    assert peak <= out.nbytes + _SLACK, f"reading one 8 KiB frame peaked at {peak / 2**20:.2f} MiB"


def test_enhanced_volume_whose_per_frame_groups_exceed_1_mb_is_ordered_by_them(tmp_path):
    """The header parse leaves elements over 1 MB on disk; they must still be read (they were taken as absent,
    and the frames silently kept in stored order)."""
    fx = dfx.write_enhanced_volume(tmp_path / "v.dcm", shape=(6600, 2, 2))
    from cucim_like.formats.dicom.header import DicomInstance

    raw = DicomInstance(str(tmp_path / "v.dcm")).ds.get_item("PerFrameFunctionalGroupsSequence", keep_deferred=True)
    assert raw.value is None  # deferred by the header parse
    assert list(fx.frame_order) != sorted(fx.frame_order)  # stored order is not slice order
    img = CuImage(tmp_path / "v.dcm")
    np.testing.assert_array_equal(img.read_region(), fx.volume)
    np.testing.assert_array_equal(img.read_region((0, 0, 3000), (2, 2, 5)), fx.volume[3000:3005])
