"""Where a precomputed scale keeps its chunks: one file per chunk (optionally gzip-compressed), or shards.

A store serves the encoded bytes of one chunk by its flat tile index (planes, z, y, x grid of the Level), or
None when the chunk does not exist (read as fill), or raises MissingChunkError when the volume was opened with
``missing="raise"``. Reads are bounded by the chunk's largest plausible size, gzip included.
"""

from __future__ import annotations

import os
import zlib

import numpy as np

from ...errors import CorruptFileError, MissingChunkError
from ..base import compressed_tile_limit
from .info import ScaleInfo


def inflate_bounded(data: bytes, limit: int, what: str) -> bytes:
    """gzip (one or more members) or zlib ``data`` inflated to at most ``limit`` bytes; CorruptFileError
    beyond (a gzip bomb), when the stream is damaged or cut short, or when bytes that are not another gzip
    member follow it."""
    out = bytearray()
    rest = data
    while True:
        d = zlib.decompressobj(47)  # gzip or zlib header, detected
        try:
            out += d.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise CorruptFileError(f"{what}: gzip stream is damaged: {exc}") from exc
        if len(out) > limit:
            raise CorruptFileError(f"{what}: gzip stream inflates beyond {limit} bytes, more than the chunk can "
                                   "hold")
        if not d.eof:
            raise CorruptFileError(f"{what}: gzip stream is cut short")
        rest = d.unused_data
        if not rest:
            return bytes(out)
        if rest[:2] != b"\x1f\x8b":
            raise CorruptFileError(f"{what}: {len(rest)} bytes follow the gzip stream")


def read_file_bounded(path: str, limit: int, what: str) -> bytes | None:
    """The bytes of ``path`` (None when it does not exist); CorruptFileError when it is larger than ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise CorruptFileError(f"{what} is {size} bytes, more than the {limit} a chunk can take", path=path)
        chunks = []
        remaining = size
        while remaining > 0:
            piece = os.read(fd, remaining)
            if not piece:
                break
            chunks.append(piece)
            remaining -= len(piece)
        return b"".join(chunks)
    finally:
        os.close(fd)


class ChunkStore:
    """Base of the stores: the scale's grid geometry and the limits every chunk read obeys."""

    def __init__(self, root: str, scale: ScaleInfo, grid: tuple[int, int, int], chunk_nbytes: int,
                 missing: str, encoded_limit: int | None = None) -> None:
        self.root = root
        self.dir = os.path.join(root, *scale.key.split("/"))
        self.scale = scale
        self.grid = grid  # (gz, gy, gx)
        self.decoded_limit = chunk_nbytes
        #: most bytes an encoded chunk may take (raw chunks: exactly their decoded size)
        self.encoded_limit = encoded_limit if encoded_limit is not None else compressed_tile_limit(chunk_nbytes)
        #: most bytes a stored chunk may take before gzip is undone
        self.stored_limit = compressed_tile_limit(chunk_nbytes)
        self.missing = missing

    def coords(self, tile: int) -> tuple[int, int, int]:
        """Grid position (gx, gy, gz) of a flat tile index."""
        gz, gy, gx = (int(v) for v in np.unravel_index(tile, self.grid))
        return gx, gy, gz

    def absent(self, what: str) -> None:
        if self.missing == "raise":
            raise MissingChunkError(f"{what} does not exist", path=self.dir)
        return None

    def get(self, tile: int) -> bytes | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release open files (chunk files are opened per read; shards keep theirs)."""


class ChunkFileStore(ChunkStore):
    """One file per chunk, named ``x0-x1_y0-y1_z0-z1`` in absolute voxel coordinates; ``name.gz`` is gzip."""

    def name(self, tile: int) -> str:
        s = self.scale
        bounds = []
        for axis, g in enumerate(self.coords(tile)):
            start = s.voxel_offset[axis] + g * s.chunk_size[axis]
            stop = min(start + s.chunk_size[axis], s.voxel_offset[axis] + s.size[axis])
            bounds.append(f"{start}-{stop}")
        return "_".join(bounds)

    def get(self, tile: int) -> bytes | None:
        name = self.name(tile)
        path = os.path.join(self.dir, name)
        data = read_file_bounded(path, self.encoded_limit, f"chunk {name}")
        if data is not None:
            return data
        packed = read_file_bounded(path + ".gz", self.stored_limit, f"chunk {name}.gz")
        if packed is None:
            return self.absent(f"chunk {name}")
        try:
            return inflate_bounded(packed, self.encoded_limit, f"chunk {name}.gz")
        except CorruptFileError as exc:
            raise CorruptFileError(exc.message, path=path + ".gz") from exc
