"""Writers of neuroglancer precomputed volumes for the tests, built on independent encoders (NumPy, fpzip,
compressed_segmentation, imagecodecs, gzip, mmh3), never on cucim_like's own code."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import os
import struct
from pathlib import Path

import numpy as np


def chunk_boxes(size_xyz, chunk_xyz):
    """Yield ((gx, gy, gz), (x0, x1), (y0, y1), (z0, z1)) for every chunk of a scale (0-based)."""
    grid = [-(-s // c) for s, c in zip(size_xyz, chunk_xyz, strict=True)]
    for gz in range(grid[2]):
        for gy in range(grid[1]):
            for gx in range(grid[0]):
                b = [(g * c, min(g * c + c, s)) for g, c, s in zip((gx, gy, gz), chunk_xyz, size_xyz, strict=True)]
                yield (gx, gy, gz), b[0], b[1], b[2]


def encode_chunk(block: np.ndarray, encoding: str, block_size=(8, 8, 8)) -> bytes:
    """Encode ``block`` (z, y, x, c) as neuroglancer stores it: an (x, y, z, c) array, x fastest."""
    xyzc = block.transpose(2, 1, 0, 3)  # (x, y, z, c)
    if encoding == "raw":
        return np.asfortranarray(xyzc).astype(xyzc.dtype.newbyteorder("<")).tobytes(order="F")
    if encoding == "fpzip":
        import fpzip

        return fpzip.compress(np.asfortranarray(xyzc), order="F")
    if encoding == "kempressed":
        import fpzip

        return fpzip.compress(np.asfortranarray(np.float32(2.0) + np.swapaxes(xyzc, 2, 3)), order="F")
    if encoding == "compressed_segmentation":
        import compressed_segmentation as cseg

        # the package crashes on several channels: encode each alone (1 offset word + its data) and join
        # them as the spec lays them out: one offset word per channel, then the channels' data
        parts = [cseg.compress(np.asfortranarray(xyzc[..., i : i + 1]), block_size=block_size, order="F")[4:]
                 for i in range(xyzc.shape[3])]
        n = len(parts)
        offsets = [n + sum(len(p) for p in parts[:i]) // 4 for i in range(n)]
        return struct.pack(f"<{n}I", *offsets) + b"".join(parts)
    if encoding == "jpeg":
        import imagecodecs

        z, y, x, c = block.shape
        image = block.reshape(z * y, x, c)
        return imagecodecs.jpeg8_encode(image if c == 3 else image[..., 0], level=95)
    raise ValueError(encoding)


# -- sharding, written from the neuroglancer spec -------------------------------------------------------------
def morton(pos, grid):
    bits = [math.ceil(math.log2(g)) if g > 1 else 0 for g in grid]
    out, j = 0, 0
    for i in range(max(bits) if bits else 0):
        for d in range(3):
            if i < bits[d]:
                out |= ((pos[d] >> i) & 1) << j
                j += 1
    return out


def shard_of(chunk_id, spec):
    import mmh3

    key = chunk_id >> spec["preshift_bits"]
    if spec["hash"] == "murmurhash3_x86_128":
        key = mmh3.hash128(struct.pack("<Q", key), seed=0, x64arch=False, signed=False) & ((1 << 64) - 1)
    minishard = key & ((1 << spec["minishard_bits"]) - 1)
    shard = (key >> spec["minishard_bits"]) & ((1 << spec["shard_bits"]) - 1)
    return shard, minishard


def write_shards(directory: Path, chunks: dict[int, bytes], spec: dict) -> None:
    """Write ``chunks`` (chunk id -> encoded bytes) into shard files of ``directory``."""
    by_shard: dict[int, dict[int, dict[int, bytes]]] = {}
    for cid, data in chunks.items():
        shard, mini = shard_of(cid, spec)
        by_shard.setdefault(shard, {}).setdefault(mini, {})[cid] = data
    digits = -(-spec["shard_bits"] // 4)
    for shard, minis in by_shard.items():
        body = bytearray()
        index = bytearray(16 << spec["minishard_bits"])
        mini_indexes = {}
        for mini in sorted(minis):
            ids = sorted(minis[mini])
            starts, sizes = [], []
            for cid in ids:
                data = minis[mini][cid]
                if spec["data_encoding"] == "gzip":
                    data = gzip.compress(data)
                starts.append(len(body))
                sizes.append(len(data))
                body += data
            mini_indexes[mini] = (ids, starts, sizes)
        for mini, (ids, starts, sizes) in mini_indexes.items():
            ids_d = [ids[0]] + [b - a for a, b in itertools.pairwise(ids)]
            offs = [starts[0]] + [starts[i] - (starts[i - 1] + sizes[i - 1]) for i in range(1, len(ids))]
            raw = np.array([ids_d, offs, sizes], dtype="<u8").tobytes()
            if spec["minishard_index_encoding"] == "gzip":
                raw = gzip.compress(raw)
            start = len(body)
            body += raw
            struct.pack_into("<QQ", index, 16 * mini, start, len(body))
        name = f"{shard:0{digits}x}.shard" if digits else ".shard"
        (directory / name).write_bytes(bytes(index) + bytes(body))


def write_volume(root: Path, scales: list[np.ndarray], *, encoding: str = "raw", chunk=(16, 16, 8),
                 voxel_offset=(0, 0, 0), resolution=(4.0, 4.0, 40.0), factors=None, gz: bool = False,
                 sharding: dict | None = None, drop: set | None = None, vtype: str = "image",
                 block_size=(8, 8, 8)) -> dict:
    """Write a precomputed volume: ``scales`` are arrays (z, y, x, c), the first the full resolution.

    ``factors`` gives each scale's (x, y, z) downsample (default 2**i in x and y); ``drop`` names chunk grid
    positions (scale, gx, gy, gz) not written (missing). Returns the info dict."""
    root.mkdir(parents=True, exist_ok=True)
    dtype = scales[0].dtype
    info = {"@type": "neuroglancer_multiscale_volume", "type": vtype, "data_type": dtype.name,
            "num_channels": int(scales[0].shape[3]), "scales": []}
    for i, vol in enumerate(scales):
        f = factors[i] if factors else (2**i, 2**i, 1)
        z, y, x, _ = vol.shape
        key = f"{int(resolution[0] * f[0])}_{int(resolution[1] * f[1])}_{int(resolution[2] * f[2])}"
        offset = [o // ff for o, ff in zip(voxel_offset, f, strict=True)]
        scale = {"key": key, "size": [x, y, z], "voxel_offset": offset, "chunk_sizes": [list(chunk)],
                 "resolution": [r * ff for r, ff in zip(resolution, f, strict=True)], "encoding": encoding}
        if encoding == "compressed_segmentation":
            scale["compressed_segmentation_block_size"] = list(block_size)
        if sharding:
            scale["sharding"] = {"@type": "neuroglancer_uint64_sharded_v1", **sharding}
        info["scales"].append(scale)
        d = root / key
        d.mkdir(exist_ok=True)
        grid = [-(-s // c) for s, c in zip((x, y, z), chunk, strict=True)]
        shard_chunks = {}
        for (gx, gy, gzz), (x0, x1), (y0, y1), (z0, z1) in chunk_boxes((x, y, z), chunk):
            if drop and (i, gx, gy, gzz) in drop:
                continue
            data = encode_chunk(vol[z0:z1, y0:y1, x0:x1], encoding, block_size)
            if sharding:
                shard_chunks[morton((gx, gy, gzz), grid)] = data
                continue
            name = "_".join(f"{a + o}-{b + o}" for (a, b), o in zip(((x0, x1), (y0, y1), (z0, z1)), offset,
                                                                      strict=True))
            if gz:
                (d / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (d / name).write_bytes(data)
        if sharding:
            write_shards(d, shard_chunks, sharding)
    (root / "info").write_text(json.dumps(info))
    return info


def downsample(vol: np.ndarray, f=(2, 2, 1)) -> np.ndarray:
    """Strided subsampling by (x, y, z) factors of a (z, y, x, c) array (what the test pyramids hold)."""
    return np.ascontiguousarray(vol[:: f[2], :: f[1], :: f[0]])


def sample_volume(shape_zyxc, dtype, seed=0) -> np.ndarray:
    """A smooth-ish test volume of ``dtype``: labels for integer types, correlated floats for float32."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return np.cumsum(rng.standard_normal(shape_zyxc), axis=2).astype(dtype)
    info = np.iinfo(dtype)
    if np.dtype(dtype).itemsize >= 4 and np.dtype(dtype).kind == "u":
        labels = rng.integers(0, 50, shape_zyxc)  # few labels per block, as segmentations have
        return (labels.astype(np.uint64) * np.uint64(1_000_003)).astype(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 1000) + 1, shape_zyxc).astype(dtype)


def files(root: Path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(dp, f), root) for dp, _, fs in os.walk(root) for f in fs)
