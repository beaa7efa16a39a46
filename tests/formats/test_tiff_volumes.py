"""OME-TIFF z-stacks and ImageJ hyperstacks read as volumes (cucim_like.formats.tiff_volume).

Every fixture is written at test time with tifffile (T, C, Z in several orders, RGB samples, big-endian,
tiles and strips, a SubIFD pyramid, ImageJ hyperstacks, one truncated to its first IFD) and every expected
value comes from tifffile's own decode of the series (``tifffile.imread(path, series=0, level=i)``),
rearranged with NumPy to (T, Z, Y, X, C), the channel axis being the C pages times the samples of one page
(channel k = sample k % S of channel page k // S). Regions cross tile edges and lie partly or wholly
outside the volume (fill).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import tifffile

import cucim_like
from cucim_like import CuImage
from tests.conftest import shared_file
from tests.formats import tiff_fixtures as tfx

Y, X = 70, 90  # not multiples of the 32 x 32 tiles: partial edge tiles
FILL = 7


@dataclass(frozen=True)
class Stack:
    """One hyperstack fixture: the array tifffile writes (``shape`` in ``axes`` order) and how."""

    id: str
    axes: str
    shape: tuple[int, ...]
    dtype: str = "uint16"
    imagej: bool = False
    tile: tuple[int, int] | None = (32, 32)  # None: strips of ``rowsperstrip`` rows
    rowsperstrip: int = 9
    byteorder: str = "<"
    compression: str | None = None
    planar: bool = False  # samples of a page planar separate
    truncate: bool = False  # ImageJ: only the first IFD
    levels: int = 1  # SubIFD pyramid levels
    names: tuple[str, ...] = ()

    def size(self, axis: str) -> int:
        return self.shape[self.axes.index(axis)] if axis in self.axes else 1

    @property
    def pages_c(self) -> int:
        return self.size("C")

    @property
    def samples(self) -> int:
        return self.size("S")


STACKS = [
    Stack("TCZYX-u16-tiled-zlib-BE", "TCZYX", (2, 3, 4, Y, X), byteorder=">", compression="zlib",
          names=("dapi", "gfp", "rfp")),
    Stack("ZCYX-u8-strips", "ZCYX", (4, 3, Y, X), "uint8", tile=None, rowsperstrip=7),
    Stack("CZYX-f32-tiled-BE", "CZYX", (2, 5, Y, X), "float32", byteorder=">"),
    Stack("ZYXS-rgb-u8-tiled", "ZYXS", (3, Y, X, 3), "uint8"),
    Stack("ZCYXS-rgb-pages", "ZCYXS", (2, 2, Y, X, 3), "uint8", compression="zlib"),
    Stack("ZSYX-planar-rgb", "ZSYX", (3, 3, Y, X), "uint8", planar=True),
    Stack("TZYX-u16-strips-BE", "TZYX", (3, 2, Y, X), tile=None, rowsperstrip=16, byteorder=">"),
    Stack("CYX-z1", "CYX", (4, Y, X), "uint8"),
    Stack("CZYX-subifd-pyramid-BE", "CZYX", (3, 3, Y * 2, X * 2), byteorder=">", levels=3,
          compression="zlib"),
    Stack("imagej-TZCYX-u8", "TZCYX", (2, 3, 2, Y, X), "uint8", imagej=True, tile=None),
    Stack("imagej-ZYX-f32", "ZYX", (5, Y, X), "float32", imagej=True, tile=None, rowsperstrip=11),
    Stack("imagej-ZCYX-u16-truncated", "ZCYX", (3, 2, Y, X), imagej=True, tile=None, truncate=True),
]


def synthetic(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    """Random values spanning most of ``dtype``'s range (every tile and plane differs)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.uniform(-50, 150, shape).astype(dt)
    return rng.integers(0, np.iinfo(dt).max, shape, endpoint=True).astype(dt)


def _decimated(data: np.ndarray, axes: str, factor: int) -> np.ndarray:
    index = tuple(slice(None, None, factor) if a in "YX" else slice(None) for a in axes)
    return np.ascontiguousarray(data[index])


def write_stack(path, case: Stack, seed: int = 0) -> None:
    data = synthetic(case.shape, case.dtype, seed)
    layout = {"tile": case.tile} if case.tile else {"rowsperstrip": case.rowsperstrip}
    if case.imagej:
        tifffile.imwrite(path, data, imagej=True, byteorder=case.byteorder, truncate=case.truncate,
                         resolution=(2.0, 4.0), metadata={"axes": case.axes, "spacing": 2.5, "unit": "um"},
                         **layout)
        return
    kwargs = dict(layout, compression=case.compression,
                  photometric="rgb" if "S" in case.axes else "minisblack",
                  planarconfig="separate" if case.planar else None)
    meta = {"axes": case.axes, "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.75, "PhysicalSizeZ": 2.0}
    if case.names:
        meta["Channel"] = {"Name": list(case.names)}
    with tifffile.TiffWriter(path, ome=True, byteorder=case.byteorder) as tw:
        tw.write(data, subifds=case.levels - 1 or None, metadata=meta, **kwargs)
        for k in range(1, case.levels):
            tw.write(_decimated(data, case.axes, 2**k), subfiletype=1, metadata=None, **kwargs)


def reference(path, level: int = 0) -> np.ndarray:
    """tifffile's decode of the series' level as (T, Z, Y, X, C * S)."""
    with tifffile.TiffFile(path) as tf:
        axes = tf.series[0].axes
    arr = tifffile.imread(path, series=0, level=level)
    for a in "TZCSYX":
        if a not in axes:
            arr = arr[..., np.newaxis]
            axes += a
    arr = arr.transpose([axes.index(a) for a in "TZYXCS"])
    t, z, y, x, c, s = arr.shape
    return np.ascontiguousarray(arr.reshape(t, z, y, x, c * s))


def expected(vol: np.ndarray, x: int, y: int, z: int, w: int, h: int, d: int, fill: float) -> np.ndarray:
    """``vol[z:z+d, y:y+h, x:x+w]`` of a (Z, Y, X, C) volume, the parts outside it set to ``fill``."""
    out = np.full((d, h, w, vol.shape[3]), fill, dtype=vol.dtype)
    lo = [max(v, 0) for v in (z, y, x)]
    hi = [min(v + n, e) for v, n, e in zip((z, y, x), (d, h, w), vol.shape[:3], strict=True)]
    if all(b > a for a, b in zip(lo, hi, strict=True)):
        out[lo[0] - z : hi[0] - z, lo[1] - y : hi[1] - y, lo[2] - x : hi[2] - x] = \
            vol[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    return out


def as_dims(arr: np.ndarray, img: CuImage) -> np.ndarray:
    """A (d, h, w, c) array in ``img.dims`` order (single-channel volumes have no channel axis)."""
    return arr[..., 0] if img.dims == "ZYX" else arr


def regions(z: int, y: int, x: int) -> list[tuple[int, int, int, int, int, int]]:
    """(x, y, z, w, h, d): tile-edge crossings, partial edge tiles, partly and wholly outside."""
    return [
        (0, 0, 0, x, y, z),
        (29, 30, 0, 8, 7, 1),  # four tiles around (32, 32)
        (31, 0, z - 1, 3, y, 1),  # a column across the tile edge, every row
        (x - 5, y - 6, max(z - 2, 0), 20, 20, 3),  # past the far corner and past the last z
        (-6, -4, -1, 20, 15, 3),  # before the origin, z included
        (10, 10, z + 1, 5, 5, 2),  # wholly past the last z
        (-40, 5, 0, 12, 12, 1),  # wholly left of the volume
    ]


@pytest.fixture(scope="module", params=STACKS, ids=lambda c: c.id)
def stack(request, tmp_path_factory):
    case: Stack = request.param
    path = tmp_path_factory.mktemp("stacks") / f"{case.id}.{'tif' if case.imagej else 'ome.tif'}"
    write_stack(path, case, seed=len(case.id))
    refs = [reference(path, i) for i in range(case.levels)]
    return case, path, refs


def test_layout(stack):
    case, path, refs = stack
    with tifffile.TiffFile(path) as tf:
        assert tf.series[0].axes == case.axes and len(tf.series[0].levels) == case.levels
        assert tf.is_imagej == case.imagej and tf.is_ome == (not case.imagej)
        assert tf.byteorder == case.byteorder
        assert tf.series[0].keyframe.is_tiled == (case.tile is not None)
        assert tf.series[0].is_truncated == case.truncate
    img = CuImage(path)
    t, z, y, x, c = refs[0].shape
    assert img.is_volume and img.vendor == ("imagej" if case.imagej else "ome")
    assert img.dims == ("ZYX" if c == 1 else "ZYXC")
    assert img.shape == ([z, y, x] if c == 1 else [z, y, x, c])
    assert img.size("XYZ") == [x, y, z]
    assert img.timepoints == (t if t > 1 else 0) and img.metadata["tiff_series"]["timepoints"] == t
    assert img.resolutions["level_count"] == case.levels
    assert img.resolutions["level_dimensions"] == tuple((r.shape[3], r.shape[2]) for r in refs)
    lvl = img.levels[0]
    assert lvl.planes == case.pages_c * (case.samples if case.planar else 1)
    assert lvl.tile_shape[0] == 1 and lvl.shape == (z, y, x, c)
    assert img.metadata["cucim"]["dims"] == img.dims and img.metadata["cucim"]["shape"] == img.shape
    if case.imagej:
        assert img.spacing("ZYX") == pytest.approx([2.5, 0.25, 0.5])
    else:
        assert img.spacing("ZYX") == pytest.approx([2.0, 0.75, 0.5])
        assert img.spacing_units("ZYX") == ["micrometer"] * 3
    assert len(img.channel_names) == c
    if case.names:
        assert img.channel_names == list(case.names)


def test_whole_levels_and_timepoints(stack):
    _, path, refs = stack
    img = CuImage(path)
    for i, ref in enumerate(refs):
        for t in range(ref.shape[0]):
            got = img.read_region(level=i, t=t if img.timepoints else None)
            tfx.assert_close(got, as_dims(ref[t], img), 0, f"level {i} t {t}")
    tfx.assert_close(img.read_region(), as_dims(refs[0][0], img), 0, "default: timepoint 0")


def test_regions_and_channels(stack):
    _, path, refs = stack
    img = CuImage(path)
    t = refs[0].shape[0] - 1
    tsel = t if img.timepoints else None
    c = refs[0].shape[4]
    for i, ref in enumerate(refs):
        vol = ref[t]
        ds = 2**i
        for x, y, z, w, h, d in regions(*vol.shape[:3]):
            want = expected(vol, x, y, z, w, h, d, FILL)
            loc = (x * ds, y * ds, z)
            what = f"level {i} region {(x, y, z, w, h, d)}"
            got = img.read_region(loc, (w, h, d), level=i, t=tsel, fill=FILL)
            tfx.assert_close(got, as_dims(want, img), 0, what)
            if c == 1:
                continue
            for ch in (0, c - 1):
                tfx.assert_close(img.read_region(loc, (w, h, d), level=i, t=tsel, fill=FILL, c=ch),
                                 want[..., ch], 0, f"{what} c={ch}")
            pick = [c - 1, 0, c - 1] if c > 2 else [1, 0]
            tfx.assert_close(img.read_region(loc, (w, h, d), level=i, t=tsel, fill=FILL, c=pick),
                             want[..., pick], 0, f"{what} c={pick}")
            tfx.assert_close(img.read_region(loc, (w, h, d), level=i, t=tsel, fill=FILL, c=np.arange(c)),
                             want, 0, f"{what} all channels by list")


def test_batches_and_buffers(stack):
    _, path, refs = stack
    img = CuImage(path)
    vol = refs[0][-1]
    tsel = refs[0].shape[0] - 1 if img.timepoints else None
    c = vol.shape[3]
    d = min(2, vol.shape[0])  # a batch's patches must fit in the volume
    locations = [(0, 0, 0), (29, 30, vol.shape[0] - d), (X - 10, Y - 10, vol.shape[0] - 1)]
    pick = [c - 1, 0] if c > 1 else None
    batches = list(img.read_region(locations, (16, 12, d), batch_size=2, t=tsel, c=pick, fill=FILL))
    got = np.concatenate(batches)
    for k, (x, y, z) in enumerate(locations):
        want = expected(vol, x, y, z, 16, 12, d, FILL)
        tfx.assert_close(got[k], as_dims(want, img) if pick is None else want[..., pick], 0, f"batch item {k}")
    if c == 1:
        return
    out_buf = np.empty((2, d, 12, 16, 2), vol.dtype)
    first = next(iter(img.read_region(locations[:2], (16, 12, d), batch_size=2, t=tsel, c=pick, buf=out_buf)))
    assert np.shares_memory(first, out_buf)
    tfx.assert_close(out_buf[1], expected(vol, *locations[1], 16, 12, d, 0)[..., pick], 0, "batch into buf")
    buf = np.empty((d, 12, 16, 2), vol.dtype)
    out = img.read_region((29, 30, 0), (16, 12, d), t=tsel, c=pick, buf=buf)
    assert out is buf
    tfx.assert_close(buf, expected(vol, 29, 30, 0, 16, 12, d, 0)[..., pick], 0, "buf, c list")
    one = np.empty((d, 12, 16), vol.dtype)
    assert img.read_region((29, 30, 0), (16, 12, d), t=tsel, c=c - 1, buf=one) is one
    tfx.assert_close(one, expected(vol, 29, 30, 0, 16, 12, d, 0)[..., c - 1], 0, "buf, c int")
    with pytest.raises(cucim_like.InvalidArgumentError):
        img.read_region((0, 0, 0), (16, 12, d), t=tsel, c=[0], buf=one)


# -- channel and time arguments --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tczyx(tmp_path_factory):
    case = STACKS[0]
    path = tmp_path_factory.mktemp("tczyx") / "tczyx.ome.tif"
    write_stack(path, case, seed=3)
    return path, reference(path)


@pytest.mark.parametrize("c", [3, -1, [0, 3], [], "0", 1.0, [0.0], True])
def test_bad_channels(tczyx, c):
    img = CuImage(tczyx[0])
    with pytest.raises(cucim_like.InvalidArgumentError):
        img.read_region((0, 0, 0), (8, 8, 1), c=c)


@pytest.mark.parametrize("t", [2, -1, 1.0, "1", True])
def test_bad_timepoints(tczyx, t):
    img = CuImage(tczyx[0])
    with pytest.raises(cucim_like.InvalidArgumentError):
        img.read_region((0, 0, 0), (8, 8, 1), t=t)


def test_c_and_t_on_images_without_those_axes(tmp_path):
    zcyx = tmp_path / "zcyx.ome.tif"
    write_stack(zcyx, STACKS[1])
    with pytest.raises(cucim_like.InvalidArgumentError, match="time axis"):
        CuImage(zcyx).read_region((0, 0, 0), (8, 8, 1), t=0)
    gray = tmp_path / "zyx.tif"
    write_stack(gray, STACKS[10])
    img = CuImage(gray)
    assert img.dims == "ZYX"
    with pytest.raises(cucim_like.InvalidArgumentError, match="channel axis"):
        img.read_region((0, 0, 0), (8, 8, 1), c=0)


def test_channel_selection_on_a_2d_slide(tmp_path):
    path = tmp_path / "rgb.ome.tif"
    data = synthetic((Y, X, 3), "uint8", 5)
    tifffile.imwrite(path, data, tile=(32, 32), photometric="rgb", metadata={"axes": "YXS"})
    img = CuImage(path)
    assert img.dims == "YXC" and not img.is_volume and img.timepoints == 0
    tfx.assert_close(img.read_region((30, 20), (10, 12), c=2), data[20:32, 30:40, 2], 0, "slide c=2")
    tfx.assert_close(img.read_region((30, 20), (10, 12), c=[2, 0]), data[20:32, 30:40][..., [2, 0]], 0,
                     "slide c=[2, 0]")


def test_one_channel_reads_only_its_tiles(tczyx):
    path, _ = tczyx
    img = CuImage(path)
    CuImage.cache("no_cache")
    counts: list[int] = []
    img.read_region((0, 0, 0), (X, Y, 4), c=1, t=1, progress=counts.append, num_workers=1)
    one_channel = sum(counts)
    counts.clear()
    img.read_region((0, 0, 0), (X, Y, 4), t=1, progress=counts.append, num_workers=1)
    assert one_channel == 4 * 3 * 3  # z x (3 x 3 tiles of 32 in 70 x 90)
    assert sum(counts) == 3 * one_channel


def test_selections_keep_cached_tiles_apart(tczyx):
    path, ref = tczyx
    CuImage.cache("per_process", memory_capacity=64)
    a, b = CuImage(path), CuImage(path)  # the same file: tile cache keys shared by both
    region = ((10, 10, 0), (40, 40, 2))
    for img, ch, t in ((a, 1, 0), (b, 2, 0), (a, 2, 1), (b, [1], 1), (a, [2, 1], 0), (b, [1, 2], 0)):
        want = ref[t, 0:2, 10:50, 10:50][..., ch]
        tfx.assert_close(img.read_region(*region, c=ch, t=t), want, 0, f"c={ch} t={t}")
    cache = CuImage.cache()
    hits = cache.hit_count
    tfx.assert_close(b.read_region(*region, c=[2, 1], t=0), ref[0, 0:2, 10:50, 10:50][..., [2, 1]], 0, "again")
    assert cache.hit_count > hits
    assert a._channel_level(a.levels[0], [2, 0])[0] is a._channel_level(a.levels[0], [2, 0])[0]


# -- damaged and unsupported hyperstacks ----------------------------------------------------------------------
def test_truncated_imagej_declaring_more_planes_than_the_file_holds(tmp_path):
    path = tmp_path / "lying.tif"
    write_stack(path, STACKS[11])
    raw = bytearray(path.read_bytes())
    old = b"images=6\nchannels=2\nslices=3\n"
    new = b"images=1800\nchannels=2\nslices=900\n"
    at = raw.index(old)
    assert raw[at + len(old) : at + len(old) + 64].count(b"\x00") > len(new) - len(old)  # NUL padding: room
    text = raw[at : raw.index(b"\x00", at)].replace(old, new)
    raw[at : at + len(text)] = text
    path.write_bytes(bytes(raw))
    try:
        img = CuImage(path)
    except cucim_like.CorruptFileError:
        pass
    else:  # tifffile refuses the series itself: the first plane as a 2-D image
        assert not img.is_volume
    # the reader's own check, on the series as tifffile would describe it if it believed the header
    from cucim_like.formats import tiff, tiff_volume

    class Lying:
        is_truncated = True

        def __init__(self, series) -> None:
            self.keyframe, self.dataoffset = series.keyframe, series.dataoffset

        def __len__(self) -> int:
            return 1

    good = tmp_path / "good.tif"
    write_stack(good, STACKS[11])
    with tifffile.TiffFile(good) as tf:
        series = tf.series[0]
        layout = tiff.page_layout(series.keyframe, 0, str(good))
        assert len(tiff_volume._plane_tables(tf, Lying(series), layout, 6, str(good))) == 6
        with pytest.raises(cucim_like.CorruptFileError, match="planes"):
            tiff_volume._plane_tables(tf, Lying(series), layout, 1800, str(good))


def _declare_size_z(path, size_z: int) -> None:
    """Rewrite the OME XML of a "ZCYX" fixture of 2 z to declare ``size_z``: planes past 2 have no IFD."""
    xml = tifffile.tiffcomment(path)
    assert 'SizeZ="2"' in xml
    tifffile.tiffcomment(path, xml.replace('SizeZ="2"', f'SizeZ="{size_z}"').encode())


def test_missing_planes_read_as_fill(tmp_path):
    path = tmp_path / "missing.ome.tif"
    write_stack(path, Stack("missing", "ZCYX", (2, 3, Y, X), "uint8"), seed=9)
    _declare_size_z(path, 3)
    with tifffile.TiffFile(path) as tf:
        assert [p is None for p in tf.series[0]] == [False] * 6 + [True] * 3
    ref = reference(path)[0]  # tifffile zeroes the missing planes
    img = CuImage(path)
    assert img.shape == [3, Y, X, 3]
    tfx.assert_close(img.read_region(fill=0), ref, 0, "missing planes as 0")
    got = img.read_region((20, 10, 1), (40, 30, 2), fill=FILL, c=[2, 1])
    tfx.assert_close(got[0], ref[1, 10:40, 20:60][..., [2, 1]], 0, "present plane")
    assert (got[1] == FILL).all()


def test_absurd_count_of_missing_planes_is_refused(tmp_path):
    path = tmp_path / "absurd.ome.tif"
    write_stack(path, Stack("absurd", "ZCYX", (2, 3, Y, X), "uint8"))
    _declare_size_z(path, 100_000)
    with pytest.raises(cucim_like.CorruptFileError, match="missing planes"):
        CuImage(path)


def test_planes_in_other_files_are_refused(tmp_path):
    path = tmp_path / "multi.ome.tif"
    write_stack(path, STACKS[1])
    with tifffile.TiffFile(path) as tf, tifffile.TiffFile(path) as other:
        from cucim_like.formats import tiff, tiff_volume

        series = tf.series[0]
        layout = tiff.page_layout(series.keyframe, 0, str(path))
        tiff_volume._plane_tables(tf, series, layout, len(series), str(path))
        with pytest.raises(cucim_like.UnsupportedFormatError, match="other files"):
            tiff_volume._plane_tables(other, series, layout, len(series), str(path))


# -- a real OME-TIFF: Bio-Formats, CZYX big-endian int8 strips -------------------------------------------------------
def test_multi_channel_z_series():
    path = shared_file("tiff/multi-channel-z-series.ome.tif")
    ref = reference(path)[0]  # (Z, Y, X, C)
    img = CuImage(path)
    assert img.dims == "ZYXC" and img.shape == [5, 167, 439, 3] and img.dtype == np.int8
    assert img.timepoints == 0 and img.levels[0].planes == 3
    tfx.assert_close(img.read_region(), ref, 0, "whole volume")
    for x, y, z, w, h, d in [(0, 0, 0, 439, 167, 5), (100, 50, 2, 64, 40, 1), (400, 150, 3, 60, 30, 4),
                             (-10, -5, -1, 30, 20, 3), (200, 0, 4, 17, 167, 1)]:
        want = expected(ref, x, y, z, w, h, d, 0)
        tfx.assert_close(img.read_region((x, y, z), (w, h, d)), want, 0, f"region {(x, y, z, w, h, d)}")
        for ch in range(3):
            tfx.assert_close(img.read_region((x, y, z), (w, h, d), c=ch), want[..., ch], 0, f"c={ch}")
        tfx.assert_close(img.read_region((x, y, z), (w, h, d), c=[2, 0]), want[..., [2, 0]], 0, "c=[2, 0]")
