"""What a format tells the engine: levels, their tile grids, where each tile's bytes are, and how to decode them.

Formats describe; they never decode. The planner and executors only see :class:`Level` and :class:`ImageSource`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CodecSpec:
    """How one tile's bytes decode.

    ``name`` is a key of :mod:`cucim_like.codecs` ("jpeg", "jpeg2000", "deflate", "lzw", "zstd", "webp",
    "lzma", "packbits", "none"). ``colorspace`` names the colour of the samples as stored in the stream
    ("RGB", "YCbCr", "gray", or None for the codec's default); the decoders always deliver RGB for 3 samples.
    ``predictor`` is the TIFF predictor (1 none, 2 horizontal, 3 floating point); ``byteorder`` the order of
    multi-byte samples inside uncompressed data ("<" or ">"). ``framing`` "dicom-items" says a tile's bytes
    are DICOM encapsulated fragments (item headers included) to be joined before decoding; ``planar`` says
    a multi-sample native tile stores its samples plane after plane (DICOM PlanarConfiguration 1).
    ``block_shape`` is the (x, y, z) block of neuroglancer compressed_segmentation.
    """

    name: str
    jpeg_tables: bytes | None = None
    colorspace: str | None = None
    predictor: int = 1
    byteorder: str = "<"
    framing: str | None = None
    planar: bool = False
    block_shape: tuple[int, int, int] | None = None


@dataclass(frozen=True, eq=False)
class Level:
    """One resolution level as an N-d tile grid.

    shape: (z, y, x, c) in pixels; tile_shape: (tz, ty, tx); planes: 1 when every tile holds all c samples
    (contiguous), c when each tile holds one sample (planar separate). ``offsets``/``bytecounts``/``file_ids``
    are int64 arrays of shape (planes, gz, gy, gx): where each tile's bytes are (bytecount 0 = missing tile,
    read as fill). Decoded tiles are arrays (tz, ty, tx, c // planes) of ``dtype`` (native byte order).

    A format whose tile table is costly to build (DICOM without an offset table) passes ``offsets`` and
    ``bytecounts`` as None and a ``table_loader`` instead: it runs once, on first read (:meth:`tile_table`).
    ``variant`` tells apart levels of the same index that hold other pixels (DICOM optical paths and focal
    planes); it is part of tile cache keys.
    """

    index: int
    shape: tuple[int, int, int, int]
    tile_shape: tuple[int, int, int]
    dtype: np.dtype
    downsample: float
    codec: CodecSpec
    offsets: np.ndarray
    bytecounts: np.ndarray
    planes: int = 1
    file_ids: np.ndarray | None = None
    table_loader: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray | None]] | None = field(
        default=None, repr=False)
    variant: int = 0
    chunk_store: Any = field(default=None, repr=False)
    clipped: bool = False
    scale: tuple[float, float, float] | None = None
    _decoder: list = field(default_factory=list, repr=False)  # lazily resolved decoder, one slot
    _table: list = field(default_factory=list, repr=False)  # lazily loaded tile table, one slot

    def tile_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(offsets, bytecounts, file_ids) as int64 arrays of shape ``grid`` (file_ids None: one file)."""
        if self.table_loader is None:
            return self.offsets, self.bytecounts, self.file_ids
        if not self._table:
            with _table_lock:
                if not self._table:
                    self._table.append(self.table_loader())
        return self._table[0]

    @cached_property
    def flat_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`tile_table` with each array flattened to one value per flat tile index (kept once built)."""
        offsets, lengths, file_ids = self.tile_table()
        return offsets.reshape(-1), lengths.reshape(-1), file_ids.reshape(-1) if file_ids is not None else None

    @cached_property
    def grid(self) -> tuple[int, int, int, int]:
        """Tile counts (planes, gz, gy, gx)."""
        z, y, x, _ = self.shape
        tz, ty, tx = self.tile_shape
        return (self.planes, -(-z // tz), -(-y // ty), -(-x // tx))

    def tile_extent(self, tile: int) -> tuple[int, int, int, int]:
        """Decoded shape (tz, ty, tx, samples) of tile ``tile`` (flat index): edge tiles of ``clipped`` levels
        are cut to the level's bounds, every other tile has :attr:`decoded_tile_shape`."""
        if not self.clipped:
            return self.decoded_tile_shape
        _, gz, gy, gx = (int(i) for i in np.unravel_index(tile, self.grid))
        z, y, x, _ = self.shape
        tz, ty, tx = self.tile_shape
        return (min(tz, z - gz * tz), min(ty, y - gy * ty), min(tx, x - gx * tx), self.tile_samples)

    @cached_property
    def tile_samples(self) -> int:
        """Samples held by one tile."""
        return self.shape[3] // self.planes

    @cached_property
    def decoded_tile_shape(self) -> tuple[int, int, int, int]:
        """Shape (tz, ty, tx, samples) of one decoded tile."""
        return (*self.tile_shape, self.tile_samples)

    @cached_property
    def decoded_tile_nbytes(self) -> int:
        return math.prod(self.decoded_tile_shape) * self.dtype.itemsize

    @property
    def width(self) -> int:
        return self.shape[2]

    @property
    def height(self) -> int:
        return self.shape[1]


_table_lock = threading.Lock()

# A compressed tile may not be larger than this multiple of its decoded size (plus a constant): a header
# claiming more is damaged, and believing it would size a read by an unchecked field.
_MAX_EXPANSION = 4
_MAX_SLACK = 1 << 20


def compressed_tile_limit(decoded_nbytes: int) -> int:
    """The most bytes a tile that decodes to ``decoded_nbytes`` may take compressed."""
    return _MAX_EXPANSION * decoded_nbytes + _MAX_SLACK


@dataclass
class AssociatedImage:
    """A small image beside the pyramid (label, macro, thumbnail), read through the same engine as one level."""

    name: str
    level: Level


class ImageSource:
    """An opened image file (or set of files): its levels, metadata and associated images.

    Subclasses fill the attributes in ``__init__`` from headers only; pixels are read by the executors.
    Which subclass opens a file is decided by the probes of :mod:`cucim_like.formats` on its first bytes.
    """

    #: short name of the format family, e.g. "tiff"
    format_name: str = ""
    #: vendor or flavour, e.g. "aperio", "philips", "ome", "generic"
    vendor: str = "generic"

    def __init__(self, path: str) -> None:
        self.path = path
        self.files: list[str] = [path]
        self.levels: list[Level] = []
        self.associated: dict[str, AssociatedImage] = {}
        self.vendor_metadata: dict[str, Any] = {}
        self.raw_metadata: str = ""
        #: physical size of a level-0 pixel along (z, y, x) and its unit, or None when unknown
        self.pixel_spacing: tuple[float, float, float] | None = None
        self.spacing_unit: str = "micrometer"
        self.channel_names: list[str] = []
        #: value used for parts of a region outside the image and for missing tiles
        self.default_fill: float = 0
        #: True for 3-D volumes (dims "ZYX[C]") even with one slice; None: a volume when level 0 has z > 1
        self.volume: bool | None = None
        #: position of the first voxel and direction cosines (ITK convention: column j = direction of axis j)
        self.origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.direction: tuple[tuple[float, ...], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
        #: per-slice (slope, intercept) of level 0, shape (z, 2), for ``rescale=True``; None when not defined
        self.rescale: np.ndarray | None = None
        #: ICC colour profile of the pixels, when the file has one
        self.icc_profile: bytes | None = None
        #: other pixel sets of the same image (DICOM optical paths x focal planes): key -> levels
        self.variants: dict[tuple[str, float], list[Level]] = {}
        #: levels of each timepoint (OME-TIFF / ImageJ T axis); ``levels`` is timepoint 0; [] without a T axis
        self.timepoints: list[list[Level]] = []

    def readers(self) -> list:
        """One reader per entry of ``files`` (:class:`~cucim_like.fileio.FileReader` unless a format keeps
        some data in memory)."""
        from ..fileio import FileReader

        return [FileReader(p) for p in self.files]

    def close(self) -> None:
        """Release what the source holds (the executors own the file descriptors)."""
