"""Neuroglancer precomputed volumes: every encoding, dtype, channel count, offset, clipped edge, gzip, shard
layout and missing chunk, compared with a reference assembled by NumPy from the same chunks (decoded by the
encoders' own libraries where the encoding is lossy)."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest

import cucim_like
from cucim_like.errors import CorruptFileError, DecodeError, MissingChunkError, UnsupportedFormatError

from .precomputed_fixtures import chunk_boxes, downsample, morton, sample_volume, write_volume

pytest.importorskip("fpzip")
pytest.importorskip("compressed_segmentation")

SHARDINGS = {
    "murmur-gzip": {"preshift_bits": 1, "hash": "murmurhash3_x86_128", "minishard_bits": 2, "shard_bits": 2,
                    "minishard_index_encoding": "gzip", "data_encoding": "gzip"},
    "identity-raw": {"preshift_bits": 0, "hash": "identity", "minishard_bits": 1, "shard_bits": 1,
                     "minishard_index_encoding": "raw", "data_encoding": "raw"},
    "one-shard": {"preshift_bits": 0, "hash": "identity", "minishard_bits": 0, "shard_bits": 0,
                  "minishard_index_encoding": "raw", "data_encoding": "raw"},
}

CASES = [  # encoding, dtype, channels
    ("raw", "uint8", 1), ("raw", "uint16", 2), ("raw", "uint32", 1), ("raw", "uint64", 1), ("raw", "int8", 1),
    ("raw", "int16", 3), ("raw", "int32", 1), ("raw", "float32", 3),
    ("compressed_segmentation", "uint32", 1), ("compressed_segmentation", "uint64", 2),
    ("fpzip", "float32", 1), ("fpzip", "float32", 3), ("kempressed", "float32", 3),
    ("jpeg", "uint8", 1), ("jpeg", "uint8", 3),
]


def expected(vol: np.ndarray, encoding: str, chunk) -> np.ndarray:
    """What a faithful decoder returns for ``vol`` stored with ``encoding``: kempressed keeps cloud-volume's
    float32 rounding of (2 + v) - 2; jpeg chunks are decoded one by one by imagecodecs."""
    if encoding == "kempressed":
        return (np.float32(2.0) + vol) - np.float32(2.0)
    if encoding != "jpeg":
        return vol
    import imagecodecs

    from .precomputed_fixtures import encode_chunk

    out = np.empty_like(vol)
    z, y, x, _ = vol.shape
    for _, (x0, x1), (y0, y1), (z0, z1) in chunk_boxes((x, y, z), chunk):
        block = vol[z0:z1, y0:y1, x0:x1]
        img = imagecodecs.jpeg8_decode(encode_chunk(block, "jpeg"))
        out[z0:z1, y0:y1, x0:x1] = img.reshape(block.shape)
    return out


def as4d(a: np.ndarray) -> np.ndarray:
    return a if a.ndim == 4 else a[..., None]


@pytest.mark.parametrize("layout", ["files", "gzip", "murmur-gzip", "identity-raw"])
@pytest.mark.parametrize("encoding,dtype,channels", CASES)
def test_whole_scales_and_regions(tmp_path, encoding, dtype, channels, layout):
    vol = sample_volume((19, 37, 45, channels), dtype, seed=len(encoding) + channels)
    chunk = (16, 16, 8)
    write_volume(tmp_path, [vol, downsample(vol)], encoding=encoding, chunk=chunk, voxel_offset=(6, 4, 2),
                 gz=layout == "gzip", sharding=SHARDINGS.get(layout))
    ref0 = expected(vol, encoding, chunk)
    ref1 = expected(downsample(vol), encoding, chunk)
    with cucim_like.CuImage(str(tmp_path)) as img:
        assert img.dims == ("ZYX" if channels == 1 else "ZYXC")
        assert img.shape[:3] == [19, 37, 45]
        assert img.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(as4d(img.read_region()), ref0)
        np.testing.assert_array_equal(as4d(img.read_region(level=1)), ref1)
        # a region across chunk edges, partly outside the volume (fill 0)
        got = as4d(img.read_region((30, 20, 10), (24, 20, 12)))
        want = np.zeros((12, 20, 24, channels), dtype)
        want[:9, :17, :15] = ref0[10:, 20:, 30:]
        np.testing.assert_array_equal(got, want)
        # level 1 with level-0 coordinates (downsample 2 in x and y, 1 in z)
        got = as4d(img.read_region((10, 8, 3), (9, 7, 5), level=1))
        np.testing.assert_array_equal(got, ref1[3:8, 4:11, 5:14])


def test_kempressed_matches_cloud_volume_formula_bit_for_bit(tmp_path):
    import fpzip

    vol = sample_volume((9, 20, 30, 3), "float32", seed=4) * np.float32(1e-3)
    write_volume(tmp_path, [vol], encoding="kempressed", chunk=(16, 16, 8))
    with cucim_like.CuImage(str(tmp_path)) as img:
        got = img.read_region()
    key = json.loads((tmp_path / "info").read_text())["scales"][0]["key"]
    for _, (x0, x1), (y0, y1), (z0, z1) in chunk_boxes((30, 20, 9), (16, 16, 8)):
        stream = (tmp_path / key / f"{x0}-{x1}_{y0}-{y1}_{z0}-{z1}").read_bytes()
        ref = np.swapaxes(fpzip.decompress(stream, order="F"), 3, 2) - 2.0  # (x, y, z, c), cloud-volume's way
        assert ref.dtype == np.float32
        np.testing.assert_array_equal(got[z0:z1, y0:y1, x0:x1].view(np.uint32),
                                      ref.transpose(2, 1, 0, 3).view(np.uint32))


@pytest.mark.parametrize("layout", ["files", "murmur-gzip"])
def test_missing_chunks_fill_or_raise(tmp_path, layout):
    vol = sample_volume((16, 32, 32, 1), "uint16") + 1
    write_volume(tmp_path, [vol], chunk=(16, 16, 8), drop={(0, 1, 0, 1)}, sharding=SHARDINGS.get(layout))
    want = vol.copy()
    want[8:16, 0:16, 16:32] = 0
    with cucim_like.CuImage(str(tmp_path)) as img:
        np.testing.assert_array_equal(img.read_region(), want[..., 0])
        np.testing.assert_array_equal(img.read_region((0, 0, 0), (16, 16, 8)), vol[:8, :16, :16, 0])
    with cucim_like.CuImage(str(tmp_path), missing="raise") as img:
        np.testing.assert_array_equal(img.read_region((0, 0, 0), (16, 16, 8)), vol[:8, :16, :16, 0])
        with pytest.raises(MissingChunkError) as info:
            img.read_region()
        assert isinstance(info.value, LookupError) and info.value.tile is not None
    with pytest.raises(ValueError, match="missing"):
        cucim_like.CuImage(str(tmp_path), missing="zero")


def test_opened_by_info_file_and_file_url_with_metadata(tmp_path):
    vol = sample_volume((8, 16, 16, 1), "uint8")
    info = write_volume(tmp_path, [vol, downsample(vol)], chunk=(8, 8, 8), voxel_offset=(10, 20, 30),
                        resolution=(8.0, 8.0, 40.0), vtype="segmentation")
    for path in (str(tmp_path), str(tmp_path / "info"), tmp_path.as_uri(), (tmp_path / "info").as_uri()):
        with cucim_like.CuImage(path) as img:
            np.testing.assert_array_equal(img.read_region(), vol[..., 0])
            assert img.metadata["precomputed"] == info
            assert img.metadata["cucim"]["format"] == "precomputed"
            assert img.vendor == "segmentation"
            assert img.spacing() == pytest.approx([0.04, 0.008, 0.008])
            assert img.spacing_units()[0] == "micrometer"
            assert img.origin == pytest.approx([0.08, 0.16, 1.2])
            assert img.resolutions["level_downsamples"] == (1.0, 2.0)
    with pytest.raises(ValueError, match="host 'elsewhere'"):
        cucim_like.CuImage("file://elsewhere" + str(tmp_path))


def test_anisotropic_pyramid_and_dask(tmp_path):
    dask = pytest.importorskip("dask")
    vol = sample_volume((16, 24, 40, 2), "float32")
    lvl1 = np.ascontiguousarray(vol[::2, ::1, ::4])
    write_volume(tmp_path, [vol, lvl1], chunk=(8, 8, 8), factors=[(1, 1, 1), (4, 1, 2)])
    with cucim_like.CuImage(str(tmp_path)) as img:
        # level-0 location (x, y, z) = (8, 4, 6) is level-1 voxel (2, 4, 3)
        np.testing.assert_array_equal(img.read_region((8, 4, 6), (5, 6, 4), level=1), lvl1[3:7, 4:10, 2:7])
        arr = img.to_dask(level=1)
        with dask.config.set(scheduler="threads"):
            np.testing.assert_array_equal(arr.compute(), lvl1)


def test_murmurhash_and_morton_agree_with_independent_implementations():
    mmh3 = pytest.importorskip("mmh3")
    from cucim_like.formats.precomputed.sharding import compressed_morton_code, murmurhash3_x86_128

    rng = np.random.default_rng(1)
    for n in [0, 1, 3, 4, 7, 8, 12, 15, 16, 17, 31, 33]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert murmurhash3_x86_128(data) == mmh3.hash128(data, seed=0, x64arch=False, signed=False)
    for grid in [(1, 1, 1), (5, 3, 9), (64, 2, 17)]:
        for _ in range(50):
            pos = tuple(int(rng.integers(0, g)) for g in grid)
            assert compressed_morton_code(pos, grid) == morton(pos, grid)


def _one_chunk_volume(tmp_path, encoding="raw", dtype="uint16"):
    vol = sample_volume((8, 8, 8, 1), dtype)
    write_volume(tmp_path, [vol], encoding=encoding, chunk=(8, 8, 8))
    key = json.loads((tmp_path / "info").read_text())["scales"][0]["key"]
    return vol, tmp_path / key / "0-8_0-8_0-8"


def test_gzip_bomb_and_wrong_sizes_are_typed_errors(tmp_path):
    _, chunk = _one_chunk_volume(tmp_path)
    chunk.unlink()
    chunk.with_name(chunk.name + ".gz").write_bytes(gzip.compress(bytes(64 << 20)))  # 64 MiB of zeros
    with cucim_like.CuImage(str(tmp_path)) as img, pytest.raises(CorruptFileError, match="inflates beyond"):
        img.read_region()
    chunk.with_name(chunk.name + ".gz").write_bytes(gzip.compress(bytes(1000)))  # too short for the chunk
    with cucim_like.CuImage(str(tmp_path)) as img, pytest.raises(DecodeError, match="raw chunk holds 1000"):
        img.read_region()


def test_fpzip_header_declaring_other_dims_is_refused_before_decoding(tmp_path):
    import fpzip

    _, chunk = _one_chunk_volume(tmp_path, "fpzip", "float32")
    chunk.write_bytes(fpzip.compress(np.zeros((8, 8, 4, 1), np.float32), order="F"))
    with cucim_like.CuImage(str(tmp_path)) as img, pytest.raises(DecodeError, match=r"\(8, 8, 4, 1\)"):
        img.read_region()
    assert not chunk.with_name("x").exists()


@pytest.mark.parametrize("edit,error", [
    (lambda i: i.update(data_type="float64"), UnsupportedFormatError),
    (lambda i: i["scales"][0].update(encoding="png2"), UnsupportedFormatError),
    (lambda i: i["scales"][0].update(size=[8, -8, 8]), CorruptFileError),
    (lambda i: i["scales"][0].update(chunk_sizes=[[1 << 20, 1 << 20, 1]]), CorruptFileError),
    (lambda i: i["scales"][0].update(key="../../etc"), CorruptFileError),
    (lambda i: i["scales"][0].update(resolution=[1, "x", 1]), CorruptFileError),
    (lambda i: i.update(scales=[]), CorruptFileError),
    (lambda i: i.update(num_channels=0), CorruptFileError),
    (lambda i: i["scales"][0].update(encoding="jpeg"), UnsupportedFormatError),
    (lambda i: i["scales"][0].update(sharding={"@type": "other"}), UnsupportedFormatError),
])
def test_bad_info_files_are_typed_errors_at_open(tmp_path, edit, error):
    _one_chunk_volume(tmp_path)
    info = json.loads((tmp_path / "info").read_text())
    edit(info)
    (tmp_path / "info").write_text(json.dumps(info))
    with pytest.raises(error):
        cucim_like.CuImage(str(tmp_path))


def test_damaged_shard_index_is_a_typed_error(tmp_path):
    vol = sample_volume((8, 16, 16, 1), "uint8")
    write_volume(tmp_path, [vol], chunk=(8, 8, 8), sharding=SHARDINGS["one-shard"])
    key = json.loads((tmp_path / "info").read_text())["scales"][0]["key"]
    shard = tmp_path / key / ".shard"
    data = bytearray(shard.read_bytes())
    struct.pack_into("<QQ", data, 0, 0, 1 << 40)  # minishard index running far past the file
    shard.write_bytes(bytes(data))
    with cucim_like.CuImage(str(tmp_path)) as img, pytest.raises(CorruptFileError, match="index range"):
        img.read_region()
