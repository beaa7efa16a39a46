"""A level as a dask array whose chunks are read through cucim_like's engine (threads or dask.distributed)."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import OptionalDependencyError

if TYPE_CHECKING:
    from .cuimage import CuImage

_open: dict[tuple, CuImage] = {}
_open_lock = threading.Lock()


class LevelChunkReader:
    """Reads one block of a level by its array location; picklable (carries what opened the image: a path,
    a directory or a list of files, and the open options; re-opens once per process)."""

    def __init__(self, source: str | list[str], options: dict[str, Any], level: int, volume: bool,
                 channels: bool) -> None:
        self.source = source
        self.options = dict(options)
        self.level = level
        self.volume = volume
        self.channels = channels

    def _image(self) -> CuImage:
        from .cuimage import CuImage

        key = (repr(self.source), repr(sorted(self.options.items())), os.getpid())
        img = _open.get(key)
        if img is None:
            with _open_lock:
                img = _open.get(key)
                if img is None:
                    img = _open[key] = CuImage(self.source, **self.options)
        return img

    def __call__(self, block_info: dict | None = None) -> np.ndarray:
        loc = list(block_info[None]["array-location"])
        c0, c1 = loc.pop() if self.channels else (0, 1)
        (z0, z1), (y0, y1), (x0, x1) = loc if self.volume else [(0, 1), *loc]
        out = self._image().read_level_region((x0, y0, z0), (x1 - x0, y1 - y0, z1 - z0), self.level,
                                              num_workers=1)
        if not self.volume:
            out = out[0]
        return out[..., c0:c1] if self.channels else out[..., 0]


def level_to_dask(img: CuImage, level: int = 0, chunks: Any = None):
    """Level ``level`` of ``img`` as a dask array in ``img.dims`` order ((h, w, c); volumes (d, h, w[, c])),
    chunks tile-aligned by default, each chunk read by the engine in the worker that computes it."""
    try:
        import dask.array as da
    except ImportError as exc:
        raise OptionalDependencyError("to_dask needs dask: pip install 'cucim_like[dask]'") from exc
    lvl = img.levels[level]
    z, y, x, c = lvl.shape
    volume = img.is_volume
    channels = "C" in img.dims
    tail = (c,) if channels else ()
    shape = (z, y, x, *tail) if volume else (y, x, *tail)
    if chunks is None:
        tz, ty, tx = lvl.tile_shape
        # whole tiles, grouped so a chunk is at least ~4 MiB: fewer tasks, each tile still decoded once
        per_tile = ty * tx * c * lvl.dtype.itemsize
        k = max(1, int((4 * 2**20 / per_tile) ** 0.5))
        chunks = (tz, ty * k, tx * k, *tail) if volume else (ty * k, tx * k, *tail)
    chunks = da.core.normalize_chunks(chunks, shape, dtype=lvl.dtype)
    reader = LevelChunkReader(img._path_arg, img._options, level, volume, channels)
    token = abs(hash((img.path, img.file_identity, level, chunks)))
    return da.map_blocks(reader, chunks=chunks, dtype=lvl.dtype, meta=np.empty((0,) * len(shape), lvl.dtype),
                         name=f"cucim_like-{os.path.basename(img.path)}-L{level}-{token}")
