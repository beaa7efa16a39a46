"""Writers of small DICOM test files, each returning the exact pixels a correct reader must produce.

Independent of cucim_like: pixels are synthesised with NumPy, frames are encoded with imagecodecs (plus
pydicom's RLE encoder and a small lossless-JPEG encoder defined here, since imagecodecs cannot write
predictor-1 lossless JPEG), the encapsulated Pixel Data is assembled byte by byte, and data sets are written
with pydicom. ``tests/formats/test_dicom_fixtures.py`` reads every kind of file back with pydicom and
imagecodecs decoders to show that the references are right.

Conventions:

* Sizes and tile shapes are (width, height); arrays are (rows, columns[, samples]).
* Pixel spacings are DICOM ``PixelSpacing`` order: (spacing between rows, spacing between columns) in mm.
* Encapsulated Pixel Data: each frame is one or more fragments of even length (the last fragment of a frame
  padded with one zero byte when the frame has odd length). With an empty Basic Offset Table and several
  fragments per frame, a frame starts at the fragment that begins with the codec's start marker: ``FFD8``
  (JPEG SOI: baseline, JPEG-LS, lossless JPEG) or ``FF4F`` (JPEG 2000 / HTJ2K SOC); fragments are cut so that
  no continuation fragment begins with that marker. RLE has no marker, so that combination is refused, as is
  an Extended Offset Table with several fragments per frame (its offsets and lengths describe single items).
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import imagecodecs
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from pydicom.valuerep import format_number_as_ds

# -- UIDs ----------------------------------------------------------------------------------------------------
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2.1"
SC_BYTE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7.2"  # multi-frame grayscale byte secondary capture
SC_WORD_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7.3"  # multi-frame grayscale word secondary capture
SC_COLOR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7.4"  # multi-frame true colour secondary capture

EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
IMPLICIT_LE = "1.2.840.10008.1.2"

#: codec name -> transfer syntax UID ("native" is Explicit VR Little Endian, or Big Endian when asked).
TRANSFER_SYNTAX = {
    "native": EXPLICIT_LE,
    "implicit": IMPLICIT_LE,
    "jpeg": "1.2.840.10008.1.2.4.50",
    "jpegls": "1.2.840.10008.1.2.4.80",
    "jpeg2000": "1.2.840.10008.1.2.4.90",
    "htj2k": "1.2.840.10008.1.2.4.201",
    "rle": "1.2.840.10008.1.2.5",
    "ljpeg": "1.2.840.10008.1.2.4.70",
}
NATIVE_CODECS = ("native", "implicit")
ENCAPSULATED_CODECS = ("jpeg", "jpegls", "jpeg2000", "htj2k", "rle", "ljpeg")

#: bytes every encoded frame of a codec starts with (None: no marker, frame boundaries need an offset table)
START_MARKER: dict[str, bytes | None] = {
    "jpeg": b"\xff\xd8",
    "jpegls": b"\xff\xd8",
    "ljpeg": b"\xff\xd8",
    "jpeg2000": b"\xff\x4f",
    "htj2k": b"\xff\x4f",
    "rle": None,
}

ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD), length 0

JPEG_QUALITY = 90
FOCAL_PLANE_SPACING_MM = 0.001  # 1 µm between focal planes
SLIDE_ORIGIN_MM = (20.0, 40.0)  # TotalPixelMatrixOriginSequence X, Y


# -- returned descriptions -----------------------------------------------------------------------------------
@dataclass
class WsiFixture:
    """What :func:`write_wsi` wrote and the pixels a reader must return.

    ``levels[k][(optical_path, focal_plane)]`` is level k's reference, shape (h, w, samples), uint8 or uint16.
    For ``lossy`` (JPEG baseline) files it is the imagecodecs decode of the stored tiles; ``originals`` holds
    the pixels before compression (equal to ``levels`` for lossless codecs).
    ``missing_mask[k]`` is True over tiles left out of a TILED_SPARSE file (level 0 only); the reference there
    is ``fill_value``, so tests can compare present pixels exactly and check the fill separately.
    ``paths`` lists every file in the order written; ``level_paths[k]`` lists level k's files in concatenation
    order (InConcatenationNumber 1 first), which is not their file-name order.
    """

    paths: list[Path]
    levels: list[dict[tuple[int, int], np.ndarray]]
    missing_mask: list[np.ndarray]
    associated: dict[str, np.ndarray]
    lossy: bool
    tile: tuple[int, int]
    series_uid: str
    pixel_spacing_mm: tuple[float, float]
    originals: list[dict[tuple[int, int], np.ndarray]] = field(default_factory=list)
    level_paths: list[list[Path]] = field(default_factory=list)
    associated_paths: dict[str, Path] = field(default_factory=dict)
    fill_value: int = 0
    missing_tiles: list[tuple[int, int]] = field(default_factory=list)
    transfer_syntax: str = EXPLICIT_LE
    photometric: str = "RGB"
    study_uid: str = ""
    frame_of_reference_uid: str = ""


@dataclass
class VolumeFixture:
    """What a volume writer wrote and its stored values.

    ``volume`` holds stored values (before rescale), shape (n, rows, cols[, samples]), in patient-position
    order of the slices actually written (a ``gap_at`` slice is absent); ``positions`` are their
    ImagePositionPatient values. ``spacing`` is the nominal (slice, row, column) spacing in mm, ``direction``
    rows are the row cosines, column cosines and slice normal. ``rescale[i]`` is (slope, intercept) of slice i.
    ``frame_order[j]`` is the position index of stored frame j of an enhanced file (identity for a series,
    whose ``paths`` are in position order).
    """

    paths: list[Path]
    volume: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    rescale: list[tuple[float, float]]
    series_uid: str
    positions: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    frame_order: list[int] = field(default_factory=list)
    missing_slice: int | None = None
    second: VolumeFixture | None = None
    study_uid: str = ""

    def rescaled(self) -> np.ndarray:
        """The volume after each slice's rescale (float64)."""
        out = self.volume.astype(np.float64)
        for i, (slope, intercept) in enumerate(self.rescale):
            out[i] = out[i] * slope + intercept
        return out


# -- synthetic pixels ----------------------------------------------------------------------------------------
def make_pixels(height: int, width: int, samples: int, dtype: object, seed: int = 0,
                low: float | None = None, high: float | None = None) -> np.ndarray:
    """A (height, width, samples) image of smooth gradients plus noise, in [low, high] (default: dtype range)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    info = np.iinfo(dt)
    lo = float(info.min if low is None else low)
    hi = float(info.max if high is None else high)
    y, x = np.mgrid[:height, :width].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, samples)
    base = np.empty((height, width, samples))
    for c in range(samples):
        base[..., c] = 0.5 + 0.3 * np.sin(x / (17.0 + 6 * c) + phase[c]) * np.cos(y / (23.0 + 4 * c) - phase[c])
        base[..., c] += 0.12 * (x / max(width, 1)) - 0.06 * (y / max(height, 1))
    base += rng.uniform(-0.03, 0.03, base.shape)
    base = np.clip(base, 0.0, 1.0)
    return np.rint(lo + base * (hi - lo)).astype(dt)


# -- small helpers -------------------------------------------------------------------------------------------
def _ds(value: float) -> str:
    """A float as a valid DS string (at most 16 characters)."""
    return format_number_as_ds(float(value))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _photometric(codec: str, samples: int, photometric: str | None) -> str:
    """Default or checked PhotometricInterpretation for a codec and sample count."""
    if samples == 1:
        value = photometric or "MONOCHROME2"
        if value not in ("MONOCHROME1", "MONOCHROME2"):
            raise ValueError(f"photometric {value!r} needs 3 samples")
        return value
    if samples != 3:
        raise ValueError(f"samples must be 1 or 3, got {samples}")
    value = photometric or ("YBR_FULL_422" if codec == "jpeg" else "RGB")
    allowed = {
        "jpeg": ("YBR_FULL_422", "YBR_FULL", "RGB"),
        "jpeg2000": ("RGB", "YBR_RCT"),
        "htj2k": ("RGB", "YBR_RCT"),
    }.get(codec, ("RGB",))
    if value not in allowed:
        raise ValueError(f"photometric {value!r} is not supported with codec {codec!r} (use one of {allowed})")
    return value


def _check_codec(codec: str, big_endian: bool) -> str:
    """The transfer syntax UID of ``codec``; ValueError for unknown or unavailable codecs."""
    if codec not in TRANSFER_SYNTAX:
        raise ValueError(f"unknown codec {codec!r} (one of {sorted(TRANSFER_SYNTAX)})")
    if big_endian:
        if codec != "native":
            raise ValueError("big_endian is only meaningful for codec='native'")
        return EXPLICIT_BE
    if codec == "htj2k" and not (hasattr(imagecodecs, "htj2k_encode") and imagecodecs.HTJ2K.available):
        raise ValueError(f"imagecodecs {imagecodecs.__version__} cannot encode HTJ2K")
    return TRANSFER_SYNTAX[codec]


# -- lossless JPEG (process 14, selection value 1) -----------------------------------------------------------
# DC Huffman table for difference categories 0..16: the standard luminance DC code lengths for 0..11
# extended by one code each of lengths 10..14 for 12..16; the all-ones code of every length stays unused.
_LJPEG_LENGTHS = [2, 3, 3, 3, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]


def _canonical_codes(lengths: Sequence[int]) -> list[int]:
    """Canonical Huffman codes for symbols 0..n-1 with non-decreasing ``lengths``."""
    codes = []
    code = 0
    previous = lengths[0]
    for length in lengths:
        code <<= length - previous
        codes.append(code)
        code += 1
        previous = length
    return codes


_LJPEG_CODES = np.array(_canonical_codes(_LJPEG_LENGTHS), dtype=np.int64)
_LJPEG_CODE_LENGTHS = np.array(_LJPEG_LENGTHS, dtype=np.int64)


def ljpeg_sv1_encode(image: np.ndarray, precision: int) -> bytes:
    """Lossless JPEG (SOF3, predictor 1, point transform 0) of an unsigned (rows, cols[, comps]) image."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    rows, cols, comps = arr.shape
    a = arr.astype(np.int64)
    pred = np.empty_like(a)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = a[0, :-1]
    pred[1:, 0] = a[:-1, 0]
    pred[1:, 1:] = a[1:, :-1]
    diff = (a - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff).ravel()  # -32768 is coded as category 16, no extra bits
    category = np.frexp(np.abs(diff).astype(np.float64))[1].astype(np.int64)
    extra_bits = np.where(category == 16, 0, category)
    extra = np.where(diff >= 0, diff, diff + (1 << category) - 1) & ((1 << extra_bits) - 1)
    value = (_LJPEG_CODES[category] << extra_bits) | extra
    length = _LJPEG_CODE_LENGTHS[category] + extra_bits
    # expand every code word into its bits, most significant first
    ends = np.cumsum(length)
    owner = np.repeat(np.arange(length.size), length)
    position = np.arange(int(ends[-1])) - (ends - length)[owner]
    bits = ((value[owner] >> (length[owner] - 1 - position)) & 1).astype(np.uint8)
    pad = (-bits.size) % 8
    bits = np.concatenate([bits, np.ones(pad, np.uint8)])
    scan = np.packbits(bits).tobytes().replace(b"\xff", b"\xff\x00")

    counts = [0] * 16
    for length_ in _LJPEG_LENGTHS:
        counts[length_ - 1] += 1
    dht = bytes([0x00, *counts, *range(len(_LJPEG_LENGTHS))])
    sof = struct.pack(">BHHB", precision, rows, cols, comps) + b"".join(bytes([c + 1, 0x11, 0]) for c in range(comps))
    sos = bytes([comps]) + b"".join(bytes([c + 1, 0x00]) for c in range(comps)) + bytes([1, 0, 0])

    def segment(marker: int, payload: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload

    return b"\xff\xd8" + segment(0xC4, dht) + segment(0xC3, sof) + segment(0xDA, sos) + scan + b"\xff\xd9"


# -- frame encoding ------------------------------------------------------------------------------------------
def encode_frame(frame: np.ndarray, codec: str, photometric: str, bits_stored: int | None = None) -> bytes:
    """One frame, (rows, cols) or (rows, cols, samples), encoded for an encapsulated transfer syntax."""
    arr = np.ascontiguousarray(frame)
    samples = 1 if arr.ndim == 2 else arr.shape[2]
    if samples == 1 and arr.ndim == 3:
        arr = arr[..., 0]
    bits = bits_stored or arr.dtype.itemsize * 8
    signed = arr.dtype.kind == "i"
    if codec == "jpeg":
        if arr.dtype != np.uint8:
            raise ValueError("JPEG baseline needs 8-bit unsigned samples")
        if samples == 1:
            return bytes(imagecodecs.jpeg8_encode(arr, level=JPEG_QUALITY))
        if photometric == "RGB":
            return bytes(imagecodecs.jpeg8_encode(arr, level=JPEG_QUALITY, colorspace="RGB", outcolorspace="RGB"))
        subsampling = "422" if photometric == "YBR_FULL_422" else "444"
        return bytes(imagecodecs.jpeg8_encode(arr, level=JPEG_QUALITY, colorspace="RGB", outcolorspace="YCBCR",
                                              subsampling=subsampling))
    if codec == "jpegls":
        unsigned = arr.view(np.uint16) if signed else arr  # JPEG-LS is unsigned: two's complement bit pattern
        return bytes(imagecodecs.jpegls_encode(unsigned, out=2 * arr.nbytes + 4096))
    if codec == "jpeg2000":
        return bytes(imagecodecs.jpeg2k_encode(arr, level=0, codecformat="J2K", reversible=True,
                                               mct=photometric == "YBR_RCT"))
    if codec == "htj2k":
        kwargs = {"rgb": photometric == "YBR_RCT"} if samples == 3 else {}
        return bytes(imagecodecs.htj2k_encode(arr, reversible=True, **kwargs))
    if codec == "rle":
        return RLELosslessEncoder.encode(
            arr, rows=arr.shape[0], columns=arr.shape[1], samples_per_pixel=samples,
            bits_allocated=arr.dtype.itemsize * 8, bits_stored=bits, pixel_representation=int(signed),
            photometric_interpretation=photometric, number_of_frames=1, planar_configuration=0,
        )
    if codec == "ljpeg":
        unsigned = arr.view(np.uint16) if signed else arr
        return ljpeg_sv1_encode(unsigned, bits)
    raise ValueError(f"codec {codec!r} is not an encapsulated codec")


def _decode_lossy(data: bytes) -> np.ndarray:
    """imagecodecs' decode of a JPEG baseline frame (colour frames come back as RGB)."""
    return np.asarray(imagecodecs.jpeg8_decode(data))


# -- encapsulation -------------------------------------------------------------------------------------------
def _split_fragments(frame: bytes, count: int, marker: bytes | None) -> list[bytes]:
    """``frame`` cut into ``count`` fragments of even length; later fragments never start with ``marker``."""
    data = frame + b"\x00" if len(frame) % 2 else frame
    if count <= 1:
        return [data]
    if len(data) < 4 * count:
        raise ValueError(f"a {len(frame)}-byte frame is too short for {count} fragments")
    step = (len(data) // count) & ~1
    cuts = []
    for i in range(1, count):
        cut = i * step
        while marker is not None and data[cut:cut + len(marker)] == marker:
            cut += 2
        cuts.append(cut)
    if sorted(set(cuts)) != cuts or cuts[-1] >= len(data):
        raise ValueError("could not cut the frame into fragments")
    bounds = [0, *cuts, len(data)]
    return [data[s:e] for s, e in itertools.pairwise(bounds)]


def encapsulate_frames(frames: Sequence[bytes], codec: str, offset_table: str = "bot",
                       fragments_per_frame: int = 1) -> tuple[bytes, bytes | None, bytes | None]:
    """Encapsulated Pixel Data value for ``frames``: (value, ExtendedOffsetTable, ExtendedOffsetTableLengths).

    The value is the BOT item and the fragment items, as pydicom holds it: pydicom writes the closing
    sequence delimiter (FFFE,E0DD) itself after an undefined-length element. Offsets (BOT and EOT) count from
    the first byte of the first fragment's item tag after the BOT item; EOT lengths are the (padded) frame
    lengths. An EOT needs one fragment per frame (as pydicom's reader assumes), so "eot" with
    ``fragments_per_frame > 1`` is refused.
    """
    if offset_table not in ("bot", "none", "eot"):
        raise ValueError(f"offset_table must be 'bot', 'none' or 'eot', got {offset_table!r}")
    marker = START_MARKER.get(codec)
    if fragments_per_frame > 1 and offset_table == "eot":
        raise ValueError("an Extended Offset Table needs one fragment per frame")
    if fragments_per_frame > 1 and offset_table == "none" and marker is None:
        raise ValueError(f"{codec} frames have no start marker: several fragments per frame need an offset table")
    body = bytearray()
    offsets: list[int] = []
    lengths: list[int] = []
    for frame in frames:
        offsets.append(len(body))
        total = 0
        for fragment in _split_fragments(frame, fragments_per_frame, marker):
            body += ITEM_TAG + struct.pack("<I", len(fragment)) + fragment
            total += len(fragment)
        lengths.append(total)
    if offset_table == "bot":
        if body and len(body) >= 2**32:
            raise ValueError("Pixel Data too large for a Basic Offset Table")
        bot = struct.pack(f"<{len(offsets)}I", *offsets)
    else:
        bot = b""
    value = ITEM_TAG + struct.pack("<I", len(bot)) + bot + bytes(body)
    if offset_table == "eot":
        return value, struct.pack(f"<{len(offsets)}Q", *offsets), struct.pack(f"<{len(lengths)}Q", *lengths)
    return value, None, None


# -- data set building ---------------------------------------------------------------------------------------
def _new_dataset(sop_class: str, transfer_syntax: str) -> Dataset:
    """A data set with file meta, SOP common, patient and general study/equipment attributes."""
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Fixture^Test"
    ds.PatientID = "FIXTURE-001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = "ACC-1"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Manufacturer = "cucim_like test fixtures"
    ds.ManufacturerModelName = "dicom_fixtures.py"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "1"
    return ds


def _set_image_pixel(ds: Dataset, rows: int, cols: int, samples: int, bits: int, signed: bool,
                     photometric: str) -> None:
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = int(signed)


def _set_native_pixels(ds: Dataset, data: bytes, bits_allocated: int) -> None:
    if len(data) % 2:
        data += b"\x00"
    ds.PixelData = data
    ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"


def _set_encapsulated_pixels(ds: Dataset, frames: Sequence[bytes], codec: str, offset_table: str,
                             fragments_per_frame: int) -> None:
    value, eot, eot_lengths = encapsulate_frames(frames, codec, offset_table, fragments_per_frame)
    if eot is not None:
        ds.ExtendedOffsetTable = eot
        ds.ExtendedOffsetTableLengths = eot_lengths
    ds.PixelData = value
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def _native_bytes(frames: np.ndarray, big_endian: bool) -> bytes:
    """Frames as stored in native Pixel Data (16-bit samples byte-swapped for big endian)."""
    if big_endian and frames.dtype.itemsize > 1:
        return frames.astype(frames.dtype.newbyteorder(">")).tobytes()
    return np.ascontiguousarray(frames).tobytes()


def _set_pixels(ds: Dataset, frames: np.ndarray | list[np.ndarray], codec: str, photometric: str, bits: int,
                offset_table: str, fragments_per_frame: int, big_endian: bool) -> list[bytes] | None:
    """Store ``frames`` natively or encoded; returns the encoded frames (None when native)."""
    if codec in NATIVE_CODECS:
        stack = np.stack(list(frames)) if isinstance(frames, list) else frames
        _set_native_pixels(ds, _native_bytes(stack, big_endian), stack.dtype.itemsize * 8)
        return None
    encoded = [encode_frame(f, codec, photometric, bits) for f in frames]
    _set_encapsulated_pixels(ds, encoded, codec, offset_table, fragments_per_frame)
    return encoded


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


# -- whole-slide images --------------------------------------------------------------------------------------
def _tile_grid(width: int, height: int, tile: tuple[int, int]) -> tuple[int, int]:
    return math.ceil(width / tile[0]), math.ceil(height / tile[1])


def _cut_tile(padded: np.ndarray, tile: tuple[int, int], tx: int, ty: int) -> np.ndarray:
    tw, th = tile
    return padded[ty * th:(ty + 1) * th, tx * tw:(tx + 1) * tw]


def _pad_to_tiles(image: np.ndarray, tile: tuple[int, int]) -> np.ndarray:
    h, w = image.shape[:2]
    across, down = _tile_grid(w, h, tile)
    padded = np.zeros((down * tile[1], across * tile[0], image.shape[2]), image.dtype)
    padded[:h, :w] = image
    return padded


def _wsi_common(ds: Dataset, uids: dict[str, str], image_type: list[str] | None, legacy: bool,
                dimension_organization: str | None) -> None:
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.Modality = "SM"
    ds.SeriesNumber = 1
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.AcquisitionDateTime = "20240101120000"
    ds.ContainerIdentifier = "SLIDE-1"
    ds.IssuerOfTheContainerIdentifierSequence = DicomSequence()
    ds.ContainerTypeCodeSequence = DicomSequence([_code("433466003", "SCT", "Microscope slide")])
    specimen = Dataset()
    specimen.SpecimenIdentifier = "SPECIMEN-1"
    specimen.SpecimenUID = uids["specimen"]
    specimen.IssuerOfTheSpecimenIdentifierSequence = DicomSequence()
    specimen.SpecimenPreparationSequence = DicomSequence()
    ds.SpecimenDescriptionSequence = DicomSequence([specimen])
    ds.BurnedInAnnotation = "NO"
    ds.VolumetricProperties = "VOLUME"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    ds.AcquisitionContextSequence = DicomSequence()
    if image_type is not None:
        ds.ImageType = image_type
    if dimension_organization is not None and not legacy:
        ds.DimensionOrganizationType = dimension_organization


def _optical_paths(count: int) -> DicomSequence:
    items = []
    for i in range(count):
        item = Dataset()
        item.OpticalPathIdentifier = str(i)
        item.OpticalPathDescription = f"optical path {i}"
        item.IlluminationTypeCodeSequence = DicomSequence([_code("111744", "DCM", "Brightfield illumination")])
        item.IlluminationColorCodeSequence = DicomSequence([_code("414298005", "SCT", "Full Spectrum")])
        items.append(item)
    return DicomSequence(items)


def _pixel_measures(spacing: tuple[float, float], thickness: float, between: float | None) -> Dataset:
    item = Dataset()
    item.PixelSpacing = [_ds(spacing[0]), _ds(spacing[1])]
    item.SliceThickness = _ds(thickness)
    if between is not None:
        item.SpacingBetweenSlices = _ds(between)
    return item


def _slide_xy(row: int, col: int, spacing: tuple[float, float]) -> tuple[float, float]:
    """Slide coordinates (mm) of pixel (row, col) with ImageOrientationSlide [0, -1, 0, -1, 0, 0]."""
    return SLIDE_ORIGIN_MM[0] - row * spacing[0], SLIDE_ORIGIN_MM[1] - col * spacing[1]


def _sparse_frame_item(tx: int, ty: int, path: int, z: int, tile: tuple[int, int],
                       spacing: tuple[float, float]) -> Dataset:
    col, row = tx * tile[0], ty * tile[1]
    position = Dataset()
    position.ColumnPositionInTotalImagePixelMatrix = col + 1
    position.RowPositionInTotalImagePixelMatrix = row + 1
    x, y = _slide_xy(row, col, spacing)
    position.XOffsetInSlideCoordinateSystem = _ds(x)
    position.YOffsetInSlideCoordinateSystem = _ds(y)
    position.ZOffsetInSlideCoordinateSystem = _ds(z * FOCAL_PLANE_SPACING_MM * 1000.0)  # µm
    optical = Dataset()
    optical.OpticalPathIdentifier = str(path)
    item = Dataset()
    item.PlanePositionSlideSequence = DicomSequence([position])
    item.OpticalPathIdentificationSequence = DicomSequence([optical])
    return item


def _split_counts(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def write_wsi(
    directory: Path | str,
    *,
    size: tuple[int, int] = (300, 200),
    tile: tuple[int, int] = (64, 64),
    levels: int = 1,
    codec: str = "native",
    samples: int = 3,
    bits: int = 8,
    photometric: str | None = None,
    offset_table: str = "bot",
    fragments_per_frame: int = 1,
    sparse: bool = False,
    missing_tiles: Sequence[tuple[int, int]] = (),
    concatenations: int = 1,
    optical_paths: int = 1,
    focal_planes: int = 1,
    big_endian: bool = False,
    legacy: bool = False,
    associated: Sequence[str] = (),
    pixel_spacing_mm: tuple[float, float] = (0.0005, 0.0005),
    seed: int = 0,
    fill: int | None = None,
) -> WsiFixture:
    """Write a VL Whole Slide Microscopy series (one file per level and concatenation part) into ``directory``.

    ``size`` and ``tile`` are (width, height); level k is level 0 strided by 2**k. ``missing_tiles`` are
    level-0 (tx, ty) tiles left out of a ``sparse`` file; their reference is ``fill`` (default: white, the
    dtype maximum, for 3 samples; 0 for 1 sample). ``codec`` is one of :data:`TRANSFER_SYNTAX`; ``legacy``
    drops DimensionOrganizationType and ImageType's third value from the pyramid levels.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ts = _check_codec(codec, big_endian)
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    if codec == "jpeg" and bits != 8:
        raise ValueError("JPEG baseline stores 8-bit samples only")
    if missing_tiles and not sparse:
        raise ValueError("missing_tiles needs sparse=True")
    if concatenations < 1 or levels < 1 or optical_paths < 1 or focal_planes < 1:
        raise ValueError("levels, concatenations, optical_paths and focal_planes must be >= 1")
    photometric = _photometric(codec, samples, photometric)
    dtype = np.uint8 if bits == 8 else np.uint16
    fill_value = int(np.iinfo(dtype).max if samples == 3 else 0) if fill is None else int(fill)
    lossy = codec == "jpeg"
    width, height = size
    missing = {(int(tx), int(ty)) for tx, ty in missing_tiles}
    across0, down0 = _tile_grid(width, height, tile)
    for tx, ty in missing:
        if not (0 <= tx < across0 and 0 <= ty < down0):
            raise ValueError(f"missing tile {(tx, ty)} is outside the {across0} x {down0} tile grid")

    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid(), "specimen": generate_uid()}
    rng = np.random.default_rng(seed)
    planes = [(p, z) for p in range(optical_paths) for z in range(focal_planes)]
    base = {(p, z): make_pixels(height, width, samples, dtype, seed=seed * 1009 + 31 * p + 7 * z + 1)
            for p, z in planes}

    fixture = WsiFixture(paths=[], levels=[], missing_mask=[], associated={}, lossy=lossy, tile=tuple(tile),
                         series_uid=uids["series"], pixel_spacing_mm=tuple(pixel_spacing_mm),
                         fill_value=fill_value, missing_tiles=sorted(missing), transfer_syntax=ts,
                         photometric=photometric, study_uid=uids["study"], frame_of_reference_uid=uids["frame"])
    instance_number = 1
    for level in range(levels):
        step = 2**level
        originals = {key: np.ascontiguousarray(img[::step, ::step]) for key, img in base.items()}
        h, w = next(iter(originals.values())).shape[:2]
        across, down = _tile_grid(w, h, tile)
        spacing = (pixel_spacing_mm[0] * step, pixel_spacing_mm[1] * step)
        level_missing = missing if level == 0 else set()
        order = [(p, z, ty, tx) for p, z in planes for ty in range(down) for tx in range(across)]
        if sparse:
            order = [o for o in order if (o[3], o[2]) not in level_missing]
            order = [order[i] for i in rng.permutation(len(order))]
        padded = {key: _pad_to_tiles(img, tile) for key, img in originals.items()}
        tiles = [_cut_tile(padded[(p, z)], tile, tx, ty) for p, z, ty, tx in order]

        # encode once; for lossy codecs the reference is the decode of what is stored
        encoded: list[bytes] | None = None
        if codec not in NATIVE_CODECS:
            encoded = [encode_frame(t, codec, photometric, bits) for t in tiles]
        references = {key: img.copy() for key, img in padded.items()}
        if lossy and encoded is not None:
            for (p, z, ty, tx), data in zip(order, encoded, strict=True):
                decoded = _decode_lossy(data).reshape(tile[1], tile[0], samples)
                references[(p, z)][ty * tile[1]:(ty + 1) * tile[1], tx * tile[0]:(tx + 1) * tile[0]] = decoded
        mask = np.zeros((h, w), bool)
        for tx, ty in level_missing:
            mask[ty * tile[1]:(ty + 1) * tile[1], tx * tile[0]:(tx + 1) * tile[0]] = True
        level_refs = {}
        for key in planes:
            ref = references[key][:h, :w].copy()
            ref[mask] = fill_value
            level_refs[key] = ref
        fixture.levels.append(level_refs)
        fixture.originals.append(originals)
        fixture.missing_mask.append(mask)

        # split the stored frames over the concatenation parts
        counts = _split_counts(len(order), concatenations)
        concatenation_uid, source_uid = generate_uid(), generate_uid()
        image_type = (["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if level == 0
                      else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"])
        if legacy:
            image_type = image_type[:2]
        parts: list[Path] = []
        start = 0
        for part, count in enumerate(counts):
            ds = _new_dataset(WSI_SOP_CLASS, ts)
            _wsi_common(ds, uids, image_type, legacy, "TILED_SPARSE" if sparse else "TILED_FULL")
            ds.InstanceNumber = instance_number
            instance_number += 1
            _set_image_pixel(ds, tile[1], tile[0], samples, bits, False, photometric)
            ds.NumberOfFrames = count
            ds.TotalPixelMatrixColumns = w
            ds.TotalPixelMatrixRows = h
            ds.TotalPixelMatrixFocalPlanes = focal_planes
            ds.NumberOfOpticalPaths = optical_paths
            ds.OpticalPathSequence = _optical_paths(optical_paths)
            origin = Dataset()
            origin.XOffsetInSlideCoordinateSystem = _ds(SLIDE_ORIGIN_MM[0])
            origin.YOffsetInSlideCoordinateSystem = _ds(SLIDE_ORIGIN_MM[1])
            ds.TotalPixelMatrixOriginSequence = DicomSequence([origin])
            ds.ImagedVolumeWidth = float(width * pixel_spacing_mm[1])
            ds.ImagedVolumeHeight = float(height * pixel_spacing_mm[0])
            ds.ImagedVolumeDepth = float(focal_planes * FOCAL_PLANE_SPACING_MM * 1000.0)
            shared = Dataset()
            shared.PixelMeasuresSequence = DicomSequence([_pixel_measures(spacing, FOCAL_PLANE_SPACING_MM,
                                                                          FOCAL_PLANE_SPACING_MM)])
            if optical_paths == 1 and not sparse:
                optical = Dataset()
                optical.OpticalPathIdentifier = "0"
                shared.OpticalPathIdentificationSequence = DicomSequence([optical])
            ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
            if sparse:
                ds.PerFrameFunctionalGroupsSequence = DicomSequence([
                    _sparse_frame_item(tx, ty, p, z, tile, spacing) for p, z, ty, tx in order[start:start + count]
                ])
            ds.LossyImageCompression = "01" if lossy else "00"
            if lossy:
                ds.LossyImageCompressionMethod = "ISO_10918_1"
            if concatenations > 1:
                ds.ConcatenationUID = concatenation_uid
                ds.SOPInstanceUIDOfConcatenationSource = source_uid
                ds.InConcatenationNumber = part + 1
                ds.InConcatenationTotalNumber = concatenations
                ds.ConcatenationFrameOffsetNumber = start
            if encoded is None:
                stack = np.stack(tiles[start:start + count])
                _set_native_pixels(ds, _native_bytes(stack, big_endian), bits)
            else:
                _set_encapsulated_pixels(ds, encoded[start:start + count], codec, offset_table, fragments_per_frame)
            # parts get names in reverse concatenation order, so file-name order differs from it
            name = f"level{level}.dcm" if concatenations == 1 else f"level{level}_part{concatenations - part}.dcm"
            parts.append(_save(ds, directory / name))
            start += count
        fixture.level_paths.append(parts)
        fixture.paths.extend(parts)

    # associated images: single-frame native RGB instances of the same series
    sizes = {"label": (48, 40), "overview": (120, 48)}
    for number, kind in enumerate(associated):
        if kind not in ("label", "overview", "thumbnail"):
            raise ValueError(f"unknown associated image {kind!r}")
        if kind == "thumbnail":
            step = max(1, math.ceil(max(width, height) / 96))
            image = np.ascontiguousarray(base[(0, 0)][::step, ::step])
            if samples == 1 or bits != 8:
                image = make_pixels(image.shape[0], image.shape[1], 3, np.uint8, seed=seed * 1009 + 500)
            spacing = (pixel_spacing_mm[0] * step, pixel_spacing_mm[1] * step)
        else:
            aw, ah = sizes[kind]
            image = make_pixels(ah, aw, 3, np.uint8, seed=seed * 1009 + 600 + number)
            spacing = (0.05, 0.05)
        ah, aw = image.shape[:2]
        ds = _new_dataset(WSI_SOP_CLASS, EXPLICIT_LE)
        _wsi_common(ds, uids, ["ORIGINAL", "PRIMARY", kind.upper(), "NONE"], False, "TILED_FULL")
        ds.InstanceNumber = instance_number
        instance_number += 1
        if kind == "label":
            ds.SpecimenLabelInImage = "YES"
        _set_image_pixel(ds, ah, aw, 3, 8, False, "RGB")
        ds.NumberOfFrames = 1
        ds.TotalPixelMatrixColumns = aw
        ds.TotalPixelMatrixRows = ah
        ds.TotalPixelMatrixFocalPlanes = 1
        ds.NumberOfOpticalPaths = 1
        ds.OpticalPathSequence = _optical_paths(1)
        origin = Dataset()
        origin.XOffsetInSlideCoordinateSystem = _ds(SLIDE_ORIGIN_MM[0])
        origin.YOffsetInSlideCoordinateSystem = _ds(SLIDE_ORIGIN_MM[1])
        ds.TotalPixelMatrixOriginSequence = DicomSequence([origin])
        ds.ImagedVolumeWidth = float(aw * spacing[1])
        ds.ImagedVolumeHeight = float(ah * spacing[0])
        shared = Dataset()
        shared.PixelMeasuresSequence = DicomSequence([_pixel_measures(spacing, FOCAL_PLANE_SPACING_MM, None)])
        ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
        ds.LossyImageCompression = "00"
        _set_native_pixels(ds, image.tobytes(), 8)
        path = _save(ds, directory / f"{kind}.dcm")
        fixture.associated[kind] = image
        fixture.associated_paths[kind] = path
        fixture.paths.append(path)
    return fixture


# -- volumes -------------------------------------------------------------------------------------------------
def _volume_values(shape: tuple[int, ...], dtype: np.dtype, samples: int, seed: int) -> np.ndarray:
    """Stored values (nz, rows, cols[, samples]): each slice a smooth image plus noise, slices all differ."""
    nz, rows, cols = shape
    if dtype == np.int16:
        low, high = -2500.0, 3000.0
    elif dtype == np.uint16:
        low, high = 0.0, 4000.0
    else:
        low, high = 0.0, 255.0
    slices = [make_pixels(rows, cols, samples, dtype, seed=seed * 7919 + k, low=low, high=high) for k in range(nz)]
    volume = np.stack(slices)
    return volume[..., 0] if samples == 1 else volume


def _direction(orientation: Sequence[float]) -> np.ndarray:
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:], dtype=np.float64)
    return np.stack([row, col, np.cross(row, col)])


def _check_volume_args(dtype: str | np.dtype, samples: int, codec: str) -> tuple[np.dtype, str]:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.int16), np.dtype(np.uint16), np.dtype(np.uint8)):
        raise ValueError(f"dtype must be int16, uint16 or uint8, got {dt}")
    if samples not in (1, 3):
        raise ValueError(f"samples must be 1 or 3, got {samples}")
    if codec not in ("native", "implicit", "rle", "jpegls", "jpeg2000", "htj2k", "ljpeg"):
        raise ValueError(f"codec {codec!r} is not lossless or not supported for volumes")
    return dt, _check_codec(codec, False)


def _set_ct_common(ds: Dataset, study_uid: str, series_uid: str, frame_uid: str, series_number: int) -> None:
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.Modality = "CT"
    ds.SeriesNumber = series_number
    ds.PositionReferenceIndicator = ""
    ds.KVP = "120"
    ds.BodyPartExamined = "PHANTOM"
    ds.PatientPosition = "HFS"


def write_volume_series(
    directory: Path | str,
    *,
    shape: tuple[int, int, int] = (6, 32, 24),
    spacing: tuple[float, float, float] = (2.5, 0.7, 0.8),
    dtype: str | np.dtype = "int16",
    samples: int = 1,
    codec: str = "native",
    rescale: tuple[float, float] = (1.0, -1024.0),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    origin: tuple[float, float, float] = (-100.0, -80.0, 50.0),
    shuffle_names: bool = True,
    gap_at: int | None = None,
    irregular: bool = False,
    second_series: bool = False,
    seed: int = 0,
) -> VolumeFixture:
    """Write a CT Image Storage series of single-frame files, names and InstanceNumbers shuffled.

    ``spacing`` is (slice, row, column) mm: PixelSpacing is (spacing[1], spacing[2]) and slice k sits at
    ``origin + k * spacing[0] * normal``. ``gap_at`` leaves slice k out; ``irregular`` moves slice nz // 2
    by 0.3 * spacing[0] along the normal; ``second_series`` adds another series (2 fewer slices, 4 more rows,
    twice the slice spacing, same study; its fixture is ``.second``, names ``SE2_*.dcm``) to the directory.
    The result's ``paths`` are in position order (``paths[i]`` holds ``volume[i]``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dt, ts = _check_volume_args(dtype, samples, codec)
    study_uid = generate_uid()
    fixture = _write_series(directory, shape, spacing, dt, ts, samples, codec, rescale, orientation, origin,
                            shuffle_names, gap_at, irregular, seed, study_uid, "IM", 1)
    if second_series:
        nz, rows, cols = shape
        fixture.second = _write_series(
            directory, (max(2, nz - 2), rows + 4, cols), (spacing[0] * 2, spacing[1], spacing[2]), dt, ts, samples,
            codec, rescale, orientation, origin, shuffle_names, None, False, seed + 1, study_uid, "SE2_", 2,
        )
    return fixture


def _write_series(directory: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float], dt: np.dtype,
                  ts: str, samples: int, codec: str, rescale: tuple[float, float], orientation: Sequence[float],
                  origin: tuple[float, float, float], shuffle_names: bool, gap_at: int | None, irregular: bool,
                  seed: int, study_uid: str, prefix: str, series_number: int) -> VolumeFixture:
    """One single-frame CT series for :func:`write_volume_series`."""
    nz, rows, cols = shape
    if gap_at is not None and not 0 < gap_at < nz - 1:
        raise ValueError("gap_at must be an inner slice index")
    rng = np.random.default_rng(seed + 12345)
    direction = _direction(orientation)
    volume = _volume_values(shape, dt, samples, seed)
    positions = np.array([np.asarray(origin, np.float64) + k * spacing[0] * direction[2] for k in range(nz)])
    if irregular:
        positions[nz // 2] += 0.3 * spacing[0] * direction[2]
    keep = [k for k in range(nz) if k != gap_at]
    series_uid, frame_uid = generate_uid(), generate_uid()
    names = rng.permutation(len(keep)) if shuffle_names else np.arange(len(keep))
    numbers = rng.permutation(len(keep)) + 1
    bits = dt.itemsize * 8
    photometric = "MONOCHROME2" if samples == 1 else "RGB"
    written: list[tuple[int, Path]] = []
    for i, k in enumerate(keep):
        ds = _new_dataset(CT_SOP_CLASS, ts)
        _set_ct_common(ds, study_uid, series_uid, frame_uid, series_number)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = int(numbers[i])
        ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[2])]
        ds.SliceThickness = _ds(spacing[0])
        ds.RescaleSlope = _ds(rescale[0])
        ds.RescaleIntercept = _ds(rescale[1])
        ds.RescaleType = "HU"
        _set_image_pixel(ds, rows, cols, samples, bits, dt.kind == "i", photometric)
        _set_pixels(ds, [volume[k]], codec, photometric, bits, "bot", 1, False)
        written.append((k, _save(ds, directory / f"{prefix}{int(names[i]):04d}.dcm")))
    return VolumeFixture(
        paths=[p for _, p in written], volume=volume[keep], spacing=tuple(spacing), origin=tuple(origin),
        direction=direction, rescale=[(float(rescale[0]), float(rescale[1]))] * len(keep), series_uid=series_uid,
        positions=positions[keep], frame_order=list(range(len(keep))), missing_slice=gap_at, study_uid=study_uid,
    )


def write_enhanced_volume(
    path: Path | str,
    *,
    shape: tuple[int, int, int] = (5, 20, 16),
    spacing: tuple[float, float, float] = (3.0, 0.6, 0.75),
    dtype: str | np.dtype = "int16",
    codec: str = "native",
    rescale: tuple[float, float] | Sequence[tuple[float, float]] = (1.0, -1024.0),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    origin: tuple[float, float, float] = (-100.0, -80.0, 50.0),
    seed: int = 0,
) -> VolumeFixture:
    """Write an Enhanced CT multi-frame file; frames are stored in a shuffled order.

    ``rescale`` is one (slope, intercept) for all frames or one per slice in position order (stored per
    frame in PixelValueTransformationSequence). ``frame_order[j]`` of the result is stored frame j's slice.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dt, ts = _check_volume_args(dtype, 1, codec)
    nz, rows, cols = shape
    if len(rescale) == 2 and not isinstance(rescale[0], Sequence):
        per_slice = [(float(rescale[0]), float(rescale[1]))] * nz
    else:
        per_slice = [(float(s), float(i)) for s, i in rescale]
        if len(per_slice) != nz:
            raise ValueError(f"rescale needs {nz} (slope, intercept) pairs, got {len(per_slice)}")
    rng = np.random.default_rng(seed + 54321)
    direction = _direction(orientation)
    volume = _volume_values(shape, dt, 1, seed)
    positions = np.array([np.asarray(origin, np.float64) + k * spacing[0] * direction[2] for k in range(nz)])
    order = [int(i) for i in rng.permutation(nz)]
    if nz > 1 and order == sorted(order):
        order = order[1:] + order[:1]
    bits = dt.itemsize * 8

    ds = _new_dataset(ENHANCED_CT_SOP_CLASS, ts)
    study_uid, series_uid = generate_uid(), generate_uid()
    _set_ct_common(ds, study_uid, series_uid, generate_uid(), 1)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.AcquisitionDateTime = "20240101120000"
    ds.ContentQualification = "PRODUCT"
    ds.PresentationLUTShape = "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    _set_image_pixel(ds, rows, cols, 1, bits, dt.kind == "i", "MONOCHROME2")
    ds.NumberOfFrames = nz
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([_pixel_measures((spacing[1], spacing[2]), spacing[0], spacing[0])])
    plane_orientation = Dataset()
    plane_orientation.ImageOrientationPatient = [_ds(v) for v in orientation]
    shared.PlaneOrientationSequence = DicomSequence([plane_orientation])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for k in order:
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [_ds(v) for v in positions[k]]
        item.PlanePositionSequence = DicomSequence([position])
        transform = Dataset()
        transform.RescaleSlope = _ds(per_slice[k][0])
        transform.RescaleIntercept = _ds(per_slice[k][1])
        transform.RescaleType = "HU"
        item.PixelValueTransformationSequence = DicomSequence([transform])
        content = Dataset()
        content.InStackPositionNumber = k + 1
        content.StackID = "1"
        item.FrameContentSequence = DicomSequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    _set_pixels(ds, volume[order], codec, "MONOCHROME2", bits, "bot", 1, False)
    _save(ds, path)
    return VolumeFixture(paths=[path], volume=volume, spacing=tuple(spacing), origin=tuple(origin),
                         direction=direction, rescale=per_slice, series_uid=series_uid, positions=positions,
                         frame_order=order, study_uid=study_uid)


# -- generic multi-frame files -------------------------------------------------------------------------------
def _multiframe_dataset(sop_class: str, ts: str, frames: int, rows: int, cols: int, samples: int, bits: int,
                        signed: bool, photometric: str) -> Dataset:
    ds = _new_dataset(sop_class, ts)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "NO"
    _set_image_pixel(ds, rows, cols, samples, bits, signed, photometric)
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.FrameTime = "40"
    return ds


def write_native_multiframe(path: Path | str, *, frames: int = 1000, rows: int = 256, cols: int = 256,
                            dtype: str | np.dtype = np.uint8, big_endian: bool = False) -> np.ndarray:
    """Write a native multi-frame secondary capture file; returns its frames (n, rows, cols).

    Frame i is a diagonal ramp shifted by 3 * i with i's low and high bytes in pixels (0, 0) and (0, 1).
    The header is written by pydicom and the Pixel Data element appended chunk by chunk, so large files
    cost one copy of the frames.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16)):
        raise ValueError(f"dtype must be uint8, uint16 or int16, got {dt}")
    if cols < 2:
        raise ValueError("need at least 2 columns")
    y, x = np.mgrid[:rows, :cols]
    ramp = (x + 2 * y).astype(dt)
    shift = (np.arange(frames, dtype=np.int64) * 3).astype(dt)
    out = np.empty((frames, rows, cols), dt)
    np.add(ramp[None], shift[:, None, None], out=out, casting="unsafe")
    index = np.arange(frames)
    out[:, 0, 0] = (index & 0xFF).astype(dt)
    out[:, 0, 1] = ((index >> 8) & 0xFF).astype(dt)

    ts = EXPLICIT_BE if big_endian else EXPLICIT_LE
    bits = dt.itemsize * 8
    ds = _multiframe_dataset(SC_BYTE_SOP_CLASS if bits == 8 else SC_WORD_SOP_CLASS, ts, frames, rows, cols, 1,
                             bits, dt.kind == "i", "MONOCHROME2")
    _save(ds, path)
    length = out.nbytes
    padded = length + (length % 2)
    if padded >= 0xFFFFFFFF:
        raise ValueError("Pixel Data over 4 GiB cannot be written natively")
    endian = ">" if big_endian else "<"
    vr = b"OB" if bits == 8 else b"OW"
    header = struct.pack(f"{endian}HH", 0x7FE0, 0x0010) + vr + b"\x00\x00" + struct.pack(f"{endian}I", padded)
    chunk = max(1, (16 << 20) // max(1, rows * cols * dt.itemsize))
    with open(path, "ab") as f:
        f.write(header)
        for start in range(0, frames, chunk):
            part = out[start:start + chunk]
            f.write(_native_bytes(part, big_endian) if big_endian else memoryview(np.ascontiguousarray(part)))
        if padded != length:
            f.write(b"\x00")
    return out


def write_encapsulated_multiframe(
    path: Path | str,
    *,
    frames: int = 8,
    rows: int = 64,
    cols: int = 48,
    codec: str = "jpegls",
    offset_table: str = "none",
    fragments_per_frame: int = 1,
    samples: int = 1,
    bits: int = 8,
    photometric: str | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Write a multi-frame secondary capture file of encoded frames; returns the frames a reader must return.

    Shape (n, rows, cols) for one sample, (n, rows, cols, 3) for three; for ``codec="jpeg"`` the frames are
    imagecodecs' decode of the stored data (lossy).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if codec not in ENCAPSULATED_CODECS:
        raise ValueError(f"codec {codec!r} is not an encapsulated codec")
    ts = _check_codec(codec, False)
    if bits not in (8, 16) or (codec == "jpeg" and bits != 8):
        raise ValueError(f"bits {bits} not supported with {codec}")
    photometric = _photometric(codec, samples, photometric)
    dt = np.uint8 if bits == 8 else np.uint16
    images = [make_pixels(rows, cols, samples, dt, seed=seed * 4099 + i) for i in range(frames)]
    encoded = [encode_frame(img, codec, photometric, bits) for img in images]
    if codec == "jpeg":
        images = [_decode_lossy(data).reshape(rows, cols, samples) for data in encoded]
    sop = SC_COLOR_SOP_CLASS if samples == 3 else (SC_BYTE_SOP_CLASS if bits == 8 else SC_WORD_SOP_CLASS)
    ds = _multiframe_dataset(sop, ts, frames, rows, cols, samples, bits, False, photometric)
    ds.LossyImageCompression = "01" if codec == "jpeg" else "00"
    _set_encapsulated_pixels(ds, encoded, codec, offset_table, fragments_per_frame)
    _save(ds, path)
    stack = np.stack(images)
    return stack[..., 0] if samples == 1 else stack
