"""One DICOM instance from its header: geometry, sample type, codec, and where its pixel data lies.

Opening parses the header with pydicom up to the Pixel Data element and reads that element's own header (a
few bytes); the frame index (offset and length of every frame) is built on first use and kept.
"""

from __future__ import annotations

import io
import struct
import threading
from typing import Any

import numpy as np

from ...errors import CorruptFileError, CucimLikeError, UnsupportedFormatError
from ...fileio import file_identity
from ..base import CodecSpec, ImageSource

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"

# transfer syntax -> (codec, byte order of native samples)
_NATIVE = {IMPLICIT_VR_LE: "<", "1.2.840.10008.1.2.1": "<", "1.2.840.10008.1.2.2": ">", DEFLATED: "<"}
_ENCAPSULATED = {
    "1.2.840.10008.1.2.4.50": "jpeg",  # baseline
    "1.2.840.10008.1.2.4.51": "jpeg",  # extended (12-bit)
    "1.2.840.10008.1.2.4.57": "ljpeg",  # lossless process 14
    "1.2.840.10008.1.2.4.70": "ljpeg",  # lossless process 14, selection value 1
    "1.2.840.10008.1.2.4.80": "jpegls",
    "1.2.840.10008.1.2.4.81": "jpegls",  # near-lossless
    "1.2.840.10008.1.2.4.90": "jpeg2000",  # lossless only
    "1.2.840.10008.1.2.4.91": "jpeg2000",
    "1.2.840.10008.1.2.4.92": "jpeg2000",  # part 2 multi-component
    "1.2.840.10008.1.2.4.93": "jpeg2000",
    "1.2.840.10008.1.2.4.201": "jpeg2000",  # HTJ2K lossless (OpenJPEG decodes HTJ2K)
    "1.2.840.10008.1.2.4.202": "jpeg2000",  # HTJ2K RPCL lossless
    "1.2.840.10008.1.2.4.203": "jpeg2000",  # HTJ2K
    "1.2.840.10008.1.2.5": "dicomrle",
}
# a frame must start with one of these (used to find frame boundaries when several fragments make a frame)
_FRAME_STARTS = {
    "jpeg": (b"\xff\xd8",),
    "ljpeg": (b"\xff\xd8",),
    "jpegls": (b"\xff\xd8",),
    "jpeg2000": (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  "),
}
_MAX_FRAMES = 1 << 24
_MAX_INFLATED = 1 << 31  # a Deflated dataset may not inflate past 2 GiB


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - core dependency
        raise UnsupportedFormatError("reading DICOM needs pydicom (pip install pydicom)") from exc
    return pydicom


def _inflated(path: str, fh, head_end: int) -> bytes:
    """The file with its deflated dataset (from ``head_end``) inflated, preamble and file meta kept; bounded."""
    import zlib

    fh.seek(0)
    parts = [fh.read(head_end)]
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    while chunk := fh.read(1 << 20):
        out = inflater.decompress(chunk, _MAX_INFLATED + 1 - total)
        total += len(out)
        parts.append(out)
        if total > _MAX_INFLATED or inflater.unconsumed_tail:
            raise CorruptFileError(f"deflated dataset inflates past {_MAX_INFLATED >> 20} MiB", path=path)
    parts.append(inflater.flush())
    if not inflater.eof:
        raise CorruptFileError("deflated dataset is truncated or damaged (the deflate stream does not end)",
                               path=path)
    return b"".join(parts)


def _dataset_encoding(transfer_syntax: str) -> tuple[bool, bool] | None:
    """(implicit VR, little endian) of the dataset for a transfer syntax this reader supports; None for others
    (and for none), which pydicom's own reading handles."""
    if transfer_syntax not in _NATIVE and transfer_syntax not in _ENCAPSULATED:
        return None
    # encapsulated syntaxes are explicit VR little endian
    return transfer_syntax == IMPLICIT_VR_LE, _NATIVE.get(transfer_syntax, "<") == "<"


def read_dataset(path: str):
    """(dataset without pixel data, position of the Pixel Data element (-1 when there is none), the first 12
    bytes there, the inflated bytes of a Deflated file or None).

    The file is opened once and read up to the Pixel Data element. Deflated files are inflated into memory
    (bounded); the position then refers to those bytes. Typed errors only.
    """
    pydicom = _pydicom()
    fr = pydicom.filereader
    inflated = None
    try:
        with open(path, "rb") as fh:
            fr.read_preamble(fh, False)
            meta = fr._read_file_meta_info(fh)  # the transfer syntax, before pydicom inflates anything
            if str(getattr(meta, "TransferSyntaxUID", "")) == DEFLATED:
                head_end = fh.tell()
                inflated = _inflated(path, fh, head_end)
                src = io.BytesIO(inflated)
                src.seek(head_end)
                ds = fr.read_dataset(src, is_implicit_VR=False, is_little_endian=True, stop_when=fr._at_pixel_data)
                ds.file_meta = meta
            elif (encoding := _dataset_encoding(str(getattr(meta, "TransferSyntaxUID", "")))) is not None:
                # carry on after the file meta rather than have dcmread parse it again
                ds = fr.read_dataset(fh, is_implicit_VR=encoding[0], is_little_endian=encoding[1],
                                     stop_when=fr._at_pixel_data, defer_size="1 MB")
                # a FileDataset knows its file, so elements over 1 MB (left on disk) are read on access
                ds = pydicom.dataset.FileDataset(path, ds, file_meta=meta, is_implicit_VR=encoding[0],
                                                 is_little_endian=encoding[1])
                src = fh
            else:  # no transfer syntax in the file meta: pydicom guesses the encoding from the first element
                fh.seek(0)
                ds = pydicom.dcmread(fh, stop_before_pixels=True, defer_size="1 MB")
                src = fh
            pos = src.tell()
            head = src.read(12)
    except CucimLikeError:
        raise
    except PermissionError as exc:
        from ...errors import FileAccessError

        raise FileAccessError(f"permission denied: {exc.strerror}", path=path) from exc
    except Exception as exc:  # pydicom raises many kinds (InvalidDicomError, struct.error, EOFError, ...)
        raise CorruptFileError(f"DICOM header cannot be parsed: {exc}", path=path) from exc
    return ds, (pos if head else -1), head, inflated


def _explicit_vr(tag: int) -> bytes:
    from pydicom.datadict import dictionary_VR

    return dictionary_VR(tag).encode("ascii")


def _int(ds, keyword: str, default: int | None = None, *, path: str) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is None:
            raise CorruptFileError(f"DICOM attribute {keyword} is missing", path=path)
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(f"DICOM attribute {keyword} is not an integer: {value!r}", path=path) from exc


class DicomInstance:
    """One DICOM file: header dataset, frame geometry (rows, columns, samples), dtype, codec, frame index."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.identity = file_identity(path)  # before the header is read: what the frame index is kept under
        self.file_size = self.identity[2]
        try:
            self._parse()
        except CucimLikeError:
            raise
        except Exception as exc:  # pydicom converts values lazily: a damaged value raises on first access
            raise CorruptFileError(f"DICOM header is damaged: {type(exc).__name__}: {exc}", path=path) from exc
        self._frame_table: tuple[np.ndarray, np.ndarray] | None = None
        self._lock = threading.Lock()

    def _parse(self) -> None:
        path = self.path
        ds, pixel_pos, pixel_head, self.inflated = read_dataset(path)
        self.ds = ds
        self.transfer_syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or IMPLICIT_VR_LE)
        if self.inflated is not None:
            self.file_size = len(self.inflated)
        self.sop_class = str(ds.get("SOPClassUID", ""))
        self.series_uid = str(ds.get("SeriesInstanceUID", ""))
        self.rows = _int(ds, "Rows", path=path)
        self.columns = _int(ds, "Columns", path=path)
        self.samples = _int(ds, "SamplesPerPixel", 1, path=path)
        self.frames = _int(ds, "NumberOfFrames", 1, path=path)
        bits = _int(ds, "BitsAllocated", path=path)
        signed = _int(ds, "PixelRepresentation", 0, path=path) == 1
        self.photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
        if self.rows <= 0 or self.columns <= 0 or self.samples not in (1, 3, 4) or not 0 < self.frames <= _MAX_FRAMES:
            raise CorruptFileError(f"DICOM frame geometry is invalid: {self.rows} rows x {self.columns} columns x "
                                   f"{self.samples} samples, {self.frames} frames", path=path)
        if bits not in (1, 8, 16, 32):
            raise UnsupportedFormatError(f"DICOM BitsAllocated {bits} is not supported (1, 8, 16 or 32)",
                                         path=path)
        self.bits_allocated = bits
        if bits == 1:
            self._check_bit_frames()
        self.dtype = np.dtype("u1") if bits == 1 else np.dtype(f"{'i' if signed else 'u'}{bits // 8}")
        self.codec = self._codec_spec(ds)
        self.frame_nbytes = self._frame_nbytes()
        self._pixel_element(pixel_pos, pixel_head)

    def _frame_nbytes(self) -> int:
        """Bytes of one native frame: 1-bit frames are packed 8 pixels a byte, YBR_FULL_422 stores 2 values a
        pixel, every other layout rows x columns x samples values."""
        pixels = self.rows * self.columns
        if self.codec.name == "dicom-bits":
            return -(-pixels // 8)
        values = 2 if self.codec.name == "dicom-ybr422" else self.samples
        return pixels * values * self.dtype.itemsize

    def _check_bit_frames(self) -> None:
        """1-bit frames (BitsAllocated 1, e.g. segmentations): native little-endian, one sample, and in a
        multi-frame file each frame a whole number of bytes (frames of rows x columns divisible by 8)."""
        if _NATIVE.get(self.transfer_syntax) != "<":
            raise UnsupportedFormatError(f"1-bit frames in transfer syntax {self.transfer_syntax} are not supported "
                                         "(native little endian only)", path=self.path)
        if self.samples != 1:
            raise CorruptFileError(f"1-bit frames with {self.samples} samples per pixel", path=self.path)
        if self.frames > 1 and (self.rows * self.columns) % 8:
            raise UnsupportedFormatError(f"1-bit frames of {self.rows}x{self.columns} pixels do not start on byte "
                                         "boundaries; only frames of a multiple of 8 pixels are supported",
                                         path=self.path)

    # -- codec ---------------------------------------------------------------------------------------------
    def _codec_spec(self, ds) -> CodecSpec:
        ts = self.transfer_syntax
        planar = self.samples > 1 and int(ds.get("PlanarConfiguration", 0) or 0) == 1
        ybr = self.photometric in ("YBR_FULL",)
        if self.bits_allocated == 1:
            return CodecSpec("dicom-bits")
        if ts in _NATIVE:
            if self.photometric == "YBR_FULL_422":
                # two pixels stored as Y1 Y2 Cb Cr (PS3.3 C.7.6.3.1.2): 2 values a pixel, columns even
                if self.samples != 3 or planar or self.columns % 2:
                    raise CorruptFileError(f"native YBR_FULL_422 needs 3 samples, PlanarConfiguration 0 and an even "
                                           f"number of columns, not {self.samples}, {int(planar)}, {self.columns}",
                                           path=self.path)
                return CodecSpec("dicom-ybr422", byteorder=_NATIVE[ts], colorspace="YCbCr")
            if self.photometric in ("YBR_PARTIAL_422", "YBR_PARTIAL_420"):
                raise UnsupportedFormatError(f"native {self.photometric} (subsampled) frames are not supported",
                                             path=self.path)
            return CodecSpec("dicom-native", byteorder=_NATIVE[ts], planar=planar,
                             colorspace="YCbCr" if ybr else None)
        name = _ENCAPSULATED.get(ts)
        if name is None:
            raise UnsupportedFormatError(f"DICOM transfer syntax {ts} is not supported", path=self.path)
        colorspace = None
        if name == "jpeg" and self.photometric == "RGB":
            colorspace = "RGB"  # samples stored without the YCbCr transform
        elif name != "jpeg" and ybr:
            colorspace = "YCbCr"  # stored as YCbCr; the decoder converts
        return CodecSpec(name, colorspace=colorspace, framing="dicom-items")

    @property
    def encapsulated(self) -> bool:
        return self.codec.framing == "dicom-items"

    # -- pixel data element --------------------------------------------------------------------------------
    def _pixel_element(self, pos: int, head: bytes) -> None:
        """Locate the Pixel Data value from its element header ``head`` at ``pos``: ``pixel_offset`` and
        (native) ``pixel_length``."""
        if pos < 0:
            raise UnsupportedFormatError("DICOM file has no pixel data", path=self.path)
        little = self.transfer_syntax != "1.2.840.10008.1.2.2"
        implicit = self.transfer_syntax == IMPLICIT_VR_LE
        e = "<" if little else ">"
        if len(head) < 8:
            raise CorruptFileError("DICOM file ends inside the Pixel Data element header", path=self.path)
        group, elem = struct.unpack_from(e + "HH", head)
        if (group, elem) in ((0x7FE0, 0x0008), (0x7FE0, 0x0009)):
            raise UnsupportedFormatError("DICOM float pixel data is not supported", path=self.path)
        if (group, elem) != (0x7FE0, 0x0010):
            raise CorruptFileError(f"expected the Pixel Data element, found ({group:04X},{elem:04X})", path=self.path)
        if implicit:
            (length,) = struct.unpack_from(e + "I", head, 4)
            header = 8
        else:
            if len(head) < 12:
                raise CorruptFileError("DICOM file ends inside the Pixel Data element header", path=self.path)
            vr = head[4:6]
            if vr in (b"OB", b"OW", b"UN", b"OV", b"OF", b"OD", b"OL", b"UT", b"SQ"):
                (length,) = struct.unpack_from(e + "I", head, 8)
                header = 12
            else:
                (length,) = struct.unpack_from(e + "H", head, 6)
                header = 8
        self.pixel_offset = pos + header
        if length == 0xFFFFFFFF:
            if not self.encapsulated:
                raise CorruptFileError(f"native transfer syntax {self.transfer_syntax} with encapsulated "
                                       "(undefined length) pixel data", path=self.path)
            self.pixel_length = None
            return
        if self.encapsulated:
            raise CorruptFileError("compressed transfer syntax with native (defined length) pixel data",
                                   path=self.path)
        need = self.frames * self.frame_nbytes
        if length < need:
            raise CorruptFileError(f"Pixel Data holds {length} bytes, {self.frames} frames of "
                                   f"{self.rows}x{self.columns}x{self.samples} {self.dtype} need {need}",
                                   path=self.path)
        if self.pixel_offset + need > self.file_size:
            raise CorruptFileError(f"pixel data is truncated: the file ends {self.pixel_offset + need - self.file_size}"
                                   " bytes before the last frame", path=self.path)
        self.pixel_length = length

    # -- frames --------------------------------------------------------------------------------------------
    def frame_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, lengths) of every frame, int64 (frames,): built once (header, offset tables or a scan;
        an encapsulated file indexed before in this process, unchanged, is not scanned again)."""
        table = self._frame_table
        if table is None:
            with self._lock:
                if self._frame_table is None:
                    from .frames import frame_index

                    self._frame_table = frame_index(self)
                table = self._frame_table
        return table

    def frame_starts(self) -> tuple[bytes, ...]:
        """Byte prefixes that begin a frame of this codec (empty when the codec has none)."""
        return _FRAME_STARTS.get(self.codec.name, ())

    def reader(self):
        """A reader of this instance's bytes: the file, or its inflated copy in memory (Deflated)."""
        from ...fileio import FileReader, MemoryReader

        return FileReader(self.path) if self.inflated is None else MemoryReader(self.path, self.inflated)

    def get(self, keyword: str, default: Any = None) -> Any:
        return self.ds.get(keyword, default)

    def scan_values(self, sequence: str, tag: int) -> list[bytes] | None:
        """The values of every element ``tag`` (of a VR with a 2-byte length in explicit VR, such as DS) inside
        the sequence ``sequence``, found by scanning the sequence's encoded bytes instead of parsing its items
        (which takes seconds for the per-frame groups of a large slide).

        None when the sequence is absent, already parsed or not available as bytes, or holds a value that
        ends past its bytes. Bytes inside other values could look like ``tag``: callers check what they get
        (counts, values) and verify against the parsed items later.
        """
        from pydicom.datadict import tag_for_keyword
        from pydicom.dataelem import RawDataElement
        from pydicom.filereader import read_deferred_data_element

        seq_tag = tag_for_keyword(sequence)
        raw = self.ds.get_item(seq_tag, keep_deferred=True) if seq_tag is not None else None
        if not isinstance(raw, RawDataElement):
            return None
        if raw.value is None and raw.length:  # left on disk by the header parse: read its bytes, once
            try:
                raw = read_deferred_data_element(self.ds.fileobj_type, self.ds.filename, self.ds.timestamp, raw)
            except (OSError, ValueError, EOFError):
                return None
            self.ds[seq_tag] = raw  # parsed from these bytes when its items are needed
        data = raw.value
        if not isinstance(data, bytes):
            return None
        implicit, little = self.ds.original_encoding
        group, element = tag >> 16, tag & 0xFFFF
        order = "<" if little else ">"
        marker = struct.pack(f"{order}HH", group, element)
        if implicit:  # tag, 4-byte length
            length_at, length_format = 4, f"{order}I"
        else:  # tag, VR, 2-byte length
            marker += _explicit_vr(tag)
            length_at, length_format = 6, f"{order}H"
        values = []
        pos = data.find(marker)
        while pos >= 0:
            if pos + 8 > len(data):
                return None
            (length,) = struct.unpack_from(length_format, data, pos + length_at)
            end = pos + 8 + length
            if end > len(data):
                return None
            values.append(data[pos + 8 : end])
            pos = data.find(marker, end)
        return values


def check_uniform(instances: list[DicomInstance], what: str, path: str) -> None:
    """Refuse instances of one image that differ in frame size, samples, dtype or transfer syntax."""
    ref = instances[0]
    for inst in instances[1:]:
        if (inst.rows, inst.columns, inst.samples, inst.dtype, inst.codec) != (
                ref.rows, ref.columns, ref.samples, ref.dtype, ref.codec):
            raise UnsupportedFormatError(
                f"{what} differ in frame size, samples, dtype or transfer syntax ({ref.path}: {ref.rows}x"
                f"{ref.columns}x{ref.samples} {ref.dtype} {ref.transfer_syntax}; {inst.path}: {inst.rows}x"
                f"{inst.columns}x{inst.samples} {inst.dtype} {inst.transfer_syntax})", path=path)


class DicomSource(ImageSource):
    """Base of the DICOM sources: the instances read, one file each."""

    format_name = "dicom"

    def __init__(self, path: str, instances: list[DicomInstance]) -> None:
        super().__init__(path)
        self.instances = instances
        self.files = [inst.path for inst in instances]

    def readers(self) -> list:
        """Readers of the instances' bytes (Deflated instances are served from memory)."""
        return [inst.reader() for inst in self.instances]
