"""Sharded precomputed scales (``neuroglancer_uint64_sharded_v1``).

A chunk's id is the compressed Morton code of its grid position; hashing the id (shifted right by
``preshift_bits``) picks a shard file (``<hex shard>.shard``) and a minishard in it. A shard starts with the
shard index, ``2**minishard_bits`` pairs of uint64 [start, end) of each minishard index; a minishard index is
three uint64 arrays (chunk ids, offsets, sizes, ids and offsets delta-coded) locating its chunks' data. Every
offset is relative to the end of the shard index. Minishard indexes are cached per store.
"""

from __future__ import annotations

import math
import os
import struct
import threading
from collections import OrderedDict

import numpy as np

from ...errors import CorruptFileError
from ...fileio import FileReader
from .info import ScaleInfo, ShardingSpec
from .store import ChunkStore, inflate_bounded

_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1
_MAX_MINISHARD_INDEX = 64 << 20
_CACHED_MINISHARDS = 256


def compressed_morton_code(position: tuple[int, int, int], grid: tuple[int, int, int]) -> int:
    """Interleave the bits of ``position`` (x, y, z), each axis using only the bits its ``grid`` size needs."""
    bits = [max(0, math.ceil(math.log2(n))) if n > 1 else 0 for n in grid]
    code = 0
    out_bit = 0
    for level in range(max(bits)):
        for axis in range(3):
            if level < bits[axis]:
                code |= ((position[axis] >> level) & 1) << out_bit
                out_bit += 1
    return code


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def murmurhash3_x86_128(data: bytes, seed: int = 0) -> int:
    """MurmurHash3_x86_128 of ``data`` as a 128-bit integer (h1 in the low 32 bits, as its bytes read LE)."""
    c1, c2, c3, c4 = 0x239B961B, 0xAB0E9789, 0x38B34AE5, 0xA1E38B93
    h1 = h2 = h3 = h4 = seed & _M32
    n = len(data)
    nblocks = n // 16
    for i in range(nblocks):
        k1, k2, k3, k4 = struct.unpack_from("<4I", data, 16 * i)
        h1 ^= (_rotl32((k1 * c1) & _M32, 15) * c2) & _M32
        h1 = (_rotl32(h1, 19) + h2) & _M32
        h1 = (h1 * 5 + 0x561CCD1B) & _M32
        h2 ^= (_rotl32((k2 * c2) & _M32, 16) * c3) & _M32
        h2 = (_rotl32(h2, 17) + h3) & _M32
        h2 = (h2 * 5 + 0x0BCAA747) & _M32
        h3 ^= (_rotl32((k3 * c3) & _M32, 17) * c4) & _M32
        h3 = (_rotl32(h3, 15) + h4) & _M32
        h3 = (h3 * 5 + 0x96CD1C35) & _M32
        h4 ^= (_rotl32((k4 * c4) & _M32, 18) * c1) & _M32
        h4 = (_rotl32(h4, 13) + h1) & _M32
        h4 = (h4 * 5 + 0x32AC3B17) & _M32
    tail = data[16 * nblocks:] + bytes(16 - (n & 15) if n & 15 else 0)
    if n & 15:
        k1, k2, k3, k4 = struct.unpack("<4I", tail[:16])
        rest = n & 15
        if rest > 12:
            h4 ^= (_rotl32((k4 * c4) & _M32, 18) * c1) & _M32
        if rest > 8:
            h3 ^= (_rotl32((k3 * c3) & _M32, 17) * c4) & _M32
        if rest > 4:
            h2 ^= (_rotl32((k2 * c2) & _M32, 16) * c3) & _M32
        h1 ^= (_rotl32((k1 * c1) & _M32, 15) * c2) & _M32
    h1 ^= n
    h2 ^= n
    h3 ^= n
    h4 ^= n
    h1 = (h1 + h2 + h3 + h4) & _M32
    h2 = (h2 + h1) & _M32
    h3 = (h3 + h1) & _M32
    h4 = (h4 + h1) & _M32
    h1, h2, h3, h4 = _fmix32(h1), _fmix32(h2), _fmix32(h3), _fmix32(h4)
    h1 = (h1 + h2 + h3 + h4) & _M32
    h2 = (h2 + h1) & _M32
    h3 = (h3 + h1) & _M32
    h4 = (h4 + h1) & _M32
    return h1 | (h2 << 32) | (h3 << 64) | (h4 << 96)


def shard_location(chunk_id: int, spec: ShardingSpec) -> tuple[int, int]:
    """(shard number, minishard number) of a chunk id."""
    shifted = (chunk_id >> spec.preshift_bits) & _M64
    if spec.hash == "murmurhash3_x86_128":
        hashed = murmurhash3_x86_128(shifted.to_bytes(8, "little")) & _M64
    else:
        hashed = shifted
    minishard = hashed & ((1 << spec.minishard_bits) - 1)
    shard = (hashed >> spec.minishard_bits) & ((1 << spec.shard_bits) - 1)
    return shard, minishard


def shard_file_name(shard: int, spec: ShardingSpec) -> str:
    digits = -(-spec.shard_bits // 4)
    return f"{shard:0{digits}x}.shard" if digits else ".shard"


class ShardedStore(ChunkStore):
    """Chunks inside shard files; minishard indexes read once and kept (at most a few hundred)."""

    def __init__(self, root: str, scale: ScaleInfo, grid: tuple[int, int, int], chunk_nbytes: int,
                 missing: str, encoded_limit: int | None = None) -> None:
        super().__init__(root, scale, grid, chunk_nbytes, missing, encoded_limit)
        assert scale.sharding is not None
        self.spec: ShardingSpec = scale.sharding
        self._readers: dict[int, FileReader | None] = {}
        self._minishards: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def chunk_id(self, tile: int) -> int:
        gx, gy, gz = self.coords(tile)
        return compressed_morton_code((gx, gy, gz), (self.grid[2], self.grid[1], self.grid[0]))

    def _reader(self, shard: int) -> FileReader | None:
        with self._lock:
            if shard not in self._readers:
                path = os.path.join(self.dir, shard_file_name(shard, self.spec))
                self._readers[shard] = FileReader(path) if os.path.isfile(path) else None
            return self._readers[shard]

    @property
    def index_bytes(self) -> int:
        return 16 << self.spec.minishard_bits

    def _minishard(self, shard: int, minishard: int, reader: FileReader):
        key = (shard, minishard)
        with self._lock:
            hit = self._minishards.get(key)
            if hit is not None:
                self._minishards.move_to_end(key)
                return hit
        where = f"shard {shard_file_name(shard, self.spec)} minishard {minishard}"
        if self.index_bytes > reader.size:
            raise CorruptFileError(f"{where}: the shard is shorter than its index", path=reader.path)
        start, end = struct.unpack("<QQ", reader.read(16 * minishard, 16 * minishard + 16))
        if end < start or end - start > _MAX_MINISHARD_INDEX or self.index_bytes + end > reader.size:
            raise CorruptFileError(f"{where}: index range {start}-{end} is not inside the shard", path=reader.path)
        raw = reader.read(self.index_bytes + start, self.index_bytes + end)
        if self.spec.minishard_index_encoding == "gzip":
            raw = inflate_bounded(raw, _MAX_MINISHARD_INDEX, where)
        if len(raw) % 24:
            raise CorruptFileError(f"{where}: index of {len(raw)} bytes is not whole entries", path=reader.path)
        table = np.frombuffer(raw, "<u8").reshape(3, -1)
        with np.errstate(over="ignore"):
            ids = np.cumsum(table[0], dtype=np.uint64)
            sizes = table[2]
            starts = np.cumsum(table[1], dtype=np.uint64)
            starts[1:] += np.cumsum(sizes[:-1], dtype=np.uint64)
        entry = (ids, starts, sizes)
        with self._lock:
            self._minishards[key] = entry
            if len(self._minishards) > _CACHED_MINISHARDS:
                self._minishards.popitem(last=False)
        return entry

    def get(self, tile: int) -> bytes | None:
        chunk_id = self.chunk_id(tile)
        shard, minishard = shard_location(chunk_id, self.spec)
        reader = self._reader(shard)
        what = f"chunk {chunk_id} (shard {shard_file_name(shard, self.spec)})"
        if reader is None:
            return self.absent(what)
        ids, starts, sizes = self._minishard(shard, minishard, reader)
        found = np.flatnonzero(ids == np.uint64(chunk_id))
        if not found.size:
            return self.absent(what)
        i = int(found[0])
        start, size = int(starts[i]), int(sizes[i])
        limit = self.stored_limit if self.spec.data_encoding == "gzip" else self.encoded_limit
        if size > limit or start > reader.size - self.index_bytes - size:
            raise CorruptFileError(f"{what}: data {start}+{size} is not inside the shard or too large",
                                   path=reader.path)
        data = reader.read(self.index_bytes + start, self.index_bytes + start + size)
        if self.spec.data_encoding == "gzip":
            data = inflate_bounded(data, self.encoded_limit, what)
        return data

    def close(self) -> None:
        with self._lock:
            for reader in self._readers.values():
                if reader is not None:
                    reader.close()
