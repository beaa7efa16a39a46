"""Builders of small TIFF fixtures written at test time with tifffile, and independent references for them.

Everything here is independent of cucim_like: images are synthesised with NumPy, files are written with
tifffile (tiles either encoded by tifffile or pre-compressed with imagecodecs), and expected pixels come from
tifffile's own decode of the same page. Tests compare ``CuImage.read_region`` against these references.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

# Default geometry: not a multiple of either tile shape, so right and bottom edge tiles are partial.
HEIGHT, WIDTH = 300, 420

# tifffile compression argument -> imagecodecs flag whose encoder it needs
_ENCODER_FLAGS = {
    "lzw": "LZW",
    "zlib": "ZLIB",
    "adobe_deflate": "ZLIB",
    "deflate": "ZLIB",
    8: "ZLIB",
    32946: "ZLIB",
    "zstd": "ZSTD",
    "packbits": "PACKBITS",
    "lzma": "LZMA",
    "jpeg": "JPEG8",
    "jpeg2000": "JPEG2K",
    "webp": "WEBP",
}


# -- availability --------------------------------------------------------------------------------------------
def codec_available(flag: str) -> bool:
    """True when this imagecodecs build has codec ``flag`` (e.g. "JPEG8"), both encoder and decoder."""
    obj = getattr(imagecodecs, flag, None)
    return obj is not None and bool(getattr(obj, "available", False))


def require_encoder(compression: object) -> None:
    """Skip the calling test, naming the reason, when imagecodecs cannot encode ``compression``."""
    if compression in (None, "none", 1):
        return
    flag = _ENCODER_FLAGS.get(compression)
    if flag is None:
        raise ValueError(f"unknown compression {compression!r}")
    if not codec_available(flag):
        pytest.skip(f"imagecodecs {imagecodecs.__version__} was built without {flag} (needed for {compression})")


# -- synthetic pixels ----------------------------------------------------------------------------------------
def make_image(height: int, width: int, samples: int, dtype: object, seed: int = 0) -> np.ndarray:
    """A (height, width, samples) image: smooth gradients per channel plus noise, spanning most of the range.

    Smooth content keeps lossy codecs close to the source; the noise makes every tile differ from its
    neighbours so a misplaced tile cannot go unnoticed.
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    y, x = np.mgrid[:height, :width].astype(np.float64)
    base = np.empty((height, width, samples))
    for c in range(samples):
        phase = 0.7 * c + 0.3
        base[..., c] = 0.5 + 0.35 * np.sin(x / (23.0 + 7 * c) + phase) * np.cos(y / (31.0 - 5 * c) - phase)
    base += rng.uniform(-0.04, 0.04, base.shape)
    base = np.clip(base, 0.0, 1.0)
    if dtype.kind == "f":
        return (base * 100.0 - 20.0).astype(dtype)
    info = np.iinfo(dtype)
    return np.rint(base * info.max).astype(dtype)


# -- references from tifffile --------------------------------------------------------------------------------
def as_yxc(arr: np.ndarray, samples: int, planar_separate: bool = False) -> np.ndarray:
    """tifffile's decode of a 2-D page or level as (y, x, c): drops leading length-1 axes (a series' Z), adds
    the sample axis of gray images or moves it last for planar-separate ones."""
    arr = np.asarray(arr)
    ndim = 2 if samples == 1 else 3
    while arr.ndim > ndim and arr.shape[0] == 1:
        arr = arr[0]
    assert arr.ndim == ndim, f"not a 2-D image of {samples} samples: {arr.shape}"
    if samples == 1:
        return arr[..., np.newaxis]
    return np.moveaxis(arr, 0, -1) if planar_separate else arr


def tifffile_page(path: str | Path, index: int) -> np.ndarray:
    """tifffile's decode of top-level page ``index`` as (y, x, c)."""
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[index]
        arr = page.asarray()
        return as_yxc(arr, int(page.samplesperpixel), int(page.planarconfig) == 2)


def tifffile_levels(path: str | Path) -> list[np.ndarray]:
    """tifffile's decode of every level of the first series' pyramid, each as (y, x, c)."""
    with tifffile.TiffFile(path) as tf:
        out = []
        for level in tf.series[0].levels:
            page = level.keyframe
            arr = level.asarray()
            out.append(as_yxc(arr, int(page.samplesperpixel), int(page.planarconfig) == 2))
        return out


def expected_region(ref: np.ndarray, x: int, y: int, w: int, h: int, fill: float) -> np.ndarray:
    """``ref[y:y+h, x:x+w]`` with the parts outside ``ref`` set to ``fill`` (ref is (y, x, c))."""
    out = np.full((h, w, ref.shape[2]), fill, dtype=ref.dtype)
    y0, y1 = max(y, 0), min(y + h, ref.shape[0])
    x0, x1 = max(x, 0), min(x + w, ref.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = ref[y0:y1, x0:x1]
    return out


def regions(width: int, height: int, tile_w: int, tile_h: int, seed: int, n_random: int = 10) -> list[tuple]:
    """(x, y, w, h) regions: fixed edge cases (partial edge tiles, corners, out of bounds) plus random ones."""
    fixed = [
        (0, 0, width, height),  # the whole level
        (0, 0, 1, 1),
        (width - 1, height - 1, 1, 1),  # last pixel: inside the partial corner tile
        (tile_w - 3, tile_h - 2, 7, 5),  # across four tiles
        ((width // tile_w) * tile_w - 2, 5, width, 9),  # the partial right column and beyond
        (3, (height // tile_h) * tile_h - 4, 11, height),  # the partial bottom row and beyond
        (-10, -7, 30, 20),  # partly before the origin
        (width - 15, height - 12, 40, 30),  # partly past the far corner
        (-5, -5, width + 10, height + 10),  # larger than the level on every side
        (-50, 10, 20, 20),  # fully outside, left
        (width + 3, height + 3, 16, 8),  # fully outside, past the corner
        (10, -40, 25, 12),  # fully outside, above
    ]
    rng = np.random.default_rng(seed)
    out = list(fixed)
    for _ in range(n_random):
        w = int(rng.integers(1, min(width, 2 * tile_w + 40)))
        h = int(rng.integers(1, min(height, 2 * tile_h + 40)))
        x = int(rng.integers(-w // 2, width - w // 2))
        y = int(rng.integers(-h // 2, height - h // 2))
        out.append((x, y, w, h))
    return out


def assert_close(got: np.ndarray, want: np.ndarray, tol: float, what: str) -> None:
    """Exact equality when ``tol`` is 0, else maximum absolute difference at most ``tol``."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    if tol == 0:
        if not np.array_equal(got, want, equal_nan=want.dtype.kind == "f"):
            diff = np.argwhere(got != want)
            raise AssertionError(f"{what}: {len(diff)} values differ, first at {tuple(diff[0])}: "
                                 f"{got[tuple(diff[0])]} != {want[tuple(diff[0])]}")
        return
    d = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert d.max() <= tol, f"{what}: max abs difference {d.max()} > {tol} at {np.unravel_index(d.argmax(), d.shape)}"


# -- tile streams --------------------------------------------------------------------------------------------
def iter_tiles(arr: np.ndarray, tile_h: int, tile_w: int) -> Iterator[np.ndarray]:
    """Tiles of a (y, x, c) array in TIFF order (row-major), edge tiles padded by repeating the last pixels."""
    h, w = arr.shape[:2]
    for ty in range(0, h, tile_h):
        for tx in range(0, w, tile_w):
            block = arr[ty : ty + tile_h, tx : tx + tile_w]
            pad = ((0, tile_h - block.shape[0]), (0, tile_w - block.shape[1])) + ((0, 0),) * (arr.ndim - 2)
            yield np.ascontiguousarray(np.pad(block, pad, mode="edge"))


def _segments(stream: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, bytes) of each JPEG segment after SOI; the last one is SOS with the entropy data and EOI."""
    if stream[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream")
    i = 2
    while i < len(stream):
        if stream[i] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {i}")
        marker = stream[i + 1]
        if marker == 0xDA:  # start of scan: everything from here on belongs to the tile
            yield marker, stream[i:]
            return
        (length,) = struct.unpack(">H", stream[i + 2 : i + 4])
        yield marker, stream[i : i + 2 + length]
        i += 2 + length
    raise ValueError("JPEG stream has no scan")


def split_jpeg(stream: bytes, drop_app: bool = False) -> tuple[bytes, bytes]:
    """Split a JPEG into (tables, abbreviated): SOI + DQT/DHT + EOI, and SOI + every other segment.

    ``drop_app`` also removes APPn segments (JFIF, Adobe) from the abbreviated stream, as Aperio writes them.
    """
    tables, rest = [], []
    for marker, seg in _segments(stream):
        if marker in (0xDB, 0xC4):
            tables.append(seg)
        elif drop_app and 0xE0 <= marker <= 0xEF:
            continue
        else:
            rest.append(seg)
    return b"\xff\xd8" + b"".join(tables) + b"\xff\xd9", b"\xff\xd8" + b"".join(rest)


def jpeg_tiles_with_tables(arr: np.ndarray, tile_h: int, tile_w: int, drop_app: bool = False,
                           **encode) -> tuple[bytes, list[bytes]]:
    """JPEG-encode every tile with imagecodecs.jpeg8_encode; return (shared tables, abbreviated tile streams).

    All tiles are encoded with the same quality, so libjpeg emits the same tables for each; this is checked.
    """
    tables = None
    tiles = []
    for tile in iter_tiles(arr, tile_h, tile_w):
        data = tile[..., 0] if tile.shape[-1] == 1 else tile
        t, abbreviated = split_jpeg(bytes(imagecodecs.jpeg8_encode(data, **encode)), drop_app=drop_app)
        if tables is None:
            tables = t
        elif t != tables:
            raise AssertionError("libjpeg wrote different tables for two tiles")
        tiles.append(abbreviated)
    assert tables is not None
    return tables, tiles


def write_jpeg_tables_page(tw: tifffile.TiffWriter, arr: np.ndarray, tile: tuple[int, int] | None, *,
                           photometric: str, drop_app: bool = False, encode: dict | None = None,
                           subsampling: tuple[int, int] | None = None, **kwargs) -> None:
    """Write ``arr`` as one page of pre-compressed abbreviated JPEG tiles (or strips when ``tile`` is None,
    each strip ``rowsperstrip`` rows) with a JPEGTables tag (347).

    photometric "rgb" writes PhotometricInterpretation RGB (Aperio); "ycbcr" YCbCr; "minisblack" gray.
    """
    encode = dict(encode or {})
    samples = arr.shape[2]
    if tile is None:
        rows = int(kwargs.pop("rowsperstrip"))
        tables, tiles = jpeg_tiles_with_tables(arr, rows, arr.shape[1], drop_app=drop_app, **encode)
        # strips are as tall as the image's remaining rows: re-encode the short last strip
        last = arr[(arr.shape[0] - 1) // rows * rows :]
        t, tiles[-1] = split_jpeg(bytes(imagecodecs.jpeg8_encode(last[..., 0] if samples == 1 else last,
                                                                  **encode)), drop_app=drop_app)
        assert t == tables
        layout = {"rowsperstrip": rows}
    else:
        tables, tiles = jpeg_tiles_with_tables(arr, *tile, drop_app=drop_app, **encode)
        layout = {"tile": tile}
    extra = dict(kwargs)
    if samples == 3:
        # tifffile writes YCbCrSubSampling (and chooses the photometric tag from outcolorspace) for JPEG RGB
        extra["subsampling"] = subsampling or (2, 2)
        extra["compressionargs"] = {"outcolorspace": "RGB" if photometric == "rgb" else "YCBCR"}
        photometric = "rgb"
    tw.write(
        iter(tiles),
        shape=arr.shape if samples > 1 else arr.shape[:2],
        dtype=np.uint8,
        compression=7,
        photometric=photometric,
        extratags=[(347, 7, len(tables), tables, True)],
        **layout,
        **extra,
    )


# -- colour conversions for Aperio 33003 (written independently of cucim_like) -------------------------------
def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """Full-range BT.601 (JFIF) RGB -> YCbCr of 8-bit samples, rounded."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.clip(np.rint(np.stack([y, cb, cr], axis=-1)), 0, 255).astype(np.uint8)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """Full-range BT.601 (JFIF) YCbCr -> RGB of 8-bit samples, rounded and clipped."""
    y, cb, cr = (ycc[..., i].astype(np.float64) for i in range(3))
    cb -= 128.0
    cr -= 128.0
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)


def write_j2k_tiles(path: str | Path, arr: np.ndarray, tile: tuple[int, int], compression: int, **kwargs) -> None:
    """One page of pre-compressed raw J2K code streams (lossless, no multi-component transform)."""
    tiles = [
        bytes(imagecodecs.jpeg2k_encode(t, level=0, codecformat="J2K", reversible=True, mct=False))
        for t in iter_tiles(arr, *tile)
    ]
    tifffile.imwrite(path, iter(tiles), shape=arr.shape, dtype=arr.dtype, tile=tile, compression=compression,
                     photometric="rgb", metadata=None, **kwargs)


# -- pyramids ------------------------------------------------------------------------------------------------
def pyramid(base: np.ndarray, factors: Sequence[int]) -> list[np.ndarray]:
    """Levels of ``base`` subsampled by each factor (plain decimation: the test only needs distinct levels)."""
    return [np.ascontiguousarray(base[::f, ::f]) for f in factors]


def write_toplevel_pyramid(path: str | Path, levels: Sequence[np.ndarray], tile: tuple[int, int],
                           **kwargs) -> None:
    """Each level as its own top-level IFD, largest first (OpenSlide's generic-tiff layout)."""
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(levels):
            tw.write(level, tile=tile, photometric="rgb", metadata=None,
                     subfiletype=1 if i else 0, **kwargs)


def write_subifd_pyramid(path: str | Path, levels: Sequence[np.ndarray], tile: tuple[int, int], *,
                         ome: bool = False, metadata: dict | None = None, **kwargs) -> None:
    """Level 0 as the first IFD, the others in its SubIFDs (optionally OME-TIFF)."""
    with tifffile.TiffWriter(path, ome=ome) as tw:
        tw.write(levels[0], tile=tile, photometric="rgb", subifds=len(levels) - 1,
                 metadata=metadata if ome else None, **kwargs)
        for level in levels[1:]:
            tw.write(level, tile=tile, photometric="rgb", subfiletype=1, metadata=None, **kwargs)


# -- vendor-like files ---------------------------------------------------------------------------------------
APERIO_HEADER = "Aperio Image Library v12.0.15"


def aperio_description(width: int, height: int, tile: tuple[int, int], mpp: float = 0.25) -> str:
    return (f"{APERIO_HEADER} \r\n{width}x{height} [0,0 {width}x{height}] ({tile[1]}x{tile[0]}) JPEG/RGB Q=90"
            f"|AppMag = 20|StripeWidth = 2040|ScanScope ID = SS1234|Filename = test|Date = 01/02/24"
            f"|Time = 10:11:12|MPP = {mpp}|Left = 25.0|Top = 18.5")


def write_svs(path: str | Path, levels: Sequence[np.ndarray], tile: tuple[int, int], thumbnail: np.ndarray,
              label: np.ndarray, macro: np.ndarray, mpp: float = 0.25) -> None:
    """An SVS-like file laid out as Aperio writes it.

    Page 0: level 0, tiled abbreviated JPEG (RGB samples, no JFIF marker) with JPEGTables; page 1: the
    thumbnail, stripped JPEG; pages 2..: the other levels, tiled; then the label (stripped LZW, NewSubfileType
    1) and the macro (stripped JPEG, NewSubfileType 9) - tifffile's ``_series_svs`` names these by
    NewSubfileType ("Macro" when 9, else "Label"), after the thumbnail and the tiled levels.
    """
    h0, w0 = levels[0].shape[:2]
    rgb_jpeg = {"encode": {"level": 90, "colorspace": "RGB", "outcolorspace": "RGB"}, "drop_app": True,
                "photometric": "rgb"}
    with tifffile.TiffWriter(path) as tw:
        write_jpeg_tables_page(tw, levels[0], tile, description=aperio_description(w0, h0, tile, mpp),
                               metadata=None, **rgb_jpeg)
        th, tw_ = thumbnail.shape[:2]
        write_jpeg_tables_page(tw, thumbnail, None, rowsperstrip=16, metadata=None,
                               description=f"{APERIO_HEADER} \n{w0}x{h0} -> {tw_}x{th} - |AppMag = 20|MPP = {mpp}",
                               **rgb_jpeg)
        for level in levels[1:]:
            h, w = level.shape[:2]
            write_jpeg_tables_page(tw, level, tile, metadata=None, subfiletype=0,
                                   description=f"{APERIO_HEADER} \r\n{w0}x{h0} [0,0 {w0}x{h0}] -> {w}x{h} JPEG/RGB "
                                               f"Q=90", **rgb_jpeg)
        tw.write(label, photometric="rgb", compression="lzw", rowsperstrip=16, subfiletype=1, metadata=None,
                 description=f"{APERIO_HEADER} \nlabel {label.shape[1]}x{label.shape[0]}")
        write_jpeg_tables_page(tw, macro, None, rowsperstrip=16, subfiletype=9, metadata=None,
                               description=f"{APERIO_HEADER} \nmacro {macro.shape[1]}x{macro.shape[0]}", **rgb_jpeg)


def philips_xml(spacings_mm: Sequence[tuple[float, float]]) -> str:
    """A minimal Philips DPUfsImport description with one PixelDataRepresentation per level."""
    reps = "".join(
        f'<DataObject ObjectType="PixelDataRepresentation">'
        f'<Attribute Name="DICOM_PIXEL_SPACING" Group="0x0028" Element="0x0030" PMSVR="IDoubleArray">'
        f'"{sy:.9g}" "{sx:.9g}"</Attribute>'
        f'<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_NUMBER" Group="0x101D" Element="0x1009" '
        f'PMSVR="IUInt32">{i}</Attribute>'
        f"</DataObject>"
        for i, (sy, sx) in enumerate(spacings_mm)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8" ?>\n'
        '<DataObject ObjectType="DPUfsImport">'
        '<Attribute Name="DICOM_MANUFACTURER" Group="0x0008" Element="0x0070" PMSVR="IString">PHILIPS'
        "</Attribute>"
        '<Attribute Name="PIM_DP_SCANNED_IMAGES" Group="0x301D" Element="0x1003" PMSVR="IDataObjectArray">'
        '<Array><DataObject ObjectType="DPScannedImage">'
        '<Attribute Name="PIM_DP_IMAGE_TYPE" Group="0x301D" Element="0x1004" PMSVR="IString">WSI</Attribute>'
        '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" Group="0x1001" Element="0x8B01" '
        f'PMSVR="IDataObjectArray"><Array>{reps}</Array></Attribute>'
        "</DataObject></Array></Attribute>"
        "</DataObject>\n"
    )


def write_philips(path: str | Path, levels: Sequence[np.ndarray], tile: tuple[int, int],
                  spacing_mm: tuple[float, float], label: np.ndarray | None = None,
                  macro: np.ndarray | None = None, pad_value: int = 7) -> None:
    """A Philips-like TIFF: Software "Philips DP ...", the XML description on page 0, deflate tiles.

    ``spacing_mm`` is level 0's (row, column) DICOM_PIXEL_SPACING in millimetres; level i has 2**i times it.
    As Philips does, every level below 0 is stored padded to whole tiles; the padding holds ``pad_value``
    (not the fill), so a reader that shows the padding is caught. tifffile's ``_series_philips`` crops the
    levels to level-0 size // downsample from the per-level spacings, and names stripped pages whose
    description starts with "Label"/"Macro" as such.
    """
    th, tw_ = tile
    xml = philips_xml([(spacing_mm[0] * 2**i, spacing_mm[1] * 2**i) for i in range(len(levels))])
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(levels):
            data = level
            if i:
                h, w = level.shape[:2]
                data = np.full((-(-h // th) * th, -(-w // tw_) * tw_, level.shape[2]), pad_value, level.dtype)
                data[:h, :w] = level
            tw.write(data, tile=tile, photometric="rgb", compression="zlib", software="Philips DP v1.0",
                     description=xml if i == 0 else None, metadata=None)
        for name, image in (("Label", label), ("Macro", macro)):
            if image is not None:
                tw.write(image, photometric="rgb", compression="zlib", rowsperstrip=16, software="Philips DP v1.0",
                         description=f"{name} image", metadata=None)
