"""A level as a dask array whose chunks are read through cucim_like's engine (threads or dask.distributed)."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import OptionalDependencyError

if TYPE_CHECKING:
    from .cuimage import CuImage

_open: dict[tuple[str, int], CuImage] = {}
_open_lock = threading.Lock()


class LevelChunkReader:
    """Reads one block of a level by its array location; picklable (carries the path, re-opens per process)."""

    def __init__(self, path: str, level: int, volume: bool) -> None:
        self.path = path
        self.level = level
        self.volume = volume

    def _image(self) -> CuImage:
        from .cuimage import CuImage

        key = (self.path, os.getpid())
        img = _open.get(key)
        if img is None:
            with _open_lock:
                img = _open.get(key)
                if img is None:
                    img = _open[key] = CuImage(self.path)
        return img

    def __call__(self, block_info: dict | None = None) -> np.ndarray:
        loc = block_info[None]["array-location"]
        if self.volume:
            (z0, z1), (y0, y1), (x0, x1), (c0, c1) = loc
        else:
            (y0, y1), (x0, x1), (c0, c1) = loc
            z0, z1 = 0, 1
        out = self._image().read_level_region((x0, y0, z0), (x1 - x0, y1 - y0, z1 - z0), self.level,
                                              num_workers=1)
        if not self.volume:
            out = out[0]
        return out[..., c0:c1]


def level_to_dask(img: CuImage, level: int = 0, chunks: Any = None):
    """Level ``level`` of ``img`` as a dask array (h, w, c) (volumes: (d, h, w, c)), chunks tile-aligned by
    default, each chunk read by the engine in the worker that computes it."""
    try:
        import dask.array as da
    except ImportError as exc:
        raise OptionalDependencyError("to_dask needs dask: pip install 'cucim_like[dask]'") from exc
    lvl = img.levels[level]
    z, y, x, c = lvl.shape
    volume = img.is_volume
    shape = (z, y, x, c) if volume else (y, x, c)
    if chunks is None:
        tz, ty, tx = lvl.tile_shape
        # whole tiles, grouped so a chunk is at least ~4 MiB: fewer tasks, each tile still decoded once
        per_tile = ty * tx * c * lvl.dtype.itemsize
        k = max(1, int((4 * 2**20 / per_tile) ** 0.5))
        chunks = (tz, ty * k, tx * k, c) if volume else (ty * k, tx * k, c)
    chunks = da.core.normalize_chunks(chunks, shape, dtype=lvl.dtype)
    reader = LevelChunkReader(img.path, level, volume)
    token = abs(hash((img.path, img.file_identity, level, chunks)))
    return da.map_blocks(reader, chunks=chunks, dtype=lvl.dtype, meta=np.empty((0,) * len(shape), lvl.dtype),
                         name=f"cucim_like-{os.path.basename(img.path)}-L{level}-{token}")
