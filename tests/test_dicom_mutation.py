"""Mutation tests over DICOM files: real ones (../shared/data) and generated encapsulated multi-frame files
(Basic Offset Table, none, Extended Offset Table, several fragments per frame). Each damaged variant is opened
and read in a child process; the only allowed outcomes are success or a ``CucimLikeError`` subclass, and the
file on disk must not change. The harness is the TIFF mutation test's (tests/_mutation_worker.py).

Mutants: truncations (in the header, at the pixel data, among fragments), byte flips in the header and in the
pixel data, interesting values written into geometry attributes (Rows, Columns, NumberOfFrames, ...), item and
Basic Offset Table entries, the Pixel Data element length, and zeroed spans. Each mutant comes from a seed.
"""

from __future__ import annotations

import os
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from ._mutation_worker import file_state, review, run_jobs
from .conftest import SHARED_DATA

pydicom = pytest.importorskip("pydicom")

REAL_FILES = [
    ("dicom-wsi/sm_image.dcm", 30),
    ("dicom-wsi/sm_image_grayscale.dcm", 20),
    ("openslide-python/boxes_0.dcm", 30),
    ("dicom-volume/CT_small.dcm", 20),
    ("dicom-volume/MR_small_RLE.dcm", 25),
    ("dicom-volume/MR_small_jp2klossless.dcm", 20),
    ("dicom-volume/MR_small_jpeg_ls_lossless.dcm", 25),
    ("dicom-volume/SC_rgb_rle_16bit_2frame.dcm", 20),
    ("dicom-volume/dicom_test_image.dcm", 15),
]
GENERATED = {"jpegls-nobot": 50, "jpeg-bot-2frag": 50, "j2k-eot": 40, "native-be": 30, "wsi-sparse": 50,
             "wsi-sparse-1path": 30, "wsi-sparse-planes": 30, "bits-1": 25, "ybr-422": 25}
SCALE = float(os.environ.get("CUCIM_LIKE_MUTATION_SCALE", "1"))

_KEY_TAGS = (0x00280002, 0x00280008, 0x00280010, 0x00280011, 0x00280100, 0x00280103, 0x00280006, 0x00480006,
             0x00480007, 0x00020010)
_INTERESTING = (0, 1, 2, 3, 7, 8, 15, 16, 255, 256, 4095, 32768, 65535, 2**31 - 1, 2**32 - 1)


@dataclass
class DicomLayout:
    """Where the parts of a pristine DICOM file are (found with pydicom and a plain walk of the items)."""

    header: tuple[int, int]
    pixel_tag: int
    pixel_value: int
    encapsulated: bool
    little: bool
    key_values: list[tuple[int, int, str]] = field(default_factory=list)  # (pos, length, VR)
    items: list[tuple[int, int]] = field(default_factory=list)  # (header pos, payload length)


def layout(path: Path) -> DicomLayout:
    data = path.read_bytes()
    with open(path, "rb") as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
        pixel_tag = fh.tell()
    little = ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.2"
    implicit = ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    keys = []
    for owner in (ds.file_meta, ds):
        for tag in _KEY_TAGS:
            raw = owner._dict.get(tag) if hasattr(owner, "_dict") else None
            if raw is not None and getattr(raw, "value_tell", None):
                keys.append((raw.value_tell, raw.length, raw.VR or ""))
    header = 12 if not implicit else 8
    if not implicit and data[pixel_tag + 4 : pixel_tag + 6] not in (b"OB", b"OW", b"UN"):
        header = 8
    e = "<" if little else ">"
    (length,) = struct.unpack_from(e + "I", data, pixel_tag + header - 4)
    out = DicomLayout((132, pixel_tag), pixel_tag, pixel_tag + header, length == 0xFFFFFFFF, little, keys)
    if out.encapsulated:
        pos = out.pixel_value
        while pos + 8 <= len(data):
            group, elem, n = struct.unpack_from("<HHI", data, pos)
            if (group, elem) != (0xFFFE, 0xE000):
                break
            out.items.append((pos, n))
            pos += 8 + n
    return out


def mutate(original: bytes, lay: DicomLayout, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(original)
    kind = rng.choice(["truncate", "flip-header", "flip-pixels", "key-value", "item-length", "bot-entry",
                       "pixel-length", "zero-span", "item-tag"])
    n = len(data)
    if kind == "truncate":
        where = rng.choice([rng.randrange(1, lay.pixel_tag), rng.randrange(lay.pixel_tag, n),
                            lay.pixel_value + rng.randrange(0, 64)])
        return bytes(data[: min(where, n - 1)]), f"truncate@{where}"
    if kind == "flip-header":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(*lay.header)] ^= 1 << rng.randrange(8)
        return bytes(data), kind
    if kind == "flip-pixels":
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(lay.pixel_value, n)] ^= 1 << rng.randrange(8)
        return bytes(data), kind
    if kind == "key-value" and lay.key_values:
        pos, length, vr = rng.choice(lay.key_values)
        value = rng.choice(_INTERESTING)
        e = "<" if lay.little else ">"
        if vr in ("US", "SS") and length == 2:
            struct.pack_into(e + "H", data, pos, value & 0xFFFF)
        elif vr in ("UL", "SL") and length == 4:
            struct.pack_into(e + "I", data, pos, value & 0xFFFFFFFF)
        else:  # strings (IS, UI): another value of the same length
            text = str(value).encode()[:length].ljust(length, b" ")
            data[pos : pos + length] = text
        return bytes(data), f"key-value@{pos}={value}"
    if kind in ("item-length", "item-tag", "bot-entry") and lay.items:
        if kind == "bot-entry" and lay.items[0][1] >= 4:
            pos = lay.items[0][0] + 8 + 4 * rng.randrange(lay.items[0][1] // 4)
            value = rng.choice((*_INTERESTING, rng.randrange(n)))
            struct.pack_into("<I", data, pos, value & 0xFFFFFFFF)
            return bytes(data), f"bot-entry@{pos}={value}"
        pos, _ = rng.choice(lay.items)
        if kind == "item-tag":
            data[pos + rng.randrange(4)] ^= 0xFF
            return bytes(data), f"item-tag@{pos}"
        value = rng.choice((*_INTERESTING, rng.randrange(n)))
        struct.pack_into("<I", data, pos + 4, value & 0xFFFFFFFF)
        return bytes(data), f"item-length@{pos}={value}"
    if kind == "pixel-length":
        e = "<" if lay.little else ">"
        value = rng.choice(_INTERESTING)
        struct.pack_into(e + "I", data, lay.pixel_value - 4, value & 0xFFFFFFFF)
        return bytes(data), f"pixel-length={value}"
    start = rng.randrange(lay.header[0], n - 1)
    stop = min(n, start + rng.randint(1, 256))
    data[start:stop] = bytes(stop - start)
    return bytes(data), f"zero-span@{start}:{stop}"


def generated_files(root: Path) -> dict[str, Path]:
    """Small encapsulated multi-frame files covering the frame index paths (and a big-endian native one)."""
    import imagecodecs
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate, encapsulate_extended
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    frames = [np.clip(rng.normal(120, 30, (32, 40)) + i * 10, 0, 255).astype(np.uint8) for i in range(6)]

    def dataset(path: Path, ts: str, samples: int = 1, bits: int = 8) -> FileDataset:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ts
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality = generate_uid(), "OT"
        ds.Rows, ds.Columns, ds.SamplesPerPixel = 32, 40, samples
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
        ds.NumberOfFrames = len(frames)
        return ds

    out = {}
    path = root / "jpegls-nobot.dcm"
    ds = dataset(path, "1.2.840.10008.1.2.4.80")
    ds.PixelData = encapsulate([imagecodecs.jpegls_encode(f) for f in frames], has_bot=False)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    out["jpegls-nobot"] = path
    path = root / "jpeg-bot-2frag.dcm"
    ds = dataset(path, "1.2.840.10008.1.2.4.50")
    ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(f, level=90) for f in frames], fragments_per_frame=2,
                               has_bot=True)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    out["jpeg-bot-2frag"] = path
    path = root / "j2k-eot.dcm"
    ds = dataset(path, "1.2.840.10008.1.2.4.90")
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
        [imagecodecs.jpeg2k_encode(f, level=0, codecformat="j2k") for f in frames])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    out["j2k-eot"] = path
    path = root / "native-be.dcm"
    ds = dataset(path, "1.2.840.10008.1.2.2", bits=16)
    ds.PixelData = np.stack(frames).astype(">u2").tobytes()
    ds["PixelData"].VR = "OW"
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    out["native-be"] = path
    from tests.formats import dicom_fixtures as dfx

    fx = dfx.write_wsi(root / "wsi", codec="jpeg2000", sparse=True, missing_tiles=[(1, 1)], optical_paths=2,
                       size=(160, 120), tile=(64, 48))
    out["wsi-sparse"] = fx.paths[0]
    # one optical path and one focal plane: the frames' positions are read by the first read, not at open
    fx = dfx.write_wsi(root / "wsi1", codec="native", sparse=True, missing_tiles=[(0, 1)], size=(160, 120),
                       tile=(64, 48), levels=1)
    out["wsi-sparse-1path"] = fx.paths[0]
    # several focal planes: found at open by a scan of the per-frame groups' bytes
    fx = dfx.write_wsi(root / "wsi-planes", codec="native", sparse=True, focal_planes=2, size=(160, 120),
                       tile=(64, 48), levels=1)
    out["wsi-sparse-planes"] = fx.paths[0]
    from tests.formats.test_dicom_native_layouts import write_bits, write_ybr422

    rng = np.random.default_rng(11)
    out["bits-1"] = write_bits(root / "bits.dcm", (rng.random((6, 16, 24)) < 0.4).astype(np.uint8))
    out["ybr-422"], _ = write_ybr422(root / "ybr422.dcm", rng.integers(0, 256, (6, 16, 24, 3), dtype=np.uint8))
    return out


def _make_mutants(name: str, source: Path, count: int, out: Path) -> list[dict]:
    original = source.read_bytes()
    lay = layout(source)
    mutants = []
    for k in range(max(1, round(count * SCALE))):
        rng = random.Random(zlib.crc32(f"{name}#{k}".encode()))
        data, what = mutate(original, lay, rng)
        folder = out / f"{name}-{k:03d}"  # alone in its folder: a WSI file gathers its siblings
        folder.mkdir()
        path = folder / source.name
        path.write_bytes(data)
        mutants.append({"path": str(path), "source": name, "what": what, "identity": file_state(path)})
    return mutants


def test_generated_files_read_cleanly(tmp_path):
    from cucim_like import CuImage

    for name, path in generated_files(tmp_path).items():
        img = CuImage(path)
        if name == "wsi-sparse":
            assert img.shape == [120, 160, 3] and img.optical_paths == ["0", "1"]
            continue
        if name == "wsi-sparse-planes":
            assert img.focal_planes == [0.0, 1.0]
            assert img.read_region((0, 0), (160, 120), focal_plane=1).shape == (120, 160, 3)
            continue
        if name == "wsi-sparse-1path":
            assert img.shape == [120, 160, 3] and img.read_region((0, 0), (160, 120)).shape == (120, 160, 3)
            continue
        assert img.shape[0] == 6, name
        got = img.read_region()
        ref = pydicom.dcmread(path).pixel_array
        if name.startswith("jpeg-") or name == "ybr-422":
            assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1, name
        else:
            np.testing.assert_array_equal(got, ref, err_msg=name)


def test_dicom_mutants_fail_only_with_typed_errors(tmp_path):
    out = tmp_path / "mutants"
    out.mkdir()
    mutants: list[dict] = []
    for name, path in generated_files(tmp_path / "pristine").items():
        mutants += _make_mutants(f"gen-{name}", path, GENERATED[name], out)
    for rel, count in REAL_FILES:
        path = SHARED_DATA / rel
        if path.exists():
            mutants += _make_mutants(Path(rel).stem, path, count, out)
    results = run_jobs([{"path": m["path"], "ops": None} for m in mutants], tmp_path / "work")
    problems, outcomes, _, _ = review(mutants, results)
    print(f"\n{len(mutants)} DICOM mutants: {dict(outcomes.most_common())}")
    assert not problems, f"{len(problems)} mutants misbehaved:\n" + "\n".join(problems[:40])
    assert len(mutants) >= 150 * min(SCALE, 1)
    assert outcomes["success"] < len(mutants)  # the mutations do reach the reader
