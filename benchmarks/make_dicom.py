"""Generate the DICOM files of ``benchmarks/run_dicom.py`` into ``benchmarks/data/dicom/``.

* ``wsi_bot/``, ``wsi_nobot/``, ``wsi_eot/``: one VL Whole Slide Microscopy series each (JPEG baseline,
  YBR_FULL_422, 256x256 tiles at quality 80, TILED_FULL), level 0 of 11264 x 11264 and levels at downsample 4
  and 16, one instance file per level. The three directories hold the same pixels and differ only in how the
  frames are indexed: a filled Basic Offset Table, an empty one, or an empty one plus the Extended Offset Table.
  The tissue-like content is make_slide.py's (mosaic of the real Aperio sample, or its synthetic texture).
* ``native_1000.dcm``: 1000 frames of 256 x 256 uint16 MONOCHROME2, uncompressed (Explicit VR Little Endian),
  131 MB of pixel data (Multi-frame Grayscale Word Secondary Capture).
* ``jpegls_1000_nobot.dcm``: the same kind of frames (other noise), JPEG-LS lossless, one fragment per frame,
  empty Basic Offset Table.

Every frame of the volumes differs (a CT-like phantom that changes along the stack, fresh noise per frame) and
its top-left pixel holds the frame index. Files that exist are skipped (``--force`` rewrites them).

Usage: ``python benchmarks/make_dicom.py [--only wsi,native,jpegls] [--force] [--verify] [--out DIR]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data" / "dicom"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import make_slide  # noqa: E402  (sibling module: the tissue-like content generator)

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
WORD_SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture Image Storage
WSI_SIZE = 11264  # level-0 width and height: 44 x 44 tiles
WSI_DOWNSAMPLES = (1, 4, 16)
TILE = 256
QUALITY = 80
MPP_MM = 0.00025  # level-0 pixel spacing in mm (0.25 µm, a 40x scan)
VARIANTS = {"wsi_bot": "Basic Offset Table filled",
            "wsi_nobot": "empty Basic Offset Table",
            "wsi_eot": "empty Basic Offset Table + Extended Offset Table"}
LEVEL_FILES = tuple(f"level{i}.dcm" for i in range(len(WSI_DOWNSAMPLES)))
VOLUME_FRAMES = 1000
VOLUME_SIDE = 256
NATIVE_NAME = "native_1000.dcm"
JPEGLS_NAME = "jpegls_1000_nobot.dcm"
UID_ROOT = "cucim_like benchmarks/make_dicom.py"


def uid(*parts: str) -> str:
    """A deterministic UID (same inputs, same UID), so regenerated files keep their identities."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[UID_ROOT, *parts]))


def workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def code_item(value: str, scheme: str, meaning: str) -> Any:
    from pydicom import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> Any:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def common_header(ds: Any, study: str, series: str, instance_number: int, modality: str) -> None:
    """Patient, study, series and equipment attributes with dummy values."""
    now = dt.datetime(2026, 11, 21, 12, 0, 0)
    ds.PatientName = "Benchmark^Synthetic"
    ds.PatientID = "CUCIM-LIKE-BENCH"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study
    ds.StudyID = "1"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.Modality = modality
    ds.Manufacturer = "cucim_like benchmarks"
    ds.ManufacturerModelName = "make_dicom.py"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "1"


def save(ds: Any, path: Path) -> int:
    """Write ``ds`` as a DICOM file (preamble + file meta) via a temporary name; returns the file size."""
    tmp = path.with_name(path.name + ".part")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return path.stat().st_size


def set_encapsulated(ds: Any, data: bytes) -> None:
    ds.PixelData = data
    elem = ds["PixelData"]
    elem.VR = "OB"
    elem.is_undefined_length = True


# -- whole slide ----------------------------------------------------------------------------------------------------
def wsi_levels(seed: int = 0) -> tuple[list[np.ndarray], str]:
    """The three pyramid levels (RGB uint8) and the name of the texture they were cut from."""
    rng = np.random.default_rng(seed)
    texture, name = make_slide.load_texture(make_slide.REAL_SLIDE, rng)
    level0 = make_slide.build_level0(texture, WSI_SIZE, WSI_SIZE, rng)
    levels = [level0]
    for prev, ds in itertools.pairwise(WSI_DOWNSAMPLES):
        levels.append(make_slide.downsample(levels[-1], ds // prev))
    return levels, name


def tile_views(level: np.ndarray) -> Iterator[np.ndarray]:
    """The level's 256x256 tiles in TILED_FULL order (rows of tiles, left to right); edge tiles are padded with
    the glass colour, as scanners pad them."""
    h, w = level.shape[:2]
    th, tw = -(-h // TILE), -(-w // TILE)
    if (th * TILE, tw * TILE) != (h, w):
        padded = np.empty((th * TILE, tw * TILE, 3), np.uint8)
        padded[...] = make_slide.BACKGROUND.astype(np.uint8)
        padded[:h, :w] = level
        level = padded
    for ty in range(th):
        for tx in range(tw):
            yield level[ty * TILE : (ty + 1) * TILE, tx * TILE : (tx + 1) * TILE]


def encode_level(level: np.ndarray, pool: ThreadPoolExecutor) -> list[bytes]:
    """JPEG baseline frames: YCbCr with 4:2:2 chroma subsampling (DICOM's YBR_FULL_422), quality QUALITY."""
    import imagecodecs

    def encode(tile: np.ndarray) -> bytes:
        return bytes(imagecodecs.jpeg8_encode(np.ascontiguousarray(tile), level=QUALITY, subsampling="422"))

    return list(pool.map(encode, tile_views(level)))


def wsi_dataset(variant: str, index: int, width: int, height: int, frames: list[bytes]) -> Any:
    """One pyramid level as a VL Whole Slide Microscopy instance with the given frame indexing variant."""
    from pydicom import Dataset
    from pydicom.encaps import encapsulate, encapsulate_extended
    from pydicom.uid import JPEGBaseline8Bit

    ds_factor = WSI_DOWNSAMPLES[index]
    spacing = MPP_MM * ds_factor
    sop_instance = uid(variant, "level", str(index))
    ds = Dataset()
    ds.file_meta = file_meta(WSI_SOP_CLASS, sop_instance, JPEGBaseline8Bit)
    ds.SOPClassUID = WSI_SOP_CLASS
    ds.SOPInstanceUID = sop_instance
    common_header(ds, uid("study"), uid(variant, "series"), index + 1, "SM")
    ds.FrameOfReferenceUID = uid(variant, "frame of reference")
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if index == 0 else \
        ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
    ds.AcquisitionDateTime = "20261121120000"
    ds.VolumetricProperties = "VOLUME"
    ds.BurnedInAnnotation = "NO"
    ds.SpecimenLabelInImage = "NO"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.LossyImageCompressionRatio = f"{width * height * 3 / max(1, sum(map(len, frames))):.2f}"[:16]
    # image pixel
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.Rows = ds.Columns = TILE
    ds.NumberOfFrames = len(frames)
    # whole slide geometry
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width, height
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    ds.ImagedVolumeWidth = WSI_SIZE * MPP_MM  # mm
    ds.ImagedVolumeHeight = WSI_SIZE * MPP_MM  # mm
    ds.ImagedVolumeDepth = 1.0  # µm
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 20.0
    origin.YOffsetInSlideCoordinateSystem = 40.0
    ds.TotalPixelMatrixOriginSequence = [origin]
    measures = Dataset()
    measures.PixelSpacing = [spacing, spacing]
    measures.SliceThickness = 0.001
    frame_type = Dataset()
    frame_type.FrameType = list(ds.ImageType)
    path_id = Dataset()
    path_id.OpticalPathIdentifier = "1"
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.WholeSlideMicroscopyImageFrameTypeSequence = [frame_type]
    shared.OpticalPathIdentificationSequence = [path_id]
    ds.SharedFunctionalGroupsSequence = [shared]
    optical = Dataset()
    optical.OpticalPathIdentifier = "1"
    optical.OpticalPathDescription = "brightfield"
    optical.IlluminationTypeCodeSequence = [code_item("111744", "DCM", "Brightfield illumination")]
    optical.IlluminationColorCodeSequence = [code_item("414298005", "SCT", "Full Spectrum")]
    optical.ObjectiveLensPower = 40
    ds.OpticalPathSequence = [optical]
    # specimen
    ds.ContainerIdentifier = "BENCH-SLIDE-1"
    ds.IssuerOfTheContainerIdentifierSequence = []
    ds.ContainerTypeCodeSequence = [code_item("433466003", "SCT", "Microscope slide")]
    specimen = Dataset()
    specimen.SpecimenIdentifier = "BENCH-SPECIMEN-1"
    specimen.SpecimenUID = uid("specimen")
    specimen.IssuerOfTheSpecimenIdentifierSequence = []
    specimen.SpecimenPreparationSequence = []
    ds.SpecimenDescriptionSequence = [specimen]
    ds.AcquisitionContextSequence = []
    # frames
    if variant == "wsi_eot":
        data, offsets, lengths = encapsulate_extended(frames)
        ds.ExtendedOffsetTable = offsets
        ds.ExtendedOffsetTableLengths = lengths
    else:
        data = encapsulate(frames, has_bot=variant == "wsi_bot")
    set_encapsulated(ds, data)
    return ds


def write_wsi(out: Path, force: bool) -> dict[str, Any]:
    """The three WSI directories; the pyramid is built and encoded once, only when some file is missing."""
    todo = [(v, i) for v in VARIANTS for i in range(len(LEVEL_FILES))
            if force or not (out / v / LEVEL_FILES[i]).is_file()]
    if not todo:
        return {"wsi": "all files exist (skipped)"}
    t0 = time.perf_counter()
    levels, texture = wsi_levels()
    t_build = time.perf_counter() - t0
    t1 = time.perf_counter()
    needed = sorted({i for _, i in todo})
    with ThreadPoolExecutor(workers()) as pool:
        frames = {i: encode_level(levels[i], pool) for i in needed}
    t_encode = time.perf_counter() - t1
    t2 = time.perf_counter()
    sizes = {}
    for variant, i in todo:
        (out / variant).mkdir(parents=True, exist_ok=True)
        h, w = levels[i].shape[:2]
        path = out / variant / LEVEL_FILES[i]
        sizes[f"{variant}/{LEVEL_FILES[i]}"] = save(wsi_dataset(variant, i, w, h, frames[i]), path)
    return {"texture": texture, "levels_wh": [[a.shape[1], a.shape[0]] for a in levels],
            "frames_per_level": {i: len(f) for i, f in frames.items()}, "build_s": round(t_build, 2),
            "encode_s": round(t_encode, 2), "write_s": round(time.perf_counter() - t2, 2), "bytes": sizes}


# -- volumes ------------------------------------------------------------------------------------------------------
def volume_frames(n: int, seed: int, chunk: int = 50) -> Iterator[np.ndarray]:
    """CT-like uint16 frames (n, 256, 256) in chunks: an elliptic body with a bright ring ("bone") and two organs
    whose sizes change along the stack, soft noise; pixel (0, 0) of frame i holds i."""
    rng = np.random.default_rng(seed)
    s = VOLUME_SIDE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    yy, xx = (yy - s / 2) / (s / 2), (xx - s / 2) / (s / 2)
    for start in range(0, n, chunk):
        idx = np.arange(start, min(n, start + chunk), dtype=np.float32)[:, None, None]
        phase = idx / max(1, n - 1)
        body = (xx / 0.85) ** 2 + (yy / (0.65 + 0.1 * np.sin(np.pi * phase))) ** 2
        organ1 = ((xx + 0.3) / (0.15 + 0.1 * phase)) ** 2 + ((yy - 0.1) / 0.2) ** 2
        organ2 = ((xx - 0.35) / 0.18) ** 2 + ((yy + 0.05) / (0.1 + 0.15 * (1 - phase))) ** 2
        vol = np.where(body < 1.0, 1040.0, 24.0)
        vol = np.where((body < 1.0) & (body > 0.8), 1900.0, vol)
        vol = np.where(organ1 < 1.0, 1100.0, vol)
        vol = np.where(organ2 < 1.0, 980.0, vol)
        vol = vol + rng.normal(0.0, 12.0, vol.shape)
        out = np.clip(vol, 0, 4095).astype(np.uint16)
        out[:, 0, 0] = idx[:, 0, 0].astype(np.uint16)
        yield out


def volume_dataset(name: str, transfer_syntax: str, n: int) -> Any:
    """Multi-frame Grayscale Word Secondary Capture attributes of a (n, 256, 256) uint16 MONOCHROME2 stack."""
    from pydicom import Dataset

    sop_instance = uid(name)
    ds = Dataset()
    ds.file_meta = file_meta(WORD_SC_SOP_CLASS, sop_instance, transfer_syntax)
    ds.SOPClassUID = WORD_SC_SOP_CLASS
    ds.SOPInstanceUID = sop_instance
    common_header(ds, uid("volume study"), uid(name, "series"), 1, "OT")
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.Rows = ds.Columns = VOLUME_SIDE
    ds.NumberOfFrames = n
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.SpacingBetweenSlices = 1.0
    ds.FrameIncrementPointer = 0x00182005  # Slice Location Vector
    ds.SliceLocationVector = [float(i) for i in range(n)]
    return ds


def write_native(out: Path, force: bool) -> dict[str, Any]:
    from pydicom.uid import ExplicitVRLittleEndian

    path = out / NATIVE_NAME
    if path.is_file() and not force:
        return {NATIVE_NAME: "exists (skipped)"}
    t0 = time.perf_counter()
    pixels = np.concatenate(list(volume_frames(VOLUME_FRAMES, seed=1)))
    ds = volume_dataset("native", ExplicitVRLittleEndian, VOLUME_FRAMES)
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    del pixels
    out.mkdir(parents=True, exist_ok=True)
    size = save(ds, path)
    return {NATIVE_NAME: size, "native_s": round(time.perf_counter() - t0, 2)}


def write_jpegls(out: Path, force: bool) -> dict[str, Any]:
    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    path = out / JPEGLS_NAME
    if path.is_file() and not force:
        return {JPEGLS_NAME: "exists (skipped)"}
    t0 = time.perf_counter()
    def encode(frame: np.ndarray) -> bytes:
        return bytes(imagecodecs.jpegls_encode(frame))

    with ThreadPoolExecutor(workers()) as pool:
        frames = [f for chunk in volume_frames(VOLUME_FRAMES, seed=2) for f in pool.map(encode, list(chunk))]
    ds = volume_dataset("jpegls", JPEGLSLossless, VOLUME_FRAMES)
    set_encapsulated(ds, encapsulate(frames, has_bot=False))
    out.mkdir(parents=True, exist_ok=True)
    size = save(ds, path)
    return {JPEGLS_NAME: size, "jpegls_frame_kib_median": round(float(np.median([len(f) for f in frames])) / 1024, 1),
            "jpegls_s": round(time.perf_counter() - t0, 2)}


# -- verification ---------------------------------------------------------------------------------------------------
def verify(out: Path) -> list[str]:
    """Open each WSI directory with wsidicom and OpenSlide and compare regions of every level; check the volumes
    with pydicom. Returns report lines; raises AssertionError on a mismatch."""
    import openslide
    import pydicom
    import pydicom.pixels
    from wsidicom import WsiDicom

    lines = []
    rng = np.random.default_rng(7)
    for variant in VARIANTS:
        d = out / variant
        wsi = WsiDicom.open(d)
        slide = openslide.OpenSlide(str(d / LEVEL_FILES[0]))
        assert slide.level_count == len(WSI_DOWNSAMPLES), slide.level_dimensions
        assert [round(v) for v in slide.level_downsamples] == list(WSI_DOWNSAMPLES), slide.level_downsamples
        worst_max, worst_mean = 0, 0.0
        for level, ds_factor in enumerate(WSI_DOWNSAMPLES):
            lw, lh = slide.level_dimensions[level]
            wlevel = wsi.levels[level]  # wsidicom numbers levels by log2 of the downsample: 0, 2, 4
            assert (wlevel.size.width, wlevel.size.height) == (lw, lh)
            for _ in range(3):
                size = min(512, lw, lh)
                x, y = int(rng.integers(0, lw - size + 1)), int(rng.integers(0, lh - size + 1))
                a = np.asarray(wsi.read_region((x, y), wlevel.level, (size, size)))[..., :3].astype(np.int16)
                b = np.asarray(slide.read_region((x * ds_factor, y * ds_factor), level, (size, size)))[..., :3]
                diff = np.abs(a - b)
                worst_max, worst_mean = max(worst_max, int(diff.max())), max(worst_mean, float(diff.mean()))
        assert worst_max <= 16 and worst_mean <= 1.0, (variant, worst_max, worst_mean)
        lines.append(f"{variant}: wsidicom and OpenSlide open it; levels {slide.level_dimensions}; wsidicom vs "
                     f"OpenSlide on 9 regions: max |diff| {worst_max}, worst mean |diff| {worst_mean:.3f}; "
                     f"OpenSlide MPP {slide.properties.get(openslide.PROPERTY_NAME_MPP_X)}")
        slide.close()
        wsi.close()
    native = pydicom.pixels.pixel_array(out / NATIVE_NAME, index=500)
    assert native.shape == (VOLUME_SIDE, VOLUME_SIDE) and native.dtype == np.uint16 and native[0, 0] == 500
    lines.append(f"{NATIVE_NAME}: pydicom frame 500 {native.shape} {native.dtype}, pixel (0, 0) = {native[0, 0]}")
    jls = [pydicom.pixels.pixel_array(out / JPEGLS_NAME, index=i) for i in (0, 999)]
    assert [int(f[0, 0]) for f in jls] == [0, 999]
    ref = next(volume_frames(VOLUME_FRAMES, seed=2))[0]
    assert np.array_equal(jls[0], ref), "JPEG-LS frame 0 is not lossless"
    lines.append(f"{JPEGLS_NAME}: pydicom frames 0 and 999 decode, frame 0 equals the source (lossless)")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    p.add_argument("--only", default="wsi,native,jpegls", help="comma-separated subset of wsi,native,jpegls")
    p.add_argument("--force", action="store_true", help="rewrite files that exist")
    p.add_argument("--verify", action="store_true", help="then open the files with wsidicom, OpenSlide, pydicom")
    a = p.parse_args(argv)
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    if only - {"wsi", "native", "jpegls"}:
        p.error(f"unknown parts {sorted(only - {'wsi', 'native', 'jpegls'})}")
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    if "wsi" in only:
        info.update(write_wsi(a.out, a.force))
    if "native" in only:
        info.update(write_native(a.out, a.force))
    if "jpegls" in only:
        info.update(write_jpegls(a.out, a.force))
    info["total_s"] = round(time.perf_counter() - t0, 2)
    for k, v in info.items():
        print(f"{k:>24}: {v}")
    if a.verify:
        for line in verify(a.out):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
