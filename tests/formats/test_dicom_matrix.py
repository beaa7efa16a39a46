"""DICOM WSI and volumes written by the tests (tests/formats/dicom_fixtures.py, checked there against pydicom),
read through CuImage and compared with the pixels the files were written from.

Lossless codecs must match exactly; JPEG within the decoder tolerance (the fixture's reference is imagecodecs'
decode of the stored tiles, which may differ from our TurboJPEG path by a rounding step).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from cucim_like import CuImage
from cucim_like.errors import CorruptFileError, CucimLikeError, InvalidArgumentError, UnsupportedFormatError
from cucim_like.formats.dicom import frames as dicom_frames
from tests.formats import dicom_fixtures as dfx

pytest.importorskip("pydicom")
JPEG_TOL = 2


def _assert_pixels(got: np.ndarray, ref: np.ndarray, lossy: bool) -> None:
    got = got.reshape(ref.shape)
    if lossy:
        assert np.abs(got.astype(np.int64) - ref.astype(np.int64)).max() <= JPEG_TOL
    else:
        np.testing.assert_array_equal(got, ref)


WSI_CASES = [
    dict(codec="native"),
    dict(codec="implicit"),
    dict(codec="native", samples=1, bits=16),
    dict(codec="native", samples=3, bits=8, big_endian=True),
    dict(codec="native", samples=1, bits=16, big_endian=True),
    dict(codec="jpeg", offset_table="bot"),
    dict(codec="jpeg", offset_table="none"),
    dict(codec="jpeg", offset_table="eot"),
    dict(codec="jpeg", offset_table="bot", fragments_per_frame=3),
    dict(codec="jpeg", offset_table="none", fragments_per_frame=3),
    dict(codec="jpeg", samples=1),
    dict(codec="jpegls", offset_table="none"),
    dict(codec="jpegls", samples=1, bits=16, offset_table="eot"),
    dict(codec="jpeg2000", offset_table="bot"),
    dict(codec="jpeg2000", offset_table="none", fragments_per_frame=3),
    dict(codec="jpeg2000", samples=1, bits=16),
    dict(codec="htj2k"),
    dict(codec="rle"),
    dict(codec="rle", samples=1, bits=16, offset_table="none"),
    dict(codec="ljpeg"),
    dict(codec="ljpeg", samples=1, bits=16, offset_table="none"),
]


def _case_id(case: dict) -> str:
    return "-".join(f"{v}" if k == "codec" else f"{k}={v}" for k, v in case.items())


@pytest.mark.parametrize("case", WSI_CASES, ids=_case_id)
def test_wsi_levels_equal_reference(tmp_path, case):
    fx = dfx.write_wsi(tmp_path, size=(200, 136), tile=(64, 48), levels=2, **case)
    img = CuImage(tmp_path)
    assert img.metadata["cucim"]["format"] == "dicom"
    assert img.resolutions["level_count"] == 2
    for k, refs in enumerate(fx.levels):
        ref = refs[(0, 0)]
        h, w = ref.shape[:2]
        assert img.resolutions["level_dimensions"][k] == (w, h)
        got = img.read_region((0, 0), (w, h), level=k)
        assert got.dtype == ref.dtype
        _assert_pixels(got, ref, fx.lossy)
    # a region across tiles and past the right/bottom edges: fill outside
    ref0 = fx.levels[0][(0, 0)]
    h0, w0 = ref0.shape[:2]
    got = img.read_region((w0 - 70, h0 - 50), (90, 60))
    _assert_pixels(got[:50, :70], ref0[h0 - 50 :, w0 - 70 :], fx.lossy)
    fill = 255 if ref0.shape[2] == 3 else 0
    assert (got[50:] == fill).all() and (got[:, 70:] == fill).all()


def test_wsi_single_file_gathers_its_series(tmp_path):
    fx = dfx.write_wsi(tmp_path, levels=3, associated=("label", "overview", "thumbnail"))
    img = CuImage(fx.level_paths[1][0])  # open any file of the series
    assert img.resolutions["level_count"] == 3
    assert img.resolutions["level_downsamples"] == pytest.approx((1.0, 2.0, 4.0), rel=0.02)
    assert img.associated_images == {"label", "macro", "thumbnail"}
    for ours, theirs in (("label", "label"), ("macro", "overview"), ("thumbnail", "thumbnail")):
        np.testing.assert_array_equal(img.associated_image(ours), fx.associated[theirs])
    assert img.spacing("YX") == pytest.approx([v * 1000 for v in fx.pixel_spacing_mm])
    # a list of files works too
    listed = CuImage([str(p) for p in fx.paths])
    np.testing.assert_array_equal(listed.read_region((0, 0), (300, 200)), fx.levels[0][(0, 0)])


@pytest.mark.parametrize("codec", ["native", "jpeg2000"])
def test_wsi_sparse_missing_tiles_are_filled(tmp_path, codec):
    fx = dfx.write_wsi(tmp_path, codec=codec, sparse=True, missing_tiles=[(1, 0), (2, 2)], levels=1)
    img = CuImage(tmp_path)
    ref = fx.levels[0][(0, 0)]
    got = img.read_region((0, 0), (ref.shape[1], ref.shape[0]))
    mask = fx.missing_mask[0]
    assert mask.any()
    np.testing.assert_array_equal(got[~mask], ref[~mask])
    assert (got[mask] == img._source.default_fill).all()
    assert img.metadata["dicom"]["dimension_organization_type"] == "TILED_SPARSE"


@pytest.mark.parametrize("codec", ["native", "jpeg2000"])
def test_wsi_concatenation_parts_in_any_file_order(tmp_path, codec):
    fx = dfx.write_wsi(tmp_path, codec=codec, concatenations=3, levels=2)
    img = CuImage(tmp_path)
    for k, refs in enumerate(fx.levels):
        ref = refs[(0, 0)]
        np.testing.assert_array_equal(img.read_region((0, 0), (ref.shape[1], ref.shape[0]), level=k), ref)


def test_wsi_concatenated_sparse(tmp_path):
    fx = dfx.write_wsi(tmp_path, codec="ljpeg", sparse=True, concatenations=2, missing_tiles=[(0, 0)])
    img = CuImage(tmp_path)
    ref, mask = fx.levels[0][(0, 0)], fx.missing_mask[0]
    got = img.read_region((0, 0), (ref.shape[1], ref.shape[0]))
    np.testing.assert_array_equal(got[~mask], ref[~mask])


@pytest.mark.parametrize("sparse", [False, True])
def test_wsi_optical_paths_and_focal_planes(tmp_path, sparse):
    fx = dfx.write_wsi(tmp_path, codec="jpegls", samples=1, optical_paths=2, focal_planes=2, sparse=sparse)
    img = CuImage(tmp_path)
    assert img.optical_paths == ["0", "1"]
    assert len(img.focal_planes) == 2
    w, h = img.size("XY")
    default = img.read_region((0, 0), (w, h))
    np.testing.assert_array_equal(default, fx.levels[0][(0, 0)])
    for p in range(2):
        for z in range(2):
            got = img.read_region((0, 0), (w, h), optical_path=p, focal_plane=z)
            np.testing.assert_array_equal(got, fx.levels[0][(p, z)])
    np.testing.assert_array_equal(img.read_region((0, 0), (w, h), optical_path="1"), fx.levels[0][(1, 0)])
    np.testing.assert_array_equal(img.read_region((0, 0), (w, h), focal_plane=float(img.focal_planes[1])),
                                  fx.levels[0][(0, 1)])
    # the variants are cached apart: reading them again gives the same answers
    np.testing.assert_array_equal(img.read_region((0, 0), (w, h), optical_path=1, focal_plane=1),
                                  fx.levels[0][(1, 1)])
    with pytest.raises(InvalidArgumentError):
        img.read_region((0, 0), (w, h), optical_path=2)
    with pytest.raises(InvalidArgumentError):
        img.read_region((0, 0), (w, h), focal_plane=123.0)
    with pytest.raises(InvalidArgumentError):
        img.read_region((0, 0), (w, h), focal_plane="top")


def test_wsi_legacy_file_infers_tiled_full(tmp_path):
    fx = dfx.write_wsi(tmp_path, legacy=True, levels=2)
    img = CuImage(tmp_path)
    section = img.metadata["dicom"]
    assert section["inferred_tiling"] is True
    assert "inferred" in section["dimension_organization_type"]
    np.testing.assert_array_equal(img.read_region((0, 0), (300, 200)), fx.levels[0][(0, 0)])


def test_wsi_opening_reads_no_pixel_data(tmp_path):
    fx = dfx.write_wsi(tmp_path, codec="jpegls", offset_table="none", levels=1)
    img = CuImage(fx.paths[0])
    assert all(inst._frame_table is None for inst in img._source.instances)
    img.read_region((0, 0), (10, 10))
    assert img._source.instances[0]._frame_table is not None


def test_single_plane_sparse_frames_are_placed_on_first_read_not_at_open(tmp_path, monkeypatch):
    """One focal plane: the per-frame positions are read by the first read of the level, once for all its
    optical paths; opening a sparse slide does not walk its PerFrameFunctionalGroupsSequence."""
    from cucim_like.formats.dicom import wsi

    calls = []
    real = wsi._Frames.add_sparse
    monkeypatch.setattr(wsi._Frames, "add_sparse", lambda self, *a: (calls.append(a[0]), real(self, *a))[1])
    fx = dfx.write_wsi(tmp_path / "one", codec="native", sparse=True, missing_tiles=[(1, 0)], levels=2)
    img = CuImage(tmp_path / "one")
    assert calls == []
    ref, mask = fx.levels[0][(0, 0)], fx.missing_mask[0]
    for _ in range(2):
        got = img.read_region((0, 0), (ref.shape[1], ref.shape[0]))
        np.testing.assert_array_equal(got[~mask], ref[~mask])
        assert (got[mask] == img._source.default_fill).all()
    assert len(calls) == 1  # level 0's instance, once
    np.testing.assert_array_equal(img.read_region((0, 0), (50, 40), level=1), fx.levels[1][(0, 0)][:40, :50])
    assert len(calls) == 2

    calls.clear()
    fx = dfx.write_wsi(tmp_path / "paths", codec="native", sparse=True, optical_paths=2, levels=1)
    img = CuImage(tmp_path / "paths")
    assert calls == [] and img.optical_paths == ["0", "1"]
    for p in (0, 1):
        ref = fx.levels[0][(p, 0)]
        np.testing.assert_array_equal(img.read_region((0, 0), (ref.shape[1], ref.shape[0]), optical_path=p), ref)
    assert len(calls) == 1  # the positions of both paths' frames, read once



@pytest.mark.parametrize("codec, big_endian", [("native", False), ("implicit", False), ("native", True),
                                               ("jpegls", False)])
def test_sparse_focal_planes_are_found_by_a_scan_and_frames_placed_on_first_read(tmp_path, monkeypatch, codec,
                                                                                 big_endian):
    """Several focal planes: opening finds the planes by scanning the per-frame groups' bytes (any dataset
    encoding), without walking the parsed items; the first read places every frame, once for all variants."""
    from cucim_like.formats.dicom import wsi

    calls = []
    real = wsi._Frames.add_sparse
    monkeypatch.setattr(wsi._Frames, "add_sparse", lambda self, *a: (calls.append(a[0]), real(self, *a))[1])
    fx = dfx.write_wsi(tmp_path, codec=codec, big_endian=big_endian, sparse=True, focal_planes=3, optical_paths=2,
                       levels=1, samples=1 if codec == "jpegls" else 3, missing_tiles=[(2, 1)])
    img = CuImage(tmp_path)
    assert calls == []
    assert img.optical_paths == ["0", "1"] and len(img.focal_planes) == 3
    mask = fx.missing_mask[0]
    for (p, z), ref in fx.levels[0].items():
        got = img.read_region((0, 0), (ref.shape[1], ref.shape[0]), optical_path=p, focal_plane=z)
        np.testing.assert_array_equal(got[~mask], ref[~mask])
    assert len(calls) == 1


def test_sparse_focal_planes_the_scan_cannot_settle_are_read_at_open(tmp_path, monkeypatch):
    """TotalPixelMatrixFocalPlanes disagreeing with the planes the frames name: the positions are parsed at
    open, as for any other layout, and the frames' own planes are offered."""
    pydicom = pytest.importorskip("pydicom")
    from cucim_like.formats.dicom import wsi

    fx = dfx.write_wsi(tmp_path, codec="native", sparse=True, focal_planes=2, levels=1)
    ds = pydicom.dcmread(fx.paths[0])
    ds.TotalPixelMatrixFocalPlanes = 3
    ds.save_as(fx.paths[0])
    calls = []
    real = wsi._Frames.add_sparse
    monkeypatch.setattr(wsi._Frames, "add_sparse", lambda self, *a: (calls.append(a[0]), real(self, *a))[1])
    img = CuImage(fx.paths[0])
    assert calls  # at open
    assert len(img.focal_planes) == 2
    for (_, z), ref in fx.levels[0].items():
        np.testing.assert_array_equal(img.read_region((0, 0), (ref.shape[1], ref.shape[0]), focal_plane=z), ref)


def test_frame_off_the_scanned_focal_planes_is_a_typed_error_on_first_read(tmp_path, monkeypatch):
    from cucim_like.formats.dicom import header

    fx = dfx.write_wsi(tmp_path, codec="native", sparse=True, focal_planes=2, levels=1)
    real = header.DicomInstance.scan_values
    # a scan fooled by bytes elsewhere: it finds the right count, but one plane the frames do not use
    monkeypatch.setattr(header.DicomInstance, "scan_values",
                        lambda self, *a: [b"7.5" if v != b"0.0 " else v for v in real(self, *a)])
    img = CuImage(fx.paths[0])
    assert 7.5 in img.focal_planes
    with pytest.raises(CorruptFileError, match="not on the focal planes") as info:
        img.read_region((0, 0), (32, 32))
    assert info.value.path is not None


def test_sparse_frame_naming_an_undeclared_optical_path_is_a_typed_error(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    fx = dfx.write_wsi(tmp_path, codec="native", sparse=True, optical_paths=2, levels=1)
    ds = pydicom.dcmread(fx.paths[0])
    ds.PerFrameFunctionalGroupsSequence[3].OpticalPathIdentificationSequence[0].OpticalPathIdentifier = "9"
    ds.save_as(fx.paths[0])
    img = CuImage(fx.paths[0])
    with pytest.raises(CorruptFileError, match="'9'"):
        img.read_region((0, 0), (32, 32), optical_path=1)


def test_sparse_matrix_far_larger_than_its_frames_is_refused_before_any_grid_is_made(tmp_path):
    fx = dfx.write_wsi(tmp_path, codec="native", sparse=True, levels=1, size=(160, 120), tile=(64, 48))
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(fx.paths[0])
    ds.TotalPixelMatrixRows = 2**31 - 1  # 44.7 million tile rows for 9 frames: dense tables of gigabytes
    ds.save_as(fx.paths[0])
    with pytest.raises(CorruptFileError, match="tiles for"):
        CuImage(fx.paths[0])


def test_damaged_per_frame_position_is_a_typed_error_on_first_read(tmp_path):
    fx = dfx.write_wsi(tmp_path, codec="native", sparse=True, levels=1, size=(160, 120), tile=(64, 48))
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(fx.paths[0])
    ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSlideSequence[0].ColumnPositionInTotalImagePixelMatrix = [
        1, 65]  # two values where one is allowed
    ds.save_as(fx.paths[0])
    img = CuImage(fx.paths[0])  # one optical path, one focal plane: positions are read by the first read
    with pytest.raises(CorruptFileError, match="per-frame") as info:
        img.read_region((0, 0), (64, 48))
    assert info.value.path is not None


def test_frame_index_scanned_once_per_file(tmp_path, monkeypatch):
    path = tmp_path / "ls.dcm"
    ref = dfx.write_encapsulated_multiframe(path, frames=12, codec="jpegls", offset_table="none")
    calls = []
    real_scan = dicom_frames._scan

    def counting(inst, first):
        calls.append(inst.path)
        return real_scan(inst, first)

    monkeypatch.setattr(dicom_frames, "_scan", counting)
    monkeypatch.setattr(dicom_frames, "_indexes", type(dicom_frames._indexes)())
    img = CuImage(path)
    for i in (3, 7, 11, 0):
        np.testing.assert_array_equal(img.read_region((0, 0, i), (48, 64, 1))[0], ref[i])
    assert calls == [str(path)]
    again = CuImage(path)  # the same file opened again: its index is kept per process
    np.testing.assert_array_equal(again.read_region((0, 0, 5), (48, 64, 1))[0], ref[5])
    assert calls == [str(path)]

    # the file rewritten with other frames (as many): a new identity, scanned again
    ref = dfx.write_encapsulated_multiframe(path, frames=12, codec="jpegls", offset_table="none", seed=1)
    os.utime(path, (10, 10))  # distinct mtimes, whole seconds apart: some file systems keep seconds only
    changed = CuImage(path)
    for i in (6, 2):
        np.testing.assert_array_equal(changed.read_region((0, 0, i), (48, 64, 1))[0], ref[i])
    assert calls == [str(path)] * 2

    # rewritten between an open and its first read (here with the same bytes, so that read succeeds): what
    # it indexes, from the header it opened, is not kept under the new file's identity
    dfx.write_encapsulated_multiframe(path, frames=12, codec="jpegls", offset_table="none", seed=2)
    os.utime(path, (20, 20))
    stale = CuImage(path)
    ref = dfx.write_encapsulated_multiframe(path, frames=12, codec="jpegls", offset_table="none", seed=2)
    os.utime(path, (30, 30))
    try:
        stale.read_region((0, 0, 1), (48, 64, 1))
    except CucimLikeError:
        pass
    fresh = CuImage(path)
    for i in (11, 4):
        np.testing.assert_array_equal(fresh.read_region((0, 0, i), (48, 64, 1))[0], ref[i])
    assert len(calls) == 4


@pytest.mark.parametrize("offset_table", ["bot", "none", "eot"])
@pytest.mark.parametrize("fragments", [1, 3])
@pytest.mark.parametrize("codec", ["jpegls", "jpeg2000", "jpeg"])
def test_encapsulated_multiframe(tmp_path, codec, offset_table, fragments):
    if offset_table == "eot" and fragments > 1:
        pytest.skip("an Extended Offset Table holds single-fragment frames")
    path = tmp_path / "mf.dcm"
    ref = dfx.write_encapsulated_multiframe(path, frames=9, codec=codec, offset_table=offset_table,
                                            fragments_per_frame=fragments)
    img = CuImage(path)
    assert img.dims == "ZYX" and img.shape == list(ref.shape)
    _assert_pixels(img.read_region(), ref, codec == "jpeg")
    _assert_pixels(img.read_region((5, 6, 4), (20, 30, 3)), ref[4:7, 6:36, 5:25], codec == "jpeg")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
@pytest.mark.parametrize("big_endian", [False, True])
def test_native_multiframe_zero_copy_no_widening(tmp_path, dtype, big_endian):
    path = tmp_path / "native.dcm"
    ref = dfx.write_native_multiframe(path, frames=30, rows=40, cols=24, dtype=dtype, big_endian=big_endian)
    img = CuImage(path)
    assert img.dtype == np.dtype(dtype)
    frame = img.read_region((0, 0, 17), (24, 40, 1))
    assert frame.dtype == np.dtype(dtype) and frame.dtype.isnative
    np.testing.assert_array_equal(frame[0], ref[17])
    np.testing.assert_array_equal(img.read_region(), ref)
    assert img.levels[0].codec.name == "dicom-native"


# -- volumes ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,codec", [("int16", "native"), ("uint16", "rle"), ("int16", "jpegls"),
                                         ("uint8", "jpeg2000"), ("uint16", "implicit")])
def test_volume_series(tmp_path, dtype, codec):
    fx = dfx.write_volume_series(tmp_path, dtype=dtype, codec=codec, orientation=(0, 1, 0, 0, 0, -1))
    img = CuImage(tmp_path)
    assert img.is_volume and img.dims == "ZYX"
    assert img.shape == list(fx.volume.shape)
    np.testing.assert_array_equal(img.read_region(), fx.volume)
    z, y, x = 2, 5, 3
    np.testing.assert_array_equal(img.read_region((x, y, z), (10, 12, 3)), fx.volume[z : z + 3, y : y + 12, x : x + 10])
    assert img.spacing() == pytest.approx(list(fx.spacing), rel=1e-4)
    assert img.origin == pytest.approx(list(fx.origin), abs=1e-4)
    np.testing.assert_allclose(np.array(img.direction), np.asarray(fx.direction).T, atol=1e-6)
    hu = img.read_region(rescale=True)
    assert hu.dtype == np.float32
    slope, intercept = fx.rescale[0]
    np.testing.assert_allclose(hu, fx.volume * np.float32(slope) + np.float32(intercept), rtol=1e-6)
    assert img.metadata["cucim"]["dims"] == "ZYX"


def test_volume_rgb_series(tmp_path):
    fx = dfx.write_volume_series(tmp_path, dtype="uint8", samples=3)
    img = CuImage(tmp_path)
    assert img.dims == "ZYXC"
    np.testing.assert_array_equal(img.read_region(), fx.volume)


def test_volume_gap_irregular_and_mixed_series(tmp_path):
    gap = tmp_path / "gap"
    dfx.write_volume_series(gap, gap_at=3)
    with pytest.raises(UnsupportedFormatError, match="irregular"):
        CuImage(gap)
    irregular = tmp_path / "irregular"
    dfx.write_volume_series(irregular, irregular=True)
    with pytest.raises(UnsupportedFormatError, match="irregular"):
        CuImage(irregular)
    mixed = tmp_path / "mixed"
    fx = dfx.write_volume_series(mixed, second_series=True)
    with pytest.raises(UnsupportedFormatError, match="series_uid"):
        CuImage(mixed)
    for chosen in (fx, fx.second):
        img = CuImage(mixed, series_uid=chosen.series_uid)
        np.testing.assert_array_equal(img.read_region(), chosen.volume)
    with pytest.raises(InvalidArgumentError):
        CuImage(mixed, series_uid="1.2.3")


@pytest.mark.parametrize("codec", ["native", "jpegls", "rle"])
def test_enhanced_volume_per_frame_order_and_rescale(tmp_path, codec):
    path = tmp_path / "enhanced.dcm"
    n = 5
    rescale = [(1.0 + 0.5 * k, -1000.0 + k) for k in range(n)]
    fx = dfx.write_enhanced_volume(path, codec=codec, rescale=rescale)
    assert fx.frame_order != sorted(fx.frame_order)
    img = CuImage(path)
    np.testing.assert_array_equal(img.read_region(), fx.volume)
    hu = img.read_region((0, 0, 1), (16, 20, 3), rescale=True)
    expected = np.stack([fx.volume[k] * np.float32(s) + np.float32(b) for k, (s, b) in enumerate(rescale)])[1:4]
    np.testing.assert_allclose(hu, expected, rtol=1e-6)
    assert img.spacing("Z")[0] == pytest.approx(fx.spacing[0], rel=1e-4)


def test_volume_pickles_and_reopens(tmp_path):
    import pickle

    fx = dfx.write_volume_series(tmp_path / "s", second_series=True)
    img = CuImage(tmp_path / "s", series_uid=fx.series_uid)
    again = pickle.loads(pickle.dumps(img))
    np.testing.assert_array_equal(again.read_region(), fx.volume)


# -- bad input --------------------------------------------------------------------------------------------------
def _rewrite(path, edit) -> None:
    data = bytearray(path.read_bytes())
    edit(data)
    path.write_bytes(bytes(data))


def test_bot_pointing_past_the_end(tmp_path):
    import struct

    path = tmp_path / "bot.dcm"
    dfx.write_encapsulated_multiframe(path, frames=4, codec="jpegls", offset_table="bot")
    img = CuImage(path)
    pos = img._source.instances[0].pixel_offset

    def edit(data):
        struct.pack_into("<I", data, pos + 8 + 4 * 2, 0x7FFFFFF0)

    _rewrite(path, edit)
    img = CuImage(path)  # the header is fine: opening works
    with pytest.raises(CorruptFileError) as ei:
        img.read_region((0, 0, 0), (8, 8, 1))
    assert ei.value.path == str(path) and "frame 2" in str(ei.value)


def test_truncated_native_and_encapsulated(tmp_path):
    native = tmp_path / "n.dcm"
    dfx.write_native_multiframe(native, frames=10, rows=16, cols=16)
    native.write_bytes(native.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="truncated"):
        CuImage(native)
    enc = tmp_path / "e.dcm"
    dfx.write_encapsulated_multiframe(enc, frames=6, codec="jpegls", offset_table="none")
    enc.write_bytes(enc.read_bytes()[:-300])
    img = CuImage(enc)
    with pytest.raises(CorruptFileError):
        img.read_region()


def test_number_of_frames_disagreeing_with_fragments(tmp_path):
    import pydicom

    path = tmp_path / "nf.dcm"
    dfx.write_encapsulated_multiframe(path, frames=6, codec="jpegls", offset_table="none")
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 9
    ds.save_as(path)
    img = CuImage(path)
    with pytest.raises(CucimLikeError, match="fragments"):
        img.read_region()


def test_deflated_transfer_syntax(tmp_path):
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    fx = dfx.write_volume_series(tmp_path / "s", shape=(3, 20, 16), shuffle_names=False)
    deflated = tmp_path / "deflated"
    deflated.mkdir()
    for p in fx.paths:
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(deflated / p.name, enforce_file_format=True)
    img = CuImage(deflated)
    np.testing.assert_array_equal(img.read_region(), fx.volume)
    # a truncated deflate stream is a typed error (deflate carries no checksum: flipped bits go unseen)
    bad = deflated / fx.paths[0].name
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="deflate"):
        CuImage(bad)


def test_icc_profile_exposed(tmp_path):
    import pydicom

    fx = dfx.write_wsi(tmp_path, levels=1)
    ds = pydicom.dcmread(fx.paths[0])
    profile = b"\x00\x00\x02\x0cICC-test-profile" + bytes(500)
    ds.OpticalPathSequence[0].ICCProfile = profile
    ds.save_as(fx.paths[0])
    img = CuImage(tmp_path)
    assert img.icc_profile == profile
    assert img.metadata["dicom"]["has_icc_profile"] is True


def test_sparse_focal_planes_of_a_deferred_per_frame_sequence_are_scanned_from_the_file(tmp_path, monkeypatch):
    """Per-frame groups over 1 MB are left on disk by the header parse; the scan reads their bytes."""
    from cucim_like.formats.dicom import wsi
    from cucim_like.formats.dicom.header import DicomInstance

    fx = dfx.write_wsi(tmp_path, codec="native", sparse=True, focal_planes=2, levels=1, size=(576, 512), tile=(8, 8))
    raw = DicomInstance(str(fx.paths[0])).ds.get_item("PerFrameFunctionalGroupsSequence", keep_deferred=True)
    assert raw.value is None  # deferred: this test reaches the file-reading branch
    calls = []
    real = wsi._Frames.add_sparse
    monkeypatch.setattr(wsi._Frames, "add_sparse", lambda self, *a: (calls.append(a[0]), real(self, *a))[1])
    img = CuImage(fx.paths[0])
    assert calls == [] and len(img.focal_planes) == 2
    for (_, z), ref in fx.levels[0].items():
        np.testing.assert_array_equal(img.read_region((100, 60), (90, 70), focal_plane=z), ref[60:130, 100:190])


def test_single_plane_sparse_slide_offers_the_plane_its_frames_name(tmp_path):
    """One focal plane, named only in the per-frame groups: the lazily opened level offers that plane, as a
    parse of every frame at open would (not the shared groups' default of 0)."""
    pydicom = pytest.importorskip("pydicom")
    fx = dfx.write_wsi(tmp_path, codec="native", sparse=True, levels=1, size=(160, 120), tile=(64, 48))
    ds = pydicom.dcmread(fx.paths[0])
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.PlanePositionSlideSequence[0].ZOffsetInSlideCoordinateSystem = "2.5"
    ds.save_as(fx.paths[0])
    img = CuImage(fx.paths[0])
    assert img.focal_planes == [2.5]
    ref = fx.levels[0][(0, 0)]
    np.testing.assert_array_equal(img.read_region((0, 0), (160, 120), focal_plane=2.5), ref)
