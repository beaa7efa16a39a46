"""Codec conformance with the ``wsidicom-data`` package: every encoded frame, wrapped in a DICOM file with its
transfer syntax and photometric interpretation, reads back equal to the reference pixels it was encoded from
(lossless exactly, lossy within tolerance). The reference comes from the package's PNG, converted the way its
generator converts it (Pillow), not from any decoder of ours.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
Image = pytest.importorskip("PIL.Image")

from cucim_like import CuImage  # noqa: E402

_spec = importlib.util.find_spec("wsidicom_data")
DATA = Path(next(iter(_spec.submodule_search_locations))) / "data" if _spec else None
pytestmark = pytest.mark.skipif(DATA is None or not (DATA / "encoded").is_dir(),
                                reason="wsidicom-data is not installed")

_PHOTOMETRIC = {  # (transfer syntax name prefix, channels) -> PhotometricInterpretation, as the generator set it
    ("JPEG_Baseline", "YBR"): "YBR_FULL_422",
    ("JPEG_2000_Image_Compression_(Lossless_Only)", "YBR"): "YBR_RCT",
    ("JPEG_2000_Image_Compression", "YBR"): "YBR_ICT",
    ("JPEG_Lossless", "YBR"): "YBR_FULL",
}
_LOSSY = ("JPEG_Baseline", "JPEG_Extended", "JPEG-LS_Lossy", "JPEG_2000_Image_Compression-")


def _transfer_syntaxes() -> dict[str, str]:
    from pydicom._uid_dict import UID_dictionary

    return {entry[0].replace(" ", "_"): uid for uid, entry in UID_dictionary.items()
            if entry[1] == "Transfer Syntax"}


def _reference(bits: int, channels: str) -> np.ndarray:
    rgb = Image.open(DATA / "test_tile.png").convert("RGB")
    if channels != "GRAYSCALE":
        return np.asarray(rgb)
    if bits == 8:
        return np.asarray(rgb.convert("L"))
    scaled = rgb.convert("I").point(lambda x: x * 2 ** (bits - 8))
    return np.asarray(scaled, dtype=np.int64).astype(np.uint16)


def _files() -> list[Path]:
    return sorted((DATA / "encoded").iterdir()) if DATA is not None and (DATA / "encoded").is_dir() else []


def _wrap(encoded: Path, out: Path) -> tuple[np.ndarray, bool]:
    """Write ``encoded`` as a one-frame DICOM file; returns (reference pixels, lossy)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ts_name, channels, bits_text = encoded.stem.rsplit("-", 2)
    bits = int(bits_text)
    ts = _transfer_syntaxes()[ts_name]
    ref = _reference(bits, channels)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ts
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(out), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = ref.shape[:2]
    ds.SamplesPerPixel = 1 if channels == "GRAYSCALE" else 3
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = next(
        (v for (prefix, ch), v in _PHOTOMETRIC.items() if ts_name.startswith(prefix) and ch == channels),
        "MONOCHROME2" if channels == "GRAYSCALE" else "RGB")
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    data = encoded.read_bytes()
    if encoded.suffix == ".raw":
        ds.PixelData = data
        ds["PixelData"].VR = "OB" if bits == 8 else "OW"
        little = ts != ExplicitVRBigEndian
        if little:
            ds.save_as(out, implicit_vr=ts == ImplicitVRLittleEndian, enforce_file_format=True)
        else:  # pydicom writes big endian only when forced; the .raw bytes are already big-endian
            pydicom.dcmwrite(out, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    else:
        ds.NumberOfFrames = 1
        ds.PixelData = encapsulate([data])
        ds["PixelData"].VR = "OB"
        ds.save_as(out, enforce_file_format=True)
    lossy = any(ts_name.startswith(p) or encoded.stem.startswith(p) for p in _LOSSY)
    return ref, lossy


@pytest.mark.parametrize("encoded", _files(), ids=lambda p: p.stem)
def test_frame_decodes_to_reference(encoded: Path, tmp_path: Path):
    path = tmp_path / "frame.dcm"
    ref, lossy = _wrap(encoded, path)
    with CuImage(path) as img:
        got = img.read_region()[0]
    got = got.reshape(ref.shape)
    assert got.dtype == (np.uint8 if ref.dtype == np.uint8 else np.uint16)
    diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
    ybr_lossless = "YBR" in encoded.stem and not lossy
    if lossy:
        scale = 2 ** (int(encoded.stem.rsplit("-", 1)[1]) - 8)
        assert diff.mean() < 3 * scale, f"mean abs difference {diff.mean():.2f}"
        assert diff.max() < 64 * scale
    elif ybr_lossless:
        # lossless in YCbCr: back to RGB rounds by at most a couple of levels
        assert diff.max() <= 3
    else:
        np.testing.assert_array_equal(got, ref)
