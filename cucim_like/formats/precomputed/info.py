"""The ``info`` JSON of a neuroglancer precomputed volume, read and checked before anything else is touched."""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import CorruptFileError, UnsupportedFormatError

DATA_TYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "float32")
ENCODINGS = {
    "raw": "precomputed-raw",
    "jpeg": "precomputed-jpeg",
    "compressed_segmentation": "compressed_segmentation",
    "fpzip": "fpzip",
    "kempressed": "kempressed",
}
MAX_INFO_BYTES = 64 << 20
_MAX_CHANNELS = 1 << 16
_MAX_DIM = 1 << 40
# a chunk may not decode to more than this (every read allocates at least one decoded chunk)
MAX_CHUNK_BYTES = 1 << 28


@dataclass(frozen=True)
class ShardingSpec:
    """``neuroglancer_uint64_sharded_v1`` parameters of a scale."""

    preshift_bits: int
    hash: str
    minishard_bits: int
    shard_bits: int
    minishard_index_encoding: str
    data_encoding: str


@dataclass(frozen=True)
class ScaleInfo:
    """One scale: ``key`` (its directory), ``size``/``voxel_offset``/``chunk_size`` in voxels and
    ``resolution`` in nanometres, all (x, y, z); ``encoding`` as written in the info file."""

    key: str
    size: tuple[int, int, int]
    voxel_offset: tuple[int, int, int]
    chunk_size: tuple[int, int, int]
    resolution: tuple[float, float, float]
    encoding: str
    block_size: tuple[int, int, int] | None
    sharding: ShardingSpec | None


@dataclass(frozen=True)
class VolumeInfo:
    type: str
    data_type: np.dtype
    num_channels: int
    scales: tuple[ScaleInfo, ...]
    raw: dict


def looks_like_info(head: bytes) -> bool:
    """Cheap probe on a file's first bytes: a JSON object naming a neuroglancer volume or its scales."""
    text = head.lstrip()
    return text[:1] == b"{" and (b"neuroglancer_multiscale_volume" in head or
                                 (b'"scales"' in head and b'"data_type"' in head))


def parse_info(data: bytes, path: str) -> VolumeInfo:
    """Checked description of the volume; CorruptFileError / UnsupportedFormatError naming the bad field."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"info is not valid JSON: {exc}", path=path) from exc
    if not isinstance(raw, dict):
        raise CorruptFileError("info is not a JSON object", path=path)
    kind = raw.get("@type", "neuroglancer_multiscale_volume")
    if kind != "neuroglancer_multiscale_volume":
        raise UnsupportedFormatError(f"info @type {kind!r} is not a neuroglancer_multiscale_volume", path=path)
    vtype = raw.get("type", "image")
    if vtype not in ("image", "segmentation"):
        raise UnsupportedFormatError(f"volume type {vtype!r} is not image or segmentation", path=path)
    dtype_name = raw.get("data_type")
    if dtype_name not in DATA_TYPES:
        raise UnsupportedFormatError(f"data_type {dtype_name!r} is not one of {', '.join(DATA_TYPES)}", path=path)
    channels = _int(raw.get("num_channels", 1), "num_channels", path)
    if not 1 <= channels <= _MAX_CHANNELS:
        raise CorruptFileError(f"num_channels {channels} is out of range", path=path)
    scales = raw.get("scales")
    if not isinstance(scales, list) or not scales:
        raise CorruptFileError("info has no scales", path=path)
    dtype = np.dtype(dtype_name)
    parsed = tuple(_scale(s, i, dtype, channels, path) for i, s in enumerate(scales))
    return VolumeInfo(vtype, dtype, channels, parsed, raw)


def _int(value: Any, name: str, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise CorruptFileError(f"{name} must be an integer, got {value!r}", path=path)
    return int(value)


def _triple(value: Any, name: str, path: str, *, positive: bool, integer: bool = True) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise CorruptFileError(f"{name} must be a list of 3 numbers, got {value!r}", path=path)
    if integer:
        out = tuple(_int(v, name, path) for v in value)
    else:
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value):
            raise CorruptFileError(f"{name} must hold finite numbers, got {value!r}", path=path)
        out = tuple(float(v) for v in value)
    if positive and min(out) <= 0:
        raise CorruptFileError(f"{name} must be positive, got {value!r}", path=path)
    if integer and max(abs(v) for v in out) > _MAX_DIM:
        raise CorruptFileError(f"{name} {value!r} is out of range", path=path)
    return out


def _scale(s: Any, index: int, dtype: np.dtype, channels: int, path: str) -> ScaleInfo:
    where = f"scale {index}"
    if not isinstance(s, dict):
        raise CorruptFileError(f"{where} is not a JSON object", path=path)
    key = s.get("key")
    if not isinstance(key, str) or not key or key.startswith("/") or ".." in posixpath.normpath(key).split("/"):
        raise CorruptFileError(f"{where} key {key!r} is not a relative path inside the volume", path=path)
    size = _triple(s.get("size"), f"{where} size", path, positive=True)
    offset = _triple(s.get("voxel_offset", [0, 0, 0]), f"{where} voxel_offset", path, positive=False)
    resolution = _triple(s.get("resolution"), f"{where} resolution", path, positive=True, integer=False)
    chunks = s.get("chunk_sizes")
    if not isinstance(chunks, list) or not chunks:
        raise CorruptFileError(f"{where} has no chunk_sizes", path=path)
    chunk = _triple(chunks[0], f"{where} chunk_sizes", path, positive=True)
    chunk_bytes = math.prod(chunk) * channels * dtype.itemsize
    if chunk_bytes > MAX_CHUNK_BYTES:
        raise CorruptFileError(f"{where} chunks of {chunk} x {channels} {dtype} take {chunk_bytes} bytes, more "
                               f"than the {MAX_CHUNK_BYTES} this reader allows", path=path)
    encoding = s.get("encoding")
    if encoding not in ENCODINGS:
        raise UnsupportedFormatError(f"{where} encoding {encoding!r} is not supported", path=path)
    block = None
    if encoding == "jpeg" and (dtype != np.uint8 or channels not in (1, 3)):
        raise UnsupportedFormatError(f"{where}: jpeg holds uint8 with 1 or 3 channels", path=path)
    if encoding == "compressed_segmentation":
        if dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            raise UnsupportedFormatError(f"{where}: compressed_segmentation holds uint32 or uint64", path=path)
        block = _triple(s.get("compressed_segmentation_block_size"), f"{where} compressed_segmentation_block_size",
                        path, positive=True)
    if encoding in ("fpzip", "kempressed") and dtype != np.float32:
        raise UnsupportedFormatError(f"{where}: {encoding} holds float32", path=path)
    return ScaleInfo(key, size, offset, chunk, resolution, encoding, block, _sharding(s.get("sharding"), where,
                                                                                      path))


def _sharding(spec: Any, where: str, path: str) -> ShardingSpec | None:
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("@type") != "neuroglancer_uint64_sharded_v1":
        raise UnsupportedFormatError(f"{where}: sharding {spec!r} is not neuroglancer_uint64_sharded_v1", path=path)
    bits = {}
    for name, top in (("preshift_bits", 64), ("minishard_bits", 32), ("shard_bits", 64)):
        value = _int(spec.get(name, 0), f"{where} sharding {name}", path)
        if not 0 <= value <= top:
            raise CorruptFileError(f"{where} sharding {name} {value} is out of range", path=path)
        bits[name] = value
    hash_name = spec.get("hash", "identity")
    if hash_name not in ("identity", "murmurhash3_x86_128"):
        raise UnsupportedFormatError(f"{where} sharding hash {hash_name!r} is not supported", path=path)
    encodings = {}
    for name in ("minishard_index_encoding", "data_encoding"):
        value = spec.get(name, "raw")
        if value not in ("raw", "gzip"):
            raise UnsupportedFormatError(f"{where} sharding {name} {value!r} is not raw or gzip", path=path)
        encodings[name] = value
    return ShardingSpec(bits["preshift_bits"], hash_name, bits["minishard_bits"], bits["shard_bits"],
                        encodings["minishard_index_encoding"], encodings["data_encoding"])
