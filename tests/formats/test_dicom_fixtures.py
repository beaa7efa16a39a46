"""The DICOM fixture writers, checked against independent readers.

Files from ``dicom_fixtures`` are read back with pydicom (``dcmread``, its pixel decoders, its encapsulation
helpers), with a small item parser written here, and with imagecodecs decoders, and compared with the
references the writers return. Nothing here imports cucim_like's DICOM code.
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.decoders import JPEGLosslessSV1Decoder

from tests.formats import dicom_fixtures as fx

ITEM = b"\xfe\xff\x00\xe0"
DELIMITER = b"\xfe\xff\xdd\xe0"
LOSSLESS_ENCAPSULATED = ("jpegls", "jpeg2000", "htj2k", "rle", "ljpeg")


# -- independent readers -------------------------------------------------------------------------------------
def parse_items(value: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(Basic Offset Table, [(offset of item tag after the BOT item, fragment)]) of encapsulated Pixel Data."""
    assert value[:4] == ITEM, "encapsulated Pixel Data must start with the BOT item"
    (bot_length,) = struct.unpack_from("<I", value, 4)
    bot = value[8:8 + bot_length]
    base = pos = 8 + bot_length
    fragments = []
    while value[pos:pos + 4] == ITEM:
        (length,) = struct.unpack_from("<I", value, pos + 4)
        assert length % 2 == 0, "fragment lengths must be even"
        fragments.append((pos - base, value[pos + 8:pos + 8 + length]))
        pos += 8 + length
    if pos < len(value):  # pydicom drops the delimiter when it reads the element; raw bytes still have it
        assert value[pos:] == DELIMITER + b"\x00" * 4, "bytes after the fragments are not a sequence delimiter"
    return bot, fragments


def split_frames(ds: Dataset, codec: str) -> list[bytes]:
    """Each frame's bytes, found with the BOT, the EOT or the codec's start marker; checks the tables."""
    bot, fragments = parse_items(ds.PixelData)
    starts = {offset: i for i, (offset, _) in enumerate(fragments)}
    n = int(ds.get("NumberOfFrames", 1))
    if "ExtendedOffsetTable" in ds:
        assert bot == b"", "the BOT must be empty when an EOT is present"
        offsets = list(struct.unpack(f"<{n}Q", ds.ExtendedOffsetTable))
        lengths = list(struct.unpack(f"<{n}Q", ds.ExtendedOffsetTableLengths))
    elif bot:
        assert len(bot) == 4 * n, "BOT entries != NumberOfFrames"
        offsets, lengths = list(struct.unpack(f"<{n}I", bot)), None
    elif len(fragments) == n:
        offsets, lengths = [off for off, _ in fragments], None
    else:
        marker = fx.START_MARKER[codec]
        assert marker is not None
        offsets, lengths = [off for off, data in fragments if data.startswith(marker)], None
    assert len(offsets) == n, "frames found != NumberOfFrames"
    assert all(off in starts for off in offsets), "an offset does not point at an item tag"
    bounds = [starts[off] for off in offsets] + [len(fragments)]
    frames = [b"".join(data for _, data in fragments[a:b]) for a, b in itertools.pairwise(bounds)]
    if lengths is not None:
        assert lengths == [len(f) for f in frames], "EOT lengths != frame lengths"
    marker = fx.START_MARKER[codec]
    if marker is not None:
        assert all(f.startswith(marker) for f in frames)
    return frames


def decode(codec: str, data: bytes, ds: Dataset) -> np.ndarray:
    """One encoded frame decoded with imagecodecs, as (rows, cols, samples) in the data set's dtype."""
    rows, cols, samples = ds.Rows, ds.Columns, ds.SamplesPerPixel
    signed = ds.PixelRepresentation == 1
    dtype = np.dtype(("i" if signed else "u") + str(ds.BitsAllocated // 8))
    if codec == "rle":
        planes = imagecodecs.dicomrle_decode(data, dtype=dtype.newbyteorder(">"))
        out = np.frombuffer(planes, dtype.newbyteorder(">")).reshape(samples, rows, cols).transpose(1, 2, 0)
    elif codec == "jpeg":
        out = imagecodecs.jpeg8_decode(data)
    elif codec == "jpegls":
        out = imagecodecs.jpegls_decode(data)
    elif codec == "jpeg2000":
        out = imagecodecs.jpeg2k_decode(data)
    elif codec == "htj2k":
        out = imagecodecs.jpeg2k_decode(data)  # OpenJPEG decodes HTJ2K too; cross-check with OpenJPH
        other = np.asarray(imagecodecs.htj2k_decode(data))
        if other.ndim == 3 and other.shape[0] == samples and other.shape[-1] != samples:
            other = other.transpose(1, 2, 0)  # htj2k_decode returns planes when no colour transform was used
        np.testing.assert_array_equal(other.reshape(np.shape(out)), out)
    elif codec == "ljpeg":
        out = imagecodecs.jpegsof3_decode(data)
    else:
        raise AssertionError(codec)
    out = np.asarray(out)
    if out.dtype.kind == "u" and signed:
        out = out.view(dtype)
    return out.astype(dtype).reshape(rows, cols, samples)


def pydicom_can_decode(ds: Dataset, codec: str) -> bool:
    """Whether pydicom's installed plugins decode this file (no HTJ2K; pillow: no 16-bit colour J2K)."""
    if codec == "htj2k":
        return False
    return not (codec == "jpeg2000" and ds.SamplesPerPixel > 1 and ds.BitsAllocated > 8)


def read_frames(path: Path, codec: str) -> tuple[Dataset, list[np.ndarray]]:
    """The data set and its frames, (rows, cols, samples) each, decoded two ways and compared."""
    ds = pydicom.dcmread(path)
    n = int(ds.get("NumberOfFrames", 1))
    shape = (n, ds.Rows, ds.Columns, ds.SamplesPerPixel)
    if codec in fx.NATIVE_CODECS:
        frames = list(ds.pixel_array.reshape(shape))
        return ds, frames
    raw = split_frames(ds, codec)
    tail = path.read_bytes()
    header = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"  # (7FE0,0010) OB, undefined length
    assert tail.endswith(DELIMITER + b"\x00" * 4) and tail.count(header) == 1
    assert not tail.endswith((DELIMITER + b"\x00" * 4) * 2), "doubled sequence delimiter"
    parse_items(tail[tail.index(header) + len(header):])
    extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths) if "ExtendedOffsetTable" in ds else None
    via_pydicom = list(generate_frames(ds.PixelData, number_of_frames=n, extended_offsets=extended))
    assert [f.rstrip(b"\x00") for f in via_pydicom] == [f.rstrip(b"\x00") for f in raw]
    frames = [decode(codec, f, ds) for f in raw]
    if pydicom_can_decode(ds, codec):
        other = ds.pixel_array.reshape(shape)
        for a, b in zip(frames, other, strict=True):
            if codec == "jpeg":
                diff = np.abs(a.astype(np.int32) - b)
                assert diff.max() <= 12 and diff.mean() < 1.5
            else:
                np.testing.assert_array_equal(a, b)
    return ds, frames


def frame_positions(ds: Dataset, tile: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(optical path, focal plane, tile row, tile column) of each frame of one WSI instance."""
    n = int(ds.NumberOfFrames)
    if ds.get("DimensionOrganizationType") == "TILED_SPARSE":
        ids = [item.OpticalPathIdentifier for item in ds.OpticalPathSequence]
        spacing = float(ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices)
        out = []
        for item in ds.PerFrameFunctionalGroupsSequence:
            pos = item.PlanePositionSlideSequence[0]
            col = int(pos.ColumnPositionInTotalImagePixelMatrix) - 1
            row = int(pos.RowPositionInTotalImagePixelMatrix) - 1
            assert col % tile[0] == 0 and row % tile[1] == 0
            z = round(float(pos.ZOffsetInSlideCoordinateSystem) / (spacing * 1000.0))
            path = ids.index(item.OpticalPathIdentificationSequence[0].OpticalPathIdentifier)
            out.append((path, z, row // tile[1], col // tile[0]))
        assert len(out) == n
        return out
    across = -(-int(ds.TotalPixelMatrixColumns) // tile[0])
    down = -(-int(ds.TotalPixelMatrixRows) // tile[1])
    focal = int(ds.TotalPixelMatrixFocalPlanes)
    offset = int(ds.get("ConcatenationFrameOffsetNumber", 0))
    out = []
    for i in range(offset, offset + n):
        tx, rest = i % across, i // across
        ty, rest = rest % down, rest // down
        z, path = rest % focal, rest // focal
        out.append((path, z, ty, tx))
    return out


def read_level(paths: list[Path], codec: str, fill: int) -> tuple[dict[tuple[int, int], np.ndarray], np.ndarray]:
    """A WSI level assembled from its instances: planes keyed (optical path, focal plane), and a present mask."""
    parts = []
    for path in paths:
        ds, frames = read_frames(path, codec)
        parts.append((int(ds.get("InConcatenationNumber", 1)), ds, frames))
    parts.sort(key=lambda p: p[0])
    first = parts[0][1]
    tile = (int(first.Columns), int(first.Rows))
    h, w, s = int(first.TotalPixelMatrixRows), int(first.TotalPixelMatrixColumns), int(first.SamplesPerPixel)
    across, down = -(-w // tile[0]), -(-h // tile[1])
    planes: dict[tuple[int, int], np.ndarray] = {}
    present = np.zeros((down * tile[1], across * tile[0]), bool)
    seen = set()
    for _, ds, frames in parts:
        for (p, z, ty, tx), frame in zip(frame_positions(ds, tile), frames, strict=True):
            assert (p, z, ty, tx) not in seen, "two frames for one tile"
            seen.add((p, z, ty, tx))
            canvas = planes.setdefault((p, z), np.full((down * tile[1], across * tile[0], s), fill, frame.dtype))
            canvas[ty * tile[1]:(ty + 1) * tile[1], tx * tile[0]:(tx + 1) * tile[0]] = frame
            present[ty * tile[1]:(ty + 1) * tile[1], tx * tile[0]:(tx + 1) * tile[0]] = True
    return {k: v[:h, :w] for k, v in planes.items()}, present[:h, :w]


def check_wsi(fixture: fx.WsiFixture, codec: str) -> None:
    """Every level of ``fixture`` read back equals its reference (JPEG: imagecodecs decode, near original)."""
    for level, paths in enumerate(fixture.level_paths):
        planes, present = read_level(paths, codec, fixture.fill_value)
        assert set(planes) == set(fixture.levels[level])
        np.testing.assert_array_equal(~present, fixture.missing_mask[level])
        for key, ref in fixture.levels[level].items():
            np.testing.assert_array_equal(planes[key], ref)
            assert (ref[fixture.missing_mask[level]] == fixture.fill_value).all()
            original = fixture.originals[level][key]
            keep = ~fixture.missing_mask[level]
            if fixture.lossy:
                diff = np.abs(ref.astype(np.float64) - original)[keep]
                assert diff.mean() < 6.0
            else:
                np.testing.assert_array_equal(ref[keep], original[keep])


# -- whole-slide images --------------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", ["native", "implicit", "jpeg", *LOSSLESS_ENCAPSULATED])
def test_wsi_codecs(tmp_path: Path, codec: str) -> None:
    fixture = fx.write_wsi(tmp_path, codec=codec, levels=2)
    check_wsi(fixture, codec)
    assert fixture.lossy == (codec == "jpeg")
    ts = {pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID for p in fixture.paths}
    assert ts == {fx.TRANSFER_SYNTAX[codec]}
    if codec == "jpeg":
        ds = pydicom.dcmread(fixture.paths[0], stop_before_pixels=True)
        assert ds.PhotometricInterpretation == "YBR_FULL_422" and ds.LossyImageCompression == "01"


def test_wsi_attributes(tmp_path: Path) -> None:
    fixture = fx.write_wsi(tmp_path, levels=3, associated=("label", "overview", "thumbnail"))
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in fixture.paths]
    assert [p.name for p in fixture.paths] == [
        "level0.dcm", "level1.dcm", "level2.dcm", "label.dcm", "overview.dcm", "thumbnail.dcm"]
    for attr in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "ContainerIdentifier"):
        assert len({str(ds.get(attr)) for ds in datasets}) == 1
    assert datasets[0].SeriesInstanceUID == fixture.series_uid
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert all(ds.SOPClassUID == fx.WSI_SOP_CLASS for ds in datasets)
    assert list(datasets[0].ImageType) == ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    for k in range(3):
        ds = datasets[k]
        if k:
            assert list(ds.ImageType) == ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
        ref = fixture.levels[k][(0, 0)]
        assert (ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns) == ref.shape[:2]
        assert ref.shape[:2] == (-(-200 // 2**k), -(-300 // 2**k))
        assert (ds.Rows, ds.Columns) == (64, 64)
        across, down = -(-ref.shape[1] // 64), -(-ref.shape[0] // 64)
        assert ds.NumberOfFrames == across * down
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        assert [float(v) for v in measures.PixelSpacing] == pytest.approx([0.0005 * 2**k] * 2)
        assert ds.DimensionOrganizationType == "TILED_FULL"
        assert ds.PhotometricInterpretation == "RGB" and ds.PlanarConfiguration == 0
        assert (ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (3, 8, 8, 7)
        assert ds.NumberOfOpticalPaths == 1 and ds.TotalPixelMatrixFocalPlanes == 1
        assert ds.OpticalPathSequence[0].OpticalPathIdentifier == "0"
        assert ds.ImagedVolumeWidth == pytest.approx(0.15) and ds.ImagedVolumeHeight == pytest.approx(0.1)
        np.testing.assert_array_equal(fixture.levels[k][(0, 0)], fixture.levels[0][(0, 0)][:: 2**k, :: 2**k])
    for kind, ds in zip(("label", "overview", "thumbnail"), datasets[3:], strict=True):
        assert ds.ImageType[2] == kind.upper()
        np.testing.assert_array_equal(pydicom.dcmread(fixture.associated_paths[kind]).pixel_array,
                                      fixture.associated[kind])
    thumb = fixture.associated["thumbnail"]
    step = 200 // thumb.shape[0] + (200 % thumb.shape[0] > 0)
    np.testing.assert_array_equal(thumb, fixture.levels[0][(0, 0)][::step, ::step])


@pytest.mark.parametrize("offset_table", ["bot", "none", "eot"])
@pytest.mark.parametrize("fragments", [1, 3])
@pytest.mark.parametrize("codec", ["jpeg", "jpeg2000", "rle"])
def test_wsi_offset_tables(tmp_path: Path, codec: str, offset_table: str, fragments: int) -> None:
    if fragments > 1 and (offset_table == "eot" or (codec == "rle" and offset_table == "none")):
        with pytest.raises(ValueError, match=r"start marker|one fragment per frame"):
            fx.write_wsi(tmp_path, codec=codec, offset_table=offset_table, fragments_per_frame=fragments)
        return
    fixture = fx.write_wsi(tmp_path, codec=codec, offset_table=offset_table, fragments_per_frame=fragments)
    ds = pydicom.dcmread(fixture.paths[0])
    bot, fragment_list = parse_items(ds.PixelData)
    assert len(fragment_list) == ds.NumberOfFrames * fragments
    assert (len(bot) > 0) == (offset_table == "bot")
    assert ("ExtendedOffsetTable" in ds) == (offset_table == "eot")
    check_wsi(fixture, codec)


@pytest.mark.parametrize("codec", ["native", "jpegls"])
def test_wsi_sparse(tmp_path: Path, codec: str) -> None:
    missing = [(1, 1), (4, 2), (0, 0)]
    fixture = fx.write_wsi(tmp_path, codec=codec, levels=2, sparse=True, missing_tiles=missing)
    ds = pydicom.dcmread(fixture.paths[0], stop_before_pixels=True)
    assert ds.DimensionOrganizationType == "TILED_SPARSE"
    assert ds.NumberOfFrames == 5 * 4 - len(missing)
    positions = frame_positions(ds, fixture.tile)
    assert positions != sorted(positions), "sparse frames should be stored shuffled"
    assert {(tx, ty) for _, _, ty, tx in positions}.isdisjoint(missing)
    assert fixture.missing_mask[0].sum() == 64 * 64 * 2 + 44 * 64  # (4, 2) is a partial edge tile: 300 - 256 = 44
    assert not fixture.missing_mask[1].any()
    assert fixture.fill_value == 255
    check_wsi(fixture, codec)


@pytest.mark.parametrize(("codec", "sparse"), [("native", False), ("jpeg2000", False), ("ljpeg", True)])
def test_wsi_concatenations(tmp_path: Path, codec: str, sparse: bool) -> None:
    fixture = fx.write_wsi(tmp_path, codec=codec, levels=2, concatenations=2, sparse=sparse,
                           missing_tiles=[(2, 1)] if sparse else ())
    assert len(fixture.paths) == 4
    for level, parts in enumerate(fixture.level_paths):
        datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in parts]
        assert [ds.InConcatenationNumber for ds in datasets] == [1, 2]
        assert sorted(parts) != parts, "file-name order should differ from concatenation order"
        assert {p.name for p in parts} == {f"level{level}_part1.dcm", f"level{level}_part2.dcm"}
        assert len({ds.ConcatenationUID for ds in datasets}) == 1
        assert len({ds.SOPInstanceUIDOfConcatenationSource for ds in datasets}) == 1
        assert all(ds.InConcatenationTotalNumber == 2 for ds in datasets)
        offset = 0
        for ds in datasets:
            assert ds.ConcatenationFrameOffsetNumber == offset
            offset += ds.NumberOfFrames
        tiles = -(-fixture.levels[level][(0, 0)].shape[1] // 64) * -(-fixture.levels[level][(0, 0)].shape[0] // 64)
        assert offset == tiles - (1 if sparse and level == 0 else 0)
    check_wsi(fixture, codec)


@pytest.mark.parametrize(("codec", "sparse"), [("native", False), ("htj2k", False), ("jpeg", True)])
def test_wsi_optical_paths_focal_planes(tmp_path: Path, codec: str, sparse: bool) -> None:
    fixture = fx.write_wsi(tmp_path, codec=codec, optical_paths=2, focal_planes=2, sparse=sparse)
    ds = pydicom.dcmread(fixture.paths[0], stop_before_pixels=True)
    assert ds.NumberOfFrames == 2 * 2 * 5 * 4
    assert [item.OpticalPathIdentifier for item in ds.OpticalPathSequence] == ["0", "1"]
    assert ds.NumberOfOpticalPaths == 2 and ds.TotalPixelMatrixFocalPlanes == 2
    refs = fixture.levels[0]
    assert set(refs) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    keys = list(refs)
    assert all(not np.array_equal(refs[a], refs[b]) for a in keys for b in keys if a < b)
    check_wsi(fixture, codec)


@pytest.mark.parametrize("samples", [1, 3])
def test_wsi_big_endian_16bit(tmp_path: Path, samples: int) -> None:
    fixture = fx.write_wsi(tmp_path, codec="native", bits=16, samples=samples, big_endian=True, levels=2)
    ds = pydicom.dcmread(fixture.paths[0])
    assert ds.file_meta.TransferSyntaxUID == fx.EXPLICIT_BE
    assert ds["PixelData"].VR == "OW" and ds.BitsAllocated == 16
    ref = fixture.levels[0][(0, 0)]
    assert ref.dtype == np.uint16 and ref.max() > 255
    first_tile = np.zeros((64, 64, samples), np.uint16)
    first_tile[:] = ref[:64, :64]
    assert ds.PixelData[:first_tile.nbytes] == first_tile.astype(">u2").tobytes()
    check_wsi(fixture, "native")


@pytest.mark.parametrize("codec", LOSSLESS_ENCAPSULATED)
def test_wsi_16bit_lossless(tmp_path: Path, codec: str) -> None:
    fixture = fx.write_wsi(tmp_path, codec=codec, bits=16, samples=1 if codec == "ljpeg" else 3, size=(150, 100))
    assert fixture.levels[0][(0, 0)].dtype == np.uint16
    check_wsi(fixture, codec)


def test_wsi_legacy(tmp_path: Path) -> None:
    fixture = fx.write_wsi(tmp_path, codec="jpegls", levels=2, legacy=True, associated=("label",))
    for path in fixture.paths[:2]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert "DimensionOrganizationType" not in ds
        assert len(ds.ImageType) == 2
    assert pydicom.dcmread(fixture.associated_paths["label"]).ImageType[2] == "LABEL"
    check_wsi(fixture, "jpegls")


@pytest.mark.parametrize(("codec", "photometric"), [("jpeg", "RGB"), ("jpeg", "YBR_FULL"), ("jpeg2000", "YBR_RCT"),
                                                    ("htj2k", "YBR_RCT"), ("jpegls", "MONOCHROME2")])
def test_wsi_photometric(tmp_path: Path, codec: str, photometric: str) -> None:
    samples = 1 if photometric.startswith("MONO") else 3
    fixture = fx.write_wsi(tmp_path, codec=codec, photometric=photometric, samples=samples)
    assert pydicom.dcmread(fixture.paths[0], stop_before_pixels=True).PhotometricInterpretation == photometric
    check_wsi(fixture, codec)


def test_wsi_rejects(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="8-bit"):
        fx.write_wsi(tmp_path, codec="jpeg", bits=16)
    with pytest.raises(ValueError, match="unknown codec"):
        fx.write_wsi(tmp_path, codec="webp")
    with pytest.raises(ValueError, match="big_endian"):
        fx.write_wsi(tmp_path, codec="rle", big_endian=True)
    with pytest.raises(ValueError, match="sparse"):
        fx.write_wsi(tmp_path, missing_tiles=[(0, 0)])
    with pytest.raises(ValueError, match="photometric"):
        fx.write_wsi(tmp_path, codec="rle", photometric="YBR_FULL_422")


# -- lossless JPEG encoder -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "samples"), [(np.uint8, 1), (np.uint8, 3), (np.uint16, 1), (np.uint16, 3)])
def test_ljpeg_sv1_encoder(dtype: type, samples: int) -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, np.iinfo(dtype).max, (37, 29, samples), dtype=dtype, endpoint=True)
    image[5, :] = np.iinfo(dtype).max  # big jumps: 16-bit differences of +-65535 and category 16
    image[6, ::2] = 0
    bits = np.dtype(dtype).itemsize * 8
    data = fx.ljpeg_sv1_encode(image, bits)
    sos = data.index(b"\xff\xda")
    (length,) = struct.unpack_from(">H", data, sos + 2)
    assert data[sos + 2 + length - 3] == 1, "predictor (selection value) must be 1"
    assert data[data.index(b"\xff\xc3") + 4] == bits
    np.testing.assert_array_equal(np.asarray(imagecodecs.jpegsof3_decode(data)).reshape(image.shape), image)
    decoded = JPEGLosslessSV1Decoder.as_array(
        encapsulate([data]), rows=37, columns=29, samples_per_pixel=samples, bits_allocated=bits, bits_stored=bits,
        pixel_representation=0, photometric_interpretation="RGB" if samples == 3 else "MONOCHROME2",
        number_of_frames=1, planar_configuration=0,
    )[0]
    np.testing.assert_array_equal(decoded.reshape(image.shape), image)


# -- volumes -------------------------------------------------------------------------------------------------
def read_series(directory: Path, series_uid: str) -> tuple[np.ndarray, list[Dataset], list[Path]]:
    """Slices of one series sorted by position along the normal: (volume, data sets, paths)."""
    found = []
    for path in sorted(directory.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        if ds.SeriesInstanceUID == series_uid:
            normal = np.cross(np.asarray(ds.ImageOrientationPatient[:3], float),
                              np.asarray(ds.ImageOrientationPatient[3:], float))
            found.append((float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))), ds, path))
    found.sort(key=lambda t: t[0])
    volume = np.stack([ds.pixel_array for _, ds, _ in found])
    return volume, [ds for _, ds, _ in found], [p for _, _, p in found]


@pytest.mark.parametrize(("codec", "dtype", "samples"), [
    ("native", "int16", 1), ("implicit", "uint16", 1), ("native", "uint8", 3), ("rle", "int16", 1),
    ("jpegls", "uint16", 1), ("jpegls", "int16", 1), ("jpeg2000", "int16", 1), ("jpeg2000", "uint8", 1),
])
def test_volume_series(tmp_path: Path, codec: str, dtype: str, samples: int) -> None:
    fixture = fx.write_volume_series(tmp_path, codec=codec, dtype=dtype, samples=samples)
    assert fixture.volume.shape == ((6, 32, 24) if samples == 1 else (6, 32, 24, 3))
    assert fixture.volume.dtype == np.dtype(dtype)
    if dtype == "int16":
        assert fixture.volume.min() < 0
    volume, datasets, paths = read_series(tmp_path, fixture.series_uid)
    if codec == "jpegls" and dtype == "int16":
        volume = volume.astype(np.uint16).view(np.int16)  # pydicom may treat the JPEG-LS values as unsigned
    np.testing.assert_array_equal(volume, fixture.volume)
    raw = np.stack([decode(codec, split_frames(ds, codec)[0], ds)[..., 0] for ds in datasets]) \
        if codec in fx.ENCAPSULATED_CODECS else None
    if raw is not None:
        np.testing.assert_array_equal(raw, fixture.volume)
    assert paths == fixture.paths
    assert sorted(paths) != paths, "file names should not follow position order"
    numbers = [int(ds.InstanceNumber) for ds in datasets]
    assert numbers != sorted(numbers) and numbers != sorted(numbers, reverse=True)
    assert all(ds.SOPClassUID == fx.CT_SOP_CLASS for ds in datasets)
    np.testing.assert_allclose([[float(v) for v in ds.ImagePositionPatient] for ds in datasets], fixture.positions)
    np.testing.assert_allclose(fixture.positions[:, 2], 50.0 + 2.5 * np.arange(6))
    assert [float(v) for v in datasets[0].PixelSpacing] == [0.7, 0.8]
    assert float(datasets[0].RescaleIntercept) == -1024.0 and float(datasets[0].RescaleSlope) == 1.0
    assert fixture.rescale == [(1.0, -1024.0)] * 6
    np.testing.assert_allclose(fixture.direction, np.eye(3))


def test_volume_series_gap_irregular_second(tmp_path: Path) -> None:
    orientation = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # sagittal: normal is -x
    fixture = fx.write_volume_series(tmp_path, shape=(7, 16, 12), gap_at=2, irregular=True, second_series=True,
                                     orientation=orientation)
    assert fixture.second is not None and fixture.second.series_uid != fixture.series_uid
    volume, datasets, _ = read_series(tmp_path, fixture.series_uid)
    assert len(datasets) == 6 and fixture.missing_slice == 2
    np.testing.assert_array_equal(volume, fixture.volume)
    np.testing.assert_allclose(fixture.direction[2], [-1.0, 0.0, 0.0])
    steps = np.diff(fixture.positions @ fixture.direction[2])
    # slice 2 left out, slice 3 moved 0.75 mm further: 0, 2.5, 8.25, 10, 12.5, 15
    np.testing.assert_allclose(steps, [2.5, 5.75, 1.75, 2.5, 2.5])
    second, second_datasets, _ = read_series(tmp_path, fixture.second.series_uid)
    np.testing.assert_array_equal(second, fixture.second.volume)
    assert second.shape == (5, 20, 12) and fixture.second.spacing[0] == 5.0
    assert {ds.StudyInstanceUID for ds in datasets + second_datasets} == {fixture.study_uid}
    assert len(list(tmp_path.glob("*.dcm"))) == len(fixture.paths) + len(fixture.second.paths)


@pytest.mark.parametrize(("codec", "dtype"), [("native", "int16"), ("jpegls", "uint16"), ("rle", "int16")])
def test_enhanced_volume(tmp_path: Path, codec: str, dtype: str) -> None:
    rescale = [(1.0, -1024.0), (2.0, -1000.0), (0.5, 0.0), (1.0, -1024.0), (3.0, 5.0)]
    fixture = fx.write_enhanced_volume(tmp_path / "enhanced.dcm", codec=codec, dtype=dtype, rescale=rescale)
    ds = pydicom.dcmread(fixture.paths[0])
    assert ds.SOPClassUID == fx.ENHANCED_CT_SOP_CLASS and ds.NumberOfFrames == 5
    frames = ds.pixel_array
    if codec in fx.ENCAPSULATED_CODECS:
        raw = np.stack([decode(codec, f, ds)[..., 0] for f in split_frames(ds, codec)])
        np.testing.assert_array_equal(raw, frames)
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.6, 0.75]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    z = [float(item.PlanePositionSequence[0].ImagePositionPatient[2]) for item in ds.PerFrameFunctionalGroupsSequence]
    order = np.argsort(z)
    assert list(order) != list(range(5)), "frames should be stored out of position order"
    assert [int(k) for k in np.argsort(order)] == fixture.frame_order
    np.testing.assert_array_equal(frames[order], fixture.volume)
    stored_rescale = [(float(item.PixelValueTransformationSequence[0].RescaleSlope),
                       float(item.PixelValueTransformationSequence[0].RescaleIntercept))
                      for item in ds.PerFrameFunctionalGroupsSequence]
    assert [stored_rescale[i] for i in order] == rescale == fixture.rescale
    expected = frames[order][1].astype(np.float64) * 2.0 - 1000.0
    np.testing.assert_allclose(fixture.rescaled()[1], expected)


# -- generic multi-frame files -------------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "big_endian"), [(np.uint8, False), (np.uint16, True), (np.int16, False),
                                                   (np.uint8, True)])
def test_native_multiframe(tmp_path: Path, dtype: type, big_endian: bool) -> None:
    path = tmp_path / "multi.dcm"
    ref = fx.write_native_multiframe(path, frames=20, rows=33, cols=40, dtype=dtype, big_endian=big_endian)
    assert ref.shape == (20, 33, 40) and ref.dtype == np.dtype(dtype)
    assert len({frame.tobytes() for frame in ref}) == 20
    ds = pydicom.dcmread(path)
    assert ds.NumberOfFrames == 20
    assert ds.file_meta.TransferSyntaxUID == (fx.EXPLICIT_BE if big_endian else fx.EXPLICIT_LE)
    assert len(ds.PixelData) == ref.nbytes + ref.nbytes % 2
    np.testing.assert_array_equal(ds.pixel_array, ref)
    order = ">" if big_endian else "<"
    assert ds.PixelData[:ref.nbytes] == ref.astype(ref.dtype.newbyteorder(order)).tobytes()


@pytest.mark.parametrize(("codec", "offset_table", "fragments", "samples", "bits"), [
    ("jpegls", "none", 1, 1, 8), ("jpegls", "none", 3, 1, 16), ("jpeg2000", "eot", 1, 3, 8),
    ("htj2k", "none", 3, 1, 16), ("rle", "bot", 3, 3, 8), ("ljpeg", "eot", 1, 3, 8), ("jpeg", "bot", 1, 3, 8),
])
def test_encapsulated_multiframe(tmp_path: Path, codec: str, offset_table: str, fragments: int, samples: int,
                                 bits: int) -> None:
    path = tmp_path / "multi.dcm"
    ref = fx.write_encapsulated_multiframe(path, frames=6, rows=40, cols=36, codec=codec, offset_table=offset_table,
                                           fragments_per_frame=fragments, samples=samples, bits=bits, seed=5)
    assert ref.shape == ((6, 40, 36) if samples == 1 else (6, 40, 36, 3))
    ds, frames = read_frames(path, codec)
    assert ds.NumberOfFrames == 6 and len(parse_items(ds.PixelData)[1]) == 6 * fragments
    np.testing.assert_array_equal(np.stack(frames).reshape(ref.shape), ref)
