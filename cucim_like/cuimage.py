"""``CuImage``: cuCIM's public API over cucim_like's formats, planner and executors."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import arguments as args
from . import memory
from .batch import BatchIterator, BatchTileUses, check_batch_arguments
from .cache import TileCache, configure_cache, current_cache
from .cuda.cache import DeviceTileCache, device_cache
from .cuda.placement import OutputTransform
from .errors import InvalidArgumentError, UnknownAssociatedImageError
from .executors import cpu
from .executors.pool import default_workers
from .formats import open_source
from .formats.base import ImageSource, Level
from .plan import Plan, TileUses, plan_batch, plan_region
from .read_target import ReadTarget, make_target, read_with_target


class CuImage:
    """An opened slide or volume. Pixels are read on demand with :meth:`read_region`.

    The format is chosen by content. Opening reads headers only. Arrays come back as NumPy arrays
    (H, W, C) of the image's dtype, in CPU memory.
    """

    def __init__(self, path: str | bytes | os.PathLike | Sequence[str | os.PathLike], *, series_uid: str | None = None,
                 missing: str | None = None) -> None:
        """``path``: a file, a DICOM series (directory or list of files) or a neuroglancer precomputed volume
        (directory or ``file://`` URL). ``series_uid`` picks a DICOM series; ``missing`` ("fill", default, or
        "raise") says what absent chunks of a precomputed volume do."""
        single = isinstance(path, (str, bytes, os.PathLike))
        self._path_arg = os.fsdecode(path) if single else [os.fsdecode(p) for p in path]
        self._options = {k: v for k, v in (("series_uid", series_uid), ("missing", missing)) if v is not None}
        self._source: ImageSource = open_source(self._path_arg, **self._options)
        self._path = self._source.path
        self._readers = self._source.readers()
        self._file_keys = [r.identity for r in self._readers]
        self._closed = False
        self._lock = threading.Lock()

    # -- cache (process-wide, as in cuCIM) ---------------------------------------------------------------------
    @staticmethod
    def cache(type: str | None = None, memory_capacity: float | None = None, capacity: int | None = None,
              record_stat: bool | None = None, **_ignored: Any) -> TileCache:
        """Configure (with arguments) or return (without) the process-wide tile cache.

        type: "per_process" or "no_cache"; memory_capacity in MiB; capacity in tiles.
        """
        return configure_cache(type, memory_capacity, capacity, record_stat)

    @staticmethod
    def device_cache(memory_capacity: float | None = None, capacity: int | None = None,
                     record_stat: bool | None = None) -> DeviceTileCache:
        """The tile cache of ``device="cuda"`` reads (GPU memory, MiB), as :func:`cucim_like.device_cache`."""
        return device_cache(memory_capacity, capacity, record_stat)

    # -- description ---------------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._path

    @property
    def _level0(self) -> Level:
        return self._source.levels[0]

    @property
    def is_volume(self) -> bool:
        volume = self._source.volume
        return self._level0.shape[0] > 1 if volume is None else volume

    @property
    def _drop_channel(self) -> bool:
        """Single-channel volumes have no channel axis (dims "ZYX")."""
        return self.is_volume and self._level0.shape[3] == 1

    @property
    def dims(self) -> str:
        """Axis letters of ``shape``: "YXC" for slides, "ZYXC" for volumes ("ZYX" with one channel)."""
        if self.is_volume:
            return "ZYX" if self._drop_channel else "ZYXC"
        return "YXC"

    @property
    def shape(self) -> list[int]:
        """Level-0 shape in ``dims`` order."""
        z, y, x, c = self._level0.shape
        if self.is_volume:
            return [z, y, x] if self._drop_channel else [z, y, x, c]
        return [y, x, c]

    def size(self, dim_order: str = "") -> list[int]:
        """Sizes along ``dim_order`` (e.g. "XY"), or along ``dims`` when empty; as in cuCIM, letters of axes
        the image lacks are left out (``size("ZYX")`` of a slide is [h, w])."""
        sizes = dict(zip(self.dims, self.shape, strict=True))
        return [sizes[d] for d in (dim_order or self.dims).upper() if d in sizes]

    @property
    def ndim(self) -> int:
        return len(self.dims)

    @property
    def dtype(self) -> np.dtype:
        return self._level0.dtype

    @property
    def typestr(self) -> str:
        return self._level0.dtype.str

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def is_loaded(self) -> bool:
        """True while the image is open (cuCIM: a CuImage opened from a file is loaded)."""
        return not self._closed

    @property
    def resolutions(self) -> dict[str, Any]:
        """level_count, level_dimensions ((w, h) each), level_downsamples, level_tile_sizes ((tw, th) each)."""
        levels = self._source.levels
        return {
            "level_count": len(levels),
            "level_dimensions": tuple((lv.width, lv.height) for lv in levels),
            "level_downsamples": tuple(lv.downsample for lv in levels),
            "level_tile_sizes": tuple((lv.tile_shape[2], lv.tile_shape[1]) for lv in levels),
        }

    @property
    def channel_names(self) -> list[str]:
        return list(self._source.channel_names)

    def spacing(self, dim_order: str = "") -> list[float]:
        """Physical size of a level-0 pixel along ``dim_order`` (default ``dims``): micrometres for slides,
        millimetres for DICOM volumes (see ``spacing_units``); 1.0 where unknown and for the channel axis."""
        zyx = self._source.pixel_spacing or (1.0, 1.0, 1.0)
        values = {"Z": zyx[0], "Y": zyx[1], "X": zyx[2]}
        return [float(values.get(d, 1.0)) for d in (dim_order or self.dims).upper()]

    def spacing_units(self, dim_order: str = "") -> list[str]:
        unit = self._source.spacing_unit if self._source.pixel_spacing else ""
        units = {"Z": unit, "Y": unit, "X": unit, "C": "color"}
        return [units.get(d, "") for d in (dim_order or self.dims).upper()]

    @property
    def origin(self) -> list[float]:
        """Position (x, y, z) of the first voxel's centre in the patient/slide frame (DICOM volumes: mm)."""
        return [float(v) for v in self._source.origin]

    @property
    def direction(self) -> list[list[float]]:
        """3 x 3 direction cosines; column j is the direction of the image's x, y, z axis (ITK convention)."""
        return [list(row) for row in self._source.direction]

    @property
    def icc_profile(self) -> bytes | None:
        """The ICC colour profile stored with the pixels, or None."""
        return self._source.icc_profile

    @property
    def optical_paths(self) -> list[str]:
        """DICOM optical path identifiers (select with ``read_region(optical_path=...)``); [] for other formats."""
        return list(dict.fromkeys(k[0] for k in self._source.variants))

    @property
    def focal_planes(self) -> list[float]:
        """DICOM focal plane z offsets in micrometres (select with ``read_region(focal_plane=index)``)."""
        return sorted({k[1] for k in self._source.variants})

    @property
    def timepoints(self) -> int:
        """Number of timepoints (select with ``read_region(t=...)``); 0 for images without a time axis."""
        return len(self._source.timepoints)

    @property
    def coord_sys(self) -> str:
        return "LPS"

    @property
    def associated_images(self) -> set[str]:
        return set(self._source.associated)

    @property
    def raw_metadata(self) -> str:
        return self._source.raw_metadata

    @property
    def metadata(self) -> dict[str, Any]:
        """cuCIM's "cucim" section plus the vendor's sections (e.g. "aperio", "philips", "tiff")."""
        res = self.resolutions
        section = {
            "associated_images": sorted(self.associated_images),
            "channel_names": self.channel_names,
            "coord_sys": self.coord_sys,
            "dims": self.dims,
            "direction": self.direction,
            "dtype": {"bits": self.dtype.itemsize * 8, "code": {"i": 0, "u": 1, "f": 2}.get(self.dtype.kind, 1),
                      "lanes": 1},
            "ndim": self.ndim,
            "origin": self.origin,
            "path": self._path,
            "resolutions": {
                "level_count": res["level_count"],
                "level_dimensions": [list(d) for d in res["level_dimensions"]],
                "level_downsamples": list(res["level_downsamples"]),
                "level_tile_sizes": [list(t) for t in res["level_tile_sizes"]],
            },
            "shape": self.shape,
            "spacing": self.spacing(),
            "spacing_units": self.spacing_units(),
            "typestr": self.typestr,
            "format": self._source.format_name,
            "vendor": self._source.vendor,
        }
        return {"cucim": section, **self._source.vendor_metadata}

    @property
    def file_identity(self) -> tuple:
        """(device, inode, size, mtime) of each file read: names this version of the image."""
        return tuple(self._file_keys)

    @property
    def levels(self) -> list[Level]:
        """The engine's description of each level (tile grid, codec): for tools such as ``cucim-like info``."""
        return list(self._source.levels)

    @property
    def vendor(self) -> str:
        return self._source.vendor

    # -- pixels --------------------------------------------------------------------------------------------
    def read_region(
        self,
        location: Any = None,
        size: Any = None,
        level: int = 0,
        num_workers: int = 0,
        batch_size: int = 1,
        drop_last: bool = False,
        prefetch_factor: int = 2,
        shuffle: bool = False,
        seed: int = 0,
        device: str = "cpu",
        buf: np.ndarray | Callable[[int], np.ndarray | None] | None = None,
        shm_name: str | None = None,
        *,
        fill: float | None = None,
        progress: Callable[[int], None] | None = None,
        optical_path: str | int | None = None,
        focal_plane: int | float | None = None,
        rescale: bool = False,
        c: int | Sequence[int] | None = None,
        t: int | None = None,
        transform: OutputTransform | None = None,
    ) -> Any:
        """Read ``size`` (w, h) pixels at ``location`` (x, y, level-0 coordinates) of ``level``.

        One location: a NumPy array (h, w, c) of the image's dtype (written into ``buf`` when given). With
        neither location nor size: the whole level; as in cuCIM, ``location`` defaults to (0, 0) and ``size``
        to the level's (w, h). Positional arguments follow cuCIM's order (location, size, level, num_workers,
        batch_size, drop_last, prefetch_factor, shuffle, seed, device, buf, shm_name); the rest are keywords.
        Several locations (any iterable of (x, y), NumPy arrays flat or N x 2) or ``batch_size`` > 1: a
        :class:`~cucim_like.batch.BatchIterator` of (B, h, w, c) arrays, ``prefetch_factor`` batches decoded
        ahead, in a seeded random order with ``shuffle``. ``buf`` may also be a callable (then batches are
        returned even for one location): ``buf(n)`` gives the array (n, h, w, c) that a batch of n patches is
        written into (None: a new one). It is called from the threads that decode batches ahead, so it must be
        thread-safe and give each call an array no other batch uses; a batch abandoned by ``close()`` or
        ``break`` may still be written into until its decode stops, so an array is free again only once the
        batch returned in it (or, for an abandoned one, the array itself) is gone.
        Parts outside the level are ``fill`` (default 255 for brightfield vendor slides, 0 otherwise).
        ``num_workers``: decode threads, 0 = one per CPU. ``progress`` is called with the number of tiles
        finished as they finish (possibly from worker threads). ``shm_name`` is accepted for cuCIM
        compatibility and ignored.

        Volumes: ``location`` (x, y, z), ``size`` (w, h, d), arrays (d, h, w[, c]). ``rescale=True`` applies
        the DICOM RescaleSlope/Intercept of each slice and returns float32 (single reads only). DICOM slides
        with several optical paths or focal planes: ``optical_path`` (identifier or index) and
        ``focal_plane`` (index, or a z offset in micrometres as a float) choose one; default the first.

        Channels and time (e.g. OME-TIFF / ImageJ hyperstacks): ``c`` an int gives arrays without the channel
        axis ((d, h, w) for volumes), a sequence of ints (any order, repeats allowed) arrays (..., len(c)) of
        those channels; default all. Channels stored apart (one tile plane each) are read alone. ``t`` picks
        a timepoint (default 0; see :attr:`timepoints`). InvalidArgumentError for an index out of range, or
        for ``c``/``t`` on an image without a channel axis (``dims``) or a time axis.

        ``device="cuda"`` (or "cuda:N"): the same reads into ``cupy.ndarray`` on that GPU, ordered on the CuPy
        stream current at the call; DeviceUnavailableError names what is missing when it cannot.
        ``transform`` (:class:`~cucim_like.OutputTransform`): output dtype, layout (HWC or CHW) and
        per-channel ``(x * scale - mean) / std``, fused into placement on the GPU, applied after it on the CPU.
        """
        self._check_open()
        target = make_target(device, transform, self._path)
        if target is not None and buf is not None:
            raise InvalidArgumentError("buf receives plain CPU reads; with device='cuda' or a transform, reads "
                                       "return new arrays")
        levels = self._timepoint_levels(self._variant_levels(optical_path, focal_plane), t)
        chans, squeeze = self._channel_choice(c)
        lvl, pick = self._channel_level(levels[args.check_level(level, len(levels))], chans)
        if rescale and (buf is not None or batch_size != 1 or target is not None):
            raise InvalidArgumentError("rescale=True works on single CPU reads without buf or transform")
        workers = args.check_workers(num_workers) or default_workers()
        nd = 3 if self.is_volume else 2
        fill_value = args.check_fill(self._source.default_fill if fill is None else fill, lvl.dtype)
        if location is None and size is None:
            out = self._read_channels(lvl, pick, squeeze, (0, 0, 0), lvl.shape[:3], buf, fill_value, workers,
                                      progress, target)
            return self._rescaled(out, 0) if rescale else out
        if location is None:  # cuCIM's defaults: the level's origin, and the level's whole extent
            location = (0,) * nd
        if size is None:
            z, h, w = lvl.shape[:3]
            size = (w, h, z) if nd == 3 else (w, h)
        sz = args.check_size(args.int_tuple(size, nd, "size"))
        extent = (sz[2] if nd == 3 else 1, sz[1], sz[0])
        batched_buf = callable(buf)  # a callable buf asks for batches, even of one patch
        if type(location) is tuple and len(location) == nd and args.all_ints(location) and not batched_buf:
            locations, single = None, True  # one (x, y[, z]) of Python ints: the common case, without NumPy
        else:
            locations, single = args.parse_locations(location, nd)
        b, prefetch = check_batch_arguments(batch_size, prefetch_factor)
        if (single or (len(locations) == 1 and b == 1)) and not batched_buf:
            start = self._level_start(location if locations is None else tuple(locations[0].tolist()), lvl)
            out = self._read_channels(lvl, pick, squeeze, start, extent, buf, fill_value, workers, progress,
                                      target)
            return self._rescaled(out, start[0]) if rescale else out
        starts = self._level_starts(locations, lvl)
        if rescale:
            raise InvalidArgumentError("rescale=True works on single reads")
        if any(e > s for e, s in zip(extent, lvl.shape[:3], strict=True)):
            raise InvalidArgumentError(f"patch size {tuple(sz)} is larger than level {lvl.index} "
                                       f"({lvl.width} x {lvl.height})", path=self._path)
        channel = () if self._drop_channel or squeeze else (lvl.shape[3] if pick is None else len(pick),)
        patch = (*(extent if nd == 3 else extent[1:]), *channel)

        def check_buf(arr: object, n: int) -> None:
            if (not isinstance(arr, np.ndarray) or arr.shape != (n, *patch) or arr.dtype != lvl.dtype
                    or not arr.flags.c_contiguous or not arr.flags.writeable):
                raise InvalidArgumentError(f"buf must be a writable C-contiguous array of shape {(n, *patch)} and "
                                           f"dtype {lvl.dtype}, got {getattr(arr, 'shape', None)}")

        if buf is not None and not callable(buf):
            check_buf(buf, b)

        uses = BatchTileUses(lvl, starts, extent, b,
                             lambda more: self._level_starts(args.parse_locations(more, nd)[0], lvl))

        def run_batch(batch_starts: np.ndarray, out_buf: np.ndarray | Callable | None, cancel, batch_workers: int
                      ) -> np.ndarray:
            plan = plan_batch(lvl.shape, lvl.tile_shape, lvl.planes, batch_starts.tolist(), extent)
            n = len(batch_starts)
            if callable(out_buf):  # the caller's array for this batch, or None for a new one
                out_buf = out_buf(n)
                if out_buf is not None:
                    check_buf(out_buf, n)
            if target is not None:
                return read_with_target(self, target, plan, lvl, pick, squeeze, fill_value, workers,
                                         plan.out_shape[0] // extent[0], progress, cancel)
            direct = out_buf is not None and pick is None  # else read all channels, then pick
            out = (out_buf[:n].reshape(plan.out_shape) if direct
                   else memory.empty(plan.out_shape, lvl.dtype, memory.BATCH_MMAP_THRESHOLD))
            cache = current_cache()
            self._run(plan, lvl, out, fill_value, batch_workers, cache, progress, cancel, uses.reuse(cache))
            shape = (n, *extent, *channel) if nd == 3 else (n, *extent[1:], *channel)
            if pick is None:
                return out.reshape(shape)
            picked = out[..., pick].reshape(shape)
            if out_buf is None:
                return picked
            out_buf[:n] = picked
            return out_buf[:n]

        batches = BatchIterator(starts, b, bool(drop_last), prefetch, bool(shuffle), args.as_int(seed, "seed"),
                                run_batch, buf, workers)
        uses.order = batches.order
        batches.tile_uses = uses
        return batches

    def _timepoint_levels(self, levels: list[Level], t: Any) -> list[Level]:
        """The levels of timepoint ``t`` (``read_region(t=...)``); ``levels`` when t is None."""
        if t is None:
            return levels
        timepoints = self._source.timepoints
        if not timepoints:
            raise InvalidArgumentError("t selects a timepoint, but this image has no time axis", path=self._path)
        index = args.as_int(t, "t")
        if not 0 <= index < len(timepoints):
            raise InvalidArgumentError(f"timepoint {index} does not exist; the image has timepoints "
                                       f"0..{len(timepoints) - 1}", path=self._path)
        return timepoints[index]

    def _channel_choice(self, c: Any) -> tuple[list[int] | None, bool]:
        """Channel indices chosen by ``read_region(c=...)`` (None: all) and whether ``c`` was one integer (the
        result then has no channel axis)."""
        if c is None:
            return None, False
        if "C" not in self.dims:
            raise InvalidArgumentError(f"c selects channels, but this image has no channel axis (dims "
                                       f"{self.dims!r})", path=self._path)
        if isinstance(c, (numbers.Integral, np.integer)):
            chans, single = [args.as_int(c, "c")], True
        else:
            if isinstance(c, (str, bytes)):
                raise InvalidArgumentError(f"c must be an integer or a sequence of integers, got {c!r}")
            try:
                values = np.asarray(c).reshape(-1).tolist() if isinstance(c, np.ndarray) else list(c)
            except TypeError:
                raise InvalidArgumentError(f"c must be an integer or a sequence of integers, got {c!r}") from None
            chans, single = [args.as_int(v, "c") for v in values], False
            if not chans:
                raise InvalidArgumentError("c is empty")
        count = self._level0.shape[3]
        for ch in chans:
            if not 0 <= ch < count:
                raise InvalidArgumentError(f"channel {ch} does not exist; the image has channels 0..{count - 1}",
                                           path=self._path)
        return chans, single

    def _channel_level(self, lvl: Level, chans: list[int] | None) -> tuple[Level, list[int] | None]:
        """(level to read, pick) for channels ``chans`` of ``lvl``: a level of only the tile planes holding them
        when channels are stored apart (planes > 1), and the positions of ``chans`` among the channels that
        level reads (None: all of them, in order)."""
        if chans is None:
            return lvl, None
        if lvl.planes == 1:  # read all channels, then pick
            return lvl, None if chans == list(range(lvl.shape[3])) else chans
        per = lvl.tile_samples
        planes = list(dict.fromkeys(ch // per for ch in chans))
        sub = lvl if planes == list(range(lvl.planes)) else self._plane_level(lvl, planes)
        pos = [planes.index(ch // per) * per + ch % per for ch in chans]
        return sub, None if pos == list(range(sub.shape[3])) else pos

    def _plane_level(self, lvl: Level, planes: list[int]) -> Level:
        """``lvl`` restricted to ``planes``, built once per (level, planes) and kept (decoder built once)."""
        cache: dict = self.__dict__.setdefault("_plane_levels", {})
        key = (id(lvl), tuple(planes))
        hit = cache.get(key)
        if hit is not None and hit[0] is lvl:
            return hit[1]
        if len(cache) >= 256:  # many distinct selections: start over rather than grow without bound
            cache.clear()
        sub = _level_of_planes(lvl, planes)
        cache[key] = (lvl, sub)  # holding lvl keeps its id from being reused
        return sub

    def _read_channels(self, lvl: Level, pick: list[int] | None, squeeze: bool, start: tuple[int, ...],
                       extent: tuple[int, ...], buf: np.ndarray | None, fill: float, workers: int,
                       progress: Callable[[int], None] | None, target: ReadTarget | None = None) -> Any:
        """:meth:`_read` then the channel pick of ``read_region(c=...)``: ``pick`` positions among ``lvl``'s
        channels (None: all, in order); ``squeeze``: no channel axis in the result (c was one integer)."""
        if target is not None:
            plan = plan_region(lvl.shape, lvl.tile_shape, lvl.planes, start, extent)
            return read_with_target(self, target, plan, lvl, pick, squeeze, fill, workers, None, progress)
        if pick is None and not squeeze:
            return self._read(lvl, start, extent, buf, fill, workers, progress)
        nd = 3 if self.is_volume else 2
        want = (*(extent if nd == 3 else extent[1:]), *(() if squeeze else (len(pick),)))
        if buf is not None and (not isinstance(buf, np.ndarray) or buf.shape != want or buf.dtype != lvl.dtype
                                or not buf.flags.writeable):
            raise InvalidArgumentError(f"buf must be a writable NumPy array of shape {want} and dtype {lvl.dtype}, "
                                       f"got {getattr(buf, 'shape', None)} {getattr(buf, 'dtype', '')}")
        if pick is None:  # one channel read alone: straight into buf
            out = self._read(lvl, start, extent, None if buf is None else buf[..., np.newaxis], fill, workers,
                             progress)
            return buf if buf is not None else out[..., 0]
        out = self._read(lvl, start, extent, None, fill, workers, progress)[..., pick]
        if squeeze:
            out = out[..., 0]
        if buf is None:
            return out
        buf[...] = out
        return buf

    def _variant_levels(self, optical_path: str | int | None, focal_plane: int | float | None) -> list[Level]:
        """The levels of the chosen optical path and focal plane (DICOM); the default levels otherwise."""
        if optical_path is None and focal_plane is None:
            return self._source.levels
        variants = self._source.variants
        if not variants:
            raise InvalidArgumentError("optical_path and focal_plane apply to DICOM slides only", path=self._path)
        paths, planes = self.optical_paths, self.focal_planes
        default_path, default_z = next(iter(variants))
        path_id = self._pick(optical_path, paths, default_path, "optical_path", str)
        z = self._pick(focal_plane, planes, default_z, "focal_plane", lambda v: round(float(v), 6))
        levels = variants.get((path_id, z))
        if levels is None:
            raise InvalidArgumentError(f"no pixels for optical path {path_id!r} at focal plane {z} um; optical "
                                       f"paths {paths}, focal planes {planes}", path=self._path)
        return levels

    def _pick(self, value: Any, choices: list, default: Any, name: str, by_value: Callable[[Any], Any]) -> Any:
        """``default`` for None, ``choices[value]`` for an integer index, else ``by_value(value)``."""
        if value is None:
            return default
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if not 0 <= value < len(choices):
                raise InvalidArgumentError(f"{name} index {value} is out of range; the slide has {choices}",
                                           path=self._path)
            return choices[int(value)]
        try:
            return by_value(value)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"{name} must be an index or a value of {choices}, got {value!r}",
                                       path=self._path) from exc

    def _rescaled(self, out: np.ndarray, z0: int) -> np.ndarray:
        """``out`` (d, h, w[, c]) as float32 with each slice's RescaleSlope/Intercept applied (z0 = first slice)."""
        result = out.astype(np.float32)
        table = self._source.rescale
        if table is None or not self.is_volume:
            return result
        d = result.shape[0]
        z = np.arange(z0, z0 + d)
        inside = (z >= 0) & (z < len(table))
        slope = np.ones(d, np.float32)
        intercept = np.zeros(d, np.float32)
        slope[inside] = table[z[inside], 0]
        intercept[inside] = table[z[inside], 1]
        shape = (d,) + (1,) * (result.ndim - 1)
        result *= slope.reshape(shape)
        result += intercept.reshape(shape)
        return result

    def read_level_region(self, location: Any, size: Any, level: int = 0, num_workers: int = 0,
                          fill: float | None = None) -> np.ndarray:
        """Like :meth:`read_region` with ``location`` (x, y[, z]) in ``level``'s own pixels (no level-0 scaling).

        Returns (d, h, w, c) for every image (d = 1 for slides): the building block of ``to_dask``.
        """
        self._check_open()
        lvl = self._source.levels[args.check_level(level, len(self._source.levels))]
        loc = args.int_tuple(location, (2, 3), "location")
        sz = args.check_size(args.int_tuple(size, (2, 3), "size"))
        start = (loc[2] if len(loc) == 3 else 0, loc[1], loc[0])
        extent = (sz[2] if len(sz) == 3 else 1, sz[1], sz[0])
        out = self._output((*extent, lvl.shape[3]), lvl.dtype, None, 3)
        plan = plan_region(lvl.shape, lvl.tile_shape, lvl.planes, start, extent)
        fill_value = args.check_fill(self._source.default_fill if fill is None else fill, lvl.dtype)
        return self._run(plan, lvl, out, fill_value, args.check_workers(num_workers) or default_workers(),
                         current_cache())

    def to_dask(self, level: int = 0, chunks: Any = None):
        """The level as a dask array ((h, w, c); volumes (d, h, w, c)), chunks aligned to tiles by default.

        Works with dask's threaded scheduler and dask.distributed (tasks re-open the file by path).
        """
        from .dask_array import level_to_dask

        return level_to_dask(self, args.check_level(level, len(self._source.levels)), chunks)

    def _level_start(self, location: tuple[int, ...], lvl: Level) -> tuple[int, int, int]:
        """One level-0 (x, y[, z]) location -> (z, y, x) start in ``lvl``'s pixels (as :meth:`_level_starts`)."""
        for v in location:
            if not -_INT64 <= v < _INT64:
                raise InvalidArgumentError("locations do not fit 64-bit integers")
        n = len(location)
        if lvl.scale is None and lvl.downsample == 1:  # level 0 of a slide: nothing to scale
            return (0, location[1], location[0]) if n == 2 else (location[2], location[1], location[0])
        factors = _level_factors(lvl, n)
        scaled = [v if f == 1 else math.floor(v / f) for v, f in zip(location, factors, strict=True)]
        return (0, scaled[1], scaled[0]) if n == 2 else (scaled[2], scaled[1], scaled[0])

    def _level_starts(self, locations: np.ndarray, lvl: Level) -> np.ndarray:
        """Level-0 (x, y[, z]) locations -> (z, y, x) starts in ``lvl``'s pixels, int64 (N, 3)."""
        n = locations.shape[1]
        factors = _level_factors(lvl, n)
        scaled = locations
        if any(f != 1 for f in factors):
            scaled = np.floor(locations / np.array(factors)).astype(np.int64)
        starts = np.zeros((len(locations), 3), np.int64)
        starts[:, 3 - n :] = scaled[:, ::-1]
        return starts

    def _read(self, lvl: Level, start: tuple[int, ...], extent: tuple[int, ...], buf: np.ndarray | None,
              fill: float, workers: int, progress: Callable[[int], None] | None) -> np.ndarray:
        nd = 3 if self.is_volume else 2
        out_shape = (*extent, lvl.shape[3])
        out = self._output(out_shape, lvl.dtype, buf, nd)
        plan = plan_region(lvl.shape, lvl.tile_shape, lvl.planes, start, extent)
        self._run(plan, lvl, out, fill, workers, current_cache(), progress)
        if self._drop_channel:
            return out[..., 0]
        return out if nd == 3 else out[0]

    def _run(self, plan: Plan, lvl: Level, out: np.ndarray, fill: float, workers: int, cache: TileCache | None,
             progress: Callable[[int], None] | None = None, cancel=None, reuse: TileUses | None = None
             ) -> np.ndarray:
        """Execute ``plan`` on ``lvl`` of this image's files into ``out`` (the one place reads run)."""
        return cpu.execute(plan, lvl, out, path=self._path, readers=self._readers, file_keys=self._file_keys,
                           fill=fill, workers=workers, cache=cache, progress=progress, cancel=cancel, reuse=reuse)

    def _output(self, shape: tuple[int, ...], dtype: np.dtype, buf: np.ndarray | None, nd: int) -> np.ndarray:
        want = shape if nd == 3 else shape[1:]
        if buf is not None and self._drop_channel and nd == 3:
            want = shape[:-1]
            if isinstance(buf, np.ndarray) and tuple(buf.shape) == tuple(want):
                buf = buf[..., np.newaxis]
                want = shape
        if buf is None:
            args.check_output_bytes(math.prod(shape) * dtype.itemsize, "this read")
            return memory.empty(shape, dtype)
        if not isinstance(buf, np.ndarray) or tuple(buf.shape) != tuple(want) or buf.dtype != dtype:
            raise InvalidArgumentError(
                f"buf must be a NumPy array of shape {want} and dtype {dtype}, got "
                f"{getattr(buf, 'shape', None)} {getattr(buf, 'dtype', type(buf).__name__)}"
            )
        if not buf.flags.writeable:
            raise InvalidArgumentError("buf is read-only")
        return buf if nd == 3 else buf[np.newaxis]

    def associated_image(self, name: str, device: str = "cpu") -> np.ndarray:
        """A label/macro/thumbnail as an array (h, w, c): NumPy, or CuPy with ``device="cuda"`` (decoded on
        the CPU, then uploaded); UnknownAssociatedImageError for other names."""
        self._check_open()
        target = make_target(device, None, self._path)
        assoc = self._source.associated.get(name)
        if assoc is None:
            raise UnknownAssociatedImageError(
                f"no associated image {name!r}; this file has {sorted(self._source.associated) or 'none'}",
                path=self._path,
            )
        lvl = assoc.level
        plan = plan_region(lvl.shape, lvl.tile_shape, lvl.planes, (0, 0, 0), lvl.shape[:3])
        out = self._output(plan.out_shape, lvl.dtype, None, 3)
        image = self._run(plan, lvl, out, self._source.default_fill, 1, None)[0]
        return image if target is None else target.backend.upload(image)

    # -- life cycle ----------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgumentError("I/O operation on a closed CuImage", path=self._path)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                for r in self._readers:
                    r.close()
                self._source.close()

    def __enter__(self) -> CuImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self):
        return (_reopen, (self._path_arg, self._options))

    def __repr__(self) -> str:
        state = "closed " if self._closed else ""
        return (f"<{state}CuImage {self._path!r} {self._source.format_name}/{self._source.vendor} "
                f"shape={self.shape} dtype={self.dtype} levels={len(self._source.levels)}>")


_INT64 = 1 << 63


def _level_factors(lvl: Level, n: int) -> tuple[float, ...]:
    """Level-0 pixels per pixel of ``lvl`` along (x, y[, z]) (``n`` axes): per axis where the level has them
    (anisotropic volume pyramids), else its downsample in x and y and none in z."""
    return tuple((lvl.scale[::-1] if lvl.scale is not None else (lvl.downsample, lvl.downsample, 1.0))[:n])


def _level_of_planes(level: Level, planes: list[int]) -> Level:
    """``level`` restricted to tile planes ``planes`` (in that order): tile tables sliced on the plane axis, the
    same index, and a variant of its own (negative, fixed by the level's variant and the planes, so the same
    selection keys the same cached tiles in every process and no other selection does)."""
    idx = np.asarray(planes, np.intp)

    def take(table: np.ndarray | None) -> np.ndarray | None:
        return None if table is None else np.ascontiguousarray(np.asarray(table).reshape(level.grid)[idx])

    variant = -1 - int.from_bytes(repr((level.variant, tuple(planes))).encode(), "little")
    if level.table_loader is None:
        tables: dict[str, Any] = {"offsets": take(level.offsets), "bytecounts": take(level.bytecounts),
                                  "file_ids": take(level.file_ids)}
    else:
        tables = {"table_loader": lambda: tuple(take(a) for a in level.tile_table())}
    return dataclasses.replace(level, shape=(*level.shape[:3], level.tile_samples * len(planes)),
                               planes=len(planes), variant=variant, _decoder=[], _table=[], **tables)


def _reopen(path: Any, options: dict[str, Any]) -> CuImage:
    return CuImage(path, **options)
