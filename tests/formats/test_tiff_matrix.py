"""TIFF reading across codecs, predictors, sample layouts, byte orders, pyramids and vendor flavours.

Every fixture is written at test time with tifffile (small images, 300x420, with tiles that leave partial
edge tiles) and every expected value comes from an independent decoder: tifffile's own decode of the same
page. ``CuImage.read_region`` must reproduce it for whole levels and for regions on tile boundaries, at the
edges and partly or fully outside the level (where the fill value is expected).

Lossy codecs (JPEG, lossy WebP, lossy JPEG 2000): tifffile decodes the very same tile streams with the same
libraries (libjpeg-turbo, libwebp, OpenJPEG through imagecodecs), so the results are normally bit-identical;
a tolerance of 1 leaves room for a decoder choosing a different rounding path (e.g. an IDCT variant), while any
misplaced, mis-converted or mis-cropped tile still shows as a large difference.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pytest
import tifffile

import cucim_like
from cucim_like import CuImage
from tests.formats import tiff_fixtures as tfx

H, W = tfx.HEIGHT, tfx.WIDTH
LOSSY_TOL = 1


@dataclass(frozen=True)
class Case:
    """One generic TIFF fixture: how tifffile writes it, and what the test expects of its tags."""

    compression: object  # tifffile's compression argument
    tag: int  # the Compression tag value tifffile must have written
    dtype: str = "uint8"
    samples: int = 3
    predictor: object = None
    planar: str = "contig"
    tile: tuple[int, int] | None = (64, 64)  # None: strips
    rowsperstrip: int = 7
    byteorder: str = "<"
    bigtiff: bool = False
    compressionargs: dict = field(default_factory=dict)
    photometric: int | None = None  # expected PhotometricInterpretation when not the obvious one
    lossy: bool = False
    fill: float = 17

    @property
    def id(self) -> str:
        parts = [str(self.compression), self.dtype, f"s{self.samples}"]
        if self.predictor:
            parts.append(f"pred-{self.predictor}")
        if self.planar != "contig":
            parts.append("separate")
        parts.append(f"tile{self.tile[0]}x{self.tile[1]}" if self.tile else f"strips{self.rowsperstrip}")
        if self.byteorder == ">":
            parts.append("BE")
        if self.bigtiff:
            parts.append("bigtiff")
        for k, v in self.compressionargs.items():
            parts.append(f"{k}={v}")
        return "-".join(parts)


def _cases() -> list[Case]:
    cases: list[Case] = []
    tiles = [(64, 64), (128, 96)]
    # byte-stream codecs without predictor: every dtype and sample count
    lossless = [("none", 1), ("lzw", 5), ("adobe_deflate", 8), ("deflate", 32946), ("zstd", 50000),
                ("packbits", 32773), ("lzma", 34925)]
    n = 0
    for comp, tag in lossless:
        for dtype in ("uint8", "uint16"):
            for samples in (1, 3, 4):
                cases.append(Case(comp, tag, dtype, samples, tile=tiles[n % 2]))
                n += 1
    # horizontal differencing
    for comp, tag in (("lzw", 5), ("adobe_deflate", 8), ("deflate", 32946), ("zstd", 50000)):
        for dtype in ("uint8", "uint16"):
            for samples in (1, 3):
                cases.append(Case(comp, tag, dtype, samples, predictor="horizontal", tile=tiles[n % 2]))
                n += 1
    # float32: floating-point predictor, and none
    for comp, tag in (("lzw", 5), ("adobe_deflate", 8), ("zstd", 50000)):
        for samples in (1, 3):
            cases.append(Case(comp, tag, "float32", samples, predictor="floatingpoint", tile=tiles[n % 2],
                              fill=-2.5))
            n += 1
    cases.append(Case("none", 1, "float32", 1, fill=-2.5))
    cases.append(Case("zstd", 50000, "float32", 3, fill=-2.5, tile=(128, 96)))
    # planar separate (one tile per sample)
    for comp, tag, dtype, samples, pred in (
        ("none", 1, "uint8", 3, None),
        ("lzw", 5, "uint16", 3, "horizontal"),
        ("adobe_deflate", 8, "uint8", 4, None),
        ("zstd", 50000, "uint16", 4, None),
        ("packbits", 32773, "uint8", 3, None),
        ("adobe_deflate", 8, "float32", 3, "floatingpoint"),
    ):
        cases.append(Case(comp, tag, dtype, samples, predictor=pred, planar="separate", tile=tiles[n % 2],
                          fill=-2.5 if dtype == "float32" else 17))
        n += 1
    # JPEG encoded by tifffile: gray; RGB written as YCbCr 4:2:0 (tifffile's default) or 4:4:4; RGB samples
    cases.append(Case("jpeg", 7, "uint8", 1, lossy=True))
    cases.append(Case("jpeg", 7, "uint8", 3, lossy=True, photometric=6))
    cases.append(Case("jpeg", 7, "uint8", 3, lossy=True, photometric=6, tile=(128, 96),
                      compressionargs={"subsampling": (1, 1)}))
    cases.append(Case("jpeg", 7, "uint8", 3, lossy=True, photometric=2, compressionargs={"outcolorspace": "RGB"}))
    # JPEG 2000 (34712): lossless for every dtype/sample count, and one lossy
    for dtype in ("uint8", "uint16"):
        for samples in (1, 3, 4):
            cases.append(Case("jpeg2000", 34712, dtype, samples, tile=tiles[n % 2]))
            n += 1
    cases.append(Case("jpeg2000", 34712, "uint8", 3, lossy=True, compressionargs={"level": 35}))
    # WebP: 8-bit RGB / RGBA, lossless and lossy (alpha is random, so libwebp keeps it)
    for samples in (3, 4):
        cases.append(Case("webp", 50001, "uint8", samples, compressionargs={"lossless": True}))
        cases.append(Case("webp", 50001, "uint8", samples, lossy=True, tile=(128, 96),
                          compressionargs={"lossless": False, "level": 80}))
    return cases


def _layout_cases() -> list[Case]:
    """Byte order x BigTIFF x tiles/strips x planar configuration, for a lossless and a raw codec."""
    cases = []
    for byteorder in ("<", ">"):
        for bigtiff in (False, True):
            for tile in ((128, 96), None):
                cases.append(Case("adobe_deflate", 8, "uint16", 3, predictor="horizontal", tile=tile,
                                  byteorder=byteorder, bigtiff=bigtiff))
                cases.append(Case("none", 1, "uint16", 4, planar="separate", tile=tile, byteorder=byteorder,
                                  bigtiff=bigtiff, fill=1234))
                cases.append(Case("zstd", 50000, "uint8", 3, predictor="horizontal", planar="separate", tile=tile,
                                  byteorder=byteorder, bigtiff=bigtiff))
                cases.append(Case("lzw", 5, "float32", 1, predictor="floatingpoint", tile=tile,
                                  byteorder=byteorder, bigtiff=bigtiff, fill=-2.5))
    # strips of other heights: one row, a divisor of nothing, taller than the image
    for rows in (1, 13, 1000):
        cases.append(Case("zstd", 50000, "uint8", 3, tile=None, rowsperstrip=rows))
    cases.append(Case("packbits", 32773, "uint8", 1, tile=None, rowsperstrip=11, byteorder=">"))
    # strip-based codecs whose last, shorter strip is a smaller image (JPEG, JPEG 2000, WebP)
    cases.append(Case("jpeg", 7, "uint8", 3, tile=None, rowsperstrip=32, lossy=True, photometric=6))
    cases.append(Case("jpeg", 7, "uint8", 1, tile=None, rowsperstrip=24, lossy=True))
    cases.append(Case("jpeg2000", 34712, "uint16", 3, tile=None, rowsperstrip=32))
    cases.append(Case("webp", 50001, "uint8", 3, tile=None, rowsperstrip=32, compressionargs={"lossless": True}))
    cases.append(Case("webp", 50001, "uint8", 4, tile=None, rowsperstrip=32, lossy=True,
                      compressionargs={"lossless": False, "level": 80}))
    return cases


def _planar_separate_cases() -> list[Case]:
    """Planar configuration 2 (one tile or strip per sample) with image codecs, and horizontal differencing
    of four samples, both contiguous and separate (the predictor differences each sample with its own left
    neighbour: a stride of 4 contiguous, of 1 separate)."""
    cases = []
    # JPEG: tifffile encodes each sample plane as a gray JPEG and writes PhotometricInterpretation RGB
    cases.append(Case("jpeg", 7, "uint8", 3, planar="separate", lossy=True, photometric=2))
    cases.append(Case("jpeg", 7, "uint8", 3, planar="separate", lossy=True, photometric=2, tile=(128, 96)))
    cases.append(Case("jpeg", 7, "uint8", 3, planar="separate", lossy=True, photometric=2, tile=None,
                      rowsperstrip=32))
    # JPEG 2000: one single-component code stream per sample and tile, lossless and lossy
    cases.append(Case("jpeg2000", 34712, "uint8", 3, planar="separate"))
    cases.append(Case("jpeg2000", 34712, "uint16", 3, planar="separate", tile=(128, 96), fill=1234))
    cases.append(Case("jpeg2000", 34712, "uint16", 4, planar="separate", fill=1234))
    cases.append(Case("jpeg2000", 34712, "uint8", 3, planar="separate", tile=None, rowsperstrip=32))
    cases.append(Case("jpeg2000", 34712, "uint8", 3, planar="separate", lossy=True, tile=(128, 96),
                      compressionargs={"level": 35}))
    # WebP: tifffile hands webp_encode one-sample tiles, which libwebp cannot hold (write_case skips)
    cases.append(Case("webp", 50001, "uint8", 3, planar="separate", compressionargs={"lossless": True}))
    cases.append(Case("webp", 50001, "uint8", 4, planar="separate", lossy=True,
                      compressionargs={"lossless": False, "level": 80}))
    # predictor 2 with four samples (RGBA), contiguous and separate
    for comp, tag in (("lzw", 5), ("adobe_deflate", 8)):
        for dtype in ("uint8", "uint16"):
            for planar, tile in (("contig", (64, 64)), ("separate", (128, 96))):
                cases.append(Case(comp, tag, dtype, 4, predictor="horizontal", planar=planar, tile=tile))
    cases.append(Case("deflate", 32946, "uint16", 4, predictor="horizontal", planar="separate", tile=None,
                      rowsperstrip=13, fill=1234))
    return cases


CASES = list({c.id: c for c in _cases() + _layout_cases() + _planar_separate_cases()}.values())  # some repeat


def write_case(path, case: Case) -> np.ndarray:
    """Write ``case`` with tifffile; returns the source image (y, x, c)."""
    tfx.require_encoder(case.compression)
    source = tfx.make_image(H, W, case.samples, case.dtype, seed=zlib.crc32(case.id.encode()))
    if case.samples == 4 and case.dtype == "uint8":
        # random alpha: libwebp drops an alpha channel that is all 255
        source[..., 3] = np.random.default_rng(5).integers(0, 256, (H, W), dtype=np.uint8)
    data = source[..., 0] if case.samples == 1 else source
    if case.planar == "separate":
        data = np.moveaxis(source, -1, 0)
    kwargs = {
        "photometric": "minisblack" if case.samples == 1 else "rgb",
        "compression": case.compression if case.compression != "none" else None,
        "predictor": case.predictor,
        "byteorder": case.byteorder,
        "bigtiff": case.bigtiff,
        "metadata": None,
        "compressionargs": dict(case.compressionargs) or None,
    }
    if case.samples > 1:
        kwargs["planarconfig"] = case.planar
    if case.samples == 4:
        kwargs["extrasamples"] = ["unassalpha"]
    if case.tile:
        kwargs["tile"] = case.tile
    else:
        kwargs["rowsperstrip"] = case.rowsperstrip
    try:
        tifffile.imwrite(path, data, **kwargs)
    except ValueError as exc:
        if case.compression == "webp" and case.planar == "separate":
            # tifffile encodes each sample plane alone; imagecodecs.webp_encode takes only 3- or 4-sample images
            pytest.skip(f"tifffile {tifffile.__version__} cannot write planar-separate WebP (webp_encode of a "
                        f"one-sample tile: {exc})")
        raise
    return source


def check_fixture(path, case: Case) -> np.ndarray:
    """The file holds what the case says (tags), and tifffile's decode of it; returns that decode (y, x, c)."""
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        assert int(page.compression) == case.tag
        assert tf.byteorder == case.byteorder
        assert tf.is_bigtiff == case.bigtiff
        assert page.is_tiled == (case.tile is not None)
        assert int(page.planarconfig) == (2 if case.planar == "separate" else 1)
        if case.photometric is not None:
            assert int(page.photometric) == case.photometric
        if case.predictor:
            assert int(page.predictor) == {"horizontal": 2, "floatingpoint": 3}[case.predictor]
        if case.samples == 4:
            assert tuple(int(e) for e in page.extrasamples) == (2,)  # unassociated alpha
    return tfx.tifffile_page(path, 0)


def check_regions(img: CuImage, ref: np.ndarray, *, fill: float, tol: float, tile: tuple[int, int],
                  seed: int, level: int = 0, downsample: int = 1, n_random: int = 10) -> None:
    """read_region of edge, out-of-bounds and random regions of ``level`` equals ``ref`` (its pixels)."""
    height, width = ref.shape[:2]
    for x, y, w, h in tfx.regions(width, height, tile[1], tile[0], seed, n_random):
        got = img.read_region((x * downsample, y * downsample), (w, h), level=level, num_workers=1)
        tfx.assert_close(got, tfx.expected_region(ref, x, y, w, h, fill), tol, f"level {level} region {(x, y, w, h)}")


# -- codecs, predictors, dtypes, samples, planar configuration -------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_generic_tiff_matches_tifffile(case: Case, tmp_path):
    path = tmp_path / "image.tif"
    source = write_case(path, case)
    ref = check_fixture(path, case)
    tol = LOSSY_TOL if case.lossy else 0
    if not case.lossy:
        tfx.assert_close(ref, source, 0, "tifffile's decode of the fixture")  # the fixture is what we wrote
    else:
        assert np.abs(ref.astype(float) - source).mean() < 12, "the lossy fixture does not resemble its source"

    img = CuImage(path)
    assert img.shape == [H, W, case.samples]
    assert img.dtype == np.dtype(case.dtype)
    assert img.vendor == "generic"
    tile = case.tile or (case.rowsperstrip, W)
    assert img.resolutions["level_tile_sizes"] == ((tile[1], min(tile[0], H)),)
    # the whole level with default arguments (threads: one per CPU)
    tfx.assert_close(img.read_region(), ref, tol, "whole level")
    # regions with the default fill of a generic TIFF (0), then with fill= given
    check_regions(img, ref, fill=0, tol=tol, tile=(min(tile[0], H), tile[1]), seed=len(case.id))
    got = img.read_region((-7, H - 20), (40, 35), fill=case.fill)
    tfx.assert_close(got, tfx.expected_region(ref, -7, H - 20, 40, 35, case.fill), tol, "fill= override")
    assert got[0, 0, 0] == np.asarray(case.fill, dtype=case.dtype)


@pytest.mark.parametrize(("compression", "samples"), [("adobe_deflate", 3), ("jpeg", 3), ("jpeg2000", 1), ("lzw", 4)])
def test_tile_larger_than_image(compression: str, samples: int, tmp_path):
    """A level smaller than one tile: the tile is mostly padding, which must never show."""
    tfx.require_encoder(compression)
    source = tfx.make_image(30, 40, samples, np.uint8, seed=9)
    path = tmp_path / "tiny.tif"
    tifffile.imwrite(path, source if samples > 1 else source[..., 0], tile=(64, 128),
                     photometric="rgb" if samples > 1 else "minisblack",
                     compression=compression, metadata=None, extrasamples=["unassalpha"] if samples == 4 else None)
    ref = tfx.tifffile_page(path, 0)
    img = CuImage(path)
    assert img.shape == [30, 40, samples]
    tol = LOSSY_TOL if compression == "jpeg" else 0
    tfx.assert_close(img.read_region(), ref, tol, "whole level")
    check_regions(img, ref, fill=0, tol=tol, tile=(64, 128), seed=10, n_random=3)


# -- JPEG with JPEGTables (abbreviated streams, as in Aperio SVS) --------------------------------------------------
JPEG_TABLES_VARIANTS = {
    # Aperio: RGB samples (no colour transform), no JFIF/Adobe marker, PhotometricInterpretation RGB
    "aperio-rgb": {"samples": 3, "photometric": "rgb", "drop_app": True,
                   "encode": {"level": 90, "colorspace": "RGB", "outcolorspace": "RGB"}},
    # JFIF YCbCr streams in a file that says RGB: the JFIF marker says to convert
    "jfif-in-rgb": {"samples": 3, "photometric": "rgb", "encode": {"level": 90}},
    "ycbcr-420": {"samples": 3, "photometric": "ycbcr", "subsampling": (2, 2), "encode": {"level": 90}},
    "ycbcr-444": {"samples": 3, "photometric": "ycbcr", "subsampling": (1, 1),
                  "encode": {"level": 90, "subsampling": "444"}},
    "gray": {"samples": 1, "photometric": "minisblack", "encode": {"level": 90}},
}


@pytest.mark.skipif(not tfx.codec_available("JPEG8"), reason="imagecodecs was built without JPEG8")
@pytest.mark.parametrize("layout", ["tiles", "strips"])
@pytest.mark.parametrize("variant", sorted(JPEG_TABLES_VARIANTS))
def test_jpeg_tables(variant: str, layout: str, tmp_path):
    spec = dict(JPEG_TABLES_VARIANTS[variant])
    samples = spec.pop("samples")
    source = tfx.make_image(H, W, samples, np.uint8, seed=11)
    path = tmp_path / "jpegtables.tif"
    tile = (64, 64) if layout == "tiles" else None
    with tifffile.TiffWriter(path) as tw:
        extra = {"rowsperstrip": 32} if tile is None else {}
        tfx.write_jpeg_tables_page(tw, source, tile, metadata=None, **spec, **extra)
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        assert page.jpegtables is not None and page.jpegtables[:4] == b"\xff\xd8\xff\xdb"
        offset, count = page.dataoffsets[0], page.databytecounts[0]
        tf.filehandle.seek(offset)
        head = tf.filehandle.read(count)
        assert b"\xff\xdb" not in head[: head.index(b"\xff\xda")], "tile stream is not abbreviated"
    # tifffile decodes the fixture to (nearly) the source: the fixture is valid
    ref = tfx.tifffile_page(path, 0)
    assert ref.shape == (H, W, samples)
    assert np.abs(ref.astype(float) - source).mean() < 6
    img = CuImage(path)
    tfx.assert_close(img.read_region(num_workers=2), ref, LOSSY_TOL, "whole level")
    step = (64, 64) if tile else (32, W)
    check_regions(img, ref, fill=0, tol=LOSSY_TOL, tile=step, seed=3)


@pytest.mark.parametrize("samples", [1, 3])
def test_jpeg_12_bit_reads_as_uint16(samples: int, tmp_path):
    y, x = np.mgrid[0:300, 0:400]
    planes = [(y * 10) % 4096, (x * 9) % 4096, ((x + y) * 5) % 4096][:samples]
    image = np.stack(planes, -1).astype(np.uint16).squeeze()
    path = tmp_path / "jpeg12.tif"
    tifffile.imwrite(path, image, tile=(128, 128), compression="jpeg", bitspersample=12,
                     photometric="rgb" if samples == 3 else "minisblack")
    ref = tifffile.imread(path).reshape(300, 400, samples)
    img = CuImage(path)
    assert img.dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(img.read_region()).reshape(300, 400, samples), ref)
    part = np.asarray(img.read_region((100, 50), (250, 260))).reshape(260, 250, samples)
    want = np.zeros((260, 250, samples), np.uint16)
    want[:250] = ref[50:300, 100:350]
    np.testing.assert_array_equal(part, want)


def test_twelve_bit_samples_without_jpeg_are_refused(tmp_path):
    path = tmp_path / "packed12.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint16), bitspersample=12)  # bit-packed, uncompressed
    assert tifffile.TiffFile(path).pages[0].bitspersample == 12
    with pytest.raises(cucim_like.UnsupportedFormatError, match="12-bit"):
        CuImage(path)


# -- JPEG 2000 flavours of Aperio: 33003 (YCbCr) and 33005 (RGB) ---------------------------------------------------
@pytest.mark.skipif(not tfx.codec_available("JPEG2K"), reason="imagecodecs was built without JPEG2K")
def test_aperio_jpeg2000_ycbcr_33003(tmp_path):
    source = tfx.make_image(H, W, 3, np.uint8, seed=21)
    ycc = tfx.rgb_to_ycbcr(source)
    path = tmp_path / "ycbcr.tif"
    tfx.write_j2k_tiles(path, ycc, (64, 64), 33003)
    raw = tfx.tifffile_page(path, 0)  # tifffile leaves the YCbCr samples unconverted
    tfx.assert_close(raw, ycc, 0, "tifffile's decode of the lossless YCbCr code streams")
    ref = tfx.ycbcr_to_rgb(raw)
    img = CuImage(path)
    assert img.levels[0].codec.name == "jpeg2000"
    got = img.read_region()
    # float32 vs float64 arithmetic may round a value differently: within 1 of the NumPy conversion
    tfx.assert_close(got, ref, 1, "33003 converted to RGB")
    tfx.assert_close(got, source, 2, "33003 vs the RGB source (two roundings)")
    check_regions(img, ref, fill=0, tol=1, tile=(64, 64), seed=4, n_random=4)


@pytest.mark.skipif(not tfx.codec_available("JPEG2K"), reason="imagecodecs was built without JPEG2K")
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_aperio_jpeg2000_rgb_33005(dtype: str, tmp_path):
    source = tfx.make_image(H, W, 3, dtype, seed=22)
    path = tmp_path / "rgb.tif"
    tfx.write_j2k_tiles(path, source, (128, 96), 33005)
    ref = tfx.tifffile_page(path, 0)
    tfx.assert_close(ref, source, 0, "tifffile's decode of lossless RGB code streams")
    img = CuImage(path)
    tfx.assert_close(img.read_region(), ref, 0, "33005 whole level")
    check_regions(img, ref, fill=0, tol=0, tile=(128, 96), seed=5, n_random=4)


# -- pyramids --------------------------------------------------------------------------------------------------
FACTORS = (1, 2, 4)


def _expected_downsample(dims: list[tuple[int, int]], i: int) -> float:
    """OpenSlide's and cuCIM's definition: the mean of the width and height ratios to level 0."""
    (w0, h0), (w, h) = dims[0], dims[i]
    return (w0 / w + h0 / h) / 2


def check_pyramid(img: CuImage, refs: list[np.ndarray], tile: tuple[int, int], fill: float) -> None:
    dims = [(r.shape[1], r.shape[0]) for r in refs]
    res = img.resolutions
    assert res["level_count"] == len(refs)
    assert res["level_dimensions"] == tuple(dims)
    assert res["level_downsamples"] == pytest.approx([_expected_downsample(dims, i) for i in range(len(refs))])
    assert res["level_tile_sizes"] == tuple((tile[1], tile[0]) for _ in refs)
    for i, ref in enumerate(refs):
        tfx.assert_close(img.read_region(level=i, num_workers=2), ref, 0, f"whole level {i}")
        ds = res["level_downsamples"][i]
        assert ds == int(ds)
        check_regions(img, ref, fill=fill, tol=0, tile=tile, seed=30 + i, level=i, downsample=int(ds), n_random=5)


@pytest.mark.parametrize("kind", ["toplevel", "subifds"])
def test_generic_pyramid(kind: str, tmp_path):
    tfx.require_encoder("zlib")
    base = tfx.make_image(H, W, 3, np.uint8, seed=40)
    levels = tfx.pyramid(base, FACTORS)
    path = tmp_path / f"{kind}.tif"
    if kind == "toplevel":
        tfx.write_toplevel_pyramid(path, levels, (64, 64), compression="zlib")
        with tifffile.TiffFile(path) as tf:
            assert len(tf.pages) == len(FACTORS) and not tf.pages.first.subifds
    else:
        tfx.write_subifd_pyramid(path, levels, (64, 64), compression="zlib")
        with tifffile.TiffFile(path) as tf:
            assert len(tf.pages) == 1 and len(tf.pages.first.subifds) == len(FACTORS) - 1
    # independent references: each top-level page, or each level of tifffile's pyramid (SubIFDs)
    refs = [tfx.tifffile_page(path, i) for i in range(3)] if kind == "toplevel" else tfx.tifffile_levels(path)
    for ref, level in zip(refs, levels, strict=True):
        tfx.assert_close(ref, level, 0, "tifffile's decode of the pyramid")
    img = CuImage(path)
    assert img.vendor == "generic"
    check_pyramid(img, refs, (64, 64), fill=0)


@pytest.mark.parametrize("kind", ["toplevel", "subifds"])
def test_generic_pyramid_uneven_downsample(kind: str, tmp_path):
    """Factors that change between levels (1, 3, 7): every shrinking level is a level (as OpenSlide's
    generic-tiff), downsample is the mean of both ratios, and locations are divided by it."""
    tfx.require_encoder("zstd")
    base = tfx.make_image(H, W, 1, np.uint16, seed=41)
    levels = [base, base[::3, ::3], base[::7, ::7]]  # 100x140, 43x60
    path = tmp_path / "uneven.tif"
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(levels):
            sub = {"subifds": len(levels) - 1} if kind == "subifds" and i == 0 else {}
            tw.write(level[..., 0], tile=(32, 32), compression="zstd", metadata=None, subfiletype=int(i > 0), **sub)
    with tifffile.TiffFile(path) as tf:  # independent references: each IFD as tifffile decodes it
        pages = list(tf.pages) if kind == "toplevel" else [tf.pages.first]
        if kind == "subifds":
            for i, offset in enumerate(tf.pages.first.subifds):
                tf.filehandle.seek(offset)
                pages.append(tifffile.TiffPage(tf, (0, i)))
        refs = [p.asarray()[..., np.newaxis] for p in pages]
    for ref, level in zip(refs, levels, strict=True):
        tfx.assert_close(ref, level, 0, "tifffile's decode of the pyramid")
    img = CuImage(path)
    dims = [(r.shape[1], r.shape[0]) for r in refs]
    assert img.resolutions["level_dimensions"] == tuple(dims)
    for i, ref in enumerate(refs):
        ds = img.resolutions["level_downsamples"][i]
        assert ds == pytest.approx(_expected_downsample(dims, i))
        tfx.assert_close(img.read_region(level=i), ref, 0, f"whole level {i}")
        for lx, ly, w, h in ((0, 0, 17, 9), (5, 7, 30, 20), (dims[i][0] - 4, dims[i][1] - 3, 12, 10)):
            # a level-0 location whose division by the downsample lands on (lx, ly)
            loc = (int(np.ceil(lx * ds)), int(np.ceil(ly * ds)))
            assert (int(loc[0] // ds), int(loc[1] // ds)) == (lx, ly)
            got = img.read_region(loc, (w, h), level=i)
            tfx.assert_close(got, tfx.expected_region(ref, lx, ly, w, h, 0), 0, f"level {i} at {(lx, ly)}")


def test_ome_subifd_pyramid(tmp_path):
    tfx.require_encoder("zstd")
    base = tfx.make_image(H, W, 3, np.uint8, seed=42)
    levels = tfx.pyramid(base, FACTORS)
    path = tmp_path / "pyramid.ome.tif"
    meta = {"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.75, "Channel": {"Name": ["rgb"]}}
    tfx.write_subifd_pyramid(path, levels, (128, 96), ome=True, metadata=meta, compression="zstd")
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome and len(tf.series[0].levels) == len(FACTORS)
    refs = tfx.tifffile_levels(path)
    img = CuImage(path)
    assert img.vendor == "ome"
    assert img.spacing() == pytest.approx([0.75, 0.5, 1.0])
    assert img.spacing("XY") == pytest.approx([0.5, 0.75])
    assert img.spacing_units() == ["micrometer", "micrometer", "color"]
    check_pyramid(img, refs, (128, 96), fill=0)


def test_ome_spacing_units_are_converted(tmp_path):
    path = tmp_path / "units.ome.tif"
    data = tfx.make_image(64, 80, 1, np.uint16, seed=43)[..., 0]
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(data, tile=(32, 32), metadata={"axes": "YX", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm",
                                                   "PhysicalSizeY": 0.0003, "PhysicalSizeYUnit": "mm"})
    img = CuImage(path)
    assert img.spacing() == pytest.approx([0.3, 0.25, 1.0])
    tfx.assert_close(img.read_region(), tfx.tifffile_page(path, 0), 0, "OME gray level")


def test_resolution_tags_give_spacing(tmp_path):
    path = tmp_path / "resolution.tif"
    data = tfx.make_image(64, 80, 3, np.uint8, seed=44)
    # 40000 px/cm along x (0.25 um), 20000 px/cm along y (0.5 um)
    tifffile.imwrite(path, data, tile=(32, 32), photometric="rgb", resolution=(40000, 20000),
                     resolutionunit="CENTIMETER", metadata=None)
    img = CuImage(path)
    assert img.spacing() == pytest.approx([0.5, 0.25, 1.0])
    assert img.spacing_units()[:2] == ["micrometer", "micrometer"]
    assert img.metadata["tiff"]["resolution_unit"] == "centimeter"


# -- an SVS-like file ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def svs_file(tmp_path_factory):
    if not tfx.codec_available("JPEG8") or not tfx.codec_available("LZW"):
        pytest.skip("imagecodecs was built without JPEG8 or LZW")
    base = tfx.make_image(H, W, 3, np.uint8, seed=50)
    levels = tfx.pyramid(base, FACTORS)
    path = tmp_path_factory.mktemp("svs") / "slide.svs"
    tfx.write_svs(path, levels, (64, 64), thumbnail=tfx.make_image(75, 105, 3, np.uint8, seed=51),
                  label=tfx.make_image(40, 50, 3, np.uint8, seed=52),
                  macro=tfx.make_image(60, 150, 3, np.uint8, seed=53), mpp=0.25)
    with tifffile.TiffFile(path) as tf:
        assert tf.is_svs
        assert [s.name for s in tf.series] == ["Baseline", "Thumbnail", "Label", "Macro"]
        assert len(tf.series[0].levels) == len(FACTORS)
        assert tf.pages.first.jpegtables is not None
    refs = tfx.tifffile_levels(path)
    for ref, level in zip(refs, levels, strict=True):
        assert np.abs(ref.astype(float) - level).mean() < 6  # tifffile decodes the fixture
    return path, refs


def test_svs_metadata(svs_file):
    path, _ = svs_file
    img = CuImage(path)
    assert img.vendor == "aperio"
    assert img.metadata["aperio"]["MPP"] == "0.25"
    assert img.metadata["aperio"]["AppMag"] == "20"
    assert img.metadata["cucim"]["vendor"] == "aperio"
    assert img.spacing() == [0.25, 0.25, 1.0]
    assert img.spacing_units() == ["micrometer", "micrometer", "color"]
    assert img.associated_images == {"label", "macro", "thumbnail"}
    assert img.raw_metadata.startswith("Aperio Image Library")


def test_svs_pixels(svs_file):
    path, refs = svs_file
    img = CuImage(path)
    dims = [(r.shape[1], r.shape[0]) for r in refs]
    assert img.resolutions["level_dimensions"] == tuple(dims)
    assert img.resolutions["level_downsamples"] == (1.0, 2.0, 4.0)
    for i, ref in enumerate(refs):
        tfx.assert_close(img.read_region(level=i, num_workers=2), ref, LOSSY_TOL, f"whole level {i}")
        # outside the slide is white for Aperio
        check_regions(img, ref, fill=255, tol=LOSSY_TOL, tile=(64, 64), seed=60 + i, level=i,
                      downsample=FACTORS[i], n_random=4)
    got = img.read_region((-4, -4), (8, 8), fill=0)
    assert (got[:4] == 0).all() and (got[:, :4] == 0).all()


@pytest.mark.parametrize(("name", "page"), [("thumbnail", 1), ("label", 4), ("macro", 5)])
def test_svs_associated_images(svs_file, name: str, page: int):
    path, _ = svs_file
    img = CuImage(path)
    ref = tfx.tifffile_page(path, page)
    tfx.assert_close(img.associated_image(name), ref, LOSSY_TOL, f"associated image {name}")


def test_svs_unknown_associated_image(svs_file):
    path, _ = svs_file
    img = CuImage(path)
    with pytest.raises(KeyError):
        img.associated_image("overview")
    with pytest.raises(cucim_like.UnknownAssociatedImageError):
        img.associated_image("Label")


# -- a Philips-like TIFF ---------------------------------------------------------------------------------------
def test_philips_tiff(tmp_path):
    tfx.require_encoder("zlib")
    base = tfx.make_image(H, W, 3, np.uint8, seed=70)
    levels = tfx.pyramid(base, FACTORS)
    path = tmp_path / "philips.tiff"
    label = tfx.make_image(40, 48, 3, np.uint8, seed=71)
    macro = tfx.make_image(48, 120, 3, np.uint8, seed=72)
    tfx.write_philips(path, levels, (64, 64), spacing_mm=(0.00026, 0.00025), label=label, macro=macro)
    with tifffile.TiffFile(path) as tf:
        assert tf.is_philips
        assert [lvl.shape[:2] for lvl in tf.series[0].levels] == [lvl.shape[:2] for lvl in levels]
        # the stored sub-levels are padded to whole tiles; tifffile crops them
        assert tf.pages[1].tags.valueof(256) == 256
    refs = tfx.tifffile_levels(path)
    for ref, level in zip(refs, levels, strict=True):
        tfx.assert_close(ref, level, 0, "tifffile's decode of the Philips pyramid")
    img = CuImage(path)
    assert img.vendor == "philips"
    assert img.spacing() == pytest.approx([0.26, 0.25, 1.0])
    assert img.spacing_units() == ["micrometer", "micrometer", "color"]
    assert img.metadata["philips"]["DICOM_MANUFACTURER"] == "PHILIPS"
    assert img.associated_images == {"label", "macro"}
    tfx.assert_close(img.associated_image("label"), label, 0, "label")
    tfx.assert_close(img.associated_image("macro"), macro, 0, "macro")
    # fill 255, and the padding of the sub-levels (value 7) never shows
    check_pyramid(img, refs, (64, 64), fill=255)


# -- read_region arguments -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rgb16_file(tmp_path_factory):
    tfx.require_encoder("zlib")
    path = tmp_path_factory.mktemp("args") / "rgb16.tif"
    source = tfx.make_image(H, W, 3, np.uint16, seed=80)
    # 16x16 tiles: 513 tiles, enough for the executor's coalesced multi-read path
    tifffile.imwrite(path, source, tile=(16, 16), photometric="rgb", compression="zlib", predictor=True,
                     metadata=None)
    return path, tfx.tifffile_page(path, 0)


@pytest.mark.parametrize("num_workers", [1, 2])
def test_whole_level_read(rgb16_file, num_workers: int):
    path, ref = rgb16_file
    with CuImage(path) as img:
        tfx.assert_close(img.read_region(num_workers=num_workers), ref, 0, "whole level")
        tfx.assert_close(img.read_region((0, 0), (W, H), num_workers=num_workers), ref, 0, "explicit whole level")


def test_read_into_buf(rgb16_file):
    path, ref = rgb16_file
    img = CuImage(path)
    buf = np.full((50, 70, 3), 9, dtype=np.uint16)
    out = img.read_region((W - 40, 100), (70, 50), buf=buf, num_workers=2)
    want = tfx.expected_region(ref, W - 40, 100, 70, 50, 0)
    tfx.assert_close(buf, want, 0, "buf after read_region")
    assert np.shares_memory(out, buf)
    tfx.assert_close(out, want, 0, "returned array")
    with pytest.raises(cucim_like.InvalidArgumentError):
        img.read_region((0, 0), (70, 50), buf=np.empty((50, 70, 3), np.uint8))


@pytest.mark.parametrize("kind", [np.int64, np.int32, "scalars"])
def test_numpy_location_and_size(rgb16_file, kind):
    path, ref = rgb16_file
    img = CuImage(path)
    x, y, w, h = 123, 77, 91, 64
    if kind == "scalars":
        loc, size = (np.int64(x), np.int32(y)), [np.uint16(w), np.int8(h)]
    else:
        loc, size = np.array([x, y], dtype=kind), np.array([w, h], dtype=kind)
    tfx.assert_close(img.read_region(loc, size), tfx.expected_region(ref, x, y, w, h, 0), 0, f"{kind} arguments")
