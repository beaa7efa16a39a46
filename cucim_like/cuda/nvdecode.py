"""Batch decoding with nvImageCodec: which tiles it takes, how their streams are prepared, and how its
results (``None`` at a failed position) become typed errors.

Stream preparation is plain Python: an abbreviated TIFF JPEG tile becomes ``tables[:-2] + tile[2:]``, DICOM
fragments are joined, and every header is parsed and checked against the tile before nvImageCodec sees it
(nothing sized by an unchecked header reaches the decoder). nvImageCodec takes code streams from host memory.

Colour: nvImageCodec treats every 3-component JPEG as YCbCr, so streams whose samples are stored as RGB (TIFF
Photometric=RGB without a JFIF marker, as Aperio writes them) are decoded with ``ColorSpec.UNCHANGED``.
JPEG 2000 is always decoded unconverted; Aperio 33003 (YCbCr samples) is converted by the placement kernel.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codecs.dicom import join_items
from ..codecs.headers import j2k_size, jpeg_sof
from ..errors import CodecUnavailableError, DecodeError
from ..formats.base import Level

# nvImageCodec backends: "gpu" lets it choose (nvJPEG hardware engine where the GPU has one, else
# hybrid/CUDA; nvJPEG2000); "cpu" is its CPU-only backend (libjpeg-turbo, OpenJPEG), used by CI to check
# everything around the GPU decode without a GPU.
BACKENDS = ("gpu", "hw", "cpu")


@dataclass(frozen=True)
class StreamParams:
    """How one group of streams is decoded: nvImageCodec colour spec name and whether samples keep their
    native depth (16-bit); ``ycbcr``: the decoded samples are YCbCr, to be converted while placing."""

    color_spec: str
    any_depth: bool
    ycbcr: bool = False


@dataclass(frozen=True)
class PreparedStream:
    """A tile's complete code stream and its checked size: (rows, columns, samples) as the header says."""

    data: bytes | memoryview
    rows: int
    columns: int
    samples: int
    params: StreamParams


def gpu_decodable(level: Level) -> bool:
    """Whether nvImageCodec decodes this level's tiles: 2-D JPEG (8-bit) or JPEG 2000 (8/16-bit) tiles with 1
    or 3 samples and no predictor. Other tiles are decoded on the CPU and uploaded."""
    spec = level.codec
    cs = level.decoded_tile_shape[3]
    if level.tile_shape[0] != 1 or cs not in (1, 3) or spec.predictor != 1 or level.chunk_store is not None:
        return False
    if spec.name == "jpeg":
        return level.dtype == np.uint8
    if spec.name == "jpeg2000":
        return level.dtype in (np.uint8, np.uint16)
    return False


def prepare_stream(level: Level, data: bytes | memoryview) -> PreparedStream | None:
    """The stream nvImageCodec gets for one tile, with its header checked against the tile; None when the
    stream is one the GPU path does not take (e.g. a 12-bit or lossless JPEG): decode it on the CPU.

    Raises DecodeError for a damaged header or one that does not match the tile.
    """
    spec = level.codec
    _, ty, tx, cs = level.decoded_tile_shape
    if spec.framing == "dicom-items":
        data = join_items(data)
    if spec.name == "jpeg":
        tables = spec.jpeg_tables
        if tables and tables.endswith(b"\xff\xd9") and bytes(data[:2]) == b"\xff\xd8":
            data = tables[:-2] + bytes(data[2:])
        marker, precision, rows, columns, samples = jpeg_sof(data)  # raises for a damaged stream
        if marker not in _HUFFMAN_SOF or precision != 8:  # lossless, arithmetic-coded or 12-bit: the CPU's
            return None
        rgb_stored = spec.colorspace == "RGB" and b"JFIF" not in bytes(data[:32])
        params = StreamParams("UNCHANGED" if rgb_stored or samples == 1 else "SRGB", False)
    else:
        rows, columns, samples, bits = j2k_size(data)
        if bits > level.dtype.itemsize * 8:
            raise DecodeError(f"JPEG 2000 samples of {bits} bits do not fit {level.dtype}")
        params = StreamParams("UNCHANGED", level.dtype != np.uint8, spec.colorspace == "YCbCr" and samples == 3)
    if columns != tx or not 0 < rows <= ty or samples != cs:
        raise DecodeError(f"{spec.name} stream is {rows}x{columns}x{samples}, the tile is {ty}x{tx}x{cs}")
    return PreparedStream(data, rows, columns, samples, params)


# SOF markers nvJPEG decodes: baseline, extended and progressive Huffman (not lossless, not arithmetic)
_HUFFMAN_SOF = frozenset({0xC0, 0xC1, 0xC2})


def _module() -> Any:
    try:
        from nvidia import nvimgcodec
    except ImportError as exc:
        raise CodecUnavailableError(
            "the CUDA path decodes with nvImageCodec: pip install nvidia-nvimgcodec-cu13 (or -cu12)") from exc
    return nvimgcodec


class _ThreadDecoders(threading.local):
    def __init__(self) -> None:
        self.by_key: dict[tuple, Any] = {}


_decoders = _ThreadDecoders()


def thread_decoder(backend: str, device_id: int = 0) -> Any:
    """This thread's long-lived nvImageCodec decoder for ``backend`` ("gpu", "hw" or "cpu")."""
    if backend not in BACKENDS:
        raise CodecUnavailableError(f"unknown nvImageCodec backend {backend!r}; choose one of {BACKENDS}")
    key = (backend, device_id)
    dec = _decoders.by_key.get(key)
    if dec is None:
        nv = _module()
        if backend == "cpu":
            dec = nv.Decoder(device_id=nv.NVIMGCODEC_DEVICE_CPU_ONLY, backends=[nv.Backend(nv.BackendKind.CPU_ONLY)])
        elif backend == "hw":
            dec = nv.Decoder(device_id=device_id, backends=[nv.Backend(nv.BackendKind.HW_GPU_ONLY)])
        else:  # libjpeg-turbo's fancy chroma upsampling, so GPU pixels stay close to the CPU decoders'
            dec = nv.Decoder(device_id=device_id, options=":fancy_upsampling=1")
        _decoders.by_key[key] = dec
    return dec


def _decode_params(nv: Any, params: StreamParams) -> Any:
    return nv.DecodeParams(color_spec=getattr(nv.ColorSpec, params.color_spec), allow_any_depth=params.any_depth,
                           apply_exif_orientation=False)


def decode_batch(streams: Sequence[PreparedStream], regions: Sequence[tuple[int, int, int, int] | None] | None,
                 *, backend: str, device_id: int = 0, cuda_stream: int = 0) -> list[Any]:
    """Decode streams (all with the same ``params``) in one nvImageCodec call; ``regions`` optionally give
    (y0, x0, y1, x1) per stream to decode only that part. Returns nvImageCodec images, ``None`` where a
    stream could not be decoded or decoded to another size than its header declared."""
    if not streams:
        return []
    nv = _module()
    dec = thread_decoder(backend, device_id)
    code_streams = []
    for i, s in enumerate(streams):
        # memoryviews of the read buffer (pinned on the GPU path) are handed over without a copy
        cs = nv.CodeStream(np.frombuffer(s.data, np.uint8) if isinstance(s.data, memoryview) else s.data)
        region = regions[i] if regions is not None else None
        if region is not None:
            cs = cs.get_sub_code_stream(region=nv.Region(*region))
        code_streams.append(cs)
    try:
        images = dec.decode(code_streams, params=_decode_params(nv, streams[0].params), cuda_stream=cuda_stream)
    except Exception as exc:  # argument errors abort the whole call
        raise DecodeError(f"nvImageCodec refused the batch: {exc}") from exc
    out: list[Any] = []
    for i, (img, s) in enumerate(zip(images, streams, strict=True)):
        region = regions[i] if regions is not None else None
        rows, cols = (region[2] - region[0], region[3] - region[1]) if region is not None else (s.rows, s.columns)
        if img is not None and tuple(img.shape) != (rows, cols, s.samples):
            img = None
        out.append(img)
    return out
