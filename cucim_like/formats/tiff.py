"""The tiled TIFF family, parsed with tifffile: generic, pyramids (IFDs, SubIFDs), Aperio SVS, Philips,
OME-TIFF, BigTIFF, striped images (strips are tiles). Describes tiles only; never decodes pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..codecs import available_codecs
from ..errors import CorruptFileError, UnsupportedFormatError
from . import tiff_metadata as tm
from . import tiff_volume
from .base import AssociatedImage, CodecSpec, ImageSource, Level

# TIFF Compression tag -> codec registry name
_COMPRESSION = {
    1: "none",
    5: "lzw",
    7: "jpeg",
    8: "deflate",
    32946: "deflate",
    32773: "packbits",
    33003: "jpeg2000",
    33004: "jpeg2000",
    33005: "jpeg2000",
    34712: "jpeg2000",
    34925: "lzma",
    50000: "zstd",
    50001: "webp",
}
_ASSOCIATED_NAMES = {"label", "macro", "thumbnail"}
# A header may not declare more tiles than this per level (each tile needs an offset in the file anyway).
_MAX_TILES = 1 << 31
# Nor tiles (or strips) that decode to more bytes than this: every read allocates at least one decoded tile,
# so a damaged TileWidth/RowsPerStrip must not size that buffer (4096 x 4096 x 4 float32 samples fit).
_MAX_TILE_BYTES = 1 << 28
# Uncompressed strips larger than this are read as virtual strips of at most this size.
_SPLIT_BYTES = 4 << 20


def codec_for(page, byteorder: str) -> CodecSpec:
    compression = int(page.compression)
    photometric = int(page.photometric)
    name = _COMPRESSION.get(compression, f"tiff-compression-{compression}")
    colorspace = None
    tables = None
    if name == "jpeg":
        tables = page.jpegtables or None
        colorspace = "RGB" if photometric == 2 else ("YCbCr" if photometric == 6 else None)
    elif name == "jpeg2000":
        colorspace = "YCbCr" if compression == 33003 else None
    elif photometric == 6:
        # YCbCr samples outside JPEG (subsampled, interleaved): no decoder; fails clearly at read time
        name = f"tiff-ycbcr-{name}"
    return CodecSpec(
        name=name,
        jpeg_tables=bytes(tables) if tables is not None else None,
        colorspace=colorspace,
        predictor=int(page.predictor),
        byteorder=byteorder,
    )


def _positions(values) -> np.ndarray:
    """Tile offsets or byte counts as int64. BigTIFF stores them as unsigned 64-bit: values of 2**62 and more
    (no file is that large) become -1, which every read refuses for that tile, so no sum of two overflows."""
    raw = np.asarray(values, dtype=np.uint64).reshape(-1)
    out = raw.astype(np.int64)
    out[raw >= np.uint64(1 << 62)] = -1
    return out


def _virtual_rows(rows: int, row_bytes: int) -> int:
    """Rows of a virtual strip: the largest divisor of ``rows`` whose strip stays within _SPLIT_BYTES."""
    limit = max(1, _SPLIT_BYTES // row_bytes)
    vrows = 1
    for i in range(1, math.isqrt(rows) + 1):
        if rows % i == 0:
            vrows = max(vrows, *(d for d in (i, rows // i) if d <= limit))
    return vrows


def _split_raw_strips(tile, stored_grid, offsets, counts, stored_h, row_bytes):
    """Uncompressed strips cut into smaller virtual strips (their rows are plain bytes), so a big single-strip
    image reads in parallel with a bounded scratch. Virtual strips never cross a stored strip; a stored strip
    shorter than its rows (truncated) gives virtual strips of the bytes it has (-1 when none: refused on read)."""
    rows = tile[1]
    vrows = _virtual_rows(rows, row_bytes)
    planes, gz, gy, gx = stored_grid
    vgy = -(-stored_h // vrows)
    j = np.arange(vgy, dtype=np.int64)
    strip, within = divmod(j * vrows, rows)
    off = offsets.reshape(planes, gz * gy * gx)
    cnt = counts.reshape(planes, gz * gy * gx)
    start = within * row_bytes
    new_off = off[:, strip] + start
    new_cnt = np.minimum(vrows * row_bytes, cnt[:, strip] - start)
    new_cnt[(new_cnt <= 0) | (off[:, strip] < 0) | (cnt[:, strip] < 0)] = -1
    new_off[off[:, strip] < 0] = -1
    new_cnt[cnt[:, strip] == 0] = 0  # a missing strip stays missing
    return (1, vrows, tile[2]), (planes, 1, vgy, 1), new_off.reshape(-1), new_cnt.reshape(-1)


@dataclass(frozen=True)
class PageLayout:
    """The tile geometry of one TIFF page (IFD), shared by every page of a series (a keyframe's layout).

    shape: (depth, height, width, samples); tile: (tz, ty, tx) as read (after any virtual strip split);
    planes: 1 (contiguous samples) or samples (planar separate); grid: (planes, gz, gy, gx) of the readable
    image. ``table`` turns one page's StripOffsets/TileOffsets and byte counts into that grid.
    """

    index: int
    shape: tuple[int, int, int, int]
    tile: tuple[int, int, int]
    planes: int
    dtype: np.dtype
    grid: tuple[int, int, int, int]
    stored_tile: tuple[int, int, int]
    stored_grid: tuple[int, int, int, int]
    stored_h: int
    row_bytes: int
    split: bool

    @property
    def tiles_per_page(self) -> int:
        """Offsets one page must hold (the stored grid as written)."""
        return math.prod(self.stored_grid)

    def table(self, dataoffsets, databytecounts, path: str) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, bytecounts) int64 arrays of shape ``grid`` from one page's offset and byte count tags."""
        offsets = _positions(dataoffsets)
        counts = _positions(databytecounts)
        if offsets.size != self.tiles_per_page or counts.size != offsets.size:
            raise CorruptFileError(
                f"{offsets.size} tile offsets and {counts.size} byte counts for a grid of {self.stored_grid}",
                path=path, level=self.index,
            )
        stored_grid = self.stored_grid
        if self.split:
            _, stored_grid, offsets, counts = _split_raw_strips(self.stored_tile, stored_grid, offsets, counts,
                                                                self.stored_h, self.row_bytes)
        crop = tuple(slice(0, g) for g in self.grid)
        return (np.ascontiguousarray(offsets.reshape(stored_grid)[crop]),
                np.ascontiguousarray(counts.reshape(stored_grid)[crop]))


def page_layout(page, index: int, path: str) -> PageLayout:
    """Validate one page's geometry tags and describe its tile grid (see :class:`PageLayout`)."""
    height, width = int(page.imagelength), int(page.imagewidth)
    depth = int(page.imagedepth or 1)
    samples = int(page.samplesperpixel)
    bits = page.bitspersample
    if samples > 1 and page.tags.get(258) is None:
        # tifffile drops a tag whose values lie past the end of the file (a truncated header); the default of
        # 1 bit would then be reported as unsupported rather than damaged
        raise CorruptFileError("BitsPerSample is missing or unreadable", path=path, level=index)
    # 12-bit JPEG tiles decode to uint16; other 12-bit (bit-packed) samples are not read
    jpeg12 = bits == 12 and int(page.compression) == 7 and page.dtype == np.uint16
    if (bits not in (8, 16, 32, 64) and not jpeg12) or page.dtype is None:
        raise UnsupportedFormatError(f"{bits}-bit samples are not supported", path=path, level=index)
    if height <= 0 or width <= 0 or samples <= 0:
        raise CorruptFileError(f"image size {width}x{height}x{samples} is not valid", path=path, level=index)
    bits_tag = page.tags.get(258)  # BitsPerSample holds one value per sample (or one for all)
    if bits_tag is not None and bits_tag.count not in (1, samples):
        raise CorruptFileError(
            f"SamplesPerPixel is {samples} but BitsPerSample has {bits_tag.count} values", path=path, level=index
        )
    compression = int(page.compression)
    if compression not in _COMPRESSION and f"tiff-compression-{compression}" not in available_codecs():
        # no reader knows this tag value: refuse at open, as OpenSlide and cuCIM do
        raise UnsupportedFormatError(f"TIFF compression {compression} is not supported", path=path, level=index)
    planes = samples if int(page.planarconfig) == 2 and samples > 1 else 1
    # Stored grid from the tags as written (Philips pages are cropped by tifffile after the fact)
    stored_w = int(page.tags.valueof(256, width))
    stored_h = int(page.tags.valueof(257, height))
    if page.is_tiled:
        tile = (int(page.tiledepth or 1), int(page.tilelength), int(page.tilewidth))
    else:
        rows = int(page.rowsperstrip or stored_h)
        tile = (1, max(1, min(rows, stored_h)), stored_w)
        depth = 1
    if min(tile) <= 0:
        raise CorruptFileError(f"tile shape {tile} is not valid", path=path, level=index)
    stored_grid = (planes, -(-depth // tile[0]), -(-stored_h // tile[1]), -(-stored_w // tile[2]))
    if math.prod(stored_grid) > _MAX_TILES:
        raise CorruptFileError(f"header declares {math.prod(stored_grid)} tiles", path=path, level=index)
    itemsize = np.dtype(page.dtype).itemsize
    row_bytes = stored_w * (samples // planes) * itemsize
    stored_tile = tile
    split = (not page.is_tiled and compression == 1 and int(page.predictor) == 1
             and tile[1] * row_bytes > _SPLIT_BYTES)
    if split:
        tile = (1, _virtual_rows(tile[1], row_bytes), tile[2])
    tile_bytes = math.prod(tile) * (samples // planes) * itemsize
    if tile_bytes > _MAX_TILE_BYTES:
        raise CorruptFileError(
            f"tile shape {tile} x {samples // planes} samples decodes to {tile_bytes} bytes, more than the "
            f"{_MAX_TILE_BYTES} this reader allows per tile or strip",
            path=path, level=index,
        )
    grid = (planes, -(-depth // tile[0]), -(-height // tile[1]), -(-width // tile[2]))
    return PageLayout(index=index, shape=(depth, height, width, samples), tile=tile, planes=planes,
                      dtype=np.dtype(page.dtype).newbyteorder("="), grid=grid, stored_tile=stored_tile,
                      stored_grid=stored_grid, stored_h=stored_h, row_bytes=row_bytes, split=split)


def level_from_page(page, index: int, byteorder: str, downsample: float, path: str) -> Level:
    """A Level describing one TIFF page (IFD): its tiles, or its strips as full-width tiles."""
    layout = page_layout(page, index, path)
    offsets, counts = layout.table(page.dataoffsets, page.databytecounts, path)
    return Level(
        index=index,
        shape=layout.shape,
        tile_shape=layout.tile,
        dtype=layout.dtype,
        downsample=downsample,
        codec=codec_for(page, byteorder),
        offsets=offsets,
        bytecounts=counts,
        planes=layout.planes,
    )


class TiffSource(ImageSource):
    """A TIFF file: levels from the first series' pyramid (SVS, Philips, OME SubIFDs) or from top-level
    pages/SubIFDs of decreasing size (generic pyramids); label/macro/thumbnail as associated images.
    OME-TIFF and ImageJ hyperstacks with T, C or Z pages open as volumes (:mod:`.tiff_volume`)."""

    format_name = "tiff"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        import tifffile

        try:
            tf = tifffile.TiffFile(path)
        except Exception as exc:  # tifffile raises many kinds on damaged headers
            raise CorruptFileError(f"cannot parse the TIFF structure: {exc}", path=path) from exc
        try:
            with tf:
                self._parse(tf)
        except (CorruptFileError, UnsupportedFormatError):
            raise
        except Exception as exc:
            raise CorruptFileError(f"cannot parse the TIFF structure: {exc}", path=path) from exc

    # -- parsing ---------------------------------------------------------------------------------------------
    def _parse(self, tf) -> None:
        byteorder = tf.byteorder
        if not len(tf.pages):
            raise CorruptFileError("the TIFF has no image", path=self.path)
        first = tf.pages.first
        self.raw_metadata = first.description or ""
        if tf.is_svs:
            self.vendor = "aperio"
        elif tf.is_philips:
            self.vendor = "philips"
        elif tf.is_ome:
            self.vendor = "ome"
        stack = tiff_volume.hyperstack_axes(tf)
        if stack is not None:  # OME-TIFF / ImageJ with T, C or Z pages: a volume (see tiff_volume)
            tiff_volume.open_volume(self, tf, *stack)
            return
        pages, associated = self._level_pages(tf)
        if not pages:
            raise UnsupportedFormatError("the TIFF has no image this reader can use", path=self.path)
        h0, w0 = int(pages[0].imagelength), int(pages[0].imagewidth)
        for i, page in enumerate(pages):
            ds = (w0 / int(page.imagewidth) + h0 / int(page.imagelength)) / 2
            self.levels.append(level_from_page(page, i, byteorder, ds, self.path))
        for name, page in associated.items():
            try:
                self.associated[name] = AssociatedImage(name, level_from_page(page, 0, byteorder, 1.0, self.path))
            except (CorruptFileError, UnsupportedFormatError):
                continue  # a damaged label must not make the slide unreadable
        self._metadata(tf, pages[0])

    def _level_pages(self, tf) -> tuple[list, dict]:
        series = tf.series
        associated: dict = {}
        for s in series[1:]:
            name = (s.name or "").lower()
            if name in _ASSOCIATED_NAMES and s.keyframe is not None:
                associated[name] = s.keyframe
        pages: list = []
        if series:
            pages = [lvl.keyframe for lvl in series[0].levels if lvl.keyframe is not None]
        if self.vendor == "generic":
            # tifffile pyramidizes only constant factors (2, 3, 4) between levels; generic TIFF (OpenSlide's
            # generic-tiff) takes every shrinking level
            generic = self._generic_pyramid(tf)
            if len(generic) > len(pages):
                pages = generic
        return pages, associated

    @staticmethod
    def _generic_pyramid(tf) -> list:
        """Page 0 and its SubIFDs, else the following top-level pages, while they shrink and match in kind."""
        base = tf.pages.first
        candidates = []
        if base.subifds:
            import tifffile

            for i, offset in enumerate(base.subifds):
                try:  # as tifffile's own generic series reads SubIFDs
                    tf.filehandle.seek(offset)
                    candidates.append(tifffile.TiffPage(tf, (base.index, i)))
                except Exception:
                    break
        if not candidates:
            candidates = [tf.pages[i] for i in range(1, len(tf.pages))]
        pages = [base]
        for page in candidates:
            prev = pages[-1]
            if (
                page.samplesperpixel == base.samplesperpixel
                and page.dtype == base.dtype
                and page.imagewidth < prev.imagewidth
                and page.imagelength < prev.imagelength
                and page.is_tiled == base.is_tiled
            ):
                pages.append(page)
            else:
                break
        return pages

    def _metadata(self, tf, page0) -> None:
        samples = self.levels[0].shape[3]
        self.channel_names = tm.SAMPLE_NAMES.get(
            samples, [f"C{i}" for i in range(samples)]
        )
        spacing_yx = None
        if self.vendor == "aperio":
            meta = tm.parse_aperio(self.raw_metadata)
            self.vendor_metadata["aperio"] = meta
            self.default_fill = 255
            try:
                mpp = float(meta["MPP"])
                if mpp > 0:
                    spacing_yx = (mpp, mpp)
            except (KeyError, ValueError):
                pass
        elif self.vendor == "philips":
            meta = tm.parse_philips(tf.philips_metadata or "")
            self.vendor_metadata["philips"] = meta
            self.default_fill = 255
            spacings = meta.get("PixelSpacing")
            if spacings and len(spacings[0]) == 2 and min(spacings[0]) > 0:
                spacing_yx = (spacings[0][0] * 1000.0, spacings[0][1] * 1000.0)
        elif self.vendor == "ome":
            meta = tm.parse_ome(tf.ome_metadata or "")
            self.vendor_metadata["ome"] = meta
            y, x = tm.um_from_ome(meta, "Y"), tm.um_from_ome(meta, "X")
            if y and x:
                spacing_yx = (y, x)
            names = meta.get("ChannelNames")
            if names and len(names) == samples:
                self.channel_names = list(names)
        if spacing_yx is None:
            spacing_yx = tm.um_from_resolution(page0)
        if spacing_yx is not None:
            self.pixel_spacing = (1.0, *spacing_yx)
        self.vendor_metadata["tiff"] = tm.tiff_section(page0)
