"""``device="cuda"`` for every read mode and codec, run twice: on the host stand-in (NumPy arrays,
nvImageCodec's CPU backend, the NumPy reference of the placement kernel: runs everywhere, CI included) and on
the GPU (``gpu`` marker: CuPy, kvikio, nvImageCodec on the device, the placement kernel). Covered: stream
preparation (JPEG tables, photometrics, DICOM fragments), batch decoding and its error mapping, the CPU
fallback for codecs nvImageCodec does not take, waves, fills, the device cache, the fused transform, and
``read_region``'s shapes for every read mode.

Expected pixels come from the CPU executor (the reference executor, itself checked against tifffile and
pydicom); transforms are checked against NumPy arithmetic written here.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import cucim_like
from cucim_like import CuImage, OutputTransform
from cucim_like.cuda import backends, executor
from tests.formats import dicom_fixtures as dfx
from tests.formats import precomputed_fixtures as pfx
from tests.formats import tiff_fixtures as tfx

from .conftest import requires_gpu

nvimgcodec = pytest.importorskip("nvidia.nvimgcodec", reason="nvImageCodec (its CPU backend) is not installed")

H, W = 300, 420


@pytest.fixture(params=["host", pytest.param("gpu", marks=pytest.mark.gpu)])
def host_cuda(request, monkeypatch):
    """device="cuda" served by the host backend, or by the GPU (skipped without one); yields which."""
    if request.param == "host":
        monkeypatch.setattr("cucim_like.cuda.require_cuda", lambda path=None: None)
        monkeypatch.setattr(backends, "backend_for", lambda device: backends.HostBackend())
    else:
        requires_gpu()
    cucim_like.device_cache(memory_capacity=64)
    yield request.param
    cucim_like.device_cache(memory_capacity=0)


@pytest.fixture
def host_only(monkeypatch):
    """The host backend only: for behaviour that depends on nvImageCodec's CPU decoder (which streams it
    refuses), not on the executor."""
    monkeypatch.setattr("cucim_like.cuda.require_cuda", lambda path=None: None)
    monkeypatch.setattr(backends, "backend_for", lambda device: backends.HostBackend())
    cucim_like.device_cache(memory_capacity=64)
    yield "host"
    cucim_like.device_cache(memory_capacity=0)


def host(arr):
    """A read's result as NumPy, checking it lives where device="cuda" promised (CuPy on the GPU)."""
    if isinstance(arr, np.ndarray):
        return arr
    import cupy

    assert isinstance(arr, cupy.ndarray)
    return cupy.asnumpy(arr)


def _write(kind: str, directory) -> str:
    """One fixture file of ``kind``; returns its path."""
    path = directory / f"{kind}.tif"
    base = tfx.make_image(H, W, 3, "uint8", seed=3)
    if kind == "jpeg-ycbcr":
        tifffile.imwrite(path, base, tile=(64, 64), compression="jpeg", photometric="rgb")
    elif kind == "jpeg-rgb":
        tifffile.imwrite(path, base, tile=(128, 96), compression="jpeg", photometric="rgb",
                         compressionargs={"outcolorspace": "RGB"})
    elif kind == "jpeg-gray":
        tifffile.imwrite(path, base[..., 0], tile=(64, 64), compression="jpeg", photometric="minisblack")
    elif kind in ("jpeg-tables-rgb", "jpeg-tables-ycbcr"):
        with tifffile.TiffWriter(path) as tw:
            tfx.write_jpeg_tables_page(tw, base, (64, 64), photometric=kind.rsplit("-", 1)[1],
                                       encode={"level": 90})
    elif kind == "jpeg-strips":
        with tifffile.TiffWriter(path) as tw:
            tfx.write_jpeg_tables_page(tw, base, None, photometric="ycbcr", rowsperstrip=32)
    elif kind == "j2k-u8":
        tifffile.imwrite(path, base, tile=(64, 64), compression="jpeg2000", compressionargs={"level": 0})
    elif kind == "j2k-u16":
        tifffile.imwrite(path, tfx.make_image(H, W, 1, "uint16", seed=4)[..., 0], tile=(64, 64),
                         compression="jpeg2000", compressionargs={"level": 0})
    elif kind == "aperio-33003":
        tfx.write_j2k_tiles(path, tfx.rgb_to_ycbcr(base), (64, 64), 33003)
    elif kind == "aperio-33005":
        tfx.write_j2k_tiles(path, base, (64, 64), 33005)
    elif kind == "deflate-u16":  # CPU fallback
        tifffile.imwrite(path, tfx.make_image(H, W, 3, "uint16", seed=5), tile=(64, 64), compression="zlib")
    elif kind == "zstd-f32":  # CPU fallback, float input to the kernel
        tifffile.imwrite(path, tfx.make_image(H, W, 1, "float32", seed=6)[..., 0], tile=(64, 64),
                         compression="zstd")
    elif kind == "webp":
        tifffile.imwrite(path, base, tile=(64, 64), compression="webp", compressionargs={"lossless": True})
    elif kind == "pyramid-jpeg":
        tfx.write_subifd_pyramid(path, tfx.pyramid(base, (1, 2, 4)), (64, 64), compression="jpeg")
    else:
        raise AssertionError(kind)
    return str(path)


KINDS = ["jpeg-ycbcr", "jpeg-rgb", "jpeg-gray", "jpeg-tables-rgb", "jpeg-tables-ycbcr", "jpeg-strips", "j2k-u8",
         "j2k-u16", "aperio-33003", "aperio-33005", "deflate-u16", "zstd-f32", "webp", "pyramid-jpeg"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cuda-host")
    out = {}
    for kind in KINDS:
        try:
            out[kind] = _write(kind, directory)
        except (ValueError, TypeError, NotImplementedError) as exc:  # an imagecodecs build without an encoder
            out[kind] = exc
    return out


def _path(files, kind):
    value = files[kind]
    if isinstance(value, Exception):
        pytest.skip(f"cannot write {kind}: {value}")
    return value


# Lossy codecs: on the host, the same libjpeg-turbo/OpenJPEG underneath: at most a rounding step, on average
# nearly none. On the GPU, nvJPEG's IDCT and chroma upsampling differ slightly from libjpeg-turbo's.
LOSSY = {"host": (1, 0.01), "gpu": (8, 0.5)}


def _assert_same(got, want, lossy: bool, what: str, where: str = "host") -> None:
    got = host(got)
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape)
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    if lossy:
        worst, mean = LOSSY[where]
        assert diff.max() <= worst and diff.mean() < mean, (what, diff.max(), diff.mean())
    else:
        assert diff.max() == 0, (what, diff.max())


REGIONS = [((0, 0), (W, H)), ((37, 21), (150, 99)), ((-30, -20), (100, 80)), ((W - 50, H - 40), (120, 90)),
           ((W + 10, 5), (20, 20))]


@pytest.mark.parametrize("kind", KINDS)
def test_regions_match_the_cpu_executor(files, kind, host_cuda):
    img = CuImage(_path(files, kind))
    lossy = "jpeg" in kind or kind == "webp"
    for level in range(img.resolutions["level_count"]):
        for loc, size in REGIONS:
            want = img.read_region(loc, size, level=level, fill=17)
            got = img.read_region(loc, size, level=level, device="cuda", fill=17)
            _assert_same(got, want, lossy, f"{kind} level {level} {loc} {size}", host_cuda)
        _assert_same(img.read_region(level=level, device="cuda"), img.read_region(level=level), lossy,
                     f"{kind} level {level} whole", host_cuda)


@pytest.mark.parametrize("kind", ["jpeg-ycbcr", "aperio-33003", "deflate-u16"])
def test_batches_match_the_cpu_executor(files, kind, host_cuda):
    img = CuImage(_path(files, kind))
    rng = np.random.default_rng(1)
    locs = np.stack([rng.integers(-20, W - 40, 23), rng.integers(-20, H - 40, 23)], axis=1)
    got = list(img.read_region(locs, (48, 40), batch_size=5, device="cuda"))
    want = list(img.read_region(locs, (48, 40), batch_size=5))
    assert [b.shape for b in got] == [b.shape for b in want] and got[0].shape == (5, 40, 48, 3)
    for g, w in zip(got, want, strict=True):
        _assert_same(g, w, kind.startswith("jpeg"), kind, host_cuda)


def test_many_waves_and_partial_tile_decoding(files, host_cuda, monkeypatch):
    img = CuImage(_path(files, "jpeg-ycbcr"))
    want = img.read_region()
    monkeypatch.setitem(cucim_like.cuda.OPTIONS, "wave_tiles", 3)
    cucim_like.device_cache(memory_capacity=0)
    _assert_same(img.read_region(device="cuda"), want, True, "waves of 3 tiles", host_cuda)
    # batches decode only the part of a tile a patch needs (nvImageCodec regions)
    calls = []
    real = executor.decode_batch

    def spy(streams, regions, **kw):
        calls.append(regions)
        return real(streams, regions, **kw)

    monkeypatch.setattr(executor, "decode_batch", spy)
    batch = next(iter(img.read_region([(10, 10), (200, 130)], (20, 20), batch_size=2, device="cuda")))
    assert any(r is not None for regions in calls for r in (regions or []))
    _assert_same(batch, np.stack([want[10:30, 10:30], want[130:150, 200:220]]), True, "region decode", host_cuda)


TRANSFORMS = [
    OutputTransform(),
    OutputTransform(dtype="float32"),
    OutputTransform(dtype="float16", layout="CHW", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    OutputTransform(dtype="float32", layout="chw", mean=0.5, std=0.25),
    OutputTransform(dtype="uint8", layout="CHW"),
    OutputTransform(dtype="int16", mean=(10, 20, 30), std=(0.5, 2, 4), scale=1.0),
]


def _expected(rgb: np.ndarray, t: OutputTransform, batch: bool) -> np.ndarray:
    """The transform written out with NumPy: (x * scale - mean) / std in float32, cast like the kernel."""
    x = rgb.astype(np.float32)
    normalise = t.mean is not None or t.std is not None
    scale = t.scale if t.scale is not None else (1 / 255 if normalise else 1.0)
    mean = np.float32(0) if t.mean is None else np.asarray(t.mean, np.float32)
    std = np.float32(1) if t.std is None else np.asarray(t.std, np.float32)
    y = x * (np.float32(scale) / std) + (-mean / std)
    dtype = np.dtype(t.dtype or rgb.dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        y = np.clip(np.sign(y) * np.floor(np.abs(y) + 0.5), info.min, info.max)
    y = y.astype(dtype)
    if t.layout.upper() == "CHW":
        y = np.moveaxis(y, -1, 1 if batch else 0)
    return y


@pytest.mark.parametrize("t", TRANSFORMS, ids=lambda t: f"{t.dtype}-{t.layout}-{t.mean is not None}")
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_transform_matches_numpy(files, t, device, host_cuda):
    img = CuImage(_path(files, "j2k-u8"))
    rgb = img.read_region((-10, 30), (130, 70), fill=255)
    got = host(img.read_region((-10, 30), (130, 70), device=device, transform=t, fill=255))
    want = _expected(rgb, t, False)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-3 if want.dtype == np.float16
                               else 0, atol=1e-6)
    locs = [(0, 0), (100, 50), (W - 10, H - 10)]
    batch = host(next(iter(img.read_region(locs, (32, 24), batch_size=3, device=device, transform=t, fill=255))))
    ref = np.stack([img.read_region(loc, (32, 24), fill=255) for loc in locs])
    want = _expected(ref, t, True)
    assert batch.shape == want.shape and batch.dtype == want.dtype
    np.testing.assert_allclose(batch.astype(np.float64), want.astype(np.float64),
                               rtol=1e-3 if want.dtype == np.float16 else 0, atol=1e-6)


def test_bad_transforms_are_typed(files, host_cuda):
    img = CuImage(_path(files, "jpeg-ycbcr"))
    for bad in (OutputTransform(layout="HCW"), OutputTransform(mean=(1, 2)), OutputTransform(std=0),
                OutputTransform(dtype="complex64")):
        with pytest.raises(cucim_like.InvalidArgumentError):
            img.read_region((0, 0), (8, 8), device="cuda", transform=bad)
    with pytest.raises(cucim_like.InvalidArgumentError):
        img.read_region((0, 0), (8, 8), transform={"dtype": "float32"})
    with pytest.raises(cucim_like.InvalidArgumentError, match="buf"):
        img.read_region((0, 0), (8, 8), device="cuda", buf=np.empty((8, 8, 3), np.uint8))


def test_device_cache_counts_hits_and_holds_bytes(files, host_cuda):
    img = CuImage(_path(files, "jpeg-ycbcr"))
    cache = cucim_like.device_cache(memory_capacity=64)
    first = img.read_region((0, 0), (128, 128), device="cuda")
    assert cache.size == 4 and cache.miss_count == 4 and cache.hit_count == 0
    assert cache.memory_size == 4 * 64 * 64 * 3
    second = img.read_region((0, 0), (128, 128), device="cuda")
    assert cache.hit_count == 4 and cache.miss_count == 4
    np.testing.assert_array_equal(host(first), host(second))
    small = cucim_like.device_cache(memory_capacity=64 * 64 * 3 * 2 / 2**20)  # two tiles
    img.read_region((0, 0), (256, 64), device="cuda")  # four tiles: more than the cache holds, none kept
    assert small.size == 0
    img.read_region((0, 0), (128, 64), device="cuda")
    img.read_region((128, 0), (128, 64), device="cuda")  # evicts the first two
    assert small.size == 2 and small.memory_size == 2 * 64 * 64 * 3
    img.read_region((128, 0), (128, 64), device="cuda")
    assert small.hit_count == 2


def _jpeg_tiff(path, tiles: list[bytes]) -> str:
    """A 128 x 128 RGB TIFF of four pre-compressed 64 x 64 JPEG tiles."""
    tifffile.imwrite(path, iter(tiles), shape=(128, 128, 3), dtype=np.uint8, tile=(64, 64), compression=7,
                     photometric="rgb")
    return str(path)


def _good_tiles() -> list[bytes]:
    return [bytes(tfx.imagecodecs.jpeg8_encode(tfx.make_image(64, 64, 3, "uint8", seed=i), level=90))
            for i in range(4)]


def test_undecodable_tile_is_a_decode_error_naming_it(tmp_path, host_only):
    tiles = _good_tiles()
    # its tables stripped: nvImageCodec returns None at its position and the CPU decoder refuses it too
    tiles[3] = tfx.split_jpeg(tiles[3])[1]
    img = CuImage(_jpeg_tiff(tmp_path / "bad.tif", tiles))
    _assert_same(img.read_region((0, 0), (128, 64), device="cuda"), img.read_region((0, 0), (128, 64)), True,
                 "the good tiles still read")
    with pytest.raises(cucim_like.DecodeError) as info:
        img.read_region(device="cuda")
    assert info.value.tile == (1, 1) and "bad.tif" in str(info.value) and isinstance(info.value, ValueError)


def test_tile_nvimagecodec_refuses_is_decoded_on_the_cpu(tmp_path, host_only, monkeypatch):
    tiles = _good_tiles()
    tiles[1] = tiles[1][: len(tiles[1]) // 2]  # truncated: nvImageCodec gives None, libjpeg decodes what is there
    img = CuImage(_jpeg_tiff(tmp_path / "short.tif", tiles))
    fallbacks = []
    real = executor.CudaRead.cpu_decode
    monkeypatch.setattr(executor.CudaRead, "cpu_decode", lambda self, tile, data: fallbacks.append(tile) or
                        real(self, tile, data))
    _assert_same(img.read_region(device="cuda"), img.read_region(), True, "truncated tile")
    assert fallbacks == [1]


def test_damaged_header_is_refused_before_decoding(tmp_path, host_cuda):
    tiles = _good_tiles()
    tiles[2] = tiles[2][:2] + b"\xff\x00\x00\x00" + tiles[2][6:]
    with pytest.raises(cucim_like.DecodeError) as info:
        CuImage(_jpeg_tiff(tmp_path / "header.tif", tiles)).read_region(device="cuda")
    assert info.value.tile == (1, 0)


def test_wrong_size_stream_is_refused(tmp_path, host_cuda):
    path = tmp_path / "size.tif"
    small = bytes(tfx.imagecodecs.jpeg8_encode(tfx.make_image(32, 32, 3, "uint8")))
    big = bytes(tfx.imagecodecs.jpeg8_encode(tfx.make_image(64, 64, 3, "uint8")))
    tifffile.imwrite(path, iter([big, small, big, big]), shape=(128, 128, 3), dtype=np.uint8, tile=(64, 64),
                     compression=7, photometric="rgb")
    with pytest.raises(cucim_like.DecodeError, match="the tile is 64x64x3") as info:
        CuImage(str(path)).read_region(device="cuda")
    assert info.value.tile == (0, 1)


def test_dicom_wsi_jpeg_with_fragments(tmp_path, host_cuda):
    fx = dfx.write_wsi(tmp_path / "wsi", codec="jpeg", levels=2, fragments_per_frame=2)
    img = CuImage(str(tmp_path / "wsi"))
    for level in range(2):
        _assert_same(img.read_region(level=level, device="cuda"), img.read_region(level=level), True,
                     f"dicom level {level}", host_cuda)
    assert fx.paths


def test_sparse_dicom_missing_tiles_fill(tmp_path, host_cuda):
    dfx.write_wsi(tmp_path / "sparse", codec="jpeg", sparse=True, missing_tiles=[(1, 1), (2, 0)])
    img = CuImage(str(tmp_path / "sparse"))
    _assert_same(img.read_region(device="cuda", fill=3), img.read_region(fill=3), True, "sparse", host_cuda)


def test_volumes_and_chunk_stores(tmp_path, host_cuda):
    vol = np.random.default_rng(2).integers(0, 60000, (20, 40, 50, 1), dtype=np.uint16)
    pfx.write_volume(tmp_path / "pc", [vol], chunk=(16, 16, 8), drop={(0, 1, 1, 1)})
    img = CuImage(str(tmp_path / "pc"))
    want = img.read_region((-3, 5, 2), (45, 30, 15), fill=7)
    got = img.read_region((-3, 5, 2), (45, 30, 15), device="cuda", fill=7)
    _assert_same(got, want, False, "precomputed region", host_cuda)
    t = OutputTransform(dtype="float32", layout="CHW", scale=1 / 65535)
    got = host(img.read_region((0, 0, 0), (50, 40, 20), device="cuda", transform=t))
    assert got.shape == (20, 40, 50)  # dims ZYX: no channel axis to move
    plain = img.read_region((0, 0, 0), (50, 40, 20))
    assert (plain[8:16, 16:32, 16:32] == 0).all()  # the dropped chunk reads as fill
    np.testing.assert_allclose(got, plain * np.float32(1 / 65535), rtol=1e-6)
    locs = [(0, 0, 0), (10, 10, 5), (40, 30, 14)]
    got = list(img.read_region(locs, (16, 16, 8), batch_size=3, device="cuda"))
    want = list(img.read_region(locs, (16, 16, 8), batch_size=3))
    assert got[0].shape == (3, 8, 16, 16)
    _assert_same(got[0], want[0], False, "volume batch", host_cuda)


@pytest.mark.parametrize("dtype", ["uint32", "int32", "int8"])
def test_dtypes_without_a_kernel_read_on_the_cpu_and_upload(tmp_path, host_cuda, dtype):
    vol = (np.random.default_rng(4).standard_normal((10, 20, 30, 2)) * 100).astype(dtype)
    pfx.write_volume(tmp_path / "odd", [vol], chunk=(8, 8, 4))
    img = CuImage(str(tmp_path / "odd"))
    got = img.read_region((3, 2, 1), (20, 15, 6), device="cuda")
    _assert_same(got, img.read_region((3, 2, 1), (20, 15, 6)), False, dtype, host_cuda)
    t = OutputTransform(dtype="float32", layout="CHW", mean=(1, 2), std=(3, 4))
    got = host(img.read_region((3, 2, 1), (20, 15, 6), device="cuda", transform=t))
    want = np.moveaxis(((vol[1:7, 2:17, 3:23].astype(np.float32) - [1, 2]) / [3, 4]).astype(np.float32), -1, 0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_volume_channels_first_with_channels(tmp_path, host_cuda):
    vol = np.random.default_rng(3).integers(0, 255, (12, 20, 24, 3), dtype=np.uint8)
    pfx.write_volume(tmp_path / "rgb", [vol], chunk=(8, 8, 4))
    img = CuImage(str(tmp_path / "rgb"))
    t = OutputTransform(layout="CHW")
    got = host(img.read_region((2, 3, 1), (16, 10, 6), device="cuda", transform=t))
    np.testing.assert_array_equal(got, np.moveaxis(vol[1:7, 3:13, 2:18], -1, 0))
    batch = next(iter(img.read_region([(0, 0, 0), (4, 4, 4)], (8, 8, 4), batch_size=2, device="cuda",
                                      transform=t)))
    want = np.stack([vol[0:4, 0:8, 0:8], vol[4:8, 4:12, 4:12]]).transpose(0, 4, 1, 2, 3)
    np.testing.assert_array_equal(host(batch), want)
    picked = img.read_region((0, 0, 0), (8, 8, 4), device="cuda", c=[2, 0], transform=t)
    np.testing.assert_array_equal(host(picked), np.moveaxis(vol[0:4, 0:8, 0:8][..., [2, 0]], -1, 0))


def test_progress_counts_every_tile(files, host_cuda):
    img = CuImage(_path(files, "jpeg-ycbcr"))
    done = []
    img.read_region(device="cuda", progress=done.append)
    assert sum(done) == img.levels[0].grid[-1] * img.levels[0].grid[-2]


def test_associated_image_on_device(files, host_cuda):
    img = CuImage(_path(files, "jpeg-ycbcr"))
    with pytest.raises(cucim_like.UnknownAssociatedImageError):
        img.associated_image("label", device="cuda")


def test_transform_of_picked_channels_takes_their_count(tmp_path, host_cuda):
    vol = np.random.default_rng(5).integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    pfx.write_volume(tmp_path / "pick", [vol], chunk=(8, 8, 4))
    img = CuImage(str(tmp_path / "pick"))
    t = OutputTransform(dtype="float32", mean=(1, 2), std=(2, 4), scale=1.0)
    for device in ("cpu", "cuda"):
        got = host(img.read_region((0, 0, 0), (8, 8, 4), device=device, c=[2, 0], transform=t))
        want = ((vol[..., [2, 0]].astype(np.float32) - [1, 2]) / [2, 4]).astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-6)
