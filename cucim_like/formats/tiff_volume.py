"""OME-TIFF z-stacks and ImageJ hyperstacks as volumes: the pages of a series' T, C and Z axes become tile grids.

A file opens as a volume when it is an OME-TIFF or an ImageJ hyperstack whose first series stores T, C or Z as
separate pages (tifffile's ``series.axes`` in any order, e.g. "ZCYX", "TCZYX", "CZYX", "ZYXS"), at least one
of them longer than one. ``source.volume`` is then True (dims "ZYX[C]"), also when Z is 1 (only C or T
pages). Each pyramid level of the series (OME SubIFDs) becomes one :class:`~.base.Level` with the same z:

* Z: the pages of one (t, c) are the z axis of the tile grid; tile_shape (1, ty, tx).
* C stored as pages: the grid's plane axis, so reading one channel touches only that channel's tiles.
* S samples inside a page (RGB): channels within each tile (or one plane each when stored planar separate).
  With both C pages and S > 1 samples the image has C * S channels, channel k being sample k % S of channel
  page k // S, and ``planes`` is C (samples contiguous: C * S is a multiple of planes, each tile holding S
  samples) or C * S (planar separate).
* T: one list of Levels per timepoint in ``source.timepoints`` (their ``variant`` is t, which keeps their
  tile cache keys apart); ``source.levels`` is timepoint 0. A series without T (or T = 1) has no timepoints.

Missing planes (None in tifffile's series: OME TiffData that names no IFD) are missing tiles, read as fill.
An ImageJ hyperstack truncated to its first IFD (uncompressed planes stored back to back) is indexed by
stride, after checking that the declared planes fit in the file. Planes in other files (multi-file OME-TIFF),
pages holding several z (ImageDepth) and page axes other than T, C, Z with more than one entry are refused
with :class:`~cucim_like.errors.UnsupportedFormatError`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CorruptFileError, UnsupportedFormatError
from . import tiff_metadata as tm
from .base import Level

if TYPE_CHECKING:
    from .tiff import TiffSource

_PAGE_AXES = "TCZ"
# Planes missing from a series (None pages) may not outnumber present ones by more than this factor (plus a
# constant): their tile tables are allocated, and their count comes from metadata rather than from IFDs.
_MISSING_FACTOR = 16
_MISSING_SLACK = 1024
# Nor may a volume's tile tables hold more entries than this (8 bytes each for offsets and byte counts).
_MAX_TABLE_ENTRIES = 1 << 28


def hyperstack_axes(tf) -> tuple[str, tuple[int, ...]] | None:
    """(axes, sizes) of the page axes of ``tf``'s first series (the axes before Y, samples excluded) when that
    series is an OME or ImageJ one with one of them longer than one; None for a 2-D image (a slide)."""
    if not (tf.is_ome or tf.is_imagej) or not tf.series:
        return None
    series = tf.series[0]
    if series.kind not in ("ome", "imagej"):  # tifffile fell back to a generic series (invalid metadata)
        return None
    axes, shape = series.get_axes(False), series.get_shape(False)
    y = axes.find("Y")
    if y < 0 or len(axes) != len(shape):
        return None
    lead = [(a, int(n)) for a, n in zip(axes[:y], shape[:y], strict=True) if a != "S"]
    if not any(n > 1 for _, n in lead):
        return None
    return "".join(a for a, _ in lead), tuple(n for _, n in lead)


def _page_order(axes: str, sizes: tuple[int, ...], path: str) -> np.ndarray:
    """Series page index of each (t, c, z): an int64 array (T, C, Z)."""
    for a, n in zip(axes, sizes, strict=True):
        if n > 1 and a not in _PAGE_AXES:
            raise UnsupportedFormatError(f"series axes {axes!r}: axis {a!r} of length {n} is not supported "
                                         "(only T, C and Z may be stored as pages)", path=path)
    kept = [(a, n) for a, n in zip(axes, sizes, strict=True) if a in _PAGE_AXES]
    names = [a for a, _ in kept]
    if len(set(names)) != len(names):
        raise UnsupportedFormatError(f"series axes {axes!r} repeat an axis", path=path)
    # dropping length-1 axes of other kinds keeps the order of the pages
    order = np.arange(math.prod(sizes), dtype=np.int64).reshape([n for _, n in kept])
    for a in _PAGE_AXES:
        if a not in names:
            order = order[..., np.newaxis]
            names.append(a)
    return order.transpose([names.index(a) for a in _PAGE_AXES])


def _check_page(page, keyframe, tf, path: str, index: int) -> None:
    """Refuse a plane stored in another file or laid out unlike the series' keyframe."""
    if page.parent is not tf:
        raise UnsupportedFormatError("OME-TIFF planes stored in other files are not supported", path=path,
                                     level=index)
    if page is keyframe:
        return
    import tifffile

    if isinstance(page, tifffile.TiffPage) and page.hash != keyframe.hash:  # frames take the keyframe's tags
        raise UnsupportedFormatError(f"page {page.index} of the series differs in layout from page "
                                     f"{keyframe.index}", path=path, level=index)
    if int(keyframe.compression) == 7 and getattr(page, "jpegtables", None) != keyframe.jpegtables:
        raise UnsupportedFormatError(f"page {page.index} has JPEGTables of its own", path=path, level=index)


def _plane_tables(tf, series, layout, npages: int, path: str) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """(offsets, bytecounts), each of shape ``layout.grid``, of every page of ``series`` (None: missing)."""
    keyframe = series.keyframe
    index = layout.index
    if len(series) == npages:
        tables: list[tuple[np.ndarray, np.ndarray] | None] = []
        for page in series:
            if page is None:
                tables.append(None)
                continue
            _check_page(page, keyframe, tf, path, index)
            tables.append(layout.table(page.dataoffsets, page.databytecounts, path))
        return tables
    if len(series) == 1 and series.is_truncated and keyframe.is_contiguous and series.dataoffset is not None:
        # an ImageJ hyperstack truncated to its first IFD: uncompressed planes back to back
        stride = int(keyframe.nbytes)
        first = int(series.dataoffset)
        size = int(tf.filehandle.size)
        if stride <= 0 or first < 0 or npages > (size - first) // stride:
            raise CorruptFileError(f"the header declares {npages} planes of {stride} bytes from offset {first}, "
                                   f"more than the file's {size} bytes hold", path=path, level=index)
        offsets = np.asarray(keyframe.dataoffsets, dtype=np.int64)
        counts = np.asarray(keyframe.databytecounts, dtype=np.int64)
        return [layout.table(offsets + i * stride, counts, path) for i in range(npages)]
    raise CorruptFileError(f"the series declares {npages} planes but holds {len(series)} pages", path=path,
                           level=index)


def _level_tables(tf, series, layout, order: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and byte counts of one pyramid level for every timepoint: int64 (T, C * pp, Z, gy, gx), pp
    being the planes of one page (1, or its samples when planar separate)."""
    t_count, c_count, z_count = order.shape
    tables = _plane_tables(tf, series, layout, order.size, path)
    missing = sum(t is None for t in tables)
    present = len(tables) - missing
    if present == 0:
        raise CorruptFileError("the series has no stored plane", path=path, level=layout.index)
    if missing > _MISSING_FACTOR * present + _MISSING_SLACK:
        raise CorruptFileError(f"the series declares {missing} missing planes beside {present} stored ones",
                               path=path, level=layout.index)
    pp, _, gy, gx = layout.grid
    shape = (t_count, c_count, pp, z_count, gy, gx)
    if math.prod(shape) > _MAX_TABLE_ENTRIES:
        raise CorruptFileError(f"the series declares {math.prod(shape)} tiles", path=path, level=layout.index)
    offsets = np.zeros(shape, np.int64)
    counts = np.zeros(shape, np.int64)  # 0: a missing tile, read as fill
    for (t, c, z), page in np.ndenumerate(order):
        table = tables[page]
        if table is not None:
            offsets[t, c, :, z] = table[0][:, 0]
            counts[t, c, :, z] = table[1][:, 0]
    grid = (t_count, c_count * pp, z_count, gy, gx)
    return offsets.reshape(grid), counts.reshape(grid)


def open_volume(src: TiffSource, tf, axes: str, sizes: tuple[int, ...]) -> None:
    """Fill ``src`` (levels, timepoints, spacing, channel names, metadata) from ``tf``'s first series, whose page
    axes are ``axes`` of lengths ``sizes`` (from :func:`hyperstack_axes`)."""
    from .tiff import codec_for, page_layout

    path = src.path
    series = tf.series[0]
    order = _page_order(axes, sizes, path)
    t_count, c_count, z_count = order.shape
    per_t: list[list[Level]] = [[] for _ in range(t_count)]
    base = None
    for i, level_series in enumerate(series.levels):
        keyframe = level_series.keyframe
        layout = page_layout(keyframe, i, path)
        if layout.shape[0] != 1:
            raise UnsupportedFormatError("pages holding several z planes (ImageDepth) are not supported in a "
                                         "hyperstack", path=path, level=i)
        if base is None:
            base = layout
        elif layout.shape[3] != base.shape[3] or layout.dtype != base.dtype or layout.planes != base.planes:
            raise UnsupportedFormatError(f"pyramid level {i} differs from level 0 in samples or dtype",
                                         path=path, level=i)
        offsets, counts = _level_tables(tf, level_series, layout, order, path)
        _, h, w, samples = layout.shape
        ds = (base.shape[2] / w + base.shape[1] / h) / 2
        codec = codec_for(keyframe, tf.byteorder)
        for t in range(t_count):
            per_t[t].append(Level(
                index=i, shape=(z_count, h, w, c_count * samples), tile_shape=layout.tile, dtype=layout.dtype,
                downsample=ds, codec=codec, offsets=offsets[t], bytecounts=counts[t],
                planes=c_count * layout.planes, variant=t,
            ))
    if base is None:
        raise UnsupportedFormatError("the series has no level this reader can use", path=path)
    src.levels = per_t[0]
    src.timepoints = per_t if t_count > 1 else []
    src.volume = True
    _metadata(src, tf, series, axes, order.shape, base.shape[3])


def _metadata(src: TiffSource, tf, series, axes: str, tcz: tuple[int, int, int], samples: int) -> None:
    keyframe = series.keyframe
    t_count, c_count, z_count = tcz
    names: list[str] | None = None
    spacing: tuple[float | None, float | None, float | None] = (None, None, None)
    if tf.is_ome:
        src.vendor = "ome"
        meta = tm.parse_ome(tf.ome_metadata or "")
        src.vendor_metadata["ome"] = meta
        spacing = (tm.um_from_ome(meta, "Z"), tm.um_from_ome(meta, "Y"), tm.um_from_ome(meta, "X"))
        names = meta.get("ChannelNames")
    else:
        src.vendor = "imagej"
        src.vendor_metadata["imagej"] = tm.imagej_section(tf.imagej_metadata)
        spacing = tm.imagej_spacing(tf.imagej_metadata, keyframe)
    z, y, x = spacing
    if y is None or x is None:
        y, x = tm.um_from_resolution(keyframe) or (None, None)
    if y is not None and x is not None:
        src.pixel_spacing = (z or 1.0, y, x)
    elif z is not None:
        src.pixel_spacing = (z, 1.0, 1.0)
    channels = c_count * samples
    sample_names = tm.SAMPLE_NAMES.get(samples, [f"S{s}" for s in range(samples)])
    if names and len(names) == channels:
        src.channel_names = list(names)
    elif names and len(names) == c_count:
        src.channel_names = [f"{n}:{s}" if samples > 1 else n for n in names for s in sample_names]
    elif c_count == 1:
        src.channel_names = list(sample_names)
    else:
        src.channel_names = [f"C{c}:{s}" if samples > 1 else f"C{c}" for c in range(c_count) for s in sample_names]
    src.vendor_metadata["tiff"] = tm.tiff_section(keyframe)
    src.vendor_metadata["tiff_series"] = {
        "axes": series.axes,
        "shape": [int(n) for n in series.shape],
        "page_axes": axes,
        "timepoints": t_count,
        "channels": c_count,
        "samples_per_page": samples,
        "z": z_count,
    }
