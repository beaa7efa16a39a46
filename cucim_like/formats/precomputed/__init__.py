"""Neuroglancer precomputed volumes on a local disk: a directory (or ``file://`` URL) with an ``info`` JSON and
one sub-directory of chunk files or shards per scale. Each scale is a level of a volume (dims "ZYX[C]").

Level arrays start at the scale's ``voxel_offset`` (read_region's (0, 0, 0) is the first stored voxel);
``origin`` gives that voxel's position and ``spacing`` the level-0 resolution, both in micrometres.
"""

from __future__ import annotations

import math
import os
from urllib.parse import unquote, urlparse

from ...errors import ImageFileNotFoundError, InvalidArgumentError
from ...fileio import FileReader
from ..base import CodecSpec, ImageSource, Level
from .info import ENCODINGS, MAX_INFO_BYTES, VolumeInfo, looks_like_info, parse_info
from .sharding import ShardedStore
from .store import ChunkFileStore, ChunkStore, read_file_bounded

MISSING_POLICIES = ("fill", "raise")


def local_path(path: str) -> str:
    """``file://`` URLs as local paths (InvalidArgumentError for another host); other paths unchanged."""
    if not path.startswith("file://"):
        return path
    parsed = urlparse(path)
    if parsed.netloc not in ("", "localhost"):
        raise InvalidArgumentError(f"file:// URLs of host {parsed.netloc!r} are not local paths", path=path)
    return unquote(parsed.path)


def is_precomputed_dir(path: str) -> bool:
    """True for a directory whose ``info`` file looks like a neuroglancer volume description."""
    info = os.path.join(path, "info")
    if not os.path.isfile(info):
        return False
    with open(info, "rb") as fh:
        return looks_like_info(fh.read(4096))


class PrecomputedSource(ImageSource):
    """A neuroglancer precomputed volume: scales -> levels whose chunks come from a :class:`ChunkStore`."""

    format_name = "precomputed"

    def __init__(self, path: str, missing: str = "fill") -> None:
        if missing not in MISSING_POLICIES:
            raise InvalidArgumentError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}", path=path)
        root = path if os.path.isdir(path) else os.path.dirname(path) or "."
        info_path = os.path.join(root, "info")
        super().__init__(root)
        data = read_file_bounded(info_path, MAX_INFO_BYTES, "info")
        if data is None:
            raise ImageFileNotFoundError("no info file", path=info_path)
        self.info_path = info_path
        self.files = [info_path]
        info = parse_info(data, info_path)
        self.vendor = info.type  # "image" or "segmentation"
        self.volume = True
        self.stores: list[ChunkStore] = []
        first = info.scales[0]
        for index, scale in enumerate(info.scales):
            self.levels.append(self._level(index, scale, info, root, missing))
        rx, ry, rz = first.resolution
        self.pixel_spacing = (rz / 1000.0, ry / 1000.0, rx / 1000.0)
        self.spacing_unit = "micrometer"
        self.origin = tuple(o * r / 1000.0 for o, r in zip(first.voxel_offset, first.resolution, strict=True))
        self.channel_names = [f"C{i}" for i in range(info.num_channels)]
        self.vendor_metadata["precomputed"] = info.raw

    def _level(self, index: int, scale, info: VolumeInfo, root: str, missing: str) -> Level:
        sx, sy, sz = scale.size
        cx, cy, cz = scale.chunk_size
        grid = (-(-sz // cz), -(-sy // cy), -(-sx // cx))
        chunk_nbytes = math.prod(scale.chunk_size) * info.num_channels * info.data_type.itemsize
        exact = chunk_nbytes if scale.encoding == "raw" else None
        if scale.sharding is not None:
            store: ChunkStore = ShardedStore(root, scale, grid, chunk_nbytes, missing, exact)
        else:
            store = ChunkFileStore(root, scale, grid, chunk_nbytes, missing, exact)
        self.stores.append(store)
        r0 = info.scales[0].resolution
        ratio = tuple(r / q for r, q in zip(scale.resolution, r0, strict=True))  # (x, y, z)
        return Level(
            index=index,
            shape=(sz, sy, sx, info.num_channels),
            tile_shape=(cz, cy, cx),
            dtype=info.data_type,
            downsample=ratio[0],
            codec=CodecSpec(ENCODINGS[scale.encoding], block_shape=scale.block_size),
            offsets=None,
            bytecounts=None,
            chunk_store=store,
            clipped=True,
            scale=(ratio[2], ratio[1], ratio[0]),
        )

    def readers(self) -> list:
        return [FileReader(self.info_path)]

    def close(self) -> None:
        for store in self.stores:
            store.close()


def open_precomputed(path: str, missing: str = "fill") -> PrecomputedSource:
    """Open a precomputed volume from its directory, its ``info`` file or a ``file://`` URL of either."""
    return PrecomputedSource(local_path(path), missing=missing)
